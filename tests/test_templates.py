"""Template parsing and rendering (domain code, no server needed)."""

from __future__ import annotations

import pytest

from flowsvc.domain.templates import (
    MissingValue,
    Reference,
    RenderContext,
    TemplateError,
    parse,
    render,
)

CTX = RenderContext(
    inputs={"q": "why?", "n": 3, "obj": {"a": 1}},
    variables={"tone": "dry"},
    results={"draft": "first ${inputs.q}"},
    user_inputs={"ask": "yes"},
)


def test_renders_every_reference_kind() -> None:
    text = "${inputs.q} ${vars.tone} ${draft.result} ${ask.user_input}"
    assert render(text, CTX) == "why? dry first ${inputs.q} yes"


def test_substituted_values_are_not_rendered_again() -> None:
    assert render("${draft.result}", CTX) == "first ${inputs.q}"


def test_non_string_values_render_as_json() -> None:
    assert render("${inputs.n} ${inputs.obj}", CTX) == '3 {"a":1}'


def test_double_dollar_escapes_a_literal() -> None:
    assert render("cost: $${inputs.q} and $5", CTX) == "cost: ${inputs.q} and $5"


def test_missing_value_names_the_reference() -> None:
    with pytest.raises(MissingValue) as info:
        render("${inputs.absent}", CTX)
    assert info.value.reference == "inputs.absent"


@pytest.mark.parametrize(
    "text", ["${", "${x}", "${a.b.c}", "${${x}}", "${draft.prompt}", "${ inputs.q}"]
)
def test_malformed_templates_are_refused(text: str) -> None:
    with pytest.raises(TemplateError):
        parse(text)


def test_parse_yields_literals_and_references() -> None:
    assert parse("a ${s.result} b") == ("a ", Reference("s", "result"), " b")

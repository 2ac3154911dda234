"""Template parsing and rendering (domain code, no server needed)."""

from __future__ import annotations

import json

import pytest

from flowsvc.domain.templates import (
    MissingValue,
    Reference,
    RenderContext,
    TemplateError,
    parse,
    render,
    render_json,
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


QUOTED = RenderContext(
    inputs={"city": 'Pa"ris\\', "n": 3, "obj": {"a": "b"}, "line": "a\nb"},
    variables={},
    results={},
    user_inputs={},
)


def test_a_json_body_takes_a_value_inside_a_string_as_its_escaped_content() -> None:
    body = render_json('{"city": "${inputs.city}", "note": "n=${inputs.n} ${inputs.line}"}', QUOTED)
    assert json.loads(body) == {"city": 'Pa"ris\\', "note": "n=3 a\nb"}


def test_a_json_body_takes_a_value_outside_strings_as_json() -> None:
    body = render_json('{"n": ${inputs.n}, "obj": ${inputs.obj}, "s": "${inputs.obj}"}', QUOTED)
    assert json.loads(body) == {"n": 3, "obj": {"a": "b"}, "s": '{"a":"b"}'}


def test_a_json_body_tells_strings_by_their_unescaped_quotes() -> None:
    # An escaped quote does not end the string; the value after it is still inside.
    body = render_json('{"k": "say \\"${inputs.city}\\"", "m": ${inputs.n}}', QUOTED)
    assert json.loads(body) == {"k": 'say "Pa"ris\\"', "m": 3}

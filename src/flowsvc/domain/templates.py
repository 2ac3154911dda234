"""Prompt templates: `${step.result}`, `${step.user_input}`, `${inputs.k}`, `${vars.k}`.

Rendering is a single pass over parsed segments, so a substituted value is never parsed
again: a result containing `${...}` stays literal text (no template injection).
`$${` writes a literal `${`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_REFERENCE = re.compile(rf"({_IDENT})\.({_IDENT})")
STEP_FIELDS = frozenset({"result", "user_input"})
NAMESPACES = frozenset({"inputs", "vars"})


class TemplateError(ValueError):
    """A template that cannot be parsed."""


class MissingValue(LookupError):
    """A reference with no value at render time."""

    def __init__(self, reference: str) -> None:
        super().__init__(f"no value for ${{{reference}}}")
        self.reference = reference


@dataclass(frozen=True, slots=True)
class Reference:
    scope: str  # a step name, "inputs" or "vars"
    key: str  # "result"/"user_input" for steps; the key for inputs and vars

    @property
    def is_step(self) -> bool:
        return self.scope not in NAMESPACES

    def __str__(self) -> str:
        return f"{self.scope}.{self.key}"


Segment = str | Reference


@lru_cache(maxsize=4096)
def parse(text: str) -> tuple[Segment, ...]:
    segments: list[Segment] = []
    literal: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        start = text.find("$", i)
        if start < 0:
            literal.append(text[i:])
            break
        literal.append(text[i:start])
        if text.startswith("$${", start):
            literal.append("${")
            i = start + 3
            continue
        if not text.startswith("${", start):
            literal.append("$")
            i = start + 1
            continue
        end = text.find("}", start + 2)
        if end < 0:
            raise TemplateError(f"unclosed '${{' at offset {start}")
        expression = text[start + 2 : end]
        match = _REFERENCE.fullmatch(expression)
        if match is None:
            raise TemplateError(
                f"invalid reference '${{{expression}}}' at offset {start}: expected "
                "${step.result}, ${step.user_input}, ${inputs.key} or ${vars.key}"
            )
        scope, key = match.group(1), match.group(2)
        if scope not in NAMESPACES and key not in STEP_FIELDS:
            raise TemplateError(
                f"invalid reference '${{{expression}}}' at offset {start}: a step offers "
                "only .result and .user_input"
            )
        if literal:
            segments.append("".join(literal))
            literal = []
        segments.append(Reference(scope, key))
        i = end + 1
    if literal and (joined := "".join(literal)):
        segments.append(joined)
    return tuple(segments)


def references(text: str) -> tuple[Reference, ...]:
    return tuple(s for s in parse(text) if isinstance(s, Reference))


@dataclass(frozen=True, slots=True)
class RenderContext:
    inputs: Mapping[str, Any]
    variables: Mapping[str, Any]
    results: Mapping[str, str]
    user_inputs: Mapping[str, str]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _lookup(ref: Reference, ctx: RenderContext) -> str:
    table: Mapping[str, Any]
    if ref.scope == "inputs":
        table, key = ctx.inputs, ref.key
    elif ref.scope == "vars":
        table, key = ctx.variables, ref.key
    elif ref.key == "result":
        table, key = ctx.results, ref.scope
    else:
        table, key = ctx.user_inputs, ref.scope
    if key not in table:
        raise MissingValue(str(ref))
    return _text(table[key])


def render(text: str, ctx: RenderContext) -> str:
    return "".join(s if isinstance(s, str) else _lookup(s, ctx) for s in parse(text))


def render_json(text: str, ctx: RenderContext) -> str:
    """`render` for a JSON document: a value inside a string literal (`"city": "${x}"`) is
    written as that string's content, escaped (quotes, backslashes, control characters), so
    that no value can end its string and add members of its own; elsewhere as `render`
    writes it (a string as it is, anything else as JSON)."""
    out: list[str] = []
    state = (False, False)  # (inside a string, after a backslash in it)
    for segment in parse(text):
        if isinstance(segment, str):
            out.append(segment)
            state = _json_state_after(segment, state)
        elif state[0]:
            out.append(json.dumps(_lookup(segment, ctx), ensure_ascii=False)[1:-1])
        else:
            out.append(_lookup(segment, ctx))
    return "".join(out)


@lru_cache(maxsize=4096)
def _json_state_after(literal: str, state: tuple[bool, bool]) -> tuple[bool, bool]:
    inside, escaped = state
    for char in literal:
        if escaped:
            escaped = False
        elif inside and char == "\\":
            escaped = True
        elif char == '"':
            inside = not inside
    return inside, escaped

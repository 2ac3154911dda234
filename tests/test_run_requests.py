"""A run request's JSON size: measured as the compact UTF-8 JSON text the limit describes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flowsvc.domain.run_requests import json_size


def compact(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


@pytest.mark.parametrize(
    "value",
    [
        {},
        {"question": "What is 2+2?"},
        {"nested": {"list": [1, 2.5, None, True, "é", {"deep": ["ü", "日本"]}]}},
        {"emoji": "🙂" * 10, "quote": 'say "hi"\n\t\\'},
        {"float": 1e300, "neg": -0.0, "int": 10**18, "plain": 0.25},
    ],
)
def test_json_size_is_the_length_of_the_compact_utf8_text(value: Any) -> None:
    assert json_size(value) == compact(value)


def test_integers_past_64_bits_are_measured_too() -> None:
    value = {"big": 10**30}
    assert json_size(value) == compact(value)


def test_a_float_is_measured_as_its_shortest_json_text() -> None:
    assert json_size({"x": 1e-7}) == len('{"x":1e-7}')

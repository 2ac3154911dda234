"""Which step comes next (domain code, no server needed)."""

from __future__ import annotations

import pytest

from flowsvc.domain.model import Graph, Step, StepType, Transition
from flowsvc.domain.routing import GraphIndex, RoutingError


def graph(kinds: dict[str, StepType], *edges: tuple[str, str, str]) -> GraphIndex:
    """Steps named and identified by their keys; edges are (source, target, label)."""
    steps = tuple(Step(id=name, name=name, step_type=kind) for name, kind in kinds.items())
    transitions = tuple(
        Transition(id=f"{a}->{b}", source_step_id=a, target_step_id=b, label=label)
        for a, b, label in edges
    )
    return GraphIndex.of(Graph(steps, transitions))


ROUTER = graph(
    {
        "start": StepType.START,
        "check": StepType.CONDITION,
        "yes": StepType.END,
        "no": StepType.END,
        "other": StepType.END,
    },
    ("start", "check", ""),
    ("check", "yes", "yes"),
    ("check", "no", "no"),
    ("check", "other", ""),
)


def test_the_index_knows_the_start_step() -> None:
    assert ROUTER.start.name == "start"


def test_a_condition_follows_the_transition_labelled_with_its_value() -> None:
    assert ROUTER.next_step(ROUTER.by_name["check"], "no").name == "no"


def test_surrounding_whitespace_of_the_value_is_ignored() -> None:
    assert ROUTER.next_step(ROUTER.by_name["check"], "  yes\n").name == "yes"


def test_labels_match_exactly_not_by_case() -> None:
    assert ROUTER.next_step(ROUTER.by_name["check"], "YES").name == "other"


def test_a_value_no_label_matches_takes_the_unlabelled_default() -> None:
    assert ROUTER.next_step(ROUTER.by_name["check"], "maybe").name == "other"


def test_an_llm_step_routes_by_its_result_too() -> None:
    index = graph(
        {"start": StepType.START, "ask": StepType.LLM, "a": StepType.END, "b": StepType.END},
        ("start", "ask", ""),
        ("ask", "a", "a"),
        ("ask", "b", ""),
    )
    assert index.next_step(index.by_name["ask"], "a").name == "a"


@pytest.mark.parametrize("kind", [StepType.INPUT, StepType.HTTP, StepType.START])
def test_steps_that_do_not_route_ignore_labels_and_take_the_default(kind: StepType) -> None:
    index = graph(
        {"start": StepType.START, "s": kind, "a": StepType.END, "b": StepType.END},
        ("start", "s", ""),
        ("s", "a", "a"),
        ("s", "b", ""),
    )
    assert index.next_step(index.by_name["s"], "a").name == "b"


def test_no_match_and_no_default_is_an_error_naming_the_step_value_and_labels() -> None:
    index = graph(
        {"start": StepType.START, "check": StepType.CONDITION, "yes": StepType.END},
        ("start", "check", ""),
        ("check", "yes", "yes"),
    )
    with pytest.raises(RoutingError) as info:
        index.next_step(index.by_name["check"], "nope")
    message = str(info.value)
    assert "'check'" in message and "'nope'" in message and "labels: 'yes'" in message


def test_a_long_value_is_cut_in_the_error() -> None:
    index = graph(
        {"start": StepType.START, "check": StepType.CONDITION, "yes": StepType.END},
        ("check", "yes", "yes"),
    )
    with pytest.raises(RoutingError) as info:
        index.next_step(index.by_name["check"], "x" * 1000)
    assert "x" * 200 in str(info.value) and "x" * 201 not in str(info.value)

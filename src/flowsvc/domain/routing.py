"""Which step comes next: labelled transitions, then the unlabelled default."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from flowsvc.domain.model import Graph, Step, StepType, Transition


class RoutingError(Exception):
    pass


@dataclass
class GraphIndex:
    steps_by_id: dict[str, Step]
    start: Step
    outgoing: dict[str, list[Transition]] = field(default_factory=lambda: defaultdict(list))
    by_name: dict[str, Step] = field(default_factory=dict)

    @classmethod
    def of(cls, graph: Graph) -> GraphIndex:
        steps = {s.id: s for s in graph.steps}
        start = next(s for s in graph.steps if s.step_type is StepType.START)
        index = cls(steps, start, by_name={s.name: s for s in graph.steps})
        for t in graph.transitions:
            index.outgoing[t.source_step_id].append(t)
        return index

    def next_step(self, step: Step, value: str) -> Step:
        transitions = self.outgoing.get(step.id, [])
        routes = step.step_type in (StepType.CONDITION, StepType.LLM)
        key = value.strip()
        if routes:
            for t in transitions:
                if t.label and t.label == key:
                    return self.steps_by_id[t.target_step_id]
        for t in transitions:
            if not t.label:
                return self.steps_by_id[t.target_step_id]
        labels = ", ".join(repr(t.label) for t in transitions if t.label)
        raise RoutingError(
            f"no transition out of step {step.name!r} matches {key[:200]!r} "
            f"(labels: {labels or 'none'}) and it has no unlabelled default"
        )

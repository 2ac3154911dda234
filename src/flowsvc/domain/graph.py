"""Validation of a flow version's graph.

Every rule that fails adds a field violation pointing at the request field to blame
(`steps[3].prompt_template.text`), so a client sees every problem in one answer.
"""

from __future__ import annotations

import re
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import replace

from flowsvc.domain.errors import FieldViolation, InvalidArgument
from flowsvc.domain.limits import Limits
from flowsvc.domain.model import Graph, PromptTemplate, Step, StepType, Transition
from flowsvc.domain.templates import TemplateError, references

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CLIENT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
RESERVED_NAMES = frozenset({"inputs", "vars"})
CHAT_ROLES = frozenset({"system", "user", "assistant"})
HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.:/@+-]+")
# Steps whose outgoing transitions may carry labels: they route on their rendered value.
ROUTING_TYPES = frozenset({StepType.CONDITION, StepType.LLM})
PROMPT_REQUIRED = frozenset({StepType.LLM, StepType.INPUT, StepType.CONDITION})


class _Violations:
    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))


def validate_graph(
    steps: Sequence[Step],
    transitions: Sequence[Transition],
    limits: Limits,
    new_id: Callable[[], str],
) -> Graph:
    """Return the graph with ids assigned and both ends of every transition named."""
    v = _Violations()
    if not steps:
        v.add("steps", "a graph needs at least a START and an END step")
        raise InvalidArgument(v.items)
    if len(steps) > limits.max_steps_per_version:
        v.add("steps", f"at most {limits.max_steps_per_version} steps per version")
        raise InvalidArgument(v.items)
    if len(transitions) > limits.max_transitions_per_version:
        v.add(
            "step_transitions",
            f"at most {limits.max_transitions_per_version} transitions per version",
        )
        raise InvalidArgument(v.items)

    normalized = [_check_step(i, s, limits, v, new_id) for i, s in enumerate(steps)]
    by_name: dict[str, int] = {}
    by_id: dict[str, int] = {}
    for i, step in enumerate(normalized):
        if step.name:
            if step.name in by_name:
                v.add(f"steps[{i}].name", f"duplicate step name {step.name!r}")
            else:
                by_name[step.name] = i
        if step.id in by_id:
            v.add(f"steps[{i}].id", f"duplicate step id {step.id!r}")
        else:
            by_id[step.id] = i

    starts = [i for i, s in enumerate(normalized) if s.step_type is StepType.START]
    if not starts:
        v.add("steps", "a graph needs exactly one START step; it has none")
    for extra in starts[1:]:
        v.add(f"steps[{extra}].step_type", "a graph needs exactly one START step; this is another")
    if not any(s.step_type is StepType.END for s in normalized):
        v.add("steps", "a graph needs at least one END step")

    resolved = _check_transitions(transitions, normalized, by_name, by_id, limits, v, new_id)
    if resolved is not None and len(starts) == 1:
        _check_reachability(normalized, resolved, starts[0], by_id, v)
    _check_references(normalized, by_name, v)

    if v.items or resolved is None:
        raise InvalidArgument(v.items)
    return Graph(steps=tuple(normalized), transitions=tuple(resolved))


def _check_template(field: str, text: str, limits: Limits, v: _Violations) -> None:
    if len(text) > limits.max_template_chars:
        v.add(field, f"at most {limits.max_template_chars} characters")
        return
    try:
        references(text)
    except TemplateError as exc:
        v.add(field, str(exc))


def _check_step(
    i: int, step: Step, limits: Limits, v: _Violations, new_id: Callable[[], str]
) -> Step:
    at = f"steps[{i}]"
    if not step.name:
        v.add(f"{at}.name", "required")
    elif len(step.name) > limits.max_step_name_chars:
        v.add(f"{at}.name", f"at most {limits.max_step_name_chars} characters")
    elif not IDENTIFIER.fullmatch(step.name):
        v.add(f"{at}.name", "must be an identifier: a letter or _, then letters, digits or _")
    elif step.name in RESERVED_NAMES:
        v.add(f"{at}.name", f"{step.name!r} is reserved for ${{{step.name}.key}} references")

    step_id = step.id
    if step_id and not CLIENT_ID.fullmatch(step_id):
        v.add(f"{at}.id", "at most 64 characters of letters, digits, '_', '.', ':' or '-'")
    if not step_id:
        step_id = new_id()

    kind = step.step_type
    if kind is None:
        v.add(f"{at}.step_type", "required")

    prompt = step.prompt_template
    if prompt is not None and prompt == PromptTemplate(type=""):
        prompt = None
    if prompt is not None:
        prompt = _check_prompt(at, prompt, limits, v)
        if kind is StepType.START:
            v.add(f"{at}.prompt_template", "a START step has no prompt")
    elif kind in PROMPT_REQUIRED:
        v.add(f"{at}.prompt_template", f"required for a {kind} step")

    if step.start is not None:
        if kind is not StepType.START:
            v.add(f"{at}.start", "only a START step declares inputs")
        seen: set[str] = set()
        for j, flow_input in enumerate(step.start.inputs):
            field = f"{at}.start.inputs[{j}].name"
            if not IDENTIFIER.fullmatch(flow_input.name or ""):
                v.add(field, "must be an identifier")
            elif flow_input.name in seen:
                v.add(field, f"duplicate input {flow_input.name!r}")
            seen.add(flow_input.name)
    if step.llm is not None:
        if kind not in ROUTING_TYPES:
            v.add(f"{at}.llm", "only LLM and CONDITION steps take model settings")
        llm = step.llm
        if llm.model and not MODEL_NAME.fullmatch(llm.model):
            v.add(f"{at}.llm.model", "must look like 'provider/model', e.g. 'builtin/echo'")
        if llm.temperature is not None and not 0.0 <= llm.temperature <= 2.0:
            v.add(f"{at}.llm.temperature", "must be between 0 and 2")
        if llm.max_tokens is not None and not 1 <= llm.max_tokens <= 1_000_000:
            v.add(f"{at}.llm.max_tokens", "must be between 1 and 1000000")
        _check_template(f"{at}.llm.system_prompt", llm.system_prompt, limits, v)
    if step.http is not None:
        if kind is not StepType.HTTP:
            v.add(f"{at}.http", "only an HTTP step takes HTTP settings")
        http = step.http
        if http.method and http.method.upper() not in HTTP_METHODS:
            v.add(f"{at}.http.method", f"one of {', '.join(sorted(HTTP_METHODS))}")
        if not http.url:
            v.add(f"{at}.http.url", "required")
        _check_template(f"{at}.http.url", http.url, limits, v)
        _check_template(f"{at}.http.body", http.body, limits, v)
        for key, value in http.headers:
            _check_template(f"{at}.http.headers[{key!r}]", value, limits, v)
        if http.timeout_ms < 0:
            v.add(f"{at}.http.timeout_ms", "must not be negative")
    elif kind is StepType.HTTP:
        v.add(f"{at}.http", "required for an HTTP step (at least its url)")

    return replace(step, id=step_id, prompt_template=prompt)


def _check_prompt(
    at: str, prompt: PromptTemplate, limits: Limits, v: _Violations
) -> PromptTemplate:
    kind = prompt.type or "text"
    if kind == "text":
        if prompt.messages:
            v.add(f"{at}.prompt_template.messages", "a text template has no messages")
        _check_template(f"{at}.prompt_template.text", prompt.text, limits, v)
    elif kind == "chat":
        if prompt.text:
            v.add(f"{at}.prompt_template.text", "a chat template uses messages, not text")
        if not prompt.messages:
            v.add(f"{at}.prompt_template.messages", "a chat template needs at least one message")
        for j, message in enumerate(prompt.messages):
            if message.role not in CHAT_ROLES:
                v.add(
                    f"{at}.prompt_template.messages[{j}].role",
                    "one of system, user, assistant",
                )
            _check_template(
                f"{at}.prompt_template.messages[{j}].content", message.content, limits, v
            )
    else:
        v.add(f"{at}.prompt_template.type", "must be 'text' or 'chat'")
    return replace(prompt, type=kind)


def _resolve_end(
    at: str,
    step_id: str,
    name: str,
    steps: Sequence[Step],
    by_name: dict[str, int],
    by_id: dict[str, int],
    v: _Violations,
    id_field: str,
    name_field: str,
) -> int | None:
    by_given_id = by_id.get(step_id) if step_id else None
    by_given_name = by_name.get(name) if name else None
    if step_id and by_given_id is None:
        v.add(f"{at}.{id_field}", f"no step has id {step_id!r}")
        return None
    if name and by_given_name is None:
        v.add(f"{at}.{name_field}", f"no step is named {name!r}")
        return None
    if by_given_id is not None and by_given_name is not None and by_given_id != by_given_name:
        v.add(f"{at}.{name_field}", f"step {name!r} does not have id {step_id!r}")
        return None
    if by_given_id is None and by_given_name is None:
        v.add(f"{at}.{name_field}", f"required: the step's name, or its id in {id_field}")
        return None
    return by_given_id if by_given_id is not None else by_given_name


def _check_transitions(
    transitions: Sequence[Transition],
    steps: Sequence[Step],
    by_name: dict[str, int],
    by_id: dict[str, int],
    limits: Limits,
    v: _Violations,
    new_id: Callable[[], str],
) -> list[Transition] | None:
    resolved: list[Transition] = []
    ok = True
    labels: dict[int, set[str]] = defaultdict(set)
    has_default: set[int] = set()
    seen_ids: set[str] = set()
    for j, t in enumerate(transitions):
        at = f"step_transitions[{j}]"
        src = _resolve_end(
            at, t.source_step_id, t.source, steps, by_name, by_id, v, "source_step_id", "source"
        )
        dst = _resolve_end(
            at, t.target_step_id, t.target, steps, by_name, by_id, v, "target_step_id", "target"
        )
        transition_id = t.id or new_id()
        if t.id and not CLIENT_ID.fullmatch(t.id):
            v.add(f"{at}.id", "at most 64 characters of letters, digits, '_', '.', ':' or '-'")
        if transition_id in seen_ids:
            v.add(f"{at}.id", f"duplicate transition id {transition_id!r}")
        seen_ids.add(transition_id)
        if len(t.label) > limits.max_label_chars:
            v.add(f"{at}.label", f"at most {limits.max_label_chars} characters")
        if src is None or dst is None:
            ok = False
            continue
        source, target = steps[src], steps[dst]
        if source.step_type is StepType.END:
            v.add(f"{at}.source", "an END step has no outgoing transitions")
        if target.step_type is StepType.START:
            v.add(f"{at}.target", "nothing may lead back into the START step")
        if t.label:
            if source.step_type not in ROUTING_TYPES:
                v.add(f"{at}.label", "only CONDITION and LLM steps route by label")
            elif t.label in labels[src]:
                v.add(f"{at}.label", f"step {source.name!r} already has a transition {t.label!r}")
            labels[src].add(t.label)
        elif src in has_default:
            v.add(
                f"{at}.label",
                f"step {source.name!r} already has an unlabelled transition; "
                "give each branch a label",
            )
        else:
            has_default.add(src)
        resolved.append(
            Transition(
                id=transition_id,
                source_step_id=source.id,
                target_step_id=target.id,
                label=t.label,
                source=source.name,
                target=target.name,
            )
        )
    return resolved if ok else None


def _check_reachability(
    steps: Sequence[Step],
    transitions: Sequence[Transition],
    start: int,
    by_id: dict[str, int],
    v: _Violations,
) -> None:
    forward: dict[int, list[int]] = defaultdict(list)
    backward: dict[int, list[int]] = defaultdict(list)
    for t in transitions:
        a, b = by_id[t.source_step_id], by_id[t.target_step_id]
        forward[a].append(b)
        backward[b].append(a)

    def walk(roots: list[int], edges: dict[int, list[int]]) -> set[int]:
        seen = set(roots)
        queue = deque(roots)
        while queue:
            for nxt in edges[queue.popleft()]:
                if nxt not in seen:
                    seen.add(nxt)
                    queue.append(nxt)
        return seen

    reachable = walk([start], forward)
    ends = [i for i, s in enumerate(steps) if s.step_type is StepType.END]
    finishing = walk(ends, backward)
    for i, step in enumerate(steps):
        if i not in reachable:
            v.add(f"steps[{i}]", f"step {step.name!r} is not reachable from the START step")
        elif i not in finishing:
            v.add(f"steps[{i}]", f"step {step.name!r} cannot reach an END step")


def _template_fields(at: str, step: Step) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = []
    prompt = step.prompt_template
    if prompt is not None:
        fields.append((f"{at}.prompt_template.text", prompt.text))
        fields.extend(
            (f"{at}.prompt_template.messages[{j}].content", m.content)
            for j, m in enumerate(prompt.messages)
        )
    if step.llm is not None:
        fields.append((f"{at}.llm.system_prompt", step.llm.system_prompt))
    if step.http is not None:
        fields.append((f"{at}.http.url", step.http.url))
        fields.append((f"{at}.http.body", step.http.body))
        fields.extend((f"{at}.http.headers[{k!r}]", val) for k, val in step.http.headers)
    return fields


def _check_references(steps: Sequence[Step], by_name: dict[str, int], v: _Violations) -> None:
    for i, step in enumerate(steps):
        for field, text in _template_fields(f"steps[{i}]", step):
            try:
                refs = references(text)
            except TemplateError:
                continue  # already reported where the template was checked
            for ref in refs:
                if not ref.is_step:
                    continue
                target = by_name.get(ref.scope)
                if target is None:
                    v.add(field, f"${{{ref}}} refers to no step of this version")
                elif ref.key == "user_input" and steps[target].step_type is not StepType.INPUT:
                    v.add(field, f"${{{ref}}}: only an INPUT step has a user_input")

"""Domain records: plain dataclasses, free of protobuf and SQL."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class StepType(StrEnum):
    START = "START"
    LLM = "LLM"
    INPUT = "INPUT"
    CONDITION = "CONDITION"
    HTTP = "HTTP"
    END = "END"


@dataclass(frozen=True, slots=True)
class ChatMessageTemplate:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    type: str = "text"
    text: str = ""
    messages: tuple[ChatMessageTemplate, ...] = ()


@dataclass(frozen=True, slots=True)
class FlowInput:
    name: str
    required: bool = False
    description: str = ""


@dataclass(frozen=True, slots=True)
class StartConfig:
    inputs: tuple[FlowInput, ...] = ()


@dataclass(frozen=True, slots=True)
class LlmConfig:
    model: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    system_prompt: str = ""
    include_history: bool = False


@dataclass(frozen=True, slots=True)
class HttpConfig:
    method: str = ""
    url: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""
    timeout_ms: int = 0


@dataclass(frozen=True, slots=True)
class Step:
    id: str
    name: str
    step_type: StepType | None
    prompt_template: PromptTemplate | None = None
    start: StartConfig | None = None
    llm: LlmConfig | None = None
    http: HttpConfig | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    id: str
    source_step_id: str
    target_step_id: str
    label: str = ""
    source: str = ""
    target: str = ""


@dataclass(frozen=True, slots=True)
class Graph:
    steps: tuple[Step, ...]
    transitions: tuple[Transition, ...]


@dataclass(frozen=True, slots=True)
class FlowVersion:
    id: str
    flow_id: str
    organisation_id: str
    version: int
    graph: Graph
    created_at: datetime


@dataclass(slots=True)
class LiveFlow:
    id: str
    organisation_id: str
    name: str
    description: str
    created_at: datetime
    updated_at: datetime
    auto_eval_flow_ids: tuple[str, ...] = ()
    current_version: FlowVersion | None = None
    # Filled only when a caller asks for the full view; typed loosely to keep this
    # module free of the session records that build on it.
    sessions: list[object] = field(default_factory=list)
    # What made the flow, when a request_id came with it: a retry must be the same request.
    request_digest: str = ""


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    organisation_id: str
    salt: bytes
    secret_hash: bytes
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the organisation every query is scoped to."""

    organisation_id: str
    key_id: str

"""Model providers: the engine asks one for a stream of text chunks, then usage."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

DEFAULT_MODEL = "builtin/echo"


@dataclass(frozen=True, slots=True)
class ChatTurn:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class ModelRequest:
    model: str  # the part after the provider prefix
    messages: tuple[ChatTurn, ...]
    prompt: str  # the step's rendered prompt, as shown on the session step
    temperature: float | None = None
    max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class ModelChunk:
    text: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None


class ModelError(Exception):
    """The provider refused or failed; the message is safe to show (no keys)."""


class ModelProvider(Protocol):
    # True when answers come without waiting on anything outside the process: the engine
    # then keeps the step's moves in one journal instead of committing before the call.
    instant: bool

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]: ...


class EchoProvider:
    """`builtin/echo`: answers at once, deterministically, with the rendered prompt."""

    instant = True

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        yield ModelChunk(text=request.prompt, input_tokens=0, output_tokens=0)


@dataclass
class Providers:
    by_prefix: Mapping[str, ModelProvider] = field(
        default_factory=lambda: {"builtin": EchoProvider()}
    )

    def resolve(self, model: str) -> tuple[ModelProvider, str]:
        prefix, _, name = (model or DEFAULT_MODEL).partition("/")
        provider = self.by_prefix.get(prefix)
        if provider is None or (prefix == "builtin" and name != "echo"):
            known = ", ".join(sorted(f"{p}/…" for p in self.by_prefix if p != "builtin"))
            raise ModelError(
                f"unknown model {model!r}: this server offers builtin/echo"
                + (f" and {known}" if known else "")
                + " (set FLOWSVC_OPENAI_BASE_URL or FLOWSVC_MODEL_ENDPOINTS for more)"
            )
        return provider, name

"""`<name>/<model>` through the official openai SDK, against any OpenAI-compatible endpoint."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import openai

from flowsvc.adapters.propagation import trace_headers
from flowsvc.domain.providers import ModelChunk, ModelError, ModelRequest

_KEY_LIKE = re.compile(r"\b(sk|pk|rk|key)[-_][A-Za-z0-9*_\-]{4,}", re.IGNORECASE)


class OpenAICompatible:
    instant = False

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str,
        *,
        timeout: float,
        max_retries: int,
    ) -> None:
        self.name = name
        self._secrets = [api_key] if api_key else []
        # The SDK retries 408/409/429/5xx and connection errors with exponential backoff
        # and jitter, honouring Retry-After; max_retries bounds it.
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "not-needed",
            timeout=timeout,
            max_retries=max_retries,
        )

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return _KEY_LIKE.sub("[redacted]", text)[:500]

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        messages: Any = [{"role": t.role, "content": t.content} for t in request.messages]
        try:
            stream = await self._client.chat.completions.create(
                model=request.model,
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                temperature=openai.omit if request.temperature is None else request.temperature,
                max_tokens=openai.omit if request.max_tokens is None else request.max_tokens,
                extra_headers=trace_headers(),
            )
            async for chunk in stream:
                if chunk.choices:
                    text = chunk.choices[0].delta.content
                    if text:
                        yield ModelChunk(text=text)
                if chunk.usage is not None:
                    yield ModelChunk(
                        input_tokens=chunk.usage.prompt_tokens,
                        output_tokens=chunk.usage.completion_tokens,
                    )
        except openai.APIStatusError as exc:
            raise ModelError(
                f"{self.name} answered HTTP {exc.status_code}: {self._scrub(exc.message)}"
            ) from None
        except openai.APITimeoutError:
            raise ModelError(f"{self.name} did not answer in time") from None
        except openai.APIConnectionError as exc:
            raise ModelError(f"cannot reach {self.name}: {self._scrub(str(exc))}") from None
        except (openai.APIError, ValueError) as exc:
            raise ModelError(
                f"{self.name} sent a malformed answer: {self._scrub(str(exc))}"
            ) from None

    async def close(self) -> None:
        await self._client.close()

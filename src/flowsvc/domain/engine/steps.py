"""Executing one step: rendering its prompt, calling the model or HTTP tool, and the
moves that record its outcome (completed, failed, waiting for input, the run's end)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from flowsvc.domain.engine.journal import EngineCore, RunContext, StepFailure
from flowsvc.domain.engine.session_registry import SessionState
from flowsvc.domain.evals import wants_evaluation
from flowsvc.domain.ids import new_id
from flowsvc.domain.model import LlmConfig, Step, StepType
from flowsvc.domain.providers import (
    DEFAULT_MODEL,
    ChatTurn,
    ModelError,
    ModelRequest,
)
from flowsvc.domain.runs import (
    Cost,
    EventType,
    FlowRun,
    Message,
    RunEvent,
    RunStatus,
    SessionStatus,
    SessionStep,
    StepStatus,
)
from flowsvc.domain.telemetry import NO_SPAN, Span
from flowsvc.domain.templates import MissingValue, RenderContext, render, render_json
from flowsvc.domain.tools import HttpCall, ToolError


def body_text(body: dict[str, Any]) -> str:
    """The user's message as text: a single value as it is, anything else as JSON."""
    if len(body) == 1:
        (value,) = body.values()
        if isinstance(value, str):
            return value
    return json.dumps(body, ensure_ascii=False, sort_keys=True)


def effective_llm(step: Step, override: dict[str, Any]) -> LlmConfig:
    config = step.llm or LlmConfig()
    changes = {
        key.split(".", 1)[1]: value
        for key, value in override.items()
        if key.split(".", 1)[0] == step.name
    }
    if "max_tokens" in changes:
        changes["max_tokens"] = int(changes["max_tokens"])
    return replace(config, **changes) if changes else config



class StepExecution(EngineCore):
    def _render_context(self, ctx: RunContext) -> RenderContext:
        session = ctx.state.session
        return RenderContext(
            inputs=ctx.run.body,
            variables=session.variables,
            results=ctx.results,
            user_inputs=ctx.user_inputs,
        )

    def _render(self, ctx: RunContext, step: Step) -> str:
        prompt = step.prompt_template
        if prompt is None and step.http is None:
            return ""
        rc = self._render_context(ctx)
        if step.http is not None:
            call = self._http_call(step, rc)
            return f"{call.method} {call.url}" + (f"\n\n{call.body}" if call.body else "")
        assert prompt is not None
        if prompt.type == "chat":
            return "\n".join(f"{m.role}: {render(m.content, rc)}" for m in prompt.messages)
        return render(prompt.text, rc)

    @staticmethod
    def _http_call(step: Step, rc: RenderContext) -> HttpCall:
        config = step.http
        assert config is not None
        headers = tuple((k, render(v, rc)) for k, v in config.headers)
        # A JSON body (so declared) takes each value inside a string as that string's
        # content, escaped: a user's answer with a quote in it stays one string.
        json_body = any(k.lower() == "content-type" and "json" in v.lower() for k, v in headers)
        return HttpCall(
            method=config.method or "POST",
            url=render(config.url, rc),
            headers=headers,
            body=(render_json if json_body else render)(config.body, rc),
            timeout_ms=config.timeout_ms,
        )

    async def _call_http(self, ctx: RunContext, current: SessionStep) -> str:
        try:
            call = self._http_call(current.step, self._render_context(ctx))
        except MissingValue as exc:
            raise StepFailure(f"step {current.step.name!r}: {exc}") from exc
        # The call leaves the process: its start is committed first. A replica whose lease (or
        # whose request_id) another replica took learns it here, before any side effect.
        await self._settle(ctx)
        try:
            with self.telemetry.call_span(f"HTTP {call.method}", "http", call.url):
                async with asyncio.timeout(self._step_timeout):
                    return await self._http.call(call)
        except ToolError as exc:
            raise StepFailure(f"step {current.step.name!r}: {exc}") from exc
        except TimeoutError:
            raise StepFailure(
                f"step {current.step.name!r}: no answer within {self._step_timeout:g}s"
            ) from None

    def _begin_step(self, ctx: RunContext, step: Step) -> SessionStep:
        session, now = ctx.state.session, self._clock()
        current = SessionStep(
            id=new_id(),
            session_id=session.id,
            run_id=ctx.run.id,
            organisation_id=session.organisation_id,
            position=session.steps_count + 1,
            flow_version_id=ctx.version.id,
            step=step,
            status=StepStatus.RUNNING,
            created_at=now,
            updated_at=now,
        )
        session.steps_count += 1
        session.current_step_id = current.id
        session.updated_at = now
        ctx.run.steps.append(current)
        try:
            current.prompt = self._render(ctx, step)
        except MissingValue as exc:
            current.error = f"step {step.name!r}: {exc}"
        self._move(
            ctx,
            [self._event(ctx.state, ctx.run, EventType.STEP_STARTED, step=current)],
            new_steps=(current,),
        )
        return current

    async def _perform(self, ctx: RunContext, current: SessionStep) -> str | None:
        """The step's result, or None when it waits for a person."""
        kind = current.step.step_type
        if kind is StepType.INPUT:
            return None
        if kind is StepType.LLM:
            return await self._call_model(ctx, current)
        if kind is StepType.HTTP:
            return await self._call_http(ctx, current)
        # START has no prompt; CONDITION and END are their rendered prompt.
        return current.prompt

    async def _call_model(self, ctx: RunContext, current: SessionStep) -> str:
        config = effective_llm(current.step, ctx.run.override)
        try:
            provider, model = self._providers.resolve(config.model)
        except ModelError as exc:
            raise StepFailure(f"step {current.step.name!r}: {exc}") from exc
        rc = self._render_context(ctx)
        history = await self._conversation(ctx.state) if config.include_history else []
        turns: list[ChatTurn] = []
        try:
            if config.system_prompt:
                turns.append(ChatTurn("system", render(config.system_prompt, rc)))
            turns.extend(ChatTurn(m.role, m.content) for m in history)
            prompt = current.step.prompt_template
            if prompt is not None and prompt.type == "chat":
                turns.extend(ChatTurn(m.role, render(m.content, rc)) for m in prompt.messages)
            else:
                turns.append(ChatTurn("user", current.prompt))
        except MissingValue as exc:
            raise StepFailure(f"step {current.step.name!r}: {exc}") from exc
        request = ModelRequest(
            model=model,
            messages=tuple(turns),
            prompt=current.prompt,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
        )
        if not provider.instant:
            # STEP_STARTED is committed (and visible) before the model is called: a replica that
            # lost the session, or a request_id race, learns it before the call goes out.
            await self._settle(ctx)
        parts: list[str] = []
        model_name = config.model or DEFAULT_MODEL
        outcome = "error"
        # A client span only for a call that leaves the process (the builtin model answers in
        # it: its step's span carries the model and the tokens).
        call: Span = (
            NO_SPAN
            if provider.instant
            else self.telemetry.call_span(f"chat {model_name}", "model", model_name)
        )
        with call as span:
            try:
                # An instant provider (builtin) answers without waiting: no timer to arm.
                limit = contextlib.nullcontext() if provider.instant else asyncio.timeout(
                    self._step_timeout
                )
                async with limit:
                    async for chunk in provider.stream(request):
                        if chunk.text:
                            parts.append(chunk.text)
                            if self._hub.subscriber_count(current.session_id):
                                self._publish_delta(ctx, current, chunk.text, provider.instant)
                        if chunk.input_tokens is not None:
                            current.input_tokens = chunk.input_tokens
                        if chunk.output_tokens is not None:
                            current.output_tokens = chunk.output_tokens
                outcome = "ok"
            except ModelError as exc:
                span.fail(str(exc))
                raise StepFailure(f"step {current.step.name!r}: {exc}") from exc
            except TimeoutError:
                outcome = "timeout"
                raise StepFailure(
                    f"step {current.step.name!r}: the model did not finish within "
                    f"{self._step_timeout:g}s"
                ) from None
            finally:
                if outcome == "ok":
                    current.cost = self._prices.cost(
                        model_name, current.input_tokens, current.output_tokens
                    )
                span.set("gen_ai.usage.input_tokens", current.input_tokens)
                span.set("gen_ai.usage.output_tokens", current.output_tokens)
                self.telemetry.model_called(
                    model_name, outcome, current.input_tokens, current.output_tokens, current.cost
                )
        ctx.models[current.id] = model_name
        return "".join(parts)

    def _publish_delta(
        self, ctx: RunContext, current: SessionStep, text: str, instant: bool
    ) -> None:
        delta = RunEvent(
            seq=0,
            session_id=current.session_id,
            run_id=ctx.run.id,
            organisation_id=ctx.run.organisation_id,
            type=EventType.STEP_DELTA,
            time=self._clock(),
            delta=text,
            session_step_id=current.id,
        )
        if instant:
            # The model answered within this turn of the loop: the delta rides the step's
            # journal (not stored; published with its events, in order: after STEP_STARTED,
            # before STEP_COMPLETED). A commit of its own per delta made a run with
            # subscribers several commits, and as many messages to each subscriber.
            ctx.buffered_events.append(delta)
            return
        self._flush(ctx)
        last = ctx.last_commit
        if last is None:
            self._hub.publish([delta])
            return
        # Behind the step's STEP_STARTED and before anything committed after it: a future's
        # done-callbacks run in the order they were added (also once it is done), and the
        # store resolves journals in order. (Chained on a shield instead, a delta would come
        # a loop turn late, after the events of journals committed in the same batch.)
        hub = self._hub

        def publish(done: asyncio.Future[None]) -> None:
            if not done.cancelled() and done.exception() is None:
                hub.publish([delta])

        last.add_done_callback(publish)

    def _step_finished(self, current: SessionStep) -> None:
        seconds = (current.updated_at - current.created_at).total_seconds()
        self.telemetry.step_finished(current, seconds)

    def _complete_step(self, ctx: RunContext, current: SessionStep, result: str) -> None:
        current.status = StepStatus.COMPLETED
        current.result = result
        current.updated_at = self._clock()
        ctx.results[current.step.name] = result
        self._add_usage(ctx, current)
        self._step_finished(current)
        self._move(
            ctx,
            [self._event(ctx.state, ctx.run, EventType.STEP_COMPLETED, step=current)],
            steps=(current,),
        )

    def _add_usage(self, ctx: RunContext, current: SessionStep) -> None:
        run, session = ctx.run, ctx.state.session
        run.input_tokens += current.input_tokens
        run.output_tokens += current.output_tokens
        run.cost += current.cost
        session.cost += current.cost
        model = ctx.models.pop(current.id, None)
        if model is None:
            return
        entry = next((c for c in session.costs if c.type == "model" and c.name == model), None)
        if entry is None:
            entry = Cost(type="model", name=model)
            session.costs.append(entry)
        entry.input_tokens += current.input_tokens
        entry.output_tokens += current.output_tokens
        entry.cost += current.cost

    def _finish(self, state: SessionState, run: FlowRun, status: RunStatus) -> datetime:
        now = self._clock()
        run.status = status
        run.end_time = now
        run.updated_at = now
        start = run.start_time or run.created_at
        run.duration_ms = int((now - start) / timedelta(milliseconds=1))
        if run.user_message is None:
            run.user_message = Message(new_id(), run.created_at, "user", body_text(run.body))
        if run.ai_message is None:
            run.ai_message = Message(new_id(), now, "assistant", "")
        state.session.updated_at = now
        return now

    def _complete_run(self, ctx: RunContext, current: SessionStep, response: str) -> None:
        run, session = ctx.run, ctx.state.session
        current.status = StepStatus.COMPLETED
        current.result = response
        current.updated_at = self._clock()
        ctx.results[current.step.name] = response
        self._add_usage(ctx, current)
        self._step_finished(current)
        self._finish(ctx.state, ctx.run, RunStatus.COMPLETE)
        run.response = response
        if wants_evaluation(run) and not run.eval_job_id:
            run.eval_job_id = new_id()  # the job is created with this id once this commits
        assert run.user_message is not None and run.ai_message is not None
        run.ai_message.content = response
        self._append_messages(ctx, [run.user_message, run.ai_message])
        session.status = SessionStatus.COMPLETED
        session.artifact = {"response": response, "steps": dict(ctx.results)}
        self._move(
            ctx,
            [
                self._event(ctx.state, run, EventType.STEP_COMPLETED, step=current),
                self._event(ctx.state, run, EventType.RUN_COMPLETED, with_run=True),
            ],
            steps=(current,),
        )

    def _fail_run(self, ctx: RunContext, current: SessionStep | None, error: str) -> None:
        run, session = ctx.run, ctx.state.session
        events = []
        touched: tuple[SessionStep, ...] = ()
        if current is not None:
            current.status = StepStatus.FAILED
            current.error = error
            current.updated_at = self._clock()
            self._step_finished(current)
            touched = (current,)
            events.append(self._event(ctx.state, run, EventType.STEP_FAILED, step=current))
        self._finish(ctx.state, ctx.run, RunStatus.ERROR)
        run.error = error
        session.status = SessionStatus.FAILED
        session.error = error
        events.append(self._event(ctx.state, run, EventType.RUN_FAILED, with_run=True))
        self._move(ctx, events, steps=touched)

    def _pause_for_input(self, ctx: RunContext, current: SessionStep) -> None:
        run, session, now = ctx.run, ctx.state.session, self._clock()
        current.status = StepStatus.WAITING_FOR_INPUT
        current.updated_at = now
        run.status = RunStatus.WAITING_FOR_INPUT
        run.updated_at = now
        session.status = SessionStatus.WAITING_FOR_INPUT
        session.updated_at = now
        self._move(
            ctx,
            [self._event(ctx.state, run, EventType.INPUT_REQUIRED, step=current)],
            steps=(current,),
        )


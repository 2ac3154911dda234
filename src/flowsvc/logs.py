"""Structured logs: one JSON object a line on standard error.

A call's line (the most frequent one by far: one per RPC at INFO) is built in one C
`json.dumps` call, without `logging`'s record and formatter layers; other lines go through
`logging` as usual. Both reach standard error through one buffered sink, in the order they were
written: a flusher thread writes what it holds every FLUSH_SECONDS; a line at WARNING or
above is written at once (with everything before it), and so is a batch of BATCH_LINES lines;
the rest at exit (so a SIGTERM loses nothing; a SIGKILL loses at most the last FLUSH_SECONDS
of INFO lines).
"""

from __future__ import annotations

import atexit
import contextvars
import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any, TextIO

# Fields every log line of the current call carries (method, organisation, session, run,
# request_id, trace and span ids): set by the call guard, inherited by tasks the call starts.
CALL_FIELDS: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("call_fields")

FLUSH_SECONDS = 0.2
BATCH_LINES = 512

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_encode = json.JSONEncoder(default=str).encode  # the C encoder, made once


class Sink:
    """Lines to a text stream, written in batches by a flusher thread (see the module doc)."""

    def __init__(self, stream: TextIO | None = None, flush_seconds: float = FLUSH_SECONDS) -> None:
        self._stream = stream
        self._flush_seconds = flush_seconds
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # one batch written at a time, in order
        self._flusher_started = False

    def write(self, line: str, urgent: bool = False) -> None:
        with self._lock:
            lines = self._lines
            lines.append(line)
        if urgent or len(lines) >= BATCH_LINES:
            self.flush()
        elif not self._flusher_started:
            self._flusher_started = True
            threading.Thread(target=self._flusher, name="log-flusher", daemon=True).start()

    def flush(self) -> None:
        with self._write_lock:
            with self._lock:
                lines, self._lines = self._lines, []
            if lines:
                stream = self._stream or sys.stderr
                try:
                    stream.write("".join(lines))
                    stream.flush()
                except (OSError, ValueError):
                    pass  # standard error closed: nowhere left to say it

    def _flusher(self) -> None:
        # It wakes on its own rather than being woken: waking a thread from the writer's
        # (the event loop's) side costs that side a futex call and a GIL hand-over a line.
        while True:
            time.sleep(self._flush_seconds)
            if self._lines:
                self.flush()


SINK = Sink()
atexit.register(SINK.flush)
flush = SINK.flush


class _Clock:
    """ISO 8601 times to the millisecond, the date and time part made once a second."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = (-1, "")  # one attribute: threads see a second and its text together

    def iso(self, now: float) -> str:
        second = int(now)
        last, prefix = self._last
        if second != last:
            prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._last = (second, prefix)
        return f"{prefix}.{int((now - second) * 1000):03d}+00:00"


_CLOCK = _Clock()
_RPC = logging.getLogger("flowsvc.rpc")


def call_line(fields: dict[str, Any], code: str, seconds: float) -> None:
    """The line of a finished call (logger flowsvc.rpc, INFO): its fields, code and duration,
    the same keys in the same order as a `logging` line; `fields` is never empty."""
    if not _RPC.isEnabledFor(logging.INFO):
        return
    SINK.write(
        f'{{"time": "{_CLOCK.iso(time.time())}", {_CALL_HEAD}{_encode(fields)[1:-1]}, '
        f'"code": "{code}", "duration_ms": {round(seconds * 1000, 3)!r}}}\n'
    )


_CALL_HEAD = '"level": "info", "logger": "flowsvc.rpc", "msg": "rpc", '


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": _CLOCK.iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = CALL_FIELDS.get(None)
        if fields:
            entry.update(fields)
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encode(entry)


class SinkHandler(logging.Handler):
    """`logging`'s lines into the sink; WARNING and above written at once."""

    def __init__(self, sink: Sink = SINK) -> None:
        super().__init__()
        self._sink = sink

    def handle(self, record: logging.LogRecord) -> bool:
        # The sink orders and locks: no handler lock around each line.
        if self.filter(record):
            self.emit(record)
            return True
        return False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._sink.write(line + "\n", urgent=record.levelno >= logging.WARNING)

    def flush(self) -> None:
        self._sink.flush()


def configure(level: str) -> None:
    handler = SinkHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # SQLAlchemy and aiosqlite are chatty below WARNING.
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)

"""SQLite's group commits in a process of their own, for batches big enough to pay for it.

Why: in the server's process, the batch writer's thread needs the GIL for every step between
SQLite calls, and under load the event loop holds it: a ~13-journal commit took 6 to 9 ms of wall
for ~3 ms of CPU, and waiting for it paced W1 (BENCHMARKS.md, tenth session). A child process
has its own GIL; the loop hands it a batch as row values and gets the seqs back.

The journal writer still awaits each commit before the next (one batch at a time, in order,
as with the thread), so which of the two makes a commit never changes what is committed or in
which order. It sends batches here while they are big on average (journal_writer.py); a lone
caller's runs keep to the thread, where they pay no hand-over.

The child is spawned on first use and lives as long as the server: it exits when its socket
closes, after its batch when sent SIGTERM, and is killed with the server (PR_SET_PDEATHSIG). If
it dies, the batch it held is answered UNAVAILABLE (committed or not, its runs resume from what
the database holds); the thread commits until a new one answers, spawned a second later at the
earliest. One that ended cleanly (SIGTERM: a whole service being stopped) is not replaced.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import math
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import sys
from collections import deque
from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError

from flowsvc import logs
from flowsvc.domain.errors import Unavailable
from flowsvc.store.batch_codec import NotEncodable, decode_batch, encode_batch
from flowsvc.store.database import Database, unavailable_when_unreachable
from flowsvc.store.journal_commit import Fenced, JournalCommit
from flowsvc.store.journal_rows import JournalRows
from flowsvc.store.webhook_store import Outbox

log = logging.getLogger("flowsvc.store")

_LENGTH = struct.Struct("<I")
_BUFFER = 4 << 20  # asked for (the kernel caps it); W1 sends ~200 KB for 13 journals
_PR_SET_PDEATHSIG = 1

class CommitOutcomeUnknown(Unavailable):
    """The child ended with the batch: it may or may not have committed it. Not retried (a
    retry could commit its events twice); runs resume from what the database holds."""


class BatchRefused(Exception):
    """The child rolled the batch back (a request id taken, a key refused, the database
    unavailable): nothing of it is committed, so its journals are retried one by one."""


class WriterProcess:
    """The parent's side: spawns the child, sends it batches, settles their outcomes."""

    def __init__(
        self, url: str, sqlite_synchronous: str, lease_seconds: float, log_level: str = "INFO"
    ) -> None:
        self._config = (url, sqlite_synchronous, lease_seconds, log_level, os.getpid())
        self._sock: socket.socket | None = None
        self._child: Any = None
        self._received = bytearray()
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._starting: asyncio.Future[None] | None = None
        self.commits = 0  # batches the child committed
        self._not_before = 0.0  # loop time before which no child is spawned again

    @property
    def ready(self) -> bool:
        """A child is up and answering; until then batches go through the thread."""
        return self._sock is not None and (self._starting is None or self._starting.done())

    def start(self) -> None:
        """Spawn the child (it imports for a few hundred ms); `ready` says when it answers.
        Not again within a second of a child's end: one that dies as it starts is not
        respawned for every batch (the thread commits them meanwhile)."""
        loop = asyncio.get_running_loop()
        if self._sock is None and loop.time() >= self._not_before:
            self._spawn(loop)

    def _spawn(self, loop: asyncio.AbstractEventLoop) -> None:
        ours, theirs = socket.socketpair()
        for end in (ours, theirs):
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BUFFER)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFFER)
        context = multiprocessing.get_context("spawn")  # no fork of a process with threads
        child = context.Process(
            target=serve_commits, args=(theirs, *self._config), name="flowsvc-writer", daemon=True
        )
        try:
            child.start()
        except OSError:
            ours.close()
            log.warning("SQLite writer process not started", exc_info=True)
            self._not_before = loop.time() + 1.0
            return
        finally:
            theirs.close()
        self._child = child
        ours.setblocking(False)
        self._sock = ours
        self._starting = loop.create_future()
        self._waiting.append(self._starting)  # the child's first frame says it is ready
        loop.add_reader(ours.fileno(), self._readable)

    async def started(self) -> None:
        """Start the child now and wait until it answers."""
        if self._sock is None:
            self._spawn(asyncio.get_running_loop())
        if self._starting is None:
            raise Unavailable("the SQLite writer process could not be started")
        await asyncio.shield(self._starting)

    @property
    def pid(self) -> int | None:
        return None if self._child is None else int(self._child.pid)

    async def commit(
        self, batch: Sequence[JournalRows], outbox: bool
    ) -> tuple[list[list[int]], list[str], bool]:
        """The batch committed by the child: each journal's seqs, the sessions to claim again,
        and whether webhook deliveries were written (`outbox`: whether to write them).
        Raises Fenced (a session's epoch moved on), BatchRefused (rolled back: its journals
        are retried one by one) or CommitOutcomeUnknown (the child ended holding it)."""
        if self._sock is None:
            raise BatchRefused("the SQLite writer process is not running")
        try:
            data = encode_batch(outbox, batch)
        except NotEncodable as exc:
            raise BatchRefused(f"the batch cannot be sent to the writer process: {exc}") from exc
        outcome: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append(outcome)
        try:
            await asyncio.get_running_loop().sock_sendall(
                self._sock, _LENGTH.pack(len(data)) + data
            )
        except OSError:
            self._ended()
        kind, *value = await outcome
        if kind == "ok":
            seqs, requeue, deliveries = value
            self.commits += 1
            return seqs, requeue, deliveries
        if kind == "fenced":
            raise Fenced()
        raise BatchRefused(value[0])

    def _readable(self) -> None:
        assert self._sock is not None
        try:
            chunk = self._sock.recv(_BUFFER)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._ended()
            return
        self._received += chunk
        while len(self._received) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(self._received)
            if len(self._received) < _LENGTH.size + size:
                break
            frame = bytes(self._received[_LENGTH.size : _LENGTH.size + size])
            del self._received[: _LENGTH.size + size]
            waiter = self._waiting.popleft()
            if not waiter.done():
                outcome = pickle.loads(frame)
                waiter.set_result(None if waiter is self._starting else outcome)

    def _ended(self) -> None:
        """The child is gone: what it held is answered UNAVAILABLE."""
        starting, child = self._starting, self._child
        self._stop()
        exitcode = None if child is None else child.exitcode
        if exitcode == 0:
            self._not_before = math.inf  # stopped on purpose: the thread commits from now on
        else:
            self._not_before = asyncio.get_running_loop().time() + 1.0
            log.warning("SQLite writer process ended", extra={"exitcode": exitcode})
        while self._waiting:
            waiter = self._waiting.popleft()
            if waiter is starting:
                waiter.cancel()
            elif not waiter.done():
                waiter.set_exception(
                    CommitOutcomeUnknown("the SQLite writer process ended; try again")
                )

    def _stop(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        self._received.clear()
        self._starting = None
        child, self._child = self._child, None
        if child is not None:  # it closed its end as it ended: this join is short
            child.join(timeout=1)
            if child.exitcode is None:
                child.kill()
                child.join()

    async def close(self) -> None:
        """Let the child finish and exit (the journal writer has stopped sending)."""
        sock, child = self._sock, self._child
        if sock is None:
            return
        asyncio.get_running_loop().remove_reader(sock.fileno())
        self._sock = self._child = self._starting = None
        self._not_before = math.inf  # closed for good
        self._received.clear()
        while self._waiting:
            self._waiting.popleft().cancel()
        sock.close()  # the child reads the end, answers nothing more, exits
        if child is not None:
            await asyncio.to_thread(child.join, 5)  # off the loop: it may be mid-batch
            if child.exitcode is None:
                child.kill()


def serve_commits(
    sock: socket.socket,
    url: str,
    sqlite_synchronous: str,
    lease_seconds: float,
    log_level: str,
    server_pid: int,
) -> None:
    """The child: commits batches from `sock` one by one and answers each, in order."""
    if sys.platform.startswith("linux"):
        # Killed with the server, whatever kills it (a SIGKILL runs no cleanup of ours)...
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != server_pid:
        return  # ...unless it died before that was asked for

    # A Ctrl-C reaches the whole group; it is for the server, which finishes its commits
    # through this process, then closes it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGTERM (a whole service stopped, or multiprocessing's exit handler): the batch being
    # committed is finished and answered first; an idle child ends at once.
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop.requested)
    logs.configure(log_level)
    db = Database(url, sqlite_synchronous=sqlite_synchronous)
    commits = JournalCommit(db.batch_writer.dialect, lease_seconds)
    outbox = Outbox(db.batch_writer.dialect)
    reader = sock.makefile("rb")
    log.info("SQLite writer process ready", extra={"server_pid": server_pid})
    try:
        _answer(sock, ("ready",))
        while True:
            stop.idle = True
            head = reader.read(_LENGTH.size)
            stop.idle = False
            if len(head) < _LENGTH.size:
                return  # the server closed its end
            (size,) = _LENGTH.unpack(head)
            frame = reader.read(size)
            if len(frame) < size:
                return  # the server ended mid-frame: nothing of it was committed
            with_outbox, batch = decode_batch(frame)
            _answer(sock, _commit(db, commits, outbox if with_outbox else None, batch))
            if stop.asked:
                return
    except (SystemExit, BrokenPipeError, ConnectionResetError):
        return  # stopped while idle, or the server is gone: nothing to answer


class _Stop:
    """SIGTERM in the child: end now if idle, else after the batch in hand."""

    def __init__(self) -> None:
        self.idle = False
        self.asked = False

    def requested(self, signum: int, frame: Any) -> None:
        self.asked = True
        if self.idle:
            raise SystemExit(0)


def _commit(
    db: Database, commits: JournalCommit, outbox: Outbox | None, batch: list[JournalRows]
) -> tuple[Any, ...]:
    try:
        with unavailable_when_unreachable():
            written: list[tuple[list[list[int]], list[str]]] = []
            db.write_batch_here(lambda conn: written.append(commits.write(conn, batch, outbox)))
        [(seqs, requeue)] = written
    except Fenced:
        return ("fenced",)
    except IntegrityError as exc:
        return ("refused", f"the database refused the write: {exc.orig}")
    except Unavailable as exc:
        return ("refused", str(exc))
    except Exception as exc:  # the child must outlive anything one batch does
        log.exception("writer process: batch not handled")
        return ("refused", f"the write failed: {type(exc).__name__}")
    return ("ok", seqs, requeue, outbox is not None and outbox.take_wrote())


def _answer(sock: socket.socket, outcome: tuple[Any, ...]) -> None:
    data = pickle.dumps(outcome, pickle.HIGHEST_PROTOCOL)
    sock.sendall(_LENGTH.pack(len(data)) + data)

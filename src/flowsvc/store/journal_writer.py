"""Group commit of journals: many runs' moves in one transaction, seqs from the database,
every session write fenced by its lease epoch.

The engine hands over one Journal per move and does not wait unless it must; the writer
commits whatever has queued up in one transaction with one statement per table, then
resolves each journal's future in order. Many concurrent runs share each commit.

The transaction itself is journal_commit.py's. It is made by the batch writer's thread, or,
while batches are big on average (SQLite, under load), by the writer process
(writer_process.py): either way the writer awaits each commit before the next, so commits keep
the order journals came in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from flowsvc.domain.errors import LeaseLost, RequestIdTaken
from flowsvc.domain.runs import Journal
from flowsvc.store.database import Database, takes_a_request_id
from flowsvc.store.journal_commit import Fenced, JournalCommit
from flowsvc.store.journal_rows import JournalRows, next_batch
from flowsvc.store.writer_process import CommitOutcomeUnknown, WriterProcess

if TYPE_CHECKING:
    from flowsvc.store.webhook_store import Outbox

log = logging.getLogger("flowsvc.store")

# How much each batch's size moves the average that picks the thread or the process.
MEAN_BATCH_WEIGHT = 0.02


class JournalWriter:
    def __init__(
        self,
        db: Database,
        owner_id: str,
        lease_seconds: float,
        process: WriterProcess | None = None,
        process_from: int = 0,
    ) -> None:
        """process: commits the batches while they average `process_from` journals or more
        (0: never), once it answers; the batch writer's thread commits the others."""
        self.db = db
        self.owner_id = owner_id
        self._pending: list[tuple[JournalRows, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._committing = False  # a batch is taken and its commit not yet settled
        self._commits = JournalCommit(db.batch_writer.dialect, lease_seconds)
        self._process = process if process_from > 0 else None
        self._process_from = process_from
        self._mean_batch = 1.0  # journals a batch, recently (a moving average)
        self._use_process = False
        self.commits = 0  # group commits done; read by benchmarks
        # Called with the ids of sessions committed to, after each commit (event feeds),
        # and with sessions released while runs were queued on them (the engine claims them).
        self.on_committed: list[Any] = []
        self.on_requeue: Any = None
        # Called with (journals, seconds) after each group commit: metrics.
        self.on_batch: Any = None
        # Writes the webhook deliveries of each commit's events in its transaction, so they
        # are durable exactly when their events are (set by whoever wires webhooks).
        self.outbox: Outbox | None = None

    def start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="flowsvc-journal")

    async def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, for at most `timeout` seconds: shutdown must not hang on a
        database that does not answer. Nothing left was acknowledged to anyone (answers wait
        for commits); runs whose moves are left resume from what is committed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self._pending or self._committing) and loop.time() < deadline:
            self._wake.set()
            await asyncio.sleep(0.001)
        if self._pending:
            log.warning(
                "journal writer closed with journals unwritten",
                extra={"journals": len(self._pending)},
            )
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        if self._process is not None:
            await self._process.close()

    def record(self, journal: Journal) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((JournalRows.of(journal, self.owner_id), future))
        self._wake.set()
        if self._writer is None:
            self.start()
        return future

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                self._committing = True
                await self._write_pending()
            except Exception:  # the writer must outlive anything one batch does
                log.exception("journal writer: batch not handled")
            finally:
                self._committing = False

    async def _write_pending(self) -> None:
        while self._pending:
            batch = next_batch(self._pending)
            del self._pending[: len(batch)]
            try:
                await self._commit([rows for rows, _ in batch])
            except CommitOutcomeUnknown as unknown:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(unknown)
                continue
            except Exception as exc:
                if not isinstance(exc, Fenced):
                    log.warning("group commit failed; committing journals one by one",
                                exc_info=True)
                for rows, future in batch:
                    try:
                        await self._commit([rows], by_thread=True)
                    except Exception as one:
                        if future.done():
                            continue  # its awaiter went away; the outcome is the row's
                        if isinstance(one, Fenced):
                            future.set_exception(LeaseLost("the session's lease was lost"))
                        elif isinstance(one, IntegrityError) and takes_a_request_id(one):
                            # Another request committed this one's id. Any other key or
                            # check refusing a row is a plain error, never a retry.
                            future.set_exception(RequestIdTaken(str(one.orig)))
                        else:
                            future.set_exception(one)
            for _, future in batch:
                if not future.done():
                    future.set_result(None)

    def _by_process(self, journals: int) -> bool:
        """Whether the process commits, by the recent batches' size: on from `process_from`
        journals (other than releases) on average, off below half that. Not batch by batch:
        each switch makes the other connection read again every page the last one changed
        (SQLite's cache is a connection's own), and alternating cost more than either did
        (W1 at 16 callers: 492-528 runs/s against 517-560 by the thread alone). The average
        moves slowly (over ~50 batches) and a batch of releases alone leaves it be: at 0.1 a
        batch, with each release sweep counted as a batch of none, it fell below the mark
        under steady load and the thread took 3-17 % of W1's journals, second by second."""
        if journals:
            self._mean_batch += (journals - self._mean_batch) * MEAN_BATCH_WEIGHT
        if self._mean_batch >= self._process_from:
            self._use_process = True
        elif self._mean_batch < self._process_from / 2:
            self._use_process = False
        return self._use_process

    async def _commit(self, batch: Sequence[JournalRows], by_thread: bool = False) -> None:
        """by_thread: a journal retried alone after its batch failed, where the thread's
        commit gives the precise error (lease lost, request id taken)."""
        started = time.perf_counter()
        process = None if by_thread else self._process
        # Lease releases are left out of a batch's size: a sweep gives up many sessions at
        # once (one UPDATE), and a lone caller's sweeps would switch the process on.
        moves = sum(1 for rows in batch if rows.release is None)
        if process is not None and self._by_process(moves) and process.ready:
            seqs, requeue, deliveries = await process.commit(
                batch, outbox=self.outbox is not None
            )
            if deliveries and self.outbox is not None:
                self.outbox.wrote = True
        else:
            if process is not None and self._use_process:
                process.start()  # for the batches after this one
            written: list[tuple[list[list[int]], list[str]]] = []

            def write(conn: Connection) -> None:
                written.append(self._commits.write(conn, batch, self.outbox))

            await self.db.write_batch(write)
            [(seqs, requeue)] = written
        self.commits += 1
        touched: set[str] = set()
        for rows, got in zip(batch, seqs, strict=True):
            for event, seq in zip(rows.events, got, strict=True):
                event.seq = seq
                touched.add(event.session_id)
            if rows.session is not None and got:
                rows.session.last_seq = max(rows.session.last_seq, got[-1])
        try:
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - started)
            for listener in self.on_committed:
                listener(touched)
            if requeue and self.on_requeue is not None:
                self.on_requeue(requeue)
        except Exception:  # committed all the same: never to be written again
            log.exception("journal writer: a listener of a commit failed")

"""Group commits: predictions that finish at about the same time are inserted in one transaction.

Each request still awaits its own row's commit before it answers, so a 200 always means stored.
Under load the writer commits whatever accumulated during the previous commit (a few rows per
transaction instead of one), which keeps the database off the critical path; a lone request is
written at once. If a group fails for a reason other than an outage, its rows are retried one by
one so that one bad row cannot fail its neighbours; the row that still fails is `RecordNotStored`
(a 500: retrying will not help), never `DatabaseUnavailable` (a 503 that promises it would).

On PostgreSQL a group goes through the writer's own connection (`group_connection.py`): one
prepared statement, no pool or session in between. The first group of a day, whose partition
may not exist yet, and a database whose sessions are bound elsewhere (the tests' outer
transaction) take the session's path, which creates partitions in its transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import anyio
import anyio.to_thread

from visinspect.db import partitions, repository
from visinspect.db.group_connection import GroupConnection
from visinspect.db.session import Database
from visinspect.db.tables import EmbeddingRecord, HeadAnswerRecord, PredictionRecord
from visinspect.errors import DatabaseTooSlow, DatabaseUnavailable, RecordNotStored


@dataclass(slots=True)
class _Pending:
    record: PredictionRecord
    embedding: EmbeddingRecord | None
    answers: list[HeadAnswerRecord]
    future: asyncio.Future[PredictionRecord] = field(repr=False)


class PredictionWriter:
    def __init__(self, database: Database, max_group: int = 512) -> None:
        self.database = database
        self.max_group = max_group
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        own = database.owns_sessions and database.backend == "postgresql"
        self._connection = GroupConnection(database.engine) if own else None
        # The connection's one thread: writes never wait behind reads for the pool's threads.
        self._thread = anyio.CapacityLimiter(1)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve(), name="db-writer")

    async def store(
        self,
        record: PredictionRecord,
        embedding: EmbeddingRecord | None = None,
        answers: list[HeadAnswerRecord] | None = None,
    ) -> PredictionRecord:
        """Returns once the row (with its kept embedding and its heads' answers, if given) is
        committed (with its id);
        raises DatabaseUnavailable (an outage) or RecordNotStored (the database refused this
        row) if not."""
        future: asyncio.Future[PredictionRecord] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(record, embedding, answers or [], future))
        return await future

    async def _serve(self) -> None:
        while True:
            group = [await self._queue.get()]
            while len(group) < self.max_group and not self._queue.empty():
                group.append(self._queue.get_nowait())
            await self._write(group)

    async def _write(self, group: list[_Pending]) -> None:
        try:
            await self._insert(group)
        except (DatabaseUnavailable, DatabaseTooSlow) as exc:  # 503: the same for every row
            _fail(group, exc)
            return
        except Exception as exc:
            if len(group) == 1:
                refused = RecordNotStored(f"the database refused the row: {type(exc).__name__}")
                refused.__cause__ = exc  # the traceback in the request's log line shows it
                _fail(group, refused)
                return
            for pending in group:  # isolate the row that fails
                await self._write([pending])
            return
        for pending in group:
            if not pending.future.done():
                pending.future.set_result(pending.record)

    async def _insert(self, group: list[_Pending]) -> None:
        records = [p.record for p in group]
        embeddings = [p.embedding for p in group]
        answers = [p.answers for p in group]
        connection = self._connection
        if connection is not None and partitions.known(
            self.database.engine, repository.group_days(records)
        ):
            await anyio.to_thread.run_sync(
                connection.insert, records, embeddings, answers, limiter=self._thread
            )
        else:
            await self.database.run(repository.add_predictions, records, embeddings, answers)

    async def close(self) -> None:
        """Write what is queued, then stop (the server has drained its requests by now)."""
        while not self._queue.empty():
            group = [
                self._queue.get_nowait() for _ in range(min(self.max_group, self._queue.qsize()))
            ]
            await self._write(group)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._connection is not None:
            self._connection.close()


def _fail(group: list[_Pending], exc: Exception) -> None:
    for pending in group:
        if not pending.future.done():
            pending.future.set_exception(exc)

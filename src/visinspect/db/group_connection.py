"""The group commit's own PostgreSQL connection: each group is one execution of one prepared
statement, and nothing else.

Through the ORM session and the pool, a one-row group cost 0.68 ms of the writer thread's CPU
and 0.61 ms of the database's (`python -m bench.writer`, docs/benchmarks.md): a checkout and
its ping (a round trip), a session and its transaction objects, and a statement that
PostgreSQL planned again for every group.
With `plan_cache_mode = auto` the planner keeps custom plans for a statement whose arrays it can
see the length of, and planning was a third of the server's work. Here the writer holds one
connection of its own, taken from the engine (so it has the engine's settings: UTC, the
statement timeout), in autocommit, with `plan_cache_mode = force_generic_plan` on it alone, and
runs each group through the driver directly: 0.25 ms and 0.36 ms, and half the wall time.

The pool pinged a connection before every use so that one the server had closed (a restart,
`pg_terminate_backend`) was replaced before it failed a request. A connection the server closed
has something to read: a poll with no timeout before each group finds it, without a round trip.
"""

from __future__ import annotations

import select
from collections.abc import Sequence
from typing import Any

import psycopg
import psycopg.errors
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import TextClause

from visinspect.db import repository
from visinspect.db.session import statement_cancelled, unavailable
from visinspect.db.tables import EmbeddingRecord, HeadAnswerRecord, PredictionRecord


class GroupConnection:
    """One PostgreSQL connection for the group commit; used by one thread at a time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._connection: psycopg.Connection[Any] | None = None
        self._sql: dict[str, str] = {}  # the statement's text -> the driver's

    def insert(
        self,
        records: list[PredictionRecord],
        embeddings: Sequence[EmbeddingRecord | None],
        answers: Sequence[Sequence[HeadAnswerRecord]],
    ) -> None:
        """Blocking: insert the group (its days' partitions must exist) and set the records'
        ids. Raises DatabaseUnavailable, DatabaseTooSlow, or the driver's own error for a row
        the database refuses (the writer then writes the group's rows one by one)."""
        group = repository.group_insert(records, embeddings, answers, self.engine.dialect)
        sql = self._driver_sql(group.statement)
        try:
            with self._connected().cursor() as cursor:
                cursor.execute(sql, group.parameters, prepare=True)
                ids = [row[0] for row in cursor.fetchall()]
        except psycopg.errors.QueryCanceled as exc:  # the connection is still good
            raise statement_cancelled() from exc
        except (psycopg.OperationalError, psycopg.InterfaceError, SQLAlchemyError) as exc:
            self.close()  # the next group connects again
            raise unavailable(exc) from exc
        for record, row_id in zip(records, ids, strict=True):
            record.id = row_id

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _connected(self) -> psycopg.Connection[Any]:
        connection = self._connection
        if connection is not None and not _closed_by_server(connection):
            return connection
        self.close()
        pooled = self.engine.raw_connection()  # pinged by the pool; the engine's settings
        pooled.detach()  # from now on it is this writer's, never handed to anyone else
        connection = _psycopg(pooled.dbapi_connection)
        try:
            connection.rollback()  # the pool's ping may have begun a transaction
            connection.autocommit = True  # a group is one statement, atomic by itself
            connection.execute("SET plan_cache_mode = force_generic_plan")
        except BaseException:
            connection.close()  # detached: nobody else would
            raise
        self._connection = connection
        return connection

    def _driver_sql(self, statement: TextClause) -> str:
        sql = self._sql.get(statement.text)
        if sql is None:
            sql = self._sql[statement.text] = str(statement.compile(dialect=self.engine.dialect))
        return sql


def _psycopg(connection: object) -> psycopg.Connection[Any]:
    if not isinstance(connection, psycopg.Connection):  # only PostgreSQL's engines get here
        raise TypeError(f"not a psycopg connection: {type(connection).__name__}")
    return connection


def _closed_by_server(connection: psycopg.Connection[Any]) -> bool:
    """Whether the server closed (or is closing) the connection while it sat idle: between
    groups it has nothing to say, so anything to read is its goodbye (or the end of the
    stream)."""
    if connection.closed or connection.broken:
        return True
    poll = select.poll()  # not select(): a busy server's descriptors go past FD_SETSIZE (1024)
    poll.register(connection.fileno(), select.POLLIN)
    return bool(poll.poll(0))

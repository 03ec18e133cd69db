"""Engine, sessions, and the one place where driver errors become `DatabaseUnavailable`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import structlog
from psycopg.errors import QueryCanceled
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError, TimeoutError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from visinspect.config import Settings
from visinspect.errors import DatabaseTooSlow, DatabaseUnavailable, StartupFailed

T = TypeVar("T")
log = structlog.get_logger("visinspect")

_DATABASE_RETRY_INTERVAL_S = 1.0


def create_db_engine(settings: Settings, serving: bool = False) -> Engine:
    """An engine that fails fast: bounded connect and pool waits, dead connections pinged out;
    `serving`: on PostgreSQL, with DATABASE_STATEMENT_TIMEOUT_S on every statement (one slow
    query must not hold a connection of the pool, and a request's slot, for minutes)."""
    url = make_url(settings.database_url)
    timeout = settings.database_connect_timeout_s
    if url.get_backend_name() == "sqlite":
        if url.database in (None, "", ":memory:"):  # one connection, or every thread sees its own
            engine = create_engine(
                url,
                poolclass=StaticPool,
                connect_args={"timeout": timeout, "check_same_thread": False},
            )
        else:
            engine = create_engine(url, connect_args={"timeout": timeout})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_pool_size,
        pool_timeout=timeout,
        connect_args={
            "connect_timeout": max(1, round(timeout)),
            "application_name": "visinspect",
            # date() and friends count UTC days
            "options": "-c timezone=UTC" + _statement_timeout(settings, serving),
        },
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class Database:
    """Owns the engine; runs blocking ORM work in a worker thread, one transaction per call.

    `sessions` may be given to bind the work elsewhere, e.g. into a test's outer transaction.
    """

    def __init__(
        self,
        engine: Engine,
        max_concurrency: int,
        sessions: sessionmaker[Session] | None = None,
    ) -> None:
        self.engine = engine
        # False when the sessions are bound into a caller's transaction (the tests'): then every
        # write must go through them, never through a connection of its own.
        self.owns_sessions = sessions is None
        self.sessions = sessions or sessionmaker(engine, expire_on_commit=False)
        if isinstance(engine.pool, StaticPool):  # one shared connection: one user at a time
            max_concurrency = 1
        # No more threads at the database than pooled connections: beyond that, connections would
        # be opened and closed per request (pool overflow), the slowest way to use PostgreSQL.
        self._limiter = anyio.CapacityLimiter(max_concurrency)

    @property
    def backend(self) -> str:
        return self.engine.url.get_backend_name()

    def describe(self) -> str:
        """The URL without its password, safe for logs."""
        return self.engine.url.render_as_string(hide_password=True)

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """`work(session, *args)` in a thread; committed when it returns, rolled back if it raises."""
        return await anyio.to_thread.run_sync(self._transaction, work, *args, limiter=self._limiter)

    def _transaction(self, work: Callable[..., T], *args: Any) -> T:
        try:
            with self.sessions.begin() as session:
                return work(session, *args)
        except OperationalError as exc:
            if isinstance(exc.orig, QueryCanceled):
                raise statement_cancelled() from exc
            raise unavailable(exc) from exc
        except TimeoutError as exc:
            raise unavailable(exc) from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise unavailable(exc) from exc
            raise

    def dispose(self) -> None:
        self.engine.dispose()


def _statement_timeout(settings: Settings, serving: bool) -> str:
    milliseconds = round(settings.database_statement_timeout_s * 1000)
    return f" -c statement_timeout={milliseconds}" if serving and milliseconds else ""


def unavailable(exc: Exception) -> DatabaseUnavailable:
    """The 503 for a driver's failure to reach the database (the session's path and the group
    commit's own connection alike)."""
    return DatabaseUnavailable(f"the database is unavailable: {describe_failure(exc)}")


def statement_cancelled() -> DatabaseTooSlow:
    """The 503 for a statement PostgreSQL cancelled at DATABASE_STATEMENT_TIMEOUT_S."""
    return DatabaseTooSlow(
        "a query took longer than DATABASE_STATEMENT_TIMEOUT_S and was cancelled; "
        "nothing was stored"
    )


def describe_failure(exc: Exception) -> str:
    """The driver's first line (what an operator needs), without SQLAlchemy's wrapping."""
    original = getattr(exc, "orig", None) or exc
    message = str(original).strip()
    return message.splitlines()[0][:300] if message else type(original).__name__


def wait_for_database(engine: Engine, wait_s: float) -> None:
    """Containers may start before their database: retry for up to `wait_s` (0: one attempt)."""
    deadline = time.monotonic() + wait_s
    attempt = 0
    while True:
        attempt += 1
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            reason = describe_failure(exc)
            if time.monotonic() + _DATABASE_RETRY_INTERVAL_S > deadline:
                raise StartupFailed(
                    "database",
                    reason,
                    "check DATABASE_URL and that the database server is up; "
                    "DATABASE_WAIT_S makes start-up wait for it",
                ) from exc
            log.warning("db.wait", attempt=attempt, reason=reason)
            time.sleep(_DATABASE_RETRY_INTERVAL_S)
            continue
        if attempt > 1:
            log.info("db.reachable", attempt=attempt)
        return

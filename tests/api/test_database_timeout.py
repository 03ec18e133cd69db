"""A request's query is cancelled after DATABASE_STATEMENT_TIMEOUT_S (on PostgreSQL): a 503 that
says so, at once, instead of a request (and a pooled connection) held for as long as the query
runs or waits. Migrations are exempt."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from tests.support import fresh_postgres_database, make_settings, running_app, services_of
from visinspect.db.session import create_db_engine

TIMEOUT_S = 0.5


@pytest.fixture
def database_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


def test_a_query_held_by_a_lock_is_cancelled_with_a_503(database_url: str) -> None:
    settings = make_settings(database_url, database_statement_timeout_s=TIMEOUT_S)
    with running_app(settings) as client:
        assert client.get("/predictions").status_code == 200
        locker = create_engine(database_url)
        with locker.connect() as holding:  # another client keeps the table locked
            holding.execute(text("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE"))
            started = time.monotonic()
            response = client.get("/predictions")
            waited = time.monotonic() - started
            holding.rollback()
        locker.dispose()
        assert (response.status_code, response.json()["error"]["code"]) == (503, "database_timeout")
        assert "DATABASE_STATEMENT_TIMEOUT_S" in response.json()["error"]["message"]
        assert response.headers["retry-after"]
        assert waited < TIMEOUT_S + 2
        assert client.get("/predictions").status_code == 200  # the connection was not lost
        engine = services_of(client).history.database.engine
        with engine.connect() as connection:
            assert connection.scalar(text("SHOW statement_timeout")) == "500ms"


def test_migrations_and_tools_run_without_it(database_url: str) -> None:
    settings = make_settings(database_url, database_statement_timeout_s=TIMEOUT_S)
    engine = create_db_engine(settings)  # what migrations and `visinspect db` use
    with engine.connect() as connection:
        assert connection.scalar(text("SHOW statement_timeout")) == "0"
        connection.execute(text("SELECT pg_sleep(:s)"), {"s": TIMEOUT_S * 2})
    engine.dispose()

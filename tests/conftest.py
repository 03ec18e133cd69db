"""Fixtures: real photos, the real model, a real PostgreSQL database per test session, real apps,
real server processes. Plain helpers are in `tests/support.py`.

PostgreSQL: TEST_DATABASE_URL names a server and a database we may connect to (default: this
machine's `test` database); each session creates its own throw-away database beside it and drops it
at the end, so runs never see each other's rows.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, event
from sqlalchemy.orm import sessionmaker

from tests.support import (
    PHOTOS,
    fresh_postgres_database,
    make_settings,
    running_app,
    serving,
)
from visinspect.config import Precision, Settings
from visinspect.db.schema import upgrade_to_head
from visinspect.db.session import Database
from visinspect.inference.classifier import Classifier, load_classifier

# One model artifact per test session (fp32, measured on scikit-image's photos), served by every app
# and server process the tests start. MODEL_DIR=... reuses an artifact that is up to date.
os.environ.setdefault("MODEL_DIR", tempfile.mkdtemp(prefix="visinspect-model-"))


@pytest.fixture(scope="session", autouse=True)
def model_artifact() -> Path:
    from visinspect.cli.model import is_up_to_date
    from visinspect.offline.build import build_artifact
    from visinspect.offline.photos import find_photos

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    if not is_up_to_date(settings, {Precision.FP32}):
        build_artifact(settings, {Precision.FP32}, find_photos([PHOTOS], installed=False))
    return settings.model_dir


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def photos() -> Path:
    """Folder of real photographs shipped in scikit-image's wheel (coffee.png, chelsea.png, ...)."""
    return PHOTOS


@pytest.fixture(scope="session")
def classifier() -> Classifier:
    """The service's default: ONNX Runtime, exported from the PyTorch model."""
    return load_classifier(Settings(_env_file=None))  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def torch_classifier() -> Classifier:
    """The reference: eager PyTorch."""
    return load_classifier(Settings(_env_file=None, inference_backend="pytorch"))  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def pg_client(postgres_url: str) -> Iterator[TestClient]:
    with running_app(make_settings(postgres_url)) as client:
        yield client


@pytest.fixture(scope="session")
def sqlite_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    path = tmp_path_factory.mktemp("sqlite") / "visinspect.db"
    with running_app(make_settings(f"sqlite:///{path}")) as client:
        yield client


@pytest.fixture(params=["postgresql", "sqlite"])
def client(request: pytest.FixtureRequest) -> TestClient:
    """Each API test runs against PostgreSQL and against the SQLite default."""
    name = "pg_client" if request.param == "postgresql" else "sqlite_client"
    fixture: TestClient = request.getfixturevalue(name)
    return fixture


def _migrated(url: str) -> str:
    engine = create_engine(url)
    upgrade_to_head(engine)
    engine.dispose()
    return url


@pytest.fixture(scope="session")
def empty_postgres_url() -> Iterator[str]:
    """Migrated, and kept empty: only rolled-back transactions (`database`) use it."""
    with fresh_postgres_database() as url:
        yield _migrated(url)


@pytest.fixture(scope="session")
def empty_sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _migrated(f"sqlite:///{tmp_path_factory.mktemp('rows') / 'rows.db'}")


@pytest.fixture(params=["postgresql", "sqlite"])
def database(
    request: pytest.FixtureRequest, empty_postgres_url: str, empty_sqlite_url: str
) -> Iterator[Database]:
    """A `Database` on the migrated schema whose every transaction is nested in one outer
    transaction that is rolled back afterwards: a test sees only its own rows, and no app starts."""
    if request.param == "postgresql":
        engine = create_engine(empty_postgres_url)
    else:
        engine = create_engine(empty_sqlite_url)
        # pysqlite's own transaction handling defeats SAVEPOINT; let SQLAlchemy emit BEGIN
        # (the SQLAlchemy documentation's recipe for SQLite savepoints).
        event.listen(engine, "connect", _sqlite_autocommit_driver)
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
    connection = engine.connect()
    outer = connection.begin()
    sessions = sessionmaker(
        bind=connection, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )
    try:
        yield Database(engine, 1, sessions=sessions)
    finally:
        outer.rollback()
        connection.close()
        engine.dispose()


def _sqlite_autocommit_driver(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    """A real `visinspect serve` on a fresh database, keeping images in tmp_path/images; its
    log is tmp_path/server.log."""
    with (
        fresh_postgres_database() as url,
        serving(
            url,
            tmp_path / "server.log",
            IMAGE_STORE_DIR=str(tmp_path / "images"),
            HEADS_DIR=str(tmp_path / "heads"),
        ) as (process, base),
    ):
        yield process, base, url

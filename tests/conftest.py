"""Shared fixtures: real photos, a real PostgreSQL database per test session, real apps.

PostgreSQL: TEST_DATABASE_URL names a server and a database we may connect to (default: this
machine's `test` database); each session creates its own throw-away database beside it and drops it
at the end, so runs never see each other's rows.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from visinspect.config import Settings
from visinspect.db.models import PredictionRecord
from visinspect.inference.model import Classifier, load_classifier
from visinspect.main import create_app

# One ONNX export per test session, not one per app the tests start.
os.environ.setdefault("MODEL_CACHE_DIR", tempfile.mkdtemp(prefix="visinspect-model-cache-"))

TEST_DATABASE_URL = os.environ.get(
    "TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _skimage_data() -> Path:
    spec = find_spec("skimage")
    assert spec is not None, "scikit-image is a dev dependency"
    assert spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "data"


PHOTOS = _skimage_data()


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


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """Create an empty database on the test server; yield its URL; drop it afterwards."""
    admin_url = make_url(TEST_DATABASE_URL)
    name = f"visinspect_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"database_url": database_url, "log_format": "console"}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@contextmanager
def running_app(settings: Settings) -> Iterator[TestClient]:
    """The real app with its lifespan run (migrations, model load), torn down afterwards."""
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


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


def rows_with_request_id(client: TestClient, request_id: str) -> list[PredictionRecord]:
    """Read the table directly (not through the API) to check what a request really stored."""
    engine = client.app.state.database.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        rows = conn.execute(
            select(PredictionRecord).where(PredictionRecord.request_id == request_id)
        )
        return list(rows)  # type: ignore[arg-type]


def count_rows(client: TestClient) -> int:
    engine = client.app.state.database.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(PredictionRecord)) or 0)

"""Plain helpers shared by the test modules (fixtures live in conftest.py).

Real parts only: a PostgreSQL server (TEST_DATABASE_URL), real photos, real server processes.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from visinspect.config import Settings
from visinspect.db.session import Database
from visinspect.db.tables import PredictionRecord
from visinspect.inference.backends import InferenceBackend
from visinspect.inference.classifier import Classifier
from visinspect.main import create_app
from visinspect.startup import Services

TEST_DATABASE_URL = os.environ.get(
    "TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
VISINSPECT = str(Path(sys.executable).parent / "visinspect")


def _skimage_data() -> Path:
    spec = find_spec("skimage")
    assert spec is not None, "scikit-image is a dev dependency"
    assert spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "data"


# Real photographs shipped in scikit-image's wheel (coffee.png, chelsea.png, ...).
PHOTOS = _skimage_data()


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


@contextmanager
def app_role_database() -> Iterator[tuple[str, str]]:
    """A fresh database migrated by its owner with DATABASE_APP_ROLE set to a new login role:
    (the owner's URL, the serving role's URL). As `deploy/k8s` runs: the migrate Job as the
    owner, the pods as the role."""
    from visinspect.db.schema import upgrade_to_head

    role = f"visinspect_app_{uuid.uuid4().hex[:8]}"
    admin = create_engine(TEST_DATABASE_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN"))
    try:
        with fresh_postgres_database() as url:
            owner = create_engine(url)
            try:
                upgrade_to_head(owner, app_role=role)
            finally:
                owner.dispose()
            yield url, make_url(url).set(username=role).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()


def set_connections_allowed(database: str, allowed: bool) -> None:
    """A real outage for one database: refuse new connections and cut the existing ones."""
    admin = create_engine(TEST_DATABASE_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(
            text(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS {str(allowed).lower()}')
        )
        if not allowed:
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
                {"d": database},
            )
    admin.dispose()


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"database_url": database_url, "log_format": "console"}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@contextmanager
def running_app(settings: Settings) -> Iterator[TestClient]:
    """The real app with its lifespan run (migrations, model load), torn down afterwards."""
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def services_of(client: TestClient) -> Services:
    services: Services = client.app.state.services  # type: ignore[attr-defined]
    return services


def synthetic_record(
    request_id: str,
    class_name: str = "espresso",
    created_at: datetime | None = None,
    image_sha256: str = "0" * 64,
    class_id: int = 967,
    confidence: float = 0.9,
) -> PredictionRecord:
    """A row as the service would write it, for tests of the database layer that need rows, not
    classifications."""
    return PredictionRecord(
        created_at=created_at or datetime.now(UTC),
        request_id=request_id,
        model_name="efficientnet_lite0",
        model_version="sha256:0",
        backend="onnxruntime",
        precision="fp32",
        class_id=class_id,
        class_name=class_name,
        confidence=confidence,
        predictions=[{"class_id": class_id, "class_name": class_name, "confidence": confidence}],
        image_sha256=image_sha256,
        image_width=1,
        image_height=1,
        image_format="PNG",
        image_bytes=1,
        filename=None,
        latency_ms=1.0,
    )


@contextmanager
def app_on(
    backend: str, tmp_path_factory: Any, name: str, **overrides: Any
) -> Iterator[TestClient]:
    """The real app on a fresh database of `backend` ("postgresql" or "sqlite")."""
    if backend == "postgresql":
        with (
            fresh_postgres_database() as url,
            running_app(make_settings(url, **overrides)) as client,
        ):
            yield client
    else:
        path = tmp_path_factory.mktemp(name) / f"{name}.db"
        with running_app(make_settings(f"sqlite:///{path}", **overrides)) as client:
            yield client


def upload_all(client: TestClient, photos: Path, names: list[str]) -> list[dict[str, Any]]:
    """POST each photo to /predict, one after another; their 200 bodies."""
    bodies = []
    for name in names:
        response = client.post("/predict", files={"file": (name, (photos / name).read_bytes())})
        assert response.status_code == 200, response.text
        bodies.append(response.json())
    return bodies


def rows_with_request_id(client: TestClient, request_id: str) -> list[Any]:
    """Read the table directly (not through the API) to check what a request really stored."""
    engine = services_of(client).history.database.engine
    with engine.connect() as conn:
        rows = conn.execute(
            select(PredictionRecord.__table__).where(PredictionRecord.request_id == request_id)
        )
        return list(rows)


async def count_records(database: Database) -> int:
    """Rows in the predictions table, read through `database` (inside a test's transaction)."""

    def count(session: Session) -> int:
        return int(session.scalar(select(func.count(PredictionRecord.id))) or 0)

    return await database.run(count)


def count_rows(client: TestClient) -> int:
    engine = services_of(client).history.database.engine
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(PredictionRecord)) or 0)


class GatedBackend:
    """Wraps the real backend; holds each forward pass until the test opens the gate."""

    def __init__(self, inner: InferenceBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.entered = threading.Event()
        self.release = threading.Event()

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        self.entered.set()
        self.release.wait(timeout=60)
        return self.inner.forward(batch)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.forward(batch)[0]


@contextmanager
def gated_model(classifier: Classifier) -> Iterator[GatedBackend]:
    """Hold every forward pass of `classifier` until the test sets `gate.release`; the gate is
    opened and removed again when the block ends, whatever happened in it."""
    gate = GatedBackend(classifier.backend)
    classifier.backend = gate
    try:
        yield gate
    finally:
        gate.release.set()
        classifier.backend = gate.inner


def process_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody has reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (FileNotFoundError, ProcessLookupError):  # reaped before, or between open and read
        return True


def wait_until(
    condition: Callable[[], bool], timeout_s: float = 30, what: str = "", interval_s: float = 0.01
) -> None:
    """Poll `condition` until it holds; fail after `timeout_s` (never a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(interval_s)


# --- real server processes --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment(**values: str) -> dict[str, str]:
    """This process's environment without our settings, plus JSON logs and `values`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "MODEL_"))}
    # The session's model artifact (tests/conftest.py), unless `values` names another.
    env.update({"LOG_FORMAT": "json", "LOG_LEVEL": "INFO", "MODEL_DIR": os.environ["MODEL_DIR"]})
    env.update(values)
    return env


def json_lines(output: str) -> list[dict[str, Any]]:
    """Every line the service printed must be a JSON object."""
    lines = [line for line in output.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def is_ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def start_and_fail(env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """`visinspect serve` must refuse: exit code 1, JSON lines only, exactly one error line."""
    result = subprocess.run(
        [VISINSPECT, "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    events = json_lines(result.stdout + result.stderr)
    errors = [e for e in events if e["level"] in {"error", "critical"}]
    assert len(errors) == 1, events
    (error,) = errors
    assert error["event"] == "startup.failed"
    assert error["reason"]
    assert error["action"]  # what to do about it
    assert "exception" not in error  # a cause an operator can fix, not a traceback
    return error


@contextmanager
def serving(
    database_url: str, log_path: Path, **env: str
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A real `visinspect serve` on a free port, ready; its output goes to `log_path` (a file, not
    a pipe, which would block the server once full). Killed afterwards if still running."""
    with log_path.open("w") as log_file:
        port = free_port()
        process = subprocess.Popen(
            [VISINSPECT, "serve", "--port", str(port)],
            env=environment(DATABASE_URL=database_url, **env),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=log_path.parent,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, process)
            yield process, base
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def wait_ready(base: str, process: subprocess.Popen[Any], timeout_s: float = 90) -> None:
    def ready_or_exited() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"server exited early with status {process.returncode}")
        return is_ready(base)

    wait_until(ready_or_exited, timeout_s, f"{base} to become ready")


@contextmanager
def mounted_full_disk(mount_point: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs with an empty `images` directory, filled up: writes fail with ENOSPC
    as on a full volume. Needs root (CI runs as root; elsewhere the test is skipped)."""
    with mounted_volume(mount_point, "1m"):
        fill_up(mount_point / "filler")
        yield mount_point


@contextmanager
def mounted_volume(mount_point: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of `size` (e.g. "4m") with an empty `images` directory. Needs root (CI runs
    as root; elsewhere the test is skipped)."""
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        (mount_point / "images").mkdir()
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill_up(path: Path) -> None:
    """Write zeros to `path` until its volume says ENOSPC."""
    with path.open("wb", buffering=0) as filler:
        while True:
            try:
                filler.write(b"\0" * 65536)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return

"""Faults with real processes: PostgreSQL stopped and started under a running service; SIGTERM while
requests are in flight. Nothing acknowledged may be lost, and the service recovers on its own."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from scripts.load_check import drain
from sqlalchemy import create_engine, text

from tests.support import environment, free_port, fresh_postgres_database, wait_ready, wait_until

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _pg_bin(tool: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    if not found:
        pytest.fail(
            f"PostgreSQL's {tool} is not installed (scripts/ensure-postgres.sh installs it)"
        )
    return found[-1]


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class Cluster:
    """A throw-away PostgreSQL cluster of this test's own, so it can be stopped and started."""

    def __init__(self, root: Path) -> None:
        self.data = root / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
        subprocess.run(
            _as_postgres(
                [_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust"]
            ),
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            _as_postgres(
                [
                    _pg_bin("pg_ctl"),
                    "-D",
                    str(self.data),
                    "-o",
                    options,
                    "-l",
                    str(self.data / "log"),
                    "-w",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        subprocess.run(
            _as_postgres([_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]),
            check=True,
            capture_output=True,
        )


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = Path(f"/tmp/visinspect-pg-{os.getpid()}-{time.monotonic_ns()}")
    cluster = Cluster(root)
    cluster.start()
    try:
        yield cluster
    finally:
        subprocess.run(
            _as_postgres([_pg_bin("pg_ctl"), "-D", str(cluster.data), "-m", "immediate", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def _serve(url: str, cwd: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [str(BIN / "visinspect"), "serve", "--port", str(port)],
        env=environment(DATABASE_URL=url, LOG_LEVEL="WARNING", DATABASE_CONNECT_TIMEOUT_S="2"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=cwd,
    )
    base = f"http://127.0.0.1:{port}"
    wait_ready(base, process)  # type: ignore[arg-type]
    return process, base


def _post(base: str, photo: bytes) -> httpx.Response:
    return httpx.post(f"{base}/predict", files={"file": ("c.png", photo)}, timeout=30)


def test_postgres_stopped_and_started_under_a_running_service(
    cluster: Cluster, photos: Path, tmp_path: Path
) -> None:
    photo = (photos / "coffee.png").read_bytes()
    process, base = _serve(cluster.url, tmp_path)
    try:
        acknowledged = [_post(base, photo).json()["id"]]

        cluster.stop()
        wait_until(  # readiness is asked at most once a second (READINESS_CACHE_S)
            lambda: httpx.get(f"{base}/health", timeout=30).status_code == 503, 10, "not ready"
        )
        health = httpx.get(f"{base}/health", timeout=30)
        assert "database" in health.json()["failing"]
        refused = [_post(base, photo) for _ in range(3)]
        assert [r.status_code for r in refused] == [503, 503, 503]
        assert {r.json()["error"]["code"] for r in refused} == {"database_unavailable"}
        assert httpx.get(f"{base}/health/live").status_code == 200  # alive, just not ready

        cluster.start()
        wait_until(
            lambda: httpx.get(f"{base}/health", timeout=30).status_code == 200,
            30,
            "the service to recover on its own",
            interval_s=0.5,
        )
        recovered = _post(base, photo)
        assert recovered.status_code == 200
        acknowledged.append(recovered.json()["id"])
    finally:
        process.terminate()
        process.wait(timeout=60)

    engine = create_engine(cluster.url)
    with engine.connect() as conn:
        ids = sorted(conn.scalars(text("SELECT id FROM predictions")))
    engine.dispose()
    assert ids == sorted(acknowledged)  # every 200 stored, nothing from the 503s


def test_sigterm_under_load_finishes_every_accepted_request(tmp_path: Path) -> None:
    # The signal must find requests in flight to show anything; on a fast moment every one had
    # finished within the 50 ms the clients give their last requests to be accepted (seen once
    # in CI: 122 requests, none in flight). Then the run says nothing, and is made again.
    for attempt in range(3):
        (tmp_path / str(attempt)).mkdir()
        with fresh_postgres_database() as url:
            process, base = _serve(url, tmp_path / str(attempt))
            try:
                result = drain(base, 8, url, f"kill -TERM {process.pid}")
                assert process.wait(timeout=60) in {0, -15}
            finally:
                if process.poll() is None:
                    process.kill()
        if result["in_flight_at_sigterm"] > 0:
            break
    assert result["passed"], result
    assert result["lost"] == []
    assert result["in_flight_at_sigterm"] > 0

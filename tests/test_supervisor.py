"""Several server processes under one supervisor (`visinspect serve --workers 2`), really started.

What only real processes show: start-up work done once, one scrape of /metrics counting the
requests every worker served, a killed worker replaced while the others keep serving, SIGTERM
draining every worker without losing an accepted request, and no worker outliving the supervisor.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import httpx
import pytest
from scripts.load_check import drain

from tests.support import fresh_postgres_database, process_gone, serving, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def _workers(supervisor: int) -> set[int]:
    """The supervisor's worker processes (its children that are not the spawn tracker)."""
    found = set()
    for task in Path(f"/proc/{supervisor}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except FileNotFoundError:  # exited (and was reaped) since the list was read
                continue
            if b"spawn_main" in cmdline:
                found.add(int(child))
    return found


def _predict(base: str, photo: bytes) -> httpx.Response:
    # A new connection per request: the kernel spreads connections over the workers.
    with httpx.Client(timeout=30) as client:
        return client.post(f"{base}/predict", files={"file": ("coffee.png", photo)})


def _served(scrape: str) -> float:
    match = re.search(
        r'visinspect_http_requests_total\{method="POST",route="/predict",status="200"\} (\S+)',
        scrape,
    )
    return float(match.group(1)) if match else 0.0


def test_two_workers_share_a_port_one_scrape_counts_all_and_a_dead_worker_is_replaced(
    tmp_path: Path, photos: Path
) -> None:
    photo = (photos / "coffee.png").read_bytes()
    log = tmp_path / "server.log"
    with fresh_postgres_database() as url, serving(url, log, WORKERS="2") as (process, base):
        workers = _workers(process.pid)
        assert len(workers) == 2
        responses = [_predict(base, photo) for _ in range(12)]
        assert [r.status_code for r in responses] == [200] * 12
        assert _served(httpx.get(f"{base}/metrics", timeout=10).text) == 12

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(_workers(process.pid) - {victim}) == 2, 30, "a replacement worker")
        wait_until(lambda: _predict(base, photo).status_code == 200, 30, "serving again")
        assert [_predict(base, photo).status_code for _ in range(6)] == [200] * 6

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert names.count("db.migrated") == 1  # migrated once, by the supervisor
    assert names.count("model.loaded") >= 3  # each worker loads its own, the replacement too
    assert "supervisor.worker_replaced" in names
    plan = next(e for e in events if e["event"] == "serve.plan")
    assert plan["workers"] == 2
    assert all(process_gone(pid) for pid in workers)


def test_sigterm_drains_every_worker(tmp_path: Path) -> None:
    # As in test_faults: a SIGTERM that found no request in flight shows nothing (seen in CI:
    # 111 requests, none in flight 50 ms after the clients stopped); the run is made again.
    for attempt in range(3):
        with (
            fresh_postgres_database() as url,
            serving(url, tmp_path / f"server-{attempt}.log", WORKERS="2", LOG_LEVEL="WARNING") as (
                process,
                base,
            ),
        ):
            result = drain(base, 8, url, f"kill -TERM {process.pid}")
            assert process.wait(timeout=60) == 0
        if result["in_flight_at_sigterm"] > 0:
            break
    assert result["passed"], result
    assert result["lost"] == []
    assert result["in_flight_at_sigterm"] > 0


def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    with (
        fresh_postgres_database() as url,
        serving(url, tmp_path / "server.log", WORKERS="2") as (
            process,
            _base,
        ),
    ):
        workers = _workers(process.pid)
        process.kill()  # SIGKILL: the supervisor cannot stop them itself
        process.wait()
        wait_until(
            lambda: all(process_gone(pid) for pid in workers), 30, "the workers to exit with it"
        )

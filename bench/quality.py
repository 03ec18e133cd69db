"""Does GET /label-sets/{name}/quality stall the server? /health/live's latency while four quality
requests run at once on a 1,000-class set with 20,000 labels and 20,000 answers per version (an
active and a shadow version), through a real `visinspect serve` on PostgreSQL.

    python -m bench.quality [--before SRC] [--rounds 3]

`--before SRC` also serves the same database from another checkout's `src` (a worktree of an
earlier commit) and prints both side by side. The issue's target: /health/live within 100 ms.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.history import _environment, _wait_ready
from visinspect.db.schema import upgrade_to_head

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DATABASE = "visinspect_bench_quality"
CLASSES, LABELS = 1000, 20_000


def prepare(url: str) -> None:
    """A fresh database: one set of CLASSES classes, two versions, LABELS labels and answers."""
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{DATABASE}"'))
    admin.dispose()
    engine = create_engine(url)
    upgrade_to_head(engine)
    classes = [f"class-{n:04d}" for n in range(CLASSES)]
    with engine.begin() as connection:
        set_id = connection.execute(
            text(
                "INSERT INTO label_sets (name, classes, created_at) VALUES "
                "('big', CAST(:classes AS json), now()) RETURNING id"
            ),
            {"classes": _json(classes)},
        ).scalar_one()
        heads = []
        for version, status in ((1, "active"), (2, "shadow")):
            heads.append(
                connection.execute(
                    text(
                        "INSERT INTO heads (label_set_id, version, status, classes, "
                        "base_model_version, artifact, artifact_sha256, manifest, labels_until, "
                        "trained_at) VALUES (:s, :v, :status, CAST(:classes AS json), 'bench', "
                        "'\\x00'::bytea, repeat('0', 64), CAST('{}' AS json), 0, now()) "
                        "RETURNING id"
                    ),
                    {"s": set_id, "v": version, "status": status, "classes": _json(classes)},
                ).scalar_one()
            )
        connection.execute(
            text(
                "INSERT INTO labels (label_set_id, prediction_id, class_name, created_at) "
                "SELECT :s, p, 'class-' || lpad((p % :c)::text, 4, '0'), now() "
                "FROM generate_series(1, :n) AS p"
            ),
            {"s": set_id, "c": CLASSES, "n": LABELS},
        )
        for head_id, right in zip(heads, (0.7, 0.8), strict=True):
            connection.execute(
                text(
                    "INSERT INTO head_answers (prediction_id, head_id, label_set_id, class_name, "
                    "confidence, decided, shadow, created_at) SELECT p, :h, :s, "
                    "'class-' || lpad((CASE WHEN random() < :r THEN p % :c "
                    "ELSE (p * 7) % :c END)::text, 4, '0'), random(), random() < 0.5, :shadow, "
                    "now() FROM generate_series(1, :n) AS p"
                ),
                {
                    "h": head_id,
                    "s": set_id,
                    "r": right,
                    "c": CLASSES,
                    "n": LABELS,
                    "shadow": head_id == heads[1],
                },
            )
        connection.execute(text("ANALYZE"))
    engine.dispose()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _json(values: list[str]) -> str:
    import json

    return json.dumps(values)


def measure(url: str, src: str | None, rounds: int) -> dict[str, Any]:
    """Serve `url` (from `src` when given), then: live latency alone, and while 4 quality
    requests run, for `rounds` rounds."""
    port = free_port()
    environment = _environment() | {
        "DATABASE_URL": url,
        "LOG_LEVEL": "WARNING",
        "WORKERS": "1",
        "MIGRATE_ON_START": "false",
    }
    if src is not None:
        environment["PYTHONPATH"] = src
    server = subprocess.Popen(
        [sys.executable, "-m", "visinspect.cli", "serve", "--port", str(port)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, server)
        with httpx.Client(base_url=base, timeout=120) as client:
            client.get("/label-sets/big/quality").raise_for_status()  # warm
        idle = _live_while(base, 0)
        busy = [_live_while(base, 4) for _ in range(rounds)]
    finally:
        server.terminate()
        server.wait(30)
    return {
        "idle_live_max_ms": idle["live_max_ms"],
        "live_max_ms": max(b["live_max_ms"] for b in busy),
        "live_p50_ms": statistics.median(b["live_p50_ms"] for b in busy),
        "quality_s": statistics.median(b["quality_s"] for b in busy),
    }


def _live_while(base: str, requests: int) -> dict[str, float]:
    """/health/live every 20 ms while `requests` quality requests run at once (or for 2 s)."""
    done = threading.Event()
    latencies: list[float] = []

    def probe() -> None:
        with httpx.Client(base_url=base, timeout=60) as client:
            while not done.is_set():
                started = time.perf_counter()
                client.get("/health/live").raise_for_status()
                latencies.append((time.perf_counter() - started) * 1000)
                time.sleep(0.02)

    def quality() -> float:
        started = time.perf_counter()
        with httpx.Client(base_url=base, timeout=300) as client:
            client.get("/label-sets/big/quality").raise_for_status()
        return time.perf_counter() - started

    prober = threading.Thread(target=probe)
    prober.start()
    with ThreadPoolExecutor(max(1, requests)) as pool:
        times = list(pool.map(lambda _: quality(), range(requests)))
    if not requests:
        time.sleep(2)
    done.set()
    prober.join()
    return {
        "live_max_ms": round(max(latencies), 1),
        "live_p50_ms": round(statistics.median(latencies), 1),
        "quality_s": round(max(times), 2) if times else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__)
    parser.add_argument("--before", help="another checkout's src directory, measured alike")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    url = make_url(ADMIN_URL).set(database=DATABASE).render_as_string(hide_password=False)
    prepare(url)
    print(f"{CLASSES} classes, {LABELS} labels and answers per version (active + shadow)")
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    print("\n".join(line for line in cpu if line.startswith(("Model name", "CPU(s)", "Flags"))))
    runs = {"this checkout": str(Path(__file__).resolve().parents[1] / "src")}
    if args.before:
        runs = {"before": os.path.abspath(args.before)} | runs
    for name, src in runs.items():
        result = measure(url, src, args.rounds)
        print(
            f"{name:14} /health/live max {result['live_max_ms']:8.1f} ms "
            f"(p50 {result['live_p50_ms']:.1f}; idle max {result['idle_live_max_ms']:.1f}) "
            f"while 4 quality requests ran; each took {result['quality_s']:.2f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

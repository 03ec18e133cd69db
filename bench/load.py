"""Load benchmark: the real service on loopback against PostgreSQL, driven by `hey`, beside its
in-process ceilings and a naive baseline, all in one run.

  make bench            (= python -m bench.load; --smoke for a seconds-long check that it works)

Prints, as Markdown: the model-only and pipeline ceilings; service throughput and p50/p95/p99 at
concurrency 1, 8 and 32 with a 640x480 JPEG and at concurrency 1 with a 4000x3000 one; the same
load against bench/naive_app.py; the ratios the performance targets are about, each marked
PASS/FAIL; and a check that every 200 left its row. Photos: coffee.png from scikit-image's wheel,
re-encoded as JPEG at both sizes (no 12-megapixel photograph ships in any registry package).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.ceilings import load_backends, model_only, photo_jpeg, pipeline, single_image_ms

ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BOUNDARY = "visinspectbenchboundary"
VENV_BIN = Path(sys.executable).parent


@dataclass
class LoadResult:
    label: str
    concurrency: int
    requests: int
    ok: int
    throughput: float  # successful requests per second
    p50: float
    p95: float
    p99: float


def multipart_body(jpeg: bytes, folder: Path, name: str) -> Path:
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + jpeg
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    path = folder / f"{name}.body"
    path.write_bytes(body)
    return path


def hey_rows(url: str, body: Path, load: list[str]) -> list[dict[str, str]]:
    """POST the multipart body to /predict under `load` (hey's -n/-c/-z/-q flags); one CSV row
    per request: response-time, status-code, offset, ..."""
    output = subprocess.run(
        [
            "hey", *load, "-m", "POST",
            "-T", f"multipart/form-data; boundary={BOUNDARY}", "-D", str(body),
            "-t", "60", "-o", "csv", f"{url}/predict",
        ],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return list(csv.DictReader(io.StringIO(output)))


def hey(url: str, body: Path, concurrency: int, requests: int, label: str) -> LoadResult:
    rows = hey_rows(url, body, ["-n", str(requests), "-c", str(concurrency)])
    ok = [r for r in rows if r["status-code"] == "200"]
    latencies = sorted(float(r["response-time"]) * 1000 for r in ok)
    starts = [float(r["offset"]) for r in rows]
    ends = [float(r["offset"]) + float(r["response-time"]) for r in rows]
    elapsed = max(ends) - min(starts)

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0

    return LoadResult(
        label,
        concurrency,
        len(rows),
        len(ok),
        len(ok) / elapsed,
        statistics.median(latencies) if latencies else 0.0,
        pct(0.95),
        pct(0.99),
    )


@contextmanager
def fresh_database() -> Iterator[str]:
    name = f"visinspect_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server(command: list[str], env: dict[str, str], port: int) -> Iterator[str]:
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/docs", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} did not start")
            time.sleep(0.3)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def drive(base: str, bodies: dict[str, Path], smoke: bool, label: str) -> list[LoadResult]:
    n = {1: 10, 8: 16, 32: 32} if smoke else {1: 200, 8: 600, 32: 1200}
    hey(base, bodies["640x480"], 8, 16 if smoke else 200, "warm-up")
    results = [hey(base, bodies["640x480"], c, n[c], f"{label} 640x480") for c in (1, 8, 32)]
    results.append(hey(base, bodies["4000x3000"], 1, 10 if smoke else 100, f"{label} 4000x3000"))
    return results


def rows_in(url: str, table: str) -> int:
    engine = create_engine(url)
    with engine.connect() as conn:
        count = int(conn.scalar(text(f"SELECT count(*) FROM {table}")) or 0)
    engine.dispose()
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny counts: proves the script runs")
    args = parser.parse_args()
    if shutil.which("hey") is None:
        sys.exit("bench: `hey` is missing: apt-get install hey (make bench does it)")

    # 1. Ceilings, in this process, before any server starts.
    backends = load_backends()
    model = model_only(backends.all(), args.smoke)
    jpegs = {"640x480": photo_jpeg((640, 480)), "4000x3000": photo_jpeg((4000, 3000))}
    images = 32 if args.smoke else 600
    default = backends.onnxruntime
    ceiling = pipeline(default, jpegs["640x480"], images, os.cpu_count() or 2, 8)
    alone = {k: single_image_ms(default, v, 5 if args.smoke else 40) for k, v in jpegs.items()}
    del backends, default  # free the cores' caches and memory for the servers

    results: list[LoadResult] = []
    with tempfile.TemporaryDirectory() as folder:
        bodies = {k: multipart_body(v, Path(folder), k) for k, v in jpegs.items()}
        # 2. The service, as `visinspect serve` runs it by default.
        with fresh_database() as url:
            env = {"DATABASE_URL": url}  # every other setting at its default
            port = free_port()
            with server(
                [str(VENV_BIN / "visinspect"), "serve", "--port", str(port)], env, port
            ) as base:
                service = drive(base, bodies, args.smoke, "service")
            service_rows = rows_in(url, "predictions")
        # 3. The naive baseline, same load.
        with fresh_database() as url:
            plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
            port = free_port()
            command = [
                str(VENV_BIN / "uvicorn"),
                "bench.naive_app:app",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ]
            with server(command, {"NAIVE_DATABASE_URL": plain}, port) as base:
                naive = drive(base, bodies, args.smoke, "naive")
        results = service + naive

    sent_ok = sum(r.ok for r in service) + (16 if args.smoke else 200)  # plus the warm-up
    report(model, ceiling, alone, results, service_rows, sent_ok, args.smoke)
    return 0


def report(
    model: dict[str, dict[int, float]],
    ceiling: float,
    alone: dict[str, float],
    results: list[LoadResult],
    service_rows: int,
    sent_ok: int,
    smoke: bool,
) -> None:
    print(f"# Benchmark ({'smoke' if smoke else 'full'} run, {os.cpu_count()} cores)\n")
    print("## Ceilings (in-process)\n")
    print("| backend | batch 1 | best images/s (batch) |")
    print("|---|---|---|")
    for name, row in model.items():
        best = max(row, key=lambda s: s / row[s])
        print(f"| {name} | {row[1]:.2f} ms | {best / row[best] * 1000:.0f} ({best}) |")
    print(
        f"\nPipeline 640x480 JPEG -> top-3 (onnxruntime, both cores): **{ceiling:.0f} images/s**; "
        f"one image alone: 640x480 {alone['640x480']:.1f} ms, 4000x3000 {alone['4000x3000']:.1f} ms\n"
    )
    print("## Under load (hey, loopback, PostgreSQL)\n")
    print(
        "| server | photo | concurrency | requests | 200s | images/s | p50 ms | p95 ms | p99 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        server_name, photo = r.label.split(" ")
        print(
            f"| {server_name} | {photo} | {r.concurrency} | {r.requests} | {r.ok} | "
            f"{r.throughput:.1f} | {r.p50:.1f} | {r.p95:.1f} | {r.p99:.1f} |"
        )

    by = {(r.label, r.concurrency): r for r in results}
    s1, s32 = by[("service 640x480", 1)], by[("service 640x480", 32)]
    big = by[("service 4000x3000", 1)]
    n32 = by[("naive 640x480", 32)]
    eager, fast = model["pytorch-eager-nchw"][1], model["onnxruntime"][1]
    checks = [
        (
            "default backend batch-1 latency / PyTorch eager NCHW",
            fast / eager,
            "<= 0.333",
            fast / eager <= 1 / 3,
        ),
        (
            "service c=32 throughput / pipeline ceiling",
            s32.throughput / ceiling,
            ">= 0.8",
            s32.throughput / ceiling >= 0.8,
        ),
        (
            "service c=32 throughput / naive c=32",
            s32.throughput / n32.throughput,
            ">= 3",
            s32.throughput / n32.throughput >= 3,
        ),
        ("service c=32 p99 / naive c=32 p99", s32.p99 / n32.p99, "< 1", s32.p99 < n32.p99),
        (
            "service c=1 p50 - pipeline single image (ms)",
            s1.p50 - alone["640x480"],
            "<= 10",
            s1.p50 - alone["640x480"] <= 10,
        ),
        ("4000x3000 / 640x480 p50 at c=1", big.p50 / s1.p50, "<= 1.5", big.p50 / s1.p50 <= 1.5),
        ("service rows / 200s sent", service_rows / sent_ok, "== 1", service_rows == sent_ok),
    ]
    print("\n## Targets\n")
    print("| ratio | measured | target | |")
    print("|---|---|---|---|")
    for name, value, target, passed in checks:
        verdict = "n/a (smoke counts)" if smoke else ("PASS" if passed else "FAIL")
        print(f"| {name} | {value:.3f} | {target} | {verdict} |")


if __name__ == "__main__":
    sys.exit(main())

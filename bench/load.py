"""Load benchmark: the real service on loopback against PostgreSQL, beside the strongest peer
measured here (bench/mosec_peer.py: mosec + ONNX Runtime, same weights), a naive baseline and the
in-process ceilings, all in one run.

  make bench            (= python -m bench.load; --smoke for a seconds-long check that it works)

Prints, as Markdown:
- the model-only and pipeline ceilings;
- closed loop (`hey`, 10 s per cell): the service and the peer at concurrency 1, 8 and 32 with a
  640x480 and a 4000x3000 JPEG (the peer gets the raw JPEG, the service a multipart upload);
  the naive baseline on the 640x480 one; when MODEL_PRECISION=auto (the default) serves another
  precision than fp32 on this CPU, the service again with MODEL_PRECISION=fp32;
- open loop (bench/openloop.py: Poisson arrivals, latency from the scheduled send time): the
  highest rate whose p99 stays at or under 100 ms, for the service and the peer, and for the
  service limited to 1 CPU (`taskset`), with the generator's own CPU use;
- the CPU (model and the extensions that decide the precision) and what the service served;
- the targets, each marked PASS/FAIL, and a check that every 200 left exactly one row. The
  throughput target against the peer is 1.5x where the CPU has VNNI or AMX (int8 at full
  speed), 1.2x elsewhere.
Photos: coffee.png from scikit-image's wheel, re-encoded as JPEG at both sizes (no 12-megapixel
photograph ships in any registry package).
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.ceilings import load_backends, model_only, photo_jpeg, pipeline, single_image_ms
from bench.openloop import Target, Trial, search
from visinspect.capacity import usable_cpus
from visinspect.inference.cpu import Int8Kernels, this_cpu

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


MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
SECONDS = {"full": 10, "smoke": 1}  # per closed-loop cell
OPEN_LOOP = {"full": (8.0, 6), "smoke": (1.0, 2)}  # seconds per trial, bisection steps


@dataclass(frozen=True)
class Endpoint:
    """Where a server takes images, and how: the service's multipart upload or the peer's body."""

    base: str
    path: str
    bodies: dict[str, Path]  # photo label -> request body file
    content_type: str

    def post(self, photo: str, load: list[str]) -> list[dict[str, str]]:
        return hey_rows(self.base, self.bodies[photo], load, self.path, self.content_type)


def hey_rows(
    url: str,
    body: Path,
    load: list[str],
    path: str = "/predict",
    content_type: str = MULTIPART,
) -> list[dict[str, str]]:
    """POST the body to `url + path` under `load` (hey's -n/-c/-z/-q flags); one CSV row per
    request: response-time, status-code, offset, ..."""
    output = subprocess.run(
        [
            "hey", *load, "-m", "POST", "-T", content_type, "-D", str(body),
            "-t", "60", "-o", "csv", f"{url}{path}",
        ],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return list(csv.DictReader(io.StringIO(output)))


def summarise(rows: list[dict[str, str]], concurrency: int, label: str) -> LoadResult:
    ok = [r for r in rows if r["status-code"] == "200"]
    latencies = sorted(float(r["response-time"]) * 1000 for r in ok)
    starts = [float(r["offset"]) for r in rows]
    ends = [float(r["offset"]) + float(r["response-time"]) for r in rows]
    elapsed = max(ends) - min(starts) if rows else 1.0

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


def hey(url: str, body: Path, concurrency: int, requests: int, label: str) -> LoadResult:
    """`requests` multipart uploads to the service's /predict at `concurrency`."""
    rows = hey_rows(url, body, ["-n", str(requests), "-c", str(concurrency)])
    return summarise(rows, concurrency, label)


def cell(
    endpoint: Endpoint, photo: str, concurrency: int, seconds: float, label: str
) -> LoadResult:
    """One closed-loop cell: `seconds` of `hey` at `concurrency`."""
    rows = endpoint.post(photo, ["-z", f"{seconds}s", "-c", str(concurrency)])
    return summarise(rows, concurrency, f"{label} {photo}")


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
def server(
    command: list[str],
    env: dict[str, str],
    port: int,
    ready: Callable[[str], bool] | None = None,
) -> Iterator[str]:
    """Start `command`, yield its base URL once `ready(base)` (default: /docs answers 200)."""
    base = f"http://127.0.0.1:{port}"
    is_ready = ready or (lambda url: httpx.get(f"{url}/docs", timeout=2).status_code == 200)
    process = subprocess.Popen(
        command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if is_ready(base):
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
            process.wait()


def drive(base: str, bodies: dict[str, Path], smoke: bool, label: str) -> list[LoadResult]:
    """The naive baseline's cells (the 640x480 photo)."""
    endpoint = Endpoint(base, "/predict", bodies, MULTIPART)
    seconds = SECONDS["smoke" if smoke else "full"]
    endpoint.post("640x480", ["-n", "16", "-c", "8"])  # warm-up
    return [cell(endpoint, "640x480", c, seconds, label) for c in (1, 8, 32)]


@dataclass
class Run:
    """One server's closed-loop cells, open-loop search and the 200s it answered."""

    closed: list[LoadResult]
    open_loop: Trial | None
    trials: list[Trial]
    ok: int
    served: str = ""  # the service's precision, and how MODEL_PRECISION=auto chose it


def measure(
    endpoint: Endpoint, label: str, smoke: bool, closed: bool = True, high: float | None = None
) -> Run:
    mode = "smoke" if smoke else "full"
    warm = endpoint.post("640x480", ["-n", "16", "-c", "8"])
    ok = sum(r["status-code"] == "200" for r in warm)
    results: list[LoadResult] = []
    if closed:
        for photo in ("640x480", "4000x3000"):
            for concurrency in (1, 8, 32):
                results.append(cell(endpoint, photo, concurrency, SECONDS[mode], label))
    ok += sum(r.ok for r in results)
    seconds, steps = OPEN_LOOP[mode]
    target = Target.post(
        endpoint.base + endpoint.path,
        endpoint.bodies["640x480"].read_bytes(),
        endpoint.content_type,
    )
    ceiling = high or _search_ceiling(results)
    best, trials = search(target, high=ceiling, seconds=seconds, steps=steps)
    ok += sum(t.ok for t in trials)
    return Run(results, best, trials, ok)


def _search_ceiling(results: list[LoadResult]) -> float:
    """The open-loop search's upper end: the best closed-loop rate seen (or 150/s)."""
    rates = [r.throughput for r in results if r.label.endswith("640x480")]
    return max(rates) * 1.1 if rates else 150.0


def service_run(
    bodies: dict[str, Path],
    smoke: bool,
    label: str,
    cpus: str | None = None,
    high: float | None = None,
    **env: str,
) -> tuple[Run, int]:
    """`visinspect serve` with its defaults (plus `env`) on a fresh database: the run, and the
    rows it stored. With `cpus` (a taskset list) the server may use those CPUs only, and only
    the open-loop search runs (from `high` down)."""
    with fresh_database() as url:
        port = free_port()
        command = [str(VENV_BIN / "visinspect"), "serve", "--port", str(port)]
        if cpus is not None:
            command = ["taskset", "-c", cpus, *command]
        with server(command, {"DATABASE_URL": url, "LOG_LEVEL": "WARNING", **env}, port) as base:
            run = measure(
                Endpoint(base, "/predict", bodies, MULTIPART),
                label,
                smoke,
                closed=cpus is None,
                high=high,
            )
            run.served = served(base)
        return run, rows_in(url, "predictions")


def served(base: str) -> str:
    """The precision a service answers with, and (for auto) why: from its /health."""
    health = httpx.get(f"{base}/health", timeout=10).json()
    detail = health["checks"]["model"].get("detail")
    return f"{health['precision']}" + (f": {detail}" if detail else " (asked for explicitly)")


def peer_run(jpegs: dict[str, Path], smoke: bool) -> Run:
    port = free_port()
    command = [
        sys.executable, "-m", "bench.mosec_peer", "--port", str(port), "--address", "127.0.0.1",
        "--log-level", "error",
    ]  # fmt: skip
    photo = jpegs["640x480"].read_bytes()

    def ready(base: str) -> bool:
        return httpx.post(f"{base}/inference", content=photo, timeout=10).status_code == 200

    with server(command, {}, port, ready=ready) as base:
        return measure(Endpoint(base, "/inference", jpegs, "image/jpeg"), "mosec", smoke)


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
    for tool in ("hey", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: `{tool}` is missing (make bench installs hey; taskset: util-linux)")

    # 1. Ceilings, in this process, before any server starts.
    backends = load_backends()
    model = model_only(backends.all(), args.smoke)
    jpegs = {"640x480": photo_jpeg((640, 480)), "4000x3000": photo_jpeg((4000, 3000))}
    images = 32 if args.smoke else 600
    default = backends.onnxruntime
    ceiling = pipeline(default, jpegs["640x480"], images, usable_cpus(), 8)
    alone = {k: single_image_ms(default, v, 5 if args.smoke else 40) for k, v in jpegs.items()}
    del backends, default  # free the cores' caches and memory for the servers

    with tempfile.TemporaryDirectory() as folder:
        bodies = {k: multipart_body(v, Path(folder), k) for k, v in jpegs.items()}
        raw = {}
        for k, v in jpegs.items():
            raw[k] = Path(folder) / f"{k}.jpg"
            raw[k].write_bytes(v)
        # 2. The service as `visinspect serve` runs it by default, then the peer, then the
        # service limited to one CPU (open loop only), then fp32 when auto chose another
        # precision, then naive.
        service, service_rows = service_run(bodies, args.smoke, "service")
        peer = peer_run(raw, args.smoke)
        best = max(r.throughput for r in service.closed)
        one_cpu, one_cpu_rows = service_run(bodies, args.smoke, "1cpu", cpus="0", high=best)
        fp32: tuple[Run, int] | None = None
        if not service.served.startswith("fp32"):
            fp32 = service_run(bodies, args.smoke, "service-fp32", MODEL_PRECISION="fp32")
        with fresh_database() as url:
            plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
            port = free_port()
            command = [
                str(VENV_BIN / "uvicorn"), "bench.naive_app:app", "--port", str(port),
                "--log-level", "warning",
            ]  # fmt: skip
            with server(command, {"NAIVE_DATABASE_URL": plain}, port) as base:
                naive = drive(base, bodies, args.smoke, "naive")

    report(
        Report(model, ceiling, alone, service, peer, one_cpu, fp32, naive),
        rows={
            "service": (service_rows, service.ok),
            "service-1cpu": (one_cpu_rows, one_cpu.ok),
            **({"service-fp32": (fp32[1], fp32[0].ok)} if fp32 else {}),
        },
        smoke=args.smoke,
    )
    return 0


@dataclass
class Report:
    model: dict[str, dict[int, float]]
    ceiling: float
    alone: dict[str, float]
    service: Run
    peer: Run
    one_cpu: Run
    fp32: tuple[Run, int] | None  # the service on fp32, when auto chose another precision
    naive: list[LoadResult]


def report(data: Report, rows: dict[str, tuple[int, int]], smoke: bool) -> None:
    print(f"# Benchmark ({'smoke' if smoke else 'full'} run, {usable_cpus()} usable CPUs)\n")
    print(f"CPU: {this_cpu().describe()}\n")
    print(f"The service served {data.service.served}\n")
    print("## Ceilings (in-process)\n")
    print("| backend | batch 1 | best images/s (batch) |")
    print("|---|---|---|")
    for name, row in data.model.items():
        best = max(row, key=lambda s: s / row[s])
        print(f"| {name} | {row[1]:.2f} ms | {best / row[best] * 1000:.0f} ({best}) |")
    print(
        f"\nPipeline 640x480 JPEG -> top-3 (onnxruntime, all usable CPUs): "
        f"**{data.ceiling:.0f} images/s**; one image alone: 640x480 "
        f"{data.alone['640x480']:.1f} ms, 4000x3000 {data.alone['4000x3000']:.1f} ms\n"
    )
    print("## Closed loop (hey, loopback; the service writes every row to PostgreSQL)\n")
    print(
        "| server | photo | concurrency | requests | 200s | images/s | p50 ms | p95 ms | p99 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    fp32_closed = data.fp32[0].closed if data.fp32 else []
    for r in data.service.closed + data.peer.closed + fp32_closed + data.naive:
        server_name, photo = r.label.split(" ")
        print(
            f"| {server_name} | {photo} | {r.concurrency} | {r.requests} | {r.ok} | "
            f"{r.throughput:.1f} | {r.p50:.1f} | {r.p95:.1f} | {r.p99:.1f} |"
        )
    print("\n## Open loop (Poisson arrivals, 640x480; highest rate with p99 <= 100 ms)\n")
    print("| server | rate/s | p50 ms | p99 ms | trials (rate: p99 ms) | generator CPU |")
    print("|---|---|---|---|---|---|")
    runs = [("service", data.service), ("mosec", data.peer), ("service, 1 CPU", data.one_cpu)]
    if data.fp32:
        runs.append(("service fp32", data.fp32[0]))
    for name, run in runs:
        best = run.open_loop
        trials = ", ".join(f"{t.rate:.0f}: {_ms(t.p99_ms)}" for t in run.trials)
        cpu = max((t.generator_cpu for t in run.trials), default=0.0)
        print(
            f"| {name} | {best.rate if best else 0:.1f} | {_ms(best.p50_ms) if best else '-'} | "
            f"{_ms(best.p99_ms) if best else '-'} | {trials} | <= {cpu:.3f} cores |"
        )
    print_targets(data, rows, smoke)


def _ms(value: float) -> str:
    return "failed" if value == float("inf") else f"{value:.0f}"


Check = tuple[str, float, str, bool]  # what, measured ratio, target, met


def print_targets(data: Report, rows: dict[str, tuple[int, int]], smoke: bool) -> None:
    svc = {(r.label, r.concurrency): r for r in data.service.closed}
    peer = {(r.label.replace("mosec", "service"), r.concurrency): r for r in data.peer.closed}
    naive = {(r.label, r.concurrency): r for r in data.naive}

    def rate(run: Run) -> float:
        return run.open_loop.rate if run.open_loop else 0.0

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")  # nan fails every comparison

    def at_least(name: str, a: float, b: float, factor: float) -> Check:
        return (name, ratio(a, b), f">= {factor:g}", a >= factor * b)

    def below(name: str, a: float, b: float) -> Check:
        return (name, ratio(a, b), "< 1", a < b)

    small, big = "service 640x480", "service 4000x3000"
    # int8 at full speed (VNNI or AMX) takes the model's share down by half: a higher bar.
    factor = 1.5 if this_cpu().int8_kernels is Int8Kernels.U8S8 else 1.2
    checks: list[Check] = []
    for c in (8, 32):
        s, p = svc[(small, c)], peer[(small, c)]
        checks.append(
            at_least(f"throughput / mosec, 640x480 c={c}", s.throughput, p.throughput, factor)
        )
        checks.append(below(f"p99 / mosec p99, 640x480 c={c}", s.p99, p.p99))
    for c in (1, 8, 32):
        s, p = svc[(big, c)], peer[(big, c)]
        checks.append(
            at_least(f"throughput / mosec, 4000x3000 c={c}", s.throughput, p.throughput, 3)
        )
    p50 = ratio(svc[(small, 1)].p50, peer[(small, 1)].p50)
    checks.append(("p50 / mosec p50, 640x480 c=1", p50, "<= 0.8", p50 <= 0.8))
    open_loop = "open-loop rate at p99 <= 100 ms / mosec"
    checks.append(at_least(open_loop, rate(data.service), rate(data.peer), 2))
    share = ratio(svc[(small, 32)].throughput, data.ceiling)
    checks.append(
        ("throughput c=32 / in-process pipeline ceiling", share, ">= 0.85", share >= 0.85)
    )
    efficiency = ratio(rate(data.service), 2 * rate(data.one_cpu))
    scaling = "scaling efficiency, 1 -> 2 CPUs (open-loop rate)"
    checks.append((scaling, efficiency, ">= 0.85", efficiency >= 0.85))
    n32 = naive[("naive 640x480", 32)]
    checks.append(
        at_least("throughput / naive, 640x480 c=32", svc[(small, 32)].throughput, n32.throughput, 3)
    )
    for name, (stored, answered) in rows.items():
        checks.append((f"{name}: rows / 200s answered", ratio(stored, answered), "== 1", stored == answered))  # fmt: skip
    print("\n## Targets\n")
    print("| ratio | measured | target | |")
    print("|---|---|---|---|")
    for name, value, target, passed in checks:
        exact = name.endswith("200s answered")
        verdict = "n/a (smoke counts)" if smoke and not exact else ("PASS" if passed else "FAIL")
        print(f"| {name} | {value:.3f} | {target} | {verdict} |")


if __name__ == "__main__":
    sys.exit(main())

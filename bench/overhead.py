"""CPU per request spent outside decoding and the model: where one event loop's core goes.

  python -m bench.overhead                       (PostgreSQL from TEST_DATABASE_URL; needs `hey`)
  python -m bench.overhead --against 8a5797b     (the same, beside an earlier commit, alternating)

With `--against REF`, REF is checked out in a temporary git worktree, its own model artifact is
built by its own code, and the two servers are measured in alternating rounds on the same
machine in the same minutes (each a fresh database): the ratio is the claim, not two numbers
from different hours.

Starts a real `visinspect serve` on a fresh PostgreSQL database, warms it up, then sends N requests
(640x480 JPEG, `hey -c 8`) and reads, from /proc, the CPU time of every thread of the server
process before and after: the event-loop thread (HTTP parsing, multipart, middleware, routing,
validation, serialisation, logging: all the per-request Python work), the model's threads (ONNX
Runtime) and the rest (database writer, decoder hand-off). Decoding runs in the decoder processes,
which are reported apart. The event loop's microseconds per request bound one process's request
rate at 1e6 / that figure, however many cores the machine has.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import statistics
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

from bench.ceilings import photo_jpeg
from bench.footprint import children
from bench.load import VENV_BIN, free_port, fresh_database, hey_rows, multipart_body, server
from visinspect.inference.cpu import this_cpu

TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Thread id -> (name, CPU seconds) for every thread of `pid`."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        threads[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / TICKS)
    return threads


def cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:  # ended meanwhile
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def children_cpu(pid: int) -> float:
    """CPU seconds of every process below `pid` (the forkserver and its decoder processes)."""
    return sum(cpu_seconds(child) for child in children(pid))


def postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL process on this machine (its backends, WAL writer, ...):
    the database shares the cores with the service, and the rows it writes cost it CPU."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            name = (proc / "comm").read_text().strip()
        except OSError:
            continue
        if name in ("postgres", "postmaster"):
            total += cpu_seconds(int(proc.name))
    return total


def server_pid(port: int) -> int:
    """The `visinspect serve` process listening on `port` (found by its command line)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in cmdline and str(port).encode() in cmdline:
            return int(proc.name)
    raise RuntimeError("server process not found")


@dataclass
class Spent:
    """CPU microseconds per answered request, by where they were spent."""

    loop: float
    other: float  # the model's threads and the database writer
    decoders: float
    postgres: float  # every PostgreSQL process of this machine (the rows' cost in the database)

    @property
    def outside_model(self) -> float:
        return self.loop + self.decoders


def measure(requests: int, env: dict[str, str]) -> Spent:
    """One server (`env` on top of this one's), warmed up, then `requests` at concurrency 8."""
    with tempfile.TemporaryDirectory() as work, fresh_database() as url:
        body = multipart_body(photo_jpeg((640, 480)), Path(work), "640x480")
        port = free_port()
        command = [str(VENV_BIN / "visinspect"), "serve", "--port", str(port)]
        with server(command, {"DATABASE_URL": url, "LOG_LEVEL": "INFO", **env}, port) as base:
            pid = server_pid(port)
            hey_rows(base, body, ["-n", "200", "-c", "8"])  # warm-up
            before, decoders_before = thread_cpu(pid), children_cpu(pid)
            database_before = postgres_cpu()
            rows = hey_rows(base, body, ["-n", str(requests), "-c", "8"])
            after, decoders_after = thread_cpu(pid), children_cpu(pid)
            database = postgres_cpu() - database_before
    ok = sum(r["status-code"] == "200" for r in rows)
    if ok == 0:
        raise RuntimeError("no request answered 200")
    loop = after[pid][1] - before[pid][1]
    # Native threads carry the process's name: the model's (ONNX Runtime) and the database's.
    other = sum(
        seconds - before.get(tid, (name, 0.0))[1]
        for tid, (name, seconds) in after.items()
        if tid != pid
    )
    return Spent(
        loop / ok * 1e6,
        other / ok * 1e6,
        (decoders_after - decoders_before) / ok * 1e6,
        database / ok * 1e6,
    )


@contextmanager
def checkout(ref: str) -> Iterator[dict[str, str]]:
    """`ref` in a temporary worktree, with its own artifact built by its own code: the
    environment that makes this venv's `visinspect` run it."""
    with tempfile.TemporaryDirectory(prefix="visinspect-baseline-") as work:
        tree = Path(work) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), ref], check=True)
        try:
            deps = Path(work) / "deps"
            _install_missing(tree / "pyproject.toml", deps)
            env = {
                "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{deps}",
                "MODEL_DIR": str(Path(work) / "model"),
            }
            subprocess.run(
                [str(VENV_BIN / "visinspect"), "model", "build"],
                env={**os.environ, **env, "LOG_LEVEL": "WARNING"},
                check=True,
                stdout=subprocess.DEVNULL,
            )
            yield env
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], check=True)


def _install_missing(pyproject: Path, target: Path) -> None:
    """The runtime dependencies of an earlier commit that this venv lacks or pins differently
    (a package since replaced: swagger-ui-bundle before 8a5797b's successors), into `target`
    alone, so that the earlier code starts without touching this venv."""
    wanted = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    missing = [text for text in wanted if not _satisfied(Requirement(text))]
    if missing:
        subprocess.run(
            [
                str(VENV_BIN / "pip"),
                "install",
                "-q",
                "--no-deps",
                "--target",
                str(target),
                *missing,
            ],
            check=True,
        )


def _satisfied(requirement: Requirement) -> bool:
    try:
        version = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return requirement.specifier.contains(version, prereleases=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--against", metavar="REF", help="an earlier commit, measured alongside")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds with --against")
    args = parser.parse_args()
    print(f"CPU: {this_cpu().describe()}; 640x480 JPEG, hey -c 8, {args.requests} requests")
    if args.against is None:
        spent = measure(args.requests, {})
        print("CPU microseconds per request:")
        print(f"  event loop {spent.loop:8.0f}\n  decoders   {spent.decoders:8.0f}")
        print(f"  model and database threads {spent.other:8.0f}")
        print(f"  PostgreSQL (its processes) {spent.postgres:8.0f}")
        print(f"one event loop's ceiling: {1e6 / spent.loop:.0f} requests/s")
        return 0
    results: dict[str, list[Spent]] = {args.against: [], "this tree": []}
    with checkout(args.against) as baseline:
        for _ in range(args.rounds):
            for label, env in ((args.against, baseline), ("this tree", {})):
                results[label].append(measure(args.requests, env))
    print(
        "\n| server | round | event loop µs | decoders µs | outside the model µs "
        "| model and database threads µs | all µs | PostgreSQL µs |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label, rounds in results.items():
        for i, spent in enumerate(rounds, 1):
            print(
                f"| {label} | {i} | {spent.loop:.0f} | {spent.decoders:.0f} | "
                f"{spent.outside_model:.0f} | {spent.other:.0f} | "
                f"{spent.outside_model + spent.other:.0f} | {spent.postgres:.0f} |"
            )
    before = statistics.median(s.outside_model for s in results[args.against])
    after = statistics.median(s.outside_model for s in results["this tree"])
    print(
        f"\nCPU outside the model (event loop + decoders), medians: {after:.0f} µs against "
        f"{before:.0f} µs: {1 - after / before:.1%} less"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

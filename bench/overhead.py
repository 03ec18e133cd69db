"""CPU per request spent outside decoding and the model: where one event loop's core goes.

  python -m bench.overhead      (PostgreSQL from TEST_DATABASE_URL, as make bench; needs `hey`)

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
import os
import sys
import tempfile
from pathlib import Path

from bench.ceilings import photo_jpeg
from bench.footprint import children
from bench.load import VENV_BIN, free_port, fresh_database, hey_rows, multipart_body, server

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work, fresh_database() as url:
        body = multipart_body(photo_jpeg((640, 480)), Path(work), "640x480")
        port = free_port()
        command = [str(VENV_BIN / "visinspect"), "serve", "--port", str(port)]
        with server(command, {"DATABASE_URL": url, "LOG_LEVEL": "INFO"}, port) as base:
            pid = server_pid(port)
            hey_rows(base, body, ["-n", "200", "-c", "8"])  # warm-up
            before, decoders_before = thread_cpu(pid), children_cpu(pid)
            rows = hey_rows(base, body, ["-n", str(args.requests), "-c", "8"])
            after, decoders_after = thread_cpu(pid), children_cpu(pid)
    ok = sum(r["status-code"] == "200" for r in rows)
    spent: dict[str, float] = {}
    for tid, (name, seconds) in after.items():
        # Native threads carry the process's name: the model's (ONNX Runtime) and the database's.
        label = "event loop" if tid == pid else "other threads (model, database)"
        spent[label] = spent.get(label, 0.0) + seconds - before.get(tid, (name, 0.0))[1]
    print(f"{ok} of {len(rows)} requests answered 200; CPU microseconds per request:")
    for label, seconds in sorted(spent.items(), key=lambda item: -item[1]):
        if seconds > 0:
            print(f"  {label:<24} {seconds / ok * 1e6:8.0f}")
    print(f"  {'decoder processes':<24} {(decoders_after - decoders_before) / ok * 1e6:8.0f}")
    loop = spent.get("event loop", 0.0) / ok
    print(f"one event loop's ceiling: {1 / loop:.0f} requests/s" if loop else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())

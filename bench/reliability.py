"""Reliability under abuse, against the real service on loopback (PostgreSQL), figures printed.

  python -m bench.reliability [--seconds 60] [--smoke]

1. soak: `hey` offers about twice the service's capacity for the given time (200 connections at
   1 request/s each, against about 100/s of capacity here): no 5xx but the 503 back-pressure
   answers, resident memory bounded (start / peak / end printed), every 200 has exactly one row
   (counted in the database), and afterwards the service answers normally;
2. big uploads: 2 GB declared in Content-Length, and 2 GB streamed without a length: both refused
   with 413 while the server's resident memory stays flat (it never reads them into memory).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.ceilings import photo_jpeg
from bench.load import (
    BOUNDARY,
    VENV_BIN,
    free_port,
    fresh_database,
    hey_rows,
    multipart_body,
    rows_in,
    server,
)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = rss_mb(pid)
        self.peak = self.start
        self.timeline: list[float] = []  # RSS every 10 s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ticks = 0
        while not self._stop.wait(0.2):
            current = rss_mb(self.pid)
            self.peak = max(self.peak, current)
            ticks += 1
            if ticks % 50 == 0:
                self.timeline.append(current)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return rss_mb(self.pid)


def server_pid(port: int) -> int:
    found = subprocess.run(
        ["pgrep", "-f", f"serve --port {port}"], capture_output=True, text=True, check=True
    )
    return int(found.stdout.split()[0])


def soak(base: str, pid: int, body: Path, seconds: int, url: str) -> dict[str, object]:
    sampler = RssSampler(pid)
    rows = hey_rows(base, body, ["-z", f"{seconds}s", "-c", "200", "-q", "1"])
    end = sampler.stop()
    statuses = Counter(row["status-code"] for row in rows)
    after = httpx.post(
        f"{base}/predict",
        files={"file": ("after.jpg", photo_jpeg((640, 480)), "image/jpeg")},
        timeout=30,
    )
    health = httpx.get(f"{base}/health").status_code
    rows = rows_in(url, "predictions")
    ok = statuses.get("200", 0)
    bad = {s: n for s, n in statuses.items() if s.startswith("5") and s != "503"}
    return {
        "offered": f"~200 requests/s for {seconds} s",
        "answers": dict(statuses),
        "rss_mb": f"start {sampler.start:.0f} / peak {sampler.peak:.0f} / end {end:.0f}",
        "rss_every_10s_mb": [round(v) for v in sampler.timeline],
        "rows": rows,
        "rows_expected": ok + (1 if after.status_code == 200 else 0),
        "after_load": f"/health {health}, /predict {after.status_code}",
        "passed": not bad and rows == ok + (after.status_code == 200) and health == 200,
    }


def chunks(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    yield head
    block = b"\xff" * size
    for _ in range(total // size):
        yield block


def big_uploads(base: str, pid: int) -> dict[str, object]:
    results: dict[str, object] = {}
    two_gb = 2 * 1024**3
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    for label, declared in (("declared 2 GB", True), ("streamed 2 GB, no length", False)):
        sampler = RssSampler(pid)
        started = time.perf_counter()
        try:
            if declared:
                response = httpx.post(
                    f"{base}/predict",
                    content=chunks(two_gb),
                    headers={**headers, "Content-Length": str(two_gb + 200)},
                    timeout=120,
                )
            else:
                response = httpx.post(
                    f"{base}/predict", content=chunks(two_gb), headers=headers, timeout=120
                )
            outcome = f"{response.status_code} {response.json()['error']['code']}"
        except httpx.HTTPError as exc:  # the server may close while we are still sending
            outcome = f"connection closed by the server ({type(exc).__name__})"
        seconds = time.perf_counter() - started
        end = sampler.stop()
        results[label] = (
            f"{outcome} after {seconds:.2f} s; server RSS start {sampler.start:.0f} MB, "
            f"peak {sampler.peak:.0f} MB, end {end:.0f} MB"
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.env)
    seconds = 3 if args.smoke else args.seconds
    with fresh_database() as url:
        port = free_port()
        command = [str(VENV_BIN / "visinspect"), "serve", "--port", str(port)]
        env = {"DATABASE_URL": url, "LOG_LEVEL": "WARNING", **extra_env}
        with server(command, env, port) as base:
            pid = server_pid(port)
            body = multipart_body(photo_jpeg((640, 480)), Path("/tmp"), "soak")
            print("## Soak\n")
            result = soak(base, pid, body, seconds, url)
            for key, value in result.items():
                print(f"- {key}: {value}")
            print("\n## Big uploads\n")
            for key, value in big_uploads(base, pid).items():
                print(f"- {key}: {value}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

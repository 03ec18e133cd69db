"""Reliability under abuse, against the real service on loopback (PostgreSQL), figures printed.

  python -m bench.reliability [--seconds 60] [--smoke]

1. soak: `hey` offers about twice the service's capacity for the given time (200 connections at
   1 request/s each, against about 100/s of capacity here): no 5xx but the 503 back-pressure
   answers, resident memory bounded (start / peak / end printed), every 200 has exactly one row
   (counted in the database), and afterwards the service answers normally;
2. big uploads: 2 GB declared in Content-Length, and 2 GB streamed without a length: both refused
   with 413 while the server's resident memory stays flat (it never reads them into memory);
3. decode budgets: every file of the generated bomb corpus (tests/decode_bombs.py) decoded in a
   fresh decoder worker with the service's default limits: its outcome, time and peak memory
   against DECODE_TIMEOUT_S and DECODE_MAX_MEMORY_MB;
4. under attack: two clients post the worst files of the corpus back to back while one benign
   client posts a real photo: the benign client's worst latency (target: at most 2 s), the
   attackers' answers (no 5xx), and the resident memory of the server and its decoders before,
   at the peak and after (target: back within 300 MB of the baseline).
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


def decode_budgets() -> tuple[list[str], bool]:
    from tests.decode_bombs import BOMBS, bomb_bytes, measure

    from visinspect.config import Settings
    from visinspect.inference.decoders import DecoderLimits
    from visinspect.inference.preprocess import PREPROCESSING

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    limits = DecoderLimits(
        PREPROCESSING[settings.model_arch],
        settings.max_image_pixels,
        settings.decode_max_memory_mb << 20,
        settings.decode_timeout_s,
    )
    lines = [
        f"budgets: DECODE_TIMEOUT_S={limits.timeout_s}, "
        f"DECODE_MAX_MEMORY_MB={settings.decode_max_memory_mb}\n",
        "| file | bytes | outcome | seconds | peak MB above idle |",
        "|---|---|---|---|---|",
    ]
    passed = True
    for bomb in BOMBS:
        data = bomb_bytes(bomb.name)
        cost = measure(data, limits)
        within = (
            cost.outcome in bomb.codes
            and cost.seconds <= limits.timeout_s + 0.5
            and (cost.peak_mb or 0) <= settings.decode_max_memory_mb
        )
        passed &= within
        peak = "-" if cost.peak_mb is None else f"{cost.peak_mb:.0f}"
        lines.append(
            f"| {bomb.name} | {len(data):,} | {cost.outcome} | {cost.seconds:.2f} | {peak} |"
            + ("" if within else " OVER BUDGET")
        )
    return lines, passed


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (the decoders, the forkserver)."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            total += rss_mb(current)
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return total


def under_attack(base: str, pid: int, seconds: float) -> dict[str, object]:
    from tests.decode_bombs import bomb_bytes

    worst = [
        bomb_bytes(name)
        for name in (
            "scans-8000x8000-L-3000.jpg",
            "rows-1x60000000-L.png",
            "alpha-7000x7000-RGBA.png",
            "canvas-7000x7000.gif",
            "probe-postscript-19MB.ps",
        )
    ]
    photo = photo_jpeg((640, 480))
    stop = threading.Event()
    attacks: Counter[str] = Counter()
    benign: list[float] = []
    benign_status: Counter[int] = Counter()
    time.sleep(2)
    baseline = tree_rss_mb(pid)
    peak = baseline

    def attacker(offset: int) -> None:
        with httpx.Client(timeout=60) as client:
            i = offset
            while not stop.is_set():
                answer = client.post(
                    f"{base}/predict", files={"file": ("x", worst[i % len(worst)])}
                )
                attacks[f"{answer.status_code} {answer.json()['error']['code']}"] += 1
                i += 1

    def benign_client() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                started = time.perf_counter()
                answer = client.post(f"{base}/predict", files={"file": ("ok.jpg", photo)})
                benign.append(time.perf_counter() - started)
                benign_status[answer.status_code] += 1

    threads = [threading.Thread(target=attacker, args=(i,)) for i in (0, 2)]
    threads.append(threading.Thread(target=benign_client))
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, tree_rss_mb(pid))
        time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join()
    time.sleep(2)
    after = tree_rss_mb(pid)
    worst_benign = max(benign) if benign else float("inf")
    p99 = sorted(benign)[int(0.99 * (len(benign) - 1))] if benign else float("inf")
    failures = [a for a in attacks if a.startswith("5")]
    return {
        "attackers": f"2 clients, worst files back to back for {seconds:.0f} s: {dict(attacks)}",
        "benign": f"{len(benign)} requests {dict(benign_status)}, p99 {p99:.3f} s, "
        f"worst {worst_benign:.3f} s (target <= 2 s)",
        "rss_mb (server + decoders)": f"baseline {baseline:.0f} / peak {peak:.0f} / "
        f"after {after:.0f} (target: after <= baseline + 300)",
        "passed": worst_benign <= 2.0
        and after <= baseline + 300
        and not failures
        and set(benign_status) == {200},
    }


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
            print("\n## Under attack\n")
            attack = under_attack(base, pid, 4 if args.smoke else 30)
            for key, value in attack.items():
                print(f"- {key}: {value}")
    print("\n## Decode budgets (each file in a fresh decoder worker)\n")
    lines, budgets_held = decode_budgets()
    print("\n".join(lines))
    return 0 if result["passed"] and attack["passed"] and budgets_held else 1


if __name__ == "__main__":
    sys.exit(main())

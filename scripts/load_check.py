"""Load checks for running servers (containers or processes): nothing acknowledged may be lost.

  spread --urls U1,U2,U3 --database-url D   requests spread over replicas; every 200 has its row
  drain  --url U --database-url D --stop "CMD"  SIGTERM (via CMD) while requests are in flight;
                                                 every request that reached the server gets its 200
                                                 and its row; the rest were refused at connect
  rollout --endpoints F --stop-file S --database-url D
                                                 load on the URLs listed in file F (re-read before
                                                 every request, as a Service's endpoints) until S
                                                 exists, while a script replaces the servers behind
                                                 them; every request gets its 200 and its row, and
                                                 every listed server stays ready throughout

Exit status 0 when every check holds; the findings are printed as one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text


def _photo() -> Path:
    """coffee.png from scikit-image's wheel (a dev dependency): a real photo of known class."""
    spec = find_spec("skimage")
    assert spec is not None, "install the dev dependencies: pip install -e '.[dev]'"
    assert spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "coffee.png"


PHOTO = _photo()


def _one_request(url: str, photo: bytes) -> tuple[str, str]:
    """('ok', request_id) | ('refused', '') | ('lost', reason) | ('status-N', request_id)."""
    request_id = uuid.uuid4().hex
    try:
        # A fresh connection per request: a reused keep-alive connection that the server closes
        # while idle would look like a lost request without being one.
        response = httpx.post(
            f"{url}/predict",
            files={"file": ("coffee.png", photo, "image/png")},
            headers={"X-Request-ID": request_id, "Connection": "close"},
            timeout=60,
        )
    except httpx.ConnectError:
        return "refused", ""
    except httpx.TransportError as exc:
        return "lost", f"{type(exc).__name__}: {exc}"
    return ("ok" if response.status_code == 200 else f"status-{response.status_code}"), request_id


def _rows(database_url: str, request_ids: list[str]) -> Counter[str]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                text("SELECT request_id FROM predictions WHERE request_id = ANY(:ids)"),
                {"ids": request_ids},
            ).scalars()
            return Counter(found)
    finally:
        engine.dispose()


def _run_to_end(targets: list[Callable[[], None]]) -> None:
    """Each target in a thread of its own, all at once; returns when every one has."""
    threads = [threading.Thread(target=target) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def spread(urls: list[str], requests: int, concurrency: int, database_url: str) -> dict[str, Any]:
    photo = PHOTO.read_bytes()
    targets = itertools.cycle(urls)
    lock = threading.Lock()
    outcomes: list[tuple[str, str, str]] = []
    remaining = iter(range(requests))

    def worker() -> None:
        while True:
            with lock:
                if next(remaining, None) is None:
                    return
                url = next(targets)
            kind, detail = _one_request(url, photo)
            with lock:
                outcomes.append((url, kind, detail))

    _run_to_end([worker] * concurrency)
    ok_ids = [detail for _, kind, detail in outcomes if kind == "ok"]
    rows = _rows(database_url, ok_ids)
    per_url = Counter(url for url, kind, _ in outcomes if kind == "ok")
    result = {
        "requests": requests,
        "ok": len(ok_ids),
        "per_replica": dict(per_url),
        "other": Counter(kind for _, kind, _ in outcomes if kind != "ok"),
        "rows_for_ok": sum(rows.values()),
        "ok_without_exactly_one_row": [i for i in ok_ids if rows[i] != 1],
    }
    result["passed"] = (
        len(ok_ids) == requests
        and not result["ok_without_exactly_one_row"]
        and all(per_url[url] > 0 for url in urls)
    )
    return result


def drain(url: str, concurrency: int, database_url: str, stop: str) -> dict[str, Any]:
    photo = PHOTO.read_bytes()
    stop_sending = threading.Event()
    lock = threading.Lock()
    outcomes: list[tuple[str, str]] = []

    def worker() -> None:
        while not stop_sending.is_set():
            outcome = _one_request(url, photo)
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    time.sleep(3)  # steady load: every worker has a request in the server most of the time
    stop_sending.set()  # no new requests after this; those already sent are in flight
    time.sleep(0.05)  # ...and accepted by the server, queued for or inside inference
    in_flight_at_signal = sum(thread.is_alive() for thread in threads)
    subprocess.run(shlex.split(stop), check=True, capture_output=True)
    signalled_at = time.monotonic()
    for thread in threads:
        thread.join(timeout=90)
    kinds = Counter(kind for kind, _ in outcomes)
    ok_ids = [detail for kind, detail in outcomes if kind == "ok"]
    rows = _rows(database_url, ok_ids)
    result = {
        "requests": len(outcomes),
        "outcomes": dict(kinds),
        "in_flight_at_sigterm": in_flight_at_signal,
        "drain_seconds": round(time.monotonic() - signalled_at, 2),
        "lost": [detail for kind, detail in outcomes if kind == "lost"],
        "ok_without_exactly_one_row": [i for i in ok_ids if rows[i] != 1],
    }
    result["passed"] = (
        set(kinds) <= {"ok", "refused"}
        and kinds["ok"] > 0
        and in_flight_at_signal > 0
        and not result["ok_without_exactly_one_row"]
    )
    return result


def _listed(endpoints: Path) -> list[str]:
    return [line.strip() for line in endpoints.read_text().splitlines() if line.strip()]


def rollout(
    endpoints: Path, stop_file: Path, concurrency: int, database_url: str
) -> dict[str, Any]:
    photo = PHOTO.read_bytes()
    lock = threading.Lock()
    outcomes: list[tuple[str, str, str]] = []
    unready: list[dict[str, Any]] = []
    turn = itertools.count()

    def worker() -> None:
        while not stop_file.exists():
            urls = _listed(endpoints)
            if not urls:
                with lock:
                    outcomes.append(("", "no-endpoint", ""))
                time.sleep(0.1)
                continue
            url = urls[next(turn) % len(urls)]
            kind, detail = _one_request(url, photo)
            with lock:
                outcomes.append((url, kind, detail))

    def readiness() -> None:  # what a readiness probe would see, four times a second
        with httpx.Client(timeout=5) as client:
            while not stop_file.exists():
                for url in _listed(endpoints):
                    try:
                        status, body = (r := client.get(f"{url}/health")).status_code, r.text
                    except httpx.TransportError as exc:
                        status, body = 0, f"{type(exc).__name__}: {exc}"
                    if status != 200 and url in _listed(endpoints):  # still listed: it counts
                        unready.append({"url": url, "status": status, "body": body[:300]})
                time.sleep(0.25)

    _run_to_end([worker] * concurrency + [readiness])
    ok_ids = [detail for _, kind, detail in outcomes if kind == "ok"]
    rows = _rows(database_url, ok_ids)
    result = {
        "requests": len(outcomes),
        "ok": len(ok_ids),
        "per_server": dict(Counter(url for url, kind, _ in outcomes if kind == "ok")),
        "failed": dict(Counter(kind for _, kind, _ in outcomes if kind != "ok")),
        "lost": [detail for _, kind, detail in outcomes if kind == "lost"],
        "unready_while_listed": unready,
        "ok_without_exactly_one_row": [i for i in ok_ids if rows[i] != 1],
    }
    result["passed"] = (
        len(ok_ids) == len(outcomes) > 0
        and not unready
        and not result["ok_without_exactly_one_row"]
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p_spread = commands.add_parser("spread")
    p_spread.add_argument("--urls", required=True)
    p_spread.add_argument("--requests", type=int, default=60)
    p_spread.add_argument("--concurrency", type=int, default=6)
    p_spread.add_argument("--database-url", required=True)
    p_drain = commands.add_parser("drain")
    p_drain.add_argument("--url", required=True)
    p_drain.add_argument("--concurrency", type=int, default=8)
    p_drain.add_argument("--database-url", required=True)
    p_drain.add_argument("--stop", required=True, help="command that sends SIGTERM to the server")
    p_rollout = commands.add_parser("rollout")
    p_rollout.add_argument("--endpoints", type=Path, required=True)
    p_rollout.add_argument("--stop-file", type=Path, required=True)
    p_rollout.add_argument("--concurrency", type=int, default=4)
    p_rollout.add_argument("--database-url", required=True)
    args = parser.parse_args()
    if args.command == "spread":
        result = spread(args.urls.split(","), args.requests, args.concurrency, args.database_url)
    elif args.command == "rollout":
        result = rollout(args.endpoints, args.stop_file, args.concurrency, args.database_url)
    else:
        result = drain(args.url, args.concurrency, args.database_url, args.stop)
    print(json.dumps(result, default=dict, indent=1))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

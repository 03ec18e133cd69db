"""What heads cost /predict: the real service on PostgreSQL under `hey` at concurrency 8, a 640x480
JPEG, alternating between no heads and an active head plus a shadow head (each answering every
prediction, both recorded), several rounds in ABBA order so that drift of the machine falls on
both alike.

    .venv/bin/python -m bench.heads            (make bench-heads; --seconds, --rounds)

The label set is taught through the API as a team would: crops of scikit-image's photos, two
classes, two trained versions. Prints JSON: the machine, each round, and the medians' ratios,
throughput's and also the CPU per request's (server, decoders and PostgreSQL, from /proc): on a
machine shared with other tenants, throughput moves 10-20% between rounds of the same condition,
CPU per request a few percent.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx
from PIL import Image

from bench.load import MULTIPART, Endpoint, cell, free_port, fresh_database, multipart_body, server
from bench.overhead import children_cpu, cpu_seconds, postgres_cpu, server_pid
from visinspect.inference.cpu import this_cpu
from visinspect.offline.photos import crops, skimage_data

CLASSES = {
    "texture": ["brick.png", "grass.png", "gravel.png"],
    "object": ["coffee.png", "chelsea.png", "rocket.jpg"],
}
REFRESH_S = 0.5


def main() -> None:
    args = arguments(__doc__).parse_args()
    photos = skimage_data()
    assert photos is not None, "scikit-image's photos are needed (the model extra)"
    with tempfile.TemporaryDirectory() as folder, fresh_database() as url:
        port = free_port()
        env = {
            "DATABASE_URL": url,
            "HEADS_REFRESH_S": str(REFRESH_S),
            "HEADS_DIR": f"{folder}/heads",
            "LOG_LEVEL": "WARNING",
        }
        with server([".venv/bin/visinspect", "serve", "--port", str(port)], env, port) as base:
            v1, v2 = _teach(base, photos)
            body = multipart_body(
                jpeg_of(photos / "coffee.png", (640, 480)), Path(folder), "coffee"
            )
            endpoint = Endpoint(base, "/predict", {"640x480": body}, MULTIPART)
            conditions = ("none", "active+shadow")
            rounds = measure_rounds(
                endpoint, port, args, conditions, lambda c: _set(base, c, v1, v2)
            )
    print(json.dumps(report(rounds, args), indent=2))


def arguments(description: str | None) -> argparse.ArgumentParser:
    """The options of a run of ABBA rounds (`measure_rounds`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seconds", type=float, default=10, help="per round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds (even: ABBA)")
    parser.add_argument("--concurrency", type=int, default=8)
    return parser


def measure_rounds(
    endpoint: Endpoint,
    port: int,
    args: argparse.Namespace,
    conditions: tuple[str, str],
    set_condition: Callable[[str], None],
) -> list[dict[str, object]]:
    """`args.rounds` rounds of both conditions in ABBA order (`_order`), each `hey` at
    `args.concurrency` for `args.seconds` once `set_condition` made it so: throughput,
    latency and the CPU a request cost the machine (`_cpu`)."""
    pid = server_pid(port)
    rounds: list[dict[str, object]] = []
    for number in range(args.rounds):
        for condition in _order(number, conditions):
            set_condition(condition)
            before = _cpu(pid)
            result = cell(endpoint, "640x480", args.concurrency, args.seconds, condition)
            spent = _cpu(pid) - before
            rounds.append(
                {
                    "condition": condition,
                    "throughput": round(result.throughput, 2),
                    "p50_ms": round(result.p50, 2),
                    "p99_ms": round(result.p99, 2),
                    "ok": result.ok,
                    "requests": result.requests,
                    "cpu_ms_per_request": round(spent / result.ok * 1000, 3),
                }
            )
    return rounds


def _cpu(pid: int) -> float:
    """CPU seconds so far of the server (every thread), its decoders and PostgreSQL: what a
    request costs the machine, steadier than throughput on a shared one."""
    return cpu_seconds(pid) + children_cpu(pid) + postgres_cpu()


def _order(number: int, conditions: tuple[str, str] = ("none", "active+shadow")) -> tuple[str, str]:
    """ABBA: each round's first condition alternates. Throughput drifts over a run (the tables
    grow; measured: 193, 182 and 176 requests/s in three rounds of the same condition), and
    measuring "none" first every time charged all of that drift to the heads."""
    return conditions if number % 2 == 0 else conditions[::-1]


def _teach(base: str, photos: Path) -> tuple[int, int]:
    with httpx.Client(base_url=base, timeout=300) as client:
        client.post(
            "/label-sets", json={"name": "surfaces", "classes": list(CLASSES)}
        ).raise_for_status()
        versions = []
        for take in (slice(0, 3), slice(3, 5)):
            for class_name, names in CLASSES.items():
                for name in names:
                    for data in crops(photos / name)[take]:
                        prediction = client.post("/predict", files={"file": ("x.png", data)}).json()
                        client.post(
                            f"/predictions/{prediction['id']}/labels",
                            json={"label_set": "surfaces", "class": class_name},
                        ).raise_for_status()
            trained = client.post("/label-sets/surfaces/heads")
            trained.raise_for_status()
            versions.append(trained.json()["id"])
    return versions[0], versions[1]


def _set(base: str, condition: str, v1: int, v2: int) -> None:
    with httpx.Client(base_url=base, timeout=60) as client:
        heads = {h["id"]: h["status"] for h in client.get("/label-sets/surfaces/heads").json()}
        wanted = (
            {v1: "retired", v2: "retired"} if condition == "none" else {v1: "active", v2: "shadow"}
        )
        for head_id, status in wanted.items():
            if heads[head_id] != status:
                action = {"retired": "retire", "active": "promote", "shadow": "shadow"}[status]
                client.post(f"/heads/{head_id}/{action}").raise_for_status()
    time.sleep(REFRESH_S * 4)  # every process has reloaded


def jpeg_of(source: Path | IO[bytes], size: tuple[int, int]) -> bytes:
    """The image at `source` (a path or a file) as a JPEG of `size`, quality 90."""
    buffer = io.BytesIO()
    Image.open(source).convert("RGB").resize(size).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def report(
    rounds: list[dict[str, object]],
    args: argparse.Namespace,
    with_them: str = "active+shadow",
    target: str = "throughput ratio >= 0.95 and p50 ratio <= 1.05",
    label: str = "heads",
) -> dict[str, object]:
    def median(condition: str, key: str) -> float:
        return statistics.median(float(r[key]) for r in rounds if r["condition"] == condition)  # type: ignore[arg-type]

    none_tp, heads_tp = median("none", "throughput"), median(with_them, "throughput")
    none_p50, heads_p50 = median("none", "p50_ms"), median(with_them, "p50_ms")
    none_cpu = median("none", "cpu_ms_per_request")
    heads_cpu = median(with_them, "cpu_ms_per_request")
    return {
        "cpu": this_cpu().describe(),
        "concurrency": args.concurrency,
        "seconds_per_round": args.seconds,
        "rounds": rounds,
        # Each round's heads phase against its no-heads phase (the machine drifts between rounds
        # more than heads cost), then the median of those ratios, and the medians' ratio.
        "paired_throughput_ratios": [
            _paired(a, b) for a, b in zip(rounds[::2], rounds[1::2], strict=True)
        ],
        f"throughput_ratio_{label}_to_none": round(heads_tp / none_tp, 4),
        f"p50_ratio_{label}_to_none": round(heads_p50 / none_p50, 4),
        f"cpu_per_request_ratio_{label}_to_none": round(heads_cpu / none_cpu, 4),
        "target": target,
    }


def _paired(first: dict[str, object], second: dict[str, object]) -> float:
    """One round's throughput with them over its throughput without, whichever ran first."""
    heads, none = (second, first) if first["condition"] == "none" else (first, second)
    return round(float(heads["throughput"]) / float(none["throughput"]), 4)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()

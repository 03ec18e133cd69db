"""What a detector costs /predict: the real service on PostgreSQL under `hey` at concurrency 8,
a 640x480 JPEG of a product photograph, alternating between no detector and an active one (its
patch graph and search on every prediction, its answer, region and heat map recorded), several
rounds in ABBA order so that drift of the machine falls on both alike.

    .venv/bin/python -m bench.detectors        (make bench runs it; --seconds, --rounds)

The detector is taught through the API as a team would: good shots of scikit-image's coffee
photograph (bench/defects.py: pose, light and JPEG jitter) classified with their images kept,
labelled `ok`, a detector trained on them and promoted. Prints JSON as bench/heads.py does: the
machine, each round, the paired and the medians' ratios of throughput, p50 and CPU a request.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

from bench.defects import product, shots
from bench.heads import arguments, jpeg_of, measure_rounds, report
from bench.load import MULTIPART, Endpoint, free_port, fresh_database, multipart_body, server
from visinspect.offline.photos import skimage_data

REFRESH_S = 0.5
CONDITIONS = ("none", "detector")
GOOD_SHOTS = 20


def main() -> None:
    args = arguments(__doc__).parse_args()
    photos = skimage_data()
    assert photos is not None, "scikit-image's photos are needed (the model extra)"
    coffee = product(photos / "coffee.png")
    with tempfile.TemporaryDirectory() as folder, fresh_database() as url:
        port = free_port()
        env = {
            "DATABASE_URL": url,
            "HEADS_REFRESH_S": str(REFRESH_S),
            "HEADS_DIR": f"{folder}/heads",
            "IMAGE_STORE_DIR": f"{folder}/images",
            "LOG_LEVEL": "WARNING",
        }
        with server([".venv/bin/visinspect", "serve", "--port", str(port)], env, port) as base:
            detector = _teach(base, coffee)
            shot = next(shots(coffee, "good", 1, seed=7))
            upload = jpeg_of(io.BytesIO(shot.jpeg), (640, 480))
            body = multipart_body(upload, Path(folder), "part")
            endpoint = Endpoint(base, "/predict", {"640x480": body}, MULTIPART)
            rounds = measure_rounds(
                endpoint, port, args, CONDITIONS, lambda c: _set(base, c, detector)
            )
    measured = report(rounds, args, "detector", "throughput ratio >= 0.8", "detector")
    print(json.dumps(measured, indent=2))


def _teach(base: str, coffee: Image.Image) -> int:
    with httpx.Client(base_url=base, timeout=300) as client:
        made = client.post("/label-sets", json={"name": "line", "classes": ["ok", "defect"]})
        made.raise_for_status()
        for shot in shots(coffee, "good", GOOD_SHOTS, seed=3):
            prediction = client.post("/predict", files={"file": ("x.jpg", shot.jpeg)}).json()
            client.post(
                f"/predictions/{prediction['id']}/labels", json={"label_set": "line", "class": "ok"}
            ).raise_for_status()
        trained = client.post("/label-sets/line/detectors", json={"good_class": "ok"})
        trained.raise_for_status()
        return int(trained.json()["id"])


def _set(base: str, condition: str, detector: int) -> None:
    with httpx.Client(base_url=base, timeout=60) as client:
        status = client.get(f"/heads/{detector}").json()["status"]
        wanted = "active" if condition == "detector" else "retired"
        if status != wanted:
            action = "promote" if wanted == "active" else "retire"
            client.post(f"/heads/{detector}/{action}").raise_for_status()
    time.sleep(REFRESH_S * 4)  # every process has reloaded


if __name__ == "__main__":
    main()

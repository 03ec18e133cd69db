"""`make bench-anomaly`: detectors trained from good shots of real products, scored on drawn defects.

For each product photograph (bench/defects.py: Debian's opencv-doc photos, jittered in pose, light
and JPEG quality) and each number of good images, a detector is trained exactly as the service
trains one (the artifact's patch graph, `inference/anomaly.py`), then scores 30 new good shots and
30 shots of each defect kind. Printed per set of products and number of good images:

- image AUROC per defect kind (how well the score ranks defective above good), and its mean;
- pixel AUROC (the heat map against the drawn defects' masks, over good and defective shots);
- at the threshold: false rejects among the new good shots, defects caught, and of those, how many
  answers' regions overlap the drawn defect;
- training seconds (patch features + coreset + threshold), bank patches, artifact bytes;
- CPU ms a photo (medians, every thread counted): the patch graph, the nearest-neighbour search
  with score and region, and (apart) drawing the heat map as a PNG, which the service does only
  when someone asks for it.

`--set held-out` runs the products that no choice of the method was made on: the verdict.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from bench.defects import BENCHMARK, HELD_OUT, KINDS, Shot, product, product_paths, shots
from visinspect.config import Settings
from visinspect.inference import anomaly
from visinspect.inference.anomaly import Detector, PatchExtractor, open_patch_extractor
from visinspect.inference.artifact import read_manifest
from visinspect.inference.preprocess import frame_of

TESTS_PER_KIND = 30
_MAX_PIXELS = 50_000_000


@dataclass
class Row:
    """One (set, number of good images) row, summed over the set's products."""

    auroc: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    pixel_auroc: list[float] = field(default_factory=list)
    false_rejects: int = 0
    goods: int = 0
    caught: int = 0
    defects: int = 0
    region_hits: int = 0
    train_s: list[float] = field(default_factory=list)
    bank: list[int] = field(default_factory=list)
    artifact_bytes: list[int] = field(default_factory=list)
    graph_ms: list[float] = field(default_factory=list)  # CPU: the patch graph
    search_ms: list[float] = field(default_factory=list)  # CPU: search, score, region
    png_ms: list[float] = field(default_factory=list)  # CPU: the heat map as a PNG


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """The probability that a positive scores above a negative (ties count half)."""
    truth = np.concatenate([np.zeros(len(negatives)), np.ones(len(positives))])
    return float(roc_auc_score(truth, np.concatenate([negatives, positives])))


def features(extractor: PatchExtractor, batch: list[Shot]) -> np.ndarray:
    side = extractor.patches.frame
    return extractor.features(
        np.stack([frame_of(shot.jpeg, side, _MAX_PIXELS, extractor.spec).pixels for shot in batch])
    )


def measure_product(
    extractor: PatchExtractor,
    index: int,
    photo: Image.Image,
    goods: int,
    bank_size: int,
    row: Row,
) -> None:
    started = time.perf_counter()
    good = list(shots(photo, "good", goods, seed=1000 + index))
    detector = anomaly.train(
        features(extractor, good), extractor.patches.frame, extractor.patches.sha256, bank_size
    )
    row.train_s.append(time.perf_counter() - started)
    row.bank.append(len(detector.bank))
    row.artifact_bytes.append(len(anomaly.pack(detector)))
    new_good = list(shots(photo, "good", TESTS_PER_KIND, seed=2000 + index))
    good_scores, good_heat = score(extractor, detector, new_good, row)
    row.goods += len(new_good)
    row.false_rejects += int((good_scores >= 1.0).sum())
    pixel_scores, pixel_truth = [good_heat], [np.zeros(good_heat.shape, bool)]
    for k, kind in enumerate(KINDS):
        bad = list(shots(photo, kind, TESTS_PER_KIND, seed=3000 + index * 7 + k))
        bad_scores, bad_heat = score(extractor, detector, bad, row)
        row.auroc[kind].append(auroc(good_scores, bad_scores))
        pixel_scores.append(bad_heat)
        pixel_truth.append(np.stack([_small(shot.mask) for shot in bad]))
    row.pixel_auroc.append(
        auroc(
            np.concatenate([s[~t] for s, t in zip(pixel_scores, pixel_truth, strict=True)]),
            np.concatenate([s[t] for s, t in zip(pixel_scores, pixel_truth, strict=True)]),
        )
    )


def score(
    extractor: PatchExtractor, detector: Detector, batch: list[Shot], row: Row
) -> tuple[np.ndarray, np.ndarray]:
    """Each shot scored as the service scores an upload, one at a time; CPU time counted for the
    patch graph, the search, the region and the heat map PNG (not the JPEG decode)."""
    scores, heats = [], []
    side = extractor.patches.frame
    for shot in batch:
        frame = frame_of(shot.jpeg, side, _MAX_PIXELS, extractor.spec)
        cpu = time.process_time()
        patch_features = extractor.features(frame.pixels[None])[0]
        graph = time.process_time()
        answer = detector.answer(patch_features, frame.width, frame.height)
        searched = time.process_time()
        anomaly.heat_png(answer.heat, side, side)  # the frame's size, stretched by a page
        row.graph_ms.append((graph - cpu) * 1000)
        row.search_ms.append((searched - graph) * 1000)
        row.png_ms.append((time.process_time() - searched) * 1000)
        scores.append(answer.score)
        heats.append(_small_heat(answer.heat))
        if shot.mask is not None:
            row.defects += 1
            if answer.verdict == "anomalous":
                row.caught += 1
                row.region_hits += _hits(answer.region, shot.mask)
    return np.array(scores), np.stack(heats)


_PIXEL_GRID = (60, 80)  # masks and heat maps compared at this (height, width)


def _small(mask: np.ndarray | None) -> np.ndarray:
    assert mask is not None
    image = Image.fromarray(mask.astype(np.uint8) * 255).resize(_PIXEL_GRID[::-1], Image.BOX)
    return np.asarray(image) >= 128


def _small_heat(heat: np.ndarray) -> np.ndarray:
    image = Image.fromarray(heat).resize(_PIXEL_GRID[::-1], Image.Resampling.BILINEAR)
    return np.asarray(image, np.float32)


def _hits(box: tuple[int, int, int, int] | None, mask: np.ndarray) -> int:
    if box is None:
        return 0
    x0, y0, x1, y1 = box
    return int(mask[y0:y1, x0:x1].any())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.anomaly", description=__doc__)
    parser.add_argument("--set", choices=("benchmark", "held-out", "both"), default="both")
    parser.add_argument("--goods", default="10,20,50,100", help="numbers of good images")
    parser.add_argument("--bank-size", type=int, default=anomaly.DEFAULT_BANK_SIZE)
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "int8"),
        default="auto",
        help="the patch graph (ANOMALY_PRECISION; auto: int8 where the artifact has it)",
    )
    args = parser.parse_args(argv)
    settings = Settings(anomaly_precision=args.precision, torch_threads=1)
    manifest = read_manifest(settings.model_dir)
    extractor = open_patch_extractor(settings)
    patches = extractor.patches
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    print("\n".join(line for line in cpu if line.startswith(("Model name", "CPU(s)", "Flags"))))
    print(
        f"{manifest.model_name}, {patches.precision} patch graph {patches.frame} px -> {patches.grid}x{patches.grid} "
        f"patches x {patches.channels} channels; bank {args.bank_size}; target "
        f"false-reject {anomaly.DEFAULT_FALSE_REJECT:.0%}; {TESTS_PER_KIND} new good shots and "
        f"{TESTS_PER_KIND} of each defect kind per product\n"
    )
    sets = {"benchmark": BENCHMARK, "held-out": HELD_OUT}
    chosen = sets if args.set == "both" else {args.set: sets[args.set]}
    header = (
        "| set | good images | " + " | ".join(f"AUROC {k}" for k in KINDS) + " | mean | "
        "pixel AUROC | false rejects | caught | region hits | train s | bank | artifact KB | "
        "CPU ms a photo: graph + search (+ PNG) |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name, products in chosen.items():
        photos = [product(p) for p in product_paths(products)]
        for goods in (int(g) for g in args.goods.split(",")):
            row = Row()
            for index, photo in enumerate(photos):
                measure_product(extractor, index, photo, goods, args.bank_size, row)
            print(_line(name, goods, row), flush=True)
    return 0


def _line(name: str, goods: int, row: Row) -> str:
    kinds = [statistics.fmean(row.auroc[k]) for k in KINDS]
    return (
        f"| {name} | {goods} | "
        + " | ".join(f"{v:.3f}" for v in kinds)
        + f" | **{statistics.fmean(kinds):.3f}** | {statistics.fmean(row.pixel_auroc):.3f} | "
        f"{row.false_rejects}/{row.goods} | {row.caught}/{row.defects} | "
        f"{row.region_hits}/{row.caught} | {statistics.fmean(row.train_s):.1f} (max "
        f"{max(row.train_s):.1f}) | {max(row.bank)} | {max(row.artifact_bytes) // 1024} | "
        f"{statistics.median(row.graph_ms):.1f} + {statistics.median(row.search_ms):.1f} "
        f"(+ {statistics.median(row.png_ms):.1f}) |"
    )


if __name__ == "__main__":
    raise SystemExit(main())

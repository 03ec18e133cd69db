"""Teaching from few images, measured: a head trained on N labelled photos per class, scored on
the rest, on a photo set the project trains nothing on (Debian's tuxpaint-stamps-default
photographs, by their folder: animals, food and plants; then with household too). And how long
training takes on 10,000 labelled embeddings, and what the kept uint8 codes cost in accuracy.

Every photo goes through the service's own decoding, preprocessing and model (one pass: top-k and
embedding), then through the codes the service keeps (uint8 with a per-row scale) unless
--float32. A stamp and its mirror image are one subject: never one in training and one in test.
The rest is scored by the head as the service loads and runs it (`TrainedHead.served`: through
its artifact, as `inference.heads` loads it).

    .venv/bin/python -m bench.teach                 (after `make photos`)

Prints JSON: the machine, the classes and their photos, then per class set and N the accuracy on the rest (mean
and range over --repeats draws), the same for float32 embeddings at N=20, and the training time.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from visinspect.config import Settings
from visinspect.db.embeddings import decode, encode
from visinspect.inference.classifier import load_classifier
from visinspect.inference.cpu import this_cpu
from visinspect.inference.preprocess import preprocess
from visinspect.logging import configure_logging
from visinspect.offline.heads import train
from visinspect.offline.photos import stamps_by_category

# The issue's own example categories that hold enough photographs for 20 per class plus a
# held-out rest (vehicles has 19), then the same with "household" (kitchenware, tools, toys: the
# least uniform folder) joining them.
CLASS_SETS = (("animals", "food", "plants"), ("animals", "food", "household", "plants"))
SIZES = (5, 10, 20, 50)
HELD_OUT_MIN = 5  # a class is scored at N only when at least this many subjects are left


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=30, help="random draws per N")
    parser.add_argument("--float32", action="store_true", help="skip the uint8 codes")
    parser.add_argument(
        "--classes",
        action="append",
        help="the stamps' folders to teach, comma-separated; repeat for several sets "
        f"(default: {' and '.join(','.join(s) for s in CLASS_SETS)})",
    )
    args = parser.parse_args()
    configure_logging("WARNING", "console")  # stdout is the report's
    sets = [c.split(",") for c in args.classes] if args.classes else [list(s) for s in CLASS_SETS]
    wanted = {c for s in sets for c in s}
    photos = {c: p for c, p in stamps_by_category().items() if c in wanted}
    if len(photos) < 2:
        raise SystemExit("no tuxpaint stamps here: run `make photos` first")
    features, kept, labels, subjects = _embedded(photos)
    rows = kept if not args.float32 else features
    report: dict[str, object] = {
        "cpu": this_cpu().describe(),
        "photos": {c: len(p) for c, p in photos.items()},
        "subjects": {c: sum(s.startswith(c + "/") for s in set(subjects)) for c in photos},
        "embedding": "float32" if args.float32 else "uint8 codes (as kept)",
        "repeats": args.repeats,
        "sets": [_curve(rows, features, labels, subjects, s, args.repeats) for s in sets],
        "training_10000": _training_time(features, labels),
    }
    print(json.dumps(report, indent=2))


def _curve(
    rows: np.ndarray,
    features: np.ndarray,
    labels: list[str],
    subjects: list[str],
    classes: list[str],
    repeats: int,
) -> dict[str, object]:
    """One class set: accuracy at every N, and at N=20 with float32 embeddings."""
    chosen = [i for i, label in enumerate(labels) if label in classes]
    picked = ([labels[i] for i in chosen], [subjects[i] for i in chosen])
    return {
        "classes": classes,
        "curve": [_point(rows[chosen], *picked, n, repeats) for n in SIZES],
        "float32_at_20": _point(features[chosen], *picked, 20, repeats),
    }


def _embedded(
    photos: dict[str, list[Path]],
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    classifier = load_classifier(Settings(_env_file=None))  # type: ignore[call-arg]
    features, labels, subjects = [], [], []
    for class_name, paths in photos.items():
        for path in paths:
            pixels = preprocess(path.read_bytes(), classifier.preprocessing, 50_000_000).pixels
            (result,) = classifier.classify(pixels[None], [1])
            assert result.embedding is not None
            features.append(result.embedding)
            labels.append(class_name)
            subjects.append(f"{class_name}/{re.sub(r'(_mirror|_?[0-9]+)$', '', path.stem.lower())}")
    matrix = np.stack(features)
    now = datetime.now(UTC)
    kept = np.stack([decode(*_codes(encode(row, now, "x"))) for row in matrix])
    return matrix, kept, labels, subjects


def _codes(row: object) -> tuple[float, float, bytes]:
    return row.low, row.scale, row.codes  # type: ignore[attr-defined]


def _point(
    rows: np.ndarray, labels: list[str], subjects: list[str], n: int, repeats: int
) -> dict[str, object]:
    """N training photos per class (whole subjects), scored on every other photo."""
    by_class: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, (label, subject) in enumerate(zip(labels, subjects, strict=True)):
        by_class[label][subject].append(i)
    classes = [c for c, groups in by_class.items() if len(groups) >= n + HELD_OUT_MIN]
    if len(classes) < 2:
        return {"n": n, "note": f"fewer than two classes have {n + HELD_OUT_MIN} subjects"}
    accuracies, seconds = [], []
    for seed in range(repeats):
        rng = np.random.default_rng(seed)
        train_idx, test_idx = [], []
        for c in classes:
            groups = list(by_class[c].values())
            order = rng.permutation(len(groups))
            chosen = [i for g in order[:n] for i in groups[g]][:n]
            train_idx += chosen
            test_idx += [i for g in order[n:] for i in groups[g]]
        started = time.perf_counter()
        head = train(rows[train_idx], [labels[i] for i in train_idx], classes)
        seconds.append(time.perf_counter() - started)
        served = head.served("bench")
        predicted = [served.answer(rows[i]).class_name for i in test_idx]
        truth = [labels[i] for i in test_idx]
        accuracies.append(float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)])))
    return {
        "n": n,
        "accuracy_mean": round(statistics.fmean(accuracies), 4),
        "accuracy_min": round(min(accuracies), 4),
        "accuracy_max": round(max(accuracies), 4),
        "test_photos": len(test_idx),
        "train_seconds_median": round(statistics.median(seconds), 3),
    }


def _training_time(features: np.ndarray, labels: list[str]) -> dict[str, object]:
    """10,000 rows drawn from the real embeddings, each with 1% noise (the time depends on the
    rows and classes, not on where they came from), trained with its cross-validation."""
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(features), 10_000)
    rows = features[picks] * (1 + 0.01 * rng.standard_normal((10_000, features.shape[1])))
    classes = sorted(set(labels))
    started = time.perf_counter()
    head = train(rows.astype(np.float32), [labels[i] for i in picks], classes)
    return {
        "rows": 10_000,
        "classes": len(classes),
        "seconds": round(time.perf_counter() - started, 2),
        "folds": head.metrics["folds"],
    }


if __name__ == "__main__":
    main()

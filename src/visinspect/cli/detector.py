"""`visinspect detector train DIR` and `visinspect detector score PATH...`: anomaly detectors
from good images only, on this machine (inference/anomaly.py, docs/anomaly.md).

`train` reads a folder of good images, writes the detector (`OUT.npz`, no pickle) and its
manifest (`OUT.json`: the artifact's sha256, the patch graph it reads, how it was trained);
`score` answers score, verdict and region for each image and can write each heat map as a PNG.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from visinspect.cli.classify import expand, progress_bar
from visinspect.cli.teach import refused
from visinspect.config import Settings
from visinspect.db.session import create_db_engine, wait_for_database
from visinspect.errors import InvalidImage, VisinspectError
from visinspect.inference import anomaly
from visinspect.inference.anomaly import (
    Detector,
    DetectorArtifactError,
    PatchExtractor,
    open_patch_extractor,
)
from visinspect.inference.artifact import ArtifactError
from visinspect.inference.preprocess import frame_of
from visinspect.offline.detectors import GoodImages, read_files, train_detector

EXIT_OK, EXIT_FAILED, EXIT_NOTHING_MATCHED = 0, 1, 2


def train(settings: Settings, args: argparse.Namespace) -> int:
    if args.label_set:
        return _train_registered(settings, args)
    err = Console(stderr=True)
    if not args.paths:
        err.print("visinspect: name the good images (files, folders) to train on")
        return EXIT_NOTHING_MATCHED
    started = _start(settings, args, err)
    if isinstance(started, int):
        return started
    files, extractor = started
    began = time.perf_counter()
    with progress_bar(err, args.no_progress) as progress:
        task = progress.add_task("reading good images", total=len(files))
        read = read_files(
            files, extractor, settings.max_image_pixels, lambda: progress.advance(task)
        )
    frames, refused = read.pixels, read.refused
    if len(frames) < anomaly.MIN_GOOD_IMAGES:
        err.print(
            f"visinspect: {len(frames)} readable good images; a detector needs at least "
            f"{anomaly.MIN_GOOD_IMAGES}"
        )
        return EXIT_FAILED
    with err.status("choosing the bank") as status:
        detector = anomaly.train(
            extractor.features(np.stack(frames)),
            extractor.patches.frame,
            extractor.patches.sha256,
            bank_size=args.bank_size,
            false_reject=args.false_reject,
            progress=lambda step: status.update(step),
        )
    data = anomaly.pack(detector)
    out = Path(args.out).with_suffix(".npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    seconds = round(time.perf_counter() - began, 2)
    manifest = {
        "method": anomaly.METHOD,
        "sha256": digest,
        "bytes": len(data),
        "model_name": settings.model_arch.value,
        "patch_graph_sha256": extractor.patches.sha256,
        "patch_graph_precision": extractor.patches.precision,
        "frame": detector.frame,
        "threshold": detector.threshold,
        "trained_from": [str(f) for f in files if str(f) not in refused],
        "refused": refused,
        "seconds": seconds,
    } | detector.stats
    out.with_suffix(".json").write_text(json.dumps(manifest, indent=2) + "\n")
    err.print(
        f"detector {out} ({len(data) // 1024} KB, sha256 {digest[:16]}): "
        f"{len(frames)} good images, bank of {len(detector.bank)} patches, "
        f"{seconds} s; {len(refused)} files refused"
    )
    return EXIT_OK


def _train_registered(settings: Settings, args: argparse.Namespace) -> int:
    """On DATABASE_URL, in this process; with --json, one JSON line (what the server reads)."""
    err = Console(stderr=True)
    try:
        source = _good_images(args)
    except ValueError as exc:
        return refused(args, "invalid_request", str(exc))
    if args.paths and not source.paths:
        err.print("visinspect: no image matched " + " ".join(args.paths))
        return EXIT_NOTHING_MATCHED
    engine = create_db_engine(settings)
    try:
        wait_for_database(engine, settings.database_wait_s)
        quiet = Console(stderr=True, quiet=args.json or args.no_progress)
        with quiet.status("training") as status:
            head_id, version = train_detector(
                settings,
                engine,
                args.label_set,
                args.good,
                source,
                args.by,
                bank_size=args.bank_size,
                false_reject=args.false_reject,
                progress=lambda step: status.update(step),
            )
    except MemoryError:  # RLIMIT_AS, as the server sets it (HEAD_TRAIN_MAX_MEMORY_MB)
        return refused(
            args,
            "training_too_large",
            "training needs more memory than this process may use (HEAD_TRAIN_MAX_MEMORY_MB "
            "for the server's trainings)",
        )
    except VisinspectError as exc:
        return refused(args, exc.code, exc.message)
    except ArtifactError as exc:
        return refused(args, "model_not_ready", f"{exc}; {exc.action}")
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps({"head_id": head_id, "version": version}))
    else:
        print(f"{args.label_set} detector v{version} (head {head_id}, candidate)")
    return EXIT_OK


def _good_images(args: argparse.Namespace) -> GoodImages:
    ids = []
    if args.predictions:
        try:
            ids = [int(part) for part in args.predictions.split(",") if part.strip()]
        except ValueError:
            raise ValueError("--predictions takes comma-separated prediction ids") from None
    if args.paths and ids:
        raise ValueError("name good images either as files or as --predictions, not both")
    return GoodImages(paths=expand(args.paths) if args.paths else [], prediction_ids=ids)


def score(settings: Settings, args: argparse.Namespace) -> int:
    err = Console(stderr=True)
    started = _start(settings, args, err)
    if isinstance(started, int):
        return started
    files, extractor = started
    try:
        detector = _detector(Path(args.detector), extractor)
    except (OSError, ValueError, KeyError, DetectorArtifactError) as exc:
        err.print(f"visinspect: cannot use the detector {args.detector}: {exc}")
        return EXIT_FAILED
    maps = Path(args.maps) if args.maps else None
    if maps is not None:
        maps.mkdir(parents=True, exist_ok=True)
    table = Table("file", "score", "verdict", "region [x0, y0, x1, y1]")
    failed = False
    for path in files:
        try:
            frame = frame_of(
                path.read_bytes(), detector.frame, settings.max_image_pixels, extractor.spec
            )
        except (OSError, InvalidImage) as exc:
            table.add_row(str(path), "", "refused", str(exc))
            failed = True
            continue
        features = extractor.features(frame.pixels[None])[0]
        answer = detector.answer(features, frame.width, frame.height)
        table.add_row(
            str(path),
            f"{answer.score:.3f}",
            answer.verdict,
            str(list(answer.region)) if answer.region else "-",
        )
        if maps is not None:
            (maps / f"{path.stem}.anomaly.png").write_bytes(
                anomaly.heat_png(answer.heat, frame.width, frame.height)
            )
    Console().print(table)
    return EXIT_FAILED if failed else EXIT_OK


def _start(
    settings: Settings, args: argparse.Namespace, err: Console
) -> tuple[list[Path], PatchExtractor] | int:
    """The images the arguments name and MODEL_DIR's patch graph, or the exit code saying why
    there is nothing to do."""
    files = expand(args.paths)
    if not files:
        err.print("visinspect: no image matched " + " ".join(args.paths))
        return EXIT_NOTHING_MATCHED
    try:
        extractor = open_patch_extractor(settings)
    except ArtifactError as exc:
        err.print(f"visinspect: {exc}; {exc.action}")
        return EXIT_FAILED
    return files, extractor


def _detector(path: Path, extractor: PatchExtractor) -> Detector:
    """The detector at `path` (.npz), checked against the sha256 in its manifest (.json) and
    against the patch graph this MODEL_DIR serves."""
    manifest = json.loads(path.with_suffix(".json").read_text())
    if manifest.get("patch_graph_sha256") != extractor.patches.sha256:
        raise DetectorArtifactError(
            "it was trained on another patch graph than MODEL_DIR's: train it again"
        )
    return anomaly.unpack(
        path.with_suffix(".npz").read_bytes(), str(manifest["sha256"]), extractor.patches
    )

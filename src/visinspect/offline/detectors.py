"""`visinspect detector train --label-set NAME`: a detector trained on a label set's good images,
registered in the database as a candidate version of the set's detector (the lifecycle heads
have: shadow, promote, rollback, retire). The server's POST /label-sets/{name}/detectors runs
this very command in a child process, bounded in time and memory like a head's training.

The good images are the kept originals (KEEP_IMAGES) of the predictions whose latest label in
the set is its good class, the newest MAX_GOOD_IMAGES of them; or of the predictions named; or
the files of a folder. Each is decoded as the decoders decode an upload for the model
(`preprocess.frame_of`), so a detector is trained on the pixels it will be served.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import structlog
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from visinspect.config import Settings
from visinspect.db import teaching
from visinspect.errors import (
    InvalidImage,
    InvalidLabelSet,
    LabelSetNotFound,
    PredictionNotFound,
    TooFewGoodImages,
)
from visinspect.inference import anomaly
from visinspect.inference.anomaly import Detector, PatchExtractor, open_patch_extractor
from visinspect.inference.preprocess import frame_of
from visinspect.offline.teach import Version, base_model_version, register_version
from visinspect.storage.image_store import ImageStore, Variant, open_image_store

log = structlog.get_logger("visinspect.detectors")

# The newest good images a detector trains on: a fixed bank makes more pointless for the
# search, and 300 frames' patch features are 140 MB of floats while the bank is chosen.
MAX_GOOD_IMAGES = 300


@dataclass(frozen=True, slots=True)
class GoodImages:
    """Where a detector's good images come from: a folder's files, or kept uploads."""

    paths: list[Path] = field(default_factory=list)
    prediction_ids: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Frames:
    pixels: list[np.ndarray] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # what -> why


def train_detector(
    settings: Settings,
    engine: Engine,
    name: str,
    good_class: str,
    source: GoodImages,
    trained_by: str | None = None,
    bank_size: int = anomaly.DEFAULT_BANK_SIZE,
    false_reject: float = anomaly.DEFAULT_FALSE_REJECT,
    progress: Callable[[str], None] | None = None,
) -> tuple[int, int]:
    """Train, write and register the set's next detector version: (its id, its version).
    LabelSetNotFound, InvalidLabelSet (no such good class), PredictionNotFound or TooFewGoodImages
    (fewer than MIN_GOOD_IMAGES readable good images) before any training."""
    began = time.perf_counter()
    extractor = open_patch_extractor(settings)
    with Session(engine) as session:
        label_set = teaching.label_set(session, name)
        if label_set is None:
            raise LabelSetNotFound(f"no label set named {name!r}")
        if good_class not in label_set.classes:
            raise InvalidLabelSet(
                f"{name!r} has no class {good_class!r} (its classes: "
                f"{', '.join(label_set.classes)}): add it, or name the set's good class"
            )
        labels_until = teaching.latest_label_id(session, label_set.id)
        kept = None if source.paths else _kept(session, label_set.id, good_class, source)
    frames = Frames()
    if source.paths:
        frames = read_files(source.paths, extractor, settings.max_image_pixels)
    elif kept:
        frames = read_kept(kept, extractor, settings, open_image_store(settings))
    if len(frames.pixels) < anomaly.MIN_GOOD_IMAGES:
        raise TooFewGoodImages(_too_few(len(frames.pixels), good_class, source, frames.refused))
    if progress:
        progress(f"patch features of {len(frames.pixels)} good images")
    detector = anomaly.train(
        extractor.features(np.stack(frames.pixels)),
        extractor.patches.frame,
        extractor.patches.sha256,
        bank_size=bank_size,
        false_reject=false_reject,
        progress=progress,
    )
    seconds = round(time.perf_counter() - began, 3)
    head = register_version(
        settings,
        engine,
        Version(
            label_set_id=label_set.id,
            label_set=name,
            kind="detector",
            classes=[good_class],
            base_model_version=base_model_version(settings),
            artifact=anomaly.pack(detector),
            manifest=detector_manifest(detector, extractor, frames, seconds, source),
            labels_until=labels_until,
            trained_by=trained_by,
        ),
    )
    log.info(
        "detector.trained",
        label_set=name,
        version=head.version,
        head_id=head.id,
        good_images=len(frames.pixels),
        refused=len(frames.refused),
        seconds=seconds,
    )
    return head.id, head.version


def detector_manifest(
    detector: Detector,
    extractor: PatchExtractor,
    frames: Frames,
    seconds: float,
    source: GoodImages,
) -> dict[str, object]:
    return {
        "method": anomaly.METHOD,
        "patch_graph_sha256": extractor.patches.sha256,
        "patch_graph_precision": extractor.patches.precision,
        "frame": detector.frame,
        "grid": detector.grid,
        "threshold": detector.threshold,
        "training": {
            "source": "folder" if source.paths else "predictions",
            "good_images": len(frames.pixels),
            "refused": dict(list(frames.refused.items())[:50]),
            "refused_count": len(frames.refused),
            "seconds": seconds,
            **{k: v for k, v in detector.stats.items() if k != "good_images"},
        },
    }


def _kept(
    session: Session, label_set_id: int, good_class: str, source: GoodImages
) -> list[tuple[int, str]]:
    """(prediction id, image sha256) of the good predictions: those named, or the newest
    MAX_GOOD_IMAGES whose latest label in the set is the good class."""
    if source.prediction_ids:
        wanted = sorted(set(source.prediction_ids))
        found = teaching.image_digests(session, wanted)
        missing = [i for i in wanted if i not in found]
        if missing:
            raise PredictionNotFound(f"no predictions with ids {missing[:20]}")
        return [(i, found[i]) for i in wanted]
    return teaching.labelled_images(session, label_set_id, good_class, MAX_GOOD_IMAGES)


def read_files(
    paths: Iterable[Path],
    extractor: PatchExtractor,
    max_pixels: int,
    advance: Callable[[], object] | None = None,
) -> Frames:
    """The files' frames; an unreadable file is refused, and said so. `advance` is called after
    each file (a progress bar)."""
    frames = Frames()
    side = extractor.patches.frame
    for path in paths:
        try:
            data = path.read_bytes()
            frames.pixels.append(frame_of(data, side, max_pixels, extractor.spec).pixels)
        except (OSError, InvalidImage) as exc:
            frames.refused[str(path)] = str(exc)
        if advance is not None:
            advance()
    return frames


def read_kept(
    kept: list[tuple[int, str]],
    extractor: PatchExtractor,
    settings: Settings,
    store: ImageStore | None,
) -> Frames:
    """The kept originals' frames; a prediction whose image is not kept (or no longer) is
    refused, and said so."""
    frames = Frames()
    side = extractor.patches.frame
    for prediction_id, sha256 in kept:
        what = f"prediction {prediction_id}"
        opened = store.open(sha256, Variant.ORIGINAL) if store is not None else None
        if opened is None:
            frames.refused[what] = "its image is not kept (KEEP_IMAGES) or was cleaned up"
            continue
        with opened.file as file:
            data = file.read(settings.max_upload_bytes + 1)
        try:
            frame = frame_of(data, side, settings.max_image_pixels, extractor.spec)
        except InvalidImage as exc:
            frames.refused[what] = str(exc)
            continue
        frames.pixels.append(frame.pixels)
    return frames


def _too_few(found: int, good_class: str, source: GoodImages, refused: dict[str, str]) -> str:
    where = (
        "readable images in the folder"
        if source.paths
        else "of the named predictions have a kept image"
        if source.prediction_ids
        else f"predictions labelled {good_class!r} have a kept image"
    )
    why = f"; refused: {next(iter(refused.items()))[1]}" if refused else ""
    return f"a detector needs at least {anomaly.MIN_GOOD_IMAGES} good images; {found} {where}{why}"

"""`visinspect head train NAME`: read a label set's labels and their kept embeddings, train a
head (`offline/heads.py`), write its artifact atomically to HEADS_DIR and register it in the
database as a `candidate` version. The server's POST /label-sets/{name}/heads runs this very
command in a child process, so that the serving process never imports scikit-learn."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from visinspect.config import Settings
from visinspect.db import teaching
from visinspect.db.embeddings import decode_many
from visinspect.db.tables import EmbeddingRecord, HeadEventRecord, HeadRecord
from visinspect.errors import BaseModelDiffers, LabelSetNotFound, TooFewLabels
from visinspect.inference.heads import MIN_LABELS_PER_CLASS, check_counts
from visinspect.inference.weights import expected_sha256
from visinspect.offline.heads import (
    DEFAULT_TARGET_PRECISION,
    TrainedHead,
    library_versions,
    train,
    training_hash,
)

log = structlog.get_logger("visinspect.teach")


def base_model_version(settings: Settings) -> str:
    """The serving model's version, as every prediction records it."""
    return f"sha256:{expected_sha256(settings)[:16]}"


def train_label_set(
    settings: Settings,
    engine: Engine,
    name: str,
    trained_by: str | None = None,
    target_precision: float | None = None,
) -> HeadRecord:
    """Train, write and register the set's next head version; LabelSetNotFound, TooFewLabels
    or BaseModelDiffers (all before any training) when it cannot be done."""
    model_version = base_model_version(settings)
    with Session(engine) as session:
        label_set = teaching.label_set(session, name)
        if label_set is None:
            raise LabelSetNotFound(f"no label set named {name!r}")
        rows = teaching.training_rows(session, label_set.id, model_version)
        classes = list(label_set.classes)
        usable = [r for r in rows if r.embedding is not None and r.class_name in classes]
        if rows and not usable:
            _refuse_other_base_model(session, [r.prediction_id for r in rows], model_version)
        check_counts({c: sum(r.class_name == c for r in usable) for c in classes}, classes)
    features = decode_many([r.embedding for r in usable if r.embedding is not None])
    labels = [r.class_name for r in usable]
    target = DEFAULT_TARGET_PRECISION if target_precision is None else target_precision
    trained = train(features, labels, classes, target)
    training = {
        "rows": len(usable),
        "labels_skipped_without_embedding": len(rows) - len(usable),
        "ids_sha256": training_hash([(r.label_id, r.prediction_id) for r in usable]),
        "labels_until": max(r.label_id for r in usable),
        "seconds": round(trained.seconds, 3),
    }
    return _register(
        settings, engine, label_set.id, name, model_version, trained, training, trained_by
    )


def _refuse_other_base_model(session: Session, prediction_ids: list[int], version: str) -> None:
    """Labels whose predictions' embeddings all came from another base model."""
    other = session.scalars(
        select(EmbeddingRecord.model_version)
        .where(EmbeddingRecord.prediction_id.in_(prediction_ids[:5000]))
        .limit(1)
    ).first()
    if other is not None and other != version:
        raise BaseModelDiffers(
            f"the labelled predictions' embeddings come from base model {other}, the serving "
            f"model is {version}: label images classified by the serving model"
        )
    raise TooFewLabels(
        f"none of the labelled predictions has a kept embedding (KEEP_EMBEDDINGS): every class "
        f"needs at least {MIN_LABELS_PER_CLASS}"
    )


def _register(
    settings: Settings,
    engine: Engine,
    label_set_id: int,
    name: str,
    model_version: str,
    trained: TrainedHead,
    training: dict[str, Any],
    trained_by: str | None,
) -> HeadRecord:
    head = register_version(
        settings,
        engine,
        Version(
            label_set_id=label_set_id,
            label_set=name,
            kind="classifier",
            classes=trained.classes,
            base_model_version=model_version,
            artifact=trained.artifact(),
            manifest={
                "embedding_size": int(trained.weights.shape[1]),
                "training": training,
                "metrics": trained.metrics,
                "libraries": library_versions(),
            },
            labels_until=int(training["labels_until"]),
            trained_by=trained_by,
        ),
    )
    log.info(
        "head.trained",
        label_set=name,
        version=head.version,
        head_id=head.id,
        accuracy=round(trained.metrics["accuracy"], 4),
        rows=training["rows"],
        seconds=training["seconds"],
    )
    return head


@dataclass(frozen=True, slots=True)
class Version:
    """A trained version of a set's classifier or detector, as it is registered."""

    label_set_id: int
    label_set: str
    kind: str  # "classifier" | "detector"
    classes: list[str]  # a detector: its good class
    base_model_version: str
    artifact: bytes
    manifest: dict[str, Any]  # what the kind records; the version's identity is added
    labels_until: int  # the newest label it read (or that existed): quality counts those after
    trained_by: str | None


ARTIFACT_NAMES = {"classifier": "head.npz", "detector": "detector.npz"}


def register_version(settings: Settings, engine: Engine, trained: Version) -> HeadRecord:
    """The set's next version of its kind, written to HEADS_DIR and registered as a candidate
    with its "trained" event: one path for classifiers and detectors."""
    now = datetime.now(UTC)
    with Session(engine, expire_on_commit=False) as session, session.begin():
        teaching.lock_label_set(session, trained.label_set_id)  # two trainings take turns
        version = teaching.next_version(session, trained.label_set_id, trained.kind)
        manifest = {
            "label_set": trained.label_set,
            "kind": trained.kind,
            "version": version,
            "classes": trained.classes,
            "base_model_version": trained.base_model_version,
            **trained.manifest,
            "trained_at": now.isoformat(timespec="seconds"),
        }
        digest = hashlib.sha256(trained.artifact).hexdigest()
        folder = f"v{version}" if trained.kind == "classifier" else f"{trained.kind}-v{version}"
        write_head(
            settings.heads_dir / trained.label_set / folder,
            trained.artifact,
            manifest,
            ARTIFACT_NAMES[trained.kind],
        )
        head = HeadRecord(
            label_set_id=trained.label_set_id,
            kind=trained.kind,
            version=version,
            status="candidate",
            classes=trained.classes,
            base_model_version=trained.base_model_version,
            artifact=trained.artifact,
            artifact_sha256=digest,
            manifest=manifest,
            labels_until=trained.labels_until,
            trained_at=now,
            trained_by=trained.trained_by,
        )
        teaching.add(session, head)
        teaching.add(
            session,
            HeadEventRecord(
                head_id=head.id,
                label_set_id=trained.label_set_id,
                action="trained",
                from_status=None,
                to_status="candidate",
                actor=trained.trained_by,
                created_at=now,
            ),
        )
    return head


def write_head(
    directory: Path, artifact: bytes, manifest: dict[str, Any], artifact_name: str = "head.npz"
) -> None:
    """The artifact (head.npz, detector.npz) and manifest.json into a fresh sibling directory, then renamed into place: a
    reader sees the whole version or none of it."""
    # The parent resolved, not the version itself: a link planted at v<N> is replaced, and
    # what it points to is never removed.
    directory = directory.expanduser().parent.resolve() / directory.name
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        (staging / artifact_name).write_bytes(artifact)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(staging, 0o755)  # noqa: S103
        if directory.is_symlink():
            directory.unlink()
        elif directory.exists():  # a version number reused after a failed registration
            shutil.rmtree(directory)
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

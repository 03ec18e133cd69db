"""Anomaly detectors on the served patch graph: trained on good shots of a real photograph (pose,
light and JPEG jitter, bench/defects.py), asked about new good shots and drawn defects."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from bench.defects import KINDS, Shot, product, shots
from PIL import Image

from tests.support import PHOTOS, VISINSPECT, environment
from visinspect.config import Settings
from visinspect.inference import anomaly
from visinspect.inference.anomaly import DetectorArtifactError, PatchExtractor, TooFewGoodImages
from visinspect.inference.artifact import ArtifactError, read_manifest, read_patches
from visinspect.inference.preprocess import PREPROCESSING, frame_of


@pytest.fixture(scope="module")
def extractor() -> PatchExtractor:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    patches, graph = read_patches(settings.model_dir, read_manifest(settings.model_dir))
    return PatchExtractor(graph, patches, PREPROCESSING[settings.model_arch], threads=1)


@pytest.fixture(scope="module")
def coffee() -> Image.Image:
    return product(PHOTOS / "coffee.png")


def _features(extractor: PatchExtractor, batch: list[Shot]) -> np.ndarray:
    side = extractor.patches.frame
    return extractor.features(
        np.stack([frame_of(s.jpeg, side, 10**8, extractor.spec).pixels for s in batch])
    )


@pytest.fixture(scope="module")
def detector(extractor: PatchExtractor, coffee: Image.Image) -> anomaly.Detector:
    good = list(shots(coffee, "good", 12, seed=1))
    return anomaly.train(_features(extractor, good), extractor.patches.frame, bank_size=512)


def test_the_patch_graph_sees_the_whole_frame_and_was_checked_against_pytorch() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    patches = read_manifest(settings.model_dir).patches
    assert patches is not None
    assert patches.frame == settings.anomaly_frame_px
    assert patches.grid == patches.frame // 8  # stride 8: an 8 x 8-pixel patch
    assert patches.channels == 40 + 112
    assert patches.max_abs_difference < 1e-3


def test_a_changed_patch_graph_is_refused(tmp_path: Path) -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    manifest = read_manifest(settings.model_dir)
    assert manifest.patches is not None
    (tmp_path / manifest.patches.file).write_bytes(b"not the graph")
    with pytest.raises(ArtifactError, match="the graph was changed"):
        read_patches(tmp_path, manifest)
    with pytest.raises(ArtifactError, match="before detectors existed"):
        read_patches(tmp_path, manifest.model_copy(update={"patches": None}))


def test_defects_score_above_new_good_shots_and_the_region_finds_them(
    extractor: PatchExtractor, coffee: Image.Image, detector: anomaly.Detector
) -> None:
    good = [
        detector.answer(f, 320, 213)
        for f in _features(extractor, list(shots(coffee, "good", 8, seed=2)))
    ]
    assert [a.verdict for a in good].count("anomalous") <= 1
    assert all(a.region is None for a in good if a.verdict == "ok")
    worst_good = max(a.score for a in good)
    for k, kind in enumerate(KINDS):
        bad = list(shots(coffee, kind, 8, seed=10 + k))
        answers = [
            detector.answer(f, *s.mask.shape[::-1])
            for f, s in zip(  # type: ignore[union-attr]
                _features(extractor, bad), bad, strict=True
            )
        ]
        above = sum(a.score > worst_good for a in answers)
        assert above >= 6, f"{kind}: {above}/8 defective shots above every good one"
        for answer, shot in zip(answers, bad, strict=True):
            if answer.verdict == "anomalous":
                assert answer.region is not None
                assert shot.mask is not None
                x0, y0, x1, y1 = answer.region
                assert shot.mask[y0:y1, x0:x1].any(), f"{kind}: region {answer.region} misses it"


def test_the_bank_does_not_grow_with_the_images_and_keeps_rare_patches() -> None:
    rng = np.random.default_rng(0)
    common = rng.normal(0, 0.1, (5000, 8)).astype(np.float32)
    rare = np.full((1, 8), 5.0, np.float32)  # one patch unlike all others: greedy keeps it
    bank = anomaly.coreset(np.concatenate([common, rare]), 64, rng)
    assert bank.shape == (64, 8)
    assert (np.abs(bank - 5.0) < 1e-6).all(axis=1).any()


def test_a_detector_needs_a_few_good_images(extractor: PatchExtractor) -> None:
    features = np.zeros((3, extractor.patches.grid, extractor.patches.grid, 152), np.float32)
    with pytest.raises(TooFewGoodImages, match="at least 4"):
        anomaly.train(features, extractor.patches.frame)


def test_the_artifact_round_trips_and_refuses_what_is_not_it(
    extractor: PatchExtractor, detector: anomaly.Detector
) -> None:
    data = anomaly.pack(detector)
    digest = hashlib.sha256(data).hexdigest()
    loaded = anomaly.unpack(data, digest, extractor.patches)
    assert np.array_equal(loaded.bank, detector.bank)
    assert loaded.threshold == detector.threshold
    with pytest.raises(DetectorArtifactError, match="sha256"):
        anomaly.unpack(data, "0" * 64, extractor.patches)
    with pytest.raises(DetectorArtifactError, match="cannot be read"):
        anomaly.unpack(b"junk", hashlib.sha256(b"junk").hexdigest(), extractor.patches)
    pickled = io.BytesIO()  # an object array would need pickle to load: refused
    np.savez(pickled, method=np.array([object()], dtype=object))
    with pytest.raises(DetectorArtifactError, match="cannot be read"):
        anomaly.unpack(
            pickled.getvalue(), hashlib.sha256(pickled.getvalue()).hexdigest(), extractor.patches
        )
    other = extractor.patches.model_copy(update={"frame": 288, "grid": 36})
    with pytest.raises(DetectorArtifactError, match="train it again"):
        anomaly.unpack(data, digest, other)


def test_the_heat_map_is_a_png_of_the_asked_size(detector: anomaly.Detector) -> None:
    heat = np.zeros((detector.grid, detector.grid), np.float32)
    heat[3, 4] = 2.0
    with Image.open(io.BytesIO(anomaly.heat_png(heat, 224, 224))) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGBA", (224, 224))
        alpha = np.asarray(image)[..., 3]
    assert alpha[3 * 8 + 4, 4 * 8 + 4] > 150
    assert alpha[200, 200] == 0


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = environment(COLUMNS="300")
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)


def test_the_cli_trains_from_a_folder_and_scores_with_maps(
    tmp_path: Path, coffee: Image.Image
) -> None:
    good, bad = tmp_path / "good", tmp_path / "new"
    good.mkdir()
    bad.mkdir()
    for i, shot in enumerate(shots(coffee, "good", 8, seed=3)):
        (good / f"{i}.jpg").write_bytes(shot.jpeg)
    (good / "broken.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    (bad / "missing.jpg").write_bytes(next(shots(coffee, "missing", 1, seed=4)).jpeg)
    out = tmp_path / "detectors" / "coffee"
    trained = run([VISINSPECT, "detector", "train", str(good), "--out", str(out), "--no-progress"])
    assert trained.returncode == 0, trained.stderr
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["good_images"] == 8
    assert list(manifest["refused"]) == [str(good / "broken.jpg")]
    assert manifest["sha256"] == hashlib.sha256(out.with_suffix(".npz").read_bytes()).hexdigest()
    scored = run(
        [
            VISINSPECT,
            "detector",
            "score",
            str(bad),
            "--detector",
            str(out),
            "--maps",
            str(tmp_path / "maps"),
        ]
    )
    assert scored.returncode == 0, scored.stderr
    assert "anomalous" in scored.stdout
    assert (tmp_path / "maps" / "missing.anomaly.png").stat().st_size > 0
    out.with_suffix(".npz").write_bytes(b"tampered")
    refused = run([VISINSPECT, "detector", "score", str(bad), "--detector", str(out)])
    assert refused.returncode == 1
    assert "sha256" in refused.stderr


def test_a_detector_answers_only_on_the_graph_it_was_trained_on(
    extractor: PatchExtractor, coffee: Image.Image
) -> None:
    features = _features(extractor, list(shots(coffee, "good", 6, seed=5)))
    trained = anomaly.train(features, extractor.patches.frame, extractor.patches.sha256, 256)
    data = anomaly.pack(trained)
    digest = hashlib.sha256(data).hexdigest()
    assert anomaly.unpack(data, digest, extractor.patches).graph_sha256 == trained.graph_sha256
    int8 = extractor.patches.model_copy(update={"sha256": "f" * 64, "precision": "int8"})
    with pytest.raises(DetectorArtifactError, match="another patch graph"):
        anomaly.unpack(data, digest, int8)


def test_a_kept_heat_map_round_trips_in_a_byte_a_patch() -> None:
    heat = np.zeros((28, 28), np.float32)
    heat[5, 6], heat[0, 0] = 1.234, 9.0  # 9.0: past what a byte keeps, kept as 2.55
    served = anomaly.LoadedDetector(1, "line", 1, 1, "ok", False, None)  # type: ignore[arg-type]
    kept = anomaly.DetectorAnswer(served, anomaly.AnomalyAnswer(9.0, "anomalous", None, heat))
    back = anomaly.heat_from_bytes(kept.heat_bytes())
    assert back.shape == (28, 28)
    assert back[5, 6] == pytest.approx(1.23)
    assert back[0, 0] == pytest.approx(2.55)
    with pytest.raises(ValueError, match="not a square"):
        anomaly.heat_from_bytes(b"\x00" * 10)


def test_the_cli_registers_a_detector_in_a_label_set(tmp_path: Path, coffee: Image.Image) -> None:
    """`visinspect detector train DIR --label-set NAME`: the set's next detector version, a
    candidate with its "trained" event, its artifact in HEADS_DIR; a set without the good class
    is refused as the server would refuse it."""
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from visinspect.db.tables import HeadEventRecord, HeadRecord, LabelSetRecord

    url = f"sqlite:///{tmp_path / 'line.db'}"
    env = {"DATABASE_URL": url, "HEADS_DIR": str(tmp_path / "heads")}
    good = tmp_path / "good"
    good.mkdir()
    for i, shot in enumerate(shots(coffee, "good", 6, seed=6)):
        (good / f"{i}.jpg").write_bytes(shot.jpeg)
    migrated = subprocess.run(
        [VISINSPECT, "db", "upgrade"], capture_output=True, text=True, env=environment(**env)
    )
    assert migrated.returncode == 0, migrated.stderr
    engine = create_engine(url)
    with Session(engine) as session:
        session.add(
            LabelSetRecord(name="line", classes=["ok", "defect"], created_at=datetime.now(UTC))
        )
        session.commit()
    command = [VISINSPECT, "detector", "train", str(good), "--label-set", "line", "--json"]
    trained = subprocess.run(
        [*command, "--by", "carol"], capture_output=True, text=True, env=environment(**env)
    )
    assert trained.returncode == 0, trained.stderr
    answer = json.loads(trained.stdout.strip().splitlines()[-1])
    assert answer["version"] == 1
    with Session(engine) as session:
        head = session.get(HeadRecord, answer["head_id"])
        assert head is not None
        assert (head.kind, head.status, head.classes, head.trained_by) == (
            "detector",
            "candidate",
            ["ok"],
            "carol",
        )
        assert head.manifest["training"]["good_images"] == 6
        events = session.scalars(select(HeadEventRecord.action)).all()
        assert events == ["trained"]
    assert (tmp_path / "heads" / "line" / "detector-v1" / "detector.npz").read_bytes() == (
        head.artifact
    )
    refused = subprocess.run(
        [*command, "--good", "fine"], capture_output=True, text=True, env=environment(**env)
    )
    assert refused.returncode == 1
    assert json.loads(refused.stdout.strip().splitlines()[-1])["error"]["code"] == (
        "invalid_label_set"
    )
    engine.dispose()

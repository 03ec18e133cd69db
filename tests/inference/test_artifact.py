"""The model artifact: what `visinspect model build` writes, every reason the service refuses one,
the int8 graph behind its agreement bar, and a serving path without torch."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest

from tests.support import PHOTOS, make_settings, running_app
from visinspect.config import Precision, Settings
from visinspect.inference.artifact import (
    PreprocessingContract,
    labels_sha256,
    read_manifest,
)
from visinspect.inference.classifier import ModelLoadError, load_classifier, load_labels
from visinspect.inference.preprocess import preprocess
from visinspect.inference.weights import LITE0_WEIGHTS_SHA256, weights_path
from visinspect.offline import build as build_module
from visinspect.offline.build import BuildFailed, build_artifact
from visinspect.offline.photos import find_photos


def settings(model_dir: Path, **values: Any) -> Settings:
    return Settings(_env_file=None, model_dir=model_dir, **values)  # type: ignore[call-arg]


@pytest.fixture
def artifact(model_artifact: Path, tmp_path: Path) -> Path:
    """A private copy of the session's artifact, to break."""
    copy = tmp_path / "model"
    shutil.copytree(model_artifact, copy)
    return copy


def _edit_manifest(directory: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_manifest_pins_weights_graph_labels_preprocessing_and_runtime(
    model_artifact: Path,
) -> None:
    manifest = read_manifest(model_artifact)
    assert manifest.model_name == "efficientnet_lite0"
    assert manifest.weights_sha256 == LITE0_WEIGHTS_SHA256
    assert manifest.labels_sha256 == labels_sha256(load_labels())
    assert manifest.onnx_opset == 17
    assert manifest.onnxruntime_version == onnxruntime.__version__
    assert manifest.preprocessing == PreprocessingContract(
        resize=256, crop=224, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3
    )
    # The graphs' second output: the pooled features, as PyTorch computes them.
    assert (manifest.embedding.output, manifest.embedding.size) == ("embedding", 1280)
    assert manifest.embedding.max_abs_difference < 1e-3
    graph = manifest.graphs[Precision.FP32]
    data = (model_artifact / graph.file).read_bytes()
    assert graph.sha256 == hashlib.sha256(data).hexdigest()
    assert graph.bytes == len(data)
    agreement = graph.agreement
    assert agreement.meets_bar
    assert agreement.photos >= 10
    assert agreement.top1_agree == agreement.photos
    assert agreement.max_abs_confidence_diff <= 1e-3


def _other_weights(m: dict[str, Any]) -> None:
    m["weights_sha256"] = "0" * 64


def _other_labels(m: dict[str, Any]) -> None:
    m["labels_sha256"] = hashlib.sha256(b"other classes").hexdigest()


def _other_network(m: dict[str, Any]) -> None:
    m["model_name"] = "efficientnet_b0"


def _other_preprocessing(m: dict[str, Any]) -> None:
    m["preprocessing"]["interpolation"] = "bilinear"


def _other_runtime(m: dict[str, Any]) -> None:
    m["onnxruntime_version"] = "1.0.0"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_other_weights, "built from weights"),
        (_other_labels, "another class-name list"),
        (_other_network, "MODEL_ARCH is efficientnet_lite0"),
        (_other_preprocessing, "preprocessing"),
        (_other_runtime, "ONNX Runtime 1.0.0"),
    ],
)
def test_a_manifest_that_does_not_match_is_refused(
    artifact: Path, change: Callable[[dict[str, Any]], None], reason: str
) -> None:
    _edit_manifest(artifact, change)
    with pytest.raises(ModelLoadError, match=reason) as refused:
        load_classifier(settings(artifact))
    assert "visinspect model build" in refused.value.action


def test_weights_other_than_the_artifacts_are_refused(artifact: Path, tmp_path: Path) -> None:
    """The settings name other weights (by their hash) than the artifact was built from."""
    other = tmp_path / "efficientnet_lite0_finetuned-0123abcd.pth"
    with pytest.raises(ModelLoadError, match="configured weights are 0123abcd"):
        load_classifier(settings(artifact, model_weights=other))


def test_a_changed_graph_is_refused(artifact: Path) -> None:
    graph = artifact / "model.fp32.onnx"
    data = bytearray(graph.read_bytes())
    data[-100] ^= 0x01
    graph.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="the graph was changed"):
        load_classifier(settings(artifact))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: (d / "manifest.json").unlink(), "no model artifact"),
        (lambda d: (d / "manifest.json").write_text("{not json"), "not a valid manifest"),
        (lambda d: _edit_manifest(d, lambda m: m.pop("graphs")), "graphs: Field required"),
        (lambda d: _edit_manifest(d, lambda m: m.update(format=99)), "format 99"),
    ],
)
def test_a_missing_or_broken_manifest_is_refused(
    artifact: Path, damage: Callable[[Path], None], reason: str
) -> None:
    damage(artifact)
    with pytest.raises(ModelLoadError, match=reason):
        load_classifier(settings(artifact))


def test_a_precision_that_was_not_built_is_refused(model_artifact: Path) -> None:
    with pytest.raises(ModelLoadError, match="no int8 graph") as refused:
        load_classifier(settings(model_artifact, model_precision="int8"))
    assert "--precision int8" in refused.value.action


def test_build_refuses_tampered_weights(tmp_path: Path) -> None:
    tampered = tmp_path / "efficientnet-lite0-57934424.pth"
    shutil.copyfile(weights_path(settings(tmp_path)), tampered)
    with tampered.open("ab") as fh:
        fh.write(b"\x00")
    with pytest.raises(ModelLoadError, match="refusing to load"):
        build_artifact(
            settings(tmp_path / "model", model_weights=tampered),
            {Precision.FP32},
            find_photos([PHOTOS], installed=False),
        )
    assert not (tmp_path / "model").exists()


def test_build_fails_when_the_fp32_graph_disagrees_with_pytorch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exporter that changed one class's bias: the build measures it and writes nothing."""
    import onnx
    from onnx import numpy_helper

    export = build_module.export_onnx

    def shifted_export(network: Any, crop: int) -> bytes:
        graph = onnx.load_from_string(export(network, crop))
        bias = next(i for i in graph.graph.initializer if tuple(i.dims) == (1000,))
        moved = numpy_helper.to_array(bias).copy()
        moved[0] += 10.0
        bias.CopyFrom(numpy_helper.from_array(moved, bias.name))
        return graph.SerializeToString()

    monkeypatch.setattr(build_module, "export_onnx", shifted_export)
    with pytest.raises(BuildFailed, match="fp32 graph agrees with PyTorch fp32"):
        build_artifact(
            settings(tmp_path / "model"), {Precision.FP32}, find_photos([PHOTOS], installed=False)
        )
    assert not (tmp_path / "model").exists()


def test_photo_sets_are_disjoint_and_keep_variants_together() -> None:
    photos = find_photos()
    assert photos.calibration
    assert photos.evaluation
    assert not set(photos.calibration) & set(photos.evaluation)
    subjects = {build_module_subject(p) for p in photos.calibration}
    assert not subjects & {build_module_subject(p) for p in photos.evaluation}


def build_module_subject(path: Path) -> str:
    from visinspect.offline.photos import _subject

    return _subject(path)


# The int8 graph: `int8_artifact` (tests/inference/conftest.py).


def test_int8_build_records_recipe_agreement_and_the_choice(int8_artifact: Path) -> None:
    manifest = read_manifest(int8_artifact)
    assert set(manifest.graphs) == {Precision.FP32, Precision.INT8}
    int8 = manifest.graphs[Precision.INT8]
    assert int8.quantization is not None
    assert int8.quantization["format"] == "QDQ"
    # Smaller, though the classifier (5 MB of weights) and the last conv stay in fp32.
    assert int8.bytes < manifest.graphs[Precision.FP32].bytes * 0.6
    assert not int8.agreement.meets_bar  # 12 photographs measure nothing
    assert int8.agreement.photos == 12
    # MODEL_PRECISION=auto: only graphs that meet their bar are timed and may be served.
    selection = manifest.selection
    assert selection.precision is Precision.FP32
    assert selection.measured_at == "build"
    assert selection.reason == "int8 misses its agreement bar"
    timed = {c.precision: c for c in selection.candidates}
    assert timed[Precision.FP32].ms_per_image_batch8 is not None
    assert timed[Precision.FP32].ms_per_image_batch8 > 0
    assert not timed[Precision.INT8].meets_bar
    assert timed[Precision.INT8].ms_per_image_batch8 is None


def test_int8_below_its_bar_needs_the_explicit_override(int8_artifact: Path) -> None:
    with pytest.raises(ModelLoadError, match="below its bar") as refused:
        load_classifier(settings(int8_artifact, model_precision="int8"))
    assert "MODEL_ACCEPT_LOW_AGREEMENT" in refused.value.action
    # The refusal carries the numbers: overall and by fp32's own confidence.
    manifest = read_manifest(int8_artifact)
    agreement = manifest.graphs[Precision.INT8].agreement
    assert f"on {agreement.top1_agree}/12 photos" in str(refused.value)
    assert "at fp32 confidence >= 0.5" in str(refused.value)
    # auto never serves it, and says why.
    assert load_classifier(settings(int8_artifact)).identity.precision == "fp32"

    classifier = load_classifier(
        settings(int8_artifact, model_precision="int8", model_accept_low_agreement=True)
    )
    assert classifier.identity.precision == "int8"
    decoded = preprocess((PHOTOS / "coffee.png").read_bytes(), classifier.preprocessing, 10**8)
    (top,) = classifier.predict(decoded.pixels[None], [1])[0]
    assert top.class_name == "espresso"
    assert np.isfinite(top.confidence)


def test_int8_answers_say_so_in_response_record_and_health(
    int8_artifact: Path, tmp_path: Path
) -> None:
    app_settings = make_settings(
        f"sqlite:///{tmp_path / 'int8.db'}",
        model_dir=int8_artifact,
        model_precision="int8",
        model_accept_low_agreement=True,
    )
    with running_app(app_settings) as client:
        photo = (PHOTOS / "coffee.png").read_bytes()
        answer = client.post("/predict", files={"file": ("coffee.png", photo)})
        assert answer.status_code == 200, answer.text
        assert answer.json()["precision"] == "int8"
        stored = client.get(f"/predictions/{answer.json()['id']}").json()
        assert stored["precision"] == "int8"
        assert client.get("/health").json()["precision"] == "int8"


def test_serving_path_imports_no_torch(model_artifact: Path) -> None:
    """Loading the model and the app as `visinspect serve` does leaves torch out of sys.modules."""
    code = (
        "import sys\n"
        "from visinspect.config import Settings\n"
        "from visinspect.inference.classifier import load_classifier\n"
        "import visinspect.main, visinspect.startup, visinspect.cli.serve\n"
        f"load_classifier(Settings(_env_file=None, model_dir={str(model_artifact)!r}))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'onnx'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout

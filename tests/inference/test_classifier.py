"""The real pretrained network on real photographs, and the weights-loading rules."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from tests.support import PHOTOS
from visinspect.config import Architecture, Settings
from visinspect.inference.classifier import Classifier, ModelLoadError, load_classifier, load_labels
from visinspect.inference.preprocess import PREPROCESSING, preprocess
from visinspect.inference.weights import LITE0_WEIGHTS_SHA256, weights_path
from visinspect.offline.architectures import EfficientNetB0
from visinspect.offline.reference import TorchBackend

# Top-1 of the shipped Lite0 weights under their reference transform (shared/notes/model-weights.md).
EXPECTED_TOP1 = {
    "coffee.png": {"espresso"},
    "camera.png": {"tripod"},
    "chelsea.png": {"tiger cat", "Egyptian cat", "tabby"},
    "rocket.jpg": {"missile", "projectile"},
    "motorcycle_left.png": {"moped"},
}


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def reference(**values: object) -> Settings:
    """The PyTorch backend: the path that reads the weights file (as `visinspect model build`)."""
    return settings(inference_backend="pytorch", **values)


def classify(classifier: Classifier, name: str, top_k: int = 3) -> list[tuple[str, float]]:
    decoded = preprocess((PHOTOS / name).read_bytes(), classifier.preprocessing, 10**8)
    predictions = classifier.predict(decoded.pixels[None], [top_k])[0]
    return [(p.class_name, p.confidence) for p in predictions]


def test_labels_are_human_readable_imagenet_names() -> None:
    labels = load_labels()
    assert len(labels) == 1000
    assert labels[817] == "sports car"
    assert labels[967] == "espresso"
    assert labels[0] == "tench"
    assert not any(label.startswith("n0") for label in labels)


@pytest.mark.parametrize("photo", sorted(EXPECTED_TOP1))
def test_real_photos_get_their_known_class(classifier: Classifier, photo: str) -> None:
    top = classify(classifier, photo)
    assert top[0][0] in EXPECTED_TOP1[photo], top
    confidences = [c for _, c in top]
    assert confidences == sorted(confidences, reverse=True)


def test_confident_photos_are_confident(classifier: Classifier) -> None:
    assert classify(classifier, "coffee.png")[0][1] > 0.9
    assert classify(classifier, "camera.png")[0][1] > 0.9


def test_softmax_is_over_all_1000_classes(classifier: Classifier) -> None:
    everything = classify(classifier, "coffee.png", top_k=1000)
    assert len(everything) == 1000
    assert sum(c for _, c in everything) == pytest.approx(1.0, abs=1e-4)
    assert len({name for name, _ in everything}) >= 998  # 'crane' and 'maillot' appear twice


def test_model_is_in_eval_mode_and_deterministic(
    classifier: Classifier, torch_classifier: Classifier
) -> None:
    assert isinstance(torch_classifier.backend, TorchBackend)
    assert not torch_classifier.backend.network.training
    assert classify(classifier, "chelsea.png") == classify(classifier, "chelsea.png")


def test_default_backend_is_onnxruntime(classifier: Classifier) -> None:
    assert classifier.backend_name == "onnxruntime"


def test_a_batch_gives_each_image_its_own_answer(classifier: Classifier) -> None:
    names = ["coffee.png", "camera.png", "chelsea.png"]
    batch = np.stack(
        [
            preprocess((PHOTOS / n).read_bytes(), classifier.preprocessing, 10**8).pixels
            for n in names
        ]
    )
    results = classifier.predict(batch, [1, 2, 3])
    assert [len(r) for r in results] == [1, 2, 3]
    assert [r[0].class_name for r in results[:2]] == ["espresso", "tripod"]
    for name, result in zip(names, results, strict=True):
        alone = classify(classifier, name, top_k=len(result))
        assert [p.class_name for p in result] == [n for n, _ in alone]
        assert [p.confidence for p in result] == pytest.approx([c for _, c in alone], abs=1e-5)


def test_default_model_tells_the_truth_about_itself(classifier: Classifier) -> None:
    assert classifier.model_name == "efficientnet_lite0"
    assert classifier.model_version == f"sha256:{LITE0_WEIGHTS_SHA256[:16]}"
    assert classifier.weights_sha256 == LITE0_WEIGHTS_SHA256
    assert classifier.identity.precision == "fp32"


def test_weights_with_wrong_checksum_are_refused(tmp_path: Path) -> None:
    default_path = weights_path(settings())
    tampered = tmp_path / "efficientnet-lite0-57934424.pth"
    shutil.copyfile(default_path, tampered)
    with tampered.open("r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(ModelLoadError, match="refusing to load"):
        load_classifier(reference(model_weights=tampered))


def test_missing_weights_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_classifier(
            reference(model_weights=tmp_path / "nope.pth", model_weights_sha256="0" * 64)
        )


def test_weights_without_any_expected_hash_are_refused(tmp_path: Path) -> None:
    unnamed = tmp_path / "weights.pth"
    unnamed.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="carries no hash") as refused:
        load_classifier(reference(model_weights=unnamed))
    assert "MODEL_WEIGHTS_SHA256" in refused.value.action


def test_b0_requires_a_weights_file() -> None:
    with pytest.raises(ValidationError, match="MODEL_WEIGHTS"):
        settings(model_arch="efficientnet_b0")


def test_b0_module_has_torchvisions_parameter_count() -> None:
    # torchvision documents efficientnet_b0 IMAGENET1K_V1 as num_params=5288548 with 360 state keys.
    network = EfficientNetB0()
    assert sum(p.numel() for p in network.parameters()) == 5_288_548
    keys = list(network.state_dict())
    assert len(keys) == 360
    assert keys[0] == "features.0.0.weight"
    assert "features.1.0.block.1.fc1.weight" in keys  # squeeze-excitation of the first block
    assert keys[-2:] == ["classifier.1.weight", "classifier.1.bias"]


def test_torchvision_format_b0_file_loads_through_the_setting(tmp_path: Path) -> None:
    """The loading path for a user's genuine torchvision file, exercised with a file of the same
    format. No registry ships genuine B0 weights, so these are untrained: this proves naming,
    checksum and strict loading, not accuracy."""
    torch.manual_seed(0)
    state = EfficientNetB0().state_dict()
    raw = tmp_path / "b0.pth"
    torch.save(state, raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    named = tmp_path / f"efficientnet_b0_rwightman-{digest[:8]}.pth"
    raw.rename(named)

    loaded = load_classifier(
        settings(model_arch="efficientnet_b0", model_weights=named, inference_backend="pytorch")
    )

    assert loaded.model_name == "efficientnet_b0"
    assert loaded.model_version == f"sha256:{digest[:16]}"
    assert loaded.preprocessing == PREPROCESSING[Architecture.EFFICIENTNET_B0]
    assert loaded.preprocessing.mean == (0.485, 0.456, 0.406)
    assert isinstance(loaded.backend, TorchBackend)
    for name, tensor in loaded.backend.network.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_lite0_weights_do_not_pass_as_b0() -> None:
    default_path = weights_path(settings())
    with pytest.raises(ModelLoadError, match="do not fit efficientnet_b0"):
        load_classifier(
            reference(
                model_arch="efficientnet_b0",
                model_weights=default_path,
                model_weights_sha256=LITE0_WEIGHTS_SHA256,
            )
        )


def test_one_pass_gives_the_top_k_and_the_embedding(
    classifier: Classifier, torch_classifier: Classifier
) -> None:
    """The served graph's second output is PyTorch's pooled features (what the classifier layer
    reads), from the same forward pass as the top-k."""
    decoded = preprocess((PHOTOS / "coffee.png").read_bytes(), classifier.preprocessing, 10**8)
    (served,) = classifier.classify(decoded.pixels[None], [3])
    (reference,) = torch_classifier.classify(decoded.pixels[None], [3])
    assert served.predictions == classifier.predict(decoded.pixels[None], [3])[0]
    assert served.embedding is not None
    assert reference.embedding is not None
    assert served.embedding.shape == (1280,)
    assert np.max(np.abs(served.embedding - reference.embedding)) < 1e-3
    assert served.embedding.min() >= 0  # after ReLU6 and average pooling

"""Every backend offered gives PyTorch's answers on real photographs: the same top-1 and every one
of the 1000 confidences within 1e-3 (the product's promise; `backends.EQUIVALENCE_TOLERANCE`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.support import PHOTOS
from visinspect.config import Backend, Settings
from visinspect.inference.backends import EQUIVALENCE_TOLERANCE, softmax
from visinspect.inference.model import Classifier, load_classifier
from visinspect.inference.preprocess import preprocess

PHOTO_NAMES = [
    "coffee.png",
    "camera.png",
    "chelsea.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "astronaut.png",
    "horse.png",
]


def _batch(classifier: Classifier) -> np.ndarray:
    return np.stack(
        [
            preprocess((PHOTOS / n).read_bytes(), classifier.preprocessing, 10**8).pixels
            for n in PHOTO_NAMES
        ]
    )


@pytest.mark.parametrize("backend", [b.value for b in Backend if b is not Backend.PYTORCH])
def test_backend_matches_the_pytorch_reference(
    backend: str, torch_classifier: Classifier, tmp_path: Path
) -> None:
    candidate = load_classifier(
        Settings(_env_file=None, inference_backend=backend, model_cache_dir=tmp_path)  # type: ignore[call-arg]
    )
    assert candidate.backend_name == backend
    batch = _batch(torch_classifier)

    reference = softmax(torch_classifier.backend.logits(batch))
    candidate_probabilities = softmax(candidate.backend.logits(batch))

    assert (candidate_probabilities.argmax(1) == reference.argmax(1)).all()
    assert np.abs(candidate_probabilities - reference).max() <= EQUIVALENCE_TOLERANCE
    # One image at a time (batch 1) gives the same as in a batch.
    single = softmax(candidate.backend.logits(batch[:1]))
    assert np.abs(single - candidate_probabilities[:1]).max() < 1e-5


def test_onnx_export_is_cached_and_verified(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, model_cache_dir=tmp_path)  # type: ignore[call-arg]
    load_classifier(settings)
    (cached,) = tmp_path.glob("*.onnx")
    assert cached.name.startswith("efficientnet_lite0-579344248a93e230-opset17-torch")
    assert (tmp_path / (cached.name + ".sha256")).read_text().strip()

    # A corrupted cache file is noticed by its checksum and replaced by a fresh export.
    cached.write_bytes(b"not an onnx model")
    classifier = load_classifier(settings)
    assert cached.read_bytes() != b"not an onnx model"
    assert classifier.backend_name == "onnxruntime"


def test_unwritable_cache_still_serves() -> None:
    """A read-only file system costs an export at each start, not the start. Nothing can create
    a folder under /proc, not even root (which ignores permission bits)."""
    unwritable = Path("/proc/visinspect-model-cache")
    classifier = load_classifier(
        Settings(_env_file=None, model_cache_dir=unwritable)  # type: ignore[call-arg]
    )
    assert classifier.backend_name == "onnxruntime"
    assert not unwritable.exists()

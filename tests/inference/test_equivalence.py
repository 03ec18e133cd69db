"""The served fp32 graph gives PyTorch's answers on real photographs: the same top-1 and every one
of the 1000 confidences within 1e-3 (the product's promise; `backends.EQUIVALENCE_TOLERANCE`)."""

from __future__ import annotations

import numpy as np

from tests.support import PHOTOS
from visinspect.inference.backends import EQUIVALENCE_TOLERANCE, softmax
from visinspect.inference.classifier import Classifier
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


def test_served_graph_matches_the_pytorch_reference(
    classifier: Classifier, torch_classifier: Classifier
) -> None:
    """The artifact's fp32 graph, as the service loads it, against eager PyTorch."""
    assert classifier.backend_name == "onnxruntime"
    batch = _batch(torch_classifier)

    reference = softmax(torch_classifier.backend.logits(batch))
    candidate = softmax(classifier.backend.logits(batch))

    assert (candidate.argmax(1) == reference.argmax(1)).all()
    assert np.abs(candidate - reference).max() <= EQUIVALENCE_TOLERANCE
    # One image at a time (batch 1) gives the same as in a batch.
    single = softmax(classifier.backend.logits(batch[:1]))
    assert np.abs(single - candidate[:1]).max() < 1e-5

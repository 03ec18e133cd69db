"""A head serves what it was trained to answer: the served path (artifact, features, softmax,
thresholds) against scikit-learn's own fit on the same real embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from visinspect.inference.classifier import Classifier
from visinspect.inference.heads import LoadedHead, head_features
from visinspect.inference.preprocess import preprocess
from visinspect.offline.heads import REGULARISATION_C, TOLERANCE, train
from visinspect.offline.photos import crops

SUBJECTS = {"cup": "coffee.png", "cat": "chelsea.png", "bike": "motorcycle_left.png"}


@pytest.fixture(scope="module")
def embedded(classifier: Classifier, photos: Path) -> tuple[np.ndarray, list[str]]:
    """Five real images of each subject (the photo and four crops), embedded by the service."""
    rows, labels = [], []
    for label, name in SUBJECTS.items():
        for data in crops(photos / name):
            pixels = preprocess(data, classifier.preprocessing, 50_000_000).pixels
            (result,) = classifier.classify(pixels[None], [1])
            assert result.embedding is not None
            rows.append(result.embedding)
            labels.append(label)
    return np.stack(rows), labels


def _served(rows: np.ndarray, labels: list[str], classes: list[str]) -> LoadedHead:
    return train(rows, labels, classes).served("parts")


def test_served_answers_are_the_fitted_regressions(embedded: tuple[np.ndarray, list[str]]) -> None:
    rows, labels = embedded
    classes = sorted(SUBJECTS)
    served = _served(rows, labels, classes)
    fitted = LogisticRegression(C=REGULARISATION_C, tol=TOLERANCE, max_iter=2000)
    fitted.fit(head_features(rows), [classes.index(label) for label in labels])
    expected = fitted.predict_proba(head_features(rows))
    for row, probabilities in zip(rows, expected, strict=True):
        answer = served.answer(row)
        assert answer.class_name == classes[int(probabilities.argmax())]
        assert answer.confidence == pytest.approx(float(probabilities.max()), abs=1e-4)


def test_a_two_class_head_serves_the_sigmoid(embedded: tuple[np.ndarray, list[str]]) -> None:
    """scikit-learn keeps one logit for two classes; the artifact holds two that softmax alike."""
    rows, labels = embedded
    pair = [i for i, label in enumerate(labels) if label in ("cat", "cup")]
    rows, labels = rows[pair], [labels[i] for i in pair]
    served = _served(rows, labels, ["cat", "cup"])
    fitted = LogisticRegression(C=REGULARISATION_C, tol=TOLERANCE, max_iter=2000)
    fitted.fit(head_features(rows), [int(label == "cup") for label in labels])
    for row, probabilities in zip(rows, fitted.predict_proba(head_features(rows)), strict=True):
        answer = served.answer(row)
        assert answer.class_name == ("cup" if probabilities[1] > 0.5 else "cat")
        assert answer.confidence == pytest.approx(float(probabilities.max()), abs=1e-4)

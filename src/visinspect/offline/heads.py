"""Training a head: scikit-learn's logistic regression on kept embeddings, cross-validated.

A head is a linear layer on the base model's embedding, after its signed square root and L2
normalisation (`inference/heads.head_features`, the same function at training and at serving). The figures come from stratified k-fold cross-validation (out-of-fold
probabilities): accuracy, macro-F1, precision and recall per class, the confusion matrix, and
per class the lowest confidence threshold at which the out-of-fold answers of that class reach
the target precision: below it, an answer is "needs a person".
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from visinspect.inference.heads import (
    FEATURES,
    LoadedHead,
    check_counts,
    head_features,
    pack,
    unpack,
)

FOLDS = 5
DEFAULT_TARGET_PRECISION = 0.99
# Inverse regularisation strength, and the L-BFGS tolerance: with 1e-3 instead of the default
# 1e-4, 10,000 rows take a third of the iterations (bench/teach.py times training).
REGULARISATION_C = 10.0
TOLERANCE = 1e-3


@dataclass(frozen=True, slots=True)
class TrainedHead:
    classes: list[str]
    weights: np.ndarray  # C x D
    bias: np.ndarray  # C
    thresholds: np.ndarray  # C
    metrics: dict[str, Any]
    seconds: float

    def artifact(self) -> bytes:
        return pack(self.weights, self.bias, self.thresholds)

    def served(self, label_set: str) -> LoadedHead:
        """The head as the service would load and run it: through its artifact (`unpack`), so
        that what is measured or tested is the served answer, not a re-implementation."""
        data = self.artifact()
        weights, bias, thresholds = unpack(
            data, hashlib.sha256(data).hexdigest(), len(self.classes)
        )
        classes = tuple(self.classes)
        return LoadedHead(0, label_set, 0, 1, classes, False, weights, bias, thresholds)


def train(
    features: np.ndarray,
    labels: list[str],
    classes: list[str],
    target_precision: float = DEFAULT_TARGET_PRECISION,
    seed: int = 0,
) -> TrainedHead:
    """A head for `classes` from N x D `features` and their N class names."""
    started = time.perf_counter()
    counts = {c: labels.count(c) for c in classes}
    check_counts(counts, classes)
    index = {name: i for i, name in enumerate(classes)}
    y = np.array([index[name] for name in labels])
    folds = min(FOLDS, min(counts.values()))
    inputs = head_features(features)
    model = LogisticRegression(C=REGULARISATION_C, tol=TOLERANCE, max_iter=2000)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    out_of_fold = cross_val_predict(model, inputs, y, cv=splitter, method="predict_proba")
    model.fit(inputs, y)
    weights, bias = _linear(model, len(classes))
    thresholds, decided = _thresholds(out_of_fold, y, target_precision)
    metrics = _metrics(out_of_fold, y, classes, folds, target_precision, thresholds, decided)
    return TrainedHead(classes, weights, bias, thresholds, metrics, time.perf_counter() - started)


def _linear(regression: Any, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The regression as a linear layer: logits = W x + b, one row per class."""
    coef, intercept = regression.coef_, regression.intercept_
    if classes == 2:  # one logit for class 1: as two, softmax([-z/2, z/2]) = sigmoid(z)
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    return coef.astype(np.float32), intercept.astype(np.float32)


def _thresholds(
    probabilities: np.ndarray, y: np.ndarray, target: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the lowest confidence at which the out-of-fold answers of that class are at
    least `target` precise (1.0 + a hair, never decided, when no threshold reaches it); and
    which out-of-fold answers it decides."""
    predicted = probabilities.argmax(1)
    confidence = probabilities.max(1)
    thresholds = np.full(probabilities.shape[1], np.nextafter(1.0, 2.0), dtype=np.float64)
    for c in range(probabilities.shape[1]):
        mine = predicted == c
        if not mine.any():
            continue
        order = np.argsort(-confidence[mine], kind="stable")
        right = (y[mine] == c)[order]
        precision = np.cumsum(right) / np.arange(1, len(right) + 1)
        reaching = np.nonzero(precision >= target)[0]
        if len(reaching):
            # The most answers (the lowest threshold) whose precision still reaches the target.
            thresholds[c] = confidence[mine][order][reaching[-1]]
    decided = confidence >= thresholds[predicted]
    return thresholds.astype(np.float32), decided


def _metrics(
    probabilities: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    folds: int,
    target: float,
    thresholds: np.ndarray,
    decided: np.ndarray,
) -> dict[str, Any]:
    predicted = probabilities.argmax(1)
    labels = list(range(len(classes)))
    precision, recall, _, support = precision_recall_fscore_support(
        y, predicted, labels=labels, zero_division=0
    )
    decided_right = (predicted == y)[decided]
    return {
        "features": FEATURES,
        "folds": folds,
        "labels": len(y),
        "accuracy": float(accuracy_score(y, predicted)),
        "macro_f1": float(f1_score(y, predicted, labels=labels, average="macro", zero_division=0)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "labels": int(support[i]),
                "threshold": float(min(thresholds[i], 1.0)),
                "never_decided": bool(thresholds[i] > 1.0),
            }
            for i, name in enumerate(classes)
        },
        "confusion": confusion_matrix(y, predicted, labels=labels).tolist(),
        "target_precision": target,
        "decided_share": float(decided.mean()),
        "decided_precision": float(decided_right.mean()) if len(decided_right) else None,
    }


def training_hash(rows: list[tuple[int, int]]) -> str:
    """sha256 of the training rows' (label id, prediction id) pairs, in order: the same hash is
    the same training data."""
    text = ",".join(f"{label}:{prediction}" for label, prediction in sorted(rows))
    return hashlib.sha256(text.encode()).hexdigest()


def library_versions() -> dict[str, str]:
    return {
        name: metadata.version(name)
        for name in ("scikit-learn", "numpy", "visual-inspection-service")
    }

"""A trained head at serving time: a linear layer on the base model's embedding (NumPy only).

The artifact (`offline/heads.py` writes it) is an .npz read without pickle: `features` (how the
embedding is turned into the head's input; one kind so far: "signed_sqrt_l2"), `weights`
(classes x embedding size), `bias` (classes) and `thresholds` (classes: the confidence at or
above which the class is decided without a person, chosen for a target precision).

The head's input is the embedding's signed square root, scaled to unit length (the "power" and
L2 normalisation of pooled features that few-shot linear probes commonly use).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np

from visinspect.errors import TooFewLabels

FEATURES = "signed_sqrt_l2"

# Training needs this many labelled predictions (with a kept embedding) of every class: five
# cross-validation folds of at least one each.
MIN_LABELS_PER_CLASS = 5


class HeadArtifactError(ValueError):
    """An artifact that cannot serve: a digest that does not match, a broken file, a shape that
    does not fit the base model's embedding."""


@dataclass(frozen=True, slots=True)
class HeadAnswer:
    label_set: str
    head_id: int
    version: int
    class_name: str
    confidence: float
    decided: bool
    shadow: bool


@dataclass(frozen=True, slots=True)
class LoadedHead:
    head_id: int
    label_set: str
    label_set_id: int
    version: int
    classes: tuple[str, ...]
    shadow: bool
    weights: np.ndarray  # C x D float32
    bias: np.ndarray  # C
    thresholds: np.ndarray  # C

    def answer(self, embedding: np.ndarray) -> HeadAnswer:
        """Softmax over the set's classes; decided when the best reaches its class's threshold."""
        if embedding.shape != (self.weights.shape[1],):
            raise HeadArtifactError(
                f"head {self.label_set} v{self.version} reads {self.weights.shape[1]} values, "
                f"the embedding has {embedding.shape[0]}"
            )
        logits = self.weights @ head_features(embedding) + self.bias
        shifted = np.exp(logits - logits.max())
        probabilities = shifted / shifted.sum()
        best = int(np.argmax(probabilities))
        confidence = float(probabilities[best])
        return HeadAnswer(
            self.label_set,
            self.head_id,
            self.version,
            self.classes[best],
            confidence,
            confidence >= float(self.thresholds[best]),
            self.shadow,
        )


def head_features(embeddings: np.ndarray) -> np.ndarray:
    """The head's input: sign(x) sqrt(|x|), scaled to unit length (one row or a matrix of rows)."""
    rooted = np.sign(embeddings) * np.sqrt(np.abs(embeddings.astype(np.float32)))
    norm = np.linalg.norm(rooted, axis=-1, keepdims=True)
    scaled: np.ndarray = rooted / np.maximum(norm, 1e-12)
    return scaled.astype(np.float32)


def check_counts(counts: dict[str, int], classes: list[str]) -> None:
    """TooFewLabels, saying what each short class needs, unless every class has enough."""
    short = {c: counts.get(c, 0) for c in classes if counts.get(c, 0) < MIN_LABELS_PER_CLASS}
    if short:
        listed = ", ".join(f"{c}: {n}" for c, n in sorted(short.items()))
        raise TooFewLabels(
            f"every class needs at least {MIN_LABELS_PER_CLASS} labelled predictions with a kept "
            f"embedding of the serving model; short: {listed}"
        )


def pack(weights: np.ndarray, bias: np.ndarray, thresholds: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        features=np.array(FEATURES),
        weights=weights.astype(np.float32),
        bias=bias.astype(np.float32),
        thresholds=thresholds.astype(np.float32),
    )
    return buffer.getvalue()


def unpack(data: bytes, sha256: str, classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The arrays of an artifact whose digest is `sha256`; HeadArtifactError otherwise."""
    if hashlib.sha256(data).hexdigest() != sha256:
        raise HeadArtifactError("the head artifact does not match its recorded sha256")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            features = str(arrays["features"])
            weights, bias, thresholds = (
                np.asarray(arrays[name], dtype=np.float32)
                for name in ("weights", "bias", "thresholds")
            )
    except Exception as exc:  # a corrupt zip (BadZipFile), a bad member (zlib.error, EOFError), ...
        raise HeadArtifactError(
            f"the head artifact cannot be read: {type(exc).__name__}: {exc}"
        ) from exc
    if features != FEATURES:
        raise HeadArtifactError(
            f"the head reads {features!r} features; this release knows {FEATURES!r}"
        )
    if weights.ndim != 2 or weights.shape[0] != classes or bias.shape != (classes,):
        raise HeadArtifactError(f"the head's weights {weights.shape} do not fit {classes} classes")
    if thresholds.shape != (classes,):
        raise HeadArtifactError("the head's thresholds do not fit its classes")
    if not (np.isfinite(weights).all() and np.isfinite(bias).all()):
        raise HeadArtifactError("the head's weights are not all finite")
    return weights, bias, thresholds

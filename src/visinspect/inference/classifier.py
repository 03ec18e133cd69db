"""The classifier: a verified graph (or the PyTorch reference) with its labels and preprocessing,
turning batches of tensors into top-k classes.

With INFERENCE_BACKEND=onnxruntime (the default) the graph comes from the artifact in MODEL_DIR
and this process never imports torch; INFERENCE_BACKEND=pytorch builds the reference network from
the weights file (the `model` extra).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources

import numpy as np
import structlog

from visinspect.config import Architecture, Backend, Precision, Settings
from visinspect.inference.anomaly import DetectorAnswer
from visinspect.inference.artifact import (
    ArtifactError,
    LoadedGraph,
    Selection,
    checked_manifest,
    read_graph,
)
from visinspect.inference.backends import (
    InferenceBackend,
    OnnxRuntimeBackend,
    probe_batch,
    softmax,
)
from visinspect.inference.cpu import this_cpu
from visinspect.inference.preprocess import PREPROCESSING, Preprocessing
from visinspect.inference.selection import select
from visinspect.inference.weights import ModelLoadError, expected_sha256, verified_weights

log = structlog.get_logger("visinspect.model")

__all__ = [
    "Classified",
    "Classifier",
    "ModelIdentity",
    "ModelLoadError",
    "Prediction",
    "load_classifier",
]


@dataclass(frozen=True, slots=True)
class Prediction:
    class_id: int
    class_name: str
    confidence: float


@dataclass(frozen=True, slots=True)
class Classified:
    """One image's top-k, and its embedding (float32; None when the graph has no such output)."""

    predictions: list[Prediction]
    embedding: np.ndarray | None
    anomalies: tuple[DetectorAnswer, ...] = ()  # the detectors' answers, when it was scanned


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    """What answered: stored with every prediction, shown by /health and the logs."""

    name: str  # the architecture, e.g. efficientnet_lite0
    version: str  # sha256:<first 16 hex of the weights file>
    backend: str  # the runtime that executed the network
    precision: str  # fp32 or int8


def load_labels() -> tuple[str, ...]:
    """ImageNet-1k names in class-index order (first WordNet lemma: 'sports car', not n04285008)."""
    text = resources.files("visinspect.inference").joinpath("imagenet_classes.tsv").read_text()
    labels = tuple(line.split("\t", 1)[1] for line in text.splitlines() if line)
    if len(labels) != 1000:
        raise ModelLoadError(f"imagenet_classes.tsv has {len(labels)} classes, expected 1000")
    return labels


class Classifier:
    """A network running on one backend, with its labels and preprocessing.

    `predict` is blocking and CPU-bound: callers run it off the event loop, one call at a time.
    """

    def __init__(
        self,
        backend: InferenceBackend,
        arch: Architecture,
        weights_sha256: str,
        labels: tuple[str, ...],
        precision: Precision = Precision.FP32,
        selection: Selection | None = None,
    ) -> None:
        self.backend = backend
        self.arch = arch
        self.weights_sha256 = weights_sha256
        self.labels = labels
        self.precision = precision
        self.selection = selection  # how MODEL_PRECISION=auto chose the precision
        self.preprocessing: Preprocessing = PREPROCESSING[arch]

    @property
    def model_name(self) -> str:
        return self.arch.value

    @property
    def model_version(self) -> str:
        """Identifies the exact weights: two records with equal versions came from equal files."""
        return f"sha256:{self.weights_sha256[:16]}"

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(
            self.model_name, self.model_version, self.backend_name, self.precision.value
        )

    def predict(self, batch: np.ndarray, top_ks: Sequence[int]) -> list[list[Prediction]]:
        """Softmax over all 1000 classes, then each image's `top_k` best, most confident first."""
        return [image.predictions for image in self.classify(batch, top_ks)]

    def classify(self, batch: np.ndarray, top_ks: Sequence[int]) -> list[Classified]:
        """`predict`, with each image's embedding from the same forward pass."""
        logits, embeddings = self.backend.forward(batch)
        probabilities = softmax(logits)
        results = []
        for i, (row, top_k) in enumerate(zip(probabilities, top_ks, strict=True)):
            best = np.argsort(-row, kind="stable")[:top_k]
            top = [Prediction(int(c), self.labels[int(c)], float(row[c])) for c in best]
            results.append(Classified(top, None if embeddings is None else embeddings[i]))
        return results


def load_classifier(settings: Settings) -> Classifier:
    """The configured model, verified and warmed up; raise ModelLoadError if anything is wrong."""
    started = time.perf_counter()
    if settings.inference_backend is Backend.PYTORCH:
        classifier = _reference_classifier(settings)
    else:
        classifier = _artifact_classifier(settings)
    classifier.predict(
        probe_batch(classifier.preprocessing.crop_size), [1, 1]
    )  # pay allocation now
    log.info(
        "model.loaded",
        model_name=classifier.model_name,
        model_version=classifier.model_version,
        backend=classifier.backend_name,
        precision=classifier.precision.value,
        weights_sha256=classifier.weights_sha256,
        model_dir=str(settings.model_dir)
        if settings.inference_backend is Backend.ONNXRUNTIME
        else None,
        threads=settings.torch_threads,
        load_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    return classifier


def check_model(settings: Settings) -> None:
    """Every check `load_classifier` makes before it builds the network, without building it:
    a supervisor checks once, then each server process loads its own copy (and, for
    MODEL_PRECISION=auto on a CPU the build did not measure, times the graphs itself)."""
    if settings.inference_backend is Backend.PYTORCH:
        verified_weights(settings)
        return
    with _artifact_errors():
        manifest = checked_manifest(settings, expected_sha256(settings), load_labels())
        if settings.model_precision is Precision.AUTO:
            for precision, graph in manifest.graphs.items():
                if graph.agreement.meets_bar:
                    read_graph(settings.model_dir, manifest, precision)
        else:
            read_graph(
                settings.model_dir,
                manifest,
                settings.model_precision,
                settings.model_accept_low_agreement,
            )


@contextmanager
def _artifact_errors() -> Iterator[None]:
    try:
        yield
    except ArtifactError as exc:
        raise ModelLoadError(str(exc), exc.action) from exc


def _checked_graph(settings: Settings, labels: tuple[str, ...]) -> LoadedGraph:
    """The graph MODEL_PRECISION asks for; for `auto`, the fastest on this CPU (logged)."""
    with _artifact_errors():
        manifest = checked_manifest(settings, expected_sha256(settings), labels)
        selection = None
        precision = settings.model_precision
        if precision is Precision.AUTO:
            selection = select(manifest, settings.model_dir, settings.torch_threads, this_cpu())
            precision = selection.precision
            log.info(
                "model.selected",
                precision=precision.value,
                kernels=selection.kernels,
                measured_at=selection.measured_at,
                cpu=selection.cpu,
                cpu_flags=selection.cpu_flags,
                ms_per_image_batch8={
                    c.precision.value: c.ms_per_image_batch8 for c in selection.candidates
                },
                reason=selection.reason,
            )
        data = read_graph(
            settings.model_dir, manifest, precision, settings.model_accept_low_agreement
        )
    return LoadedGraph(manifest, precision, manifest.graphs[precision], data, selection)


def _artifact_classifier(settings: Settings) -> Classifier:
    labels = load_labels()
    loaded = _checked_graph(settings, labels)
    backend = OnnxRuntimeBackend(
        loaded.onnx, settings.torch_threads, loaded.precision, this_cpu().int8_kernels
    )
    return Classifier(
        backend,
        settings.model_arch,
        loaded.manifest.weights_sha256,
        labels,
        loaded.precision,
        loaded.selection,
    )


def _reference_classifier(settings: Settings) -> Classifier:
    if settings.model_precision not in (Precision.FP32, Precision.AUTO):
        raise ModelLoadError(
            f"INFERENCE_BACKEND=pytorch serves fp32 only, MODEL_PRECISION is "
            f"{settings.model_precision.value}",
            "set MODEL_PRECISION=fp32, or INFERENCE_BACKEND=onnxruntime",
        )
    try:  # the one way from serving into the offline package (the import contracts allow it)
        from visinspect.offline.reference import reference_backend
    except ImportError as exc:
        raise ModelLoadError(
            f"INFERENCE_BACKEND=pytorch needs PyTorch: {exc}",
            "install the `model` extra (pip install 'visual-inspection-service[model]'), "
            "or set INFERENCE_BACKEND=onnxruntime",
        ) from exc
    weights = verified_weights(settings)
    backend = reference_backend(settings.model_arch, weights, settings.torch_threads)
    return Classifier(backend, settings.model_arch, weights.sha256, load_labels())

"""`visinspect model build`: PyTorch weights -> measured ONNX graphs + manifest (the `model` extra).

The fp32 graph is exported from the verified PyTorch network and must give PyTorch's answers on
every real photograph available (same top-1, every confidence within 1e-3). An int8 graph is
statically quantized (`offline/quantize.py`) on the calibration photos and measured on the disjoint
evaluation photos; its bar is the product's: top-1 agreement with fp32 on at least 90% of them and
on all of those fp32 is at least 50% sure of (near-ties among photos fp32 is itself unsure of may
flip; the published Lite0 int8 loses 0.7 ImageNet points). An int8 graph asked for explicitly
fails the build below its bar, unless the operator accepts it, in which case the manifest says so
and the service refuses to serve it without MODEL_ACCEPT_LOW_AGREEMENT=true. For
MODEL_PRECISION=auto it is a candidate: recorded with its numbers, served only if it meets its bar.

Then every graph that meets its bar is timed on this CPU as it would be served, and the manifest
records the fastest (`inference/selection.py`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import structlog

from visinspect.config import Precision, Settings
from visinspect.inference.artifact import (
    FORMAT_VERSION,
    Agreement,
    Band,
    Candidate,
    Embedding,
    Graph,
    Manifest,
    Patches,
    PreprocessingContract,
    Selection,
    labels_sha256,
    onnxruntime_version,
    write_artifact,
)
from visinspect.inference.backends import EQUIVALENCE_TOLERANCE, OnnxRuntimeBackend, softmax
from visinspect.inference.classifier import load_labels
from visinspect.inference.cpu import Int8Kernels, this_cpu
from visinspect.inference.preprocess import (
    PREPROCESSING,
    Preprocessing,
    frame_of,
    normalize,
    preprocess,
)
from visinspect.inference.selection import below_bar, choose, measure, untimed
from visinspect.inference.weights import verified_weights
from visinspect.offline.architectures import PATCH_STAGES, PatchFeatures
from visinspect.offline.photos import INT8_MIN_EVALUATION_PHOTOS, TOO_FEW_PHOTOS, PhotoSets
from visinspect.offline.quantize import Int8Recipe, quantize_int8
from visinspect.offline.reference import (
    ONNX_OPSET,
    TorchBackend,
    export_onnx,
    export_patches_onnx,
    load_network,
    torch_version,
)

if TYPE_CHECKING:
    from torch import nn

log = structlog.get_logger("visinspect.model")

INT8_MIN_AGREEMENT = 0.90
INT8_CONFIDENT = 0.5  # photos fp32 is at least this sure of must all agree
BANDS = (0.0, 0.3, 0.5, 0.8)
_MAX_PHOTO_PIXELS = 50_000_000
# The fp32 graph's embeddings may differ from PyTorch's by this share of their largest value
# (float32 arithmetic in another order; measured about 1e-6).
EMBEDDING_TOLERANCE = 1e-3


class BuildFailed(RuntimeError):
    def __init__(self, message: str, action: str) -> None:
        super().__init__(message)
        self.action = action


@dataclass(frozen=True, slots=True)
class Photos:
    """Preprocessed photographs and the PyTorch fp32 reference's softmax on them."""

    tensors: np.ndarray
    reference: np.ndarray

    def __len__(self) -> int:
        return len(self.tensors)

    def joined(self, other: Photos) -> Photos:
        return Photos(
            np.concatenate([self.tensors, other.tensors]),
            np.concatenate([self.reference, other.reference]),
        )


def build_artifact(
    settings: Settings,
    precisions: set[Precision],
    photos: PhotoSets,
    accept_low_agreement: bool = False,
) -> Manifest:
    """Export, quantize, measure and write MODEL_DIR; raise BuildFailed if a graph misses its bar."""
    import torch

    torch.set_num_threads(settings.torch_threads)
    weights = verified_weights(settings)
    network = load_network(settings.model_arch, weights)
    reference = TorchBackend(network)
    spec = PREPROCESSING[settings.model_arch]
    if not photos.all:
        raise BuildFailed(
            "no photographs to measure the graphs on",
            "install scikit-image (the `model` extra), run `make photos`, or pass --photos DIR",
        )
    # Each photo is decoded and run through PyTorch once: fp32 is measured on all of them, int8 is
    # calibrated on one set and measured on the other.
    calibration = load_photos(photos.calibration, spec, reference)
    evaluation = load_photos(photos.evaluation, spec, reference)
    everything = calibration.joined(evaluation)
    fp32 = export_onnx(network, spec.crop_size)
    files = {"model.fp32.onnx": fp32}
    fp32_backend = OnnxRuntimeBackend(fp32, settings.torch_threads)
    graphs = {
        Precision.FP32: _graph(
            "model.fp32.onnx",
            fp32,
            _fp32_agreement(softmax_of(fp32_backend, everything.tensors), everything, photos),
        )
    }
    _check(Precision.FP32, graphs[Precision.FP32].agreement, accept=False)
    embedding = _embedding(reference, fp32_backend, everything.tensors)
    patches, patch_files = _patches(settings, network, photos.all)
    files |= patch_files
    skipped: list[Candidate] = []
    if Precision.INT8 in precisions or Precision.AUTO in precisions:
        explicit = Precision.INT8 in precisions
        try:
            graphs[Precision.INT8], files["model.int8.onnx"] = _int8(
                settings, fp32, calibration, evaluation, photos, accept_low_agreement, explicit
            )
        except BuildFailed as exc:
            if explicit:
                raise
            log.warning("model.int8_skipped", reason=str(exc), action=exc.action)
            skipped.append(untimed(Precision.INT8, f"not built: {exc}"))
    selection = _select(settings, graphs, files, everything.tensors, skipped)
    manifest = Manifest(
        format=FORMAT_VERSION,
        model_name=settings.model_arch.value,
        weights_sha256=weights.sha256,
        labels_sha256=labels_sha256(load_labels()),
        preprocessing=PreprocessingContract.of(spec),
        onnx_opset=ONNX_OPSET,
        onnxruntime_version=onnxruntime_version(),
        built_with={
            "torch": torch_version(),
            "onnx": metadata.version("onnx"),
            "visual-inspection-service": metadata.version("visual-inspection-service"),
        },
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        embedding=embedding,
        graphs=graphs,
        selection=selection,
        patches=patches,
    )
    write_artifact(settings.model_dir, manifest, files)
    log.info(
        "model.built",
        model_dir=str(settings.model_dir),
        precisions=[p.value for p in sorted(graphs)],
        auto_serves=selection.summary(),
    )
    return manifest


def _select(
    settings: Settings,
    graphs: dict[Precision, Graph],
    files: dict[str, bytes],
    tensors: np.ndarray,
    skipped: list[Candidate],
) -> Selection:
    """Time every graph that meets its bar on this CPU, on real photographs, and choose."""
    cpu = this_cpu()
    eligible = {p: files[g.file] for p, g in sorted(graphs.items()) if g.agreement.meets_bar}
    measured = measure(eligible, settings.torch_threads, cpu, tensors[:8])
    return choose(measured + below_bar(graphs) + skipped, cpu, settings.torch_threads, "build")


def _int8(
    settings: Settings,
    fp32: bytes,
    calibration: Photos,
    evaluation: Photos,
    photos: PhotoSets,
    accept_low_agreement: bool,
    explicit: bool,
) -> tuple[Graph, bytes]:
    """Quantize and measure; below its bar, fail an explicit request (unless accepted)."""
    if len(evaluation) < INT8_MIN_EVALUATION_PHOTOS and not accept_low_agreement:
        raise BuildFailed(
            f"{len(evaluation)} {TOO_FEW_PHOTOS} {INT8_MIN_EVALUATION_PHOTOS}",
            "run `make photos` (Debian photo packages), or pass --photos DIR",
        )
    started = time.perf_counter()
    int8, recipe = quantize_int8(fp32, calibration.tensors)
    recipe["seconds"] = round(time.perf_counter() - started, 1)
    # The exact kernels give the answers every CPU's serving kernels give (inference/cpu.py).
    backend = OnnxRuntimeBackend(int8, settings.torch_threads, Precision.INT8, Int8Kernels.EXACT)
    agreement = _int8_agreement(softmax_of(backend, evaluation.tensors), evaluation, photos)
    _check(Precision.INT8, agreement, accept=accept_low_agreement or not explicit)
    return _graph("model.int8.onnx", int8, agreement, recipe), int8


def load_photos(paths: list[Path], spec: Preprocessing, reference: TorchBackend | None) -> Photos:
    """The photos through the reference transform (every pixel decoded), and (given
    `reference`) PyTorch's softmax. A graph is measured on the reference's own inputs: its
    agreement is the quantization's, whatever the serving path's decoding does (that is held to
    the reference transform on its own, tests/inference/test_preprocess.py)."""
    if not paths:  # a set may be empty when only a few photos are given
        crop = spec.crop_size
        return Photos(np.empty((0, 3, crop, crop), np.float32), np.empty((0, 1000)))
    tensors = np.stack(
        [
            preprocess(p.read_bytes(), spec, _MAX_PHOTO_PIXELS, reduced_decode=False).pixels
            for p in paths
        ]
    )
    if reference is None:
        return Photos(tensors, np.empty((0, 1000)))
    return Photos(tensors, softmax_of(reference, tensors))


def softmax_of(backend: TorchBackend | OnnxRuntimeBackend, tensors: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [softmax(backend.logits(tensors[i : i + 32])) for i in range(0, len(tensors), 32)]
    )


def _embedding(
    reference: TorchBackend, graph: OnnxRuntimeBackend, tensors: np.ndarray
) -> Embedding:
    """The fp32 graph's embeddings against PyTorch's pooled features on the photographs: the same
    features a head is trained on, whichever runtime computed them."""
    batch = tensors[:32]
    expected = reference.forward(batch)[1]
    actual = graph.forward(batch)[1]
    if actual is None or actual.shape != expected.shape:
        raise BuildFailed(
            "the exported graph has no `embedding` output of PyTorch's shape",
            "report this: the export of the pooled features failed",
        )
    difference = float(np.max(np.abs(actual - expected)))
    scale = float(np.max(np.abs(expected)))
    if difference > EMBEDDING_TOLERANCE * max(scale, 1.0):
        raise BuildFailed(
            f"the graph's embeddings differ from PyTorch's by up to {difference:.2e}",
            "report this: the exported graph does not compute the pooled features",
        )
    return Embedding(output="embedding", size=int(expected.shape[1]), max_abs_difference=difference)


# The int8 patch graph ships when its features keep at least this mean cosine similarity to the
# fp32 graph's (measured: 0.996 on the photographs; the detectors' AUROC in docs/anomaly.md).
INT8_PATCH_SIMILARITY = 0.98


def _patches(
    settings: Settings, network: nn.Module, paths: list[Path]
) -> tuple[Patches, dict[str, bytes]]:
    """The detectors' graph, exported and checked against PyTorch's patch features on the
    photographs' whole frames (at most 16 of them); and its int8 graph, calibrated on the
    frames of up to 64, kept when its features stay within INT8_PATCH_SIMILARITY of fp32's."""
    import torch

    side = settings.anomaly_frame_px
    spec = PREPROCESSING[settings.model_arch]
    frames = [frame_of(p.read_bytes(), side, _MAX_PHOTO_PIXELS, spec).pixels for p in paths[:64]]
    tensors = normalize(np.stack(frames), spec)
    checked = tensors[:16]
    graph = export_patches_onnx(network, side)
    with torch.no_grad():
        expected = PatchFeatures(network)(torch.from_numpy(checked)).numpy()
    actual = OnnxRuntimeBackend(graph, settings.torch_threads).forward(checked)[0]
    difference = float(np.max(np.abs(actual - expected)))
    if actual.shape != expected.shape or difference > EMBEDDING_TOLERANCE * max(
        float(np.max(np.abs(expected))), 1.0
    ):
        raise BuildFailed(
            f"the patch graph's features differ from PyTorch's by up to {difference:.2e}",
            "report this: the exported graph does not compute the patch features",
        )
    patches = Patches(
        file="patches.fp32.onnx",
        sha256=hashlib.sha256(graph).hexdigest(),
        bytes=len(graph),
        frame=side,
        grid=int(expected.shape[1]),
        channels=int(expected.shape[3]),
        stages=PATCH_STAGES,
        max_abs_difference=difference,
    )
    files = {"patches.fp32.onnx": graph}
    int8, similarity = _int8_patches(settings, graph, tensors)
    if similarity < INT8_PATCH_SIMILARITY:
        log.warning("model.int8_patches_skipped", similarity=round(similarity, 4))
        return patches.model_copy(update={"int8_similarity": similarity}), files
    files["patches.int8.onnx"] = int8
    update = {
        "int8_file": "patches.int8.onnx",
        "int8_sha256": hashlib.sha256(int8).hexdigest(),
        "int8_similarity": similarity,
    }
    return patches.model_copy(update=update), files


def _int8_patches(settings: Settings, fp32: bytes, tensors: np.ndarray) -> tuple[bytes, float]:
    """The patch graph in int8 (QDQ, every layer, bias correction: similarity 0.996 on the
    photographs, 0.976 without it) and the mean cosine similarity of its patch features to
    fp32's on `tensors`."""
    int8, _ = quantize_int8(fp32, tensors, Int8Recipe(keep_fp32=()))
    kernels = this_cpu().int8_kernels
    ours = OnnxRuntimeBackend(int8, settings.torch_threads, Precision.INT8, kernels)
    theirs = OnnxRuntimeBackend(fp32, settings.torch_threads)
    quantized, exact = ours.forward(tensors)[0], theirs.forward(tensors)[0]
    a, b = (x.reshape(-1, x.shape[-1]).astype(np.float64) for x in (quantized, exact))
    cosine = (a * b).sum(axis=1) / np.maximum(
        np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12
    )
    return int8, float(cosine.mean())


def _fp32_agreement(candidate: np.ndarray, photos: Photos, sets: PhotoSets) -> Agreement:
    bar = f"same top-1 on every photo, every confidence within {EQUIVALENCE_TOLERANCE}"
    return _agreement(candidate, photos, sets, bar, _fp32_meets)


def _fp32_meets(agree: np.ndarray, confidence: np.ndarray, diff: np.ndarray) -> bool:
    return bool(agree.all() and diff.max() <= EQUIVALENCE_TOLERANCE)


def _int8_agreement(candidate: np.ndarray, photos: Photos, sets: PhotoSets) -> Agreement:
    bar = (
        f"same top-1 on at least {INT8_MIN_AGREEMENT:.0%} of at least "
        f"{INT8_MIN_EVALUATION_PHOTOS} evaluation photos and on all whose fp32 top-1 confidence "
        f"is at least {INT8_CONFIDENT}"
    )
    return _agreement(candidate, photos, sets, bar, _int8_meets)


def _int8_meets(agree: np.ndarray, confidence: np.ndarray, diff: np.ndarray) -> bool:
    """Too few photographs measure nothing: below INT8_MIN_EVALUATION_PHOTOS the bar is missed."""
    confident = confidence >= INT8_CONFIDENT
    return bool(
        len(agree) >= INT8_MIN_EVALUATION_PHOTOS
        and agree.mean() >= INT8_MIN_AGREEMENT
        and agree[confident].all()
    )


def _agreement(
    candidate: np.ndarray,
    photos: Photos,
    sets: PhotoSets,
    bar: str,
    meets: Callable[[np.ndarray, np.ndarray, np.ndarray], bool],
) -> Agreement:
    agree = candidate.argmax(1) == photos.reference.argmax(1)
    confidence = photos.reference.max(1)
    diff = np.abs(candidate - photos.reference).max(1)
    return Agreement(
        photos=len(agree),
        sources=sets.sources,
        top1_agree=int(agree.sum()),
        top1_agreement=round(float(agree.mean()), 4),
        mean_abs_confidence_diff=round(float(diff.mean()), 6),
        max_abs_confidence_diff=round(float(diff.max()), 6),
        bands=[
            Band(
                min_confidence=low,
                photos=int((confidence >= low).sum()),
                top1_agree=int(agree[confidence >= low].sum()),
            )
            for low in BANDS
        ],
        bar=bar,
        meets_bar=meets(agree, confidence, diff),
    )


def _check(precision: Precision, agreement: Agreement, accept: bool) -> None:
    if agreement.meets_bar:
        return
    summary = (
        f"the {precision.value} graph agrees with PyTorch fp32 on {agreement.top1_agree}/"
        f"{agreement.photos} photos (max |Δ confidence| {agreement.max_abs_confidence_diff}); "
        f"its bar: {agreement.bar}"
    )
    if accept:
        log.warning("model.below_bar", precision=precision.value, reason=summary)
        return
    action = (
        "check the weights and the exporter; fp32 must match PyTorch"
        if precision is Precision.FP32
        else "serve fp32, or build with --accept-low-agreement and serve it with "
        "MODEL_ACCEPT_LOW_AGREEMENT=true"
    )
    raise BuildFailed(summary, action)


def _graph(
    file: str, data: bytes, agreement: Agreement, quantization: dict[str, object] | None = None
) -> Graph:
    return Graph(
        file=file,
        sha256=hashlib.sha256(data).hexdigest(),
        bytes=len(data),
        agreement=agreement,
        quantization=quantization,
    )

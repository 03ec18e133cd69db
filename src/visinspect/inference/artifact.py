"""The model artifact: ONNX graphs plus a `manifest.json` that says exactly what they are.

`visinspect model build` (the `model` extra, with PyTorch) writes the directory once; the serving
process reads it here without importing torch. Everything the graphs were built from is pinned by
checksum: the weights, each graph, the class-name list, the preprocessing contract and the ONNX
Runtime version the agreement was measured with. A directory that does not match what the settings
ask for is refused with a `ModelLoadError` that says how to rebuild it, never served.

    MODEL_DIR/
      manifest.json
      model.fp32.onnx
      model.int8.onnx        (visinspect model build --precision int8)
      patches.fp32.onnx      (the detectors' patch features over the whole frame)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from visinspect.config import Architecture, Precision, Settings
from visinspect.inference.cpu import Cpu
from visinspect.inference.preprocess import PREPROCESSING, Preprocessing

MANIFEST = "manifest.json"
# 2: the graphs have a second output, `embedding` (format 1 had logits only).
# 3: `selection`, the precision measured fastest on the build's CPU (graphs lost `speed`).
FORMAT_VERSION = 3
REBUILD = (
    "run `visinspect model build` with the same settings (MODEL_ARCH, MODEL_WEIGHTS, MODEL_DIR)"
)


class ArtifactError(RuntimeError):
    """MODEL_DIR cannot be served as configured; `action` tells the operator what to do."""

    def __init__(self, message: str, action: str = REBUILD) -> None:
        super().__init__(message)
        self.action = action


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PreprocessingContract(_Strict):
    resize: int
    crop: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def of(cls, spec: Preprocessing) -> PreprocessingContract:
        return cls(
            resize=spec.resize_size,
            crop=spec.crop_size,
            interpolation=spec.interpolation.name.lower(),
            mean=spec.mean,
            std=spec.std,
        )


class Band(_Strict):
    """Agreement on the photos whose fp32 top-1 confidence is at least `min_confidence`."""

    min_confidence: float
    photos: int
    top1_agree: int


class Agreement(_Strict):
    """A graph measured against the PyTorch fp32 reference on real photographs."""

    photos: int
    sources: list[str]
    top1_agree: int
    top1_agreement: float
    mean_abs_confidence_diff: float
    max_abs_confidence_diff: float
    bands: list[Band]
    bar: str  # the rule this graph had to pass, in words
    meets_bar: bool


class Graph(_Strict):
    file: str
    sha256: str
    bytes: int
    agreement: Agreement
    quantization: dict[str, object] | None = None  # how an int8 graph was made (calibration, ...)


class Embedding(_Strict):
    """The graphs' second output: the pooled features the classifier layer reads."""

    output: str  # its name in the graph
    size: int  # values per image (1,280 for Lite0 and B0)
    # Largest |difference| from PyTorch's pooled features on the photographs, fp32 graph.
    max_abs_difference: float


class Patches(_Strict):
    """The detectors' graph: every patch's mid-level features over the whole frame, checked
    against PyTorch's when built (as the embedding is)."""

    file: str
    sha256: str
    bytes: int
    frame: int  # the whole image is resized to frame x frame pixels (ANOMALY_FRAME_PX)
    grid: int  # patches along a side
    channels: int  # features per patch
    stages: str  # which of the network's feature maps, in words
    # Largest |difference| from PyTorch's features on the photographs' frames.
    max_abs_difference: float
    precision: str = "fp32"  # of the graph `file` holds
    # The int8 graph (QDQ, calibrated on the photographs' frames), when the build made one, and
    # its patch features' mean cosine similarity to the fp32 graph's on those frames.
    int8_file: str | None = None
    int8_sha256: str | None = None
    int8_similarity: float | None = None


class Candidate(_Strict):
    """One precision as measured on one CPU: milliseconds per image, all candidates alternating
    in the same seconds (a ratio, not numbers from different hours)."""

    precision: Precision
    kernels: str | None  # int8 only: u8s8 or exact (inference/cpu.py)
    meets_bar: bool
    ms_per_image_batch1: float | None = None  # None: not measured, `note` says why
    ms_per_image_batch8: float | None = None
    note: str = ""


class Selection(_Strict):
    """Which precision MODEL_PRECISION=auto serves on a CPU, and the measurements behind it."""

    precision: Precision
    kernels: str | None
    cpu: str  # the CPU's model name
    cpu_flags: list[str]  # its extensions that decide the speed (inference/cpu.py SPEED_FLAGS)
    threads: int  # intra-op threads of one pass, as served
    measured_at: str  # "build", or "start" when the service measured on a CPU the build did not
    candidates: list[Candidate]
    reason: str

    def fits(self, cpu: Cpu, threads: int) -> bool:
        """Measured on a CPU with the same model and extensions, with as many threads."""
        return (self.cpu, tuple(self.cpu_flags), self.threads) == (cpu.model, cpu.flags, threads)

    def summary(self) -> str:
        times = ", ".join(
            f"{c.precision.value} {c.ms_per_image_batch8:.2f}"
            for c in self.candidates
            if c.ms_per_image_batch8 is not None
        )
        kernels = f" ({self.kernels} kernels)" if self.kernels else ""
        return (
            f"{self.precision.value}{kernels}, measured at {self.measured_at} on {self.cpu} "
            f"({', '.join(self.cpu_flags) or 'no AVX2'}; ms per image at batch 8: {times}): "
            f"{self.reason}"
        )


class Manifest(_Strict):
    format: int
    model_name: str
    weights_sha256: str
    labels_sha256: str
    preprocessing: PreprocessingContract
    onnx_opset: int
    onnxruntime_version: str
    built_with: dict[str, str]  # torch, onnx, visinspect versions
    built_at: str
    embedding: Embedding
    graphs: dict[Precision, Graph]
    selection: Selection  # what MODEL_PRECISION=auto serves on the build's CPU
    patches: Patches | None = None  # absent from artifacts built before detectors existed


@dataclass(frozen=True, slots=True)
class LoadedGraph:
    """A verified graph, ready for an inference session."""

    manifest: Manifest
    precision: Precision
    graph: Graph
    onnx: bytes
    selection: Selection | None  # how MODEL_PRECISION=auto chose it; None when asked explicitly


def labels_sha256(labels: tuple[str, ...]) -> str:
    return hashlib.sha256("\n".join(labels).encode()).hexdigest()


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ArtifactError(f"no model artifact in {directory} ({MANIFEST} is missing)") from None
    except OSError as exc:
        raise ArtifactError(
            f"cannot read {path}: {exc}", "fix MODEL_DIR or its permissions"
        ) from exc
    try:
        manifest = Manifest.model_validate_json(text)
    except ValidationError as exc:
        raise ArtifactError(f"{path} is not a valid manifest: {_first_error(exc)}") from exc
    if manifest.format != FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format {manifest.format}, this release reads {FORMAT_VERSION}"
        )
    return manifest


def checked_manifest(
    settings: Settings, expected_weights_sha256: str, labels: tuple[str, ...]
) -> Manifest:
    """MODEL_DIR's manifest, after every check against the settings, the packaged class list and
    the installed ONNX Runtime."""
    manifest = read_manifest(settings.model_dir)
    check_manifest(manifest, settings.model_arch, expected_weights_sha256, labels)
    return manifest


def read_graph(
    directory: Path, manifest: Manifest, precision: Precision, accept_low_agreement: bool = False
) -> bytes:
    """One graph's bytes: refused if it was not built, misses its agreement bar (unless
    accepted) or is not the file the manifest measured."""
    graph = manifest.graphs.get(precision)
    if graph is None:
        built = ", ".join(sorted(manifest.graphs)) or "none"
        raise ArtifactError(
            f"{directory} has no {precision.value} graph (built: {built})",
            f"run `visinspect model build --precision {precision.value}` (`make run` does), or "
            "set MODEL_PRECISION to a built one",
        )
    if not graph.agreement.meets_bar and not accept_low_agreement:
        a = graph.agreement
        raise ArtifactError(
            f"the {precision.value} graph agrees with the fp32 reference on {a.top1_agree}/"
            f"{a.photos} photos ({a.top1_agreement:.1%}; "
            + ", ".join(
                f"{b.top1_agree}/{b.photos} at fp32 confidence >= {b.min_confidence}"
                for b in a.bands
            )
            + f"), below its bar ({a.bar})",
            "serve MODEL_PRECISION=auto or fp32, or set MODEL_ACCEPT_LOW_AGREEMENT=true to serve "
            "it anyway",
        )
    return _verified(directory / graph.file, graph.sha256, f"the {precision.value} graph")


def read_patches(
    directory: Path, manifest: Manifest, precision: str = "fp32"
) -> tuple[Patches, bytes]:
    """The detectors' graph of `precision` ("fp32", "int8", or "auto": int8 where the build
    made one), verified, and its description (`file`, `sha256` and `precision` are the graph's
    read); refused when the artifact predates it or was changed."""
    patches = manifest.patches
    if patches is None:
        raise ArtifactError(f"{directory} was built before detectors existed (no patch graph)")
    if precision == "auto":
        precision = "int8" if patches.int8_file else "fp32"
    if precision == "int8":
        if patches.int8_file is None or patches.int8_sha256 is None:
            raise ArtifactError(f"{directory} has no int8 patch graph")
        patches = patches.model_copy(
            update={"file": patches.int8_file, "sha256": patches.int8_sha256, "precision": "int8"}
        )
    return patches, _verified(directory / patches.file, patches.sha256, "the patch graph")


def _verified(path: Path, sha256: str, what: str) -> bytes:
    """A graph file's bytes, refused unless they are the ones the manifest measured."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read {what} {path}: {exc}") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ArtifactError(
            f"{path} has sha256 {actual}, the manifest says {sha256}: the graph was changed"
        )
    return data


def check_manifest(
    manifest: Manifest, arch: Architecture, weights_sha256: str, labels: tuple[str, ...]
) -> None:
    """Refuse an artifact built from other weights, another network, another class list, another
    preprocessing or another ONNX Runtime than the ones this process would serve with."""
    if manifest.model_name != arch.value:
        raise ArtifactError(f"the artifact holds {manifest.model_name}, MODEL_ARCH is {arch.value}")
    if not manifest.weights_sha256.startswith(weights_sha256):
        raise ArtifactError(
            f"the artifact was built from weights sha256 {manifest.weights_sha256[:16]}..., "
            f"the configured weights are {weights_sha256[:16]}..."
        )
    if manifest.labels_sha256 != labels_sha256(labels):
        raise ArtifactError("the artifact was built with another class-name list")
    expected = PreprocessingContract.of(PREPROCESSING[arch])
    if manifest.preprocessing != expected:
        raise ArtifactError(
            f"the artifact's preprocessing {manifest.preprocessing} differs from this release's "
            f"{expected}"
        )
    installed = onnxruntime_version()
    if manifest.onnxruntime_version != installed:
        raise ArtifactError(
            f"the artifact's agreement was measured with ONNX Runtime {manifest.onnxruntime_version}, "
            f"{installed} is installed"
        )


def onnxruntime_version() -> str:
    import onnxruntime

    version: str = onnxruntime.__version__
    return version


def write_artifact(directory: Path, manifest: Manifest, graphs: dict[str, bytes]) -> None:
    """Write graphs and manifest into a fresh sibling directory, then swap it in: a reader sees
    the old artifact or the new one (for an instant between the two renames, none), never half
    of each."""
    directory = directory.resolve()
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    for name, data in graphs.items():
        (staging / name).write_bytes(data)
    (staging / MANIFEST).write_text(describe(manifest) + "\n")
    # mkdtemp makes it private (0700); the serving user, often another one, must read it.
    os.chmod(staging, 0o755)  # noqa: S103
    if directory.exists():
        retired = directory.with_name(f".{directory.name}-old-{os.getpid()}")
        directory.rename(retired)
        staging.rename(directory)
        shutil.rmtree(retired)
    else:
        staging.rename(directory)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}"


def describe(manifest: Manifest) -> str:
    """The manifest as JSON: what manifest.json holds and `visinspect model show` prints."""
    return manifest.model_dump_json(indent=2)

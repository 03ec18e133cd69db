"""Anomaly detectors: "is this part good, and where is the defect?", learned from good images only.

PatchCore's method on the served network (docs/anomaly.md): every 8 x 8-pixel patch of the whole
frame is described by the network's mid-level features (the artifact's patch graph); a detector
keeps a fixed-size memory bank of good patches, chosen by greedy k-centre coreset so that it
covers all of them; a photo's heat map is each patch's distance to its nearest good patch and its
score is the worst patch's. The threshold is set on good images the bank did not see, for a target
false-reject rate, and scores are divided by it: 1.0 is the threshold, whatever the product.

The bank's size, and so the artifact's size and a photo's cost, do not grow with the number of
good images. The artifact is an `.npz` read with `allow_pickle=False` and checked by sha256.
"""

from __future__ import annotations

import hashlib
import io
import math
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import structlog
from PIL import Image

from visinspect.config import Backend, Precision, Settings
from visinspect.inference.artifact import ArtifactError, Patches, read_manifest, read_patches
from visinspect.inference.backends import OnnxRuntimeBackend
from visinspect.inference.cpu import this_cpu
from visinspect.inference.preprocess import PREPROCESSING, Preprocessing, normalize

log = structlog.get_logger("visinspect.anomaly")

METHOD = "patchcore-greedy-coreset/v1"
DEFAULT_BANK_SIZE = 1024
DEFAULT_FALSE_REJECT = 0.01
BATCH = 16  # frames per pass of the patch graph
MIN_GOOD_IMAGES = 4  # two to build each half's bank, two to be scored
_PROJECTION = 64  # the coreset's distances are measured in a random projection this wide


class DetectorArtifactError(ValueError):
    """A detector artifact that cannot be used (corrupt, tampered, or for another graph)."""


class TooFewGoodImages(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class AnomalyAnswer:
    """A detector's answer on one image. `score` and `heat` are in units of the threshold."""

    score: float
    verdict: str  # "ok" | "anomalous"
    region: tuple[int, int, int, int] | None  # [x0, y0, x1, y1) in the image's pixels
    heat: np.ndarray  # grid x grid float32


def open_patch_extractor(settings: Settings) -> PatchExtractor:
    """MODEL_DIR's patch graph of ANOMALY_PRECISION, checked against its manifest; ArtifactError
    when the artifact has none, or not that one."""
    manifest = read_manifest(settings.model_dir)
    patches, graph = read_patches(settings.model_dir, manifest, settings.anomaly_precision)
    spec = PREPROCESSING[settings.model_arch]
    return PatchExtractor(graph, patches, spec, settings.torch_threads)


def load_patch_extractor(settings: Settings) -> PatchExtractor | None:
    """`open_patch_extractor` for serving: None (one log line; detectors are not served, the
    classifier is) when it cannot be opened."""
    if settings.inference_backend is not Backend.ONNXRUNTIME:
        return None
    try:
        return open_patch_extractor(settings)
    except ArtifactError as exc:
        log.warning("detectors.unavailable", reason=str(exc), action=exc.action)
        return None


class PatchExtractor:
    """The artifact's patch graph on ONNX Runtime: whole frames in, patch features out."""

    def __init__(self, graph: bytes, patches: Patches, spec: Preprocessing, threads: int) -> None:
        precision = Precision(patches.precision)
        self.backend = OnnxRuntimeBackend(graph, threads, precision, this_cpu().int8_kernels)
        self.patches = patches
        self.spec = spec

    def features(self, frames: np.ndarray) -> np.ndarray:
        """uint8 N x frame x frame x 3 -> float32 N x grid x grid x channels, in passes of at
        most BATCH frames (a hundred good images at once would hold 60 MB of floats twice)."""
        passes = [
            self.backend.forward(normalize(frames[i : i + BATCH], self.spec))[0]
            for i in range(0, len(frames), BATCH)
        ]
        if not passes:
            grid, channels = self.patches.grid, self.patches.channels
            return np.empty((0, grid, grid, channels), np.float32)
        return np.concatenate(passes)


@dataclass(frozen=True)
class Detector:
    """A trained detector: its bank of good patches and its threshold."""

    bank: np.ndarray  # float32 M x channels
    threshold: float  # the raw distance a score of 1.0 stands for
    grid: int
    frame: int
    stats: dict[str, float]  # how it was trained, for the manifest
    graph_sha256: str = ""  # the patch graph it was trained on (it answers only on that one)

    @cached_property
    def bank_squares(self) -> np.ndarray:
        """The bank rows' squared norms: computed once, read by every photo's search."""
        return _squares(self.bank)

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Each patch's distance to its nearest good patch: grid x grid."""
        rows = features.reshape(-1, features.shape[-1])
        return _nearest(rows, self.bank, self.bank_squares).reshape(self.grid, self.grid)

    def answer(self, features: np.ndarray, width: int, height: int) -> AnomalyAnswer:
        heat = (self.distances(features) / self.threshold).astype(np.float32)
        score = float(heat.max())
        anomalous = score >= 1.0
        return AnomalyAnswer(
            score=score,
            verdict="anomalous" if anomalous else "ok",
            region=region(heat, width, height) if anomalous else None,
            heat=heat,
        )


@dataclass(frozen=True, slots=True)
class LoadedDetector:
    """A label set's detector version as a process serves it (active or shadow)."""

    head_id: int
    label_set: str
    label_set_id: int
    version: int
    good_class: str
    shadow: bool
    detector: Detector


@dataclass(frozen=True, slots=True)
class DetectorAnswer:
    """A serving detector's answer on one upload: what POST /predict returns and records."""

    served: LoadedDetector
    answer: AnomalyAnswer

    @property
    def detector(self) -> str:
        """The label set whose detector answered: what `?label_set=` names."""
        return self.served.label_set

    @property
    def detector_id(self) -> int:
        return self.served.head_id

    @property
    def version(self) -> int:
        return self.served.version

    @property
    def score(self) -> float:
        return self.answer.score

    @property
    def verdict(self) -> str:
        return self.answer.verdict

    @property
    def region(self) -> tuple[int, int, int, int] | None:
        return self.answer.region

    def heat_bytes(self) -> bytes:
        """The heat map as it is kept: one byte a patch, the score x 100 (255: 2.55 or more)."""
        return np.clip(np.rint(self.answer.heat * 100.0), 0, 255).astype(np.uint8).tobytes()


def heat_from_bytes(data: bytes) -> np.ndarray:
    """A kept heat map (`DetectorAnswer.heat_bytes`) as grid x grid scores; ValueError when its
    length is not a square."""
    grid = math.isqrt(len(data))
    if grid * grid != len(data) or not grid:
        raise ValueError(f"a kept heat map of {len(data)} bytes is not a square grid")
    return np.frombuffer(data, np.uint8).reshape(grid, grid).astype(np.float32) / 100.0


def _squares(bank: np.ndarray) -> np.ndarray:
    squares: np.ndarray = np.einsum("ij,ij->i", bank, bank)
    return squares


def _nearest(rows: np.ndarray, bank: np.ndarray, bank_squares: np.ndarray) -> np.ndarray:
    """Euclidean distance from each row to its nearest bank row: one matrix product."""
    products = rows @ bank.T
    products *= -2.0
    products += bank_squares[None, :]
    closest = products.min(axis=1) + np.einsum("ij,ij->i", rows, rows)
    distances: np.ndarray = np.sqrt(np.maximum(closest, 0.0))
    return distances


def region(heat: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """The box, in the image's pixels, around the worst patch and every patch over the threshold
    connected to it (8-neighbours): the defect the score came from, not every warm patch."""
    grid = heat.shape[0]
    start = np.unravel_index(int(heat.argmax()), heat.shape)
    seen = {(int(start[0]), int(start[1]))}
    todo = deque(seen)
    while todo:
        y, x = todo.popleft()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                n = (y + dy, x + dx)
                if 0 <= n[0] < grid and 0 <= n[1] < grid and n not in seen and heat[n] >= 1.0:
                    seen.add(n)
                    todo.append(n)
    ys = [y for y, _ in seen]
    xs = [x for _, x in seen]
    return (
        math.floor(min(xs) * width / grid),
        math.floor(min(ys) * height / grid),
        math.ceil((max(xs) + 1) * width / grid),
        math.ceil((max(ys) + 1) * height / grid),
    )


def heat_png(heat: np.ndarray, width: int, height: int) -> bytes:
    """The heat map as an RGBA PNG of `width` x `height` pixels, to lay over the image (a page
    stretches it to the image's size): transparent where the patch is as good as the good
    images, through yellow to opaque red at twice the threshold."""
    level = np.clip(heat / 2.0, 0.0, 1.0)
    rgba = np.zeros((*heat.shape, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 1] = np.round(255 * (1.0 - level)).astype(np.uint8)
    rgba[..., 3] = np.round(220 * np.clip((heat - 0.5) / 1.0, 0.0, 1.0)).astype(np.uint8)
    image = Image.fromarray(rgba, "RGBA").resize((width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)  # a few smooth blobs: level 6 is 10x the CPU
    return buffer.getvalue()


def train(
    features: np.ndarray,
    frame: int,
    graph_sha256: str = "",
    bank_size: int = DEFAULT_BANK_SIZE,
    false_reject: float = DEFAULT_FALSE_REJECT,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Detector:
    """A detector from good images' patch features (N x grid x grid x channels, seen at
    `frame` pixels a side).

    The threshold comes from cross-fitting: each half's bank scores the other half's images, so
    every good image is scored by a bank that never saw it; the threshold is the (1 -
    false_reject) point of a normal fitted to those scores, and never below the worst of them.
    Then the final bank is chosen from every image.
    """
    count, grid, _, channels = features.shape
    if count < MIN_GOOD_IMAGES:
        raise TooFewGoodImages(
            f"a detector needs at least {MIN_GOOD_IMAGES} good images, got {count}"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(count)
    halves = (order[: count // 2], order[count // 2 :])
    held_out: list[float] = []
    for fit, score in (halves, halves[::-1]):
        if progress:
            progress(f"scoring {len(score)} good images on a bank of the other {len(fit)}")
        bank = coreset(features[fit].reshape(-1, channels), bank_size, rng)
        squares = _squares(bank)
        held_out += [
            float(_nearest(features[i].reshape(-1, channels), bank, squares).max()) for i in score
        ]
    if progress:
        progress(f"choosing the bank from all {count} good images")
    bank = coreset(features.reshape(-1, channels), bank_size, rng)
    threshold = _threshold(held_out, false_reject)
    stats = {
        "good_images": float(count),
        "bank_patches": float(len(bank)),
        "patches_seen": float(count * grid * grid),
        "held_out_mean": statistics.fmean(held_out),
        "held_out_max": max(held_out),
        "false_reject_target": false_reject,
    }
    return Detector(bank, threshold, grid, frame, stats, graph_sha256)


def _threshold(scores: list[float], false_reject: float) -> float:
    z = statistics.NormalDist().inv_cdf(1.0 - false_reject)
    fitted = statistics.fmean(scores) + z * statistics.stdev(scores)
    return max(fitted, max(scores))


def coreset(rows: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` rows chosen by greedy k-centre (each next row the one farthest from those chosen),
    distances measured in a random projection: a bank that covers every good patch, rare ones
    included, which a random sample of the same size would miss (docs/anomaly.md)."""
    if len(rows) <= size:
        return np.ascontiguousarray(rows, dtype=np.float32)
    scale = 1.0 / math.sqrt(_PROJECTION)
    matrix = (rng.standard_normal((rows.shape[1], _PROJECTION)) * scale).astype(np.float32)
    projected = rows @ matrix
    squares = _squares(projected)
    chosen = np.empty(size, dtype=np.int64)
    chosen[0] = int(rng.integers(len(rows)))
    farthest = np.full(len(rows), np.inf, dtype=np.float32)
    for i in range(1, size):
        centre = projected[chosen[i - 1]]
        distance = squares - 2.0 * (projected @ centre) + squares[chosen[i - 1]]
        np.minimum(farthest, distance, out=farthest)
        chosen[i] = int(farthest.argmax())
    return np.ascontiguousarray(rows[chosen], dtype=np.float32)


def pack(detector: Detector) -> bytes:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        method=np.array(METHOD),
        bank=detector.bank.astype(np.float32),
        threshold=np.array(detector.threshold, dtype=np.float64),
        grid=np.array(detector.grid, dtype=np.int64),
        frame=np.array(detector.frame, dtype=np.int64),
        graph_sha256=np.array(detector.graph_sha256),
    )
    return buffer.getvalue()


def unpack(data: bytes, sha256: str, patches: Patches) -> Detector:
    """The detector whose artifact digest is `sha256`, for the served patch graph `patches`;
    DetectorArtifactError otherwise."""
    if hashlib.sha256(data).hexdigest() != sha256:
        raise DetectorArtifactError("the detector artifact does not match its recorded sha256")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            method = str(arrays["method"])
            bank = np.ascontiguousarray(arrays["bank"], dtype=np.float32)
            threshold = float(arrays["threshold"])
            grid, frame = int(arrays["grid"]), int(arrays["frame"])
            graph = str(arrays["graph_sha256"]) if "graph_sha256" in arrays.files else ""
    except Exception as exc:  # a corrupt zip, a missing member, an object array, ...
        raise DetectorArtifactError(
            f"the detector artifact cannot be read: {type(exc).__name__}: {exc}"
        ) from exc
    if method != METHOD:
        raise DetectorArtifactError(f"the detector uses {method!r}; this release knows {METHOD!r}")
    if bank.ndim != 2 or bank.shape[1] != patches.channels or not len(bank):
        raise DetectorArtifactError(
            f"the detector's bank {bank.shape} does not fit the patch graph's "
            f"{patches.channels} channels"
        )
    if (grid, frame) != (patches.grid, patches.frame):
        raise DetectorArtifactError(
            f"the detector was trained on {frame}-pixel frames ({grid} patches a side); the "
            f"served graph reads {patches.frame} ({patches.grid}): train it again"
        )
    if graph and graph != patches.sha256:
        raise DetectorArtifactError(
            f"the detector was trained on another patch graph ({graph[:16]}...) than the served "
            f"{patches.precision} one ({patches.sha256[:16]}...): train it again, or serve that "
            "graph (ANOMALY_PRECISION)"
        )
    if not (np.isfinite(bank).all() and math.isfinite(threshold) and threshold > 0):
        raise DetectorArtifactError("the detector's bank or threshold is not finite")
    return Detector(bank, threshold, grid, frame, {}, graph)

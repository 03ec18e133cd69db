"""Runtimes that execute the network: PyTorch (the reference) and ONNX Runtime (the fast default).

PyTorch stays the source of the model: the ONNX graph is exported from the loaded PyTorch network,
cached on disk under a name that carries the weights' SHA-256, the exporter's version and the
opset, verified by its own SHA-256 when read back, and compared with PyTorch at start-up
(`max_confidence_difference`, called by `model.load_classifier`). A backend only maps a float32
NCHW batch to logits.
"""

from __future__ import annotations

import hashlib
import io
import time
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import structlog
import torch
from torch import nn

log = structlog.get_logger("visinspect.model")

ONNX_OPSET = 17
# Largest allowed difference between a backend's softmax and PyTorch's (the product's promise).
EQUIVALENCE_TOLERANCE = 1e-3


class InferenceBackend(Protocol):
    name: str

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """float32 N x 3 x H x W -> float32 N x 1000; blocking, called from one thread."""
        ...


class TorchBackend:
    """The reference: eager PyTorch, channels-last memory layout, no autograd."""

    name = "pytorch"

    def __init__(self, network: nn.Module) -> None:
        self.network = network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def logits(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            inputs = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
            out: np.ndarray = self.network(inputs).numpy()
        return out


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, model: bytes, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Worker threads spin briefly between passes. Measured here: without it a lone image
        # takes 8.7 ms instead of 5.0 (thread wake-ups), and throughput under load is no better.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def logits(self, batch: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.session.run(None, {self.input_name: batch})[0]
        return out


def onnx_model(network: nn.Module, crop: int, cache_dir: Path | None, tag: str) -> bytes:
    """The network as ONNX bytes: from the cache when present and intact, else exported now."""
    name = f"{tag}-opset{ONNX_OPSET}-torch{torch.__version__.split('+')[0]}.onnx"
    cached = _read_cache(cache_dir / name) if cache_dir else None
    if cached is not None:
        return cached
    started = time.perf_counter()
    data = export_onnx(network, crop)
    log.info("model.onnx_exported", ms=round((time.perf_counter() - started) * 1000, 1))
    if cache_dir is not None:
        _write_cache(cache_dir / name, data)
    return data


def export_onnx(network: nn.Module, crop: int) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is chatty about its own deprecation
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network,
            (torch.zeros(1, 3, crop, crop),),
            buffer,  # type: ignore[arg-type]  # file-like objects are accepted
            opset_version=ONNX_OPSET,
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return buffer.getvalue()


class ModelCacheUnreadable(OSError):
    """MODEL_CACHE_DIR holds an entry for this model that cannot be read (permissions, a folder
    where a file belongs): an operator's mistake, not a reason to export silently at every start."""


def _read_cache(path: Path) -> bytes | None:
    checksum = path.with_suffix(".onnx.sha256")
    try:
        data, expected = path.read_bytes(), checksum.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ModelCacheUnreadable(f"the ONNX cache {path} cannot be read: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != expected:
        log.warning("model.onnx_cache_corrupt", path=str(path))
        return None
    log.info("model.onnx_cached", path=str(path))
    return data


def _write_cache(path: Path, data: bytes) -> None:
    """Best effort: a read-only file system only costs an export at each start."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(data)
        temporary.replace(path)
        path.with_suffix(".onnx.sha256").write_text(hashlib.sha256(data).hexdigest())
    except OSError as exc:
        log.warning("model.onnx_cache_unwritable", path=str(path), reason=str(exc))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted, dtype=np.float64)
    probabilities: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return probabilities


def max_confidence_difference(
    candidate: InferenceBackend, reference: InferenceBackend, batch: np.ndarray
) -> float:
    return float(np.abs(softmax(candidate.logits(batch)) - softmax(reference.logits(batch))).max())

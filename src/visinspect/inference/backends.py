"""Runtimes that execute the network: ONNX Runtime (serving) and, in `reference.py`, PyTorch.

A backend maps a float32 NCHW batch to logits and, where its graph has them, the embeddings (the
pooled features its classifier layer reads), from one forward pass. This module imports no torch: the serving
process runs the artifact's graph (`artifact.py`) and nothing else.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from visinspect.config import Precision
from visinspect.inference.cpu import Int8Kernels

# Largest allowed difference between an fp32 graph's softmax and PyTorch's (the product's promise).
EQUIVALENCE_TOLERANCE = 1e-3


class InferenceBackend(Protocol):
    name: str

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """float32 N x 3 x H x W -> (logits N x 1000, embeddings N x D or None); blocking,
        called from one thread."""
        ...

    def logits(self, batch: np.ndarray) -> np.ndarray: ...


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(
        self,
        model: bytes,
        threads: int,
        precision: Precision = Precision.FP32,
        kernels: Int8Kernels = Int8Kernels.EXACT,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # With several threads per pass, the worker threads spin briefly between passes.
        # Measured here: without it a lone image took 8.7 ms instead of 5.0 (thread wake-ups),
        # and throughput under load was no better. With one thread per pass (the default: one
        # lane per CPU) there is no worker thread, and nothing spins: the CPU use a container's
        # quota and an autoscaler see is work.
        spin = "1" if threads > 1 else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        if precision is Precision.INT8 and kernels is Int8Kernels.EXACT:
            # Without VNNI or AMX, ONNX Runtime's fast u8s8 kernels saturate 16-bit sums
            # (inference/cpu.py); this asks for the exact ones, so an int8 graph answers as it
            # did when measured. Where the fast ones are exact they give the same logits.
            options.add_session_config_entry("session.x64quantprecision", "1")
        self.precision = precision
        self.kernels = kernels.value if precision is Precision.INT8 else None
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = self.session.run(None, {self.input_name: batch})
        return outputs[0], (outputs[1] if len(outputs) > 1 else None)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.session.run(None, {self.input_name: batch})[0]
        return out


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted, dtype=np.float64)
    probabilities: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return probabilities


def probe_batch(crop: int, size: int = 2) -> np.ndarray:
    """A fixed, image-like input (smooth gradients in [-1, 1], and its mirror image) for warm-up
    and for timing: a graph's kernels do the same work whatever the pixels."""
    ramp = np.linspace(-1.0, 1.0, crop, dtype=np.float32)
    first = np.stack(
        [np.add.outer(ramp, ramp) / 2, np.outer(ramp, ramp), -np.add.outer(ramp, ramp) / 2]
    )
    pair = [first, first[::-1]]
    return np.ascontiguousarray(np.stack([pair[i % 2] for i in range(size)]), dtype=np.float32)

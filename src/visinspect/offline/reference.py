"""PyTorch: the source of the model and the reference every served graph is measured against.

Only `visinspect model build` and INFERENCE_BACKEND=pytorch import this module (the `model` extra);
the ONNX Runtime serving path never does, so a serving process holds no torch.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn

from visinspect.config import Architecture
from visinspect.inference.weights import ModelLoadError, WeightsInfo
from visinspect.offline.architectures import PatchFeatures, WithEmbedding, build_network

ONNX_OPSET = 17


class TorchBackend:
    """The reference: eager PyTorch, channels-last memory layout, no autograd."""

    name = "pytorch"

    def __init__(self, network: nn.Module) -> None:
        self.network = network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._with_embedding = WithEmbedding(self.network)

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            inputs = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
            logits, embeddings = self._with_embedding(inputs)
        return logits.numpy(), embeddings.numpy()

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.forward(batch)[0]


def reference_backend(arch: Architecture, weights: WeightsInfo, threads: int) -> TorchBackend:
    """INFERENCE_BACKEND=pytorch: the reference network served as it is."""
    torch.set_num_threads(threads)
    return TorchBackend(load_network(arch, weights))


def load_network(arch: Architecture, weights: WeightsInfo) -> nn.Module:
    """The network of `arch` with verified weights loaded strictly, in eval mode."""
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


def export_onnx(network: nn.Module, crop: int) -> bytes:
    """The network as an ONNX graph with a dynamic batch axis: input `input`, outputs `logits`
    and `embedding` (the pooled features the classifier layer reads), one pass for both."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is chatty about its own deprecation
        warnings.simplefilter("ignore")
        torch.onnx.export(
            WithEmbedding(network),
            (torch.zeros(1, 3, crop, crop),),
            buffer,  # type: ignore[arg-type]  # file-like objects are accepted
            opset_version=ONNX_OPSET,
            dynamo=False,
            input_names=["input"],
            output_names=["logits", "embedding"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}, "embedding": {0: "batch"}},
        )
    return buffer.getvalue()


def export_patches_onnx(network: nn.Module, frame: int) -> bytes:
    """The detectors' graph: the whole frame (frame x frame) in, each patch's features out
    (`patches`, batch x grid x grid x channels); a dynamic batch axis."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            PatchFeatures(network),
            (torch.zeros(1, 3, frame, frame),),
            buffer,  # type: ignore[arg-type]
            opset_version=ONNX_OPSET,
            dynamo=False,
            input_names=["input"],
            output_names=["patches"],
            dynamic_axes={"input": {0: "batch"}, "patches": {0: "batch"}},
        )
    return buffer.getvalue()


def torch_version() -> str:
    return torch.__version__.split("+")[0]

"""fp32 ONNX graph -> int8 QDQ graph, calibrated on real photographs (the `model` extra).

Static quantization (ONNX Runtime QDQ): uint8 activations with per-tensor ranges from the
calibration photographs, int8 weights per output channel, the first and last layers left in fp32.
Then **bias correction** (Nagel et al., "Data-Free Quantization Through Weight Equalization and
Bias Correction", 2019): rounding a convolution's weights shifts the mean of its every output
channel by (W_int8 - W) . E[x]; with E[x] measured on the calibration photographs, each bias is
moved back by that much. On Lite0's 3x3 and 5x5 depthwise convolutions the shift is large next
to the channel's own signal, and it accumulates over 16 blocks: the correction took top-1
agreement with fp32 from 213 to 222 of 237 evaluation photographs (docs/model.md).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class Int8Recipe:
    """How an int8 graph is made. The default is the best measured (docs/model.md); the others
    are what `make quantization` compares it with."""

    calibrator: str = "MinMax"  # MinMax, Entropy or Percentile (99.999)
    flip: bool = True  # also calibrate on each photo's mirror image
    reduce_range: bool = False  # 7-bit weights: no u8s8 saturation, but coarser weights
    # "ends": the first conv, the last conv and the classifier; "depthwise": every depthwise conv.
    keep_fp32: tuple[str, ...] = ("ends",)
    bias_correction: bool = True

    def describe(self) -> dict[str, object]:
        return {
            "format": "QDQ",
            "activations": "uint8, per tensor",
            "weights": "int8 (7-bit range)" if self.reduce_range else "int8, per channel",
            "calibrator": self.calibrator,
            "augmentation": "horizontal flip" if self.flip else "none",
            "kept_in_fp32": list(self.keep_fp32),
            "bias_correction": "empirical, calibration means" if self.bias_correction else "none",
            "kernels": "u8s8 where the CPU has VNNI or AMX, else exact (x64quantprecision)",
        }


# The manifest's description of how its int8 graph was made, beside the build's own counts.
RECIPE_KEYS = frozenset(Int8Recipe().describe())


def quantize_int8(
    fp32: bytes, calibration: np.ndarray, recipe: Int8Recipe | None = None
) -> tuple[bytes, dict[str, object]]:
    """The int8 graph of `fp32` calibrated on `calibration` (N x 3 x H x W, normalised), and the
    recipe's description for the manifest."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    recipe = recipe or Int8Recipe()
    samples = np.concatenate([calibration, calibration[..., ::-1]]) if recipe.flip else calibration

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._samples: Iterator[np.ndarray] = iter(samples)

        def get_next(self) -> dict[str, np.ndarray] | None:
            sample = next(self._samples, None)
            return None if sample is None else {"input": np.ascontiguousarray(sample[None])}

    with tempfile.TemporaryDirectory(prefix="visinspect-quantize-") as work:
        source, prepared, quantized = (Path(work) / n for n in ("fp32.onnx", "pre.onnx", "q.onnx"))
        source.write_bytes(fp32)
        quant_pre_process(str(source), str(prepared))
        reference = onnx.load(str(prepared))
        quantize_static(
            str(prepared),
            str(quantized),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=recipe.reduce_range,
            nodes_to_exclude=_kept_in_fp32(reference.graph, recipe.keep_fp32),
            calibrate_method=getattr(CalibrationMethod, recipe.calibrator),
            extra_options={"CalibPercentile": 99.999}
            if recipe.calibrator == "Percentile"
            else None,
        )
        model = onnx.load(str(quantized))
    description = {**recipe.describe(), "calibration_samples": len(samples)}
    if recipe.bias_correction:
        description["biases_corrected"] = correct_biases(model, reference, samples)
    return model.SerializeToString(), description


def _kept_in_fp32(graph: Any, keep: tuple[str, ...]) -> list[str]:
    convs = [n for n in graph.node if n.op_type == "Conv"]
    names: list[str] = []
    if "ends" in keep:
        names += [convs[0].name, convs[-1].name]
        names += [n.name for n in graph.node if n.op_type == "Gemm"]
    if "depthwise" in keep:
        names += [n.name for n in convs if _group(n) > 1]
    return names


def correct_biases(model: Any, reference: Any, samples: np.ndarray) -> int:
    """Move every quantized convolution's bias (in place, in `model`) by the shift its weights'
    rounding causes in the mean of each output channel, measured with the fp32 graph
    `reference`'s mean input channels over `samples`. Returns how many biases moved."""
    from onnx import numpy_helper

    fp32_convs = {n.name: n for n in reference.graph.node if n.op_type == "Conv"}
    means = _mean_input_channels(reference, [n.input[0] for n in fp32_convs.values()], samples)
    fp32_weights = {i.name: numpy_helper.to_array(i) for i in reference.graph.initializer}
    initializers = {i.name: i for i in model.graph.initializer}
    producer = {output: node for node in model.graph.node for output in node.output}
    corrected = 0
    for node in model.graph.node:
        original = fp32_convs.get(node.name)
        if node.op_type != "Conv" or original is None or len(node.input) < 3:
            continue
        weights = _constant_dequantize(producer.get(node.input[1]), initializers)
        bias = _constant_dequantize(producer.get(node.input[2]), initializers)
        if weights is None or bias is None:
            continue  # left in fp32
        error = _dequantize(weights, initializers) - fp32_weights[original.input[1]]
        shift = _mean_shift(error, means[original.input[0]], _group(original))
        values = numpy_helper.to_array(initializers[bias.input[0]]).astype(np.float64)
        scale = numpy_helper.to_array(initializers[bias.input[1]]).astype(np.float64)
        moved = np.round((values * scale - shift) / scale)
        moved = np.clip(moved, np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
        initializers[bias.input[0]].CopyFrom(numpy_helper.from_array(moved, bias.input[0]))
        corrected += 1
    return corrected


def _group(node: Any) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def _mean_shift(error: np.ndarray, mean: np.ndarray, groups: int) -> np.ndarray:
    """(W_int8 - W) . E[x] per output channel, for a convolution in `groups` groups (Lite0 has
    ordinary ones and depthwise ones, where every channel is a group)."""
    per_input = error.sum(axis=(2, 3))  # out x in/groups: E[x] is constant over a kernel
    out_channels, in_per_group = per_input.shape
    grouped = per_input.reshape(groups, out_channels // groups, in_per_group)
    shift: np.ndarray = (grouped * mean.reshape(groups, 1, in_per_group)).sum(axis=2)
    return shift.reshape(out_channels)


def _constant_dequantize(node: Any, initializers: dict[str, Any]) -> Any:
    """`node` if it is a DequantizeLinear of constants (a quantized weight or bias), else None."""
    if node is None or node.op_type != "DequantizeLinear":
        return None
    return node if all(name in initializers for name in node.input) else None


def _dequantize(node: Any, initializers: dict[str, Any]) -> np.ndarray:
    """A constant DequantizeLinear's float values: per output channel (axis 0) or per tensor."""
    from onnx import numpy_helper

    values, scale, *zero = (numpy_helper.to_array(initializers[n]) for n in node.input)
    offset = zero[0].astype(np.float32) if zero else np.zeros_like(scale, np.float32)
    if np.ndim(scale):  # per output channel
        shape = (-1,) + (1,) * (values.ndim - 1)
        scale, offset = scale.reshape(shape), offset.reshape(shape)
    dequantized: np.ndarray = (values.astype(np.float32) - offset) * scale.astype(np.float32)
    return dequantized


def _mean_input_channels(reference: Any, tensors: list[str], samples: np.ndarray) -> dict[str, Any]:
    """Each named tensor's mean per channel (over samples and positions) in the fp32 graph."""
    import onnx
    import onnxruntime

    probe = onnx.ModelProto()
    probe.CopyFrom(reference)
    wanted = sorted(set(tensors))
    outputs = {o.name for o in probe.graph.output}
    for name in wanted:
        if name not in outputs:
            probe.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    session = onnxruntime.InferenceSession(
        probe.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    sums: dict[str, np.ndarray] = {}
    for start in range(0, len(samples), 16):
        batch = np.ascontiguousarray(samples[start : start + 16])
        for name, value in zip(wanted, session.run(wanted, {"input": batch}), strict=True):
            sums[name] = sums.get(name, 0) + value.mean(axis=(2, 3)).sum(axis=0)
    return {name: total / len(samples) for name, total in sums.items()}

"""Bias correction (offline/quantize.py): the shift of each output channel's mean that rounding a
convolution's weights causes is computed right for ordinary, grouped and depthwise convolutions, and
moving the biases by it brings the served network's int8 logits closer to fp32's on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime

from tests.support import PHOTOS
from visinspect.config import Architecture
from visinspect.inference.preprocess import PREPROCESSING, preprocess
from visinspect.offline.quantize import Int8Recipe, _mean_shift, quantize_int8


def _conv(inputs: np.ndarray, weights: np.ndarray, groups: int) -> np.ndarray:
    """A direct convolution without padding (N x C x H x W), as the definition says."""
    out_channels, in_per_group, kh, kw = weights.shape
    n, _, height, width = inputs.shape
    result = np.zeros((n, out_channels, height - kh + 1, width - kw + 1))
    per_group = out_channels // groups
    for o in range(out_channels):
        group_inputs = inputs[
            :, (o // per_group) * in_per_group : (o // per_group + 1) * in_per_group
        ]
        for y in range(kh):
            for x in range(kw):
                window = group_inputs[:, :, y : y + result.shape[2], x : x + result.shape[3]]
                result[:, o] += np.einsum("nihw,i->nhw", window, weights[o, :, y, x])
    return result


def test_mean_shift_is_the_convolution_of_the_weight_error_with_the_mean_input() -> None:
    """On an input constant per channel, a convolution of the weights' error gives exactly the
    shift of every output: checked for an ordinary, a grouped and a depthwise convolution."""
    rng = np.random.default_rng(7)
    for in_channels, out_channels, groups in ((3, 5, 1), (4, 6, 2), (6, 6, 6)):
        error = rng.normal(size=(out_channels, in_channels // groups, 3, 3))
        mean = rng.normal(size=in_channels)
        constant = np.broadcast_to(mean[None, :, None, None], (1, in_channels, 5, 5))
        expected = _conv(np.array(constant), error, groups)[0, :, 1, 1]
        np.testing.assert_allclose(_mean_shift(error, mean, groups), expected, rtol=1e-10)


def _logits(graph: bytes, photos: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
    logits: np.ndarray = session.run(None, {"input": photos})[0]
    return logits


def test_bias_correction_brings_lite0_int8_closer_to_fp32(model_artifact: Path) -> None:
    """The served network, calibrated on 8 real photographs and measured on the others: the
    corrected graph's logits are much closer to fp32's (measured: mean squared error 2.4 times
    smaller on the evaluation photographs of docs/model.md)."""
    spec = PREPROCESSING[Architecture.EFFICIENTNET_LITE0]
    paths = sorted(PHOTOS.glob("*.png")) + sorted(PHOTOS.glob("*.jpg"))
    photos = np.stack([preprocess(p.read_bytes(), spec, 10**8).pixels for p in paths])
    calibration, evaluation = photos[:8], photos[8:]
    fp32 = (model_artifact / "model.fp32.onnx").read_bytes()
    corrected, description = quantize_int8(fp32, calibration)
    plain, _ = quantize_int8(fp32, calibration, Int8Recipe(bias_correction=False))
    assert description["biases_corrected"] == 47  # 49 convolutions, the first and last in fp32
    reference = _logits(fp32, evaluation)
    before = float(((_logits(plain, evaluation) - reference) ** 2).mean())
    after = float(((_logits(corrected, evaluation) - reference) ** 2).mean())
    assert after < before * 0.6, (before, after)

"""int8 recipes side by side: top-1 agreement with PyTorch fp32 and speed against the fp32 graph.

  make quantization     (= python -m bench.quantization; `make photos` installs the photographs)

Every recipe is calibrated on the same calibration photographs and measured on the same, disjoint
evaluation photographs (`visinspect.offline.photos`), in one run on one machine. Agreement is
reported overall and by the fp32 reference's own confidence; speed is milliseconds per image at
batch 1 and 8, the recipe and fp32 alternating (`selection.time_runs`). The default recipe runs with
both of ONNX Runtime's int8 kernels: the exact ones and the fast u8s8 ones (exact only with VNNI or
AMX; on other CPUs this row shows what their saturation costs).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from visinspect.config import Architecture, Precision, Settings
from visinspect.inference.backends import OnnxRuntimeBackend
from visinspect.inference.cpu import Int8Kernels, this_cpu
from visinspect.inference.preprocess import PREPROCESSING
from visinspect.inference.selection import time_runs
from visinspect.inference.weights import verified_weights
from visinspect.offline.build import INT8_CONFIDENT, load_photos, softmax_of
from visinspect.offline.photos import find_photos
from visinspect.offline.quantize import Int8Recipe, quantize_int8
from visinspect.offline.reference import TorchBackend, export_onnx, load_network

RECIPES = {
    "MinMax, flips, ends in fp32, bias correction (the default)": Int8Recipe(),
    "MinMax, flips, ends in fp32, no bias correction": Int8Recipe(bias_correction=False),
    # The rows below correct biases too (the default).
    "MinMax, flips, all quantized": Int8Recipe(keep_fp32=()),
    "MinMax, no flips, all quantized": Int8Recipe(flip=False, keep_fp32=()),
    "Entropy, all quantized": Int8Recipe(calibrator="Entropy", flip=False, keep_fp32=()),
    "Percentile 99.999, all quantized": Int8Recipe(
        calibrator="Percentile", flip=False, keep_fp32=()
    ),
    "MinMax, flips, 7-bit weights": Int8Recipe(reduce_range=True, keep_fp32=()),
    "MinMax, flips, depthwise in fp32": Int8Recipe(keep_fp32=("depthwise",)),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two recipes only")
    args = parser.parse_args()
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    spec = PREPROCESSING[Architecture.EFFICIENTNET_LITE0]
    network = load_network(settings.model_arch, verified_weights(settings))
    reference = TorchBackend(network)
    photos = find_photos()
    print(f"photographs: {', '.join(photos.sources)}")
    print(f"calibration {len(photos.calibration)}, evaluation {len(photos.evaluation)} (disjoint)")
    print(f"CPU: {this_cpu().describe()}, {settings.torch_threads} threads\n")
    evaluation = load_photos(photos.evaluation, spec, reference)
    calibration = load_photos(photos.calibration, spec, None).tensors
    fp32_bytes = export_onnx(network, spec.crop_size)
    fp32 = OnnxRuntimeBackend(fp32_bytes, settings.torch_threads)
    confidence = evaluation.reference.max(1)
    confident = confidence >= INT8_CONFIDENT
    print(
        "| recipe | top-1 agreement | fp32 conf >= 0.5 | fp32 conf < 0.5 | mean / max |Δ conf| "
        "| ms/img b1 (fp32) | ms/img b8 (fp32) | speed-up b8 | quantize s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    recipes = dict(list(RECIPES.items())[:2]) if args.quick else RECIPES
    for name, recipe in recipes.items():
        started = time.perf_counter()
        int8, _ = quantize_int8(fp32_bytes, calibration, recipe)
        seconds = time.perf_counter() - started
        threads = settings.torch_threads
        backends = {name: OnnxRuntimeBackend(int8, threads, Precision.INT8, Int8Kernels.EXACT)}
        if recipe == Int8Recipe():
            backends[f"{name}, u8s8 kernels"] = OnnxRuntimeBackend(
                int8, threads, Precision.INT8, Int8Kernels.U8S8
            )
        for label, backend in backends.items():
            probabilities = softmax_of(backend, evaluation.tensors)
            agree = probabilities.argmax(1) == evaluation.reference.argmax(1)
            diff = np.abs(probabilities - evaluation.reference).max(1)
            times = time_runs({"int8": backend.logits, "fp32": fp32.logits}, evaluation.tensors[:8])
            (int8_b1, int8_b8), (fp32_b1, fp32_b8) = times["int8"], times["fp32"]
            print(
                f"| {label} | {agree.sum()}/{len(agree)} ({agree.mean():.1%}) "
                f"| {agree[confident].sum()}/{confident.sum()} "
                f"| {agree[~confident].sum()}/{(~confident).sum()} "
                f"| {diff.mean():.3f} / {diff.max():.3f} "
                f"| {int8_b1:.2f} ({fp32_b1:.2f}) | {int8_b8:.2f} ({fp32_b8:.2f}) "
                f"| {fp32_b8 / int8_b8:.2f}x "
                f"| {seconds:.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""OpenVINO beside ONNX Runtime on the artifact's graphs: agreement and speed, one run.

  make openvino      (installs PyPI's `openvino` into .cache/openvino, not into the venv: it is
                      not a dependency of the service; then = python -m bench.openvino)

Issue 25 asked whether OpenVINO, as a second runtime, is faster at equal agreement. Every
candidate runs the graphs `visinspect model build` wrote (fp32, and int8 where built) with one
inference thread, as the service serves; OpenVINO also runs the fp32 graph with its bf16
inference precision (AMX or AVX512_BF16 where the CPU has them). Agreement is top-1 against ONNX
Runtime fp32 (itself within 1e-3 of PyTorch) on the evaluation photographs (`make photos`), by
fp32's own confidence; speed is ms per image at batch 1 and 8, all candidates alternating
(`selection.time_runs`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np

from visinspect.config import Precision, Settings
from visinspect.inference.backends import OnnxRuntimeBackend, softmax
from visinspect.inference.cpu import this_cpu
from visinspect.inference.preprocess import PREPROCESSING
from visinspect.inference.selection import time_runs
from visinspect.offline.build import INT8_CONFIDENT, load_photos
from visinspect.offline.photos import find_photos

Run = Callable[[np.ndarray], np.ndarray]


def openvino_run(path: str, precision_hint: str) -> Run:
    import openvino as ov

    compiled = ov.Core().compile_model(
        path,
        "CPU",
        {
            "INFERENCE_NUM_THREADS": 1,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": precision_hint,
        },
    )
    request, output = compiled.create_infer_request(), compiled.outputs[0]

    def run(batch: np.ndarray) -> np.ndarray:
        logits: np.ndarray = request.infer({0: np.ascontiguousarray(batch)})[output]
        return logits

    return run


def main() -> int:
    import openvino

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    cpu = this_cpu()
    directory = settings.model_dir
    int8 = (directory / "model.int8.onnx").exists()
    photos = load_photos(find_photos().evaluation, PREPROCESSING[settings.model_arch], None)
    tensors = photos.tensors[: len(photos.tensors) // 8 * 8]
    fp32 = OnnxRuntimeBackend((directory / "model.fp32.onnx").read_bytes(), 1)
    runs: dict[str, Run] = {
        "onnxruntime fp32": fp32.logits,
        "openvino fp32": openvino_run(str(directory / "model.fp32.onnx"), "f32"),
        "openvino bf16": openvino_run(str(directory / "model.fp32.onnx"), "bf16"),
    }
    if int8:
        graph = (directory / "model.int8.onnx").read_bytes()
        ort_int8 = OnnxRuntimeBackend(graph, 1, Precision.INT8, cpu.int8_kernels)
        runs[f"onnxruntime int8 ({cpu.int8_kernels} kernels)"] = ort_int8.logits
        runs["openvino int8 (the same QDQ graph)"] = openvino_run(
            str(directory / "model.int8.onnx"), "f32"
        )
    print(f"CPU: {cpu.describe()}; OpenVINO {openvino.__version__}, one thread")
    print(f"{len(tensors)} evaluation photographs\n")

    def probabilities(run: Run) -> np.ndarray:
        return np.concatenate([softmax(run(tensors[i : i + 8])) for i in range(0, len(tensors), 8)])

    reference = probabilities(fp32.logits)
    sure = reference.max(1) >= INT8_CONFIDENT
    times = time_runs(runs, tensors[:8])
    print(
        "| runtime, precision | top-1 agreement | fp32 conf >= 0.5 | max abs Δ conf | ms/img b1 | ms/img b8 |"
    )
    print("|---|---|---|---|---|---|")
    for name, run in runs.items():
        p = probabilities(run)
        agree = p.argmax(1) == reference.argmax(1)
        print(
            f"| {name} | {agree.sum()}/{len(agree)} | {agree[sure].sum()}/{sure.sum()} "
            f"| {np.abs(p - reference).max():.4f} | {times[name][0]:.2f} | {times[name][1]:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""In-process ceilings, no HTTP and no database: what the model and the whole pipeline can do here.

  python bench/ceilings.py [--smoke]

(a) model-only: median latency and images/s of each backend at batch sizes 1..32;
(b) pipeline: JPEG bytes -> decode -> preprocess -> inference, decoding in worker threads while the
    model thread runs micro-batches, like the service, for a 640x480 and a 4000x3000 JPEG.
"""

from __future__ import annotations

import argparse
import io
import os
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from visinspect.config import Settings
from visinspect.inference.backends import InferenceBackend
from visinspect.inference.classifier import Classifier, load_classifier
from visinspect.inference.preprocess import preprocess
from visinspect.offline.reference import TorchBackend

BATCH_SIZES = (1, 2, 4, 8, 16, 32)


def photo_jpeg(size: tuple[int, int]) -> bytes:
    """coffee.png (a real photograph from scikit-image's wheel) as a JPEG of the given size."""
    spec = find_spec("skimage")
    assert spec is not None
    assert spec.submodule_search_locations
    source = Path(next(iter(spec.submodule_search_locations))) / "data" / "coffee.png"
    with Image.open(source) as image:
        resized = image.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    resized.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def median_ms(run: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


class EagerNchw:
    """PyTorch eager in its default NCHW layout: the baseline the targets are measured against."""

    name = "pytorch-eager-nchw"

    def __init__(self, network: torch.nn.Module) -> None:
        self.network = network

    def logits(self, batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out: np.ndarray = self.network(torch.from_numpy(batch)).numpy()
        return out


@dataclass
class Backends:
    onnxruntime: Classifier
    pytorch: Classifier

    def all(self) -> list[InferenceBackend]:
        torch_backend = self.pytorch.backend
        assert isinstance(torch_backend, TorchBackend)
        # A separate copy in NCHW: the channels-last conversion of the pytorch backend is in place.
        nchw = load_classifier(Settings(_env_file=None, inference_backend="pytorch"))  # type: ignore[call-arg]
        assert isinstance(nchw.backend, TorchBackend)
        nchw_network = nchw.backend.network.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        return [EagerNchw(nchw_network), torch_backend, self.onnxruntime.backend]


def load_backends() -> Backends:
    return Backends(
        onnxruntime=load_classifier(Settings(_env_file=None)),  # type: ignore[call-arg]
        pytorch=load_classifier(Settings(_env_file=None, inference_backend="pytorch")),  # type: ignore[call-arg]
    )


def model_only(backends: list[InferenceBackend], smoke: bool) -> dict[str, dict[int, float]]:
    """Median milliseconds per batch, per backend and batch size.

    Backends are measured in interleaved rounds, each after a pause: a thread pool that has just
    worked keeps spinning for a while (OpenMP, ONNX Runtime), and whichever backend ran right after
    another one would otherwise pay for its neighbour's spinning threads. Each figure is the median
    over the rounds.
    """
    rng = np.random.default_rng(0)
    sizes = (1, 4) if smoke else BATCH_SIZES
    rounds = 1 if smoke else 3
    samples: dict[str, dict[int, list[float]]] = {b.name: {s: [] for s in sizes} for b in backends}
    for _ in range(rounds):
        for size in sizes:
            batch = rng.uniform(-1, 1, (size, 3, 224, 224)).astype(np.float32)
            repeats = 3 if smoke else max(5, 64 // size)
            for backend in backends:
                time.sleep(0.3)
                samples[backend.name][size].append(
                    median_ms(lambda b=batch, run=backend.logits: run(b), repeats, warmup=5)  # type: ignore[misc]
                )
    return {
        name: {size: statistics.median(values) for size, values in by_size.items()}
        for name, by_size in samples.items()
    }


def pipeline(
    classifier: Classifier, jpeg: bytes, images: int, decode_threads: int, max_batch: int
) -> float:
    """Images per second from JPEG bytes to top-k, decoders and the model thread overlapping."""
    ready: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=4 * max_batch)
    spec = classifier.preprocessing

    def decode(_: int) -> None:
        ready.put(preprocess(jpeg, spec, 10**8).pixels)

    def infer() -> None:
        done = 0
        while done < images:
            batch = [ready.get()]
            while len(batch) < max_batch:
                try:
                    batch.append(ready.get_nowait())
                except queue.Empty:
                    break
            pixels = [b for b in batch if b is not None]
            classifier.predict(np.stack(pixels), [3] * len(pixels))
            done += len(pixels)

    started = time.perf_counter()
    model = threading.Thread(target=infer)
    model.start()
    with ThreadPoolExecutor(decode_threads) as pool:
        list(pool.map(decode, range(images)))
    model.join()
    return images / (time.perf_counter() - started)


def single_image_ms(classifier: Classifier, jpeg: bytes, repeats: int) -> float:
    """One image, start to finish, nothing else running: the floor for latency at concurrency 1."""

    def once() -> None:
        decoded = preprocess(jpeg, classifier.preprocessing, 10**8)
        classifier.predict(decoded.pixels[None], [3])

    return median_ms(once, repeats)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny counts: proves the script runs")
    args = parser.parse_args()
    backends = load_backends()
    table = model_only(backends.all(), args.smoke)
    print("## Model only (median ms per batch; images/s)\n")
    sizes = sorted(next(iter(table.values())))
    print("| backend | " + " | ".join(f"batch {s}" for s in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for name, row in table.items():
        cells = [f"{row[s]:.1f} ms ({s / row[s] * 1000:.0f}/s)" for s in sizes]
        print(f"| {name} | " + " | ".join(cells) + " |")
    images = 16 if args.smoke else 400
    threads = os.cpu_count() or 2
    print(f"\n## Pipeline (JPEG -> top-3, {threads} decode threads + model thread, in-process)\n")
    print("| backend | photo | images/s | one image alone |")
    print("|---|---|---|---|")
    for classifier in (backends.onnxruntime, backends.pytorch):
        for label, size in (("640x480", (640, 480)), ("4000x3000", (4000, 3000))):
            jpeg = photo_jpeg(size)
            rate = pipeline(classifier, jpeg, images, threads, 16)
            alone = single_image_ms(classifier, jpeg, 5 if args.smoke else 30)
            print(f"| {classifier.backend_name} | {label} | {rate:.0f} | {alone:.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

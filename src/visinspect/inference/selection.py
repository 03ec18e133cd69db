"""MODEL_PRECISION=auto: which of the artifact's graphs is fastest on this CPU.

Every graph that meets its agreement bar is a candidate (fp32 always is). They are timed on this
CPU with the serving thread count, alternating in the same seconds, and the fastest at batch 8
(the served batch size under load) is chosen, provided it beats fp32 by MIN_SPEEDUP: fp32 is the
reference, and a few percent are not worth int8's changed answers on the photos fp32 is unsure of
(about one in ten), nor are they above the timing's noise. The build measures on its CPU and records the
choice in the manifest; a service started on another CPU, or with other threads, measures again
(about two seconds) before it serves.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from visinspect.config import Precision
from visinspect.inference.artifact import Candidate, Graph, Manifest, Selection, read_graph
from visinspect.inference.backends import OnnxRuntimeBackend, probe_batch
from visinspect.inference.cpu import Cpu

# A precision other than fp32 is served only when at least this much faster at batch 8. Measured:
# int8 on VNNI's exact fast kernels 1.95x; on AVX2's exact kernels 0.79-1.06x (fp32 stays).
MIN_SPEEDUP = 1.2

Run = Callable[[np.ndarray], np.ndarray]


def time_runs(
    runs: Mapping[str, Run], batch: np.ndarray, rounds: int = 5
) -> dict[str, list[float]]:
    """Milliseconds per image of each run at batch 1 and at `len(batch)`, the runs alternating
    round by round: medians of `rounds` rounds, [batch 1, full batch]."""
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds):
        for name, run in runs.items():
            for size in (1, len(batch)):
                part = np.ascontiguousarray(batch[:size])
                times.setdefault((name, size), []).append(_ms_per_image(run, part))
    return {
        name: [round(statistics.median(times[name, size]), 3) for size in (1, len(batch))]
        for name in runs
    }


def _ms_per_image(run: Run, batch: np.ndarray) -> float:
    run(batch)
    repeats = max(3, 48 // len(batch))
    started = time.perf_counter()
    for _ in range(repeats):
        run(batch)
    return (time.perf_counter() - started) * 1000 / repeats / len(batch)


def measure(
    graphs: Mapping[Precision, bytes], threads: int, cpu: Cpu, batch: np.ndarray, rounds: int = 5
) -> list[Candidate]:
    """Each graph timed on this CPU, as it would be served (its kernels, `threads` threads)."""
    backends = {
        precision: OnnxRuntimeBackend(data, threads, precision, cpu.int8_kernels)
        for precision, data in graphs.items()
    }
    times = time_runs({p.value: b.logits for p, b in backends.items()}, batch, rounds)
    return [
        Candidate(
            precision=precision,
            kernels=backend.kernels,
            meets_bar=True,
            ms_per_image_batch1=times[precision.value][0],
            ms_per_image_batch8=times[precision.value][1],
        )
        for precision, backend in backends.items()
    ]


def choose(candidates: list[Candidate], cpu: Cpu, threads: int, measured_at: str) -> Selection:
    """The fastest measured candidate that meets its bar, if it beats fp32 by MIN_SPEEDUP."""
    timed = {
        c.precision: c.ms_per_image_batch8
        for c in candidates
        if c.meets_bar and c.ms_per_image_batch8 is not None
    }
    fp32 = timed.get(Precision.FP32)
    if fp32 is None:
        raise ValueError("fp32 must be measured: it is the reference every choice is against")
    fastest = min(timed, key=lambda p: timed[p])
    chosen: Precision
    if fastest is not Precision.FP32 and fp32 / timed[fastest] >= MIN_SPEEDUP:
        chosen, reason = fastest, f"{fp32 / timed[fastest]:.2f}x fp32's speed at batch 8"
    else:
        chosen, reason = Precision.FP32, _why_fp32(candidates, timed, fp32)
    kernels = next(c.kernels for c in candidates if c.precision is chosen)
    return Selection(
        precision=chosen,
        kernels=kernels,
        cpu=cpu.model,
        cpu_flags=list(cpu.flags),
        threads=threads,
        measured_at=measured_at,
        candidates=candidates,
        reason=reason,
    )


def _why_fp32(candidates: list[Candidate], timed: dict[Precision, float], fp32: float) -> str:
    others = [c for c in candidates if c.precision is not Precision.FP32]
    if not others:
        return "the only graph built"
    reasons = []
    for c in others:
        if c.precision not in timed:
            reasons.append(f"{c.precision.value} {c.note or 'misses its agreement bar'}")
        else:
            speedup = fp32 / timed[c.precision]
            reasons.append(
                f"{c.precision.value} ({c.kernels} kernels) is {speedup:.2f}x fp32's speed, "
                f"below the {MIN_SPEEDUP}x worth serving"
            )
    return "; ".join(reasons)


def untimed(precision: Precision, note: str) -> Candidate:
    """A precision that may not be served: `note` says why."""
    return Candidate(precision=precision, kernels=None, meets_bar=False, note=note)


def below_bar(graphs: Mapping[Precision, Graph]) -> list[Candidate]:
    """The graphs that miss their agreement bar: recorded, never timed nor served."""
    return [
        untimed(p, "misses its agreement bar")
        for p, g in sorted(graphs.items())
        if not g.agreement.meets_bar
    ]


def select(manifest: Manifest, directory: Path, threads: int, cpu: Cpu) -> Selection:
    """The build's choice when it was measured on a CPU like this one, with as many threads;
    otherwise the graphs that meet their bar, timed here and now."""
    if manifest.selection.fits(cpu, threads):
        return manifest.selection
    eligible = sorted(p for p, g in manifest.graphs.items() if g.agreement.meets_bar)
    below = below_bar(manifest.graphs)
    if eligible == [Precision.FP32]:
        fp32 = Candidate(precision=Precision.FP32, kernels=None, meets_bar=True, note="not timed")
        return Selection(
            precision=Precision.FP32,
            kernels=None,
            cpu=cpu.model,
            cpu_flags=list(cpu.flags),
            threads=threads,
            measured_at="start",
            candidates=[fp32, *below],
            reason="the only graph built that meets its bar",
        )
    graphs = {p: read_graph(directory, manifest, p) for p in eligible}
    batch = probe_batch(manifest.preprocessing.crop, 8)
    return choose(measure(graphs, threads, cpu, batch, rounds=3) + below, cpu, threads, "start")

"""How many CPUs this process may really use, and how the serving work is laid out on them.

`os.cpu_count()` is the node's count: in a container limited to 2 CPUs on a 64-core node it says
64, and 64 inference threads fighting over 2 CPUs' worth of quota spend their time waiting. The
usable count is the smallest of the CPU affinity mask and the cgroup's CPU quota (v2 `cpu.max`,
v1 `cpu.cfs_quota_us`), rounded up, at least 1.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


# How much lower than the event loop the model's threads and the decoder processes run (nice
# levels). Once every CPU is busy, the event loop is what hands uploads to the decoders and
# images to the lanes and sends the answers: given the CPU first, it keeps them fed. Measured in
# alternating rounds (docs/benchmarks.md): 10-16% more requests/s at concurrency 8 and 32,
# lower p99, no change at concurrency 1.
BACKGROUND_NICENESS = 5


def run_in_background() -> None:
    """Lower the calling thread's priority by BACKGROUND_NICENESS (Linux: nice is per thread)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICENESS)
    except (OSError, AttributeError):  # not Linux: the work is the same, only the order differs
        return


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """CPUs this process can run on at once: affinity, capped by a cgroup CPU quota."""
    cpus = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU limit of this process's cgroup in CPUs (1.5 = 150 ms per 100 ms), or None."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:  # "max 100000" or "150000 100000"
        quota, _, period = v2.partition(" ")
        if quota == "max" or not period:
            return None
        return int(quota) / int(period)
    quota_us = _read(root / "cpu" / "cpu.cfs_quota_us") or _read(root / "cpu.cfs_quota_us")
    period_us = _read(root / "cpu" / "cpu.cfs_period_us") or _read(root / "cpu.cfs_period_us")
    if quota_us is None or period_us is None or int(quota_us) <= 0:
        return None
    return int(quota_us) / int(period_us)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class ServingPlan:
    """Server processes and, in each, its inference lanes (forward passes at once), the threads
    of one pass, and its decoder processes."""

    cpus: int
    workers: int
    lanes_per_worker: int
    threads_per_lane: int
    decoders_per_worker: int


# CPUs one server process is given before a second one starts. Its event loop spends about 4.6 ms
# of CPU per request, a request about 33 ms of CPU in all (model, decoding, database): one loop
# keeps 4 CPUs busy at a little over half of its own time, so it stays off the critical path
# (docs/benchmarks.md).
CPUS_PER_WORKER = 4


def default_workers(cpus: int) -> int:
    """One server process per CPUS_PER_WORKER usable CPUs: one queue per process, and a
    request waits behind the requests of its own process only."""
    return max(1, -(-cpus // CPUS_PER_WORKER))


def plan(cpus: int, workers: int | None = None) -> ServingPlan:
    """The layout for `cpus` usable CPUs; `workers` overrides the process count.

    Each process runs one single-threaded forward pass per CPU of its share at once: ONNX
    Runtime's intra-op threads meet at a barrier after every operator, and under load the
    decoders and the event loop keep taking CPUs from them, so parallel single-threaded passes
    do more per CPU second than one pass over several threads (measured: docs/benchmarks.md).
    """
    count = workers or default_workers(cpus)
    share = max(1, cpus // count)
    return ServingPlan(
        cpus=cpus,
        workers=count,
        lanes_per_worker=share,
        threads_per_lane=1,
        # One decoder per CPU of its share, plus one that stays free while the others chew on
        # hostile files.
        decoders_per_worker=share + 1,
    )

"""The serving layout: usable CPUs from affinity and cgroup quotas, and the plan built on them."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from visinspect.capacity import (
    BACKGROUND_NICENESS,
    cgroup_cpu_quota,
    plan,
    run_in_background,
    usable_cpus,
)
from visinspect.config import Settings


def _cgroup_v2(tmp_path: Path, cpu_max: str) -> Path:
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    return tmp_path


def _cgroup_v1(tmp_path: Path, quota_us: int, period_us: int) -> Path:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{period_us}\n")
    return tmp_path


@pytest.mark.parametrize(
    ("cpu_max", "quota"),
    [("max 100000", None), ("150000 100000", 1.5), ("50000 100000", 0.5), ("400000 100000", 4.0)],
)
def test_cgroup_v2_quota(tmp_path: Path, cpu_max: str, quota: float | None) -> None:
    assert cgroup_cpu_quota(_cgroup_v2(tmp_path, cpu_max)) == quota


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(_cgroup_v1(tmp_path, 250000, 100000)) == 2.5
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # v1 for "no limit"
    assert cgroup_cpu_quota(tmp_path) is None


def test_no_cgroup_files_means_no_quota(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path) is None
    assert usable_cpus(tmp_path) == len(os.sched_getaffinity(0))


def test_a_quota_caps_the_affinity_rounded_up(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(_cgroup_v2(tmp_path, "50000 100000")) == 1  # half a CPU: still one
    (tmp_path / "cpu.max").write_text("150000 100000")
    assert usable_cpus(tmp_path) == min(affinity, 2)
    (tmp_path / "cpu.max").write_text("6400000 100000")  # 64 CPUs of quota on a smaller machine
    assert usable_cpus(tmp_path) == affinity


@pytest.mark.parametrize(
    ("cpus", "workers", "expected"),
    [
        (1, None, (1, 1, 1, 2)),
        (2, None, (1, 2, 1, 3)),
        (4, None, (1, 4, 1, 5)),
        (6, None, (2, 3, 1, 4)),
        (16, None, (4, 4, 1, 5)),
        (2, 2, (2, 1, 1, 2)),
        (8, 3, (3, 2, 1, 3)),
        (1, 4, (4, 1, 1, 2)),  # more processes than CPUs: each still gets one lane
    ],
)
def test_plan(cpus: int, workers: int | None, expected: tuple[int, int, int, int]) -> None:
    layout = plan(cpus, workers)
    assert (
        layout.workers,
        layout.lanes_per_worker,
        layout.threads_per_lane,
        layout.decoders_per_worker,
    ) == expected


def test_settings_follow_the_plan_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORKERS", "INFERENCE_LANES", "TORCH_THREADS", "DECODE_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    layout = plan(usable_cpus())
    default = Settings()
    assert (default.inference_lanes, default.torch_threads, default.decode_workers) == (
        layout.lanes_per_worker,
        layout.threads_per_lane,
        layout.decoders_per_worker,
    )
    two = plan(usable_cpus(), 2)
    assert Settings(workers=2).inference_lanes == two.lanes_per_worker
    monkeypatch.setenv("TORCH_THREADS", "3")
    monkeypatch.setenv("INFERENCE_LANES", "1")
    explicit = Settings()
    assert (explicit.torch_threads, explicit.inference_lanes) == (3, 1)


def test_background_work_runs_below_the_event_loop() -> None:
    """Model threads and decoders call run_in_background: their thread's nice level rises."""
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen: list[int] = []

    def work() -> None:
        run_in_background()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == [min(19, own + BACKGROUND_NICENESS)]
    assert (
        os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own
    )  # this thread as it was

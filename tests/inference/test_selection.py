"""MODEL_PRECISION=auto: the int8 kernels chosen per CPU, the fastest graph that meets its bar
chosen per machine, measured again at start on a CPU the build did not measure, and `make run`
building what the settings ask."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from visinspect.cli import model as model_cli
from visinspect.cli.model import is_up_to_date
from visinspect.config import Precision, Settings
from visinspect.inference import classifier as classifier_module
from visinspect.inference.artifact import Candidate, read_manifest
from visinspect.inference.classifier import load_classifier
from visinspect.inference.cpu import Cpu, Int8Kernels, parse_cpuinfo, this_cpu
from visinspect.inference.selection import MIN_SPEEDUP, choose

AVX2_ONLY = Cpu("AMD EPYC 7B13", ("avx2",))
VNNI = Cpu("Intel(R) Xeon(R) Platinum 8481C", ("avx2", "avx512f", "avx512_vnni", "amx_int8"))


def settings(model_dir: Path, **values: Any) -> Settings:
    return Settings(_env_file=None, model_dir=model_dir, **values)  # type: ignore[call-arg]


def candidate(precision: str, ms: float | None, meets_bar: bool = True) -> Candidate:
    return Candidate(
        precision=Precision(precision),
        kernels="exact" if precision == "int8" else None,
        meets_bar=meets_bar,
        ms_per_image_batch1=ms,
        ms_per_image_batch8=ms,
    )


def test_cpuinfo_decides_the_int8_kernels() -> None:
    avx2 = parse_cpuinfo(
        "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx2 fma\n"
    )
    assert avx2 == Cpu("AMD EPYC 7B13", ("avx2",))
    assert avx2.int8_kernels is Int8Kernels.EXACT  # u8s8 would saturate its 16-bit sums
    vnni = parse_cpuinfo("model name : Xeon\nflags : avx2 avx512f avx512_vnni\nflags : other\n")
    assert vnni.flags == ("avx2", "avx512f", "avx512_vnni")
    assert vnni.int8_kernels is Int8Kernels.U8S8
    assert parse_cpuinfo("model name : Ryzen\nflags : avx2 avx_vnni\n").int8_kernels == "u8s8"


def test_the_fastest_graph_that_meets_its_bar_is_chosen() -> None:
    chosen = choose([candidate("fp32", 6.5), candidate("int8", 3.3)], VNNI, 1, "build")
    assert chosen.precision is Precision.INT8
    assert chosen.reason == "1.97x fp32's speed at batch 8"
    assert (chosen.cpu, chosen.cpu_flags) == (VNNI.model, list(VNNI.flags))


def test_a_cpu_without_vnni_serves_fp32_when_exact_int8_is_slower() -> None:
    chosen = choose([candidate("fp32", 6.5), candidate("int8", 8.3)], AVX2_ONLY, 1, "start")
    assert chosen.precision is Precision.FP32
    assert chosen.kernels is None
    assert "int8 (exact kernels) is 0.78x fp32's speed" in chosen.reason


def test_a_graph_below_its_bar_or_a_tie_is_never_served() -> None:
    below = choose([candidate("fp32", 6.5), candidate("int8", 1.0, False)], VNNI, 1, "build")
    assert below.precision is Precision.FP32
    assert below.reason == "int8 misses its agreement bar"
    tie = 6.5 / (MIN_SPEEDUP - 0.01)
    assert (
        choose([candidate("fp32", 6.5), candidate("int8", tie)], VNNI, 1, "x").precision == "fp32"
    )
    with pytest.raises(ValueError, match="fp32 must be measured"):
        choose([candidate("int8", 3.0)], VNNI, 1, "build")


@pytest.fixture
def passing_int8(tmp_path: Path, int8_artifact: Path) -> Path:
    """The module's int8 artifact with its int8 graph recorded as meeting its bar (it was
    measured on 12 photos only): what a full build on hundreds gives, for the choice at start."""
    copy = tmp_path / "model"
    shutil.copytree(int8_artifact, copy)
    manifest_path = copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["graphs"]["int8"]["agreement"]["meets_bar"] = True
    manifest_path.write_text(json.dumps(manifest))
    return copy


def test_another_cpu_is_measured_at_start_and_without_vnni_serves_fp32(
    passing_int8: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The artifact was measured on this machine; a stubbed AVX2-only CPU is another one, so the
    service times fp32 against int8 on the exact kernels it would use there, and keeps fp32
    (exact int8 measured 0.79-1.06x fp32 on the CPUs here, below MIN_SPEEDUP)."""
    monkeypatch.setattr(classifier_module, "this_cpu", lambda: AVX2_ONLY)
    classifier = load_classifier(settings(passing_int8))
    selection = classifier.selection
    assert selection is not None
    assert (selection.measured_at, selection.cpu) == ("start", AVX2_ONLY.model)
    timed = {c.precision: c for c in selection.candidates}
    assert timed[Precision.INT8].kernels == "exact"
    assert timed[Precision.INT8].ms_per_image_batch8 is not None
    assert classifier.identity.precision == "fp32", selection.reason
    assert "exact kernels" in selection.reason


def test_the_builds_choice_is_served_on_the_cpu_it_was_measured_on(
    passing_int8: Path, int8_artifact: Path
) -> None:
    recorded = read_manifest(int8_artifact).selection
    assert recorded.fits(this_cpu(), recorded.threads)
    classifier = load_classifier(settings(passing_int8, torch_threads=recorded.threads))
    assert classifier.selection == recorded  # not measured again


def test_make_run_builds_what_the_settings_ask(
    model_artifact: Path, int8_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make run` is `visinspect model build --if-missing`, then serve: an artifact without the
    asked precision is rebuilt with it, instead of failing at start."""
    fp32_only = settings(model_artifact)
    assert is_up_to_date(fp32_only, {Precision.FP32})
    assert not is_up_to_date(fp32_only, {Precision.FP32, Precision.INT8})
    assert not is_up_to_date(fp32_only, {Precision.FP32, Precision.AUTO})  # int8 never tried
    assert is_up_to_date(settings(int8_artifact), {Precision.FP32, Precision.AUTO})

    asked: list[set[Precision]] = []
    from visinspect.offline import build as build_module

    def record(settings: Settings, precisions: set[Precision], *args: Any) -> None:
        asked.append(precisions)
        raise build_module.BuildFailed("recorded", "nothing")

    monkeypatch.setattr(build_module, "build_artifact", record)
    args = argparse.Namespace(precision=[], if_missing=True, photos=[], accept_low_agreement=False)
    for precision in ("int8", "auto"):
        with pytest.raises(model_cli.StartupFailed, match="recorded"):
            model_cli.build(settings(model_artifact, model_precision=precision), args)
    assert asked == [
        {Precision.FP32, Precision.INT8},
        {Precision.FP32, Precision.AUTO},
    ]


def test_auto_without_enough_photos_builds_fp32_and_says_why(tmp_path: Path) -> None:
    """For `auto`, an int8 graph that cannot be measured is not a failed build: the manifest
    records why it was not built, and `make run` does not try again on every start."""
    from tests.support import PHOTOS
    from visinspect.offline.build import build_artifact
    from visinspect.offline.photos import PhotoSets, find_photos

    everything = find_photos([PHOTOS], installed=False)
    few = PhotoSets(everything.calibration[:4], everything.evaluation[:4], everything.sources)
    built = settings(tmp_path / "model")
    manifest = build_artifact(built, {Precision.FP32, Precision.AUTO}, few)
    assert set(manifest.graphs) == {Precision.FP32}
    (int8,) = [c for c in manifest.selection.candidates if c.precision is Precision.INT8]
    assert int8.note.startswith("not built: 4 evaluation photographs")
    assert manifest.selection.precision is Precision.FP32
    assert manifest.selection.reason.startswith("int8 not built: 4 evaluation photographs")
    assert is_up_to_date(built, {Precision.FP32, Precision.AUTO})


def test_int8_asked_explicitly_is_built_even_where_auto_recorded_it_as_skipped(
    tmp_path: Path,
) -> None:
    """`model build --precision int8 --if-missing` under auto: an int8 that auto only recorded
    as not built is not up to date."""
    from tests.support import PHOTOS
    from visinspect.offline.build import build_artifact
    from visinspect.offline.photos import PhotoSets, find_photos

    everything = find_photos([PHOTOS], installed=False)
    few = PhotoSets(everything.calibration[:4], everything.evaluation[:4], everything.sources)
    built = settings(tmp_path / "model")
    build_artifact(built, {Precision.FP32, Precision.AUTO}, few)
    assert is_up_to_date(built, {Precision.FP32, Precision.AUTO})
    assert not is_up_to_date(built, {Precision.FP32, Precision.AUTO, Precision.INT8})


def test_an_upgrade_rebuilds_an_int8_graph_made_by_another_recipe(
    int8_artifact: Path, tmp_path: Path
) -> None:
    """`make run` after an upgrade: an int8 graph whose manifest records another recipe (here,
    one from before bias correction) is stale, so the better graph is built."""
    from visinspect.offline.photos import PhotoSets

    photos = PhotoSets([], [], [])
    copy = tmp_path / "model"
    shutil.copytree(int8_artifact, copy)
    assert is_up_to_date(settings(copy), {Precision.FP32, Precision.AUTO}, photos)
    path = copy / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["graphs"]["int8"]["quantization"]["bias_correction"]
    path.write_text(json.dumps(manifest))
    assert not is_up_to_date(settings(copy), {Precision.FP32, Precision.AUTO}, photos)


def test_int8_skipped_for_lack_of_photos_is_built_once_they_are_there(tmp_path: Path) -> None:
    """`make run`, then `make photos`: the next `make run` builds the int8 graph that the first
    could not measure (and without the photos, it does not try again)."""
    from tests.support import PHOTOS
    from visinspect.offline.build import build_artifact
    from visinspect.offline.photos import INT8_MIN_EVALUATION_PHOTOS, PhotoSets, find_photos

    everything = find_photos([PHOTOS], installed=False)
    few = PhotoSets(everything.calibration[:4], everything.evaluation[:4], everything.sources)
    built = settings(tmp_path / "model")
    build_artifact(built, {Precision.FP32, Precision.AUTO}, few)
    assert is_up_to_date(built, {Precision.FP32, Precision.AUTO}, few)
    enough = PhotoSets([], everything.evaluation[:1] * INT8_MIN_EVALUATION_PHOTOS, [])
    assert enough.measure_int8
    assert not is_up_to_date(built, {Precision.FP32, Precision.AUTO}, enough)

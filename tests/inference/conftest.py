"""The int8 artifact, built once per test session for the artifact and selection tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import PHOTOS
from visinspect.config import Precision, Settings
from visinspect.offline.build import BuildFailed, build_artifact
from visinspect.offline.photos import PhotoSets, find_photos


@pytest.fixture(scope="session")
def int8_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a few photographs (a quick build; the real one calibrates on hundreds,
    docs/model.md), so its int8 graph cannot meet its bar and must be accepted explicitly."""
    directory = tmp_path_factory.mktemp("int8") / "model"
    settings = Settings(_env_file=None, model_dir=directory)  # type: ignore[call-arg]
    everything = find_photos([PHOTOS], installed=False)
    few = PhotoSets(everything.calibration[:12], everything.evaluation[:12], everything.sources)
    with pytest.raises(BuildFailed, match="evaluation photographs"):
        build_artifact(settings, {Precision.INT8}, few)
    build_artifact(settings, {Precision.INT8}, few, accept_low_agreement=True)
    return directory

"""The deployment files say what the code does: the image's hash-locked requirements hold
pyproject.toml's pins (and the versions the tests ran on), and the Kubernetes manifests keep
their promises (no replicas beside the HPA, a per-release migration Job, room for the spool, a
termination grace longer than the drain, images pinned). No cluster is needed to check these."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCKS = ROOT / "docker" / "requirements"


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.split("[")[0]).lower()


def locked(path: Path) -> dict[str, str]:
    """name -> version of every requirement in a `uv pip compile --generate-hashes` file, after
    checking that each carries at least one hash."""
    text = path.read_text()
    entries = re.findall(
        r"(?m)^([A-Za-z0-9][A-Za-z0-9._\[\]-]*)==([^\s;]+)(?: ;[^\\\n]*)?((?:\s*\\\n\s+--hash=sha256:[0-9a-f]{64})+)",
        text,
    )
    assert len(entries) == len(re.findall(r"(?m)^[A-Za-z0-9]", text)), (
        f"{path.name}: an entry without a hash"
    )
    return {_normal(name): pinned for name, pinned, _ in entries}


def pins(requirements: list[str]) -> dict[str, str]:
    return {_normal(r.split("==")[0]): r.split("==")[1] for r in requirements}


@pytest.mark.parametrize(
    ("lock", "groups"),
    [("serve.txt", ["dependencies", "build"]), ("model.txt", ["dependencies", "build", "model"])],
)
def test_the_image_lock_holds_every_pin_of_pyproject(lock: str, groups: list[str]) -> None:
    project = PROJECT["project"]
    wanted: dict[str, str] = {}
    for group in groups:
        wanted |= pins(
            project["dependencies"]
            if group == "dependencies"
            else PROJECT["build-system"]["requires"]
            if group == "build"
            else project["optional-dependencies"]["model"]
        )
    if "torch" in wanted:
        wanted["torch"] += "+cpu"  # the CPU build; PyPI's torch of that version is CUDA's
    got = locked(LOCKS / lock)
    assert {name: got.get(name) for name in wanted} == wanted, "run `make lock`"


def test_the_image_serves_on_the_versions_the_tests_ran_on() -> None:
    """Every locked serving requirement installed here is installed at its locked version."""
    different = {}
    for name, pinned in locked(LOCKS / "serve.txt").items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue  # another platform's requirement (the lock is universal)
        if installed != pinned:
            different[name] = (installed, pinned)
    assert different == {}, "installed vs locked; run `make lock`, then reinstall"

"""The deployment files say what the code does: the image's hash-locked requirements hold
pyproject.toml's pins (and the versions the tests ran on), and the Kubernetes manifests keep
their promises (no replicas beside the HPA, a per-release migration Job, room for the spool, a
termination grace longer than the drain, images pinned). No cluster is needed to check these."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pytest
import yaml
from scripts.release import job_name, package_version

from visinspect.capacity import plan
from visinspect.cli.serve import DRAIN_TIMEOUT_S
from visinspect.config import Settings

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


# --- Kubernetes -------------------------------------------------------------------------------

K8S = ROOT / "deploy" / "k8s"


def manifest(relative: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((K8S / relative).read_text())
    return document


def config_env() -> dict[str, str]:
    lines = (K8S / "config.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def pod_specs() -> dict[str, dict[str, Any]]:
    return {
        "deployment": manifest("deployment.yaml")["spec"]["template"]["spec"],
        "migrate job": manifest("migrate/job.yaml")["spec"]["template"]["spec"],
        "images cleanup": manifest("images-cleanup-cronjob.yaml")["spec"]["jobTemplate"]["spec"][
            "template"
        ]["spec"],
        "history maintenance": manifest("history-maintenance-cronjob.yaml")["spec"]["jobTemplate"][
            "spec"
        ]["template"]["spec"],
    }


def test_the_configmap_holds_only_real_settings_with_valid_values() -> None:
    values = config_env()
    unknown = {key for key in values if key.lower() not in Settings.model_fields}
    assert unknown == set()
    settings = Settings(
        _env_file=None,
        database_url="postgresql://u@db/v",
        **{k.lower(): v for k, v in values.items()},
    )  # type: ignore[call-arg]
    assert settings.migrate_on_start is False  # the migration Job owns the schema


def test_the_autoscaler_alone_sets_the_replica_count() -> None:
    hpa = manifest("hpa.yaml")
    assert hpa["spec"]["scaleTargetRef"]["name"] == manifest("deployment.yaml")["metadata"]["name"]
    assert "replicas" not in manifest("deployment.yaml")["spec"]


def test_each_release_runs_its_own_migration_job_on_the_same_image() -> None:
    job = manifest("migrate/job.yaml")
    assert job["metadata"]["name"] == job_name(package_version())
    images = [manifest(k)["images"] for k in ("kustomization.yaml", "migrate/kustomization.yaml")]
    assert images[0] == images[1]
    (migrate,) = job["spec"]["template"]["spec"]["containers"]
    assert migrate["command"] == ["visinspect", "db", "upgrade"]
    env = {item["name"]: item["value"] for item in migrate["env"]}
    assert env["DATABASE_APP_ROLE"]  # the pods' role gets rows, not the schema
    assert [s["secretRef"]["name"] for s in migrate["envFrom"]] == ["visinspect-db-migrate"]


def test_a_pod_outlives_its_drain() -> None:
    spec = pod_specs()["deployment"]
    (api,) = spec["containers"]
    pause = api["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = float(config_env()["SHUTDOWN_GRACE_S"])
    assert pause >= 5  # endpoints are removed while the pod still answers
    assert spec["terminationGracePeriodSeconds"] > pause + grace + DRAIN_TIMEOUT_S
    assert int(config_env()["KEEP_ALIVE_S"]) > 60  # above load balancers' idle timeouts


def test_tmp_holds_every_upload_the_pod_may_be_parsing() -> None:
    """Multipart parts above 1 MiB spool to /tmp; an emptyDir over its limit evicts the pod."""
    spec = pod_specs()["deployment"]
    (api,) = spec["containers"]
    cpus = int(api["resources"]["limits"]["cpu"])
    values = config_env()
    spool = (
        plan(cpus).workers
        * int(values["MAX_CONCURRENT_REQUESTS"])
        * int(values["MAX_UPLOAD_BYTES"])
    )
    (tmp,) = [v for v in spec["volumes"] if v["name"] == "tmp"]
    size = tmp["emptyDir"]["sizeLimit"]
    assert size.endswith("Gi")
    assert int(size.removesuffix("Gi")) << 30 > spool


@pytest.mark.parametrize(
    "name", ["deployment", "migrate job", "images cleanup", "history maintenance"]
)
def test_pods_are_locked_down(name: str) -> None:
    spec = pod_specs()[name]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["securityContext"]["runAsNonRoot"] is True
    for container in spec.get("initContainers", []) + spec["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert container["resources"]["limits"]["memory"]


def test_a_budget_and_a_network_policy_cover_the_pods() -> None:
    labels = manifest("deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    budget = manifest("pdb.yaml")["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    policy = manifest("networkpolicy.yaml")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    kustomization = manifest("kustomization.yaml")
    assert {"pdb.yaml", "networkpolicy.yaml"} <= set(kustomization["resources"])
    assert kustomization["configMapGenerator"] == [{"name": "visinspect", "envs": ["config.env"]}]


def test_the_release_script_pins_both_kustomizations_by_digest(tmp_path: Path) -> None:
    shutil.copytree(K8S, tmp_path / "deploy" / "k8s")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    digest = "sha256:" + "ab" * 32
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "release.py"),
            "--root",
            str(tmp_path),
            "--image",
            f"registry.example/vi@{digest}",
            "--version",
            "9.8.7",
        ],
        check=True,
        capture_output=True,
    )
    for relative in ("kustomization.yaml", "migrate/kustomization.yaml"):
        document = yaml.safe_load((tmp_path / "deploy" / "k8s" / relative).read_text())
        assert document["images"] == [
            {"name": "visinspect", "newName": "registry.example/vi", "digest": digest}
        ]
        assert document["resources"]  # the rest of the file is kept
    job = yaml.safe_load((tmp_path / "deploy" / "k8s" / "migrate" / "job.yaml").read_text())
    assert job["metadata"]["name"] == "visinspect-migrate-9-8-7"
    refused = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "release.py"),
            "--root",
            str(tmp_path),
            "--image",
            "registry.example/vi:latest",
        ],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2
    assert "sha256" in refused.stderr


# --- images -----------------------------------------------------------------------------------

DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def test_every_base_image_is_pinned_by_digest() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    (base,) = re.findall(r"(?m)^ARG PYTHON_IMAGE=(\S+)$", dockerfile)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    images = [base] + [s["image"] for n, s in compose["services"].items() if n != "api"]
    assert images
    assert [i for i in images if not DIGEST.search(i)] == []


def test_the_pods_and_the_cleanup_share_the_kept_images() -> None:
    """IMAGE_STORE_DIR is the shared claim's mount in every pod and in the CronJob, the claim
    is larger than the store's bound, and the CronJob runs the cleanup command."""
    values = config_env()
    claim = manifest("images-pvc.yaml")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every pod, on any node
    size = claim["spec"]["resources"]["requests"]["storage"]
    assert int(size.removesuffix("Gi")) << 30 > int(values["IMAGE_STORE_MAX_BYTES"])
    for name in ("deployment", "images cleanup"):
        spec = pod_specs()[name]
        (volume,) = [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        (container,) = spec["containers"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts[volume["name"]] == values["IMAGE_STORE_DIR"]
        assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]
    (cleanup,) = pod_specs()["images cleanup"]["containers"]
    assert cleanup["command"] == ["visinspect", "images", "cleanup"]
    kustomization = manifest("kustomization.yaml")
    assert {"images-pvc.yaml", "images-cleanup-cronjob.yaml"} <= set(kustomization["resources"])


def test_the_history_is_maintained_by_the_schema_owner() -> None:
    """Partitions need the table's owner: the CronJob uses the migration Job's Secret, and the
    pods (whose role cannot create tables) leave it to the CronJob."""
    (maintain,) = pod_specs()["history maintenance"]["containers"]
    assert maintain["command"] == ["visinspect", "db", "maintain"]
    secrets = [s["secretRef"]["name"] for s in maintain["envFrom"] if "secretRef" in s]
    assert secrets == ["visinspect-db-migrate"]
    assert config_env()["HISTORY_MAINTENANCE_INTERVAL_S"] == "0"
    assert "history-maintenance-cronjob.yaml" in manifest("kustomization.yaml")["resources"]

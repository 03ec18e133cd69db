"""Pin the Kubernetes manifests to one release's image, by digest.

  python scripts/release.py --image REGISTRY/visinspect@sha256:DIGEST [--version X.Y.Z]

Writes the image (repository and digest) into deploy/k8s/kustomization.yaml and
deploy/k8s/migrate/kustomization.yaml, and names the migration Job after the release
(`visinspect-migrate-X-Y-Z`; the version defaults to the package's), so that each release runs
its own Job. Get the digest from your registry after the push, e.g.
`docker buildx imagetools inspect REGISTRY/visinspect:X.Y.Z` or `crane digest ...`.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
KUSTOMIZATIONS = ["deploy/k8s/kustomization.yaml", "deploy/k8s/migrate/kustomization.yaml"]
JOB = "deploy/k8s/migrate/job.yaml"
_IMAGE = re.compile(r"^(?P<name>[^@\s]+)@(?P<digest>sha256:[0-9a-f]{64})$")


def job_name(version: str) -> str:
    return "visinspect-migrate-" + version.replace(".", "-").replace("+", "-").lower()


def package_version(root: Path = ROOT) -> str:
    with (root / "pyproject.toml").open("rb") as file:
        version: str = tomllib.load(file)["project"]["version"]
    return version


def pin(path: Path, name: str, digest: str) -> None:
    """Replace the `images:` entry of `visinspect`, keeping the file's comments above it."""
    text = path.read_text()
    head, _, _ = text.partition("images:\n")
    entry = [{"name": "visinspect", "newName": name, "digest": digest}]
    path.write_text(head + yaml.safe_dump({"images": entry}, sort_keys=False))


def rename_job(job: Path, version: str) -> None:
    text = job.read_text()
    job.write_text(
        re.sub(r"(?m)^  name: visinspect-migrate-\S+$", f"  name: {job_name(version)}", text)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True, help="REPOSITORY@sha256:DIGEST")
    parser.add_argument("--version", help="default: the package's version in pyproject.toml")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to edit")
    args = parser.parse_args()
    version = args.version or package_version(args.root)
    match = _IMAGE.match(args.image)
    if match is None:
        print("release: --image must be REPOSITORY@sha256:<64 hex digits>", file=sys.stderr)
        return 2
    for path in KUSTOMIZATIONS:
        pin(args.root / path, match["name"], match["digest"])
    rename_job(args.root / JOB, version)
    print(f"pinned {match['name']}@{match['digest'][:19]}...; migration Job {job_name(version)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Audit the installed packages against PyPI's vulnerability data; fail on a known vulnerability
that has a fix.

  python scripts/audit.py            (make audit)

pip-audit cannot work from these machines: they reach PyPI's index and its per-project JSON
(`/pypi/<name>/json`) but not the per-version JSON pip-audit reads (404) nor OSV (no DNS). The
per-project JSON carries the `vulnerabilities` of the project's newest release (PyPI takes them from
the same advisory database, OSV/PyPA, that pip-audit uses). So every installed package whose version
is the newest release is audited fully; any other is listed as not audited, with its newest
version, so that a pin falling behind is visible. Exit 1 only for a vulnerability with a fix.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
from packaging.version import Version


def installed() -> list[tuple[str, str]]:
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "list", "--format", "json", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [(p["name"], p["version"]) for p in json.loads(listing)]


def project(client: httpx.Client, name: str) -> dict[str, object] | None:
    for _ in range(3):
        try:
            response = client.get(f"https://pypi.org/pypi/{name}/json")
        except httpx.HTTPError:
            continue
        if response.status_code == 200:
            data: dict[str, object] = response.json()
            return data
        if response.status_code == 404:
            return None
    return None


def main() -> int:
    packages = installed()
    with httpx.Client(timeout=20) as client, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda p: project(client, p[0]), packages))
    audited, behind, unknown, fixable, unfixed = 0, [], [], [], []
    for (name, version), data in zip(packages, answers, strict=True):
        if data is None:
            unknown.append(name)
            continue
        latest = str(data["info"]["version"])  # type: ignore[index]
        local = Version(version)
        if Version(latest) != Version(local.public):
            behind.append(f"{name} {version} (newest {latest})")
            continue
        audited += 1
        for vuln in data.get("vulnerabilities") or []:  # type: ignore[attr-defined]
            entry = (
                f"{name} {version}: {vuln['id']} fixed in {vuln.get('fixed_in') or 'nothing yet'}"
            )
            (fixable if vuln.get("fixed_in") else unfixed).append(entry)
    print(f"audited {audited} of {len(packages)} installed packages against PyPI's advisories")
    for title, items in (
        ("not audited, not the newest release", behind),
        ("not found on PyPI", unknown),
        ("known vulnerabilities without a fix", unfixed),
        ("known vulnerabilities WITH a fix", fixable),
    ):
        if items:
            print(f"{title}:\n  " + "\n  ".join(items))
    return 1 if fixable else 0


if __name__ == "__main__":
    sys.exit(main())

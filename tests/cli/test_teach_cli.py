"""`visinspect labels import`, `head train`, `head promote` and `head list` as real commands: the
import and the head changes against a real server on PostgreSQL, the training in-process on its
database."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.api.test_teaching import OBJECTS, TEXTURES
from tests.support import VISINSPECT, environment, fresh_postgres_database, serving
from visinspect.offline.photos import crops

pytestmark = pytest.mark.slow


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VISINSPECT, *args], capture_output=True, text=True, timeout=300, env=environment(**env)
    )


def test_import_a_folder_then_train_promote_and_list(tmp_path: Path, photos: Path) -> None:
    folder = tmp_path / "surfaces"
    for names, class_name in ((TEXTURES, "texture"), (OBJECTS[:2], "object")):
        (folder / class_name).mkdir(parents=True)
        for name in names:
            for i, data in enumerate(crops(photos / name)[:3]):
                (folder / class_name / f"{Path(name).stem}-{i}.png").write_bytes(data)
    (folder / "notes.txt").write_text("not a class")  # files beside the class folders: ignored
    with (
        fresh_postgres_database() as url,
        serving(url, tmp_path / "server.log", HEADS_DIR=str(tmp_path / "heads")) as (_, base),
    ):
        imported = run("labels", "import", str(folder), "--label-set", "surfaces", "--url", base)
        assert imported.returncode == 0, imported.stderr
        summary = json.loads(imported.stdout.strip().splitlines()[-1])
        assert summary["counts"] == {"object": 6, "texture": 9}
        assert "labelling into surfaces" in imported.stderr  # the progress bar

        trained = run("head", "train", "surfaces", "--by", "ci", DATABASE_URL=url)
        assert trained.returncode == 0, trained.stderr
        assert "surfaces v1" in trained.stdout
        assert "cross-validated accuracy" in trained.stdout

        head_id = httpx.get(f"{base}/label-sets/surfaces/heads").json()[0]["id"]
        promoted = run("head", "promote", str(head_id), "--url", base)
        assert promoted.returncode == 0, promoted.stderr
        assert json.loads(promoted.stdout)["status"] == "active"
        listed = run("head", "list", "surfaces", "--url", base)
        assert listed.returncode == 0, listed.stderr
        assert "active" in listed.stdout

        refused = run("head", "rollback", str(head_id), "--url", base)
        assert refused.returncode == 1
        assert "invalid_head_change" in refused.stderr
        missing = run("head", "train", "nope", DATABASE_URL=url)
        assert missing.returncode == 1
        assert "label_set_not_found" in missing.stderr

    assert run("labels", "import", str(tmp_path / "empty"), "--label-set", "x").returncode == 2

"""Teaching, end to end over HTTP on PostgreSQL: a label set, labels on classified photos, a head
trained on their kept embeddings (in a real `visinspect head train` child process), promoted,
answering with every prediction, a second version shadowed, measured, promoted and rolled back,
with the audit trail; and the refusals.

The photos are scikit-image's, and crops of them (real photographs, not noise): "texture" (brick,
grass, gravel) against "object" (coffee, the cat, the rocket, the astronaut).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from tests.support import (
    VISINSPECT,
    app_on,
    app_role_database,
    make_settings,
    process_gone,
    running_app,
    services_of,
    wait_until,
)
from visinspect.errors import ClientGone
from visinspect.offline.photos import crops

pytestmark = pytest.mark.postgres

KEY = {"X-API-Key": "alices-key-0123456"}
TEXTURES = ["brick.png", "grass.png", "gravel.png"]
OBJECTS = ["coffee.png", "chelsea.png", "rocket.jpg", "astronaut.png"]


@pytest.fixture(scope="module")
def teaching(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str]]:
    """The app as Kubernetes runs it: migrated by the owner, served by DATABASE_APP_ROLE's
    role, which may append to the history and change only a set's classes and a head's status
    (db/schema.py): every teaching step below goes through with no more than that."""
    heads_dir = tmp_path_factory.mktemp("heads")
    tmp_path_factory.getbasetemp().joinpath("heads-dir").write_text(str(heads_dir))
    with app_role_database() as (owner_url, app_url):
        settings = make_settings(
            app_url,
            api_keys="alice:alices-key-0123456, bob:bobs-key-01234567",
            heads_dir=heads_dir,
            heads_refresh_s=0.2,
            migrate_on_start=False,
        )
        with running_app(settings) as client:
            yield client, owner_url


def predict(client: TestClient, data: bytes, **params: Any) -> dict[str, Any]:
    response = client.post("/predict", files={"file": ("x.png", data)}, params=params, headers=KEY)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def label(client: TestClient, prediction_id: int, class_name: str) -> dict[str, Any]:
    response = client.post(
        f"/predictions/{prediction_id}/labels",
        json={"label_set": "surfaces", "class": class_name},
        headers=KEY,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def teach(client: TestClient, photos: Path, names: list[str], class_name: str, take: slice) -> None:
    for name in names:
        for data in crops(photos / name)[take]:
            label(client, predict(client, data)["id"], class_name)


def test_label_train_shadow_promote_rollback(
    teaching: tuple[TestClient, str], photos: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    client, url = teaching
    made = client.post(
        "/label-sets",
        json={"name": "surfaces", "classes": ["texture", "object"], "description": "test"},
        headers=KEY,
    )
    assert made.status_code == 201, made.text
    assert made.json()["created_by"] == "alice"

    # Too few labels: refused with what each class needs, before any training.
    teach(client, photos, TEXTURES, "texture", slice(0, 1))
    short = client.post("/label-sets/surfaces/heads", headers=KEY)
    assert short.status_code == 422, short.text
    assert short.json()["error"]["code"] == "too_few_labels"
    assert "object: 0" in short.json()["error"]["message"]

    # Version 1: two or three crops of each photo per class.
    teach(client, photos, TEXTURES, "texture", slice(1, 3))
    teach(client, photos, OBJECTS, "object", slice(0, 2))
    counts = client.get("/label-sets/surfaces", headers=KEY).json()["counts"]
    assert counts == {"texture": 9, "object": 8}
    trained = client.post("/label-sets/surfaces/heads", headers=KEY)
    assert trained.status_code == 201, trained.text
    v1 = trained.json()
    assert (v1["version"], v1["status"], v1["trained_by"]) == (1, "candidate", "alice")
    assert v1["metrics"]["labels"] == 17
    assert v1["metrics"]["accuracy"] >= 0.9
    assert set(v1["metrics"]["per_class"]) == {"texture", "object"}
    assert len(v1["training"]["ids_sha256"]) == 64
    heads_dir = Path(tmp_path_factory.getbasetemp().joinpath("heads-dir").read_text())
    written = heads_dir / "surfaces" / "v1"
    assert sorted(p.name for p in written.iterdir()) == ["head.npz", "manifest.json"]
    # A candidate answers nothing.
    assert predict(client, crops(photos / "brick.png")[4])["heads"] == []

    promoted = client.post(f"/heads/{v1['id']}/promote", headers=KEY)
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["status"] == "active"
    # The needs-a-person queue: the active head's undecided answers, least confident first.
    queue = client.get("/label-sets/surfaces/queue", headers=KEY)
    assert queue.status_code == 200, queue.text
    confidences = [item["confidence"] for item in queue.json()["items"]]
    assert confidences == sorted(confidences)
    # Its cursors are the history's (least confident first), naming the queue: a forged
    # non-finite one, or one of another page, is a 422.
    for forged in (
        '{"o":"needs_a_person","i":1,"c":NaN}',
        '{"o":"least_confident","i":1,"c":0.5}',
        '{"o":"needs_a_person","i":1e400,"c":0.5}',  # these two were a 500 (OverflowError,
        '{"o":"needs_a_person","i":100000000000000000000000000000,"c":0.5}',  # bigint range)
    ):
        cursor = base64.urlsafe_b64encode(forged.encode()).decode()
        refused = client.get("/label-sets/surfaces/queue", params={"cursor": cursor}, headers=KEY)
        assert (refused.status_code, refused.json()["error"]["code"]) == (422, "invalid_cursor")
    answered = predict(client, crops(photos / "gravel.png")[4])["heads"]
    assert [(a["label_set"], a["version"], a["class"]) for a in answered] == [
        ("surfaces", 1, "texture")
    ]
    assert (
        predict(client, crops(photos / "coffee.png")[4], label_set="surfaces")["heads"][0]["class"]
        == "object"
    )
    unknown = client.post(
        "/predict",
        files={"file": ("x.png", crops(photos / "coffee.png")[4])},
        params={"label_set": "nope"},
        headers=KEY,
    )
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (422, "invalid_label_set")

    # Version 2 on more labels, shadowed: answers recorded, not returned.
    teach(client, photos, TEXTURES, "texture", slice(3, 5))
    teach(client, photos, OBJECTS, "object", slice(2, 4))
    v2 = client.post("/label-sets/surfaces/heads", headers=KEY).json()
    assert v2["version"] == 2
    assert client.post(f"/heads/{v2['id']}/shadow", headers=KEY).json()["status"] == "shadow"
    answered_by_v1 = predict(client, crops(photos / "rocket.jpg")[4])
    assert [a["version"] for a in answered_by_v1["heads"]] == [1]
    recorded = _rows(
        url,
        "SELECT h.version, a.shadow FROM head_answers a JOIN heads h ON h.id = a.head_id "
        "WHERE a.prediction_id = :p ORDER BY h.version",
        p=answered_by_v1["id"],
    )
    assert [tuple(r) for r in recorded] == [(1, False), (2, True)]

    # Labels given after both were trained measure both.
    for name, class_name in [("chelsea.png", "object"), ("grass.png", "texture")]:
        label(client, predict(client, crops(photos / name)[4])["id"], class_name)
    quality = client.get("/label-sets/surfaces/quality", headers=KEY).json()
    by_version = {v["version"]: v for v in quality["versions"]}
    assert by_version[2]["labels"] == 2
    assert by_version[2]["status"] == "shadow"
    assert by_version[1]["labels"] >= 2
    assert by_version[2]["beats_active"] is None  # fewer shared labels than the minimum

    # Promote v2 (v1 retired), then roll back (v1 active again, v2 retired): audited.
    bob = {"X-API-Key": "bobs-key-01234567"}
    assert client.post(f"/heads/{v2['id']}/promote", headers=bob).json()["status"] == "active"
    assert client.get(f"/heads/{v1['id']}", headers=KEY).json()["status"] == "retired"
    assert [a["version"] for a in predict(client, crops(photos / "brick.png")[4])["heads"]] == [2]
    rolled = client.post(f"/heads/{v2['id']}/rollback", headers=bob)
    assert rolled.status_code == 200, rolled.text
    assert (rolled.json()["id"], rolled.json()["status"]) == (v1["id"], "active")
    assert client.get(f"/heads/{v2['id']}", headers=KEY).json()["status"] == "retired"
    events = client.get("/label-sets/surfaces/events", headers=KEY).json()
    assert [(e["action"], e["head_id"], e["actor"]) for e in events[:4]] == [
        ("rollback", v1["id"], "bob"),
        ("retire", v2["id"], "bob"),
        ("promote", v2["id"], "bob"),
        ("retire", v1["id"], "bob"),
    ]
    assert events[0]["replaced_head_id"] == v2["id"]
    again = client.post(f"/heads/{v1['id']}/rollback", headers=KEY)
    assert (again.status_code, again.json()["error"]["code"]) == (422, "invalid_head_change")


def test_a_broken_head_is_skipped_and_counted(
    teaching: tuple[TestClient, str], photos: Path
) -> None:
    """A head whose artifact no longer matches its digest never fails a prediction."""
    client, url = teaching
    sets = {s["name"] for s in client.get("/label-sets", headers=KEY).json()}
    if "surfaces" not in sets:
        pytest.skip("needs the flow test's label set")
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE heads SET artifact = 'broken'::bytea WHERE status = 'active'")
        )
    engine.dispose()
    registry = services_of(client).heads.registry
    registry.generation = -1  # as after a change: reload what the database holds
    client.portal.call(registry.refresh)  # type: ignore[union-attr]
    body = predict(client, crops(photos / "coffee.png")[4])
    assert body["heads"] == []
    metrics = client.get("/metrics").text
    assert 'visinspect_head_failures_total{reason="broken_artifact"}' in metrics


def test_label_set_refusals(teaching: tuple[TestClient, str], photos: Path) -> None:
    client, _ = teaching
    bad_name = client.post(
        "/label-sets", json={"name": "Bad Name", "classes": ["a", "b"]}, headers=KEY
    )
    assert bad_name.status_code == 422
    made = client.post("/label-sets", json={"name": "grow", "classes": ["a", "b"]}, headers=KEY)
    assert made.status_code == 201, made.text
    twice = client.post("/label-sets", json={"name": "grow", "classes": ["a", "b"]}, headers=KEY)
    assert (twice.status_code, twice.json()["error"]["code"]) == (422, "invalid_label_set")
    grown = client.post("/label-sets/grow/classes", json={"classes": ["c", "a"]}, headers=KEY)
    assert grown.json()["classes"] == ["a", "b", "c"]  # appended; none renamed or dropped
    record = predict(client, crops(photos / "coffee.png")[0])
    wrong_class = client.post(
        f"/predictions/{record['id']}/labels", json={"label_set": "grow", "class": "z"}, headers=KEY
    )
    assert (wrong_class.status_code, wrong_class.json()["error"]["code"]) == (
        422,
        "invalid_label_set",
    )
    no_set = client.post(
        f"/predictions/{record['id']}/labels", json={"label_set": "nope", "class": "a"}, headers=KEY
    )
    assert (no_set.status_code, no_set.json()["error"]["code"]) == (404, "label_set_not_found")
    no_prediction = client.post(
        "/predictions/999999/labels", json={"label_set": "grow", "class": "a"}, headers=KEY
    )
    assert no_prediction.status_code == 404
    # Labels are only added: the latest counts.
    label_url = f"/predictions/{record['id']}/labels"
    client.post(label_url, json={"label_set": "grow", "class": "a"}, headers=KEY)
    client.post(label_url, json={"label_set": "grow", "class": "b"}, headers=KEY)
    assert client.get("/label-sets/grow", headers=KEY).json()["counts"] == {"a": 0, "b": 1, "c": 0}
    assert client.post("/label-sets/nope/heads", headers=KEY).status_code == 404
    assert client.post("/heads/999999/promote", headers=KEY).status_code == 404
    assert client.get("/label-sets", headers={}).status_code == 401


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_invisible_class_names_are_refused(
    database: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A lone surrogate was stored on SQLite and then failed every read of every set (500s, after
    restarts too; a reset connection on PostgreSQL); bidi overrides and zero-width characters
    were accepted and shown. Each is a 422 now, and the sets stay readable."""
    with app_on(database, tmp_path_factory, "names") as client:
        for escaped in ("\\ud800", "\\udfff", "\\u202egnp.exe", "a\\u200bb", "\\u2066x"):
            body = f'{{"name": "odd", "classes": ["ok", "{escaped}"]}}'
            made = client.post(
                "/label-sets", content=body, headers={"Content-Type": "application/json"}
            )
            assert (made.status_code, made.json()["error"]["code"]) == (
                422,
                "invalid_label_set",
            ), escaped
            grown = client.post(
                "/label-sets/kept/classes",
                content=f'{{"classes": ["{escaped}"]}}',
                headers={"Content-Type": "application/json"},
            )
            assert grown.status_code in (404, 422), escaped
        listed = client.get("/label-sets")
        assert (listed.status_code, listed.json()) == (200, [])
        made = client.post("/label-sets", json={"name": "kept", "classes": ["ok", "défaut 🙂"]})
        assert made.status_code == 201, made.text  # letters and emoji are names
        grown = client.post(
            "/label-sets/kept/classes",
            content='{"classes": ["\\ud800"]}',
            headers={"Content-Type": "application/json"},
        )
        assert grown.status_code == 422
        assert client.get("/label-sets/kept").json()["classes"] == ["ok", "défaut 🙂"]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_label_sets_are_capped_and_listed_a_page_at_a_time(
    database: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Sets were unbounded and listed whole (2,000 sets of 1,000 classes: 272 MB a request, six
    at once took the server to 2.8 GB). Now MAX_LABEL_SETS caps them and the list is paged."""
    with app_on(database, tmp_path_factory, "capped", max_label_sets=3) as client:
        for name in ("c-set", "a-set", "b-set"):
            made = client.post("/label-sets", json={"name": name, "classes": ["ok", "bad"]})
            assert made.status_code == 201, made.text
        over = client.post("/label-sets", json={"name": "d-set", "classes": ["ok", "bad"]})
        assert (over.status_code, over.json()["error"]["code"]) == (422, "too_many_label_sets")
        first = client.get("/label-sets", params={"limit": 2})
        assert [s["name"] for s in first.json()] == ["a-set", "b-set"]
        assert first.links["next"]["url"].endswith("/label-sets?limit=2&after=b-set")
        following = client.get(first.links["next"]["url"])
        assert [s["name"] for s in following.json()] == ["c-set"]
        assert "link" not in following.headers
        assert client.get("/label-sets", params={"limit": 501}).status_code == 422
        # Counted in one query for the page, as the set alone counts them.
        one = client.get("/label-sets/a-set").json()
        assert first.json()[0]["counts"] == one["counts"] == {"ok": 0, "bad": 0}


def test_a_head_of_another_base_model_is_refused(
    teaching: tuple[TestClient, str], photos: Path
) -> None:
    """Training on embeddings another base model made, and promoting a head trained on one, are
    422 `base_model_differs`: a head reads the embedding of the model it was trained on."""
    client, url = teaching
    assert (
        client.post(
            "/label-sets", json={"name": "other", "classes": ["texture", "object"]}, headers=KEY
        ).status_code
        == 201
    )
    ids = []
    for names, class_name in ((TEXTURES, "texture"), (OBJECTS, "object")):
        for name in names:
            for data in crops(photos / name)[:2]:
                prediction = predict(client, data)
                ids.append(prediction["id"])
                client.post(
                    f"/predictions/{prediction['id']}/labels",
                    json={"label_set": "other", "class": class_name},
                    headers=KEY,
                )
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE prediction_embeddings SET model_version = 'sha256:another' "
                "WHERE prediction_id = ANY(:ids)"
            ),
            {"ids": ids},
        )
    refused = client.post("/label-sets/other/heads", headers=KEY)
    assert (refused.status_code, refused.json()["error"]["code"]) == (422, "base_model_differs")
    with engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE prediction_embeddings SET model_version = :v WHERE prediction_id = ANY(:ids)"
            ),
            {"ids": ids, "v": services_of(client).heads.registry.model_version},
        )
    head = client.post("/label-sets/other/heads", headers=KEY).json()
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE heads SET base_model_version = 'sha256:another' WHERE id = :id"),
            {"id": head["id"]},
        )
    engine.dispose()
    promoted = client.post(f"/heads/{head['id']}/promote", headers=KEY)
    assert (promoted.status_code, promoted.json()["error"]["code"]) == (422, "base_model_differs")


def test_reviews_are_appended_by_the_serving_role(
    teaching: tuple[TestClient, str], photos: Path
) -> None:
    """Reviews as the restricted role: each one added, none rewritten (it may not UPDATE)."""
    client, _ = teaching
    prediction = predict(client, (photos / "coffee.png").read_bytes())
    added = []
    for _ in range(2):
        answer = client.post(
            f"/predictions/{prediction['id']}/review", json={"verdict": "correct"}, headers=KEY
        )
        assert answer.status_code == 201, answer.text
        added.append(answer.json()["id"])
    history = client.get(f"/predictions/{prediction['id']}/reviews", headers=KEY).json()
    assert [r["id"] for r in history] == added[::-1]


def training_child(set_name: str) -> int | None:
    """The pid of a running `visinspect head train NAME` process, if there is one."""
    for entry in Path("/proc").iterdir():
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # not a process, or gone meanwhile
            continue
        if (
            b"visinspect.cli" in arguments
            and bytes(b"\0".join(arguments)).find(b"\0head\0train\0" + set_name.encode() + b"\0")
            > 0
            and not process_gone(int(entry.name))
        ):
            return int(entry.name)
    return None


def copy_of_surfaces(client: TestClient, url: str, name: str) -> None:
    """A second trainable set: the same predictions, labelled alike."""
    labelled = _rows(
        url,
        "SELECT l.prediction_id, l.class_name FROM labels l JOIN label_sets s "
        "ON s.id = l.label_set_id WHERE s.name = 'surfaces' ORDER BY l.id",
    )
    made = client.post(
        "/label-sets", json={"name": name, "classes": ["texture", "object"]}, headers=KEY
    )
    assert made.status_code == 201, made.text
    for prediction_id, class_name in labelled:
        answer = client.post(
            f"/predictions/{prediction_id}/labels",
            json={"label_set": name, "class": class_name},
            headers=KEY,
        )
        assert answer.status_code == 201, answer.text


def test_trainings_are_bounded_and_stop_with_their_client(
    teaching: tuple[TestClient, str],
) -> None:
    """Trainings were unbounded (four children of 2.3 GB together, still running after their
    clients gave up). Now: one at a time per process (HEAD_TRAIN_CONCURRENCY=1: 503), one per
    set (409), each within HEAD_TRAIN_MAX_MEMORY_MB, and stopped when its client leaves."""
    client, url = teaching
    if "surfaces" not in {s["name"] for s in client.get("/label-sets", headers=KEY).json()}:
        pytest.skip("needs the flow test's label set")
    copy_of_surfaces(client, url, "copy")
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/label-sets/surfaces/heads", headers=KEY)
        wait_until(lambda: training_child("surfaces") is not None, 60, "the training process")
        child = training_child("surfaces")
        limits = Path(f"/proc/{child}/limits").read_text()
        assert f"Max address space         {3072 << 20:<21}{3072 << 20:<21}bytes" in limits
        again = client.post("/label-sets/surfaces/heads", headers=KEY)
        assert (again.status_code, again.json()["error"]["code"]) == (409, "training_in_progress")
        other = client.post("/label-sets/copy/heads", headers=KEY)
        assert (other.status_code, other.json()["error"]["code"]) == (503, "training_busy")
        assert other.headers["Retry-After"] == "30"
        assert first.result().status_code == 201, first.result().text
    assert training_child("surfaces") is None
    # The list leaves out each version's confusion matrix; the version itself has it.
    listed = client.get("/label-sets/surfaces/heads", params={"limit": 2}, headers=KEY).json()
    assert len(listed) == 2
    assert "confusion" not in listed[0]["metrics"]
    assert "accuracy" in listed[0]["metrics"]
    one = client.get(f"/heads/{listed[0]['id']}", headers=KEY).json()
    assert len(one["metrics"]["confusion"]) == 2

    heads = services_of(client).heads

    async def gone() -> bool:  # the client leaves once its training process runs
        return training_child("copy") is not None

    with pytest.raises(ClientGone):
        client.portal.call(heads.train, "copy", "alice", gone)  # type: ignore[union-attr]
    assert training_child("copy") is None  # stopped, not left to run
    assert client.get("/label-sets/copy/heads", headers=KEY).json() == []
    # The slot and the set are free again.
    assert client.post("/label-sets/copy/heads", headers=KEY).status_code == 201


def test_concurrent_trainings_get_their_own_versions(teaching: tuple[TestClient, str]) -> None:
    """Trainings of one set at once (the CLI has no server's bound) chose the same next version:
    a UniqueViolation (500) for all but one. The version is chosen under the set's lock."""
    client, _ = teaching
    if "surfaces" not in {s["name"] for s in client.get("/label-sets", headers=KEY).json()}:
        pytest.skip("needs the flow test's label set")
    environment = {**os.environ, **services_of(client).heads.training_settings}
    children = [
        subprocess.Popen(
            [VISINSPECT, "head", "train", "surfaces", "--json"],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    answers = [child.communicate(timeout=300) for child in children]
    assert [child.returncode for child in children] == [0, 0, 0], [e[-500:] for _, e in answers]
    versions = [json.loads(out.strip().splitlines()[-1])["version"] for out, _ in answers]
    assert len(set(versions)) == 3


def _rows(url: str, sql: str, **parameters: object) -> list[Any]:
    """What a query reads, on a connection of its own."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(text(sql), parameters).all())
    finally:
        engine.dispose()

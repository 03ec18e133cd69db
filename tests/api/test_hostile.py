"""Every file of the hostile corpus (tests/hostile_corpus.py) gets its precise answer, never a 5xx,
and only the valid images leave a row."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from tests.hostile_corpus import HostileFile, corpus
from tests.support import rows_with_request_id

CORPUS = corpus()


@pytest.mark.parametrize("item", CORPUS, ids=[c.name for c in CORPUS])
def test_hostile_upload(client: TestClient, item: HostileFile) -> None:
    request_id = uuid.uuid4().hex
    response = client.post(
        "/predict",
        files={"file": (item.name, item.data, item.content_type)},
        headers={"X-Request-ID": request_id},
    )
    assert response.status_code == item.status, (item.why, response.text)
    rows = rows_with_request_id(client, request_id)
    if item.code is None:
        assert len(rows) == 1
    else:
        assert response.json()["error"]["code"] == item.code
        assert rows == []

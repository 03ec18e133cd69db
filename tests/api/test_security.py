"""API keys, docs switch, CORS, security headers, request timeout."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.support import (
    VISINSPECT,
    gated_model,
    make_settings,
    rows_with_request_id,
    running_app,
    services_of,
)
from visinspect.api.security import ApiKeys
from visinspect.config import API_KEY_SCOPES

KEY_PLAIN = "plain-key-0123456789"
KEY_HASHED = "hashed-key-9876543210"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    digest = hashlib.sha256(KEY_HASHED.encode()).hexdigest()
    settings = make_settings(
        f"sqlite:///{tmp_path_factory.mktemp('sec') / 's.db'}",
        api_keys=f"{KEY_PLAIN}, sha256:{digest}",
        cors_origins="https://inspect.example.com",
    )
    with running_app(settings) as client:
        yield client


def upload(client: TestClient, photos: Path, headers: dict[str, str]) -> tuple[int, dict]:  # type: ignore[type-arg]
    response = client.post(
        "/predict", files={"file": ("c.png", (photos / "coffee.png").read_bytes())}, headers=headers
    )
    return response.status_code, {**response.json(), "_headers": dict(response.headers)}


def test_no_key_is_401(secured: TestClient, photos: Path) -> None:
    status, body = upload(secured, photos, {})
    assert status == 401
    assert body["error"]["code"] == "missing_api_key"
    assert body["_headers"]["www-authenticate"] == "Bearer"
    assert secured.get("/predictions").status_code == 401
    assert secured.get("/predictions/1").status_code == 401


def test_wrong_key_is_403(secured: TestClient, photos: Path) -> None:
    status, body = upload(secured, photos, {"Authorization": "Bearer nope"})
    assert status == 403
    assert body["error"]["code"] == "invalid_api_key"
    assert secured.get("/predictions", headers={"X-API-Key": KEY_PLAIN + "x"}).status_code == 403


def test_good_keys_in_either_header(secured: TestClient, photos: Path) -> None:
    assert upload(secured, photos, {"Authorization": f"Bearer {KEY_PLAIN}"})[0] == 200
    assert upload(secured, photos, {"X-API-Key": KEY_HASHED})[0] == 200  # configured as sha256:
    assert secured.get("/predictions", headers={"X-API-Key": KEY_PLAIN}).status_code == 200


def test_health_metrics_and_docs_stay_open(secured: TestClient) -> None:
    for path in ("/health", "/health/live", "/metrics", "/docs", "/openapi.json"):
        assert secured.get(path).status_code == 200, path
    schemes = secured.get("/openapi.json").json()["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}


def test_a_key_may_only_do_what_its_scopes_allow(tmp_path: Path, photos: Path) -> None:
    keys = {name: f"{name}-key-0123456789" for name in ("camera", "viewer", "reviewer", "boss")}
    settings = make_settings(
        f"sqlite:///{tmp_path / 'scopes.db'}",
        api_keys=f"camera@predict:{keys['camera']}, viewer@read:{keys['viewer']}, "
        f"reviewer@read+review:{keys['reviewer']}, boss@admin:{keys['boss']}",
    )

    def as_(name: str) -> dict[str, str]:
        return {"X-API-Key": keys[name]}

    with running_app(settings) as client:
        status, made = upload(client, photos, as_("camera"))
        assert status == 200
        review = f"/predictions/{made['id']}/review"
        allowed = {
            ("camera", "POST", "/predict"): True,
            ("camera", "GET", "/predictions"): False,
            ("camera", "GET", f"/predictions/{made['id']}/image"): False,
            ("camera", "POST", review): False,
            ("viewer", "GET", "/predictions"): True,
            ("viewer", "GET", f"/predictions/{made['id']}"): True,
            ("viewer", "POST", "/predict"): False,
            ("viewer", "POST", review): False,
            ("reviewer", "POST", review): True,
            ("reviewer", "POST", "/label-sets"): False,
            ("boss", "POST", "/label-sets"): True,
        }
        for (who, method, path), expected in allowed.items():
            if path == "/predict":
                answer = client.post(
                    path,
                    files={"file": ("c.png", (photos / "coffee.png").read_bytes())},
                    headers=as_(who),
                )
            elif path == review:
                answer = client.post(path, json={"verdict": "correct"}, headers=as_(who))
            elif path == "/label-sets":
                answer = client.post(
                    path, json={"name": f"set-{who}", "classes": ["ok", "dent"]}, headers=as_(who)
                )
            else:
                answer = client.request(method, path, headers=as_(who))
            refused = answer.status_code == 403
            assert refused is not expected, (who, method, path, answer.status_code)
            if refused:
                error = answer.json()["error"]
                assert error["code"] == "insufficient_scope"
                assert who in error["message"]
                assert "scope" in error["message"]
        reviewed = client.get(f"/predictions/{made['id']}/reviews", headers=as_("viewer")).json()
        assert [r["reviewer"] for r in reviewed] == ["reviewer"]


def test_unknown_scopes_are_refused_at_start() -> None:
    with pytest.raises(ValueError, match="unknown scopes"):
        make_settings("sqlite://", api_keys="camera@predict+everything:camera-key-0123456789")


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("camera@predict:", "does not parse"),  # a template's unset variable
        ("camera:", "does not parse"),
        ("camera @predict:camera-key-0123456789", "does not parse"),
        ("c" * 65 + ":camera-key-0123456789", "does not parse"),
        ("sha256@predict:camera-key-0123456789", "does not parse"),
        ("camera@:camera-key-0123456789", "does not parse"),
        ("camera@predict:sha256:abc", "does not parse"),  # ':' in what would be the key
        ("sha256:" + "0" * 63, "does not parse"),
        ("camera@predict:short", "shorter than 16"),
        ("short-key", "shorter than 16"),
        ("@predict:camera-key-0123456789", "does not parse"),
    ],
)
def test_an_entry_that_does_not_parse_stops_the_start(entry: str, why: str) -> None:
    """Such entries used to become a plaintext key with every scope (`camera@predict:` was the
    key `key-1`, admin included). The message names the entry, never its key."""
    with pytest.raises(ValueError, match=why) as refused:
        make_settings("sqlite://", api_keys=f"alice:alices-key-0123456, {entry}")
    assert "API_KEYS entry 2" in str(refused.value)
    assert "camera-key-0123456789" not in str(refused.value)
    assert "alices-key-0123456" not in str(refused.value)


def test_entries_that_parse_keep_their_names_and_scopes() -> None:
    digest = "ab" * 32
    keys = ApiKeys(
        make_settings(
            "sqlite://",
            api_keys=f"camera@predict:camera-key-0123456789, bob:sha256:{digest}, "
            f"sha256:{digest.upper()}, unnamed-key-0123456",
        ).api_keys
    )
    camera = keys.matching("camera-key-0123456789")
    assert camera is not None
    assert (camera.name, camera.scopes) == ("camera", frozenset({"predict"}))
    unnamed = keys.matching("unnamed-key-0123456")
    assert unnamed is not None
    assert (unnamed.name, unnamed.scopes) == ("key-4", API_KEY_SCOPES)
    assert keys.matching("camera@predict:") is None


def test_keys_never_reach_the_logs(
    secured: TestClient, photos: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("DEBUG"):
        upload(secured, photos, {"Authorization": f"Bearer {KEY_PLAIN}"})
        upload(secured, photos, {"X-API-Key": "a-wrong-key-that-must-not-be-logged"})
    everything = caplog.text + " ".join(str(r.msg) for r in caplog.records)
    assert "prediction.stored" in everything  # the logs were captured at all
    assert KEY_PLAIN not in everything
    assert "a-wrong-key-that-must-not-be-logged" not in everything


def test_cors_only_for_configured_origins(secured: TestClient, sqlite_client: TestClient) -> None:
    allowed = secured.get("/health/live", headers={"Origin": "https://inspect.example.com"})
    assert allowed.headers["access-control-allow-origin"] == "https://inspect.example.com"
    other = secured.get("/health/live", headers={"Origin": "https://evil.example.net"})
    assert "access-control-allow-origin" not in other.headers
    default = sqlite_client.get("/health/live", headers={"Origin": "https://inspect.example.com"})
    assert "access-control-allow-origin" not in default.headers  # closed unless configured


def test_security_headers(sqlite_client: TestClient) -> None:
    api = sqlite_client.get("/health/live")
    assert api.headers["x-content-type-options"] == "nosniff"
    assert api.headers["x-frame-options"] == "DENY"
    assert api.headers["content-security-policy"].startswith("default-src 'none'")
    docs = sqlite_client.get("/docs")
    assert "script-src 'self'" in docs.headers["content-security-policy"]


def test_docs_can_be_switched_off(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'd.db'}", docs_enabled=False)
    with running_app(settings) as client:
        assert client.get("/docs").status_code == 404
        assert client.get("/openapi.json").status_code == 404
        assert client.get("/health").status_code == 200


def test_slow_classification_is_504_and_stores_nothing(tmp_path: Path, photos: Path) -> None:
    settings = make_settings(
        f"sqlite:///{tmp_path / 't.db'}", request_timeout_s=0.5, decode_timeout_s=0.4
    )
    with running_app(settings) as client:
        request_id = uuid.uuid4().hex
        with gated_model(services_of(client).classifier):
            response = client.post(
                "/predict",
                files={"file": ("c.png", (photos / "coffee.png").read_bytes())},
                headers={"X-Request-ID": request_id},
            )
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "timeout"
        assert rows_with_request_id(client, request_id) == []
        assert client.get("/health").status_code == 200


def test_unexpected_errors_are_a_generic_500_with_the_request_id(tmp_path: Path) -> None:
    from visinspect.main import create_app

    app = create_app(make_settings(f"sqlite:///{tmp_path / 'e.db'}"))

    async def boom() -> None:
        raise RuntimeError("secret internal detail /etc/passwd")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom", headers={"X-Request-ID": "trace-me-1"})
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "code": "internal_error",
            "message": "internal error; quote the request_id when reporting it",
            "request_id": "trace-me-1",
        }
    }
    assert response.headers["x-request-id"] == "trace-me-1"
    assert response.headers["x-content-type-options"] == "nosniff"  # sent outside our middleware
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert "secret" not in response.text


def test_a_new_key_is_random_and_its_entry_holds_only_its_digest(
    tmp_path: Path, photos: Path
) -> None:
    """`visinspect keys new`: 256 random bits, never the same twice; the API_KEYS entry names
    it, limits it and holds its SHA-256, so the environment never holds the key."""
    made = [
        json.loads(
            subprocess.run(
                [VISINSPECT, "keys", "new", "line-3", "--scope", "predict", "--json"],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout
        )
        for _ in range(2)
    ]
    assert made[0]["key"] != made[1]["key"]
    unscoped = subprocess.run(
        [VISINSPECT, "keys", "new", "line-3"], capture_output=True, text=True, timeout=60
    )
    assert unscoped.returncode == 2  # an all-scope key is asked for (`--scope admin`), not given
    assert "--scope" in unscoped.stderr
    assert unscoped.stdout == ""
    again = subprocess.run(
        [VISINSPECT, "keys", "new", "line-3", "--scope", "read"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "API_KEYS": made[0]["api_keys_entry"]},
    )
    assert "already has a key named 'line-3'" in again.stderr
    assert len(made[0]["key"]) >= 43  # 32 bytes, URL-safe base64
    entry = made[0]["api_keys_entry"]
    assert entry.startswith("line-3@predict:sha256:")
    assert made[0]["key"] not in entry
    settings = make_settings(f"sqlite:///{tmp_path / 'new.db'}", api_keys=entry)
    with running_app(settings) as client:
        device = {"X-API-Key": made[0]["key"]}
        status, _ = upload(client, photos, device)
        assert status == 200
        assert client.get("/predictions", headers=device).status_code == 403  # predict only
        assert client.get("/predictions", headers={"X-API-Key": made[1]["key"]}).status_code == 403

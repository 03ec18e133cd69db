"""Settings: environment parsing and the rules that guard against misconfiguration."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from visinspect.config import PILLOW_PIXEL_CEILING, Architecture, Settings


def test_defaults_run_without_any_server(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "MODEL_ARCH", "MODEL_WEIGHTS", "DEFAULT_TOP_K", "LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.database_url.startswith("sqlite:///")
    assert settings.model_arch is Architecture.EFFICIENTNET_LITE0
    assert settings.default_top_k == 3
    assert settings.log_format == "json"
    assert not settings.database_create_all


def test_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u:p@db:5432/vis")
    monkeypatch.setenv("DEFAULT_TOP_K", "5")
    monkeypatch.setenv("MAX_UPLOAD_BYTES", "1048576")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.database_url == "postgresql+psycopg://u:p@db:5432/vis"
    assert (settings.default_top_k, settings.max_upload_bytes) == (5, 1_048_576)


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_plain_postgres_urls_use_psycopg3(scheme: str) -> None:
    settings = Settings(_env_file=None, database_url=f"{scheme}://u@db/vis")  # type: ignore[call-arg]
    assert settings.database_url == "postgresql+psycopg://u@db/vis"


@pytest.mark.parametrize(
    "values",
    [
        {"default_top_k": 0},
        {"default_top_k": 1001},
        {"max_image_pixels": PILLOW_PIXEL_CEILING + 1},
        {"log_format": "xml"},
        {"model_weights_sha256": "not-hex"},
        {"model_arch": "resnet50"},
    ],
)
def test_invalid_settings_are_refused(values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_home_in_paths_is_expanded_as_a_shell_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An .env file is not read by a shell: `~` must still mean the home folder."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MODEL_DIR", raising=False)  # conftest sets one for the session
    (tmp_path / ".env").write_text("MODEL_DIR=~/model\nMODEL_WEIGHTS=~/w-0123abcd.pth\n")
    settings = Settings(_env_file=tmp_path / ".env")  # type: ignore[call-arg]
    assert settings.model_dir == tmp_path / "model"
    assert settings.model_weights == tmp_path / "w-0123abcd.pth"


def test_start_up_defaults() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.migrate_on_start, settings.database_wait_s) == (True, 0.0)


@pytest.mark.parametrize("window", ["1w", "0h", "1001d", "99999d"])
def test_a_drift_window_that_is_not_a_window_is_refused(window: str) -> None:
    with pytest.raises(ValidationError, match="drift_window"):
        Settings(_env_file=None, drift_window=window)  # type: ignore[call-arg]


def test_an_empty_image_store_dir_keeps_no_images(monkeypatch: pytest.MonkeyPatch) -> None:
    """compose passes `IMAGE_STORE_DIR=` to turn the store off: that is no store, not `.`."""
    monkeypatch.setenv("IMAGE_STORE_DIR", "")
    assert Settings(_env_file=None).image_store_dir is None  # type: ignore[call-arg]
    monkeypatch.setenv("IMAGE_STORE_DIR", "~/images")
    assert Settings(_env_file=None).image_store_dir == Path.home() / "images"  # type: ignore[call-arg]

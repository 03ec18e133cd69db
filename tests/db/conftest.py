"""An empty database on each backend, for the tests of migrations and of what they record."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from tests.support import fresh_postgres_database


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "postgresql":
        with fresh_postgres_database() as url:
            engine = create_engine(url)
            yield engine
            engine.dispose()
    else:
        engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
        yield engine
        engine.dispose()

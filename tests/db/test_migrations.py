"""Migrations are the schema: they match the ORM exactly, round-trip, and are safe to re-run."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, text

from tests.support import fresh_postgres_database
from visinspect.db.partitions import include_name
from visinspect.db.schema import (
    alembic_config,
    create_all_for_development,
    current_revision,
    head_revision,
    upgrade_to_head,
)
from visinspect.db.tables import Base


def _diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_name": include_name}
        )
        return list(compare_metadata(context, Base.metadata))


def _downgrade(engine: Engine, target: str) -> None:
    config = alembic_config()
    with engine.connect() as conn:  # alembic begins its own transactions
        config.attributes["connection"] = conn
        command.downgrade(config, target)
        conn.commit()


def test_migrated_schema_equals_the_orm(empty_engine: Engine) -> None:
    upgrade_to_head(empty_engine)
    assert _diff(empty_engine) == []


def test_upgrade_is_idempotent_and_recorded(empty_engine: Engine) -> None:
    first = upgrade_to_head(empty_engine)
    second = upgrade_to_head(empty_engine)
    assert (first.before, first.after, first.changed) == (None, head_revision(), True)
    assert (second.before, second.after, second.changed) == (
        head_revision(),
        head_revision(),
        False,
    )
    with empty_engine.connect() as conn:
        assert conn.scalar(text("SELECT version_num FROM alembic_version")) == head_revision()


def test_downgrade_and_upgrade_round_trip(empty_engine: Engine) -> None:
    upgrade_to_head(empty_engine)
    _downgrade(empty_engine, "base")
    tables = set(inspect(empty_engine).get_table_names())
    assert "predictions" not in tables
    with empty_engine.connect() as conn:
        assert current_revision(conn) is None
    upgrade_to_head(empty_engine)
    assert _diff(empty_engine) == []
    indexes = {ix["name"] for ix in inspect(empty_engine).get_indexes("predictions")}
    assert {
        "ix_predictions_created_at_id",
        "ix_predictions_class_name_created_at_id",
        "ix_predictions_image_sha256",
    } <= indexes


def test_create_all_is_a_separate_development_path(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'dev.db'}")
    create_all_for_development(engine)
    tables = set(inspect(engine).get_table_names())
    assert "predictions" in tables
    assert "alembic_version" not in tables  # no mixing: create_all never pretends to be migrated
    engine.dispose()


def test_concurrent_start_ups_migrate_once() -> None:
    """Three processes' worth of start-ups at the same moment: the advisory lock serialises them."""
    with fresh_postgres_database() as url:
        engines = [create_engine(url) for _ in range(3)]
        try:
            with ThreadPoolExecutor(3) as pool:
                results = list(pool.map(upgrade_to_head, engines))
            assert [r.after for r in results] == [head_revision()] * 3
            assert sum(r.changed for r in results) == 1  # exactly one of them migrated
            with engines[0].connect() as conn:
                assert conn.scalar(text("SELECT count(*) FROM alembic_version")) == 1
            assert _diff(engines[0]) == []
        finally:
            for engine in engines:
                engine.dispose()

"""Alembic environment: uses the connection the service hands over, or DATABASE_URL on the CLI."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from alembic import context
from alembic.runtime.migration import MigrationContext, MigrationInfo
from sqlalchemy import Connection

from visinspect.config import Settings
from visinspect.db import compatibility
from visinspect.db.partitions import include_name
from visinspect.db.session import create_db_engine
from visinspect.db.tables import Base

target_metadata = Base.metadata


def _record_compatibility(
    ctx: MigrationContext, step: MigrationInfo, heads: Collection[Any], run_args: Mapping[str, Any]
) -> None:
    """Who may serve against the schema (expand/contract), in each migration's own transaction:
    a release serving meanwhile never sees a revision without its record."""
    assert ctx.connection is not None
    revision = next(iter(heads), None)  # one line of history: at most one head
    compatibility.record(ctx.connection, context.script, revision)


def _run(connection: Connection) -> None:
    # A transaction per migration, begun here: a migration may need to leave it for a while
    # (an index built CONCURRENTLY, `autocommit_block`), which Alembic can only do with the
    # transactions it began. What the caller read before handing over is committed first.
    if connection.in_transaction():
        connection.commit()
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        include_name=include_name,  # autogenerate leaves the day partitions alone
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
        transaction_per_migration=True,
        on_version_apply=_record_compatibility,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_db_engine(Settings())
    try:
        with engine.connect() as new_connection:
            _run(new_connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    context.configure(url=Settings().database_url, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()

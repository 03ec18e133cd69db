"""Bring the schema to the Alembic head at start-up, and tell readiness whether it is there.

Migrations are the only source of the schema. `create_all` exists for development only
(DATABASE_CREATE_ALL=true) and then migrations are not run at all, so the two never mix.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

from visinspect.db.models import Base

log = structlog.get_logger("visinspect.db")

# Any constant shared by every replica: pg_advisory_lock serialises concurrent start-ups, so exactly
# one process migrates and the others find the schema already at head.
_MIGRATION_LOCK_KEY = 0x7669_7369_6E73  # "visins"


def alembic_config() -> Config:
    """Alembic configured from the package itself, so an installed wheel can migrate without files."""
    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("visinspect").joinpath("migrations"))
    )
    return config


@functools.cache
def head_revision() -> str:
    """Read once per process: readiness probes ask on every call, and the files never change."""
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"migrations must have exactly one head, found {heads}")
    return heads[0]


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


@dataclass(frozen=True, slots=True)
class Migration:
    before: str | None
    after: str | None

    @property
    def changed(self) -> bool:
        return self.before != self.after


def upgrade_to_head(engine: Engine) -> Migration:
    """Run `alembic upgrade head` (idempotent) under a database-wide lock."""
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            connection.commit()
        try:
            before = current_revision(connection)
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            connection.commit()
            after = current_revision(connection)
        finally:
            if connection.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
                connection.commit()
    log.info("db.migrated", revision_before=before, revision=after, changed=before != after)
    return Migration(before, after)


def create_all_for_development(engine: Engine) -> None:
    """DATABASE_CREATE_ALL=true only: tables straight from the ORM, no Alembic history."""
    Base.metadata.create_all(engine)
    log.warning("db.create_all", hint="development only; production runs migrations")


def schema_problem(connection: Connection, create_all_mode: bool) -> str | None:
    """None when the schema is what this code expects, else what is wrong (for readiness)."""
    if create_all_mode:
        missing = set(Base.metadata.tables) - set(inspect(connection).get_table_names())
        return f"tables missing: {sorted(missing)}" if missing else None
    current, head = current_revision(connection), head_revision()
    if current != head:
        return f"schema at revision {current}, code expects {head}"
    return None

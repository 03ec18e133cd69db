"""Bring the schema to the Alembic head at start-up, and tell readiness whether it can serve.

Migrations are the only source of the schema. `create_all` exists for development only
(DATABASE_CREATE_ALL=true) and then migrations are not run at all, so the two never mix. A schema
migrated by a newer release is served on when that release recorded it as compatible with this
one (expand/contract, `db/compatibility.py`).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from importlib import resources

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from visinspect.config import Settings
from visinspect.db import compatibility
from visinspect.db.rollups import install_triggers
from visinspect.db.session import describe_failure
from visinspect.db.tables import Base
from visinspect.errors import StartupFailed

log = structlog.get_logger("visinspect.db")

# Any constant shared by every replica: pg_advisory_lock serialises concurrent start-ups, so exactly
# one process migrates and the others find the schema already at head.
_MIGRATION_LOCK_KEY = 0x7669_7369_6E73  # "visins"
_LOCK_POLL_S = 0.2


def alembic_config() -> Config:
    """Alembic configured from the package itself, so an installed wheel can migrate without files."""
    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("visinspect").joinpath("migrations"))
    )
    return config


@functools.cache
def migration_scripts() -> ScriptDirectory:
    """Read once per process: readiness probes ask on every call, and the files never change."""
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    return compatibility.lineage(migration_scripts()).head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


@dataclass(frozen=True, slots=True)
class Migration:
    before: str | None
    after: str | None

    @property
    def changed(self) -> bool:
        return self.before != self.after


def upgrade_to_head(engine: Engine, app_role: str | None = None) -> Migration:
    """Run `alembic upgrade head` (idempotent) under a database-wide lock. A schema that a newer
    release migrated and recorded as compatible with this one is left as it is. `app_role` is
    granted what serving needs on every table, and nothing that changes the schema."""
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            _lock_migrations(connection)
        try:
            before = after = current_revision(connection)
            known = compatibility.lineage(migration_scripts())
            if before is not None and compatibility.newer_but_compatible(connection, known, before):
                log.info("db.newer_schema", revision=before, head=known.head, compatible=True)
            else:
                config = alembic_config()
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
                connection.commit()
                after = current_revision(connection)
            if app_role:
                grant_serving_privileges(connection, app_role)
                connection.commit()
        finally:
            if connection.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
                connection.commit()
    log.info("db.migrated", revision_before=before, revision=after, changed=before != after)
    return Migration(before, after)


def _lock_migrations(connection: Connection) -> None:
    """Wait for the migration lock without holding a snapshot meanwhile: a migration that
    builds an index CONCURRENTLY waits for every open snapshot to end, and a blocking
    pg_advisory_lock would keep one open for as long as it waits (a deadlock)."""
    while not connection.scalar(
        text("SELECT pg_try_advisory_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
    ):
        connection.commit()
        time.sleep(_LOCK_POLL_S)
    connection.commit()


# What the serving role may write, table by table; every table of the schema it may read. The
# history is append-only for it: predictions, their embeddings, reviews, labels, head answers and
# head events are inserted, never updated or deleted. Only a label set's classes and a head's
# status change in place. Partitions, retention and migrations are the owner's (`visinspect db
# maintain`, `visinspect db upgrade`); the rollups are written by the owner's trigger function.
SERVING_INSERTS = (
    "predictions",
    "prediction_embeddings",
    "reviews",
    "label_sets",
    "labels",
    "heads",
    "head_events",
    "head_answers",
)
SERVING_UPDATES = {"label_sets": ("classes",), "heads": ("status",)}


def grant_serving_privileges(connection: Connection, role: str) -> None:
    """PostgreSQL: `role` may read every table of this schema and write only what serving
    writes (SERVING_INSERTS, SERVING_UPDATES): no UPDATE or DELETE of the history, no rollup,
    no migration bookkeeping, no CREATE. Run after every migration: whatever was granted before
    is revoked first, so a narrower rule reaches an existing role, and new tables are covered."""
    if connection.dialect.name != "postgresql":
        raise ValueError("DATABASE_APP_ROLE applies to PostgreSQL only")
    quote = connection.dialect.identifier_preparer.quote
    quoted = quote(role)
    schema = quote(connection.execute(text("SELECT current_schema()")).scalar_one())
    statements = [
        f"GRANT USAGE ON SCHEMA {schema} TO {quoted}",
        f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {quoted}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {quoted}",
        f"GRANT INSERT ON {', '.join(quote(t) for t in SERVING_INSERTS)} TO {quoted}",
        *(
            f"GRANT UPDATE ({', '.join(quote(c) for c in columns)}) ON {quote(table)} TO {quoted}"
            for table, columns in SERVING_UPDATES.items()
        ),
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {quoted}",
    ]
    for statement in statements:
        connection.execute(text(statement))
    log.info("db.granted", role=role, schema=schema, inserts=SERVING_INSERTS)


def create_all_for_development(engine: Engine) -> None:
    """DATABASE_CREATE_ALL=true only: tables straight from the ORM, no Alembic history."""
    Base.metadata.create_all(engine)
    install_triggers(engine)  # the rollups' triggers, which no ORM table holds
    log.warning("db.create_all", hint="development only; production runs migrations")


def schema_problem(connection: Connection, create_all_mode: bool) -> str | None:
    """None when the schema is what this code expects, else what is wrong (for readiness)."""
    if create_all_mode:
        missing = set(Base.metadata.tables) - set(inspect(connection).get_table_names())
        return f"tables missing: {sorted(missing)}" if missing else None
    current, known = current_revision(connection), compatibility.lineage(migration_scripts())
    if current == known.head:
        return None
    if current is None:
        return f"empty database, code expects revision {known.head}: run `visinspect db upgrade`"
    if known.knows(current):
        return (
            f"schema at revision {current}, code expects {known.head}: run `visinspect db upgrade`"
        )
    if compatibility.newer_but_compatible(connection, known, current):
        return None
    return (
        f"schema at revision {current}, newer than this release ({known.head}) and not "
        "compatible with it (a contract migration ran): run the release that migrated it"
    )


def prepare_schema(engine: Engine, settings: Settings) -> None:
    """Migrate to the head (MIGRATE_ON_START=true), or refuse to serve a schema it cannot serve."""
    try:
        if settings.database_create_all:
            create_all_for_development(engine)
        elif settings.migrate_on_start:
            upgrade_to_head(engine, settings.database_app_role)
        else:
            with engine.connect() as connection:
                problem = schema_problem(connection, create_all_mode=False)
            if problem is not None:
                raise StartupFailed(
                    "schema",
                    problem,
                    "run `visinspect db upgrade` (the migrate Job), or set MIGRATE_ON_START=true",
                )
    except CommandError as exc:  # e.g. a revision in the database that this release lacks
        raise StartupFailed(
            "schema",
            str(exc),
            "the database was migrated by a newer release that contracted the schema: run that "
            "release or a newer one",
        ) from exc
    except SQLAlchemyError as exc:
        raise StartupFailed(
            "database", describe_failure(exc), "check the database's log and permissions"
        ) from exc


def schema_state(session: Session, create_all_mode: bool) -> tuple[str | None, str | None]:
    """For readiness: the current revision (None in create-all mode) and what keeps this release
    from serving on the schema, if anything."""
    connection = session.connection()
    revision = None if create_all_mode else current_revision(connection)
    return revision, schema_problem(connection, create_all_mode)

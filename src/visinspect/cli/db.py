"""`visinspect db upgrade | current | maintain`: the schema and its partitions, for a migrate
Job, a cron job or an operator.

Light on purpose (no model libraries): the Kubernetes init container runs `db current`."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from visinspect.config import Settings
from visinspect.db import partitions, retention
from visinspect.db.schema import current_revision, head_revision, prepare_schema, schema_problem
from visinspect.db.session import create_db_engine, wait_for_database


def upgrade(settings: Settings, _args: argparse.Namespace | None = None) -> int:
    """What `serve` does first with MIGRATE_ON_START=true, and nothing else."""
    engine = create_db_engine(settings)
    try:
        wait_for_database(engine, settings.database_wait_s)
        prepare_schema(engine, settings.model_copy(update={"migrate_on_start": True}))
    finally:
        engine.dispose()
    return 0


def current(settings: Settings, _args: argparse.Namespace | None = None) -> int:
    engine = create_db_engine(settings)
    try:
        wait_for_database(engine, settings.database_wait_s)
        with engine.connect() as connection:
            revision = current_revision(connection)
            problem = schema_problem(connection, create_all_mode=False)
    finally:
        engine.dispose()
    print(f"current: {revision or '(empty database)'}\nhead:    {head_revision()}")
    print(f"serves:  {'yes' if problem is None else 'no: ' + problem}")
    return 0 if problem is None else 2


def maintain(settings: Settings, _args: argparse.Namespace | None = None) -> int:
    engine = create_db_engine(settings)
    try:
        wait_for_database(engine, settings.database_wait_s)
        done = partitions.maintain(engine, settings.retention_days)
        days = retention.retention_days(settings.embedding_retention_days, settings.retention_days)
        removed = retention.apply_retention(engine, days)
    finally:
        engine.dispose()
    print(json.dumps({**asdict(done), "embeddings_deleted": removed}))
    return 0

"""How long kept embeddings live (EMBEDDING_RETENTION_DAYS), applied in short batches.

Apart from `db/embeddings.py` (the codec, NumPy): `visinspect db maintain` loads no model library.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from visinspect.db import repository


def retention_days(embedding_days: int, prediction_days: int) -> int:
    """How long embeddings are kept: EMBEDDING_RETENTION_DAYS, and never longer than their
    predictions (RETENTION_DAYS); 0 = as long as the predictions."""
    kept = [days for days in (embedding_days, prediction_days) if days > 0]
    return min(kept) if kept else 0


def apply_retention(engine: Engine, days: int, now: datetime | None = None) -> int:
    """Delete the embeddings older than `days` (0: none), in batches of short transactions;
    blocking (run it in a thread). Returns how many rows went."""
    if days <= 0 or not _may_delete(engine):
        return 0
    moment = (now or datetime.now(UTC)) - timedelta(days=days)
    total, batch = 0, 10_000
    while True:
        with Session(engine) as session, session.begin():
            deleted = repository.delete_embeddings_before(session, moment, batch)
        total += deleted
        if deleted < batch:
            return total


def _may_delete(engine: Engine) -> bool:
    """The serving role may not delete (DATABASE_APP_ROLE): retention is the owner's, run by
    `visinspect db maintain` (deploy/k8s: the CronJob); the serving process steps aside."""
    if engine.dialect.name != "postgresql":
        return True
    with engine.connect() as connection:
        return bool(
            connection.scalar(text("SELECT has_table_privilege('prediction_embeddings', 'DELETE')"))
        )

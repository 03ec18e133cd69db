"""How long kept embeddings live (EMBEDDING_RETENTION_DAYS), applied in short batches.

Apart from `db/embeddings.py` (the codec, NumPy): `visinspect db maintain` loads no model library.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
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
    if days <= 0:
        return 0
    moment = (now or datetime.now(UTC)) - timedelta(days=days)
    total, batch = 0, 10_000
    while True:
        with Session(engine) as session, session.begin():
            deleted = repository.delete_embeddings_before(session, moment, batch)
        total += deleted
        if deleted < batch:
            return total

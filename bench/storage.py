"""What teaching costs on disk: bytes per row of the kept embeddings (`prediction_embeddings`) and
of the heads' answers (`head_answers`) on PostgreSQL, measured on a fresh database of --rows rows
written as the group commit writes them, and what that makes at 10 M predictions.

    .venv/bin/python -m bench.storage          (--rows 100000; needs the PostgreSQL of make test)

The embeddings are the real ones of scikit-image's photos (the service's own pipeline), each with
5% noise so that no two rows are equal, encoded as the service keeps them.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import Engine, create_engine, insert, text

from bench.load import fresh_database
from visinspect.config import Settings
from visinspect.db.embeddings import encode
from visinspect.db.schema import upgrade_to_head
from visinspect.db.tables import EmbeddingRecord, HeadAnswerRecord
from visinspect.inference.classifier import load_classifier
from visinspect.inference.preprocess import preprocess
from visinspect.logging import configure_logging
from visinspect.offline.photos import skimage_data

TABLES = ("prediction_embeddings", "head_answers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    configure_logging("WARNING", "console")
    embeddings = _real_embeddings()
    with fresh_database() as url:
        engine = create_engine(url)
        upgrade_to_head(engine)
        _fill(engine, embeddings, args.rows)
        report = {table: _size(engine, table, args.rows) for table in TABLES}
        engine.dispose()
    print(json.dumps({"rows": args.rows, **report}, indent=2))


def _real_embeddings() -> np.ndarray:
    classifier = load_classifier(Settings(_env_file=None))  # type: ignore[call-arg]
    folder = skimage_data()
    assert folder is not None, "scikit-image's photos are needed (the model extra)"
    found = []
    for path in sorted(folder.glob("*.png")) + sorted(folder.glob("*.jpg")):
        pixels = preprocess(path.read_bytes(), classifier.preprocessing, 50_000_000).pixels
        (result,) = classifier.classify(pixels[None], [1])
        if result.embedding is not None:
            found.append(result.embedding)
    return np.stack(found)


def _fill(engine: Engine, embeddings: np.ndarray, rows: int) -> None:
    rng = np.random.default_rng(0)
    start = datetime.now(UTC)
    with engine.begin() as connection:
        for first in range(0, rows, 5000):
            kept, answered = [], []
            for i in range(first, min(rows, first + 5000)):
                noisy = embeddings[i % len(embeddings)] * (
                    1 + 0.05 * rng.standard_normal(embeddings.shape[1])
                )
                moment = start + timedelta(seconds=i)
                row = encode(
                    np.maximum(noisy, 0).astype(np.float32), moment, "sha256:579344248a93e230"
                )
                kept.append(
                    {
                        "prediction_id": i + 1,
                        "created_at": moment,
                        "model_version": row.model_version,
                        "low": row.low,
                        "scale": row.scale,
                        "codes": row.codes,
                    }
                )
                answered.append(
                    {
                        "prediction_id": i + 1,
                        "head_id": 1,
                        "label_set_id": 1,
                        "class_name": "scratch",
                        "confidence": float(rng.uniform()),
                        "decided": True,
                        "shadow": False,
                        "created_at": moment,
                    }
                )
            connection.execute(insert(EmbeddingRecord), kept)
            connection.execute(insert(HeadAnswerRecord), answered)


def _size(engine: Engine, table: str, rows: int) -> dict[str, float]:
    with engine.connect() as connection:
        total = connection.scalar(text("SELECT pg_total_relation_size(:t)"), {"t": table})
        heap = connection.scalar(text("SELECT pg_relation_size(:t)"), {"t": table})
        indexes = connection.scalar(text("SELECT pg_indexes_size(:t)"), {"t": table})
    return {
        "bytes_per_row": round(int(total) / rows, 1),
        "table_bytes_per_row": round(int(heap) / rows, 1),
        "index_bytes_per_row": round(int(indexes) / rows, 1),
        "gb_per_10m_rows": round(int(total) / rows * 10_000_000 / 1e9, 2),
    }


if __name__ == "__main__":
    main()

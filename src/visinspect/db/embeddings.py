"""Embeddings as they are kept: uint8 codes with an affine scale per row (`EmbeddingRecord`).

value = low + code * scale, with low and scale the row's minimum and (max - min) / 255: the
rounding loses at most scale / 2 per value. Decoded back to float32 for training a head.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np

from visinspect.db.tables import EmbeddingRecord

LEVELS = 255


def encode(
    vector: np.ndarray, prediction_created_at: datetime, model_version: str
) -> EmbeddingRecord:
    """The row to keep for one embedding (its prediction id is set when the prediction's is)."""
    values = np.asarray(vector, dtype=np.float32)
    low, high = float(values.min()), float(values.max())
    scale = (high - low) / LEVELS if high > low else 1.0
    codes = np.rint((values - low) / scale).clip(0, LEVELS).astype(np.uint8)
    return EmbeddingRecord(
        created_at=prediction_created_at,
        model_version=model_version,
        low=low,
        scale=scale,
        codes=codes.tobytes(),
    )


def decode(low: float, scale: float, codes: bytes) -> np.ndarray:
    return (low + np.frombuffer(codes, dtype=np.uint8).astype(np.float32) * scale).astype(
        np.float32
    )


def decode_many(rows: list[tuple[float, float, bytes]]) -> np.ndarray:
    """N kept rows -> an N x D float32 matrix."""
    if not rows:
        return np.empty((0, 0), dtype=np.float32)
    codes = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.uint8).reshape(len(rows), -1)
    low = np.array([r[0] for r in rows], dtype=np.float32)[:, None]
    scale = np.array([r[1] for r in rows], dtype=np.float32)[:, None]
    return (low + codes.astype(np.float32) * scale).astype(np.float32)

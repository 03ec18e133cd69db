"""The usual FastAPI demo, as the load benchmark's baseline: one request = one synchronous PyTorch
eager forward pass (NCHW) and one new database connection.

Same network, weights, preprocessing (full decode) and labels as the service, so the comparison
measures the serving design and nothing else. Run by bench/load.py:
  NAIVE_DATABASE_URL=postgresql://... uvicorn bench.naive_app:app
"""

from __future__ import annotations

import os
from typing import Annotated

import psycopg
import torch
from fastapi import FastAPI, File, UploadFile

from visinspect.config import Architecture, Settings
from visinspect.inference.classifier import load_labels
from visinspect.inference.preprocess import PREPROCESSING, preprocess
from visinspect.inference.weights import weights_path
from visinspect.offline.architectures import build_network

CONNINFO = os.environ["NAIVE_DATABASE_URL"]  # a plain libpq URL
SPEC = PREPROCESSING[Architecture.EFFICIENTNET_LITE0]
LABELS = load_labels()

network = build_network(Architecture.EFFICIENTNET_LITE0)
network.load_state_dict(
    torch.load(weights_path(Settings(_env_file=None)), weights_only=True)  # type: ignore[call-arg]
)
network.eval()

with psycopg.connect(CONNINFO, autocommit=True) as setup:
    setup.execute(
        "CREATE TABLE IF NOT EXISTS naive_predictions (id bigserial PRIMARY KEY, "
        "created_at timestamptz DEFAULT now(), class_name text, confidence double precision)"
    )

app = FastAPI()


@app.post("/predict")
def predict(file: Annotated[UploadFile, File()]) -> dict[str, object]:
    data = file.file.read()
    pixels = preprocess(data, SPEC, 10**8, reduced_decode=False).pixels
    with torch.no_grad():
        probabilities = torch.softmax(network(torch.from_numpy(pixels)[None]), dim=1)[0]
    values, indices = probabilities.topk(3)
    top = [(LABELS[int(i)], float(v)) for v, i in zip(values, indices, strict=True)]
    with psycopg.connect(CONNINFO) as connection:
        row = connection.execute(
            "INSERT INTO naive_predictions (class_name, confidence) VALUES (%s, %s) RETURNING id",
            top[0],
        ).fetchone()
    return {"id": row[0] if row else None, "predictions": top}

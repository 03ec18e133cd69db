"""The strongest peer measured here: a mosec 0.9 server with ONNX Runtime and the same weights.

  python -m bench.mosec_peer --port 8200 [--address 127.0.0.1]   (mosec's own flags)

mosec puts a Rust HTTP server in front of Python worker processes linked by IPC, with dynamic
batching: what its documentation recommends for a CPU image classifier. Configured as a demanding
user would: 2 decode processes (one per core here), one inference process batching up to 8 images
with a 10 ms wait, ONNX Runtime on the service's own fp32 graph (MODEL_DIR) with 2 intra-op
threads. It takes the raw JPEG as the request body (no multipart), answers the top 3 classes as
JSON, and writes no rows. Its preprocessing is the service's reference transform (full decode,
resize, crop, normalise), so both servers compute the same answer; the service alone shrinks large
JPEGs while decoding (its reduced-scale decode), which is part of what the benchmark measures.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from mosec import Server, Worker

from visinspect.config import Settings
from visinspect.inference.classifier import load_labels
from visinspect.inference.preprocess import PREPROCESSING, preprocess

TOP_K = 3
MAX_PIXELS = 64_000_000


class Decode(Worker):
    """Raw body -> normalised 3x224x224 float32 tensor (one process per core)."""

    def __init__(self) -> None:
        super().__init__()
        self.spec = PREPROCESSING[Settings().model_arch]

    def deserialize(self, data: bytes) -> Any:
        return data  # the raw request body, a JPEG

    def forward(self, data: Any) -> Any:
        return preprocess(data, self.spec, MAX_PIXELS, reduced_decode=False).pixels


class Classify(Worker):
    """Dynamic batches of tensors -> top-k JSON, with ONNX Runtime on the artifact's fp32 graph."""

    def __init__(self) -> None:
        super().__init__()
        import onnxruntime as ort

        settings = Settings()
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("PEER_THREADS", "2"))
        options.inter_op_num_threads = 1
        graph = settings.model_dir / "model.fp32.onnx"
        self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.labels = load_labels()

    def forward(self, data: Any) -> Any:
        batch = np.stack(data)
        logits = self.session.run(None, {self.input_name: batch})[0].astype(np.float64)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = exp / exp.sum(axis=1, keepdims=True)
        answers = []
        for row in probabilities:
            best = np.argsort(-row)[:TOP_K]
            answers.append(
                [
                    {"class_id": int(i), "class_name": self.labels[i], "confidence": float(row[i])}
                    for i in best
                ]
            )
        return answers

    def serialize(self, data: Any) -> bytes:
        return json.dumps({"predictions": data}).encode()


def main() -> None:
    server = Server()
    server.append_worker(Decode, num=int(os.environ.get("PEER_DECODERS", "2")))
    server.append_worker(Classify, num=1, max_batch_size=8, max_wait_time=10)
    server.run()


if __name__ == "__main__":
    main()

"""The history at scale: fill a PostgreSQL database with realistic predictions, then time the
history, statistics, quality and drift calls through a running `visinspect serve`.

  python -m bench.history fill --rows 10000000 --database-url URL [--days 30]
  python -m bench.history measure --database-url URL [--requests 60] [--pin]
  python -m bench.history run --rows N --database-url URL [--fresh] [--pin]   (create, fill, measure)
  python -m bench.history explain --database-url URL   (every query's plan: docs/history-plans.md)
  python -m bench.history remigrate --database-url URL (the head migration down and up, timed)
  make bench-history          (10 M rows into the database `visinspect_history`, then measure)
  make bench-history-smoke    (CI: 20,000 rows into a fresh database, then remigrate; its numbers
                              mean nothing)

`fill` uses the service's own schema (migrated to the head first) and writes with COPY, so the
rollups' trigger counts every row as it would count the service's own; it appends, so a second
fill adds to the first. The distributions: top-1 classes Zipf-like over the 1,000 ImageNet
classes, confidences Beta(4, 1.5), times over the last `--days` days with a daily cycle, in time
order (as the service writes them), two model versions (the older one only in the first third),
a review for one prediction in 1,000, and for every prediction a kept embedding as the service
keeps one by default (1,280 uint8 codes; `--no-embeddings`: none, as with KEEP_EMBEDDINGS=false).

`measure` starts the real server on the database and reports, for each call, p50 and p95 over
`--requests` sequential requests (after one warm-up); then /predict's p50 alone, with reads
running, and with reads and the group-commit writer running (its sustained rows/s, each row with
its embedding); the time to drop each of the two oldest days while rows are inserted, then to
delete those days' embeddings; and the bytes per row of the table, its indexes, the rollups and
the kept embeddings. `--pin` gives the server a CPU of its own (the database, the
clients and the writer share the others), so that what the writer does to /predict is not just
CPU time taken from it. Its targets (issue: the history at production scale): p95 <= 50 ms per
call at 10 M rows, >= 5,000 rows/s written with reads running, a day dropped in <= 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
from alembic import command
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from bench.footprint import photo_jpeg
from bench.load import free_port
from visinspect.db import embeddings, partitions, repository, retention
from visinspect.db.schema import alembic_config, upgrade_to_head
from visinspect.db.session import Database
from visinspect.db.tables import EmbeddingRecord, PredictionRecord
from visinspect.db.writer import PredictionWriter
from visinspect.inference.classifier import load_labels
from visinspect.services.history import encode_cursor

VISINSPECT = str(Path(sys.executable).parent / "visinspect")
SERVER_CPU = 0  # --pin
P95_TARGET_MS = 50.0
WRITER_TARGET_ROWS_S = 5000
EMBEDDING_SIZE = 1280  # Lite0's pooled features
CURRENT, OLDER = "sha256:579344248a93e230", "sha256:1d2f3a4b5c6d7e8f"
COLUMNS = (
    "created_at, request_id, model_name, model_version, inference_backend, precision, class_id, "
    "class_name, confidence, top_k, image_sha256, image_width, image_height, image_format, "
    "image_bytes, filename, latency_ms, decode_ms, inference_ms"
)


# --- fill ---------------------------------------------------------------------------------------


def _popularity(count: int) -> np.ndarray:
    """Zipf-like: the k-th most popular class is drawn in proportion to 1 / k^1.1."""
    weights = 1.0 / np.arange(1, count + 1) ** 1.1
    return weights / weights.sum()


_LABELS = load_labels()
_POPULARITY = _popularity(len(_LABELS))
_WRITER_DRAWS = np.random.default_rng(7)  # the writer's rows (`service_record`)
_WRITER_CLASSES = _WRITER_DRAWS.choice(len(_LABELS), size=100_000, p=_POPULARITY)
_WRITER_CONFIDENCES = _WRITER_DRAWS.beta(4.0, 1.5, size=100_000)
_DRAWN = itertools.count()


def fill(
    url: str,
    rows: int,
    days: float,
    chunk: int = 100_000,
    seed: int = 1,
    embeddings: bool = True,
) -> None:
    """Append `rows` predictions (and, as the service keeps by default, their embeddings)."""
    engine = create_engine(url)
    upgrade_to_head(engine)
    labels = _LABELS
    generator = np.random.default_rng(seed)
    popularity = _POPULARITY
    ranked = generator.permutation(len(labels))  # which class is how popular
    now = datetime.now(UTC)
    span_s = days * 86400
    with engine.begin() as connection:  # COPY bypasses the group commit, which makes them
        first = (now - timedelta(seconds=span_s)).date()
        partitions.ensure_days(
            connection, {first + timedelta(days=n) for n in range((now.date() - first).days + 1)}
        )
    started = time.perf_counter()
    done = 0
    ages = _ages(generator, rows, span_s)
    raw = engine.raw_connection()
    try:
        if embeddings:
            _embedding_pool(raw, generator)
        while done < rows:
            n = min(chunk, rows - done)
            buffer = _chunk(
                generator, ages[done : done + n], labels, ranked, popularity, now, span_s
            )
            with (
                raw.cursor() as cursor,  # type: ignore[attr-defined]
                cursor.copy(f"COPY predictions ({COLUMNS}) FROM STDIN") as copy,
            ):
                copy.write(buffer)
            if embeddings:
                _add_embeddings(raw)
            raw.commit()
            done += n
            rate = done / (time.perf_counter() - started)
            print(f"  {done:,} rows ({rate:,.0f} rows/s)", flush=True)
        _add_reviews(raw, max(1, rows // 1000), generator)
        raw.commit()
    finally:
        raw.close()
    with engine.begin() as connection:
        connection.execute(text("ANALYZE"))
    engine.dispose()
    print(f"filled {rows:,} rows in {time.perf_counter() - started:.0f} s")


def _ages(generator: np.random.Generator, n: int, span_s: float) -> np.ndarray:
    """n ages in seconds (how long before now a row was made), oldest first: the service
    writes its rows in time order, so a time range's rows lie together in its partition."""
    ages = generator.uniform(0, span_s, size=n)
    # A daily cycle: more images by day than by night.
    hour = (ages / 3600) % 24
    keep = generator.uniform(size=n) < 0.55 + 0.45 * np.sin(np.pi * hour / 24)
    ages = np.where(keep, ages, generator.uniform(0, span_s, size=n))
    return np.sort(ages)[::-1]


def _chunk(
    generator: np.random.Generator,
    ages: np.ndarray,
    labels: tuple[str, ...],
    ranked: np.ndarray,
    popularity: np.ndarray,
    now: datetime,
    span_s: float,
) -> str:
    """A row per age as COPY text: the per-row work is one f-string (times and digests
    vectorised)."""
    n = len(ages)
    classes = ranked[generator.choice(len(labels), size=n, p=popularity)]
    confidences = generator.beta(4.0, 1.5, size=n)
    moments = np.datetime64(now.replace(tzinfo=None), "us") - (ages * 1e6).astype("timedelta64[us]")
    times = np.datetime_as_string(moments, unit="us")
    versions = np.where(ages > span_s * 2 / 3, OLDER, CURRENT)
    hexes = generator.bytes(32 * n).hex()
    names = [json.dumps(label) for label in labels]
    lines = []
    for i in range(n):
        c = int(classes[i])
        r = (c + 1) % 1000
        p = float(confidences[i])
        top_k = (
            f'[{{"class_id": {c}, "class_name": {names[c]}, "confidence": {p!r}}}, '
            f'{{"class_id": {r}, "class_name": {names[r]}, "confidence": {(1 - p) / 2!r}}}]'
        )
        digest = hexes[64 * i : 64 * i + 64]
        lines.append(
            f"{times[i]}+00\t{digest[:32]}\tefficientnet_lite0\t{versions[i]}\tonnxruntime\t"
            f"fp32\t{c}\t{labels[c]}\t{p!r}\t{top_k}\t{digest}\t640\t480\tJPEG\t58211\t"
            f"IMG_{i % 10000:04d}.jpg\t21.4\t6.2\t13.9"
        )
    return "\n".join(lines) + "\n"


EMBEDDING_POOL = 4096


def _embedding_pool(raw: Any, generator: np.random.Generator) -> None:
    """A temporary table of distinct embedding rows in the kept form (uint8 codes, low, scale),
    which `_add_embeddings` gives to the new predictions in turn: the bytes a row costs are
    those of the service's rows; what the codes say does not matter to the history."""
    codes = generator.integers(0, 256, size=(EMBEDDING_POOL, EMBEDDING_SIZE), dtype=np.uint8)
    with raw.cursor() as cursor:
        cursor.execute(
            "CREATE TEMPORARY TABLE embedding_pool (n int, low real, scale real, codes bytea)"
        )
        with cursor.copy("COPY embedding_pool FROM STDIN") as copy:
            for n in range(EMBEDDING_POOL):
                copy.write_row((n, -0.3, 0.02, codes[n].tobytes()))


def _add_embeddings(raw: Any) -> None:
    """Every prediction without an embedding gets one (the chunk just copied: ids only grow)."""
    with raw.cursor() as cursor:
        cursor.execute(
            f"""INSERT INTO prediction_embeddings
                    (prediction_id, created_at, model_version, low, scale, codes)
                SELECT p.id, p.created_at, p.model_version, e.low, e.scale, e.codes
                FROM predictions p JOIN embedding_pool e ON e.n = p.id % {EMBEDDING_POOL}
                WHERE p.id > (SELECT coalesce(max(prediction_id), 0) FROM prediction_embeddings)"""
        )


def _add_reviews(raw: Any, count: int, generator: np.random.Generator) -> None:
    """A review for `count` random predictions: one in ten says wrong (the runner-up)."""
    with raw.cursor() as cursor:
        cursor.execute("SELECT min(id), max(id) FROM predictions")
        low, high = cursor.fetchone()
        ids = sorted({int(i) for i in generator.integers(low, high + 1, size=count)})
        cursor.execute(
            """INSERT INTO reviews (prediction_id, created_at, verdict, predicted_class_id,
                                    predicted_class_name, prediction_created_at,
                                    true_class_id, reviewer)
               SELECT p.id, now(), CASE WHEN p.id %% 10 = 0 THEN 'wrong' ELSE 'correct' END,
                      p.class_id, p.class_name, p.created_at,
                      CASE WHEN p.id %% 10 = 0 THEN (p.class_id + 1) %% 1000 ELSE p.class_id END,
                      'bench'
               FROM predictions p WHERE p.id = ANY(%s)""",
            (ids,),
        )


# --- measure ------------------------------------------------------------------------------------


def measure(url: str, requests: int, pin: bool = False) -> dict[str, Any]:
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = int(connection.scalar(text("SELECT count(*) FROM predictions")) or 0)
        deep, popular, day, unaligned = _samples(connection)
        sizes = _sizes(connection, rows)
    engine.dispose()
    calls = {
        "history, first page (limit 50)": ("/predictions", {"limit": 50}),
        "history, a page in the middle (cursor)": ("/predictions", {"limit": 50, "cursor": deep}),
        "history, one class (limit 50)": ("/predictions", {"limit": 50, "class_name": popular}),
        "statistics, all time": ("/predictions/stats", {}),
        "statistics, one UTC day": (
            "/predictions/stats",
            {
                "created_after": day.isoformat(),
                "created_before": (day + timedelta(days=1)).isoformat(),
            },
        ),
        "statistics, 24 h from hh:mm": (
            "/predictions/stats",
            {
                "created_after": unaligned.isoformat(),
                "created_before": (unaligned + timedelta(days=1)).isoformat(),
            },
        ),
        "quality, all time": ("/predictions/quality", {}),
        "drift, 24h against 7d": ("/predictions/drift", {}),
        "review queue (reviewed=false, max_confidence=0.5)": (
            "/predictions",
            {"reviewed": "false", "max_confidence": 0.5, "limit": 50},
        ),
    }
    port = free_port()
    restore = _pin_away_from_server() if pin else {}
    server = subprocess.Popen(
        [VISINSPECT, "serve", "--port", str(port), "--workers", "1"],
        env={**_environment(), "DATABASE_URL": url, "LOG_LEVEL": "WARNING"},
        preexec_fn=(lambda: os.sched_setaffinity(0, {SERVER_CPU})) if pin else None,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, server)
        results = {
            name: _time(base, path, params, requests) for name, (path, params) in calls.items()
        }
        writer = _writer_under_reads(url, base)
    finally:
        server.terminate()
        server.wait(timeout=60)
        for pid, cpus in restore.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, cpus)
    report = {"rows": rows, "calls": results, "writer": writer, "sizes": sizes, "pinned": pin}
    report["drop"] = _drop_oldest_days(url)
    _print(report)
    return report


def _pin_away_from_server() -> dict[int, set[int]]:
    """--pin: the server gets CPU SERVER_CPU to itself; this process (the clients and the writer)
    and the local PostgreSQL's processes (new backends inherit the postmaster's) the others, as
    when the database has a machine of its own. Returns what to restore."""
    others = os.sched_getaffinity(0) - {SERVER_CPU}
    if not others:
        raise SystemExit("--pin needs two CPUs")
    restore = {0: os.sched_getaffinity(0)}
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() == "postgres":
                pid = int(comm.parent.name)
                restore[pid] = os.sched_getaffinity(pid)
                os.sched_setaffinity(pid, others)
    if len(restore) == 1:
        print("--pin: no local PostgreSQL process could be moved; only the clients are pinned")
    os.sched_setaffinity(0, others)
    return restore


def _samples(connection: Any) -> tuple[str, str, datetime, datetime]:
    """What `measure` and `explain` ask for: a cursor to the middle of the history, the most
    frequent class, the start of a UTC day two days back, and a time two days back not on the
    hour (for a range that needs rows)."""
    middle = connection.execute(
        text(
            "SELECT id, created_at FROM predictions WHERE created_at >= "
            "(SELECT min(created_at) + (max(created_at) - min(created_at)) / 2 FROM predictions)"
            " ORDER BY created_at, id LIMIT 1"
        )
    ).one()
    popular = connection.scalar(
        text(
            "SELECT class_name FROM rollup_daily_classes GROUP BY class_name "
            "ORDER BY sum(count) DESC LIMIT 1"
        )
    )
    deep = encode_cursor(SimpleNamespace(id=middle.id, created_at=middle.created_at), "newest")  # type: ignore[arg-type]
    now = datetime.now(UTC)
    day = (now - timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)
    return deep, str(popular), day, now - timedelta(days=2, minutes=17)


def _environment() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}


def _wait_ready(base: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become ready within 120 s")


def _time(base: str, path: str, params: dict[str, Any], requests: int) -> dict[str, float]:
    with httpx.Client(base_url=base, timeout=120) as client:
        first = client.get(path, params=params)
        first.raise_for_status()
        seconds = []
        for _ in range(requests):
            started = time.perf_counter()
            client.get(path, params=params).raise_for_status()
            seconds.append(time.perf_counter() - started)
    ms = sorted(s * 1000 for s in seconds)
    return {
        "p50_ms": round(statistics.median(ms), 1),
        "p95_ms": round(ms[max(0, int(len(ms) * 0.95) - 1)], 1),
    }


def _writer_under_reads(url: str, base: str, seconds: float = 10.0) -> dict[str, float]:
    """/predict alone; then with a client reading the first page and the statistics in a loop;
    then with the group-commit writer too, 256 rows in flight. The last two phases tell what the
    writer adds to /predict's latency; the first, what the reads add."""
    stop = threading.Event()
    predict_ms: list[float] = []
    reads = [0]

    def read_loop() -> None:
        with httpx.Client(base_url=base, timeout=60) as client:
            while not stop.is_set():
                client.get("/predictions", params={"limit": 50})
                client.get("/predictions/stats")
                reads[0] += 2

    def predict_loop() -> None:
        photo = photo_jpeg()
        with httpx.Client(base_url=base, timeout=60) as client:
            while not stop.is_set():
                started = time.perf_counter()
                client.post("/predict", files={"file": ("coffee.jpg", photo)})
                predict_ms.append((time.perf_counter() - started) * 1000)

    def phase(seconds: float) -> list[float]:
        predict_ms.clear()
        time.sleep(seconds)
        return list(predict_ms)

    predictor, reader = threading.Thread(target=predict_loop), threading.Thread(target=read_loop)
    predictor.start()
    try:
        alone = phase(seconds / 2)
        reader.start()
        with_reads = phase(seconds / 2)
        written, with_writer = _timed_writer(url, seconds, reads, predict_ms)
    finally:
        stop.set()
        for thread in (predictor, reader):
            if thread.is_alive():
                thread.join()
    return {
        "rows_per_s": round(written / seconds),
        "reads_per_s": round(reads[0] / seconds, 1),
        "predict_alone_p50_ms": _median(alone),
        "predict_with_reads_p50_ms": _median(with_reads),
        "predict_p50_ms": _median(with_writer),
    }


def _timed_writer(
    url: str, seconds: float, reads: list[int], predict_ms: list[float]
) -> tuple[int, list[float]]:
    """The writer's rows written in `seconds`, and /predict's latencies meanwhile. A writer that
    writes every row built ran out of rows, not of speed (CI's machine outran 9,000 rows/s): it
    is timed again with twice the rows, up to three times."""
    rate = WRITER_ROWS_READY
    for _ in range(3):
        ready = _rows_for(seconds, rate)
        reads[0] = 0
        predict_ms.clear()
        written = asyncio.run(_write_for(url, seconds, ready))
        if written < len(ready):
            return written, list(predict_ms)
        rate *= 2
    raise SystemExit(f"the writer wrote all {written:,} rows built: raise WRITER_ROWS_READY")


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 1) if values else 0.0


# Rows built ahead per second of writing, at first (`_timed_writer` doubles it when all are written).
WRITER_ROWS_READY = 9000


def _rows_for(seconds: float, rate: int) -> list[tuple[PredictionRecord, EmbeddingRecord]]:
    """The writer's rows, built before it is timed: in the service, /predict builds a row and
    its kept embedding and the writer only writes them; built in the timed loop, in this one
    process with the bench's readers, the ORM objects' construction took a third of its CPU."""
    count = int(rate * seconds)
    return [(service_record(f"bench-writer-{n}"), kept_embedding()) for n in range(count)]


async def _write_for(
    url: str, seconds: float, rows: list[tuple[PredictionRecord, EmbeddingRecord]]
) -> int:
    """How many of `rows` 256 lanes write in `seconds` (all of them: more were needed)."""
    engine = create_engine(url, pool_size=4)
    database = Database(engine, max_concurrency=4)
    writer = PredictionWriter(database)
    writer.start()
    written = 0
    deadline = time.perf_counter() + seconds
    ready = iter(rows)

    async def one_lane() -> None:
        nonlocal written
        while time.perf_counter() < deadline and (row := next(ready, None)):
            await writer.store(*row)
            written += 1

    try:
        await asyncio.gather(*(one_lane() for _ in range(256)))
    finally:
        await writer.close()
        engine.dispose()
    return written


_KEPT = [
    embeddings.encode(vector, datetime.now(UTC), CURRENT)
    for vector in np.random.default_rng(8).standard_normal((64, EMBEDDING_SIZE)).astype(np.float32)
]


def kept_embedding() -> EmbeddingRecord:
    """A kept embedding as the service hands it to the writer (encoded ahead, like
    `service_record`'s draws: the encoding is /predict's work, not the writer's)."""
    kept = _KEPT[next(_DRAWN) % len(_KEPT)]
    return EmbeddingRecord(
        created_at=datetime.now(UTC),
        model_version=CURRENT,
        low=kept.low,
        scale=kept.scale,
        codes=kept.codes,
    )


def service_record(request_id: str) -> PredictionRecord:
    """A row as the service writes it, of a class drawn Zipf-like (so that the writer's rows
    neither pile onto one rollup row nor make one class look frequent lately). The draws are
    made ahead: drawing per row would cost the writer's client more than the row costs it."""
    n = next(_DRAWN) % len(_WRITER_CLASSES)
    class_id, confidence = int(_WRITER_CLASSES[n]), float(_WRITER_CONFIDENCES[n])
    name = _LABELS[class_id]
    return PredictionRecord(
        created_at=datetime.now(UTC),
        request_id=request_id,
        model_name="efficientnet_lite0",
        model_version=CURRENT,
        backend="onnxruntime",
        precision="fp32",
        class_id=class_id,
        class_name=name,
        confidence=confidence,
        predictions=[{"class_id": class_id, "class_name": name, "confidence": confidence}],
        image_sha256=f"{n:064x}",
        image_width=640,
        image_height=480,
        image_format="JPEG",
        image_bytes=58211,
        filename="bench.jpg",
        latency_ms=20.0,
    )


def _drop_oldest_days(url: str, days: int = 2) -> dict[str, Any] | None:
    """RETENTION_DAYS applied to the `days` oldest days (the oldest is usually a partial one;
    they are gone afterwards: `run` fills up again), while another connection inserts today's
    rows one by one; None when the table is not partitioned."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            partitioned = partitions.day_partitions(connection)
            if len(partitioned) <= days:
                return None
            oldest = sorted(partitioned)[:days]
            rows = [
                int(connection.scalar(text(f"SELECT count(*) FROM {partitioned[d]}")) or 0)
                for d in oldest
            ]
        today = datetime.now(UTC).date()
        kept_days = (today - oldest[-1]).days - 1
        with _inserting(engine, "bench-retention") as insert_ms:
            done = partitions.maintain(engine, retention_days=kept_days)
        with _inserting(engine, "bench-embedding-retention") as embedding_insert_ms:
            started = time.perf_counter()
            deleted = retention.apply_retention(engine, kept_days)
            embedding_seconds = time.perf_counter() - started
    finally:
        engine.dispose()
    return {
        "embeddings": {
            "rows": deleted,
            "seconds": round(embedding_seconds, 2),
            "inserts_during": len(embedding_insert_ms),
            "slowest_insert_ms": round(max(embedding_insert_ms, default=0.0), 1),
        },
        "days": [
            {"rows": n, "seconds": round(s, 3)}
            for n, s in zip(rows, done.drop_seconds, strict=True)
        ],
        "inserts_during": len(insert_ms),
        "slowest_insert_ms": round(max(insert_ms, default=0.0), 1),
    }


@contextlib.contextmanager
def _inserting(engine: Engine, request_id: str, pause_s: float = 0.0) -> Iterator[list[float]]:
    """Another connection inserts today's rows one at a time, as long as the block runs; the
    list it yields holds each insert's milliseconds (how long one waited: a lock would show)."""
    stop = threading.Event()
    insert_ms: list[float] = []

    def insert_today() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            with Session(engine) as session:
                repository.add_predictions(session, [service_record(request_id)])
                session.commit()
            insert_ms.append((time.perf_counter() - started) * 1000)
            stop.wait(pause_s)

    inserter = threading.Thread(target=insert_today)
    inserter.start()
    try:
        yield insert_ms
    finally:
        stop.set()
        inserter.join()


def remigrate(url: str) -> dict[str, Any]:
    """The head migration undone and done again on a filled database, while another connection
    inserts a row every 10 ms: how long each direction takes, and the slowest insert meanwhile
    (the history indexes' migration builds every partition's index CONCURRENTLY)."""
    engine = create_engine(url)
    report: dict[str, Any] = {}
    try:
        for direction in ("downgrade", "upgrade"):
            started = time.perf_counter()
            with _inserting(engine, "bench-migration", pause_s=0.01) as insert_ms:
                if direction == "downgrade":
                    config = alembic_config()
                    with engine.connect() as connection:
                        config.attributes["connection"] = connection
                        command.downgrade(config, "-1")
                        connection.commit()
                else:
                    upgrade_to_head(engine)
            report[direction] = {
                "seconds": round(time.perf_counter() - started, 1),
                "inserts_during": len(insert_ms),
                "slowest_insert_ms": round(max(insert_ms, default=0.0), 1),
            }
            print(f"{direction}: {report[direction]}", flush=True)
    finally:
        engine.dispose()
    return report


def _sizes(connection: Any, rows: int) -> dict[str, float]:
    def size(expression: str) -> int:
        return int(connection.scalar(text(f"SELECT {expression}")) or 0)

    # A partitioned table's own size is 0: its partitions hold the rows.
    parts = "(SELECT inhrelid FROM pg_inherits WHERE inhparent = 'predictions'::regclass)"
    table = size(f"coalesce((SELECT sum(pg_table_size(r)) FROM {parts} AS p(r)), 0)")
    indexes = size(f"coalesce((SELECT sum(pg_indexes_size(r)) FROM {parts} AS p(r)), 0)")
    if not table:  # not partitioned
        table = size("pg_table_size('predictions')")
        indexes = size("pg_indexes_size('predictions')")
    rollups = sum(
        size(f"pg_total_relation_size('{name}')")
        for name in ("rollup_hourly_classes", "rollup_daily_classes", "rollup_hourly_confidences")
    )
    kept = size("pg_total_relation_size('prediction_embeddings')")
    per_row = max(rows, 1)
    return {
        "embedding_bytes_per_row": round(kept / per_row, 1),
        "table_bytes_per_row": round(table / per_row, 1),
        "index_bytes_per_row": round(indexes / per_row, 1),
        "rollup_bytes_per_row": round(rollups / per_row, 1),
        "total_gb": round((table + indexes + rollups + kept) / 1e9, 2),
    }


def _print(report: dict[str, Any]) -> None:
    print(f"\n{report['rows']:,} rows")
    print(f"{'call':52} {'p50 ms':>8} {'p95 ms':>8}  target p95 <= {P95_TARGET_MS:g} ms")
    for name, result in report["calls"].items():
        mark = "ok" if result["p95_ms"] <= P95_TARGET_MS else "ABOVE"
        print(f"{name:52} {result['p50_ms']:8.1f} {result['p95_ms']:8.1f}  {mark}")
    writer = report["writer"]
    mark = "ok" if writer["rows_per_s"] >= WRITER_TARGET_ROWS_S else "BELOW"
    print(
        f"writer: {writer['rows_per_s']:,} rows/s with {writer['reads_per_s']} reads/s running "
        f"(target >= {WRITER_TARGET_ROWS_S:,}: {mark}); /predict p50 "
        f"{writer['predict_alone_p50_ms']} ms alone, {writer['predict_with_reads_p50_ms']} ms "
        f"with the reads, {writer['predict_p50_ms']} ms with the reads and the writer"
    )
    sizes = report["sizes"]
    print(
        f"bytes per row: table {sizes['table_bytes_per_row']}, indexes "
        f"{sizes['index_bytes_per_row']}, rollups {sizes['rollup_bytes_per_row']}, kept "
        f"embeddings {sizes['embedding_bytes_per_row']} ({sizes['total_gb']} GB in all)"
    )
    drop = report.get("drop")
    for day in drop["days"] if drop else []:
        print(
            f"dropping a day of rows ({day['rows']:,} rows, detach concurrently + drop): "
            f"{day['seconds'] * 1000:.0f} ms (target <= 1,000 ms)"
        )
    if drop:
        print(
            f"inserts into today's partition meanwhile: {drop['inserts_during']}, the slowest "
            f"{drop['slowest_insert_ms']} ms"
        )
        kept = drop["embeddings"]
        print(
            f"the same days' kept embeddings (EMBEDDING_RETENTION_DAYS, batches of 10,000): "
            f"{kept['rows']:,} rows in {kept['seconds']} s; {kept['inserts_during']} inserts "
            f"meanwhile, the slowest {kept['slowest_insert_ms']} ms"
        )
    print(json.dumps(report))


def explain(url: str) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of every statement the service runs for each call: the calls
    go through the service layer itself, and a cursor hook captures their SQL and parameters."""
    from sqlalchemy import event

    from visinspect.filters import HistoryFilter
    from visinspect.services.drift import DriftService, DriftThresholds
    from visinspect.services.history import HistoryService
    from visinspect.services.reviews import ReviewService

    engine = create_engine(url)
    database = Database(engine, max_concurrency=1)
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        captured.append((statement, parameters))

    with engine.connect() as connection:
        deep, popular, day, unaligned = _samples(connection)
    history, reviews = HistoryService(database), ReviewService(database, load_labels())
    drift = DriftService(database, DriftThresholds(0.1, 0.1, 0.01, 50))
    calls: dict[str, Any] = {
        "history, first page": lambda: history.page(HistoryFilter(), 50),
        "history, a page in the middle (cursor)": lambda: history.page(HistoryFilter(), 50, cursor=deep),
        "history, one class": lambda: history.page(HistoryFilter(class_name=popular), 50),
        "review queue": lambda: history.page(HistoryFilter(reviewed=False, max_confidence=0.5), 50, 0, True),
        "statistics, all time": lambda: history.stats(HistoryFilter(), 20),
        "statistics, one UTC day": lambda: history.stats(
            HistoryFilter(created_after=day, created_before=day + timedelta(days=1)), 20
        ),
        "statistics, 24 h from hh:mm": lambda: history.stats(
            HistoryFilter(created_after=unaligned, created_before=unaligned + timedelta(days=1)), 20
        ),
        "quality, all time": lambda: reviews.quality(HistoryFilter(), 20, 20),
        "drift, 24h against 7d": lambda: drift.compare(timedelta(hours=24), timedelta(days=7)),
    }  # fmt: skip
    for name, call in calls.items():
        captured.clear()
        event.listen(engine, "before_cursor_execute", capture)
        try:
            asyncio.run(call())
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        print(f"\n### {name}\n")
        with engine.connect() as connection:
            for statement, parameters in captured:
                if not statement.lstrip().upper().startswith("SELECT"):
                    continue
                plan = connection.exec_driver_sql(
                    "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + statement, parameters
                ).scalars()
                lines = list(plan)
                unread = [line for line in lines if "(never executed)" in line]
                kept = [line for line in lines if "(never executed)" not in line]
                if unread:
                    kept.append(f"  ({len(unread)} more partitions' scans: never executed)")
                print("```\n" + " ".join(statement.split())[:400])
                print("\n".join(kept) + "\n```")
    engine.dispose()


PIN_HELP = (
    "the server on CPU 0, PostgreSQL (local, when this user may move it), the clients and the "
    "writer on the other CPUs"
)


NO_EMBEDDINGS_HELP = "fill predictions only (as with KEEP_EMBEDDINGS=false)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    filling = commands.add_parser("fill", help="append N realistic rows")
    filling.add_argument("--rows", type=int, required=True)
    filling.add_argument("--days", type=float, default=30)
    filling.add_argument("--database-url", required=True)
    filling.add_argument("--no-embeddings", action="store_true", help=NO_EMBEDDINGS_HELP)
    measuring = commands.add_parser("measure", help="time the calls through the server")
    measuring.add_argument("--database-url", required=True)
    measuring.add_argument("--requests", type=int, default=60)
    measuring.add_argument("--pin", action="store_true", help=PIN_HELP)
    explaining = commands.add_parser("explain", help="the plan of every query of every call")
    explaining.add_argument("--database-url", required=True)
    remigrating = commands.add_parser(
        "remigrate", help="undo and redo the head migration while rows are inserted"
    )
    remigrating.add_argument("--database-url", required=True)
    running = commands.add_parser("run", help="create the database, fill it up to N rows, measure")
    running.add_argument("--rows", type=int, required=True)
    running.add_argument("--days", type=float, default=30)
    running.add_argument("--database-url", required=True)
    running.add_argument("--requests", type=int, default=60)
    running.add_argument("--fresh", action="store_true", help="drop the database first")
    running.add_argument("--no-embeddings", action="store_true", help=NO_EMBEDDINGS_HELP)
    running.add_argument("--pin", action="store_true", help=PIN_HELP)
    args = parser.parse_args(argv)
    url = args.database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    if args.command == "fill":
        fill(url, args.rows, args.days, embeddings=not args.no_embeddings)
    elif args.command == "measure":
        measure(url, args.requests, args.pin)
    elif args.command == "explain":
        explain(url)
    elif args.command == "remigrate":
        remigrate(url)
    else:
        missing = prepare_database(url, args.rows, args.fresh)
        if missing:
            fill(url, missing, args.days, embeddings=not args.no_embeddings)
        measure(url, args.requests, args.pin)
    return 0


def prepare_database(url: str, rows: int, fresh: bool) -> int:
    """Create the database (dropped first when `fresh`); how many rows it lacks to hold `rows`."""
    from sqlalchemy.engine import make_url

    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        name = target.database
        if fresh:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        exists = connection.scalar(
            text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
        )
        if not exists:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    engine = create_engine(url)
    upgrade_to_head(engine)
    with engine.connect() as connection:
        have = int(connection.scalar(text("SELECT count(*) FROM predictions")) or 0)
    engine.dispose()
    return max(0, rows - have)


if __name__ == "__main__":
    sys.exit(main())

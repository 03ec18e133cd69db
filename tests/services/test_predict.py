"""PredictService: bytes -> classification -> committed record, on the real model and a real
database (PostgreSQL and SQLite), each test inside a transaction that is rolled back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import numpy as np
import pytest
from sqlalchemy import text

from tests.support import count_records, gated_model, make_settings
from visinspect.context import RequestContext
from visinspect.db import embeddings, repository, retention
from visinspect.db.session import Database
from visinspect.db.tables import PredictionRecord
from visinspect.errors import (
    CorruptImage,
    EmptyImage,
    NotAnImage,
    RecordNotStored,
    RequestTimedOut,
    TooManyFiles,
)
from visinspect.inference.classifier import Classifier
from visinspect.inference.preprocess import preprocess
from visinspect.services.predict import Upload, clean_filename
from visinspect.startup import Prepared, Services, open_services

pytestmark = pytest.mark.anyio


@pytest.fixture
async def services(database: Database, classifier: Classifier) -> AsyncIterator[Services]:
    settings = make_settings("sqlite://", max_batch_files=3, request_timeout_s=5)
    async with open_services(settings, Prepared(database, classifier)) as started:
        yield started


async def test_a_classified_upload_is_a_committed_record_with_the_models_identity(
    services: Services, database: Database, photos: Path, classifier: Classifier
) -> None:
    upload = Upload.from_bytes((photos / "coffee.png").read_bytes(), "coffee.png")
    record = await services.predict.classify_and_record(upload, RequestContext("svc-1", top_k=2))
    assert record.id is not None
    assert (record.model_name, record.model_version, record.backend) == (
        classifier.identity.name,
        classifier.identity.version,
        classifier.identity.backend,
    )
    assert record.class_name == "espresso"
    assert [p["class_name"] for p in record.predictions] == ["espresso", "cup"]
    assert (record.request_id, record.filename, record.image_bytes) == (
        "svc-1",
        "coffee.png",
        (photos / "coffee.png").stat().st_size,
    )
    fetched = await services.history.get(record.id)  # read back in a new transaction
    assert (fetched.id, fetched.predictions, fetched.created_at) == (
        record.id,
        record.predictions,
        record.created_at,
    )
    # Where the latency went, stored with the row: both parts measured, within the whole.
    assert fetched.decode_ms is not None
    assert fetched.inference_ms is not None
    assert fetched.decode_ms > 0
    assert fetched.inference_ms > 0
    assert fetched.decode_ms + fetched.inference_ms <= fetched.latency_ms
    assert await count_records(database) == 1


async def test_default_top_k_applies(services: Services, photos: Path) -> None:
    upload = Upload.from_bytes((photos / "camera.png").read_bytes())
    record = await services.predict.classify_and_record(upload, RequestContext("svc-2"))
    assert len(record.predictions) == 3
    assert record.filename is None


async def test_a_batch_gives_each_file_its_outcome_in_order(
    services: Services, database: Database, photos: Path
) -> None:
    uploads = [
        Upload.from_bytes((photos / "coffee.png").read_bytes(), "coffee.png"),
        Upload.from_bytes(b"", "empty.png"),
        Upload.from_bytes(b"plain text", "notes.txt"),
    ]
    outcomes = await services.predict.classify_many(uploads, RequestContext("svc-3"))
    assert isinstance(outcomes[0], PredictionRecord)
    assert isinstance(outcomes[1], EmptyImage)
    assert isinstance(outcomes[2], NotAnImage)
    assert await count_records(database) == 1
    with pytest.raises(TooManyFiles, match="MAX_BATCH_FILES"):
        await services.predict.classify_many(uploads * 2, RequestContext("svc-4"))


async def test_a_bad_upload_stores_nothing(services: Services, database: Database) -> None:
    with pytest.raises(CorruptImage):
        await services.predict.classify_and_record(
            Upload.from_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40), RequestContext("svc-5")
        )
    assert await count_records(database) == 0


@pytest.mark.parametrize("deadline_s", [None, 60])  # 60: a client deadline capped by it
async def test_the_timeout_answers_and_stores_nothing(
    database: Database, classifier: Classifier, photos: Path, deadline_s: float | None
) -> None:
    """The model is held inside a pass (a gate, not a slow machine) until the timeout fired."""
    settings = make_settings("sqlite://", request_timeout_s=0.2, decode_timeout_s=0.1)
    with gated_model(classifier) as gate:
        async with open_services(settings, Prepared(database, classifier)) as services:
            upload = Upload.from_bytes((photos / "coffee.png").read_bytes())
            with pytest.raises(RequestTimedOut, match="REQUEST_TIMEOUT_S"):
                await services.predict.classify_and_record(
                    upload, RequestContext("svc-6", timeout_s=deadline_s)
                )
            gate.release.set()  # let the held pass end before the services stop
    assert await count_records(database) == 0


async def test_a_row_the_database_refuses_is_record_not_stored_not_an_outage(
    services: Services, database: Database, photos: Path
) -> None:
    """A real refusal (a constraint/trigger added inside the test's transaction), not a mock:
    it is a 500-class error carrying the driver's error, never DatabaseUnavailable (a 503)."""

    def refuse_inserts(session: object) -> None:
        connection = session.connection()  # type: ignore[attr-defined]
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("ALTER TABLE predictions ADD CONSTRAINT refuse_all CHECK (confidence < 0)")
            )
        else:
            connection.execute(
                text(
                    "CREATE TRIGGER refuse_all BEFORE INSERT ON predictions "
                    "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                )
            )

    await database.run(refuse_inserts)
    upload = Upload.from_bytes((photos / "coffee.png").read_bytes())
    with pytest.raises(RecordNotStored) as refused:
        await services.predict.classify_and_record(upload, RequestContext("svc-7"))
    assert refused.value.code == "internal_error"
    assert refused.value.__cause__ is not None


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("coffee.png", "coffee.png"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\photo.jpg", "photo.jpg"),
        ("nul\x00byte.png", "nulbyte.png"),
        ("bidi\u202egnp.exe", "bidignp.exe"),
        ("tab\tand\nnewline.png", "tabandnewline.png"),
        ("x" * 1000 + ".png", "x" * 255),
        ("", None),
        (None, None),
        ("dir/", None),
        ("\x00\x01", None),
    ],
)
def test_filenames_are_stored_safely(given: str | None, stored: str | None) -> None:
    assert clean_filename(given) == stored


async def test_a_nul_filename_is_stored_cleaned_on_every_database(
    services: Services, photos: Path
) -> None:
    upload = Upload.from_bytes((photos / "coffee.png").read_bytes(), "a\x00b.png")
    record = await services.predict.classify_and_record(upload, RequestContext("svc-8"))
    assert (await services.history.get(record.id)).filename == "ab.png"


async def test_concurrent_uploads_each_get_their_row(
    database: Database, classifier: Classifier, photos: Path
) -> None:
    settings = make_settings("sqlite://")
    data = (photos / "coffee.png").read_bytes()
    async with (
        open_services(settings, Prepared(database, classifier)) as services,
        anyio.create_task_group() as group,
    ):
        for i in range(4):
            group.start_soon(
                lambda i=i: services.predict.classify_and_record(
                    Upload.from_bytes(data), RequestContext(f"svc-9-{i}")
                )
            )
    assert await count_records(database) == 4


async def test_each_prediction_keeps_its_embedding_from_the_same_pass(
    services: Services, database: Database, photos: Path, classifier: Classifier
) -> None:
    """KEEP_EMBEDDINGS (the default): the pooled features are stored with the row, as uint8
    codes that decode to within half a step of what the model computed."""
    data = (photos / "coffee.png").read_bytes()
    record = await services.predict.classify_and_record(
        Upload.from_bytes(data), RequestContext("svc-emb")
    )
    kept = await database.run(repository.embeddings_of, [record.id], classifier.identity.version)
    low, scale, codes = kept[record.id]
    assert len(codes) == 1280
    decoded = preprocess(data, classifier.preprocessing, 10**8)
    (expected,) = classifier.classify(decoded.pixels[None], [1])
    assert expected.embedding is not None
    stored = embeddings.decode(low, scale, codes)
    assert np.max(np.abs(stored - expected.embedding)) <= scale / 2 + 1e-5
    # Another base model's embeddings are not comparable: never returned for it.
    assert await database.run(repository.embeddings_of, [record.id], "sha256:other") == {}


async def test_no_embedding_is_kept_when_keeping_is_off(
    database: Database, classifier: Classifier, photos: Path
) -> None:
    settings = make_settings("sqlite://", keep_embeddings=False)
    async with open_services(settings, Prepared(database, classifier)) as started:
        upload = Upload.from_bytes((photos / "coffee.png").read_bytes())
        record = await started.predict.classify_and_record(upload, RequestContext("svc-off"))
    kept = await database.run(repository.embeddings_of, [record.id], classifier.identity.version)
    assert kept == {}


def test_embedding_codes_round_trip_within_half_a_step() -> None:
    """The codec itself, on the range real embeddings have (ReLU6 features: 0..6) and on one
    with negative values (SiLU features of B0), and on a constant row."""
    rng = np.random.default_rng(7)
    for vector in (
        rng.uniform(0, 6, 1280).astype(np.float32),
        rng.normal(0, 1, 1280).astype(np.float32),
        np.full(1280, 0.25, dtype=np.float32),
    ):
        row = embeddings.encode(vector, datetime.now(UTC), "sha256:x")
        back = embeddings.decode(row.low, row.scale, row.codes)
        assert len(row.codes) == 1280
        assert np.max(np.abs(back - vector)) <= row.scale / 2 + 1e-5
        assert np.array_equal(embeddings.decode_many([(row.low, row.scale, row.codes)])[0], back)


async def test_embedding_retention_removes_only_the_old_rows(
    services: Services, database: Database, photos: Path, classifier: Classifier
) -> None:
    records = [
        await services.predict.classify_and_record(
            Upload.from_bytes((photos / "coffee.png").read_bytes()), RequestContext(f"ret-{i}")
        )
        for i in range(2)
    ]
    later = records[-1].created_at + timedelta(days=3)

    def removed() -> int:
        with database.sessions.begin() as session:
            return repository.delete_embeddings_before(session, later - timedelta(days=2), batch=10)

    assert await anyio.to_thread.run_sync(removed) == 2
    ids = [r.id for r in records]
    assert await database.run(repository.embeddings_of, ids, classifier.identity.version) == {}
    assert retention.retention_days(0, 0) == 0
    assert retention.retention_days(30, 0) == 30
    assert retention.retention_days(0, 90) == 90
    assert retention.retention_days(30, 7) == 7

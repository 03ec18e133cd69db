"""Structured logging (structlog) for our events and the standard-library loggers alike.

Both our own events and the standard-library loggers (uvicorn, alembic) go through one renderer, so
a production log is pure JSON lines and a developer's terminal is readable. The request id bound to
each line comes from `api/middleware.py`.
"""

from __future__ import annotations

import logging

import structlog


def configure_logging(level: str, fmt: str) -> None:
    """Route structlog and stdlib logging through one processor chain and renderer."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn installs its own handlers; let its records flow to ours instead. Its access log is
    # replaced by our `http.request` event, which carries the request id.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # Alembic narrates every context it opens (also for each readiness probe); `db.migrated` says
    # what matters. httpx logs every request the client or `visinspect classify --url` makes.
    # Library warnings (Pillow's, say) become log lines in the same format, not stray stderr text.
    logging.captureWarnings(True)
    for chatty in ("alembic", "httpx"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))

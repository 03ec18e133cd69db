"""`visinspect classify | serve | db wait | db upgrade | db current`: the console entry point.

`serve` checks what can be checked before the server starts (weights checksum, migrations), so a
broken deployment stops with one clear log line and exit code 1 instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from types import FrameType
from typing import Any

import structlog
import uvicorn
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from visinspect.config import Settings
from visinspect.db.schema import current_revision, head_revision, upgrade_to_head
from visinspect.db.session import create_db_engine
from visinspect.inference.model import ModelLoadError, resolve_weights, verify_weights
from visinspect.logging import configure_logging

log = structlog.get_logger("visinspect.cli")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"visinspect: invalid configuration:\n{exc}", file=sys.stderr)
        return 1
    configure_logging(settings.log_level, settings.log_format)
    try:
        result: int = args.handler(settings, args)
    except ModelLoadError as exc:
        log.error("startup.failed", part="model", reason=str(exc))
        return 1
    except SQLAlchemyError as exc:
        log.error("startup.failed", part="database", reason=_first_line(exc))
        return 1
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visinspect", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    classify = commands.add_parser(
        "classify",
        help="classify image files, folders or globs (against a server, or in-process)",
        description=(
            "Exit codes: 0 every image classified, 1 some failed, 2 no image matched, "
            "3 the server could not be reached."
        ),
    )
    classify.add_argument("paths", nargs="+", metavar="PATH", help="files, folders, globs")
    classify.add_argument("--url", help="server URL; without it the model runs in this process")
    classify.add_argument("--api-key", help="API key for the server")
    classify.add_argument("--top-k", type=int, default=None, help="classes per image")
    classify.add_argument(
        "--format", choices=["table", "jsonl", "csv"], default="table", help="output format"
    )
    classify.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    classify.set_defaults(handler=_classify)
    serve = commands.add_parser("serve", help="migrate the database, then serve HTTP")
    serve.add_argument("--host", help="default: HOST (127.0.0.1)")
    serve.add_argument("--port", type=int, help="default: PORT (8000)")
    serve.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    serve.set_defaults(handler=_serve)
    db = commands.add_parser("db", help="database schema").add_subparsers(
        required=True, metavar="ACTION"
    )
    wait = db.add_parser("wait", help="wait until the database answers (bounded retries)")
    wait.add_argument("--attempts", type=int, default=30, help="default 30")
    wait.add_argument("--interval", type=float, default=2.0, help="seconds between, default 2")
    wait.set_defaults(handler=_db_wait)
    db.add_parser("upgrade", help="alembic upgrade head").set_defaults(handler=_db_upgrade)
    db.add_parser("current", help="print the current and head revisions").set_defaults(
        handler=_db_current
    )
    return parser


def _classify(settings: Settings, args: argparse.Namespace) -> int:
    from visinspect.batch_cli import classify_paths

    return classify_paths(settings, args)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    verify_weights(*resolve_weights(settings))
    if not settings.database_create_all:
        _db_upgrade(settings, args)
    options: dict[str, Any] = {
        "factory": True,
        "host": args.host or settings.host,
        "port": args.port or settings.port,
        "workers": args.workers,
        "log_config": None,  # keep our structured logging
        "access_log": False,  # replaced by the `http.request` event
        "timeout_graceful_shutdown": 30,
        "proxy_headers": True,
    }
    if args.workers > 1:  # uvicorn's supervisor builds its own servers: no accept grace there
        uvicorn.run("visinspect.main:create_app", **options)
        return 0
    server = GracefulServer(
        uvicorn.Config("visinspect.main:create_app", **options),
        settings.shutdown_grace_s,
    )
    server.run()
    return 0 if server.started else 3


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


def _db_wait(settings: Settings, args: argparse.Namespace) -> int:
    """Containers start before their database; give it a bounded time to come up."""
    engine = create_db_engine(settings)
    try:
        for attempt in range(1, args.attempts + 1):
            try:
                with engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
            except SQLAlchemyError as exc:
                log.warning(
                    "db.wait",
                    attempt=attempt,
                    attempts=args.attempts,
                    database=engine.url.render_as_string(hide_password=True),
                    reason=_first_line(exc),
                )
                if attempt < args.attempts:
                    time.sleep(args.interval)
                continue
            log.info("db.reachable", attempt=attempt)
            return 0
    finally:
        engine.dispose()
    log.error(
        "startup.failed",
        part="database",
        reason=f"no answer after {args.attempts} attempts {args.interval}s apart",
    )
    return 1


def _first_line(exc: SQLAlchemyError) -> str:
    text_of_error = str(getattr(exc, "orig", None) or exc).strip()
    return text_of_error.splitlines()[0] if text_of_error else type(exc).__name__


def _db_upgrade(settings: Settings, _args: argparse.Namespace) -> int:
    engine = create_db_engine(settings)
    try:
        upgrade_to_head(engine)
    finally:
        engine.dispose()
    return 0


def _db_current(settings: Settings, _args: argparse.Namespace) -> int:
    engine = create_db_engine(settings)
    try:
        with engine.connect() as connection:
            current = current_revision(connection)
    finally:
        engine.dispose()
    head = head_revision()
    print(f"current: {current or '(empty database)'}\nhead:    {head}")
    return 0 if current == head else 2


if __name__ == "__main__":
    sys.exit(main())

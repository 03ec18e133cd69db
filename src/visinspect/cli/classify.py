"""`visinspect classify PATH...`: many images from the command line, with a progress bar.

Against a server (`--url`, results stored there) through `visinspect.client.Client`, or in this
process through the same `PredictService` the server uses: the same start-up, model,
preprocessing and labels, and every prediction recorded in DATABASE_URL.
"""

from __future__ import annotations

import argparse
import csv
import glob
import itertools
import json
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
from anyio.from_thread import start_blocking_portal
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from visinspect.client import Client, ServiceError
from visinspect.config import Settings
from visinspect.errors import VisinspectError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
EXIT_OK, EXIT_SOME_FAILED, EXIT_NOTHING_MATCHED, EXIT_UNREACHABLE = 0, 1, 2, 3


@dataclass
class FileResult:
    """One file's line of the output: its classes and stored record, or why it failed."""

    path: Path
    classes: list[tuple[str, float]]
    error: str | None = None
    record_id: int | None = None


def expand(paths: list[str]) -> list[Path]:
    """Files as given; folders searched recursively for images; globs expanded (** allowed)."""
    found: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            found.extend(
                Path(p) for p in sorted(glob.glob(item, recursive=True)) if Path(p).is_file()
            )
    return list(dict.fromkeys(found))


def progress_bar(console: Console, disable: bool) -> Progress:
    """The CLI's one progress bar: what it does, the bar, done of total, time left."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
    )


def classify_paths(settings: Settings, args: argparse.Namespace) -> int:
    files = expand(args.paths)
    err = Console(stderr=True)
    if not files:
        err.print("visinspect: no image matched " + " ".join(args.paths))
        return EXIT_NOTHING_MATCHED
    top_k = args.top_k or settings.default_top_k
    try:
        classify_one, close = _remote(args, top_k) if args.url else _local(settings, top_k)
    except httpx.TransportError as exc:
        err.print(f"visinspect: cannot reach {args.url}: {exc}")
        return EXIT_UNREACHABLE
    outcomes: list[FileResult] = []
    try:
        with progress_bar(err, args.no_progress) as progress:
            task = progress.add_task("classifying", total=len(files))
            for path in files:
                outcomes.append(classify_one(path))
                progress.advance(task)
    except httpx.TransportError as exc:
        err.print(f"visinspect: lost the server {args.url}: {exc}")
        return EXIT_UNREACHABLE
    finally:
        close()
    _print(outcomes, args.format)
    return EXIT_SOME_FAILED if any(o.error for o in outcomes) else EXIT_OK


def _remote(
    args: argparse.Namespace, top_k: int
) -> tuple[Callable[[Path], FileResult], Callable[[], None]]:
    client = Client(args.url, api_key=args.api_key)
    client.health()  # fail fast (exit 3) when nothing answers

    def classify_one(path: Path) -> FileResult:
        try:
            result = client.predict(path, top_k=top_k)
        except ServiceError as exc:
            return FileResult(path, [], error=f"{exc.code}: {exc.message}")
        classes = [(p.class_name, p.confidence) for p in result.predictions]
        return FileResult(path, classes, record_id=result.id)

    return classify_one, client.close


def _local(
    settings: Settings, top_k: int
) -> tuple[Callable[[Path], FileResult], Callable[[], None]]:
    """The service in this process: its event loop runs in a portal thread, and each file is one
    blocking call into it, exactly as one request would be."""
    # Imported here: they load the model's libraries, which `--url` never needs.
    from visinspect.context import RequestContext
    from visinspect.services.predict import Upload
    from visinspect.startup import open_services, prepare

    prepared = prepare(settings)
    stack = ExitStack()
    stack.callback(prepared.close)  # unwound last, after the services and the portal
    try:
        portal = stack.enter_context(start_blocking_portal())
        services = stack.enter_context(
            portal.wrap_async_context_manager(open_services(settings, prepared))
        )
    except BaseException:
        stack.close()
        raise
    run_id, counter = uuid.uuid4().hex[:12], itertools.count(1)

    def classify_one(path: Path) -> FileResult:
        try:
            upload = Upload.from_bytes(path.read_bytes(), path.name)
        except OSError as exc:
            return FileResult(path, [], error=f"unreadable: {exc}")
        request_id = f"cli-{run_id}-{next(counter)}"
        try:
            context = RequestContext(request_id, top_k)
            record = portal.call(services.predict.classify_and_record, upload, context)
        except VisinspectError as exc:
            return FileResult(path, [], error=f"{exc.code}: {exc.message}")
        classes = [(p["class_name"], p["confidence"]) for p in record.predictions]
        return FileResult(path, classes, record_id=record.id)

    return classify_one, stack.close


def _print(outcomes: list[FileResult], fmt: str) -> None:
    if fmt == "jsonl":
        for line in _json_lines(outcomes):
            sys.stdout.write(line + "\n")
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["path", "rank", "class_name", "confidence", "record_id", "error"])
        for o in outcomes:
            for rank, (name, confidence) in enumerate(o.classes, 1):
                writer.writerow([o.path, rank, name, f"{confidence:.6f}", o.record_id or "", ""])
            if o.error:
                writer.writerow([o.path, "", "", "", "", o.error])
    else:
        table = Table("file", "top class", "confidence", "others")
        for o in outcomes:
            if o.error:
                table.add_row(str(o.path), "[red]error[/red]", "", o.error)
                continue
            others = ", ".join(f"{n} {c:.1%}" for n, c in o.classes[1:])
            table.add_row(str(o.path), o.classes[0][0], f"{o.classes[0][1]:.1%}", others)
        Console().print(table)


def _json_lines(outcomes: list[FileResult]) -> Iterator[str]:
    for o in outcomes:
        yield json.dumps(
            {
                "path": str(o.path),
                "predictions": [{"class_name": n, "confidence": c} for n, c in o.classes],
                "record_id": o.record_id,
                "error": o.error,
            }
        )

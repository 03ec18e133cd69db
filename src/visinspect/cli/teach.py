"""`visinspect labels import DIR --label-set NAME` and `visinspect head train | list | shadow |
promote | rollback | retire`: teaching a team's own classes from a terminal.

`labels import` and the head changes talk to a running server (the Python client), so every image
is classified, recorded and its embedding kept by the service that will serve the head. `head
train` runs in this process, on the database (it needs scikit-learn: the `model` extra); the
server's POST /label-sets/{name}/heads runs it too, in a child process. Exit codes: 0 done, 1 the
service refused or some images failed, 2 no image found, 3 the server could not be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from visinspect.cli.classify import IMAGE_SUFFIXES, progress_bar
from visinspect.cli.review import EXIT_OK, EXIT_REFUSED, _call, _pct
from visinspect.client import Client, ServiceError
from visinspect.config import Settings
from visinspect.errors import TrainingTooLarge, VisinspectError

EXIT_NOTHING_FOUND = 2


def labels_import(settings: Settings, args: argparse.Namespace) -> int:
    """One sub-folder per class: every image in it classified and labelled with its class."""
    folder = Path(args.directory)
    found = _images_by_class(folder)
    if not found:
        Console(stderr=True).print(
            f"visinspect: no images in sub-folders of {folder} (one sub-folder per class)"
        )
        return EXIT_NOTHING_FOUND
    return _call(settings, args, lambda client: _import(client, args, found))


def _images_by_class(folder: Path) -> dict[str, list[Path]]:
    if not folder.is_dir():
        return {}
    found = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(
            p for p in sub.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if images:
            found[sub.name] = images
    return found


def _import(client: Client, args: argparse.Namespace, found: dict[str, list[Path]]) -> int:
    name = args.label_set
    try:
        existing = client.label_set(name)
        missing = [c for c in found if c not in existing.classes]
        if missing:
            client.add_classes(name, missing)
    except ServiceError as exc:
        if exc.code != "label_set_not_found":
            raise
        client.create_label_set(name, list(found), args.description)
    failed: list[tuple[Path, str]] = []
    total = sum(len(paths) for paths in found.values())
    with progress_bar(Console(stderr=True), args.no_progress) as progress:
        task = progress.add_task(f"labelling into {name}", total=total)
        for class_name, paths in found.items():
            for path in paths:
                try:
                    prediction = client.predict(path, top_k=1)
                    client.label(prediction.id, name, class_name)
                except ServiceError as exc:
                    failed.append((path, f"{exc.code}: {exc.message}"))
                progress.advance(task)
    for path, reason in failed:
        print(f"{path}: {reason}", file=sys.stderr)
    counts = client.label_set(name).counts
    print(
        json.dumps(
            {
                "label_set": name,
                "labelled": total - len(failed),
                "failed": len(failed),
                "counts": counts,
            }
        )
    )
    return EXIT_REFUSED if failed else EXIT_OK


def head_train(settings: Settings, args: argparse.Namespace) -> int:
    """In this process, on DATABASE_URL; with --json, one JSON line (what the server reads)."""
    from visinspect.db.session import create_db_engine, wait_for_database
    from visinspect.offline.teach import train_label_set

    engine = create_db_engine(settings)
    try:
        wait_for_database(engine, settings.database_wait_s)
        try:
            head = train_label_set(settings, engine, args.name, args.by, args.target_precision)
        except MemoryError:  # RLIMIT_AS, as the server sets it (HEAD_TRAIN_MAX_MEMORY_MB)
            raise TrainingTooLarge(
                "training this set needs more memory than this process may use "
                "(HEAD_TRAIN_MAX_MEMORY_MB for the server's trainings)"
            ) from None
    except VisinspectError as exc:
        return refused(args, exc.code, exc.message)
    finally:
        engine.dispose()
    metrics = head.manifest["metrics"]
    if args.json:
        print(json.dumps({"head_id": head.id, "version": head.version}))
        return EXIT_OK
    console = Console()
    console.print(
        f"{args.name} v{head.version} (head {head.id}, candidate): cross-validated accuracy "
        f"{_pct(metrics['accuracy'])}, macro-F1 {metrics['macro_f1']:.3f} on "
        f"{metrics['labels']} labels ({metrics['folds']} folds); decided "
        f"{_pct(metrics['decided_share'])} at precision {_pct(metrics['decided_precision'])}"
    )
    table = Table("class", "labels", "precision", "recall", "threshold")
    for class_name, figures in metrics["per_class"].items():
        threshold = "never" if figures["never_decided"] else f"{figures['threshold']:.3f}"
        table.add_row(
            class_name,
            str(figures["labels"]),
            _pct(figures["precision"]),
            _pct(figures["recall"]),
            threshold,
        )
    console.print(table)
    return EXIT_OK


def refused(args: argparse.Namespace, code: str, message: str) -> int:
    """A training's refusal: one JSON line with --json (what the server reads), else a line on
    stderr; the exit code EXIT_REFUSED."""
    if args.json:
        print(json.dumps({"error": {"code": code, "message": message}}))
    else:
        print(f"visinspect: {code}: {message}", file=sys.stderr)
    return EXIT_REFUSED


def head_list(settings: Settings, args: argparse.Namespace) -> int:
    result = _call(settings, args, lambda client: client.heads(args.name))
    if isinstance(result, int):
        return result
    table = Table("id", "version", "status", "accuracy (cv)", "labels", "trained", "by")
    for head in result:
        table.add_row(
            str(head.id),
            str(head.version),
            head.status,
            _pct(head.metrics.get("accuracy")),
            str(head.metrics.get("labels", "-")),
            head.trained_at.isoformat(timespec="seconds"),
            head.trained_by or "-",
        )
    Console().print(table)
    return EXIT_OK


def head_change(settings: Settings, args: argparse.Namespace) -> int:
    result = _call(settings, args, lambda client: client.change_head(args.head_id, args.action))
    if isinstance(result, int):
        return result
    print(result.model_dump_json())
    return EXIT_OK

"""`visinspect classify | review | quality | drift | serve | model build | model show |
db upgrade | db current`.

Every command starts along one path (`visinspect.startup`); a start-up failure ends with one
`startup.failed` log line that names the cause and what to do, and exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from visinspect.config import Settings
from visinspect.errors import StartupFailed
from visinspect.logging import configure_logging


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # A flag that a setting derives others from (--workers: threads and decoders per process)
    # is applied while the settings are read.
    overrides = {"workers": args.workers} if getattr(args, "workers", None) else {}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"visinspect: invalid configuration:\n{exc}", file=sys.stderr)
        return 1
    configure_logging(settings.log_level, settings.log_format)
    try:
        if prelude := getattr(args, "prelude", None):
            _load(prelude)()
        result = _load(args.command)(settings, args)
    except StartupFailed as exc:
        exc.log()
        return 1
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visinspect", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    classify = commands.add_parser(
        "classify",
        help="classify image files, folders or globs (against a server, or in-process)",
        description=(
            "Without --url the model runs in this process and every prediction is recorded in "
            "DATABASE_URL, as the server would. Exit codes: 0 every image classified, 1 some "
            "failed (or the in-process service could not start), 2 no image matched, "
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
    classify.set_defaults(command="visinspect.cli.classify:classify_paths")
    review = commands.add_parser(
        "review",
        help="record a verdict on a stored prediction (against a server)",
        description="Exit codes: 0 recorded, 1 refused (unknown prediction or class, a verdict "
        "that contradicts itself), 3 the server could not be reached.",
    )
    review.add_argument("prediction_id", type=int, metavar="ID")
    review.add_argument("verdict", choices=["correct", "wrong"])
    review.add_argument(
        "--true-class", type=int, metavar="CLASS_ID", help="the class the image shows (for wrong)"
    )
    review.add_argument("--note")
    review.set_defaults(command="visinspect.cli.review:review")
    quality = commands.add_parser(
        "quality", help="accuracy measured by reviews, per class, and the confusions"
    )
    quality.add_argument("--class-name", help="only predictions of this top-1 class")
    quality.add_argument("--format", choices=["table", "json"], default="table")
    quality.set_defaults(command="visinspect.cli.review:quality")
    drift = commands.add_parser(
        "drift", help="has the stream of images changed? the recent window against a reference"
    )
    drift.add_argument("--window", help="the recent window: 90m, 24h, 7d (default DRIFT_WINDOW)")
    drift.add_argument("--reference", help="the reference before it (default DRIFT_REFERENCE)")
    drift.add_argument("--format", choices=["table", "json"], default="table")
    drift.set_defaults(command="visinspect.cli.review:drift")
    for command in (review, quality, drift):
        command.add_argument("--url", help="server URL (default: http://HOST:PORT)")
        command.add_argument("--api-key", help="API key for the server; its name is the reviewer")
    labels = commands.add_parser("labels", help="a team's own classes").add_subparsers(
        required=True, metavar="ACTION"
    )
    imported = labels.add_parser(
        "import",
        help="classify every image of DIR (one sub-folder per class) on a server and label it "
        "into a label set (made, or given the missing classes, as needed)",
    )
    imported.add_argument("directory", metavar="DIR")
    imported.add_argument("--label-set", required=True, metavar="NAME")
    imported.add_argument("--description", help="for a label set this makes")
    imported.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    imported.set_defaults(command="visinspect.cli.teach:labels_import")
    head = commands.add_parser("head", help="heads trained on a label set").add_subparsers(
        required=True, metavar="ACTION"
    )
    train = head.add_parser(
        "train",
        help="train the set's next head version on DATABASE_URL, in this process (needs the "
        "`model` extra); it is registered as a candidate",
    )
    train.add_argument("name", metavar="NAME")
    train.add_argument(
        "--target-precision",
        type=float,
        default=None,
        help="precision each class's threshold is chosen for (default 0.99)",
    )
    train.add_argument("--by", help="who trained it, for the audit trail")
    train.add_argument("--json", action="store_true", help="one JSON line: the head id or error")
    train.set_defaults(command="visinspect.cli.teach:head_train")
    listed = head.add_parser("list", help="every version of the set's head (against a server)")
    listed.add_argument("name", metavar="NAME")
    listed.set_defaults(command="visinspect.cli.teach:head_list")
    server_commands = [imported, listed]
    for action, text in (
        ("shadow", "run a version on live traffic, recorded but not returned"),
        ("promote", "make a version the set's active head"),
        ("rollback", "give the active version's place back to the one it replaced"),
        ("retire", "stop serving a version"),
    ):
        change = head.add_parser(action, help=text)
        change.add_argument("head_id", type=int, metavar="HEAD_ID")
        change.set_defaults(command="visinspect.cli.teach:head_change", action=action)
        server_commands.append(change)
    for command in server_commands:
        command.add_argument("--url", help="server URL (default: http://HOST:PORT)")
        command.add_argument("--api-key", help="API key for the server; its name is the labeller")
    detector = commands.add_parser(
        "detector", help="anomaly detectors learned from good images only"
    ).add_subparsers(required=True, metavar="ACTION")
    trained = detector.add_parser(
        "train",
        help="train a detector on good images of one product, in this process",
        description="With --out: from the files and folders named, writes OUT.npz (the "
        "detector) and OUT.json (its manifest and sha256). With --label-set: registers the "
        "set's next detector version as a candidate on DATABASE_URL, trained on the files "
        "named, or on the kept images of --predictions, or of the predictions labelled --good. "
        "Exit codes: 0 done, 1 failed (too few readable images, no patch graph in MODEL_DIR, "
        "refused), 2 no image matched.",
    )
    trained.add_argument("paths", nargs="*", metavar="PATH", help="good images: files, folders")
    where = trained.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="the detector's path (.npz, .json beside)")
    where.add_argument("--label-set", metavar="NAME", help="register it as the set's next version")
    trained.add_argument(
        "--good", default="ok", metavar="CLASS", help="the set's good class (default ok)"
    )
    trained.add_argument(
        "--predictions",
        metavar="IDS",
        help="comma-separated prediction ids whose kept images are the good ones",
    )
    trained.add_argument("--by", help="who trained it, for the audit trail")
    trained.add_argument("--json", action="store_true", help="one JSON line: the id or error")
    trained.add_argument(
        "--bank-size", type=int, default=1024, help="good patches kept (default 1024)"
    )
    trained.add_argument(
        "--false-reject",
        type=float,
        default=0.01,
        help="share of good images the threshold may call anomalous (default 0.01)",
    )
    trained.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    trained.set_defaults(command="visinspect.cli.detector:train")
    scored = detector.add_parser(
        "score",
        help="score images with a detector: score (1.0 = the threshold), verdict, region",
        description="Exit codes: 0 every image scored, 1 some refused, 2 no image matched.",
    )
    scored.add_argument("paths", nargs="+", metavar="PATH", help="files, folders, globs")
    scored.add_argument("--detector", required=True, help="a detector written by `train`")
    scored.add_argument("--maps", help="a folder to write each heat map into (NAME.anomaly.png)")
    scored.set_defaults(command="visinspect.cli.detector:score")
    serve = commands.add_parser(
        "serve", help="check the weights, migrate the database, load the model, serve HTTP"
    )
    serve.add_argument("--host", help="default: HOST (127.0.0.1)")
    serve.add_argument("--port", type=int, help="default: PORT (8000)")
    serve.add_argument(
        "--workers", type=int, help="server processes (default: WORKERS, else 1 per 4 usable CPUs)"
    )
    # The decoders' process server imports its code on the other core while this one imports
    # the app (about half a second each): start to ready is the longer of the two, not the sum.
    serve.set_defaults(
        command="visinspect.cli.serve:run", prelude="visinspect.inference.decoders:start_forkserver"
    )
    keys = commands.add_parser("keys", help="API keys").add_subparsers(
        required=True, metavar="ACTION"
    )
    made = keys.add_parser(
        "new",
        help="a random key, and its API_KEYS entry (the key's SHA-256, never the key itself)",
    )
    made.add_argument("name", metavar="NAME", help="who holds it: reviews and kept images say so")
    made.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=["predict", "read", "review", "admin"],
        help="what it may do; repeatable, and required: `--scope admin` for a key that may do "
        "everything",
    )
    made.add_argument("--json", action="store_true", help="one JSON line")
    made.set_defaults(command="visinspect.cli.keys:new")
    model = commands.add_parser("model", help="the model artifact").add_subparsers(
        required=True, metavar="ACTION"
    )
    build = model.add_parser(
        "build",
        help="export the ONNX graph(s) to MODEL_DIR and measure them against PyTorch "
        "(needs the `model` extra)",
    )
    build.add_argument(
        "--precision",
        action="append",
        default=[],
        choices=["fp32", "int8"],
        help="also build this precision (fp32 is always built, and what MODEL_PRECISION asks: `auto` tries int8); repeatable",
    )
    build.add_argument(
        "--photos",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="more photographs to measure and calibrate on; repeatable",
    )
    build.add_argument(
        "--accept-low-agreement",
        action="store_true",
        help="write an int8 graph below its agreement bar (served only with "
        "MODEL_ACCEPT_LOW_AGREEMENT=true)",
    )
    build.add_argument(
        "--if-missing",
        action="store_true",
        help="do nothing when MODEL_DIR already holds a matching artifact",
    )
    build.set_defaults(command="visinspect.cli.model:build")
    model.add_parser("show", help="print MODEL_DIR's manifest").set_defaults(
        command="visinspect.cli.model:show"
    )
    db = commands.add_parser("db", help="database schema").add_subparsers(
        required=True, metavar="ACTION"
    )
    db.add_parser(
        "upgrade", help="alembic upgrade head (waits up to DATABASE_WAIT_S for the database)"
    ).set_defaults(command="visinspect.cli.db:upgrade")
    db.add_parser(
        "current",
        help="print the current and head revisions and whether this release can serve against "
        "the schema (the head, or a newer one recorded as compatible); exit 2 when it cannot",
    ).set_defaults(command="visinspect.cli.db:current")
    db.add_parser(
        "maintain",
        help="create the coming days' partitions and apply RETENTION_DAYS (for a cron job; "
        "the service also does it); prints what it did as JSON",
    ).set_defaults(command="visinspect.cli.db:maintain")
    images = commands.add_parser("images", help="the kept images").add_subparsers(
        required=True, metavar="ACTION"
    )
    images.add_parser(
        "cleanup",
        help="remove images older than IMAGE_RETENTION_DAYS, then the oldest while the store "
        "is above IMAGE_STORE_MAX_BYTES (for a cron job; the service also runs it)",
    ).set_defaults(command="visinspect.cli.images:cleanup")
    return parser


def _load(target: str) -> Callable[..., int]:
    """A command's function, imported when it runs (`module:function`): `visinspect classify
    --url` never loads torch, and the decoder processes, which re-import this module as their
    main, stay small."""
    module, _, name = target.partition(":")
    command: Callable[..., int] = getattr(importlib.import_module(module), name)
    return command


if __name__ == "__main__":
    sys.exit(main())

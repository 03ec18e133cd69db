"""`visinspect review`, `visinspect quality` and `visinspect drift`: the inspection workflow from a
terminal, against a running server (the Python client underneath). Exit codes: 0 done, 1 the service refused (its
error code and message are printed), 3 the server could not be reached."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

import httpx
from rich.console import Console
from rich.table import Table

from visinspect.client import Client, ServiceError
from visinspect.config import Settings

EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE = 0, 1, 3
T = TypeVar("T")


def review(settings: Settings, args: argparse.Namespace) -> int:
    result = _call(
        settings,
        args,
        lambda client: client.review(args.prediction_id, args.verdict, args.true_class, args.note),
    )
    if isinstance(result, int):
        return result
    print(result.model_dump_json())
    return EXIT_OK


def quality(settings: Settings, args: argparse.Namespace) -> int:
    result = _call(settings, args, lambda client: client.quality(class_name=args.class_name))
    if isinstance(result, int):
        return result
    if args.format == "json":
        print(result.model_dump_json())
        return EXIT_OK
    overall = result.overall
    console = Console()
    console.print(
        f"reviewed {overall.reviewed}, correct {overall.correct}, accuracy {_pct(overall.accuracy)}"
    )
    table = Table("predicted class", "reviewed", "correct", "accuracy", title="per class")
    for row in result.by_class:
        table.add_row(row.class_name, str(row.reviewed), str(row.correct), _pct(row.accuracy))
    console.print(table)
    confusions = Table("predicted", "true", "count", title="most frequent confusions")
    for c in result.confusions:
        confusions.add_row(c.predicted_class_name, c.true_class_name, str(c.count))
    console.print(confusions)
    return EXIT_OK


def drift(settings: Settings, args: argparse.Namespace) -> int:
    result = _call(settings, args, lambda client: client.drift(args.window, args.reference))
    if isinstance(result, int):
        return result
    if args.format == "json":
        print(result.model_dump_json())
        return EXIT_OK
    verdict = {True: "DRIFTED", False: "no drift", None: "no verdict"}[result.drifted]
    console = Console()
    console.print(f"{verdict}: {result.reason}")
    console.print(
        f"recent {result.recent_count} predictions, reference {result.reference_count}; "
        f"class JS distance {_num(result.class_js_distance)}, confidence KS "
        f"{_num(result.confidence_ks)} (p {_num(result.confidence_p_value)})"
    )
    table = Table("class", "recent", "reference", "change", title="classes that moved most")
    for m in result.moved:
        table.add_row(
            m.class_name, _pct(m.recent_share), _pct(m.reference_share), f"{m.change:+.1%}"
        )
    console.print(table)
    return EXIT_OK


def _call(settings: Settings, args: argparse.Namespace, work: Callable[[Client], T]) -> T | int:
    url = args.url or f"http://{settings.host}:{settings.port}"
    err = Console(stderr=True)
    try:
        with Client(url, api_key=args.api_key) as client:
            return work(client)
    except ServiceError as exc:
        err.print(f"visinspect: {exc.status} {exc.code}: {exc.message}")
        return EXIT_REFUSED
    except httpx.TransportError as exc:
        err.print(f"visinspect: cannot reach {url}: {exc}")
        return EXIT_UNREACHABLE


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"

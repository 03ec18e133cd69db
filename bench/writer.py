"""What one group commit costs, through the ORM session and through the writer's own connection.

  python -m bench.writer [--groups 1500] [--rounds 3] [--rows 1,8]

Writes groups of kept predictions (each with its 1,280-byte embedding) one after another on a
fresh PostgreSQL database (TEST_DATABASE_URL's server), through the two paths `PredictionWriter`
can take: `session`, the pool and the ORM session (`repository.add_predictions`, a checkout with
its ping, the statement planned by the server for each group), and `direct`, the writer's own
connection (`GroupConnection`: one prepared statement, planned generically, in autocommit). The
two alternate in rounds on the same database. For each: the calling thread's CPU, the database
server's CPU (its processes' /proc times), and the wall time, per group.

At c=8 the service writes groups of one or two rows, so the one-row group is what /predict pays.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from bench.history import kept_embedding, service_record
from bench.load import fresh_database
from visinspect.db import repository
from visinspect.db.group_connection import GroupConnection
from visinspect.db.schema import upgrade_to_head
from visinspect.db.session import Database
from visinspect.inference.cpu import this_cpu

TICKS = os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--groups", type=int, default=1500, help="groups per path and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", default="1,8", help="rows per group, comma-separated")
    args = parser.parse_args()
    print(f"CPU: {this_cpu().describe()}")
    print("| rows a group | path | round | thread ms/group | database ms/group | wall ms/group |")
    print("|---|---|---|---|---|---|")
    with fresh_database() as url:
        engine = create_engine(url, pool_pre_ping=True)  # as the service's engine
        upgrade_to_head(engine)
        database = Database(engine, 1)
        group = GroupConnection(engine)
        with Session(engine) as session:  # today's partition: known from here on
            repository.add_predictions(session, [service_record(os.urandom(8).hex())])
            session.commit()
        paths: dict[str, Callable[..., object]] = {
            "session": lambda *rows: database._transaction(repository.add_predictions, *rows),
            "direct": group.insert,
        }
        totals: dict[tuple[int, str], list[tuple[float, float, float]]] = {}
        for rows in (int(r) for r in args.rows.split(",")):
            for round_ in range(1, args.rounds + 1):
                order = list(paths) if round_ % 2 else list(paths)[::-1]
                for name in order:
                    cost = _timed(paths[name], rows, args.groups, url)
                    totals.setdefault((rows, name), []).append(cost)
                    print(
                        f"| {rows} | {name} | {round_} | "
                        + " | ".join(f"{c:.3f}" for c in cost)
                        + " |"
                    )
        group.close()
        engine.dispose()
    print("\n| rows a group | thread: direct / session | database: direct / session | wall |")
    print("|---|---|---|---|")
    for rows in sorted({r for r, _ in totals}):
        direct, session = totals[(rows, "direct")], totals[(rows, "session")]
        ratios = [
            statistics.median(d[i] for d in direct) / statistics.median(s[i] for s in session)
            for i in range(3)
        ]
        print(f"| {rows} | " + " | ".join(f"{r:.2f}" for r in ratios) + " |")
    return 0


def _timed(
    write: Callable[..., object], rows: int, groups: int, url: str
) -> tuple[float, float, float]:
    """Thread CPU, server CPU and wall time per group, in ms, over `groups` groups."""
    # Built ahead, as /predict hands them to the writer (bench.history's rows).
    groups_ready = [
        [(service_record(f"bench-writer-{g}-{r}"), kept_embedding()) for r in range(rows)]
        for g in range(groups)
    ]
    batches = [
        ([row for row, _ in group], [kept for _, kept in group], [[] for _ in group])
        for group in groups_ready
    ]
    for batch in batches[:20]:  # warm: the statement prepared, the plan cached
        write(*batch)
    batches = batches[20:] or batches
    server, thread, wall = _server_cpu(url), time.thread_time(), time.perf_counter()
    for batch in batches:
        write(*batch)
    n = len(batches)
    return (
        (time.thread_time() - thread) / n * 1000,
        (_server_cpu(url) - server) / n * 1000,
        (time.perf_counter() - wall) / n * 1000,
    )


def _server_cpu(url: str) -> float:
    """CPU seconds of the server processes that serve this database's connections (and the
    WAL writer, checkpointer...: everything of the server's that this run keeps busy)."""
    engine = create_engine(url)
    with engine.connect() as conn:
        pids = list(conn.scalars(text("SELECT pid FROM pg_stat_activity")))
    engine.dispose()
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # another host, or gone meanwhile
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


if __name__ == "__main__":
    sys.exit(main())

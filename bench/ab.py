"""Two checkouts of the service side by side, under the same load, alternating rounds.

  python -m bench.ab --before /path/to/other/checkout/src [--rounds 2] [--smoke]

Starts `visinspect serve` from each source tree in turn (PYTHONPATH puts that tree first; the venv
is this one), posts a 640x480 JPEG with `hey` at concurrency 1, 8 and 32, and prints one row per
server, round and concurrency: throughput, p50 and p99. Alternating rounds spread the machine's
own drift over both sides; read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.ceilings import photo_jpeg
from bench.load import VENV_BIN, free_port, fresh_database, hey, multipart_body, server

HERE = Path(__file__).resolve().parents[1] / "src"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", type=Path, required=True, help="the other checkout's src/")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    requests = {1: 20, 8: 40, 32: 64} if args.smoke else {1: 300, 8: 800, 32: 800}
    body = multipart_body(photo_jpeg((640, 480)), Path(tempfile.mkdtemp()), "ab")
    print("| server | round | c | rps | p50 ms | p99 ms | 200s |")
    print("|---|---|---|---|---|---|---|")
    for round_ in range(1, args.rounds + 1):
        for label, src in (("before", args.before.resolve()), ("after", HERE)):
            with fresh_database() as url:
                port = free_port()
                command = [str(VENV_BIN / "visinspect"), "serve", "--port", str(port)]
                env = {"DATABASE_URL": url, "LOG_LEVEL": "WARNING", "PYTHONPATH": str(src)}
                with server(command, env, port) as base:
                    hey(base, body, 8, 50, "warm-up")
                    for c in (1, 8, 32):
                        r = hey(base, body, c, requests[c], label)
                        print(
                            f"| {label} | {round_} | {c} | {r.throughput:.1f} | {r.p50:.1f} "
                            f"| {r.p99:.1f} | {r.ok}/{r.requests} |",
                            flush=True,
                        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

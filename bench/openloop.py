"""Open-loop load (the MLPerf server scenario): Poisson arrivals at a fixed rate, latency counted
from each request's scheduled send time, and a search for the highest rate whose p99 stays within
a bound.

A closed-loop tool (hey, wrk) waits for an answer before sending again, so a slow server slows
its own load down and its queueing never shows. Here requests leave on schedule whatever the
server does; when it falls behind, new connections are opened. The generator is raw asyncio
sockets (uvloop when installed) with the request bytes built once; it reports its own CPU use so
that a reader can see it did not take the cores it measures on.

  python -m bench.openloop --url http://127.0.0.1:8000/predict --body FILE --content-type T
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

P99_BOUND_MS = 100.0


@dataclass(frozen=True)
class Trial:
    rate: float  # requests per second scheduled
    sent: int
    ok: int
    p50_ms: float
    p99_ms: float  # a failed request counts as infinitely late
    generator_cpu: float  # cores the generator itself used

    @property
    def within_bound(self) -> bool:
        return self.ok == self.sent and self.p99_ms <= P99_BOUND_MS


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    request: bytes  # the whole HTTP/1.1 request, keep-alive

    @classmethod
    def post(cls, url: str, body: bytes, content_type: str) -> Target:
        parts = urlsplit(url)
        head = (
            f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return cls(parts.hostname or "127.0.0.1", parts.port or 80, head.encode() + body)


# An idle connection is not reused after this long (httpcore's pool expires them after 5 s): the
# service closes a connection idle for KEEP_ALIVE_S (5 s), and a request written into one the
# server is closing fails before any answer. Before this, a trial could count such a request as
# failed (one in 722 at 90 requests/s), which fails the whole trial.
IDLE_LIMIT_S = 4.0


class _Connections:
    """Idle keep-alive connections; a new one is opened when all are busy. Like an HTTP client's
    pool, it does not reuse a connection the server has closed or is about to close."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.opened: list[asyncio.StreamWriter] = []

    async def take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        now = asyncio.get_running_loop().time()
        while self.idle:
            reader, writer, since = self.idle.pop()
            if not reader.at_eof() and now - since < IDLE_LIMIT_S:
                return reader, writer
            writer.close()
        reader, writer = await asyncio.open_connection(self.target.host, self.target.port)
        self.opened.append(writer)
        return reader, writer

    def give_back(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.idle.append((reader, writer, asyncio.get_running_loop().time()))

    def close(self) -> None:
        for writer in self.opened:
            writer.close()


async def _exchange(
    connections: _Connections, timeout_s: float
) -> tuple[int, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await connections.take()
    writer.write(connections.target.request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await asyncio.wait_for(reader.readexactly(length), timeout_s)
    return status, reader, writer


async def _trial(target: Target, rate: float, seconds: float, seed: int) -> Trial:
    loop = asyncio.get_running_loop()
    connections = _Connections(target)
    generator = random.Random(seed)
    latencies: list[float] = []
    ok = 0

    async def one(scheduled: float) -> None:
        nonlocal ok
        try:
            status, reader, writer = await _exchange(connections, 30.0)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError):
            latencies.append(float("inf"))
            return
        latencies.append((loop.time() - scheduled) * 1000)
        if status == 200:
            ok += 1
            connections.give_back(reader, writer)
        else:
            latencies[-1] = float("inf")
            writer.close()

    cpu_before, wall_before = time.process_time(), loop.time()
    start = loop.time() + 0.05
    at = start
    tasks = []
    while at < start + seconds:
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(one(at)))
        at += generator.expovariate(rate)
    await asyncio.gather(*tasks)
    connections.close()
    cpu = (time.process_time() - cpu_before) / (loop.time() - wall_before)
    ordered = sorted(latencies)
    return Trial(
        rate=rate,
        sent=len(ordered),
        ok=ok,
        p50_ms=ordered[len(ordered) // 2] if ordered else 0.0,
        p99_ms=ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else 0.0,
        generator_cpu=cpu,
    )


def trial(target: Target, rate: float, seconds: float, seed: int = 1) -> Trial:
    return _run(_trial(target, rate, seconds, seed))


def search(
    target: Target, high: float, seconds: float, steps: int, low: float = 1.0
) -> tuple[Trial | None, list[Trial]]:
    """Bisection between `low` and `high` requests/s: the best rate that met the bound, and
    every trial run."""
    best: Trial | None = None
    trials: list[Trial] = []
    for step in range(steps):
        rate = (low + high) / 2
        result = trial(target, rate, seconds, seed=step + 1)
        trials.append(result)
        if result.within_bound:
            best, low = result, rate
        else:
            high = rate
    return best, trials


def _run(coroutine: object) -> Trial:
    try:
        import uvloop

        return uvloop.run(coroutine)  # type: ignore[arg-type, no-any-return]
    except ImportError:
        return asyncio.run(coroutine)  # type: ignore[arg-type, no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", type=Path, required=True)
    parser.add_argument("--content-type", default="image/jpeg")
    parser.add_argument("--high", type=float, default=200.0, help="upper end of the search")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of one trial")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    target = Target.post(args.url, args.body.read_bytes(), args.content_type)
    best, trials = search(target, args.high, args.seconds, args.steps)
    for t in trials:
        print(
            f"rate {t.rate:6.1f}/s: {t.ok}/{t.sent} ok, p50 {t.p50_ms:.0f} ms, "
            f"p99 {t.p99_ms:.0f} ms, generator {t.generator_cpu:.3f} cores"
        )
    print(f"highest rate with p99 <= {P99_BOUND_MS:.0f} ms: {best.rate if best else 0:.1f}/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A generated corpus of files that cost far more to decode than they weigh, by class, with variants.

Each class attacks one budget; the variants change what a fix for one file would miss (sizes,
formats, bit depths, aspect ratios, canvases, scan counts):

- scans:   progressive JPEGs followed by thousands of repeated scans (seconds of CPU, tiny files);
- rows:    extreme aspect ratios (Pillow keeps a pointer per row: 1 x 60,000,000 costs 1.2 GB);
- alpha:   large RGBA/LA images of zeros (the RGBA compositing path copies them four times);
- depth:   16-bit images (widened to 32 bits on the way to RGB);
- canvas:  GIFs whose logical screen is huge and whose only frame is 1 x 1 (a few dozen bytes);
- probe:   large files no supported format claims (must be refused from their first bytes).

Used by tests/inference/test_decoders.py (each file's time and peak memory against the budgets)
and by `python -m bench.reliability` (the same, plus benign traffic while two clients attack).
"""

from __future__ import annotations

import asyncio
import io
import os
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from PIL import Image

from visinspect.errors import VisinspectError
from visinspect.inference.decoders import DecoderLimits, _Worker


@dataclass(frozen=True)
class Bomb:
    name: str
    kind: str  # scans, rows, alpha, depth, canvas, probe
    make: Callable[[], bytes]
    codes: frozenset[str]  # acceptable outcomes ("ok" = decoded within the budgets)


def _png(mode: str, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, "PNG", compress_level=9)
    return buffer.getvalue()


def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment; a scan's end includes its entropy-coded data."""
    segments, i = [], 2
    while i < len(data):
        marker = data[i + 1]
        if marker == 0xD9:
            segments.append((marker, i, i + 2))
            break
        end = i + 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker == 0xDA:
            while not (data[end] == 0xFF and data[end + 1] not in (0, *range(0xD0, 0xD8))):
                end += 1
        segments.append((marker, i, end))
        i = end
    return segments


def scan_bomb(size: tuple[int, int], scans: int, mode: str = "L") -> bytes:
    """A flat progressive JPEG whose smallest scan is repeated `scans` times before EOI: each
    repetition makes libjpeg walk every block again (it only warns about the bogus progression)."""
    buffer = io.BytesIO()
    Image.new(mode, size, 128 if mode == "L" else (128, 96, 64)).save(
        buffer, "JPEG", progressive=True, quality=90
    )
    data = buffer.getvalue()
    segments = _jpeg_segments(data)
    _, start, end = min((s for s in segments if s[0] == 0xDA), key=lambda s: s[2] - s[1])
    eoi = segments[-1][1]
    return data[:eoi] + data[start:end] * scans + data[eoi:]


def canvas_gif(width: int, height: int, transparent: bool = True) -> bytes:
    """A GIF89a whose logical screen is width x height and whose only frame is 1 x 1 pixel."""
    header = b"GIF89a" + struct.pack("<HH", width, height) + b"\x80\x00\x00"
    palette = b"\x00\x00\x00\xff\xff\xff"
    control = b"\x21\xf9\x04\x01\x00\x00\x00\x00" if transparent else b""
    frame = b"\x2c" + struct.pack("<HHHH", 0, 0, 1, 1) + b"\x00" + b"\x02\x02\x44\x01\x00"
    return header + palette + control + frame + b"\x3b"


def warning_tiff(entries: int = 60_000) -> bytes:
    """A 16 x 16 greyscale TIFF whose directory also holds `entries` entries whose data would
    lie far beyond the file (0.7 MB): Pillow skips each with a warning, and reads the directory
    three times (180,000 warnings for one upload)."""
    side = 16
    pixels = bytes(range(side * side))
    short, long = 3, 4
    baseline = [
        (256, short, 1, side),  # width
        (257, short, 1, side),  # height
        (258, short, 1, 8),  # bits per sample
        (259, short, 1, 1),  # no compression
        (262, short, 1, 1),  # black is zero
        (273, long, 1, 8),  # the strip's offset: right after the header
        (277, short, 1, 1),  # samples per pixel
        (278, short, 1, side),  # rows per strip
        (279, long, 1, len(pixels)),  # the strip's bytes
    ]
    beyond = [(tag, long, 1_000_000, 8) for tag in range(1000, 1000 + entries)]
    directory = struct.pack("<H", len(baseline) + len(beyond))
    for tag, kind, count, value in baseline + beyond:
        packed = struct.pack("<Hxx", value) if kind == short else struct.pack("<L", value)
        directory += struct.pack("<HHL", tag, kind, count) + packed
    directory += struct.pack("<L", 0)  # no next directory
    return b"II*\x00" + struct.pack("<L", 8 + len(pixels)) + pixels + directory


def rgb16_png(width: int, height: int) -> bytes:
    """A flat 16-bit RGB PNG (a few hundred KB for 7000 x 7000): Pillow decodes it to 8-bit RGB."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    packer = zlib.compressobj(9)
    row = b"\0" * (1 + width * 6)
    rows = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


def postscript_lines(megabytes: int) -> bytes:
    line = b"%% a PostScript comment line that no supported image format claims\n"
    return b"%!PS-Adobe-3.0\n" + line * (megabytes * 1024 * 1024 // len(line))


OK = frozenset({"ok"})
TOO_SLOW = frozenset({"image_too_slow_to_decode"})
TOO_BIG = frozenset({"image_too_large_to_decode", "image_too_many_pixels"})

BOMBS = [
    Bomb("scans-8000x8000-L-3000.jpg", "scans", lambda: scan_bomb((8000, 8000), 3000), TOO_SLOW),
    Bomb(
        "scans-6000x4000-RGB-12000.jpg",
        "scans",
        lambda: scan_bomb((6000, 4000), 12000, "RGB"),
        TOO_SLOW,
    ),
    Bomb("scans-16000x4000-L-2000.jpg", "scans", lambda: scan_bomb((16000, 4000), 2000), TOO_SLOW),
    Bomb("rows-1x60000000-L.png", "rows", lambda: _png("L", (1, 60_000_000)), TOO_BIG),
    Bomb("rows-2x30000000-L.png", "rows", lambda: _png("L", (2, 30_000_000)), TOO_BIG),
    Bomb("rows-30000000x2-RGBA.png", "rows", lambda: _png("RGBA", (30_000_000, 2)), TOO_BIG),
    Bomb("alpha-7000x7000-RGBA.png", "alpha", lambda: _png("RGBA", (7000, 7000)), TOO_BIG),
    Bomb("alpha-5000x5000-LA.png", "alpha", lambda: _png("LA", (5000, 5000)), TOO_BIG),
    Bomb("alpha-12000x3000-RGBA.png", "alpha", lambda: _png("RGBA", (12000, 3000)), TOO_BIG),
    Bomb("depth-7000x7000-I16.png", "depth", lambda: _png("I;16", (7000, 7000)), TOO_BIG),
    Bomb("depth-2x20000000-I16.png", "depth", lambda: _png("I;16", (2, 20_000_000)), TOO_BIG),
    Bomb("canvas-7000x7000.gif", "canvas", lambda: canvas_gif(7000, 7000), TOO_BIG),
    # Within the budget: 196 MB of RGB. Pillow's exif_transpose copied it (380 MB at the peak).
    Bomb("depth-7000x7000-RGB16.png", "depth", lambda: rgb16_png(7000, 7000), OK | TOO_SLOW),
    # Within the memory budget (about 310 MB): decoded in 0.5 s on one kind of machine here and in
    # 0.9-1.0 s on a slower one, so the tests' 1 s limit may stop it; either way the budgets held.
    Bomb(
        "canvas-8000x8000-opaque.gif",
        "canvas",
        lambda: canvas_gif(8000, 8000, False),
        OK | TOO_SLOW,
    ),
    Bomb("canvas-65535x900.gif", "canvas", lambda: canvas_gif(65535, 900), TOO_BIG),
    Bomb("canvas-20000x3000.gif", "canvas", lambda: canvas_gif(20000, 3000), TOO_BIG),
    Bomb(
        "probe-postscript-19MB.ps",
        "probe",
        lambda: postscript_lines(19),
        frozenset({"not_an_image"}),
    ),
    Bomb("probe-random-8MB.bin", "probe", lambda: os.urandom(8 << 20), frozenset({"not_an_image"})),
]


@cache
def bomb_bytes(name: str) -> bytes:
    return next(b for b in BOMBS if b.name == name).make()


@dataclass(frozen=True)
class Cost:
    """What one file cost a fresh decoder worker."""

    outcome: str  # "ok" or the error code
    seconds: float
    peak_mb: float | None  # worker's peak resident memory above its idle size; None if it died


def measure(data: bytes, limits: DecoderLimits) -> Cost:
    """Decode in a fresh worker, as the service does; read the worker's peak resident memory from
    /proc (VmHWM) before it is stopped."""
    import multiprocessing

    worker = _Worker(multiprocessing.get_context("forkserver"), limits)
    started = time.perf_counter()
    try:
        try:
            outcome, _reusable = asyncio.run(worker.decode(data, limits.timeout_s))
        except VisinspectError as exc:
            outcome = exc
        seconds = time.perf_counter() - started
        peak = _peak_mb(worker.process.pid)
        idle_mb = worker.idle_rss / (1 << 20)
    finally:
        worker.kill()
    code = outcome.code if isinstance(outcome, VisinspectError) else "ok"
    return Cost(code, seconds, None if peak is None else max(0.0, peak - idle_mb))


def _peak_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None

"""A corpus of hostile uploads, generated (nothing binary is committed), with the answer each must get.

  python -m tests.hostile_corpus OUT_DIR     writes the files and an index.tsv beside them

`tests/api/test_hostile.py` posts every one of them to the running app. An upload that is a valid
image despite its tricks (a JPEG with a ZIP appended, a huge but well-formed EXIF block, a PNG
declared as text/plain) gets its classification: the bytes decide, never the name or the declared
type, and never a 5xx.
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from PIL import Image


@dataclass(frozen=True)
class HostileFile:
    name: str
    data: bytes
    content_type: str
    status: int
    code: str | None  # expected error code; None for a 200
    why: str


def _photo() -> Image.Image:
    spec = find_spec("skimage")
    assert spec is not None
    assert spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "coffee.png"
    with Image.open(path) as image:
        return image.convert("RGB")


def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG header for a huge RGB image, followed by a few bytes of compressed zeros."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _gif_claiming(width: int, height: int) -> bytes:
    screen = struct.pack("<HHBBB", width, height, 0x80, 0, 0)
    palette = b"\x00\x00\x00\xff\xff\xff"
    descriptor = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return b"GIF89a" + screen + palette + descriptor + b"\x02\x02\x44\x01\x00;"


def _zip_of(text: bytes) -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("payload.sh", text)
    return buffer.getvalue()


def _animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (64, 64), colour) for colour in ("red", "green", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


def _png_text_bomb() -> bytes:
    """A tiny PNG whose zTXt chunk inflates to 64 MB (Pillow caps text chunks at 1 MB)."""
    image = _save(Image.new("RGB", (32, 32), "white"), "PNG")
    bomb = zlib.compress(b"A" * (64 * 1024 * 1024), 9)
    ztxt = _png_chunk(b"zTXt", b"Comment\x00\x00" + bomb)
    return image[:33] + ztxt + image[33:]  # after the signature and IHDR


def corpus() -> list[HostileFile]:
    photo = _photo()
    jpeg = _save(photo, "JPEG", quality=90)
    png = _save(photo, "PNG")
    huge_exif = Image.Exif()
    huge_exif[0x9286] = b"ASCII\x00\x00\x00" + b"x" * 60_000  # UserComment, near the 64 kB limit
    odd_orientation = Image.Exif()
    odd_orientation[0x0112] = 99
    corrupt_png = bytearray(png)
    middle = len(corrupt_png) // 2
    corrupt_png[middle : middle + 64] = bytes(range(64))
    return [
        HostileFile("zero-byte.jpg", b"", "image/jpeg", 400, "empty_file", "nothing to decode"),
        HostileFile(
            "bomb-png.png",
            _png_claiming(60_000, 60_000),
            "image/png",
            413,
            "image_too_many_pixels",
            "3.6 gigapixels claimed in a few kB",
        ),
        HostileFile(
            "bomb-gif.gif",
            _gif_claiming(65_535, 65_535),
            "image/gif",
            413,
            "image_too_many_pixels",
            "4.3 gigapixels claimed in 40 bytes",
        ),
        HostileFile(
            "bomb-1bit.png",
            _save(Image.new("1", (20_000, 20_000)), "PNG"),
            "image/png",
            413,
            "image_too_many_pixels",
            "400 megapixels, 1 bit each, in 50 kB",
        ),
        HostileFile(
            "ztxt-bomb.png",
            _png_text_bomb(),
            "image/png",
            422,
            "corrupt_image",
            "a text chunk that inflates to 64 MB",
        ),
        HostileFile(
            "truncated.jpg",
            jpeg[: len(jpeg) // 3],
            "image/jpeg",
            422,
            "corrupt_image",
            "cut after a third",
        ),
        HostileFile(
            "truncated.png",
            png[: len(png) // 3],
            "image/png",
            422,
            "corrupt_image",
            "cut after a third",
        ),
        HostileFile(
            "corrupt.png",
            bytes(corrupt_png),
            "image/png",
            422,
            "corrupt_image",
            "64 bytes of the compressed data overwritten",
        ),
        HostileFile(
            "header-only.png",
            png[:33],
            "image/png",
            422,
            "corrupt_image",
            "signature and IHDR, no data",
        ),
        HostileFile(
            "pdf-with-jpeg.pdf",
            b"%PDF-1.7\n" + jpeg,
            "image/jpeg",
            415,
            "not_an_image",
            "a PDF wrapper around a JPEG: not an image file",
        ),
        HostileFile(
            "gif-js-polyglot.gif",
            b"GIF89a/*\x00\x00*/=1;alert(1);//",
            "image/gif",
            422,
            "corrupt_image",
            "a GIF header that is also JavaScript",
        ),
        HostileFile(
            "jpeg-zip-polyglot.jpg",
            jpeg + _zip_of(b"rm -rf /"),
            "image/jpeg",
            200,
            None,
            "a valid JPEG; the appended ZIP is ignored, never opened",
        ),
        HostileFile(
            "html.jpg",
            b"<html><script>alert(1)</script></html>",
            "image/jpeg",
            415,
            "not_an_image",
            "HTML with an image name and type",
        ),
        HostileFile(
            "animated.gif",
            _animated("GIF"),
            "image/gif",
            415,
            "animated_image_not_supported",
            "three frames",
        ),
        HostileFile(
            "animated.png",
            _animated("PNG"),
            "image/png",
            415,
            "animated_image_not_supported",
            "APNG, three frames",
        ),
        HostileFile(
            "animated.webp",
            _animated("WEBP"),
            "image/webp",
            415,
            "animated_image_not_supported",
            "three frames",
        ),
        HostileFile(
            "huge-exif.jpg",
            _save(photo, "JPEG", exif=huge_exif.tobytes()),
            "image/jpeg",
            200,
            None,
            "a 60 kB EXIF comment on a real photo",
        ),
        HostileFile(
            "bad-orientation.jpg",
            _save(photo, "JPEG", exif=odd_orientation.tobytes()),
            "image/jpeg",
            200,
            None,
            "EXIF orientation 99 (undefined) is ignored",
        ),
        HostileFile(
            "png-declared-text.txt",
            png,
            "text/plain",
            200,
            None,
            "a real PNG sent as text/plain: the bytes decide",
        ),
        HostileFile(
            "text-declared-png.png",
            b"just text\n" * 50,
            "image/png",
            415,
            "not_an_image",
            "text sent as image/png",
        ),
        HostileFile(
            "ppm.ppm",
            _save(photo, "PPM"),
            "image/x-portable-pixmap",
            415,
            "unsupported_image_format",
            "a real image in a format we refuse",
        ),
    ]


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "hostile-corpus")
    out.mkdir(parents=True, exist_ok=True)
    lines = ["name\tbytes\tcontent_type\tstatus\tcode\twhy"]
    for item in corpus():
        (out / item.name).write_bytes(item.data)
        lines.append(
            f"{item.name}\t{len(item.data)}\t{item.content_type}\t{item.status}\t{item.code}\t{item.why}"
        )
    (out / "index.tsv").write_text("\n".join(lines) + "\n")
    print(f"{len(lines) - 1} files in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

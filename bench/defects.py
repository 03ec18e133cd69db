"""Drawn defects on real product photographs: the anomaly benchmark's data.

A product photograph from a Debian package is seen as a line camera would see it: each shot is
jittered in pose (a small rotation and shift), in light (brightness, contrast) and by JPEG
compression. Good shots are only that; defective shots also carry one drawn defect whose pixel
mask is known: a scratch (a thin polyline), a stain (a soft translucent blot) or a missing part (a
region filled with the background). Defects come in several sizes and a fifth of them lie near the
border, where a classifier's centre crop would never see them.

Everything is drawn from a seeded generator: the same seed gives the same shots, byte for byte.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

KINDS = ("scratch", "stain", "missing")
_OPENCV = Path("/usr/share/doc/opencv-doc/examples/data")
# Products the benchmark is tuned on, and products kept out of every choice (the verdict).
BENCHMARK = ("board.jpg", "stuff.jpg", "fruits.jpg", "orange.jpg")
HELD_OUT = ("pca_test1.jpg", "smarties.png", "blox.jpg", "apple.jpg")
LONG_SIDE = 320  # pixels of a shot's long side
BORDER_SHARE = 0.2  # of the defects lie near the border


@dataclass(frozen=True, slots=True)
class Shot:
    """One photograph as uploaded (JPEG bytes) and, for a defective one, its defect's mask."""

    jpeg: bytes
    kind: str  # "good" or one of KINDS
    mask: np.ndarray | None  # bool (height, width), True on the defect

    @property
    def box(self) -> tuple[int, int, int, int] | None:
        """The defect's bounding box [x0, y0, x1, y1) in the shot's pixels."""
        if self.mask is None:
            return None
        ys, xs = np.nonzero(self.mask)
        return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def product_paths(names: tuple[str, ...]) -> list[Path]:
    paths = [_OPENCV / name for name in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing}: run `make photos` (Debian's opencv-doc)")
    return paths


def product(path: Path) -> Image.Image:
    """The product photograph, RGB, scaled to LONG_SIDE."""
    with Image.open(path) as image:
        image = image.convert("RGB")
    scale = LONG_SIDE / max(image.size)
    size = (round(image.width * scale), round(image.height * scale))
    return image.resize(size, Image.Resampling.LANCZOS)


def shots(photo: Image.Image, kind: str, count: int, seed: int) -> Iterator[Shot]:
    """`count` jittered shots of `photo`: good ones, or each with one defect of `kind`."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        image = _jitter(photo, rng)
        mask = None if kind == "good" else _draw(image, kind, rng)
        yield Shot(_jpeg(image, rng), kind, mask)


def _jitter(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Pose, light and framing as they vary between shots of one part on a line."""
    width, height = photo.size
    big = photo.resize((round(width * 1.1), round(height * 1.1)), Image.Resampling.BICUBIC)
    big = big.rotate(
        float(rng.uniform(-3, 3)), resample=Image.Resampling.BICUBIC, fillcolor=_edge(photo)
    )
    dx = int(rng.integers(-round(width * 0.03), round(width * 0.03) + 1))
    dy = int(rng.integers(-round(height * 0.03), round(height * 0.03) + 1))
    left = (big.width - width) // 2 + dx
    top = (big.height - height) // 2 + dy
    image = big.crop((left, top, left + width, top + height))
    image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.9, 1.1)))
    return ImageEnhance.Contrast(image).enhance(float(rng.uniform(0.9, 1.1)))


def _edge(photo: Image.Image) -> tuple[int, int, int]:
    pixels = np.asarray(photo)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    r, g, b = np.median(border, axis=0)
    return int(r), int(g), int(b)


def _jpeg(image: Image.Image, rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(75, 96)))
    return buffer.getvalue()


def _draw(image: Image.Image, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Draw one defect of `kind` on `image` in place; return its mask."""
    width, height = image.size
    size = float(rng.choice([0.06, 0.10, 0.16]))  # of the short side: small, medium, large
    reach = size * min(width, height)
    centre = _centre(width, height, reach, rng)
    mask = Image.new("L", image.size, 0)
    if kind == "missing":  # a piece of the part, not of the background behind it
        for _ in range(100):
            if _on_the_part(image, centre, reach):
                break
            centre = _centre(width, height, reach, rng)
    if kind == "scratch":
        _scratch(image, mask, centre, reach * 2.2, rng)
    elif kind == "stain":
        _stain(image, mask, centre, reach, rng)
    elif kind == "missing":
        _missing(image, mask, centre, reach, rng)
    else:
        raise ValueError(f"unknown defect kind {kind!r}; one of {KINDS}")
    return np.asarray(mask) > 0


def _centre(width: int, height: int, reach: float, rng: np.random.Generator) -> tuple[float, float]:
    """Anywhere in the frame; for BORDER_SHARE of defects, within a band along one edge."""
    if rng.random() >= BORDER_SHARE:
        return float(rng.uniform(reach, width - reach)), float(rng.uniform(reach, height - reach))
    band = reach * 0.6
    x, y = float(rng.uniform(band, width - band)), float(rng.uniform(band, height - band))
    edge = int(rng.integers(4))
    if edge == 0:
        x = float(rng.uniform(band * 0.5, band))
    elif edge == 1:
        x = width - float(rng.uniform(band * 0.5, band))
    elif edge == 2:
        y = float(rng.uniform(band * 0.5, band))
    else:
        y = height - float(rng.uniform(band * 0.5, band))
    return x, y


def _on_the_part(image: Image.Image, centre: tuple[float, float], reach: float) -> bool:
    """Whether the square around `centre` differs from the background enough that removing it
    changes the shot (filling background with background would draw nothing)."""
    x, y, r = round(centre[0]), round(centre[1]), max(1, round(reach * 0.7))
    pixels = np.asarray(image, np.float32)[max(0, y - r) : y + r, max(0, x - r) : x + r]
    difference = np.abs(pixels - np.asarray(_edge(image), np.float32)).mean()
    return bool(difference >= 40)


def _scratch(
    image: Image.Image,
    mask: Image.Image,
    centre: tuple[float, float],
    length: float,
    rng: np.random.Generator,
) -> None:
    """A thin polyline of two or three segments, darker or lighter than the part."""
    angle = float(rng.uniform(0, math.pi))
    points = []
    x, y = centre[0] - math.cos(angle) * length / 2, centre[1] - math.sin(angle) * length / 2
    segments = int(rng.integers(2, 4))
    for _ in range(segments + 1):
        points.append((x, y))
        angle += float(rng.uniform(-0.5, 0.5))
        x += math.cos(angle) * length / segments
        y += math.sin(angle) * length / segments
    width = int(rng.integers(2, 4))
    shade = int(rng.choice([20, 235]))
    ImageDraw.Draw(image).line(points, fill=(shade, shade, shade), width=width, joint="curve")
    ImageDraw.Draw(mask).line(points, fill=255, width=width, joint="curve")


def _stain(
    image: Image.Image,
    mask: Image.Image,
    centre: tuple[float, float],
    reach: float,
    rng: np.random.Generator,
) -> None:
    """A soft-edged translucent blot of a colour the part does not have."""
    rx, ry = reach * float(rng.uniform(0.5, 1.0)), reach * float(rng.uniform(0.5, 1.0))
    ellipse = [centre[0] - rx, centre[1] - ry, centre[0] + rx, centre[1] + ry]
    blot = Image.new("L", image.size, 0)
    ImageDraw.Draw(blot).ellipse(ellipse, fill=int(rng.uniform(150, 210)))
    blot = blot.filter(ImageFilter.GaussianBlur(reach * 0.15))
    colour = tuple(int(c) for c in rng.choice([(110, 70, 30), (40, 40, 40), (150, 150, 60)]))
    image.paste(Image.new("RGB", image.size, colour), (0, 0), blot)  # type: ignore[arg-type]
    ImageDraw.Draw(mask).ellipse(ellipse, fill=255)


def _missing(
    image: Image.Image,
    mask: Image.Image,
    centre: tuple[float, float],
    reach: float,
    rng: np.random.Generator,
) -> None:
    """A piece broken off: an irregular region filled with the background behind the part."""
    corners = int(rng.integers(5, 8))
    points = []
    for i in range(corners):
        angle = 2 * math.pi * i / corners + float(rng.uniform(-0.3, 0.3))
        radius = reach * float(rng.uniform(0.6, 1.0))
        points.append((centre[0] + math.cos(angle) * radius, centre[1] + math.sin(angle) * radius))
    ImageDraw.Draw(image).polygon(points, fill=_edge(image))
    ImageDraw.Draw(mask).polygon(points, fill=255)

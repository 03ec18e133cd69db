"""Real photographs that registry packages ship, for measuring and calibrating the model's graphs.

Nothing is downloaded: the photos come from packages `make photos` (or the Docker build stage)
installs, plus any folder given with `--photos`:

- scikit-image's wheel (`skimage/data`: coffee, chelsea, astronaut, rocket, ...);
- Debian's `tuxpaint-stamps-default`: photographs of animals, food, plants, tools, vehicles (the
  cartoon, symbol and lettering stamps are left out);
- Debian's `opencv-doc`: the sample photographs of OpenCV's examples.

Calibration and evaluation sets are disjoint by construction: a photo's side is decided by a hash
of its subject (its folder and its name without `_mirror` or a trailing number), so a mirrored or
numbered variant of an evaluation photo never calibrates.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

TUXPAINT_STAMPS = Path("/usr/share/tuxpaint/stamps")
OPENCV_SAMPLES = Path("/usr/share/doc/opencv-doc/examples/data")
_SUFFIXES = {".jpg", ".jpeg", ".png"}
# Drawings, letters and signs rather than photographs.
_NOT_PHOTOS = re.compile(r"cartoon|symbols|alphabet|roadsigns|_shadow|thumb", re.IGNORECASE)
# OpenCV's samples that are calibration boards, text, logos, masks or synthetic pictures.
_OPENCV_NOT_PHOTOS = re.compile(
    r"^(left|right)\d*\.|chessboard|logo|text|digits|mask|gradient|ellipses|tmpl|templ|pic\d|"
    r"notes|sudoku|aloeGT|detect_blob|ml\.png|blox|graf|cards|starry_night|box",
    re.IGNORECASE,
)
_SKIMAGE_NOT_PHOTOS = re.compile(
    r"chessboard|logo|text|page|horse|phantom|color|binary|no_time|clock_motion", re.IGNORECASE
)


# Fewer evaluation photographs than this measure nothing: an int8 graph is not built from them.
INT8_MIN_EVALUATION_PHOTOS = 100
# What the build says then, and the manifest records as the reason int8 was not built.
TOO_FEW_PHOTOS = "evaluation photographs; measuring an int8 graph takes at least"


@dataclass(frozen=True, slots=True)
class PhotoSets:
    calibration: list[Path]
    evaluation: list[Path]
    sources: list[str]

    @property
    def measure_int8(self) -> bool:
        """Enough evaluation photographs to measure an int8 graph against its bar."""
        return len(self.evaluation) >= INT8_MIN_EVALUATION_PHOTOS

    @property
    def all(self) -> list[Path]:
        return sorted(self.calibration + self.evaluation)


def find_photos(extra: Iterable[Path] = (), installed: bool = True) -> PhotoSets:
    """Every photograph available here (`installed`: those of the packages above; `extra`: more
    folders), split into disjoint calibration and evaluation sets."""
    found: dict[str, list[Path]] = {}
    found_skimage = skimage_data() if installed else None
    if found_skimage is not None:
        found["scikit-image"] = _listed(found_skimage, _SKIMAGE_NOT_PHOTOS, recursive=False)
    if installed and TUXPAINT_STAMPS.is_dir():
        found["tuxpaint-stamps-default"] = _listed(TUXPAINT_STAMPS, _NOT_PHOTOS, recursive=True)
    if installed and OPENCV_SAMPLES.is_dir():
        found["opencv-doc"] = _listed(OPENCV_SAMPLES, _OPENCV_NOT_PHOTOS, recursive=False)
    for folder in extra:
        found[str(folder)] = _listed(folder, None, recursive=True)
    photos = sorted({p for paths in found.values() for p in paths})
    calibration = [p for p in photos if _calibrates(p)]
    evaluation = [p for p in photos if not _calibrates(p)]
    sources = [f"{name} ({len(paths)})" for name, paths in found.items() if paths]
    return PhotoSets(calibration, evaluation, sources)


def crops(path: Path) -> list[bytes]:
    """The photograph and four crops of it (each corner's 70%), as PNG: more real images from
    one, for teaching a head in the tests and `bench/heads.py` (never random pixels)."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    w, h = image.size
    boxes = [
        (0, 0, w, h),
        (0, 0, int(w * 0.7), int(h * 0.7)),
        (int(w * 0.3), 0, w, int(h * 0.7)),
        (0, int(h * 0.3), int(w * 0.7), h),
        (int(w * 0.3), int(h * 0.3), w, h),
    ]
    out = []
    for box in boxes:
        buffer = io.BytesIO()
        image.crop(box).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def stamps_by_category() -> dict[str, list[Path]]:
    """tuxpaint-stamps-default's photographs by their top-level folder (animals, food, ...): a
    labelled photo set the project trains nothing on (`bench/teach.py`)."""
    if not TUXPAINT_STAMPS.is_dir():
        return {}
    by_category = {
        folder.name: _listed(folder, _NOT_PHOTOS, recursive=True)
        for folder in sorted(TUXPAINT_STAMPS.iterdir())
        if folder.is_dir() and not _NOT_PHOTOS.search(folder.name)
    }
    return {name: paths for name, paths in by_category.items() if paths}


def _listed(folder: Path, excluded: re.Pattern[str] | None, recursive: bool) -> list[Path]:
    paths = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in paths
        if p.suffix.lower() in _SUFFIXES
        and p.is_file()
        and (excluded is None or not excluded.search(str(p.relative_to(folder))))
    )


def _subject(path: Path) -> str:
    stem = re.sub(r"(_mirror|_?\d+)$", "", path.stem.lower())
    return f"{path.parent.name}/{stem}"


def _calibrates(path: Path) -> bool:
    return hashlib.sha256(_subject(path).encode()).digest()[0] % 2 == 0


def skimage_data() -> Path | None:
    try:
        import skimage.data
    except ImportError:
        return None
    return Path(skimage.data.__file__).parent

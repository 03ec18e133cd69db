"""Kept images: the originals of classified uploads and their thumbnails, content-addressed.

Layout under IMAGE_STORE_DIR (one copy per distinct image, whatever its number of predictions):

    ab/<sha256>             the upload as received
    ab/<sha256>.thumb.jpg   its thumbnail (JPEG, made by the decoder process that decoded it)
    .cleanup.lock           lets one process at a time clean up (several servers share a store)

A file's modification time is when an upload last brought it: IMAGE_RETENTION_DAYS counts from
there, and IMAGE_STORE_MAX_BYTES removes the images seen longest ago first.

No request names a path: every path is built from a digest that must be 64 hex digits, files are
opened without following symlinks, and a directory that resolves outside the store is refused.
Writing never raises: `keep` returns why an image was not kept (a full disk must not fail the
classification it belongs to).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from visinspect.config import Settings
from visinspect.errors import StartupFailed

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_THUMBNAIL_SUFFIX = ".thumb.jpg"
_TEMPORARY_PREFIX = ".tmp-"
# A temporary file this old belongs to a write that died (a killed process): the cleanup removes it.
_TEMPORARY_MAX_AGE_S = 3600.0
# The size bound's cleanup frees down to this share of IMAGE_STORE_MAX_BYTES, so that the store
# is not back at its bound after the next few uploads.
_LOW_WATER = 0.9


class Variant(StrEnum):
    ORIGINAL = "original"
    THUMBNAIL = "thumbnail"


class NotKept(StrEnum):
    """Why an image was not kept: the `reason` of the log line and of the metric."""

    STORE_FULL = "store_full"  # IMAGE_STORE_MAX_BYTES reached; the cleanup is asked to make room
    DISK_FULL = "disk_full"  # the filesystem said ENOSPC or EDQUOT
    WRITE_FAILED = "write_failed"  # any other error of the filesystem


@dataclass(frozen=True, slots=True)
class KeptFile:
    """An open kept file: read it, then close it."""

    file: BinaryIO
    size: int


@dataclass(slots=True)
class CleanupReport:
    expired: int = 0  # images removed by IMAGE_RETENTION_DAYS
    evicted: int = 0  # images removed by IMAGE_STORE_MAX_BYTES, oldest first
    abandoned: int = 0  # temporary files of writes that died
    removed_bytes: int = 0
    images: int = 0  # what is left
    bytes: int = 0
    seconds: float = 0.0


@dataclass(slots=True)
class _Entry:
    mtime: float
    size: int = 0
    paths: list[Path] = field(default_factory=list)


class ImageStore:
    def __init__(self, root: Path, max_bytes: int, retention_days: float) -> None:
        self.root = root
        self.max_bytes = max_bytes  # 0 = no bound
        self.retention_s = retention_days * 86400  # 0 = keep forever
        # What the store holds, as far as this process knows: measured by each cleanup, grown by
        # this process's writes in between (other processes' writes show at the next cleanup).
        self.used_bytes = 0
        self._resolved_root: Path | None = None

    def create(self) -> None:
        """Make the root (a volume mount point usually exists); raises OSError if it cannot be."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._resolved_root = self.root.resolve(strict=True)

    def keep(self, sha256: str, original: bytes, thumbnail: bytes) -> NotKept | None:
        """Store one upload and its thumbnail; None when both are there, else why not. An image
        already kept is only marked as seen now."""
        directory = self._directory(sha256)
        paths = directory / sha256, directory / (sha256 + _THUMBNAIL_SUFFIX)
        try:
            if _mark_seen(paths):
                return None
            size = len(original) + len(thumbnail)
            if self.max_bytes and self.used_bytes + size > self.max_bytes:
                return NotKept.STORE_FULL
            directory.mkdir(exist_ok=True)
            self._check_inside(directory)
            _write_atomically(paths[0], original)
            try:
                _write_atomically(paths[1], thumbnail)
            except OSError:
                paths[0].unlink(missing_ok=True)  # kept means both: the queue shows thumbnails
                raise
        except OSError as exc:
            return (
                NotKept.DISK_FULL
                if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                else (NotKept.WRITE_FAILED)
            )
        self.used_bytes += size
        return None

    def open(self, sha256: str, variant: Variant) -> KeptFile | None:
        """The kept file, open for reading; None when the store does not hold it (never kept,
        or removed by the cleanup). ValueError for a digest that is not one."""
        directory = self._directory(sha256)
        name = sha256 if variant is Variant.ORIGINAL else sha256 + _THUMBNAIL_SUFFIX
        try:
            self._check_inside(directory)
            descriptor = os.open(directory / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:  # missing, a symlink (ELOOP), outside the store, unreadable
            return None
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            os.close(descriptor)
            return None
        return KeptFile(os.fdopen(descriptor, "rb"), info.st_size)

    def cleanup(self, now: float | None = None) -> CleanupReport:
        """Remove expired images, then the oldest ones while the store is above its bound, and
        the leftovers of writes that died. One process at a time; blocking (run it in a thread)."""
        started = time.perf_counter()
        now = time.time() if now is None else now
        report = CleanupReport()
        with self._cleanup_lock():
            entries = self._scan(now, report)
            if self.retention_s:
                for digest in [d for d, e in entries.items() if e.mtime < now - self.retention_s]:
                    report.expired += self._remove(entries.pop(digest), report)
            total = sum(entry.size for entry in entries.values())
            if self.max_bytes and total > self.max_bytes:
                for digest in sorted(entries, key=lambda d: entries[d].mtime):
                    if total <= self.max_bytes * _LOW_WATER:
                        break
                    entry = entries.pop(digest)
                    if self._remove(entry, report):
                        report.evicted += 1
                        total -= entry.size
        report.images = len(entries)
        report.bytes = self.used_bytes = sum(entry.size for entry in entries.values())
        report.seconds = time.perf_counter() - started
        return report

    def _scan(self, now: float, report: CleanupReport) -> dict[str, _Entry]:
        entries: dict[str, _Entry] = {}
        for directory in _subdirectories(self.root):
            for item in _files(directory):
                info = item.stat(follow_symlinks=False)
                if item.name.startswith(_TEMPORARY_PREFIX):
                    if info.st_mtime < now - _TEMPORARY_MAX_AGE_S:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(item.path)
                            report.abandoned += 1
                    continue
                digest = item.name.removesuffix(_THUMBNAIL_SUFFIX)
                if not _DIGEST.match(digest) or not stat.S_ISREG(info.st_mode):
                    continue  # not ours: left alone
                entry = entries.setdefault(digest, _Entry(info.st_mtime))
                entry.mtime = max(entry.mtime, info.st_mtime)
                entry.size += info.st_size
                entry.paths.append(Path(item.path))
        return entries

    def _remove(self, entry: _Entry, report: CleanupReport) -> bool:
        """Remove one image's files unless an upload brought it again since the scan."""
        for path in entry.paths:
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path, follow_symlinks=False).st_mtime > entry.mtime:
                    return False
        for path in entry.paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        report.removed_bytes += entry.size
        return True

    @contextlib.contextmanager
    def _cleanup_lock(self) -> Iterator[None]:
        descriptor = os.open(self.root / ".cleanup.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # releases the lock

    def _directory(self, sha256: str) -> Path:
        if not _DIGEST.match(sha256):
            raise ValueError("an image is named by its SHA-256: 64 lower-case hex digits")
        return self.root / sha256[:2]

    def _check_inside(self, directory: Path) -> None:
        """A fan-out directory replaced by a symlink out of the store is refused."""
        root = self._resolved_root or self.root.resolve()
        if directory.resolve().parent != root:
            raise OSError(errno.EXDEV, "outside the image store", str(directory))


def open_image_store(settings: Settings) -> ImageStore | None:
    """The store in IMAGE_STORE_DIR, its directory made and writable; None when unset."""
    if settings.image_store_dir is None:
        return None
    store = ImageStore(
        settings.image_store_dir, settings.image_store_max_bytes, settings.image_retention_days
    )
    try:
        store.create()
        probe = settings.image_store_dir / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StartupFailed(
            "image store",
            f"IMAGE_STORE_DIR={settings.image_store_dir} cannot be written: {exc.strerror or exc}",
            "mount a writable volume there (the container runs as uid 10001), or unset "
            "IMAGE_STORE_DIR to not keep images",
        ) from exc
    return store


def _mark_seen(paths: tuple[Path, Path]) -> bool:
    """True when both files exist (their time is now refreshed: the retention restarts)."""
    try:
        for path in paths:
            os.utime(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers see the whole file or none: written under a temporary name, then renamed."""
    temporary = path.with_name(f"{_TEMPORARY_PREFIX}{secrets.token_hex(8)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    descriptor = os.open(temporary, flags, 0o640)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _subdirectories(root: Path) -> Iterator[Path]:
    with os.scandir(root) as items:
        for item in items:
            if len(item.name) == 2 and item.is_dir(follow_symlinks=False):
                yield Path(item.path)


def _files(directory: Path) -> list[os.DirEntry[str]]:
    with os.scandir(directory) as items:
        return [item for item in items if item.is_file(follow_symlinks=False)]

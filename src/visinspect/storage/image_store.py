"""Kept images: the originals of classified uploads and their thumbnails, content-addressed.

Layout under IMAGE_STORE_DIR (one copy per distinct image, whatever its number of predictions):

    ab/<sha256>             the upload as received
    ab/<sha256>.thumb.jpg   its thumbnail (JPEG, made by the decoder process that decoded it)
    ab/<sha256>.by.<key>    empty: the API key whose upload first brought it (its owner)
    .cleanup.lock           lets one process at a time clean up (several servers share a store)

A file's modification time is when an upload last brought it: IMAGE_RETENTION_DAYS counts from
there, and the bounds remove the images seen longest ago first. The bounds count what the disk
gives: allocated blocks, not the files' lengths (a 100-byte image takes a 4 KiB block), and files
(inodes), IMAGE_STORE_MAX_FILES. One key's images may hold at most IMAGE_STORE_KEY_SHARE of
either: beyond, its uploads are not kept, and the cleanup evicts its images before anyone
else's, so that one key cannot push every other key's images out.

The cleanup streams: it reads one fan-out directory at a time and keeps, besides, a histogram of
ages per key (logarithmic buckets, 2% of an age wide), never a list of every image: its memory
does not grow with the store (a CronJob with 256 MiB cleans millions of images). A first pass
removes expired images and counts; a second, only when a bound is passed, removes each key's
images older than the age its histogram says frees enough (at most one bucket more).

No request names a path: every path is built from a digest that must be 64 hex digits, files are
opened without following symlinks, and a directory that resolves outside the store is refused.
Writing never raises: `keep` returns why an image was not kept (a full disk must not fail the
classification it belongs to).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
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

import structlog

from visinspect.config import Settings
from visinspect.errors import StartupFailed

log = structlog.get_logger("visinspect.images")
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

    STORE_FULL = "store_full"  # IMAGE_STORE_MAX_BYTES/_FILES reached; the cleanup makes room
    KEY_QUOTA = "key_quota"  # this key's images hold IMAGE_STORE_KEY_SHARE of a bound already
    DISK_FULL = "disk_full"  # the filesystem said ENOSPC or EDQUOT
    WRITE_FAILED = "write_failed"  # any other error of the filesystem


@dataclass(frozen=True, slots=True)
class KeptFile:
    """An open kept file: read it, then close it."""

    file: BinaryIO
    size: int


@dataclass(slots=True)
class Usage:
    """What images take on the disk: allocated bytes (blocks) and files (inodes)."""

    bytes: int = 0
    files: int = 0

    def add(self, other: Usage, sign: int = 1) -> None:
        self.bytes += sign * other.bytes
        self.files += sign * other.files


@dataclass(slots=True)
class CleanupReport:
    expired: int = 0  # images removed by IMAGE_RETENTION_DAYS
    evicted: int = 0  # images removed by a bound, a key over its share first
    abandoned: int = 0  # temporary files of writes that died
    removed_bytes: int = 0
    images: int = 0  # what is left
    bytes: int = 0  # allocated
    files: int = 0
    seconds: float = 0.0


# The owner of images kept while API_KEYS is empty: it has the whole store, there being no other
# key to share it with.
ANONYMOUS = "anonymous"
_OWNER = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")  # API key names (config.API_KEY_NAME)
_OWNER_MARK = ".by."
# Age histogram: bucket = log2(1 + age in seconds) * _BUCKETS_PER_DOUBLING, capped.
_BUCKETS_PER_DOUBLING = 32
_BUCKETS = 40 * _BUCKETS_PER_DOUBLING  # 2^40 s: older than anything


def _bucket(age_s: float) -> int:
    return min(_BUCKETS - 1, int(math.log2(1.0 + max(age_s, 0.0)) * _BUCKETS_PER_DOUBLING))


@dataclass(slots=True)
class _Image:
    """One image's files in one fan-out directory, as a scan finds them."""

    mtime: float = 0.0
    usage: Usage = field(default_factory=Usage)
    # Plain strings: pathlib interns every name it parses, and the interned names' table would
    # grow with the store.
    paths: list[str] = field(default_factory=list)
    owner: str = ANONYMOUS


@dataclass(slots=True)
class _Census:
    """The first pass's counts: per owner, the usage by age bucket (bounded memory)."""

    ages: dict[str, list[Usage]] = field(default_factory=dict)
    images: int = 0

    def count(self, image: _Image, bucket: int) -> None:
        self.ages.setdefault(image.owner, [Usage() for _ in range(_BUCKETS)])[bucket].add(
            image.usage
        )
        self.images += 1

    def total(self, owner: str | None = None) -> Usage:
        total = Usage()
        for name, buckets in self.ages.items():
            if owner is None or name == owner:
                for usage in buckets:
                    total.add(usage)
        return total


class ImageStore:
    def __init__(
        self,
        root: Path,
        max_bytes: int,
        retention_days: float,
        max_files: int = 0,
        key_share: float = 1.0,
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes  # 0 = no bound
        self.max_files = max_files  # 0 = no bound
        self.key_share = key_share  # of each bound, for one key's images; 1 = no share
        self.retention_s = retention_days * 86400  # 0 = keep forever
        # What the store holds, as far as this process knows: measured by each cleanup, grown by
        # this process's writes in between (other processes' writes show at the next cleanup).
        self.used = Usage()
        self.used_by: dict[str, Usage] = {}
        self._room: int | None = None  # what the volume can take for the store; None: unmeasured
        self.volume_bytes = 0  # the volume's size, as statvfs says
        self._block = 4096
        self._resolved_root: Path | None = None

    @property
    def used_bytes(self) -> int:
        return self.used.bytes

    @property
    def bound_bytes(self) -> int | None:
        """The size bound in force (None: none): IMAGE_STORE_MAX_BYTES, or less where the volume
        cannot hold that much (`_measure_volume`; what the store holds when a write found the
        disk full). Key shares and the cleanup's low-water mark are shares of it."""
        bounds = [b for b in (self.max_bytes or None, self._room) if b is not None]
        return min(bounds) if bounds else None

    @property
    def volume_binds(self) -> bool:
        """Whether the volume, not IMAGE_STORE_MAX_BYTES, is what bounds the store now."""
        return self._room is not None and (not self.max_bytes or self._room < self.max_bytes)

    def create(self) -> None:
        """Make the root (a volume mount point usually exists); raises OSError if it cannot be."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._resolved_root = self.root.resolve(strict=True)
        self._block = os.statvfs(self.root).f_frsize or 4096
        self._measure_volume()

    def _measure_volume(self) -> None:
        """The bound: at most what the store holds plus what the volume has free for it, less a
        reserve (1% of the volume, at most 64 MiB), whatever IMAGE_STORE_MAX_BYTES says: a bound
        the volume cannot hold would never make the cleanup evict anything, and one key could
        fill the disk for every other."""
        volume = os.statvfs(self.root)
        self.volume_bytes = volume.f_blocks * volume.f_frsize
        reserve = min(self.volume_bytes // 100, 64 << 20)
        self._room = max(0, self.used.bytes + volume.f_bavail * volume.f_frsize - reserve)

    def keep(
        self, sha256: str, original: bytes, thumbnail: bytes, owner: str | None = None
    ) -> NotKept | None:
        """Store one upload and its thumbnail for `owner` (an API key's name); None when both
        are there, else why not. An image already kept is only marked as seen now."""
        owner = owner if owner is not None and _OWNER.match(owner) else ANONYMOUS
        directory = self._directory(sha256)
        paths = directory / sha256, directory / (sha256 + _THUMBNAIL_SUFFIX)
        try:
            if _mark_seen(paths):
                return None
            need = Usage(self._allocated(len(original)) + self._allocated(len(thumbnail)), 3)
            if self._over(self.used, need, 1.0):
                self._measure_volume()  # files removed meanwhile may have made room
                if self._over(self.used, need, 1.0):
                    return NotKept.DISK_FULL if self.volume_binds else NotKept.STORE_FULL
            if owner != ANONYMOUS and self._over(
                self.used_by.get(owner, Usage()), need, self.key_share
            ):
                return NotKept.KEY_QUOTA
            directory.mkdir(exist_ok=True)
            self._check_inside(directory)
            _write_atomically(paths[0], original)
            try:
                _write_atomically(paths[1], thumbnail)
                _mark_owner(directory / f"{sha256}{_OWNER_MARK}{owner}")
            except OSError:
                paths[0].unlink(missing_ok=True)  # kept means both: the queue shows thumbnails
                paths[1].unlink(missing_ok=True)
                raise
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                # Over the bound, whatever it was: nothing more is kept until the cleanup has
                # measured the volume again and made room (a key over its share first).
                self._room = self.used.bytes
                return NotKept.DISK_FULL
            return NotKept.WRITE_FAILED
        self.used.add(need)
        self.used_by.setdefault(owner, Usage()).add(need)
        return None

    def _allocated(self, length: int) -> int:
        return -(-length // self._block) * self._block

    def _over(self, usage: Usage, need: Usage, share: float) -> bool:
        return bool(
            (self.bound_bytes is not None and usage.bytes + need.bytes > self.bound_bytes * share)
            or (self.max_files and usage.files + need.files > self.max_files * share)
        )

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
        """Remove expired images, then, above a bound, the oldest ones (a key over its share
        first), and the leftovers of writes that died. One process at a time; streaming, in
        bounded memory; blocking (run it in a thread)."""
        started = time.perf_counter()
        now = time.time() if now is None else now
        report = CleanupReport()
        with self._cleanup_lock():
            census = self._count(now, report)
            self.used = census.total()
            self._measure_volume()
            cutoffs = self._cutoffs(census)
            if cutoffs:
                self._evict(now, cutoffs, census, report)
        self.used = census.total()
        self.used_by = {owner: census.total(owner) for owner in census.ages}
        report.bytes, report.files = self.used.bytes, self.used.files
        report.images = census.images
        report.seconds = time.perf_counter() - started
        return report

    def _count(self, now: float, report: CleanupReport) -> _Census:
        """First pass: expired images and dead writes removed; the rest counted by owner and age."""
        census = _Census()
        for images in self._images(now, report):
            for image in images:
                if self.retention_s and image.mtime < now - self.retention_s:
                    report.expired += self._remove(image, report)
                else:
                    census.count(image, _bucket(now - image.mtime))
        return census

    def _cutoffs(self, census: _Census) -> dict[str, int]:
        """Per owner, the age bucket from which its images go: first each key over its share,
        down to its share of the low-water mark, then everyone's oldest while the store is
        above its bound. Empty when nothing need go."""
        cutoffs: dict[str, int] = {}
        for owner, buckets in census.ages.items():
            if owner == ANONYMOUS:  # keys are off (or were): no one to share with
                continue
            cut = self._cutoff(buckets, self.key_share)
            if cut is not None:
                cutoffs[owner] = cut
        remaining: list[Usage] = [Usage() for _ in range(_BUCKETS)]
        for owner, buckets in census.ages.items():
            for index, usage in enumerate(buckets[: cutoffs.get(owner, _BUCKETS)]):
                remaining[index].add(usage)
        everyone = self._cutoff(remaining, 1.0)
        if everyone is not None:
            for owner in census.ages:
                cutoffs[owner] = min(cutoffs.get(owner, _BUCKETS), everyone)
        return cutoffs

    def _cutoff(self, buckets: list[Usage], share: float) -> int | None:
        """The smallest bucket index from which removing every older image brings `buckets`
        within `share` of the bounds' low-water mark; None when they are within the bound."""
        total = Usage()
        for usage in buckets:
            total.add(usage)
        if not self._over(total, Usage(), share):
            return None
        byte_goal = (self.bound_bytes or 0) * share * _LOW_WATER
        file_goal = self.max_files * share * _LOW_WATER
        for index in range(len(buckets) - 1, -1, -1):
            total.add(buckets[index], -1)
            if (self.bound_bytes is None or total.bytes <= byte_goal) and (
                not self.max_files or total.files <= file_goal
            ):
                return index
        return 0

    def _evict(
        self, now: float, cutoffs: dict[str, int], census: _Census, report: CleanupReport
    ) -> None:
        """Second pass: each image at or past its owner's cutoff is removed and uncounted."""
        for images in self._images(now, report):
            for image in images:
                bucket = _bucket(now - image.mtime)
                if bucket >= cutoffs.get(image.owner, _BUCKETS) and self._remove(image, report):
                    report.evicted += 1
                    census.ages[image.owner][bucket].add(image.usage, -1)
                    census.images -= 1

    def _images(self, now: float, report: CleanupReport) -> Iterator[list[_Image]]:
        """The store's images, one fan-out directory at a time (temporary files of writes that
        died are removed on the way)."""
        for directory in _subdirectories(self.root):
            images: dict[str, _Image] = {}
            for item in _files(directory):
                info = item.stat(follow_symlinks=False)
                if item.name.startswith(_TEMPORARY_PREFIX):
                    if info.st_mtime < now - _TEMPORARY_MAX_AGE_S:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(item.path)
                            report.abandoned += 1
                    continue
                digest, _, owner = item.name.removesuffix(_THUMBNAIL_SUFFIX).partition(_OWNER_MARK)
                if not _DIGEST.match(digest) or not stat.S_ISREG(info.st_mode):
                    continue  # not ours: left alone
                image = images.setdefault(digest, _Image(info.st_mtime))
                if owner:
                    image.owner = owner if _OWNER.match(owner) else ANONYMOUS
                else:  # the marker's time is when it was first kept: not a sighting
                    image.mtime = max(image.mtime, info.st_mtime)
                image.usage.add(Usage(info.st_blocks * 512, 1))
                image.paths.append(item.path)
            yield list(images.values())

    def _remove(self, image: _Image, report: CleanupReport) -> bool:
        """Remove one image's files unless an upload brought it again since the scan."""
        for path in image.paths:
            with contextlib.suppress(FileNotFoundError):
                if _OWNER_MARK not in os.path.basename(path) and (
                    os.stat(path, follow_symlinks=False).st_mtime > image.mtime
                ):
                    return False
        for path in image.paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        report.removed_bytes += image.usage.bytes
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
        settings.image_store_dir,
        settings.image_store_max_bytes,
        settings.image_retention_days,
        settings.image_store_max_files,
        settings.image_store_key_share,
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
    if settings.image_store_max_bytes > store.volume_bytes:
        log.warning(
            "images.bound_exceeds_volume",
            max_bytes=settings.image_store_max_bytes,
            volume_bytes=store.volume_bytes,
            bound_bytes=store.bound_bytes,
            hint="IMAGE_STORE_MAX_BYTES is larger than the volume: the store is bounded by "
            "the volume's free space instead; set it below the volume's size",
        )
    return store


def _mark_seen(paths: tuple[Path, Path]) -> bool:
    """True when both files exist (their time is now refreshed: the retention restarts)."""
    try:
        for path in paths:
            os.utime(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _mark_owner(path: Path) -> None:
    """The empty owner marker (an image kept again by another key keeps its first owner)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    os.close(os.open(path, flags, 0o640))


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


def _subdirectories(root: Path) -> Iterator[str]:
    with os.scandir(root) as items:
        for item in items:
            if len(item.name) == 2 and item.is_dir(follow_symlinks=False):
                yield item.path


def _files(directory: str) -> list[os.DirEntry[str]]:
    with os.scandir(directory) as items:
        return [item for item in items if item.is_file(follow_symlinks=False)]

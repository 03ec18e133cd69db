"""The image store on a real filesystem: content addressing, the cleanup's two bounds, no path
out of the store, and a disk that is really full (a 1 MiB tmpfs)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import mounted_full_disk
from visinspect.storage.image_store import ImageStore, NotKept, Variant

THUMBNAIL = b"\xff\xd8 a thumbnail"


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    made = ImageStore(tmp_path / "images", max_bytes=0, retention_days=0)
    made.create()
    return made


def read(store: ImageStore, sha256: str, variant: Variant = Variant.ORIGINAL) -> bytes | None:
    kept = store.open(sha256, variant)
    if kept is None:
        return None
    with kept.file:
        return kept.file.read()


def kept_files(store: ImageStore) -> list[str]:
    return sorted(
        str(path.relative_to(store.root)) for path in store.root.rglob("*") if path.is_file()
    )


def age(store: ImageStore, sha256: str, days: float) -> None:
    """Make an image look as if an upload last brought it `days` ago."""
    then = time.time() - days * 86400
    for path in store.root.glob(f"{sha256[:2]}/{sha256}*"):
        os.utime(path, (then, then))


def test_one_copy_per_distinct_image_and_a_repeat_marks_it_seen(
    store: ImageStore, photos: Path
) -> None:
    data = (photos / "coffee.png").read_bytes()
    sha = digest(data)
    assert store.keep(sha, data, THUMBNAIL) is None
    age(store, sha, 3)
    assert store.keep(sha, data, THUMBNAIL) is None
    assert kept_files(store) == [f"{sha[:2]}/{sha}", f"{sha[:2]}/{sha}.thumb.jpg"]
    assert read(store, sha) == data
    assert read(store, sha, Variant.THUMBNAIL) == THUMBNAIL
    seen = (store.root / sha[:2] / sha).stat().st_mtime
    assert time.time() - seen < 60  # the repeat restarted its retention
    assert store.used_bytes == len(data) + len(THUMBNAIL)  # counted once


def test_no_path_from_outside_reaches_out_of_the_store(store: ImageStore, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"not an image")
    for name in ["../secret", "../../etc/passwd", "A" * 64, "a" * 63, "a" * 65, "", "/etc/passwd"]:
        with pytest.raises(ValueError, match="64 lower-case hex digits"):
            store.open(name, Variant.ORIGINAL)
        with pytest.raises(ValueError, match="64 lower-case hex digits"):
            store.keep(name, b"x", b"y")
    # A kept file replaced by a symlink out of the store is not followed.
    sha = digest(b"linked")
    (store.root / sha[:2]).mkdir()
    (store.root / sha[:2] / sha).symlink_to(secret)
    assert store.open(sha, Variant.ORIGINAL) is None
    # Nor is a fan-out directory replaced by one: reading and writing both refuse it.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / (sha2 := "ab" + "0" * 62)).write_bytes(b"outside")
    (store.root / "ab").symlink_to(outside)
    assert store.open(sha2, Variant.ORIGINAL) is None
    assert store.keep("ab" + "1" * 62, b"data", b"thumb") is NotKept.WRITE_FAILED
    assert sorted(p.name for p in outside.iterdir()) == [sha2]  # nothing was written there


def test_cleanup_removes_expired_images_and_writes_that_died(
    tmp_path: Path,
) -> None:
    store = ImageStore(tmp_path / "images", max_bytes=0, retention_days=7)
    store.create()
    old, fresh = b"old image", b"fresh image"
    store.keep(digest(old), old, THUMBNAIL)
    store.keep(digest(fresh), fresh, THUMBNAIL)
    age(store, digest(old), 8)
    age(store, digest(fresh), 6)
    directory = store.root / digest(old)[:2]
    stale, live = directory / ".tmp-0123456789abcdef", directory / ".tmp-fedcba9876543210"
    stale.write_bytes(b"half")
    live.write_bytes(b"being written")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    stranger = store.root / "README"
    stranger.write_text("an operator's note: not ours to remove")

    report = store.cleanup()

    assert (report.expired, report.evicted, report.abandoned, report.images) == (1, 0, 1, 1)
    assert report.removed_bytes == len(old) + len(THUMBNAIL)
    assert report.bytes == store.used_bytes == len(fresh) + len(THUMBNAIL)
    assert read(store, digest(old)) is None
    assert read(store, digest(fresh)) == fresh
    assert not stale.exists()
    assert live.exists()
    assert stranger.exists()


def test_the_size_bound_removes_the_oldest_first_and_refuses_what_would_exceed_it(
    tmp_path: Path,
) -> None:
    images = [bytes([n]) * 1000 for n in range(10)]
    store = ImageStore(tmp_path / "images", max_bytes=10 * 1000, retention_days=0)
    store.create()
    for n, data in enumerate(images):
        assert store.keep(digest(data), data, b"") is None
        age(store, digest(data), 10 - n)  # images[0] seen longest ago
    assert store.keep(digest(b"one more"), b"one more", b"") is NotKept.STORE_FULL

    store.max_bytes = 8 * 1000  # an operator lowers the bound
    report = store.cleanup()

    assert report.evicted == 3  # down to 90% of the bound: 7 of 8 kB
    assert [read(store, digest(d)) is not None for d in images] == [False] * 3 + [True] * 7
    assert store.keep(digest(b"one more"), b"one more", b"") is None


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_full_disk(tmp_path / "tiny") as mount_point:
        yield mount_point


def test_a_full_disk_is_a_reason_not_an_error_and_leaves_no_partial_file(
    full_disk: Path, photos: Path
) -> None:
    store = ImageStore(full_disk / "images", max_bytes=0, retention_days=0)
    store.create()
    data = (photos / "chelsea.png").read_bytes()
    assert store.keep(digest(data), data, THUMBNAIL) is NotKept.DISK_FULL
    assert kept_files(store) == []
    assert store.open(digest(data), Variant.ORIGINAL) is None
    (full_disk / "filler").unlink()  # room again
    assert store.keep(digest(data), data, THUMBNAIL) is None
    assert read(store, digest(data)) == data

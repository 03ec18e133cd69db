"""The image store on a real filesystem: content addressing, the cleanup's bounds in blocks and
files, each key's share, a cleanup whose memory does not grow with the store, no path out of the
store, and a disk that is really full (a 1 MiB tmpfs)."""

from __future__ import annotations

import hashlib
import os
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from tests.support import fill_up, make_settings, mounted_full_disk, mounted_volume
from visinspect.storage.image_store import ImageStore, NotKept, Variant, open_image_store

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


def on_disk(store: ImageStore, sha256: str) -> int:
    """Bytes the image's files take on the disk (allocated blocks)."""
    return sum(p.stat().st_blocks * 512 for p in store.root.glob(f"{sha256[:2]}/{sha256}*"))


def blocks(store: ImageStore, length: int) -> int:
    block = os.statvfs(store.root).f_frsize
    return -(-length // block) * block


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
    assert (
        kept_files(store)
        == [
            f"{sha[:2]}/{sha}",
            f"{sha[:2]}/{sha}.by.anonymous",  # empty: who brought it first
            f"{sha[:2]}/{sha}.thumb.jpg",
        ]
    )
    assert read(store, sha) == data
    assert read(store, sha, Variant.THUMBNAIL) == THUMBNAIL
    seen = (store.root / sha[:2] / sha).stat().st_mtime
    assert time.time() - seen < 60  # the repeat restarted its retention
    # Counted once, in blocks: what the disk gives, not the files' lengths.
    assert store.used_bytes == blocks(store, len(data)) + blocks(store, len(THUMBNAIL))
    assert store.used_bytes == on_disk(store, sha)
    assert store.used.files == 3


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

    old_on_disk, fresh_on_disk = on_disk(store, digest(old)), on_disk(store, digest(fresh))
    report = store.cleanup()

    assert (report.expired, report.evicted, report.abandoned, report.images) == (1, 0, 1, 1)
    assert report.removed_bytes == old_on_disk
    assert report.bytes == store.used_bytes == fresh_on_disk
    assert report.files == 3
    assert read(store, digest(old)) is None
    assert read(store, digest(fresh)) == fresh
    assert not stale.exists()
    assert live.exists()
    assert stranger.exists()


def test_the_size_bound_removes_the_oldest_first_and_refuses_what_would_exceed_it(
    tmp_path: Path,
) -> None:
    images = [bytes([n]) * 1000 for n in range(10)]
    store = ImageStore(tmp_path / "images", max_bytes=0, retention_days=0)
    store.create()
    block = blocks(store, 1)
    store.max_bytes = 10 * block  # each 1000-byte image takes one block
    for n, data in enumerate(images):
        assert store.keep(digest(data), data, b"") is None
        age(store, digest(data), 10 - n)  # images[0] seen longest ago
    assert store.keep(digest(b"one more"), b"one more", b"") is NotKept.STORE_FULL

    store.max_bytes = 8 * block  # an operator lowers the bound
    report = store.cleanup()

    assert report.evicted == 3  # down to 90% of the bound: 7 of 8 blocks
    assert [read(store, digest(d)) is not None for d in images] == [False] * 3 + [True] * 7
    assert store.keep(digest(b"one more"), b"one more", b"") is None


def test_tiny_images_count_their_blocks_and_files(tmp_path: Path) -> None:
    """100-byte images take a block each: a byte count would have let 40 times as many in.
    And every image takes three files: the file bound counts them."""
    store = ImageStore(tmp_path / "images", max_bytes=0, retention_days=0)
    store.create()
    store.max_bytes = 10 * blocks(store, 1)
    tiny = [f"tiny image {n:03d}".encode() * 6 for n in range(40)]  # about 100 bytes each
    kept = [store.keep(digest(d), d, b"") for d in tiny]
    assert kept.count(None) == 10
    assert set(kept[10:]) == {NotKept.STORE_FULL}

    by_files = ImageStore(tmp_path / "files", max_bytes=0, retention_days=0, max_files=30)
    by_files.create()
    kept = [by_files.keep(digest(d), d, THUMBNAIL) for d in tiny]
    assert kept.count(None) == 10  # 3 files each
    assert by_files.cleanup().files == 30


def test_one_key_cannot_push_out_another_keys_images(tmp_path: Path) -> None:
    """Each key's images may hold half the store: a key that uploads without end has its own
    uploads refused beyond that, and the cleanup evicts its images, never the others'."""
    store = ImageStore(tmp_path / "images", max_bytes=0, retention_days=0, key_share=0.5)
    store.create()
    store.max_bytes = 20 * blocks(store, 1)
    alice = [f"alice {n}".encode() * 50 for n in range(8)]
    for n, data in enumerate(alice):
        assert store.keep(digest(data), data, b"", "alice") is None
        age(store, digest(data), 30 - n)  # alice's are the oldest in the store
    flood = [f"device {n}".encode() * 50 for n in range(30)]
    kept = [store.keep(digest(d), d, b"", "line-3") for d in flood]
    assert kept.count(None) == 10  # half of the 20 blocks
    assert set(kept[10:]) == {NotKept.KEY_QUOTA}
    assert all(read(store, digest(d)) is not None for d in alice)
    for n, data in enumerate(flood[:10]):
        age(store, digest(data), 10 - n / 2)

    # Without keys every image is anonymous's: no one to share with, the whole store is its.
    anonymous = ImageStore(tmp_path / "open", max_bytes=0, retention_days=0, key_share=0.5)
    anonymous.create()
    anonymous.max_bytes = 20 * blocks(anonymous, 1)
    kept = [anonymous.keep(digest(d), d, b"") for d in flood[:25]]
    assert kept.count(None) == 20
    assert anonymous.cleanup().evicted == 0

    store.key_share = 0.45  # the operator tightens the share to 9 blocks
    report = store.cleanup()
    assert report.evicted == 2  # line-3 down to 90% of its 9: its 2 oldest
    assert all(read(store, digest(d)) is not None for d in alice)  # though they are older
    assert [read(store, digest(d)) is not None for d in flood[:10]] == [False] * 2 + [True] * 8
    assert store.used_by["line-3"].bytes == 8 * blocks(store, 1)
    assert store.used_by["alice"].bytes == 8 * blocks(store, 1)


def test_the_cleanup_streams_in_memory_that_does_not_grow_with_the_store(tmp_path: Path) -> None:
    """Peak memory of a cleanup over 2,000 and over 8,000 images (every one counted, some
    evicted). Measured: 175 and 278 KB, what one fan-out directory holds (a 256th of the store)
    and the age histogram; the cleanup that listed every image took 2.0 and 7.9 MB, about 1 KB
    an image (10 M images: 10 GB in a CronJob of 256 MiB)."""
    peaks = []
    for count in (2_000, 8_000):
        store = ImageStore(tmp_path / f"s{count}", max_bytes=0, retention_days=0)
        store.create()
        block = blocks(store, 1)
        for n in range(count):
            data = f"image {n} of {count}".encode()
            assert store.keep(digest(data), data, b"") is None
        store.max_bytes = int(count * block * 0.95)
        tracemalloc.start()
        report = store.cleanup()
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert report.images + report.evicted == count
        assert report.evicted >= count * 0.05
    assert peaks[1] < 2 * peaks[0], peaks  # not in proportion to the images
    assert peaks[1] < 8_000 * 100, peaks  # under 100 bytes an image


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


def test_a_bound_larger_than_the_volume_is_the_volume_and_one_key_cannot_fill_it(
    tmp_path: Path,
) -> None:
    """With the default 10 GiB bound on a smaller volume, one key filled the disk: the other
    key's images were no longer kept (disk_full) and the cleanup evicted nothing, the store
    being far below its bound; nothing warned at start. Now the bound is at most what the
    volume holds, a full disk counts as over the bound, the key over its share goes first, and
    the start warns."""
    with mounted_volume(tmp_path / "volume", "4m") as volume:
        settings = make_settings(
            "sqlite://", image_store_dir=volume / "images", image_store_key_share=0.5
        )
        with capture_logs() as logs:
            store = open_image_store(settings)
        assert store is not None
        warned = [e for e in logs if e["event"] == "images.bound_exceeds_volume"]
        assert len(warned) == 1
        assert warned[0]["volume_bytes"] == 4 << 20
        assert store.bound_bytes is not None
        assert store.bound_bytes < 4 << 20
        generator = np.random.default_rng(1)

        def image() -> bytes:
            return generator.bytes(100_000)

        kept_by_a = []
        while (outcome := store.keep(digest(data := image()), data, THUMBNAIL, "a")) is None:
            kept_by_a.append(digest(data))
        assert outcome is NotKept.KEY_QUOTA  # its share of the volume, not of 10 GiB
        kept_by_b = []
        for _ in range(3):
            data = image()
            assert store.keep(digest(data), data, THUMBNAIL, "b") is None
            kept_by_b.append(digest(data))

        # Something else fills the volume: a write fails, and the store counts as over.
        fill_up(volume / "filler")
        data = image()
        assert store.keep(digest(data), data, THUMBNAIL, "b") is NotKept.DISK_FULL
        report = store.cleanup()
        assert report.evicted > 0
        assert all(read(store, d) is not None for d in kept_by_b)  # a, over its share, went
        assert sum(read(store, d) is None for d in kept_by_a) == report.evicted
        (volume / "filler").unlink()
        assert store.keep(digest(data), data, THUMBNAIL, "b") is None

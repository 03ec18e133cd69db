"""Kept images as use cases: keep a classified upload (never failing it), hand out one
prediction's image, and run the store's cleanup in the background.

The filesystem work is `storage/image_store.py`; here it runs off the event loop, with the log lines
and metrics an operator reads, and with the prediction's row deciding what may be served.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import anyio.to_thread
import structlog

from visinspect.db import repository
from visinspect.db.session import Database
from visinspect.errors import ImageNotKept, PredictionNotFound
from visinspect.inference.runner import Classification
from visinspect.storage.image_store import CleanupReport, ImageStore, KeptFile, NotKept, Variant

log = structlog.get_logger("visinspect.images")

# What the decoders accept (preprocess.SUPPORTED_FORMATS), as browsers name them.
MEDIA_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}
# A store found full is cleaned at once, but not more often than this.
_FULL_CLEANUP_SPACING_S = 10.0


# A kept image is streamed in chunks of this size, each read off the event loop.
_CHUNK_BYTES = 256 << 10


@dataclass(frozen=True, slots=True)
class KeptImage:
    """One prediction's kept image, open: the route streams `chunks()`, or `close()`s it unread."""

    kept: KeptFile
    media_type: str
    etag: str
    filename: str

    @property
    def size(self) -> int:
        return self.kept.size

    async def chunks(self) -> AsyncIterator[bytes]:
        """The file's bytes, read in a worker thread; the file is closed at the end."""
        try:
            while chunk := await anyio.to_thread.run_sync(self.kept.file.read, _CHUNK_BYTES):
                yield chunk
        finally:
            self.close()

    def close(self) -> None:
        self.kept.file.close()


class ImageService:
    def __init__(
        self,
        store: ImageStore | None,
        database: Database,
        *,
        on_not_kept: Callable[[str], object] | None = None,
        on_cleanup: Callable[[CleanupReport], object] | None = None,
    ) -> None:
        self.store = store  # None: IMAGE_STORE_DIR is not set
        self.database = database
        self.on_not_kept = on_not_kept
        self.on_cleanup = on_cleanup
        self._full = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return self.store is not None

    async def keep(
        self, classification: Classification, request_id: str, owner: str | None = None
    ) -> bool | None:
        """Whether the upload was kept (None: images are not kept), as `owner`'s (an API key's
        name: its share of the store). Never raises: a full or failing disk is a log line and a
        metric, and the prediction is recorded regardless."""
        original, thumbnail = classification.original, classification.thumbnail
        if self.store is None or original is None or thumbnail is None:
            return None
        reason = await anyio.to_thread.run_sync(
            self.store.keep, classification.image_sha256, original, thumbnail, owner
        )
        if reason is None:
            return True
        log.warning(
            "image.not_kept",
            reason=reason.value,
            image_sha256=classification.image_sha256,
            request_id=request_id,
            owner=owner,
            store_bytes=self.store.used_bytes,
            max_bytes=self.store.max_bytes,
            bound_bytes=self.store.bound_bytes,
        )
        if self.on_not_kept is not None:
            self.on_not_kept(reason.value)
        if reason in (NotKept.STORE_FULL, NotKept.DISK_FULL):
            self._full.set()  # the cleanup makes room now instead of at its next round
        return False

    async def open(self, prediction_id: int, variant: Variant | str) -> KeptImage:
        """The image of one prediction (`original` or `thumbnail`); PredictionNotFound, or
        ImageNotKept saying why not."""
        variant = Variant(variant)
        record = await self.database.run(repository.get_prediction, prediction_id)
        if record is None:
            raise PredictionNotFound(f"no prediction with id {prediction_id}")
        if self.store is None:
            raise ImageNotKept("images are not kept: IMAGE_STORE_DIR is not set")
        if not record.image_kept:
            raise ImageNotKept(
                "the image of this prediction was not kept"
                + (
                    " (the store or the disk was full, or failed)"
                    if record.image_kept is False
                    else " (it was classified while images were not kept)"
                )
            )
        try:
            kept = await anyio.to_thread.run_sync(self.store.open, record.image_sha256, variant)
        except ValueError:  # a row whose digest is not one: nothing to serve, nothing to open
            kept = None
        if kept is None:
            raise ImageNotKept(
                "the image was removed by the cleanup (IMAGE_RETENTION_DAYS, IMAGE_STORE_MAX_BYTES)"
            )
        if variant is Variant.THUMBNAIL:
            media_type, extension = "image/jpeg", "jpg"
        else:
            media_type = MEDIA_TYPES.get(record.image_format, "application/octet-stream")
            extension = _EXTENSIONS.get(record.image_format, record.image_format.lower()[:8])
        return KeptImage(
            kept,
            media_type,
            etag=f'"{record.image_sha256}-{variant.value}"',
            filename=f"prediction-{prediction_id}-{variant.value}.{extension}",
        )

    async def cleanup(self) -> CleanupReport | None:
        """One round of the store's cleanup, off the event loop; None when images are not kept."""
        if self.store is None:
            return None
        report = await anyio.to_thread.run_sync(self.store.cleanup)
        self._report(report)
        return report

    async def watch(self, interval_s: float) -> None:
        """Clean up at start, then every `interval_s` (0: never on a schedule) and whenever an
        upload found the store full; until cancelled."""
        while True:
            try:
                await self.cleanup()
            except OSError as exc:  # an unreadable store: say so, try again later
                log.error("images.cleanup_failed", reason=str(exc))
            self._full.clear()
            await asyncio.sleep(_FULL_CLEANUP_SPACING_S)
            timeout = None if interval_s <= 0 else max(0.0, interval_s - _FULL_CLEANUP_SPACING_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), timeout)

    def _report(self, report: CleanupReport) -> None:
        log.info(
            "images.cleanup",
            expired=report.expired,
            evicted=report.evicted,
            abandoned=report.abandoned,
            removed_bytes=report.removed_bytes,
            images=report.images,
            bytes=report.bytes,
            files=report.files,
            ms=round(report.seconds * 1000, 1),
        )
        if self.on_cleanup is not None:
            self.on_cleanup(report)

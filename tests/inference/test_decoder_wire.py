"""What a decoder process sends the server is read as data, never unpickled: a decoder taken over
by a hostile file can make its own request fail, nothing more. Here the test plays such a decoder
on the other end of the pipe."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.inference.test_decoders import LIMITS
from visinspect.errors import CorruptImage, DecoderCrashed
from visinspect.inference.decoders import _Worker

pytestmark = pytest.mark.anyio


class _Touch:
    """Unpickling it creates a file: what a forged reply would do in a server that unpickles."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.path),))


class _Exited:
    exitcode = None

    def join(self, timeout: float | None = None) -> None:
        pass


def _worker_and_decoder_end() -> tuple[_Worker, Any]:
    server_end, decoder_end = multiprocessing.Pipe()
    worker = _Worker.__new__(_Worker)
    worker.connection, worker.limits, worker.keeps_originals = server_end, LIMITS, False
    worker.idle_rss, worker.process, worker.inline_send_bytes = 0, _Exited(), 64 << 10
    return worker, decoder_end


def _header(**fields: object) -> bytes:
    return json.dumps({"warnings": [], "more_warnings": 0, "rss": 0, **fields}).encode()


async def test_a_pickled_reply_is_not_unpickled(tmp_path: Path) -> None:
    worker, decoder = _worker_and_decoder_end()
    marker = tmp_path / "unpickled"
    decoder.send(_Touch(marker))  # a pickle, as the decoders sent before
    with pytest.raises(DecoderCrashed):
        await worker.decode(b"x", 5)
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Touch(marker)))  # what unpickling the reply would have done
    assert marker.exists()


async def test_a_refusal_names_an_upload_error_or_is_refused() -> None:
    worker, decoder = _worker_and_decoder_end()
    decoder.send_bytes(_header(refused="CorruptImage", message="bad bytes"))
    outcome, reusable = await worker.decode(b"x", 5)
    assert isinstance(outcome, CorruptImage)
    assert (outcome.message, reusable) == ("bad bytes", True)
    for forged in ("StartupFailed", "PredictionNotFound", "SystemExit", 7):
        decoder.send_bytes(_header(refused=forged, message="x"))
        with pytest.raises(DecoderCrashed):
            await worker.decode(b"x", 5)


async def test_pixels_of_another_size_or_a_bad_header_are_refused() -> None:
    worker, decoder = _worker_and_decoder_end()
    image = {"width": 1, "height": 1, "format": "PNG", "sha256": "0" * 64, "thumbnail": False}
    crop = LIMITS.preprocessing.crop_size
    short = [_header(**image), b"\0" * (crop * crop * 3 - 3)]  # uint8 RGB, one pixel short
    sending = threading.Thread(target=lambda: [decoder.send_bytes(m) for m in short])
    sending.start()  # more than a pipe holds: sent while the server reads
    with pytest.raises(DecoderCrashed):
        await worker.decode(b"x", 5)
    sending.join()
    forged = [b"not json", b"[1, 2]", _header(**image, rss=-1), _header(**image | {"width": "1"})]
    for header in [*forged, _header(**image | {"sha256": "z" * 64})]:
        decoder.send_bytes(header)  # refused before any pixels are read
        with pytest.raises(DecoderCrashed):
            await worker.decode(b"x", 5)

"""Every decode bounded in time and memory: uploads are decoded in supervised worker processes.

Pillow's decoders cannot be interrupted from the inside (a progressive JPEG with thousands of
scans decodes for seconds), and their memory is allocated in C. So decoding runs where it can be
stopped from the outside, and off the serving process's GIL:

- **time**: the server waits at most DECODE_TIMEOUT_S for a worker's answer, then kills the
  worker (its CPU is freed at once), answers 422 `image_too_slow_to_decode` and starts a new one;
- **memory per upload**: before decoding, the worker estimates from the header what the pipeline
  will hold (`preprocess.decode_memory_estimate`) and refuses more than DECODE_MAX_MEMORY_MB with
  413; its address space is capped as well (RLIMIT_AS: its size when idle, plus that budget, plus
  a margin), so an estimate that is wrong still cannot take the host's memory;
- **memory of all uploads together**: at most DECODE_WORKERS decodes run at once, each within its
  budget; a worker whose resident memory stayed high after a job is replaced, so memory returns to
  its baseline after an attack.

Workers are forked from a forkserver that has imported the decoding code once: a replacement is
ready in milliseconds, and no worker inherits the serving process's threads. Nothing here imports
torch; a worker holds NumPy, Pillow and the preprocessing code only.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import hashlib
import json
import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import os
import re
import resource
import socket
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
import structlog
from PIL import Image

from visinspect.capacity import run_in_background
from visinspect.errors import (
    CorruptImage,
    DecoderCrashed,
    ImageNeedsTooMuchMemory,
    ImageTooSlowToDecode,
    InvalidImage,
    VisinspectError,
)
from visinspect.inference.preprocess import DecodedImage, Preprocessing, preprocess

log = structlog.get_logger("visinspect.decoders")

# Room in the worker's address space beyond its idle size and the decode budget (Pillow's
# block allocator, NumPy temporaries, the reply).
ADDRESS_SPACE_MARGIN = 128 << 20
# A worker whose resident memory grew by more than this while decoding is replaced.
RESIDENT_GROWTH_LIMIT = 64 << 20
# The send buffer asked for on the server's end of each decoder's socket pair: uploads up to a
# quarter of what the kernel grants (it caps the ask at net.core.wmem_max) are written from the
# event loop, which then never waits for the decoder to read; larger ones from a thread. With
# the 208 KiB default, only uploads above 100 KiB took the thread; measured at 640x480: 6.7% of
# the event loop's time in the hand-off for an 82 KB photo when the bound was 60 KiB.
_SEND_BUFFER_BYTES = 2 << 20
# Warnings of one decode logged one by one; the rest are counted (`_Warnings`).
WARNINGS_KEPT = 10
# Freed image blocks that Pillow keeps for the next decode instead of returning them to the
# system. Memory given back is faulted in again on the next image; on a microVM that reports
# free pages to its host (Firecracker here) that made a 640x480 JPEG's decode 11 ms instead of
# 6 (docs/benchmarks.md). Bounded: a worker left larger than RESIDENT_GROWTH_LIMIT is replaced.
CACHED_IMAGE_BLOCKS = 8


@dataclass(frozen=True, slots=True)
class DecoderLimits:
    preprocessing: Preprocessing
    max_pixels: int
    max_decode_bytes: int  # per upload: the estimate's bound and the address-space budget
    timeout_s: float
    thumbnail_px: int = 0  # > 0: make thumbnails and hand back the upload (images are kept)
    frame_px: int = 0  # > 0: make a detector's whole frame, for uploads that ask for it


@dataclass(frozen=True, slots=True)
class Decoded:
    image: DecodedImage
    sha256: str
    size: int  # bytes of the upload
    decode_ms: float
    original: bytes | None = None  # the upload itself, when images are kept (thumbnail_px > 0)


_PRELOAD = ["visinspect.inference.decoders"]
# Before each upload, one byte: whether the server wants its detector frame too.
_FRAME, _NO_FRAME = b"F", b"-"


# What the decoders see of the service's environment: locale, paths, Python's and the math
# libraries' switches. Not DATABASE_URL, API_KEYS or anything else a decoder has no use for.
_DECODER_ENVIRONMENT = re.compile(
    r"PATH|HOME|LANG|LANGUAGE|LC_\w+|TZ|TMPDIR|PYTHON\w*|\w+_NUM_THREADS|MALLOC_\w+"
)
_forkserver_lock = threading.Lock()


def start_forkserver() -> None:
    """Start the decoders' forkserver, from a scrubbed environment (`_DECODER_ENVIRONMENT`):
    every decoder is forked from it, so none holds the service's secrets, not even in the
    environment block the kernel shows as /proc/PID/environ. Takes milliseconds; the forkserver
    imports the decoding code (about a second) on its own, while the model loads."""
    multiprocessing.get_context("forkserver").set_forkserver_preload(_PRELOAD)
    with _forkserver_lock:
        kept = os.environ.copy()
        try:
            for name in [n for n in os.environ if not _DECODER_ENVIRONMENT.fullmatch(n)]:
                del os.environ[name]
            multiprocessing.forkserver.ensure_running()
        finally:
            os.environ.clear()
            os.environ.update(kept)


def _forkserver_running() -> bool:
    """Whether the forkserver this process started is alive. multiprocessing restarts a dead one
    by itself at the next spawn, from the service's whole environment: `_spawn` restarts it
    scrubbed first. (ForkServer keeps the pid privately; without it, assume it is not running
    and scrub, which costs a moment.)"""
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    pid = getattr(server, "_forkserver_pid", None)
    if not isinstance(pid, int):
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie is dead, only not yet waited for


class DecoderPool:
    """DECODE_WORKERS processes; `decode` borrows an idle one for one upload."""

    def __init__(
        self,
        limits: DecoderLimits,
        workers: int,
        on_replaced: Callable[[], object] | None = None,
    ) -> None:
        self.limits = limits
        self.on_replaced = on_replaced  # for the metrics
        self.size = workers
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(_PRELOAD)
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._replacing: set[asyncio.Task[None]] = set()
        self._closed = False
        self.replaced = 0  # workers killed or recycled, for the logs and the tests

    async def start(self) -> None:
        make_undumpable()  # before any decoder exists: none can read this process's /proc
        started = time.perf_counter()
        for _ in range(self.size):  # `_spawn` starts the forkserver, scrubbed, if it is not running
            worker = await anyio.to_thread.run_sync(self._spawn)
            self._idle.put_nowait(worker)
        sandbox = worker.sandbox  # every worker loads the same filter
        log.info(
            "decoders.started",
            workers=self.size,
            sandbox=sandbox,
            timeout_s=self.limits.timeout_s,
            max_memory_mb=self.limits.max_decode_bytes >> 20,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        if not sandbox.startswith("seccomp"):
            log.warning("decoders.unsandboxed", reason=sandbox)

    async def decode(self, read: Callable[[], Awaitable[bytes]], frame: bool = False) -> Decoded:
        """Decode and preprocess one upload in a worker; raises InvalidImage subclasses. The
        upload is read (`read`) only once a worker is free for it. `frame`: also the whole
        frame a detector reads (when the limits have a `frame_px`)."""
        worker = await self._idle.get()
        while not worker.process.is_alive():  # died while idle (e.g. the OOM killer): replace
            self._replace(worker)
            worker = await self._idle.get()
        try:
            data = await read()
        except BaseException:  # the worker was never used: it goes back as it came
            self._idle.put_nowait(worker)
            raise
        reusable = False
        try:
            wanted = frame and self.limits.frame_px > 0
            outcome, reusable = await worker.decode(data, self.limits.timeout_s, wanted)
        finally:
            if reusable:
                self._idle.put_nowait(worker)
            else:
                self._replace(worker)
        if isinstance(outcome, VisinspectError):
            raise outcome
        return outcome

    def _spawn(self) -> _Worker:
        if not _forkserver_running():
            start_forkserver()
        return _Worker(self._context, self.limits)

    def _replace(self, worker: _Worker) -> None:
        """Kill the worker now; its successor joins the idle queue when it has started."""
        worker.kill()
        self.replaced += 1
        if self.on_replaced is not None:
            self.on_replaced()
        if self._closed:
            return

        async def successor() -> None:
            for attempt in range(1, 4):
                try:
                    self._idle.put_nowait(await anyio.to_thread.run_sync(self._spawn))
                    return
                except (OSError, EOFError) as exc:  # the forkserver or the system is struggling
                    log.error("decoders.spawn_failed", attempt=attempt, reason=str(exc))
                    await anyio.sleep(attempt)

        task = asyncio.get_running_loop().create_task(successor())
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._replacing):
            await task
        while not self._idle.empty():
            self._idle.get_nowait().kill()


class _Worker:
    """One decoder process and the pipe to it. Used by one request at a time."""

    def __init__(self, context: Any, limits: DecoderLimits) -> None:
        parent_end, child_end = context.Pipe()
        self.inline_send_bytes = _grow_send_buffer(parent_end) // 4
        self.process = context.Process(
            target=_serve, args=(child_end, limits), name="visinspect-decoder", daemon=True
        )
        self.process.start()
        child_end.close()
        self.connection: multiprocessing.connection.Connection = parent_end
        self.keeps_originals = limits.thumbnail_px > 0
        self.limits = limits
        hello = _read_header(self.connection)  # the worker's hello: it is ready
        self.idle_rss: int = _whole(hello, "rss")
        self.sandbox = _text(hello, "sandbox", 400)

    async def decode(
        self, data: bytes, timeout_s: float, frame: bool = False
    ) -> tuple[Decoded | VisinspectError, bool]:
        """The decoded upload or why it was refused, and whether this worker may be used again.
        Raises (and the worker must go) when it overran its time or died. The reply is awaited
        on the event loop (no thread hand-off); an upload larger than a pipe's buffer is sent
        from a thread, since writing it blocks until the worker has read most of it."""
        started = time.perf_counter()
        try:
            self.connection.send_bytes(_FRAME if frame else _NO_FRAME)
            if len(data) <= self.inline_send_bytes:
                self.connection.send_bytes(data)
            else:
                await anyio.to_thread.run_sync(self.connection.send_bytes, data)
            await asyncio.wait_for(self._readable(), timeout_s)
            reply = self._reply()
        except TimeoutError:
            raise ImageTooSlowToDecode(
                f"decoding did not finish within {timeout_s} s (DECODE_TIMEOUT_S); "
                "the file was abandoned"
            ) from None
        except (EOFError, OSError, _Garbled):
            raise DecoderCrashed(
                f"the decoder stopped on this file (exit code {self._exit_code()}); "
                "it cannot be decoded within the service's limits"
            ) from None
        for message in reply.warnings:  # through the JSON logs, never as stray stderr text
            log.warning("decode.warning", message=message)
        if reply.more_warnings:
            log.warning("decode.warnings_dropped", count=reply.more_warnings, kept=WARNINGS_KEPT)
        reusable = reply.rss - self.idle_rss <= RESIDENT_GROWTH_LIMIT
        if isinstance(reply.outcome, VisinspectError):
            return reply.outcome, reusable  # refused, not failed: the worker carries on
        image, sha256 = reply.outcome
        decode_ms = (time.perf_counter() - started) * 1000
        original = data if self.keeps_originals else None
        return Decoded(image, sha256, len(data), decode_ms, original), reusable

    def _reply(self) -> _Reply:
        """The worker's answer, read as data: a JSON header, then the pixels' raw bytes and the
        thumbnail's, each of the one size the header and the limits allow. Nothing from a
        decoder is unpickled: a decoder taken over by a hostile file (a memory bug in a codec)
        could otherwise run code in the server."""
        header = _read_header(self.connection)
        warnings_seen = header.get("warnings", [])
        if not isinstance(warnings_seen, list) or len(warnings_seen) > WARNINGS_KEPT:
            raise _Garbled("warnings")
        kept = [str(w)[:_WARNING_CHARS] for w in warnings_seen]
        more, rss = _whole(header, "more_warnings"), _whole(header, "rss")
        if "refused" in header:
            return _Reply(_refusal(header["refused"], header.get("message")), kept, more, rss)
        width, height = _whole(header, "width"), _whole(header, "height")
        image_format, sha256 = _text(header, "format", 16), _text(header, "sha256", 64)
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise _Garbled("sha256")
        spec = self.limits.preprocessing
        side = spec.crop_size
        pixels = self.connection.recv_bytes(maxlength=side * side * 3)
        if len(pixels) != side * side * 3:
            raise _Garbled("pixels")
        frame = None
        if header.get("frame") is True:
            frame_px = self.limits.frame_px
            data = self.connection.recv_bytes(maxlength=frame_px * frame_px * 3)
            if not frame_px or len(data) != frame_px * frame_px * 3:
                raise _Garbled("frame")
            frame = np.frombuffer(data, dtype=np.uint8).reshape(frame_px, frame_px, 3)
        thumbnail = None
        if header.get("thumbnail") is True:
            thumbnail = self.connection.recv_bytes(maxlength=_THUMBNAIL_BYTES)
        crop = np.frombuffer(pixels, dtype=np.uint8).reshape(side, side, 3)
        image = DecodedImage(crop, width, height, image_format, spec, thumbnail, frame)
        return _Reply((image, sha256), kept, more, rss)

    async def _readable(self) -> None:
        """Until the worker's reply (or its death: end of file) can be read."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        descriptor = self.connection.fileno()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(descriptor, wake)
        try:
            await ready
        finally:
            loop.remove_reader(descriptor)
            # uvloop made the descriptor non-blocking; the pipe's own reads expect blocking.
            os.set_blocking(descriptor, True)

    def _exit_code(self) -> int | None:
        self.process.join(timeout=1)
        code: int | None = self.process.exitcode
        return code

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.connection.close()


def _serve(connection: multiprocessing.connection.Connection, limits: DecoderLimits) -> None:
    """The worker's loop: bytes in, (DecodedImage and digest, or the error) out."""
    Image.core.set_blocks_max(CACHED_IMAGE_BLOCKS)  # type: ignore[attr-defined]
    run_in_background()  # the server's event loop goes first (capacity.BACKGROUND_NICENESS)
    sandbox = confine(limits.max_decode_bytes + ADDRESS_SPACE_MARGIN)
    try:
        _write_header(connection, {"rss": _resident_bytes(), "sandbox": sandbox})
    except (BrokenPipeError, ConnectionResetError):  # the server left while this one started
        return  # (a successor spawned as it shut down): stop, quietly, as below
    while True:
        try:
            frame = connection.recv_bytes(maxlength=1) == _FRAME
            data = connection.recv_bytes()
        except (EOFError, ConnectionResetError):  # the server closed the pipe: stop
            return  # (a reset when it closed with a reply of ours unread)
        seen = _Warnings()
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = seen.add
            outcome = _decode(data, limits, frame)
        del data
        try:
            _send_outcome(connection, outcome, seen)
        except (BrokenPipeError, ConnectionResetError):  # closed meanwhile: stop, quietly
            return


class _Warnings:
    """The first WARNINGS_KEPT warnings of one decode, and how many more there were: a TIFF
    whose directory holds 60,000 malformed entries makes Pillow warn once per entry, and each
    would have been a log line written by the server (and a warning object held meanwhile)."""

    def __init__(self) -> None:
        self.first: list[str] = []
        self.more = 0

    def add(
        self, message: Warning | str, category: type[Warning], *_: object, **__: object
    ) -> None:
        if len(self.first) < WARNINGS_KEPT:
            self.first.append(f"{category.__name__}: {message}")
        else:
            self.more += 1


def confine(address_space_extra: int) -> str:
    """What a decoder does before it reads its first upload, so that a codec taken over by a
    hostile file can do nothing but decode: what it needs later is loaded now (every Pillow
    plugin, a descriptor of its own /proc/self/statm), its address space is capped for good
    (soft and hard RLIMIT_AS), it leaves root for NOBODY_UID when it runs as root (the
    container can; a test run as root does), it is made non-dumpable (no sibling reads it), and
    the seccomp filter is loaded (`_seccomp_filter`). Returns what was applied."""
    Image.init()  # plugins are imported on first use otherwise, and files cannot be opened later
    global _STATM
    _STATM = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
    _cap_address_space(address_space_extra)
    seccomp_filter = _seccomp_filter()  # built while its library can still be read and loaded
    user = _leave_root()
    make_undumpable()
    if isinstance(seccomp_filter, str):
        return f"{seccomp_filter}; {user}"
    try:
        seccomp_filter.load()
    except (OSError, RuntimeError) as exc:  # no seccomp in this kernel
        return f"none: {type(exc).__name__}: {exc}; {user}"
    return f"{_APPLIED}; {user}"


# The user a decoder started as root becomes: nobody, who owns nothing.
NOBODY_UID = 65534


def _leave_root() -> str:
    """As root: become NOBODY_UID (no capability is kept: no signal to, no /proc of, no limit
    of a process of another user). Otherwise nothing changes: the filter does the rest."""
    if os.geteuid() != 0:
        return f"uid {os.geteuid()}"
    os.setgroups([])
    os.setresgid(NOBODY_UID, NOBODY_UID, NOBODY_UID)
    os.setresuid(NOBODY_UID, NOBODY_UID, NOBODY_UID)
    return f"uid {NOBODY_UID} (was root)"


_PR_SET_DUMPABLE = 4


def make_undumpable() -> None:
    """prctl(PR_SET_DUMPABLE, 0): a process that is not dumpable has its /proc/PID/environ, mem,
    maps, fd ... closed to every other process of its user, its own children included. The
    serving process's environment (API_KEYS, DATABASE_URL) and memory, and each decoder's."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE)")


# System calls a decoder has no use for once it has started: it reads bytes from its pipe and
# writes arrays back. Refused (EPERM), so that a codec taken over by a hostile file cannot reach
# the network (directly or through io_uring), start a program, fork, open a file (another
# process's /proc/PID/environ or mem, the image store), change the file system, signal another
# process or change its limits, priority or CPUs, or raise its own limits.
_REFUSED_CALLS = (
    # the network, programs, processes
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
    "execve", "execveat", "fork", "vfork", "ptrace", "process_vm_readv", "process_vm_writev",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # signals and handles of other processes
    "kill", "tkill", "pidfd_open", "pidfd_send_signal", "pidfd_getfd", "process_madvise",
    "process_mrelease", "kcmp",
    # limits, priorities, CPUs: its own included (they were set before the filter)
    "setrlimit", "setpriority", "sched_setaffinity", "sched_setscheduler", "sched_setparam",
    "sched_setattr", "ioprio_set", "migrate_pages", "move_pages",
    # files: opened, made, changed, removed
    "open", "openat", "openat2", "creat", "open_by_handle_at", "name_to_handle_at",
    "open_tree", "fsopen", "fsmount", "move_mount", "mount", "umount2", "pivot_root", "chroot",
    "unlink", "unlinkat", "rename", "renameat", "renameat2", "link", "linkat", "symlink",
    "symlinkat", "mkdir", "mkdirat", "rmdir", "mknod", "mknodat", "chmod", "fchmod",
    "fchmodat", "chown", "fchown", "fchownat", "lchown", "truncate", "utime", "utimes",
    "utimensat", "futimesat", "setxattr", "lsetxattr", "fsetxattr", "removexattr",
    "lremovexattr", "fremovexattr",
    # the kernel's other doors
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "unshare",
    "setns", "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog", "personality",
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups",
    "setfsuid", "setfsgid", "capset", "landlock_create_ruleset",
)  # fmt: skip
_CLONE_THREAD = 0x00010000


def _seccomp_filter() -> Any:
    """The decoder's seccomp filter, built, not loaded (`_REFUSED_CALLS`; `clone` only for
    threads, as glibc's fork is a clone without CLONE_THREAD; `clone3` answered ENOSYS, so that
    threads fall back to `clone`; `tgkill` and `rt_(tg)sigqueueinfo` to this process only, as
    glibc's `raise` and `abort` use them; `prlimit64` only to read a limit). Loading it brings
    no-new-privileges. A string says why there is none."""
    try:
        import pyseccomp as seccomp  # type: ignore[import-untyped]

        own = os.getpid()
        refused = seccomp.SyscallFilter(seccomp.ALLOW)
        for name in _REFUSED_CALLS:
            refused.add_rule(seccomp.ERRNO(errno.EPERM), name)
        not_a_thread = seccomp.Arg(0, seccomp.MASKED_EQ, _CLONE_THREAD, 0)
        refused.add_rule(seccomp.ERRNO(errno.EPERM), "clone", not_a_thread)
        refused.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
        for name in ("tgkill", "rt_tgsigqueueinfo", "rt_sigqueueinfo"):
            refused.add_rule(seccomp.ERRNO(errno.EPERM), name, seccomp.Arg(0, seccomp.NE, own))
        setting = seccomp.Arg(2, seccomp.NE, 0)  # prlimit64(pid, resource, new, old): new != NULL
        refused.add_rule(seccomp.ERRNO(errno.EPERM), "prlimit64", setting)
    except (ImportError, OSError, RuntimeError) as exc:  # no libseccomp here
        return f"none: {type(exc).__name__}: {exc}"
    return refused


_APPLIED = (
    f"seccomp: {len(_REFUSED_CALLS)} calls refused (network, io_uring, programs, forks, files, "
    "signals and limits of other processes, its own limits); clone for threads only; tgkill "
    "and sigqueueinfo to itself only; prlimit64 to read only"
)


def _send_outcome(
    connection: multiprocessing.connection.Connection,
    outcome: tuple[DecodedImage, str] | VisinspectError,
    seen: _Warnings,
) -> None:
    """The reply as `_Worker._reply` reads it: a JSON header, then raw bytes."""
    header: dict[str, object] = {
        "warnings": seen.first,
        "more_warnings": seen.more,
        "rss": _resident_bytes(),
    }
    if isinstance(outcome, VisinspectError):
        _write_header(
            connection, header | {"refused": type(outcome).__name__, "message": outcome.message}
        )
        return
    image, sha256 = outcome
    header |= {
        "width": image.width,
        "height": image.height,
        "format": image.format,
        "sha256": sha256,
        "thumbnail": image.thumbnail is not None,
        "frame": image.frame is not None,
    }
    _write_header(connection, header)
    connection.send_bytes(np.ascontiguousarray(image.crop, dtype=np.uint8).tobytes())
    if image.frame is not None:
        connection.send_bytes(np.ascontiguousarray(image.frame, dtype=np.uint8).tobytes())
    if image.thumbnail is not None:
        connection.send_bytes(image.thumbnail)


def _decode(
    data: bytes, limits: DecoderLimits, frame: bool = False
) -> tuple[DecodedImage, str] | VisinspectError:
    try:
        image = preprocess(
            data,
            limits.preprocessing,
            limits.max_pixels,
            max_decode_bytes=limits.max_decode_bytes,
            thumbnail_px=limits.thumbnail_px,
            frame_px=limits.frame_px if frame else 0,
        )
    except VisinspectError as exc:
        return exc
    except MemoryError:
        return ImageNeedsTooMuchMemory(
            "decoding this image needs more memory than DECODE_MAX_MEMORY_MB allows"
        )
    except Exception as exc:  # a decoder's own failure on hostile bytes is not our fault
        return CorruptImage(f"the image cannot be decoded: {type(exc).__name__}")
    return image, hashlib.sha256(data).hexdigest()


def _grow_send_buffer(connection: multiprocessing.connection.Connection) -> int:
    """Ask for _SEND_BUFFER_BYTES of send buffer on the pipe's socket; what the kernel granted.
    (Linux reports twice the bytes it accounts, bookkeeping included: a quarter is payload with
    room to spare, measured 98% of the report for large writes.)"""
    duplicate = socket.socket(fileno=os.dup(connection.fileno()))
    try:
        duplicate.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER_BYTES)
        granted: int = duplicate.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    except OSError:  # not a socket (another platform's pipe): the kernel's default pipe
        return 64 << 10
    finally:
        duplicate.close()
    return granted


def _cap_address_space(extra: int) -> None:
    """RLIMIT_AS = what this process maps now + `extra`, soft and hard: allocations beyond fail
    (MemoryError), and the limit cannot be raised again (the hard one was unlimited)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _status_kib("VmSize") * 1024 + extra
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


# /proc/self/statm, opened by `confine` before the filter refuses opening files.
_STATM: int | None = None


def _resident_bytes() -> int:
    """VmRSS, from /proc/self/statm's one line (a tenth of the time /proc/PID/status takes to
    read and parse; it is read after every decode), through the descriptor `confine` opened."""
    if _STATM is None:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_BYTES
    return int(os.pread(_STATM, 256, 0).split()[1]) * _PAGE_BYTES


def _status_kib(field: str) -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# --- the reply's wire format: data only ------------------------------------------------------------

_HEADER_BYTES = 64 << 10
_WARNING_CHARS = 2000
_THUMBNAIL_BYTES = 16 << 20


class _Garbled(Exception):
    """A reply that is not what a decoder sends: the worker is treated as crashed."""


@dataclass(frozen=True, slots=True)
class _Reply:
    outcome: tuple[DecodedImage, str] | VisinspectError
    warnings: list[str]
    more_warnings: int
    rss: int


def _write_header(connection: multiprocessing.connection.Connection, header: object) -> None:
    connection.send_bytes(json.dumps(header).encode())


def _read_header(connection: multiprocessing.connection.Connection) -> dict[str, Any]:
    try:
        header = json.loads(connection.recv_bytes(maxlength=_HEADER_BYTES))
    except ValueError:
        raise _Garbled("header") from None
    if not isinstance(header, dict):
        raise _Garbled("header")
    return header


def _whole(header: dict[str, Any], key: str) -> int:
    value = header.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _Garbled(key)
    return value


def _text(header: dict[str, Any], key: str, longest: int) -> str:
    value = header.get(key)
    if not isinstance(value, str) or len(value) > longest:
        raise _Garbled(key)
    return value


def _refusals(base: type[InvalidImage] = InvalidImage) -> dict[str, type[InvalidImage]]:
    found = {base.__name__: base}
    for subclass in base.__subclasses__():
        found |= _refusals(subclass)
    return found


def _refusal(name: object, message: object) -> InvalidImage:
    """The decoder's refusal, rebuilt from its class name among the upload errors only."""
    known = _refusals()
    if not isinstance(name, str) or name not in known or not isinstance(message, str):
        raise _Garbled("refused")
    return known[name](message[:_WARNING_CHARS])

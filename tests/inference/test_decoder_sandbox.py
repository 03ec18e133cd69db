"""A decoder holds no secret and can do little besides decoding: it starts from a scrubbed
environment, and its confinement refuses the network, programs, forks, files, and signals to or
limits of other processes; the serving process is not dumpable."""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import subprocess
import sys
from multiprocessing.connection import Connection

from visinspect.inference.decoders import NOBODY_UID, _resident_bytes, confine

# Run in a fresh interpreter: the forkserver is started once per process, and this one's may
# have been started by another test.
_ENVIRONMENT_OF_A_DECODER = """
import asyncio, json, os
os.environ.update(DATABASE_URL="postgresql://u:secret@db/x", API_KEYS="alice:secret-key",
                  LANG="C.UTF-8")
from tests.inference.test_decoders import LIMITS
from visinspect.inference.decoders import DecoderPool

def names_of(worker):
    with open(f"/proc/{worker.process.pid}/environ", "rb") as environ:
        return [e.split(b"=", 1)[0].decode() for e in environ.read().split(b"\\0") if e]

async def main():
    import multiprocessing.forkserver, signal
    pool = DecoderPool(LIMITS, 1)
    await pool.start()
    worker = pool._idle.get_nowait()
    first = names_of(worker)
    worker.kill()
    # The forkserver dies; the next decoder is spawned through a new one.
    server_pid = multiprocessing.forkserver._forkserver._forkserver_pid
    os.kill(server_pid, signal.SIGKILL)
    while open(f"/proc/{server_pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        await asyncio.sleep(0.01)
    respawned = pool._spawn()
    restarted = multiprocessing.forkserver._forkserver._forkserver_pid != server_pid
    print(json.dumps({"names": first, "after_restart": names_of(respawned),
                      "restarted": restarted, "service_still_has": "DATABASE_URL" in os.environ}))
    respawned.kill()

asyncio.run(main())
"""


def _in_a_fresh_interpreter(script: str) -> str:
    """What `script` printed, run by a new Python (its own forkserver, its own dumpable flag)."""
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    return run.stdout.strip()


def test_a_decoder_sees_none_of_the_services_secrets() -> None:
    """What the kernel shows of a real decoder's environment (its initial block, which no later
    change inside the process can hide), before and after its forkserver was killed."""
    seen = json.loads(_in_a_fresh_interpreter(_ENVIRONMENT_OF_A_DECODER).splitlines()[-1])
    assert "LANG" in seen["names"]  # what decoding may need is kept
    assert not {"DATABASE_URL", "API_KEYS"} & set(seen["names"]), seen["names"]
    # A forkserver that died is started again scrubbed (multiprocessing alone would restart it
    # with the whole environment at the next spawn).
    assert seen["restarted"]
    assert "LANG" in seen["after_restart"]
    assert not {"DATABASE_URL", "API_KEYS"} & set(seen["after_restart"]), seen["after_restart"]
    assert seen["service_still_has"]  # the service's own environment is untouched


def _probe(connection: Connection, server: int, budget: int) -> None:
    """In a decoder-like process: confine it as a decoder is, then try what a taken-over codec
    would against `server` (the test's process, which plays the serving process: the probe's
    parent is the forkserver, as a decoder's is)."""
    import ctypes
    import os
    import resource
    import socket
    import threading

    libc = ctypes.CDLL(None, use_errno=True)

    def syscall(number: int, *args: int) -> None:
        if libc.syscall(number, *[ctypes.c_long(a) for a in args]) < 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))

    nice = os.getpriority(os.PRIO_PROCESS, server)  # what the attempts below set again
    cpus = os.sched_getaffinity(server)
    files = resource.prlimit(server, resource.RLIMIT_NOFILE)
    applied = confine(budget)
    params = ctypes.create_string_buffer(120)
    unlimited = (ctypes.c_uint64 * 2)(2**64 - 1, 2**64 - 1)
    unlimited_address = ctypes.addressof(unlimited)
    tried: dict[str, str] = {}
    for name, attempt in {
        "socket inet": lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM),
        "socket unix": lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM),
        "io_uring": lambda: syscall(425, 8, ctypes.addressof(params)),
        "fork": os.fork,
        "exec": lambda: os.execv("/bin/true", ["/bin/true"]),
        "kill": lambda: os.kill(server, 0),
        "tkill": lambda: syscall(200, server, 0),
        "tgkill": lambda: syscall(234, server, server, 0),
        "pidfd_open": lambda: syscall(434, server, 0),
        "pidfd_send_signal": lambda: syscall(424, 0, 0, 0, 0),
        "rt_sigqueueinfo": lambda: syscall(129, server, 0, 0),
        "environ": lambda: open(f"/proc/{server}/environ", "rb").close(),
        "mem": lambda: open(f"/proc/{server}/mem", "rb").close(),
        "server limits": lambda: resource.prlimit(server, resource.RLIMIT_NOFILE, files),
        # prlimit64(0, RLIMIT_AS, {infinity, infinity}, NULL), past Python's own check
        "own address space": lambda: syscall(302, 0, resource.RLIMIT_AS, unlimited_address, 0),
        "server priority": lambda: os.setpriority(os.PRIO_PROCESS, server, nice),
        "server cpus": lambda: os.sched_setaffinity(server, cpus),
        "a file": lambda: open("/etc/hostname", "rb").close(),
        "remove a file": lambda: os.unlink("/nonexistent-visinspect-probe"),
    }.items():
        try:
            attempt()
            tried[name] = "allowed"
        except (OSError, ValueError) as exc:
            tried[name] = f"refused: {getattr(exc, 'errno', None)}"
    thread = threading.Thread(target=lambda: None)  # threads still start
    thread.start()
    thread.join()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    connection.send_bytes(
        json.dumps(
            {
                "applied": applied,
                "tried": tried,
                "limits": [soft, hard],
                "uid": os.geteuid(),
                "rss": _resident_bytes(),
            }
        ).encode()
    )


def test_a_decoder_can_neither_signal_read_limit_nor_reach_out() -> None:
    """The review's probe, as each attempt: under the decoders' confinement, as the same user
    (or as nobody, where the service runs as root), a process could kill the server
    (tgkill/tkill/pidfd_send_signal), read its /proc environ (API_KEYS, DATABASE_URL) and mem,
    change its limits, raise its own RLIMIT_AS, and open a socket through io_uring."""
    context = multiprocessing.get_context("forkserver")
    ours, theirs = context.Pipe()
    budget = 256 << 20
    process = context.Process(target=_probe, args=(theirs, os.getpid(), budget))
    process.start()
    assert ours.poll(60), f"the probe died (exit code {process.exitcode})"
    report = json.loads(ours.recv_bytes())
    process.join(10)
    assert report["applied"].startswith("seccomp: "), report
    refused = report["tried"]
    assert refused == dict.fromkeys(refused, "refused: 1"), refused  # EPERM, each one
    assert len(refused) == 19
    soft, hard = report["limits"]
    assert soft == hard != resource.RLIM_INFINITY  # a hard address space: no way back up
    if os.geteuid() == 0:
        assert report["uid"] == NOBODY_UID
    assert report["rss"] > 0  # its own memory is still measured (a descriptor opened before)
    assert process.exitcode == 0


def test_the_serving_process_is_not_dumpable_once_decoders_start() -> None:
    """/proc/PID/environ and mem of a non-dumpable process are closed to every other process of
    its user: started here in a fresh interpreter, as the service starts its decoders."""
    output = _in_a_fresh_interpreter(_DUMPABLE_AFTER_START)
    printed = [line for line in output.splitlines() if line in ("0", "1")]
    assert printed == ["1", "0"], output  # dumpable before, not after


_DUMPABLE_AFTER_START = """
import asyncio, ctypes
from tests.inference.test_decoders import LIMITS
from visinspect.inference.decoders import DecoderPool

libc = ctypes.CDLL(None)
print(libc.prctl(3, 0, 0, 0, 0))  # PR_GET_DUMPABLE

async def main():
    pool = DecoderPool(LIMITS, 1)
    await pool.start()
    print(libc.prctl(3, 0, 0, 0, 0))
    await pool.close()

asyncio.run(main())
"""

"""A decoder holds no secret and can do little besides decoding: it starts from a scrubbed
environment, and its seccomp filter refuses the network, programs, forks and signals."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from multiprocessing.connection import Connection

from visinspect.inference.decoders import _sandbox

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


def test_a_decoder_sees_none_of_the_services_secrets() -> None:
    """What the kernel shows of a real decoder's environment (its initial block, which no later
    change inside the process can hide), before and after its forkserver was killed."""
    run = subprocess.run(
        [sys.executable, "-c", _ENVIRONMENT_OF_A_DECODER],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert "LANG" in seen["names"]  # what decoding may need is kept
    assert not {"DATABASE_URL", "API_KEYS"} & set(seen["names"]), seen["names"]
    # A forkserver that died is started again scrubbed (multiprocessing alone would restart it
    # with the whole environment at the next spawn).
    assert seen["restarted"]
    assert "LANG" in seen["after_restart"]
    assert not {"DATABASE_URL", "API_KEYS"} & set(seen["after_restart"]), seen["after_restart"]
    assert seen["service_still_has"]  # the service's own environment is untouched


def _probe(connection: Connection) -> None:
    """In a decoder-like process: load the filter, then try what a taken-over codec would."""
    import os
    import socket
    import threading

    applied = _sandbox()
    tried: dict[str, str] = {}
    for name, attempt in {
        "socket": lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM),
        "fork": os.fork,
        "exec": lambda: os.execv("/bin/true", ["/bin/true"]),
        "kill": lambda: os.kill(os.getppid(), 0),
    }.items():
        try:
            attempt()
            tried[name] = "allowed"
        except OSError as exc:
            tried[name] = f"refused: {exc.errno}"
    thread = threading.Thread(target=lambda: None)  # threads still start
    thread.start()
    thread.join()
    with open("/proc/self/status") as status:
        no_new_privs = [line.split()[1] for line in status if line.startswith("NoNewPrivs")]
    connection.send_bytes(
        json.dumps({"applied": applied, "tried": tried, "nnp": no_new_privs}).encode()
    )


def test_the_filter_refuses_network_programs_forks_and_signals() -> None:
    context = multiprocessing.get_context("forkserver")
    ours, theirs = context.Pipe()
    process = context.Process(target=_probe, args=(theirs,))
    process.start()
    report = json.loads(ours.recv_bytes())
    process.join(10)
    assert report["applied"].startswith("seccomp: "), report
    assert report["tried"] == dict.fromkeys(("socket", "fork", "exec", "kill"), "refused: 1")
    assert report["nnp"] == ["1"]
    assert process.exitcode == 0

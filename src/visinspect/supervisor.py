"""Several server processes behind one port, supervised: uvicorn's own supervisor, with our grace.

uvicorn's `Multiprocess` binds the socket once, starts WORKERS processes that accept on it, pings
each every half second and replaces one that died or hangs. This adds what the service needs:

- **SIGTERM grace**: the workers keep serving for SHUTDOWN_GRACE_S (a load balancer is still
  sending), then each gets SIGTERM and drains what it accepted; a second signal skips the grace;
- **metrics across processes**: prometheus-client's multiprocess mode, in a directory made fresh
  for this server, with a dead worker's live gauges dropped;
- **no orphans**: a worker exits when the supervisor dies, even by SIGKILL (PR_SET_PDEATHSIG);
- **a failed start stops everything** with exit code 1, as a single process does.

Start-up work that must happen once (model artifact check, migrations) is done by the caller
before any worker starts (`startup.prepare_shared`); the workers only verify the schema.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading

import structlog
import uvicorn
from fastapi import FastAPI
from prometheus_client import multiprocess
from uvicorn.supervisors import Multiprocess

from visinspect.config import Settings
from visinspect.main import create_app

log = structlog.get_logger("visinspect.supervisor")

_PR_SET_PDEATHSIG = 1


class Supervisor(Multiprocess):
    def __init__(self, config: uvicorn.Config, grace_s: float, metrics_dir: str) -> None:
        super().__init__(config, sockets=[config.bind_socket()])
        self.grace_s = grace_s
        self.metrics_dir = metrics_dir
        self._signalled = False
        self._grace: threading.Timer | None = None

    def run(self) -> None:
        log.info("supervisor.start", workers=self.processes_num, pid=os.getpid())
        super().run()
        log.info("supervisor.stopped")

    @property
    def startup_failed(self) -> bool:
        """uvicorn stops the supervisor on its own only when a worker failed to start."""
        return self.should_exit.is_set() and not self._signalled

    def handle_term(self) -> None:
        self._stop_after_grace("SIGTERM")

    def handle_int(self) -> None:
        self._stop_after_grace("SIGINT")

    def _stop_after_grace(self, signal_name: str) -> None:
        self._signalled = True
        if self._grace is not None or self.grace_s <= 0:
            self.should_exit.set()  # a second signal: drain now
            return
        log.info("shutdown.grace", signal=signal_name, seconds=self.grace_s)
        self._grace = threading.Timer(self.grace_s, self.should_exit.set)
        self._grace.daemon = True
        self._grace.start()

    def keep_subprocess_alive(self) -> None:
        before = {process.pid for process in self.processes}
        super().keep_subprocess_alive()
        for pid in before - {process.pid for process in self.processes}:
            if pid is not None:
                log.warning("supervisor.worker_replaced", pid=pid)
                multiprocess.mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]


def worker_app() -> FastAPI:
    """The app of one worker process (uvicorn imports it by name in each new process)."""
    _exit_with_parent()
    return create_app(Settings())


def _exit_with_parent() -> None:
    """Ask Linux for SIGTERM when the supervisor dies, so no worker outlives it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor's own stop still applies
        return
    if os.getppid() == 1:  # the supervisor died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)

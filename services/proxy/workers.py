"""The worker processes of a proxy with ``proxy.workers`` = N > 1: started, watched, restarted, stopped.

Each worker is ``python -m services.proxy`` with the same config file and environment (plus
``GOBALANCER_PROXY_WORKERS=1``); it binds its own listener with SO_REUSEPORT and worker *i* serves its
/metrics and /ready on the metrics port + *i*. A worker that dies while the proxy is not stopping (a crash,
the OOM killer, a stray SIGKILL) is logged and started again, as gunicorn's and uvicorn's supervisors do:
at once the first time, then, while it keeps dying within ``STABLE_SEC`` of its start, after a backoff
doubling from ``BACKOFF_MIN_SEC`` up to ``BACKOFF_MAX_SEC``, so a worker that cannot start does not spin.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

from shared.addresses import with_port_offset
from shared.logs import get_logger
from shared.processes import die_with_parent

log = get_logger("proxy.workers")

STABLE_SEC = 10.0
BACKOFF_MIN_SEC = 0.5
BACKOFF_MAX_SEC = 30.0


def restart_delay(deaths: int) -> float:
    """Seconds to wait before restarting a worker on its ``deaths``-th death in a row, each within
    ``STABLE_SEC`` of its start: the first restart is immediate, later ones back off."""
    if deaths <= 1:
        return 0.0
    return min(BACKOFF_MAX_SEC, BACKOFF_MIN_SEC * 2.0 ** (deaths - 2))


def usable_cpus() -> list[int]:
    """The CPUs this process may run on, in order ([] where the platform cannot tell)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return []


def pin(pid: int, index: int, cpus: list[int]) -> None:
    """Process ``pid`` (0: this one) on the ``index``-th of ``cpus`` (modulo their number); a refusal is logged,
    not fatal (the process runs where the scheduler puts it)."""
    if not cpus:
        return
    cpu = cpus[index % len(cpus)]
    try:
        os.sched_setaffinity(pid, {cpu})
    except OSError as exc:
        log.warning("cannot pin a proxy process to a CPU", pid=pid or os.getpid(), cpu=cpu, error=str(exc))


class Workers:
    """``count`` worker processes (numbered 1..count), each watched by a task that restarts it. With
    ``cpu_affinity``, worker i runs on the i-th usable CPU and this process (worker 0) on the first."""

    def __init__(self, count: int, metrics_address: str, cpu_affinity: bool = False) -> None:
        self.count = count
        self.metrics_address = metrics_address
        self.cpus = usable_cpus() if cpu_affinity else []
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.restarts = 0
        self._stopping = asyncio.Event()
        self._watchers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        pin(0, 0, self.cpus)
        for i in range(1, self.count + 1):
            self.procs[i] = await self._spawn(i)
        self._watchers = [asyncio.create_task(self._watch(i)) for i in self.procs]

    async def _spawn(self, i: int) -> asyncio.subprocess.Process:
        # Same config file (run_service exported its path as GOBALANCER_CONFIG) and environment.
        env = dict(os.environ, GOBALANCER_PROXY_WORKERS="1")
        if self.metrics_address:
            env["GOBALANCER_METRICS_PROXY_LISTEN_ADDRESS"] = with_port_offset(self.metrics_address, i)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.proxy", env=env, preexec_fn=die_with_parent
        )
        pin(proc.pid, i, self.cpus)
        return proc

    async def _watch(self, i: int) -> None:
        loop = asyncio.get_running_loop()
        deaths = 0
        while True:
            proc = self.procs[i]
            started = loop.time()
            code = await proc.wait()
            if self._stopping.is_set():
                return
            ran = loop.time() - started
            deaths = 1 if ran >= STABLE_SEC else deaths + 1
            delay = restart_delay(deaths)
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            log.error(
                "worker died: restarting it",
                worker=i,
                pid=proc.pid,
                died_of=how,
                ran_sec=round(ran, 3),
                restart_in_sec=delay,
            )
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                if self._stopping.is_set():
                    return
            try:
                self.procs[i] = await self._spawn(i)
            except OSError as exc:  # e.g. out of processes: try again after the next backoff
                log.error("cannot start worker", worker=i, error=str(exc))
                self.procs[i] = proc
                deaths += 1
                continue
            self.restarts += 1
            log.info("worker restarted", worker=i, pid=self.procs[i].pid)

    def begin_stop(self) -> None:
        """Forward SIGTERM to every worker now (each runs the same shutdown sequence); no more restarts."""
        self._stopping.set()
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)

    async def stop(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the workers to exit (after :meth:`begin_stop`), then kill them."""
        self.begin_stop()
        for task in self._watchers:
            task.cancel()
        for proc in self.procs.values():
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

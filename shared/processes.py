"""Child processes: their environment, and that they cannot outlive their parent."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess

_PR_SET_PDEATHSIG = 1


def service_env(**settings: str) -> dict[str, str]:
    """This process's environment without any ``GOBALANCER_*`` setting, plus ``settings``: a child
    service (in a test or a benchmark) sees only the configuration it is given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOBALANCER_")}
    env.update(settings)
    return env


def die_with_parent() -> None:
    """``preexec_fn``: the kernel sends the child SIGTERM when its parent dies (Linux), even by SIGKILL."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM, up to ``timeout`` seconds for the exit, then SIGKILL; the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode

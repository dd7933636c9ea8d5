"""The access log: one JSON line per request, off by default, optionally sampled.

Lines are encoded with msgspec and collected in memory; they are written in blocks of whole lines
(so they never interleave mid-line with the service log on stderr) when 64 KiB accumulated, every
``flush_interval`` seconds, and on close. Structlog is not used per request: it costs several
microseconds a line.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

import msgspec

from shared.config import LoggingConfig
from shared.logs import get_logger

log = get_logger("proxy.access_log")

_encode = msgspec.json.Encoder().encode
FLUSH_BYTES = 64 * 1024


def iso_time(epoch: float) -> str:
    """RFC 3339 UTC with milliseconds."""
    whole = int(epoch)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((epoch - whole) * 1000):03d}Z"


class AccessLog:
    def __init__(self, fd: int, sample: float, *, owns_fd: bool, flush_interval: float = 0.2) -> None:
        self.fd = fd
        self.sample = sample
        self._owns_fd = owns_fd
        self._lines: list[bytes] = []
        self._size = 0
        self._flush_interval = flush_interval
        self._timer: asyncio.TimerHandle | None = None
        self._rand = random.random

    @classmethod
    def from_config(cls, config: LoggingConfig) -> AccessLog | None:
        """None when the access log is off (the hot path then checks one attribute)."""
        if not config.access_log or config.access_log_sample <= 0.0:
            return None
        if config.access_log_file:
            fd = os.open(config.access_log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            return cls(fd, config.access_log_sample, owns_fd=True)
        return cls(2, config.access_log_sample, owns_fd=False)

    def sampled(self) -> bool:
        return self.sample >= 1.0 or self._rand() < self.sample

    def write(self, entry: dict[str, Any]) -> None:
        line = _encode(entry) + b"\n"
        self._lines.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(self._flush_interval, self._timed_flush)

    def _timed_flush(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        data = memoryview(b"".join(self._lines))
        self._lines = []
        self._size = 0
        try:
            while data:
                n = os.write(self.fd, data)
                data = data[n:]
        except BlockingIOError:
            log.warning("access log output would block; lines dropped", dropped_bytes=len(data))
        except OSError as exc:
            log.warning("cannot write the access log", error=str(exc))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        if self._owns_fd:
            os.close(self.fd)
            self._owns_fd = False

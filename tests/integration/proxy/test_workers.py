"""`proxy.workers: N` runs N processes sharing the listener through SO_REUSEPORT."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.integration.proxy.backends import Backend, Backends, request
from tests.integration.proxy.test_process import proxy_process, wait_listening
from tests.integration.shared.test_launcher import _alive, _descendants


async def test_workers_share_the_listener_and_stop_together(tmp_path: Path, backends: Backends) -> None:
    backend = await backends.add(Backend())
    with proxy_process(tmp_path, [backend.address], extra="proxy: {workers: 3}\n") as (proc, port):
        await wait_listening(port)
        deadline = time.monotonic() + 15
        while len(_descendants(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = _descendants(proc.pid)
        assert len(workers) == 2, "the main process plus two workers"
        raw = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        statuses = [(await request(port, raw)).status for _ in range(30)]
        assert statuses == [200] * 30
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        deadline = time.monotonic() + 10
        while _alive(workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(workers)

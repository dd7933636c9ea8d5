"""Cost of active health checking: N backends probed every interval by one replica.

``python -m bench health [--backends 1000] [--interval 2] [--duration 10] [--type tcp|http]
[--loop uvloop|asyncio] [--redis-url URL]``

The backends live in a child process (so the prober's CPU time is its own): for ``http`` each is an
asyncio server answering ``200`` to every request; for ``tcp`` each is a listening socket that never
accepts (the kernel completes the handshake). The parent runs the health ``Scheduler`` — exactly what
the leading replica runs — against a private redis-server (or ``--redis-url``), waits until every
backend has been written ``up``, then measures for ``--duration`` seconds: probes per second, CPU
time of the prober per probe and as a share of one core, and how late probes were (the longest and
the 99th-percentile gap between two probes of a backend, against the configured interval).
Results go to ``bench/results/health.json``. Run on a quiet machine; numbers are the whole loop's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


# -- the backends' process ---------------------------------------------------------------------


class _Answer200(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")  # type: ignore[attr-defined]
            self.transport.close()


async def _serve(n: int, kind: str) -> None:
    ports: list[int] = []
    keep: list[object] = []
    loop = asyncio.get_running_loop()
    for _ in range(n):
        if kind == "http":
            server = await loop.create_server(_Answer200, "127.0.0.1", 0, backlog=128)
            ports.append(server.sockets[0].getsockname()[1])
            keep.append(server)
        else:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(128)
            ports.append(s.getsockname()[1])
            keep.append(s)
    print(json.dumps(ports), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin


# -- the prober --------------------------------------------------------------------------------


async def _measure(args: argparse.Namespace, ports: list[int]) -> dict[str, object]:
    from services.health.scheduler import Scheduler
    from shared.aio import cancel_and_wait
    from shared.config import HealthCheckConfig
    from shared.models import Backend
    from shared.redis_server import RedisServer
    from shared.store import Store

    server = None
    url = args.redis_url
    if not url:
        server = RedisServer().start()
        url = server.url
    store = Store.from_url(url, f"bench-{uuid.uuid4().hex[:8]}")
    try:
        for port in ports:
            await store.create_backend(Backend(address=f"127.0.0.1:{port}"))
        config = HealthCheckConfig(type=args.type, interval_sec=args.interval, timeout_sec=1.0)  # type: ignore[arg-type]
        scheduler = Scheduler(store, config)
        started = time.monotonic()
        task = asyncio.create_task(scheduler.run())
        while True:
            snap = await store.snapshot()
            if sum(v.health.status == "up" for v in snap.backends.values()) == len(ports):
                break
            if time.monotonic() - started > 60:
                raise SystemExit("not every backend came up within 60 s")
            await asyncio.sleep(0.05)
        all_up = time.monotonic() - started
        await asyncio.sleep(args.interval)  # past the start-up burst
        targets = list(scheduler.targets.values())
        for t in targets:
            t.max_gap = 0.0
        probes0 = sum(t.probes for t in targets)
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(args.duration)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        probes = sum(t.probes for t in targets) - probes0
        failed = sum(1 for t in targets if t.state.status != "up")
        gaps = sorted(t.max_gap for t in targets)
        await cancel_and_wait([task])
        return {
            "type": args.type,
            "loop": args.loop,
            "backends": len(ports),
            "interval_sec": args.interval,
            "duration_sec": round(wall, 2),
            "all_up_after_sec": round(all_up, 3),
            "probes_per_sec": round(probes / wall, 1),
            "cpu_share_of_one_core": round(cpu / wall, 4),
            "cpu_us_per_probe": round(cpu / probes * 1e6, 1) if probes else None,
            "max_gap_sec": round(gaps[-1], 3),
            "p99_worst_gap_sec": round(gaps[int(len(gaps) * 0.99) - 1], 3),
            "not_up_at_end": failed,
        }
    finally:
        await store.close()
        if server is not None:
            server.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench health", description=__doc__.split("\n")[0])
    parser.add_argument("--backends", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--type", choices=("tcp", "http"), default="http")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--redis-url", default="")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--serve", choices=("tcp", "http"), help=argparse.SUPPRESS)  # the child's role
    args = parser.parse_args(argv)

    if args.serve:
        import uvloop

        uvloop.run(_serve(args.backends, args.serve))
        return 0

    from shared.logs import configure_logging

    configure_logging("bench", "warning")
    child = subprocess.Popen(
        [sys.executable, "-m", "bench", "health", "--serve", args.type, "--backends", str(args.backends)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    try:
        assert child.stdout is not None
        ports = json.loads(child.stdout.readline())
        if args.loop == "uvloop":
            import uvloop

            result = uvloop.run(_measure(args, ports))
        else:
            result = asyncio.run(_measure(args, ports))
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    print(json.dumps(result, indent=2))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"health-{args.type}-{args.loop}.json"
    (out / name).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

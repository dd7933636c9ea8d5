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

With ``--replicas N`` (N > 1) the probing is what a deployment of N health replicas does: N child
processes each run the health service (``HealthService``: shard leases, its share of the backends)
with a heartbeat; each reports its own probes, CPU time per probe and worst gap, and the run reports
how the backends were split (each must be probed by exactly one replica) and the totals. With
``--kill-one`` one replica is then SIGKILLed and the time until the others probe every backend again
is measured (the lease TTL is ``--lease-ttl``). Results: ``bench/results/health-replicas-*.json``.
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
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent


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


# -- several replicas (--replicas N) ------------------------------------------------------------


async def _replica_child(url: str, namespace: str, replica_id: str, args: argparse.Namespace) -> None:
    """One health replica as main.py runs it; on stdin: "measure" (start counting), "report", "exit"."""
    from services.health.service import HealthService
    from shared.aio import cancel_and_wait
    from shared.config import HealthCheckConfig, Seconds
    from shared.replica import Replica
    from shared.store import Store

    store = Store.from_url(url, namespace)
    config = HealthCheckConfig(
        type=args.type,
        interval_sec=args.interval,
        timeout_sec=Seconds(1.0),
        lease_ttl_sec=args.lease_ttl,
    )
    service = HealthService(store, config, replica_id)
    replica = Replica(store, "health", ttl=max(1.0, args.lease_ttl), heartbeat=0.2, replica_id=replica_id)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(replica.run()), asyncio.create_task(service.run(stop))]
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": replica_id}), flush=True)
    while (line := (await reader.readline()).decode().strip()) != "measure":
        if not line:
            return
        print(json.dumps({"shards": len(service.held), "targets": len(service.scheduler.targets)}), flush=True)
    targets = list(service.scheduler.targets.values())
    for t in targets:
        t.max_gap = 0.0
    probes0 = sum(t.probes for t in targets)
    cpu0, wall0 = time.process_time(), time.monotonic()
    await reader.readline()  # "report"
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    probes = sum(t.probes for t in targets) - probes0
    gaps = sorted(t.max_gap for t in targets) or [0.0]
    print(
        json.dumps(
            {
                "replica": replica_id,
                "shards": len(service.held),
                "backends": [t.address for t in targets],
                "probes_per_sec": round(probes / wall, 1),
                "cpu_share_of_one_core": round(cpu / wall, 4),
                "cpu_us_per_probe": round(cpu / probes * 1e6, 1) if probes else None,
                "max_gap_sec": round(gaps[-1], 3),
                "p99_worst_gap_sec": round(gaps[int(len(gaps) * 0.99) - 1], 3),
            }
        ),
        flush=True,
    )
    await reader.readline()  # "exit" (or the parent gone): go on probing until then
    stop.set()
    await cancel_and_wait(tasks)
    await replica.deregister()
    await store.close()


async def _measure_replicas(args: argparse.Namespace, ports: list[int]) -> dict[str, object]:
    from services.health.service import SHARDS, shard_lease
    from shared.models import Backend
    from shared.redis_server import RedisServer
    from shared.store import Store

    server = None
    url = args.redis_url
    if not url:
        server = RedisServer().start()
        url = server.url
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    store = Store.from_url(url, namespace)
    children: list[asyncio.subprocess.Process] = []
    root = ROOT

    async def ask(child: asyncio.subprocess.Process, line: str) -> dict[str, Any]:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(line.encode() + b"\n")
        await child.stdin.drain()
        answer: dict[str, Any] = json.loads(await child.stdout.readline())
        return answer

    try:
        for port in ports:
            await store.create_backend(Backend(address=f"127.0.0.1:{port}"))
        for i in range(args.replicas):
            child = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "bench", "health", "--replica-child", url, namespace, f"health-{i}"),
                *("--type", args.type, "--interval", str(args.interval), "--lease-ttl", str(args.lease_ttl)),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=1 << 24,  # (a report lists the replica's backends)
                cwd=root,
                env={**os.environ, "PYTHONPATH": str(root)},
            )
            assert child.stdout is not None
            json.loads(await child.stdout.readline())  # ready
            children.append(child)
        started = time.monotonic()
        while True:  # every backend up, every replica probing its share
            snap = await store.snapshot()
            up = sum(v.health.status == "up" for v in snap.backends.values())
            states = [await ask(c, "state") for c in children]
            if up == len(ports) and all(s["shards"] for s in states):
                break
            if time.monotonic() - started > 120:
                raise SystemExit(f"not settled within 120 s: {up} up, {states}")
            await asyncio.sleep(0.2)
        settled = time.monotonic() - started
        await asyncio.sleep(args.interval)  # past the start-up burst
        for c in children:
            assert c.stdin is not None
            c.stdin.write(b"measure\n")
            await c.stdin.drain()
        await asyncio.sleep(args.duration)
        reports = [await ask(c, "report") for c in children]
        probed = [a for r in reports for a in r.pop("backends")]
        result: dict[str, Any] = {
            "type": args.type,
            "backends": len(ports),
            "replicas": args.replicas,
            "shards": SHARDS,
            "interval_sec": args.interval,
            "duration_sec": args.duration,
            "settled_after_sec": round(settled, 2),
            "backends_probed": len(set(probed)),
            "backends_probed_twice": len(probed) - len(set(probed)),
            "probes_per_sec": round(sum(r["probes_per_sec"] for r in reports), 1),
            "cpu_share_of_one_core": round(sum(r["cpu_share_of_one_core"] for r in reports), 4),
            "max_gap_sec": max(r["max_gap_sec"] for r in reports),
            "per_replica": reports,
        }
        if args.kill_one and len(children) > 1:
            survivors = await _kill_and_wait(store, children, SHARDS, shard_lease)
            result["takeover_after_kill_sec"] = survivors
        return result
    finally:
        for c in children:
            if c.returncode is None and c.stdin is not None:
                c.stdin.close()  # "exit"
        for c in children:
            try:
                await asyncio.wait_for(c.wait(), 10)
            except TimeoutError:
                c.kill()
                await c.wait()
        await store.close()
        if server is not None:
            server.cleanup()


async def _kill_and_wait(store: Any, children: list[Any], shards: int, shard_lease: Any) -> float:
    """SIGKILL the first replica; seconds until every shard is held by a live one (they go on probing)."""
    victim = "health-0"
    children[0].kill()
    killed = time.monotonic()
    while time.monotonic() - killed < 60:
        holders = [await store.lease_holder(shard_lease(s)) for s in range(shards)]
        owners = {h.rsplit(":", 1)[0] if h else None for h in holders}
        if None not in owners and victim not in owners:
            return round(time.monotonic() - killed, 3)
        await asyncio.sleep(0.02)
    raise SystemExit("the shards were not taken over within 60 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench health", description=__doc__.split("\n")[0])
    parser.add_argument("--backends", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--type", choices=("tcp", "http"), default="http")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--redis-url", default="")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--replicas", type=int, default=1, help="health replicas (processes) sharing the backends")
    parser.add_argument("--kill-one", action="store_true", help="with --replicas: then SIGKILL one, time the takeover")
    parser.add_argument("--lease-ttl", type=float, default=5.0)
    parser.add_argument("--serve", choices=("tcp", "http"), help=argparse.SUPPRESS)  # the child's role
    parser.add_argument("--replica-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.replica_child:
        from shared.logs import configure_logging

        configure_logging("bench", "warning")
        url, namespace, replica_id = args.replica_child
        asyncio.run(_replica_child(url, namespace, replica_id, args))
        return 0

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
        measure = _measure_replicas if args.replicas > 1 else _measure
        if args.loop == "uvloop":
            import uvloop

            result = uvloop.run(measure(args, ports))
        else:
            result = asyncio.run(measure(args, ports))
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
    name = f"health-{args.type}-{args.loop}.json" if args.replicas <= 1 else f"health-replicas-{args.type}.json"
    (out / name).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

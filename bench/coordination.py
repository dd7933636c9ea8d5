"""Convergence: time from a change written through the store to every one of 4 replicas routing by it.

``python -m bench coordination [--replicas 4] [--changes 50] [--redis-url URL]``. Each replica is a
separate process running a :class:`StoreBalancer` (``open_store_balancer``). The parent writes a
change (a backend's weight, through ``Store.update_backend``), and each replica reports the wall
time at which its *policy* holds the new weight (after its rebuild: a pick would route by it). The
convergence of one change is the latest replica's time minus the time just before the write.
Without ``--redis-url`` a private redis-server is started on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

ADDRESS = "127.0.0.1:9"
OTHER = "127.0.0.1:10"


async def child(url: str, namespace: str) -> None:
    from services.proxy.store_balancer import open_store_balancer
    from shared.config import Config
    from shared.logs import configure_logging
    from shared.store import Store

    configure_logging("bench", "warning")
    config = Config()
    config.redis.url, config.redis.namespace = url, namespace
    store = Store.from_url(url, namespace)
    async with open_store_balancer(config, store) as balancer:
        print("ready", flush=True)
        seen = 0
        while True:
            await balancer.changed.wait()
            balancer.changed.clear()
            upstream = balancer.pick("k")  # rebuilds the policy if the view changed
            if upstream is not None:
                balancer.finished(upstream, True)  # (a pick counts a request in flight)
            weight = next((c.weight for c in balancer.policy.candidates if c.address == ADDRESS), 0)
            if weight != seen:
                seen = weight
                print(f"seen {weight} {time.time():.6f}", flush=True)


async def parent(args: argparse.Namespace) -> dict[str, object]:
    from shared.models import AlgorithmSetting, Backend
    from shared.redis_server import RedisServer
    from shared.store import Store

    server = None
    url = args.redis_url
    if not url:
        server = RedisServer().start()
        url = server.url
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    store = Store.from_url(url, namespace)
    procs: list[asyncio.subprocess.Process] = []
    try:
        for address in (ADDRESS, OTHER):
            await store.create_backend(Backend(address=address))
            await store.set_health(address, "up")
        await store.set_algorithm(AlgorithmSetting(name="weighted"))
        for _ in range(args.replicas):
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bench.coordination",
                    "--child",
                    url,
                    namespace,
                    stdout=asyncio.subprocess.PIPE,
                )
            )
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line.strip() == b"ready", line
        latencies: list[float] = []
        for i in range(args.changes):
            weight = 2 + i
            before = time.time()
            await store.update_backend(ADDRESS, {"weight": weight})
            seen_at: list[float] = []
            for proc in procs:
                assert proc.stdout is not None
                while True:
                    parts = (await asyncio.wait_for(proc.stdout.readline(), 10)).split()
                    if parts and parts[0] == b"seen" and int(parts[1]) == weight:
                        seen_at.append(float(parts[2]))
                        break
            latencies.append(max(seen_at) - before)
            await asyncio.sleep(args.gap)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
        keys = [key async for key in store.redis.scan_iter(match=f"{namespace}:*")]
        if keys:
            await store.redis.delete(*keys)
        await store.close()
        if server is not None:
            server.cleanup()
    ms = sorted(x * 1000 for x in latencies)
    return {
        "replicas": args.replicas,
        "changes": len(ms),
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))], 2),
        "max_ms": round(ms[-1], 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench coordination", description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between changes")
    parser.add_argument("--redis-url", default="")
    parser.add_argument("--json", default="bench/results/coordination.json")
    parser.add_argument("--child", nargs=2, metavar=("URL", "NAMESPACE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(child(*args.child))
        return 0
    result = asyncio.run(parent(args))
    print(
        f"convergence over {result['changes']} changes, {result['replicas']} replicas: "
        f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms (target p99 <= 100 ms)"
    )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The admin API at scale: ``GET /backends`` from the admin's snapshot, and writes under 300 event streams.

``python -m bench admin [--sizes 100,10000] [--duration 5] [--connections 10] [--streams 300]``

Against a private ``redis-server`` and a real admin (``python -m services.admin``, one uvicorn worker,
``logging.level: warning``), both on loopback:

1. for each size, seeds that many backends (health set on every other one), waits until the admin's
   snapshot holds them, then runs ``wrk -t1 -cC -dDs --latency`` on ``GET /backends`` (the whole list,
   unpaginated, no ``If-None-Match``) and prints req/s, p50, p99, the admin's CPU per request and the
   ratios to issue 18's targets (10,000 backends: >= 1,000 req/s and p99 <= 25 ms; 100: >= 3,000 req/s);
   also one ``?limit=100`` page, a 304 revalidation and the whole list gzipped at the largest size;
2. opens ``--streams`` ``GET /events`` streams at once (no token, as a page would), then times
   authenticated ``POST /backends`` + ``DELETE`` while they are open, and reads the Redis server's
   client count (``INFO clients``) before and during: issue 15's lock-out (streams must not use up
   the admin's Redis connections, writes must not starve).

Writes ``bench/results/admin.json`` (``--out DIR``). wrk, the admin and Redis share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.proxy import cpu_ticks, parse_wrk

WRK = "/usr/bin/wrk"
TOKEN = "bench-admin-token"
TARGETS: dict[int, tuple[float, float | None]] = {10000: (1000.0, 25.0), 100: (3000.0, None)}  # size: (rps, p99)


def wrk(url: str, seconds: float, connections: int, headers: dict[str, str] | None = None) -> dict[str, float]:
    cmd = [WRK, "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "--latency", url]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    requests, elapsed, p50, p99, errors = parse_wrk(out)
    return {"requests": requests, "seconds": elapsed, "rps": requests / elapsed, "p50_ms": p50, "p99_ms": p99,
            "errors": errors}  # fmt: skip


def measured(
    pid: int, url: str, seconds: float, connections: int, headers: dict[str, str] | None = None
) -> dict[str, float]:
    """``wrk`` on ``url``, plus the admin's CPU time (user + system, from /proc) per request."""
    ticks = os.sysconf("SC_CLK_TCK")
    u0, s0 = cpu_ticks(pid)
    row = wrk(url, seconds, connections, headers)
    u1, s1 = cpu_ticks(pid)
    row["cpu_us_per_request"] = round((u1 - u0 + s1 - s0) / ticks * 1e6 / max(row["requests"], 1), 1)
    return row


async def seed(url: str, namespace: str, start: int, count: int) -> None:
    from shared.models import Backend
    from shared.store import Store

    store = Store.from_url(url, namespace)
    try:
        sem = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            address = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:8080"
            async with sem:
                await store.create_backend(Backend(address=address, weight=1 + i % 5))
                if i % 2 == 0:
                    await store.set_health(address, "up")

        await asyncio.gather(*(one(i) for i in range(start, start + count)))
    finally:
        await store.close()


def get_json(url: str, token: str = "") -> Any:
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if check():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout}s")
        time.sleep(0.1)


async def streams_phase(base: str, redis_url: str, n: int, posts: int) -> dict[str, Any]:
    import httpx
    import redis.asyncio as aioredis

    raw = aioredis.from_url(redis_url)
    clients_before = int((await raw.info("clients"))["connected_clients"])
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        opened: list[Any] = []
        stack = contextlib.AsyncExitStack()
        async with stack:

            async def open_one() -> int:
                response = await stack.enter_async_context(client.stream("GET", "/events"))
                if response.status_code == 200:
                    opened.append(response.aiter_lines())
                    await anext(opened[-1])  # the first line of the snapshot: the stream runs
                return response.status_code

            started = time.perf_counter()
            statuses = await asyncio.gather(*(open_one() for _ in range(n)))
            open_sec = time.perf_counter() - started
            clients_during = int((await raw.info("clients"))["connected_clients"])
            headers = {"Authorization": f"Bearer {TOKEN}"}
            latencies: list[float] = []
            codes: list[int] = []
            for i in range(posts):
                address = f"127.0.0.2:{20000 + i}"
                t0 = time.perf_counter()
                r = await client.post("/backends", json={"address": address}, headers=headers)
                latencies.append((time.perf_counter() - t0) * 1000)
                codes.append(r.status_code)
                await client.delete(f"/backends/{address}", headers=headers)
    await raw.aclose()
    return {
        "streams_requested": n,
        "streams_open": sum(1 for s in statuses if s == 200),
        "streams_refused_503": sum(1 for s in statuses if s == 503),
        "open_all_sec": round(open_sec, 3),
        "redis_clients_before": clients_before,
        "redis_clients_with_streams": clients_during,
        "post_statuses": sorted(set(codes)),
        "post_ms_median": round(statistics.median(latencies), 2),
        "post_ms_max": round(max(latencies), 2),
    }


def run(args: argparse.Namespace) -> int:
    from shared.redis_server import RedisServer, free_port

    sizes = sorted(int(s) for s in args.sizes.split(","))
    server = RedisServer().start()
    namespace = f"bench-admin-{uuid.uuid4().hex[:8]}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    results: dict[str, Any] = {"sizes": {}, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "admin.yaml"
        config.write_text(
            f"redis:\n  url: {server.url}\n  namespace: {namespace}\n"
            f"admin:\n  listen_address: 127.0.0.1:{port}\n  token: {TOKEN}\n"
            "logging:\n  level: warning\n"
        )
        proc = subprocess.Popen([sys.executable, "-m", "services.admin", "--config", str(config)])
        try:
            wait_for(lambda: get_json(base + "/health")["status"] == "ok", 20, "the admin did not start")
            seeded = 0
            for size in sizes:
                asyncio.run(seed(server.url, namespace, seeded, size - seeded))
                seeded = size
                wait_for(lambda n=size: len(get_json(base + "/backends")) == n, 60, f"the admin did not show {size}")
                wrk(base + "/backends", 1, args.connections)  # warm-up
                row = measured(proc.pid, base + "/backends", args.duration, args.connections)
                target = TARGETS.get(size)
                if target is not None:
                    row["rps_ratio_to_target"] = round(row["rps"] / target[0], 2)
                    if target[1] is not None:
                        row["p99_ratio_to_target"] = round(row["p99_ms"] / target[1], 2)  # <= 1 meets it
                results["sizes"][str(size)] = row
                print(f"GET /backends, {size} backends: " + ", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
            largest = sizes[-1]
            page = measured(proc.pid, base + "/backends?limit=100", args.duration, args.connections)
            etag = ""
            import urllib.request

            with urllib.request.urlopen(base + "/backends", timeout=30) as response:
                etag = response.headers["ETag"]
            revalidate = measured(
                proc.pid, base + "/backends", args.duration, args.connections, {"If-None-Match": etag}
            )
            packed = measured(
                proc.pid, base + "/backends", args.duration, args.connections, {"Accept-Encoding": "gzip"}
            )
            results["page_limit_100"] = page
            results["revalidate_304"] = revalidate
            results["gzip"] = packed
            for label, row in (("?limit=100", page), (" + If-None-Match (304)", revalidate), (", gzip", packed)):
                print(f"GET /backends{label} at {largest}: rps {row['rps']:.0f}, p99 {row['p99_ms']} ms, "
                      f"cpu_us_per_request {row['cpu_us_per_request']}", flush=True)  # fmt: skip
            if args.streams:
                streams = asyncio.run(streams_phase(base, server.url, args.streams, args.posts))
                results["streams"] = streams
                print("event streams: " + ", ".join(f"{k} {v}" for k, v in streams.items()), flush=True)
        finally:
            proc.terminate()
            proc.wait(15)
            server.cleanup()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "admin.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench admin", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,10000", help="backend counts, ascending (default 100,10000)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (default 5)")
    parser.add_argument("--connections", type=int, default=10, help="wrk connections (default 10)")
    parser.add_argument("--streams", type=int, default=300, help="event streams held open (0: skip)")
    parser.add_argument("--posts", type=int, default=20, help="POST /backends timed while they are open")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

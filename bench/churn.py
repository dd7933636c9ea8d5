"""Churn: backend addresses replaced all the time (discovery replacing pods) must leave memory flat.

``python -m bench churn [--backends 1000] [--rate 10000] [--duration 120] [--warmup 60] [--sample 5]
[--load 100] [--slice 100]``

Runs the four services as separate processes (proxy, admin, health, discovery) against a private
redis-server, with Kubernetes discovery reading EndpointSlices from the test fake API server
(``tests/fakes/k8s_api.py``, in this process). ``--backends`` endpoints, ``--slice`` per slice, each
an HTTP server answering 200 on its own loopback address (``127.1.x.y:8080``, in a child process: the
whole of 127.0.0.0/8 is local on Linux). Every half second the benchmark replaces ``rate / 120``
endpoints by unused addresses (the slices that changed are re-applied: MODIFIED watch events), so
``--rate`` addresses change per minute; freed addresses go to the back of the pool (pod IPs are
reused, later). ``--load`` requests per second go through the proxy meanwhile, so the proxy counts
per-backend series for the backends that come and go, and health probes every one of them.

Every ``--sample`` seconds: each service's RSS (``/proc/PID/status``), the number of series on its
``/metrics``, and Redis ``used_memory`` (also, not judged: the store's backend count and the proxy's
open file descriptors). The steady state is the mean of the first third of the samples after
``--warmup``; the mean of the last third must be within 5 % of it (RSS and Redis memory: growth only
counts; series: both ways); the worst single sample is reported beside it. Results go to ``bench/results/churn.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
SERVICES = ("proxy", "admin", "health", "discovery")
PORT = 8080
TICK = 0.5
TOLERANCE = 0.05


# -- the backends' process ---------------------------------------------------------------------


class _Answer200(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")


def address(i: int) -> str:
    return f"127.1.{i // 250}.{i % 250 + 1}"


async def _serve(n: int) -> None:
    loop = asyncio.get_running_loop()
    keep = [await loop.create_server(_Answer200, address(i), PORT, backlog=64) for i in range(n)]
    print("ready", len(keep), flush=True)
    await asyncio.Event().wait()


# -- the services ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def http_get(host: str, port: int, path: str, headers: str = "") -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode())
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


async def series(address: str, path: str = "/metrics", headers: str = "") -> int:
    """The number of samples on a /metrics page (lines that are not comments)."""
    return sum((await families(address, path, headers)).values())


async def families(
    address: str, path: str = "/metrics", headers: str = "", backends: set[str] | None = None
) -> dict[str, int]:
    """The samples on a /metrics page by metric name (the name before the labels); the values of their
    ``backend`` labels are added to ``backends`` when given."""
    host, _, port = address.rpartition(":")
    raw = await http_get(host, int(port), path, headers)
    body = raw.partition(b"\r\n\r\n")[2]
    out: dict[str, int] = {}
    for line in body.split(b"\n"):
        if line and not line.startswith(b"#"):
            name = line.split(b"{", 1)[0].split(b" ", 1)[0].decode()
            out[name] = out.get(name, 0) + 1
            if backends is not None and b'backend="' in line:
                backends.add(line.split(b'backend="', 1)[1].split(b'"', 1)[0].decode())
    return out


def family_drift(samples: list[dict[str, Any]], warmup: float, key: str) -> dict[str, dict[str, float]]:
    """Per metric name on one service's page (``key``: the samples' dict of counts by name): the mean
    over the first and the last third after ``warmup``, for the names whose mean moved: what makes a
    series count drift."""
    later = [s[key] for s in samples if s["t"] >= warmup and key in s]
    third = len(later) // 3
    if third < 1:
        return {}
    names = sorted({n for counts in later for n in counts})
    out: dict[str, dict[str, float]] = {}
    for name in names:
        first = sum(c.get(name, 0) for c in later[:third]) / third
        last = sum(c.get(name, 0) for c in later[-third:]) / third
        if first != last:
            out[name] = {"steady": round(first, 1), "last": round(last, 1), "change": round(last - first, 1)}
    return out


@contextlib.contextmanager
def running(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def wait_port(address: str, timeout: float = 30.0) -> None:
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection(host, int(port))
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {address}") from None
            await asyncio.sleep(0.1)


# -- the run -----------------------------------------------------------------------------------


class Churn:
    """The endpoints in slices of the fake API, and their replacement."""

    def __init__(self, api: Any, endpoint: Any, backends: int, pool: int, per_slice: int, rng: random.Random) -> None:
        self.api, self.endpoint, self.rng = api, endpoint, rng
        self.per_slice = per_slice
        self.slices: list[list[int]] = [
            list(range(i, min(i + per_slice, backends))) for i in range(0, backends, per_slice)
        ]
        self.free = list(range(backends, pool))
        self.changes = 0

    def apply(self, index: int) -> None:
        self.api.apply(
            f"web-{index}",
            [self.endpoint(address(i)) for i in self.slices[index]],
            ports=({"name": "http", "port": PORT, "protocol": "TCP"},),
        )

    def replace(self, count: int) -> None:
        touched: set[int] = set()
        for _ in range(count):
            s = self.rng.randrange(len(self.slices))
            members = self.slices[s]
            k = self.rng.randrange(len(members))
            self.free.append(members[k])  # reused later, at the back of the queue
            members[k] = self.free.pop(0)
            touched.add(s)
        for s in touched:
            self.apply(s)
        self.api.compact()  # (the fake keeps its history otherwise: the benchmark's own memory)
        self.changes += count


async def load(port: int, rate: float, stop: asyncio.Event, counts: dict[str, int]) -> None:
    """``rate`` requests per second through the proxy on a few keep-alive connections."""
    if rate <= 0:
        return
    connections = 4
    interval = connections / rate

    async def one() -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while not stop.is_set():
            started = time.monotonic()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                assert reader is not None
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                key = "ok" if head.startswith(b"HTTP/1.1 200") else "other"
                counts[key] = counts.get(key, 0) + 1
                if b"connection: close" in head.lower():
                    writer.close()
                    writer = None
            except (OSError, asyncio.IncompleteReadError, TimeoutError, IndexError, ValueError):
                counts["error"] = counts.get("error", 0) + 1
                if writer is not None:
                    writer.close()
                writer = None
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
        if writer is not None:
            writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))


# Sampled and shown, not judged. proxy_series_backends: the backends the proxy's per-backend series name;
# proxy_series_gone: how many of them the store no longer has (grows without bound if departed backends'
# series leak; else bounded by what left within the last prune rounds and had requests in flight).
INFORMATIONAL = ("store_backends", "proxy_fds", "proxy_families", "proxy_series_backends", "proxy_series_gone")


def judge(samples: list[dict[str, Any]], warmup: float) -> dict[str, Any]:
    """Per metric: the steady state (mean of the first third of the samples after ``warmup``), the
    mean of the last third, the extremes after the warmup, and ok: the last third within 5 % of the
    steady state (RSS and Redis memory: growth only; series counts: both ways). Single samples are
    reported too (``worst_sample_pct``): series counts move with which backends the load happened to
    reach just then, so one sample is noisier than a third of the run."""
    out: dict[str, Any] = {}
    keys = [k for k in samples[0] if k != "t" and k not in INFORMATIONAL]
    later_samples = [s for s in samples if s["t"] >= warmup]
    third = len(later_samples) // 3
    for key in keys:
        later = [s[key] for s in later_samples]
        if third < 1:
            continue
        steady = sum(later[:third]) / third
        last = sum(later[-third:]) / third
        high, low = max(later), min(later)
        growth_only = not key.endswith("series")
        drift = (last - steady) / steady
        worst = (high - steady) / steady if growth_only else max(high - steady, steady - low) / steady
        out[key] = {
            "steady": round(steady, 1),
            "last": round(last, 1),
            "drift_pct": round(100 * drift, 2),
            "max": high,
            "min": low,
            "worst_sample_pct": round(100 * worst, 2),
            "ok": (drift if growth_only else abs(drift)) <= TOLERANCE,
        }
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from shared.redis_server import RedisServer
    from tests.fakes.k8s_api import FakeKubernetesAPI, endpoint

    rng = random.Random(7)
    pool = min(args.backends * args.pool_factor, 60_000)
    workdir = Path(tempfile.mkdtemp(prefix="bench-churn-"))
    redis = RedisServer().start()
    api = FakeKubernetesAPI().start()
    backends_proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.churn", "--serve", str(pool), cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    assert backends_proc.stdout is not None
    await asyncio.wait_for(backends_proc.stdout.readline(), 120)
    churn = Churn(api, endpoint, args.backends, pool, args.slice, rng)
    for s in range(len(churn.slices)):
        churn.apply(s)
    addresses = {
        "proxy": f"127.0.0.1:{free_port()}",
        "admin": f"127.0.0.1:{free_port()}",
        "proxy_metrics": f"127.0.0.1:{free_port()}",
        "health_metrics": f"127.0.0.1:{free_port()}",
        "discovery_metrics": f"127.0.0.1:{free_port()}",
    }
    namespace = f"churn-{uuid.uuid4().hex[:6]}"
    config = workdir / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "listen_address": addresses["proxy"],
                "algorithm": args.algorithm,
                "redis": {"url": redis.url, "namespace": namespace},
                "admin": {"listen_address": addresses["admin"]},
                "health_check": {"type": "tcp", "interval_sec": args.health_interval},
                "discovery": {
                    "type": "kubernetes",
                    "kubernetes": {"api_url": api.url, "service": "web", "namespace": "default"},
                },
                "metrics": {
                    "proxy_listen_address": addresses["proxy_metrics"],
                    "health_listen_address": addresses["health_metrics"],
                    "discovery_listen_address": addresses["discovery_metrics"],
                },
                "logging": {"level": "warning"},
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    samples: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    stop = asyncio.Event()
    try:
        with contextlib.ExitStack() as stack:
            procs = {
                name: stack.enter_context(
                    running(
                        [sys.executable, "-m", f"services.{name}", "--config", str(config)],
                        env,
                        workdir / f"{name}.log",
                    )
                )
                for name in SERVICES
            }
            for key in ("proxy", "admin", "proxy_metrics", "health_metrics", "discovery_metrics"):
                await wait_port(addresses[key])
            started = time.monotonic()
            load_task = asyncio.create_task(load(int(addresses["proxy"].rpartition(":")[2]), args.load, stop, counts))
            next_tick = next_sample = started
            per_tick = args.rate / 60 * TICK
            owed = 0.0
            import redis as redis_client

            r = redis_client.Redis.from_url(redis.url)
            while (now := time.monotonic()) < started + args.duration:
                if now >= next_tick:
                    owed += per_tick
                    churn.replace(int(owed))
                    owed -= int(owed)
                    next_tick += TICK
                if now >= next_sample:
                    sample: dict[str, Any] = {"t": round(now - started, 1)}
                    for name, proc in procs.items():
                        if proc.poll() is not None:
                            raise RuntimeError(f"{name} exited ({proc.returncode}); see {workdir / (name + '.log')}")
                        sample[f"{name}_rss_kb"] = rss_kb(proc.pid)
                    named: set[str] = set()
                    proxy_families = await families(addresses["proxy_metrics"], backends=named)
                    sample["proxy_series"] = sum(proxy_families.values())
                    sample["health_series"] = await series(addresses["health_metrics"])
                    sample["discovery_series"] = await series(addresses["discovery_metrics"])
                    sample["admin_series"] = await series(addresses["admin"])
                    sample["redis_used_memory"] = int(r.info("memory")["used_memory"])
                    sample["store_backends"] = int(r.hlen(f"{namespace}:backends"))
                    stored = {k.decode() if isinstance(k, bytes) else k for k in r.hkeys(f"{namespace}:backends")}
                    sample["proxy_series_backends"] = len(named)
                    sample["proxy_series_gone"] = len(named - stored)
                    sample["proxy_fds"] = len(os.listdir(f"/proc/{procs['proxy'].pid}/fd"))
                    print(json.dumps(sample), flush=True)
                    sample["proxy_families"] = proxy_families  # (in the results, not printed)
                    samples.append(sample)
                    next_sample += args.sample
                await asyncio.sleep(max(0.0, min(next_tick, next_sample) - time.monotonic()))
            stop.set()
            await load_task
            r.close()
    finally:
        backends_proc.terminate()
        await backends_proc.wait()
        api.stop()
        redis.cleanup()
    verdict = judge(samples, args.warmup)
    return {
        "command": "python -m bench churn " + " ".join(sys.argv[2:]),
        "backends": args.backends,
        "changes_per_minute": args.rate,
        "changes": churn.changes,
        "duration_sec": args.duration,
        "requests": counts,
        "all_ok": all(v["ok"] for v in verdict.values() if isinstance(v, dict)),
        "verdict": verdict,
        "proxy_series_by_name": family_drift(samples, args.warmup, "proxy_families"),
        "samples": samples,
        "logs": str(workdir),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench churn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--backends", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=10_000, help="address changes per minute")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds (the issue's run: 600)")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the steady state")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--load", type=float, default=300.0, help="requests per second through the proxy")
    parser.add_argument("--slice", type=int, default=100, help="endpoints per EndpointSlice")
    parser.add_argument("--pool-factor", type=int, default=4, help="addresses in the pool per backend")
    parser.add_argument("--algorithm", default="round_robin")
    parser.add_argument("--health-interval", type=float, default=2.0)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(args.serve))
        return 0
    result = asyncio.run(run(args))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "churn.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    return 0 if result["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

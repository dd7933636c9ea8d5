"""Python bytecodes per request through the whole proxy: ``python -m bench bytecodes``.

Throughput on these machines moves by several percent between two identical proxy processes, so a
small change in the cost of the hot path drowns in noise. The number of bytecodes a request executes
does not: it is the same on every run. This starts the static proxy (round robin, no Redis) and the
Redis-coordinated one (the store's view, ``least_connections``, counter pushes), each with a tracer
that counts the bytecodes of every Python frame while a fixed number of keep-alive requests go
through it (from a plain asyncio client, to nginx backends as in ``bench proxy``), and prints
bytecodes per request, the functions where the two differ most, and the ratio. Tracing makes the
proxy about 50 times slower, so the background work of the coordinated proxy (pushes and reads every
``redis.counts_sync_sec``) weighs about 30 times more per request here than under real load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.proxy import BODY, ROOT, _seed_store, gobalancer_conf, process, routed_conf, start_nginx_backends
from shared.processes import service_env
from shared.redis_server import RedisServer, free_port

# Run as the proxy's entry point: count bytecodes per function between SIGUSR1 (then $BYTECODES_OUT.on
# appears) and SIGUSR2 (then $BYTECODES_OUT appears, whole: written aside and renamed).
TRACED_PROXY = """
import collections, json, os, runpy, signal, sys
counts = collections.Counter()
def tracer(frame, event, arg):
    frame.f_trace_opcodes = True
    if event == "opcode":
        code = frame.f_code
        counts[code.co_qualname + " " + code.co_filename.rsplit("/", 1)[-1]] += 1
    return tracer
def start(*_):
    counts.clear()
    sys.settrace(tracer)
    open(os.environ["BYTECODES_OUT"] + ".on", "w").close()
def stop(*_):
    sys.settrace(None)
    out = os.environ["BYTECODES_OUT"]
    with open(out + ".tmp", "w") as f:
        json.dump(counts, f)
    os.replace(out + ".tmp", out)
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
sys.argv = ["services.proxy"] + sys.argv[1:]
runpy.run_module("services.proxy", run_name="__main__", alter_sys=True)
"""


async def _requests(port: int, connections: int, per_connection: int, body: int) -> None:
    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(per_connection):
            writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(body)
        writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))


def _wait_for(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the traced proxy did not write {path} within {timeout}s")
        time.sleep(0.02)


def count_bytecodes(config: Path, port: int, out: Path, requests: int, connections: int, body: int) -> Counter[str]:
    """Bytecodes by function of a proxy started with ``config`` (listening on ``port``) while ``requests``
    keep-alive GETs of ``body``-byte responses go through it on ``connections`` connections, after a
    warm-up. Also used by the test that holds the hot path to its budget."""
    env = service_env(BYTECODES_OUT=str(out))
    cmd = [sys.executable, "-c", TRACED_PROXY, "--config", str(config)]
    with process(cmd, port, start_timeout=60.0, cwd=ROOT, env=env) as proc:  # a traced start is slow on a busy machine
        asyncio.run(_requests(port, connections, 20, body))  # warm-up: pools filled, caches specialised
        proc.send_signal(signal.SIGUSR1)
        _wait_for(out.with_name(out.name + ".on"))
        asyncio.run(_requests(port, connections, requests // connections, body))
        proc.send_signal(signal.SIGUSR2)
        _wait_for(out)
    return Counter(json.loads(out.read_text()))


def _count(name: str, config: Path, port: int, out: Path, args: argparse.Namespace) -> Counter[str]:
    counts = count_bytecodes(config, port, out, args.requests, args.connections, len(BODY))
    print(f"  {name:<20} {sum(counts.values()) / args.requests:8.1f} bytecodes per request", flush=True)
    return counts


def run(args: argparse.Namespace) -> int:
    args.requests -= args.requests % args.connections
    requests = args.requests
    with tempfile.TemporaryDirectory(prefix="gobalancer-bytecodes-") as tmp, contextlib.ExitStack() as stack:
        base = Path(tmp)
        backends, _ = start_nginx_backends(stack, base, 2)
        redis = stack.enter_context(RedisServer())
        asyncio.run(_seed_store(redis.url, "bench", backends))
        results: dict[str, Counter[str]] = {}
        for name in ("gobalancer", "gobalancer-redis-lc", "gobalancer-routed"):
            port = free_port()
            if name == "gobalancer-routed":
                text = routed_conf(port, backends)
            else:
                text = gobalancer_conf(port, backends, redis_url=redis.url if name == "gobalancer-redis-lc" else "")
            config = base / f"{name}.yaml"
            config.write_text(text)
            results[name] = _count(name, config, port, base / f"{name}.json", args)
    static, coordinated, routed = results["gobalancer"], results["gobalancer-redis-lc"], results["gobalancer-routed"]
    a, b = sum(static.values()) / requests, sum(coordinated.values()) / requests
    print("\nper request, by function (static proxy):")
    for key, n in static.most_common(args.top * 2):
        if n / requests >= 0.5:
            print(f"  {n / requests:8.1f}  {key}")
    c = sum(routed.values()) / requests
    print(f"\ngobalancer-routed (100 routes, 20 pools) - gobalancer: {c - a:+.1f} bytecodes per request")
    for key in sorted(set(static) | set(routed), key=lambda k: abs(routed[k] - static[k]), reverse=True)[:6]:
        print(f"  {(routed[key] - static[key]) / requests:+8.1f}  {key}")
    print(f"\ngobalancer-redis-lc / gobalancer: {b / a:.3f} ({b - a:+.1f} bytecodes per request)")
    print("largest differences per request (coordinated - static):")
    keys = sorted(set(static) | set(coordinated), key=lambda k: abs(coordinated[k] - static[k]), reverse=True)
    for key in keys[: args.top]:
        print(f"  {(coordinated[key] - static[key]) / requests:+8.1f}  {key}")
    report = {
        "requests": requests,
        "bytecodes_per_request": {
            "gobalancer": round(a, 1),
            "gobalancer-redis-lc": round(b, 1),
            "gobalancer-routed": round(c, 1),
        },
        "ratio": round(b / a, 4),
        "by_function": {k: round(n / requests, 2) for k, n in static.most_common() if n / requests >= 0.05},
        "differences": {k: round((coordinated[k] - static[k]) / requests, 2) for k in keys[: args.top]},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bytecodes.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out / 'bytecodes.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench bytecodes", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="requests counted per proxy (default 4000)")
    parser.add_argument("--connections", type=int, default=20, help="client connections (default 20)")
    parser.add_argument("--top", type=int, default=12, help="differences listed (default 12)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="output directory")
    return run(parser.parse_args(argv))

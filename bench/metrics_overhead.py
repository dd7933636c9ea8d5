"""What counting costs: the proxy under wrk with metrics on and off (and optionally the access log).

Same setup as ``python -m bench proxy`` (nginx backends, one proxy process, keep-alive, round robin),
but the only target is GoBalancer, run alternately with ``metrics.enabled: true`` and ``false``
(``--rounds`` times each, interleaved so machine noise hits both alike). Reported per variant: the
best and median req/s and CPU µs per request (utime+stime of the proxy process per completed request)
— on a shared machine the CPU per request is the steadier of the two — and the on/off ratios.

Because a few percent drown in the noise of a shared 2-core machine, it also times (``timeit``, no
network) the real end-of-request code of a connection with metrics on and off — the difference is
everything counting adds per request — and prints it as a share of the CPU per request measured with
metrics off; and, for scale, the traceparent generation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.proxy import (
    NGINX,
    ROOT,
    WRK,
    Result,
    cpu_ticks,
    gobalancer_conf,
    measure,
    parse_wrk_requests,
    process,
    run_wrk,
    start_nginx_backends,
)
from shared.processes import service_env
from shared.redis_server import free_port


def micro_costs(number: int = 200_000) -> dict[str, float]:
    """Nanoseconds per request of the real end-of-request code of the fast path (``Exchange.complete_fast``
    on a connection whose transports only count, no I/O) with metrics on and off, and of a traceparent."""
    import asyncio
    import timeit
    from typing import Any

    import msgspec

    from services.proxy.balancer import StaticRoundRobin
    from services.proxy.context import Context
    from services.proxy.http.client import ClientConnection
    from services.proxy.http.upstream import UpstreamConnection
    from shared.config import Config

    class Sink:
        """A transport that takes writes and nothing else."""

        def write(self, data: bytes) -> None:
            pass

        def get_write_buffer_size(self) -> int:
            return 0

        def get_extra_info(self, name: str) -> Any:
            return ("127.0.0.1", 1)

        def set_write_buffer_limits(self, high: int) -> None:
            pass

        def close(self) -> None:
            pass

    config = msgspec.convert({"listen_address": "127.0.0.1:1", "backends": [{"address": "127.0.0.1:9"}]}, Config)
    balancer = StaticRoundRobin.from_config(config)
    loop = asyncio.new_event_loop()
    try:
        ctx = Context(config, balancer, loop)
        conn = ClientConnection(ctx)
        conn.connection_made(Sink())  # type: ignore[arg-type]
        ex = conn.ex
        upstream = balancer.upstreams[0]
        up = UpstreamConnection(ctx, upstream)
        up.connection_made(Sink())  # type: ignore[arg-type]
        head, body = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nVia: 1.1 gobalancer\r\n\r\n", b"ok"

        def request_end() -> None:
            ex.first(conn.client_ip)
            ex.keep_alive = ex.open = True
            up.begin(ex)
            ex.up = up
            ex.complete_fast(up, 200, head + body)
            ctx.pool.get(upstream.address)

        def trace() -> None:
            ex._flags()

        out: dict[str, float] = {}
        for on in (True, False):
            ctx.metrics_on = on
            out["end_on_ns" if on else "end_off_ns"] = min(timeit.repeat(request_end, number=number, repeat=5))
        out = {k: v / number * 1e9 for k, v in out.items()}
        out["trace_ns"] = min(timeit.repeat(trace, number=number, repeat=3)) / number * 1e9
        return out
    finally:
        loop.close()


def side_by_side(ports: dict[str, tuple[int, int]], args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """Both variants loaded at the same time, one wrk each: whatever else the machine does hits both.

    ``ports``: variant -> (proxy port, proxy pid). Returns variant -> (req/s, CPU us per request).
    """
    import subprocess

    for port, _ in ports.values():
        run_wrk(port, 1, args.connections, args.threads)  # warm-up
    ticks = os.sysconf("SC_CLK_TCK")
    before = {v: cpu_ticks(pid) for v, (_, pid) in ports.items()}
    wrks = {
        v: subprocess.Popen(
            [WRK, f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration:.0f}s", f"http://127.0.0.1:{port}/"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for v, (port, _) in ports.items()
    }
    outputs = {v: w.communicate()[0] for v, w in wrks.items()}
    out: dict[str, tuple[float, float]] = {}
    for v, text in outputs.items():
        requests, seconds = parse_wrk_requests(text)
        user, system = cpu_ticks(ports[v][1])
        cpu = (user - before[v][0] + system - before[v][1]) / ticks
        out[v] = (requests / seconds, cpu * 1e6 / max(requests, 1))
        print(f"side by side: metrics {v:<4} {out[v][0]:>8.0f} req/s  cpu {out[v][1]:>6.1f} us/req", flush=True)
    return out


def summary(results: list[Result]) -> dict[str, float]:
    rps = [r.rps for r in results]
    cpu = [r.cpu_us_per_request for r in results]
    return {
        "rps_best": max(rps),
        "rps_median": statistics.median(rps),
        "cpu_us_best": min(cpu),
        "cpu_us_median": statistics.median(cpu),
    }


def run(args: argparse.Namespace) -> int:
    for tool in (NGINX, WRK):
        if not Path(tool).exists():
            print(f"bench metrics_overhead: {tool} not found", file=sys.stderr)
            return 2
    variants = ["on", "off"] + (["on+access_log"] if args.access_log else [])
    results: dict[str, list[Result]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="gobalancer-bench-") as tmp, contextlib.ExitStack() as stack:
        base = Path(tmp)
        backend_ports, _ = start_nginx_backends(stack, base, args.backends)
        env = service_env()
        for round_ in range(args.rounds):
            order = variants if round_ % 2 == 0 else variants[::-1]
            for variant in order:
                port = free_port()
                conf = base / f"gobalancer-{variant}.yaml"
                access_log = str(base / "access.log") if variant == "on+access_log" else ""
                metrics = f"127.0.0.1:{free_port()}"
                conf.write_text(gobalancer_conf(port, backend_ports, variant != "off", metrics, access_log))
                cmd = [sys.executable, "-m", "services.proxy", "--config", str(conf)]
                with process(cmd, port, cwd=ROOT, env=env) as proc:
                    results[variant].append(measure(f"metrics {variant}", proc.pid, port, args))
        # Side by side, twice with the start order swapped: the first-started pair member is
        # often slower here (A/A runs gave 0.78-0.86), so one order alone can be biased; still noisy.
        together: list[dict[str, tuple[float, float]]] = []
        for pair in [["on", "off"], ["off", "on"]] if args.side_by_side else []:
            with contextlib.ExitStack() as procs:
                ports: dict[str, tuple[int, int]] = {}
                for variant in pair:
                    port = free_port()
                    conf = base / f"gobalancer-side-{variant}.yaml"
                    conf.write_text(gobalancer_conf(port, backend_ports, variant == "on", f"127.0.0.1:{free_port()}"))
                    cmd = [sys.executable, "-m", "services.proxy", "--config", str(conf)]
                    ports[variant] = (port, procs.enter_context(process(cmd, port, cwd=ROOT, env=env)).pid)
                together.append(side_by_side(ports, args))
    sums = {v: summary(r) for v, r in results.items()}
    print()
    for v, s in sums.items():
        print(
            f"metrics {v:<14} req/s best {s['rps_best']:>8.0f} median {s['rps_median']:>8.0f}   "
            f"cpu us/req best {s['cpu_us_best']:>6.1f} median {s['cpu_us_median']:>6.1f}"
        )
    on, off = sums["on"], sums["off"]
    ratios = {
        "rps_best_on_over_off": on["rps_best"] / off["rps_best"],
        "rps_median_on_over_off": on["rps_median"] / off["rps_median"],
        "cpu_best_on_over_off": on["cpu_us_best"] / off["cpu_us_best"],
        "cpu_median_on_over_off": on["cpu_us_median"] / off["cpu_us_median"],
    }
    print(
        f"\non/off: throughput {ratios['rps_best_on_over_off']:.3f} (best) {ratios['rps_median_on_over_off']:.3f} "
        f"(median); cpu per request {ratios['cpu_best_on_over_off']:.3f} (best) "
        f"{ratios['cpu_median_on_over_off']:.3f} (median)   [budget: throughput >= 0.95]"
    )
    side: dict[str, float] = {}
    if together:
        rps = [t["on"][0] / t["off"][0] for t in together]
        cpu = [t["on"][1] / t["off"][1] for t in together]
        side = {"throughput": statistics.geometric_mean(rps), "cpu_per_request": statistics.geometric_mean(cpu)}
        print(
            f"side by side on/off (geometric mean of both start orders): throughput {side['throughput']:.3f} "
            f"({' '.join(f'{r:.3f}' for r in rps)}), cpu per request {side['cpu_per_request']:.3f} "
            f"({' '.join(f'{c:.3f}' for c in cpu)})"
        )
    micro = micro_costs()
    added = micro["end_on_ns"] - micro["end_off_ns"]
    print(
        f"end-of-request code: {micro['end_on_ns']:.0f} ns with metrics on, {micro['end_off_ns']:.0f} ns off: "
        f"counting adds {added:.0f} ns/request = {added / 1000 / off['cpu_us_median']:.1%} of the median CPU per "
        f"request with metrics off\ntraceparent generation (on unless tracing.propagate is false): "
        f"{micro['trace_ns']:.0f} ns/request"
    )
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "duration_sec": args.duration,
        "rounds": args.rounds,
        "connections": args.connections,
        "cpus": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    payload = {"meta": meta, "summary": sums, "ratios": ratios, "micro_ns": micro, "side_by_side": side}
    payload["runs"] = {v: [r.__dict__ for r in rs] for v, rs in results.items()}
    (out_dir / "metrics_overhead.json").write_text(json.dumps(payload, indent=2))
    print(f"wrote {out_dir / 'metrics_overhead.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench metrics_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of wrk per run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per variant, interleaved (default 3)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--backends", type=int, default=2, help="nginx backends (default 2)")
    parser.add_argument(
        "--side-by-side", action="store_true", help="also load both variants at once (one wrk each) and compare"
    )
    parser.add_argument("--access-log", action="store_true", help="also run metrics on + access log to a file")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="output directory")
    return run(parser.parse_args(argv))

"""Proxy benchmark: wrk through GoBalancer, HAProxy and nginx (configured alike) and directly to a backend.

All processes are local and bound to 127.0.0.1. Backends are nginx instances returning a small fixed
body; every load balancer does round robin with keep-alive pooling to them; each gets the same wrk
run. CPU per request is the (utime + stime) of the load balancer's process tree during the run
divided by the requests wrk completed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.proxy_png import bar_chart
from shared.processes import service_env, stop_process
from shared.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[1]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
BODY = "x" * 100  # response body size of the backends


@dataclass
class Result:
    target: str
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us_per_request: float
    cpu_user_us_per_request: float = 0.0
    cpu_system_us_per_request: float = 0.0
    ratio_rps_to_haproxy: float = 0.0
    ratio_cpu_to_haproxy: float = 0.0
    ratio_p99_to_haproxy: float = 0.0


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


def tree_pids(pid: int) -> list[int]:
    pids = [pid]
    for p in pids:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    children = Path(f"/proc/{p}/task/{tid}/children").read_text().split()
                    pids.extend(int(c) for c in children if int(c) not in pids)
    return pids


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(user, system) clock ticks of the process tree rooted at ``pid``."""
    user = system = 0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{p}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            user += int(fields[11])
            system += int(fields[12])
    return user, system


def nginx_user_line() -> str:
    return "user root;" if os.geteuid() == 0 else ""


@contextlib.contextmanager
def process(
    args: list[str], port: int, *, start_timeout: float = 10.0, **kwargs: Any
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)
    try:
        wait_port(port, proc, start_timeout)
        yield proc
    finally:
        stop_process(proc)


def nginx_conf(prefix: Path, http: str, workers: int = 1) -> str:
    """One nginx in the foreground (``workers`` workers, its files under ``prefix``); ``http``: the rest of
    its http block. One worker runs without a master process."""
    return f"""{nginx_user_line()}
worker_processes {workers};
daemon off;
master_process {"off" if workers == 1 else "on"};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
{http}}}
"""


def nginx_backend_conf(prefix: Path, port: int, body_size: int = len(BODY)) -> str:
    """A backend answering every request with ``body_size`` bytes: from the config for the default
    small body, from a file (sent with sendfile) for large ones."""
    if body_size == len(BODY):
        location = f'location / {{ default_type text/plain; return 200 "{BODY}"; }}'
    else:
        (prefix / "body").write_bytes(b"x" * body_size)
        location = f"location / {{ default_type text/plain; root {prefix}; try_files /body =404; }}"
    return nginx_conf(
        prefix,
        f"""    keepalive_timeout 60s;
    sendfile on;
    server {{
        listen 127.0.0.1:{port} reuseport;
        {location}
    }}
""",
    )


def start_nginx_backends(
    stack: contextlib.ExitStack, base: Path, count: int, body_size: int = len(BODY)
) -> tuple[list[int], list[int]]:
    """``count`` nginx backends under ``base``, stopped with ``stack``: their ports and pids."""
    ports: list[int] = []
    pids: list[int] = []
    for i in range(count):
        prefix = base / f"backend{i}"
        (prefix / "tmp").mkdir(parents=True)
        port = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_backend_conf(prefix, port, body_size))
        proc = stack.enter_context(process([NGINX, "-p", str(prefix), "-c", str(conf)], port))
        ports.append(port)
        pids.append(proc.pid)
    return ports, pids


def nginx_lb_conf(prefix: Path, port: int, backends: list[int], workers: int = 1) -> str:
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in backends)
    return nginx_conf(
        prefix,
        f"""    upstream backends {{
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
        }}
    }}
""",
        workers,
    )


def haproxy_conf(port: int, backends: list[int], threads: int = 1) -> str:
    servers = "\n".join(f"    server s{i} 127.0.0.1:{p}" for i, p in enumerate(backends))
    return f"""global
    nbthread {threads}
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    balance roundrobin
{servers}
"""


def gobalancer_conf(
    port: int,
    backends: list[int],
    metrics: bool = True,
    metrics_address: str = "",
    access_log: str = "",
    redis_url: str = "",
    workers: int = 1,
) -> str:
    """``metrics_address``: where /metrics is served (none by default); ``access_log``: a file to log to;
    ``redis_url``: coordinated through that Redis (the store seeded by :func:`_seed_store`)."""
    lines = [f"listen_address: 127.0.0.1:{port}", "backends:"]
    lines += [f"  - address: 127.0.0.1:{p}" for p in backends]
    lines += ["logging:"]
    if access_log:
        lines += ["  access_log: true", f"  access_log_file: {access_log}"]
    lines += ["  level: warning", "proxy:", f"  workers: {workers}"]
    listen = metrics_address or '""'
    lines += ["metrics:", f"  enabled: {'true' if metrics else 'false'}", f"  proxy_listen_address: {listen}"]
    if redis_url:
        lines += ["redis:", f"  url: {redis_url}", "  namespace: bench", "algorithm: least_connections"]
    return "\n".join(lines) + "\n"


ROUTED_POOLS = 20
ROUTED_ROUTES = 100


def routed_conf(port: int, backends: list[int], metrics: bool = True, workers: int = 1) -> str:
    """``gobalancer_conf`` with routing (issue 20): 20 pools (each of the same backends) and 100 routes,
    exact hosts, wildcards and prefixes of several lengths; the benchmark's requests (``Host: bench`` or
    ``127.0.0.1:port``, path ``/``) match the ``/`` route of a host that has deeper prefixes too."""
    lines = gobalancer_conf(port, backends, metrics, workers=workers).splitlines()
    servers = "[" + ", ".join(f'{{address: "127.0.0.1:{p}"}}' for p in backends) + "]"
    lines.append("pools:")
    lines += [f"  pool-{i:02d}: {{backends: {servers}}}" for i in range(ROUTED_POOLS)]
    lines.append("routes:")
    routes: list[str] = []
    for host in ("bench", "127.0.0.1"):
        for j, prefix in enumerate(("/api", "/api/v2", "/static", "/v1/users")):
            routes.append(
                f"{{name: {host.replace('.', '-')}-{j}, host: {host}, path_prefix: {prefix}, pool: pool-0{j}}}"
            )
        routes.append(f"{{name: {host.replace('.', '-')}-root, host: {host}, pool: pool-07}}")
    i = 0
    while len(routes) < ROUTED_ROUTES:
        host = f"svc-{i // 4:02d}.example.com" if i % 5 else f"*.zone-{i:02d}.example.net"
        prefix = ("/", "/api", "/api/v1", "/assets", "/login")[i % 5]
        routes.append(f'{{name: r-{i:03d}, host: "{host}", path_prefix: {prefix}, pool: pool-{i % ROUTED_POOLS:02d}}}')
        i += 1
    lines += [f"  - {r}" for r in routes]
    return "\n".join(lines) + "\n"


def limited_conf(port: int, backends: list[int], metrics: bool = True, workers: int = 1) -> str:
    """``gobalancer_conf`` with one rate-limit rule on the client's address (issue 21), its rate far above
    what the benchmark sends: every request is checked and admitted."""
    rule = "rate_limits: {rules: [{name: per-client, key: client_ip, rate: 1000000000/s}]}"
    return gobalancer_conf(port, backends, metrics, workers=workers) + rule + "\n"


async def _seed_store(url: str, namespace: str, backends: list[int]) -> None:
    """The coordinated setup: backends in the store, healthy, and least_connections for every proxy."""
    from shared.models import AlgorithmSetting, Backend
    from shared.store import Store

    store = Store.from_url(url, namespace)
    try:
        for p in backends:
            await store.upsert_backend(Backend(address=f"127.0.0.1:{p}", origin="static"))
            await store.set_health(f"127.0.0.1:{p}", "up")
        await store.set_algorithm(AlgorithmSetting(name="least_connections"))
    finally:
        await store.close()


def parse_ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk_requests(out: str) -> tuple[int, float]:
    """Requests completed and the seconds they took, from wrk's output."""
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if m is None:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    return int(m.group(1)), float(m.group(2)) * (0.001 if m.group(3) == "ms" else 1.0)


def run_wrk(port: int, seconds: float, connections: int, threads: int) -> tuple[int, float, float, float, int]:
    out = subprocess.run(
        [WRK, f"-t{threads}", f"-c{connections}", f"-d{seconds:.0f}s", "--latency", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return parse_wrk(out)


def parse_wrk(out: str) -> tuple[int, float, float, float, int]:
    """(requests, seconds, p50 ms, p99 ms, errors) from the output of ``wrk --latency``."""
    requests, elapsed = parse_wrk_requests(out)
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    p50 = parse_ms(*re.fullmatch(r"([\d.]+)(\w+)", lat["50"]).groups())  # type: ignore[union-attr]
    p99 = parse_ms(*re.fullmatch(r"([\d.]+)(\w+)", lat["99"]).groups())  # type: ignore[union-attr]
    errors = 0
    if e := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(e.group(1))
    if e := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(x) for x in e.groups())
    return requests, elapsed, p50, p99, errors


def _proxy_cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "services.proxy", "--config", str(config)]


def measure(name: str, pid: int, port: int, args: argparse.Namespace) -> Result:
    run_wrk(port, 1, args.connections, args.threads)  # warm-up: pools filled, code paths hot
    ticks = os.sysconf("SC_CLK_TCK")
    user0, sys0 = cpu_ticks(pid)
    requests, elapsed, p50, p99, errors = run_wrk(port, args.duration, args.connections, args.threads)
    user1, sys1 = cpu_ticks(pid)
    user_s, sys_s = (user1 - user0) / ticks, (sys1 - sys0) / ticks
    per_request = 1e6 / max(requests, 1)
    result = Result(
        target=name,
        requests=requests,
        seconds=elapsed,
        rps=requests / elapsed,
        p50_ms=p50,
        p99_ms=p99,
        errors=errors,
        cpu_us_per_request=(user_s + sys_s) * per_request,
        cpu_user_us_per_request=user_s * per_request,
        cpu_system_us_per_request=sys_s * per_request,
    )
    print(
        f"  {name:<20} {result.rps:>8.0f} req/s  p50 {p50:>6.2f} ms  p99 {p99:>6.2f} ms  "
        f"cpu {result.cpu_us_per_request:>6.1f} us/req (user {result.cpu_user_us_per_request:>5.1f}, "
        f"sys {result.cpu_system_us_per_request:>5.1f})  errors {errors}",
        flush=True,
    )
    return result


def median_result(name: str, rounds: list[Result]) -> Result:
    """Per-field medians over the rounds (requests and errors summed)."""

    def med(field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in rounds))

    return Result(
        target=name,
        requests=sum(r.requests for r in rounds),
        seconds=sum(r.seconds for r in rounds),
        rps=med("rps"),
        p50_ms=med("p50_ms"),
        p99_ms=med("p99_ms"),
        errors=sum(r.errors for r in rounds),
        cpu_us_per_request=med("cpu_us_per_request"),
        cpu_user_us_per_request=med("cpu_user_us_per_request"),
        cpu_system_us_per_request=med("cpu_system_us_per_request"),
    )


def run(args: argparse.Namespace) -> int:
    for tool in (NGINX, HAPROXY, WRK):
        if not Path(tool).exists():
            print(f"bench proxy: {tool} not found", file=sys.stderr)
            return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    per_round: dict[str, list[Result]] = {}
    with tempfile.TemporaryDirectory(prefix="gobalancer-bench-") as tmp, contextlib.ExitStack() as stack:
        base = Path(tmp)
        backend_ports, backend_pids = start_nginx_backends(stack, base, args.backends, args.body_size)
        workers = args.workers

        # Each target: (name, command, its config file, the file's text for a listening port, popen options).
        targets: list[tuple[str, list[str], Path, Callable[[int], str], dict[str, Any]]] = []
        gb_kwargs: dict[str, Any] = {"cwd": ROOT, "env": service_env()}
        gb_file = base / "gobalancer.yaml"
        metrics = args.metrics == "on"
        static = _proxy_cmd(gb_file)
        targets.append(
            (
                "gobalancer",
                static,
                gb_file,
                lambda p: gobalancer_conf(p, backend_ports, metrics, workers=workers),
                gb_kwargs,
            )
        )
        # The same proxy with more to do per request, run only when named: routing by host and path over
        # 100 routes to 20 pools (issue 20), one rate-limit rule on client_ip under its limit (issue 21);
        # each within 3 % of the plain proxy.
        variants: dict[str, Callable[..., str]] = {"gobalancer-routed": routed_conf, "gobalancer-limited": limited_conf}
        for name, conf in variants.items():
            if only and name in only:
                variant_file = base / f"{name}.yaml"
                config_text = functools.partial(conf, backends=backend_ports, metrics=metrics, workers=workers)
                targets.append((name, _proxy_cmd(variant_file), variant_file, config_text, gb_kwargs))
        # The same proxy coordinated through Redis: the store's view, least_connections on global in-flight
        # counts, the replica's batched counter pushes (issue 4: within 5 % of the static round robin).
        if not only or "gobalancer-redis-lc" in only:
            redis = stack.enter_context(RedisServer())
            asyncio.run(_seed_store(redis.url, "bench", backend_ports))
            lc_file = base / "gobalancer-redis.yaml"

            def lc_text(p: int) -> str:
                return gobalancer_conf(p, backend_ports, metrics, redis_url=redis.url, workers=workers)

            targets.append(("gobalancer-redis-lc", _proxy_cmd(lc_file), lc_file, lc_text, gb_kwargs))
        ha_file = base / "haproxy.cfg"
        targets.append(
            ("haproxy", [HAPROXY, "-f", str(ha_file)], ha_file, lambda p: haproxy_conf(p, backend_ports, workers), {})
        )
        prefix = base / "nginx-lb"
        (prefix / "tmp").mkdir(parents=True)
        lb_file = prefix / "nginx.conf"
        targets.append(
            (
                "nginx",
                [NGINX, "-p", str(prefix), "-c", str(lb_file)],
                lb_file,
                lambda p: nginx_lb_conf(prefix, p, backend_ports, workers),
                {},
            )
        )
        targets = [t for t in targets if not only or t[0] in only]

        # Rounds: every target is started afresh in each round (a new process: its own hash seed and
        # memory layout, which alone move a Python process's throughput by a few percent) and the
        # order alternates, so slow drifts of the machine hit every target alike. Medians are reported.
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", flush=True)
            for name, cmd, conf_file, text, kwargs in targets if r % 2 == 0 else targets[::-1]:
                port = free_port()
                conf_file.write_text(text(port))
                with process(cmd, port, **kwargs) as proc:
                    per_round.setdefault(name, []).append(measure(name, proc.pid, port, args))
            if not only or "direct" in only:
                per_round.setdefault("direct", []).append(measure("direct", backend_pids[0], backend_ports[0], args))

    results = [median_result(name, rounds) for name, rounds in per_round.items()]
    print(f"\nmedians over {args.rounds} round(s):")
    for res in results:
        print(
            f"  {res.target:<20} {res.rps:>8.0f} req/s  p50 {res.p50_ms:>6.2f} ms  p99 {res.p99_ms:>6.2f} ms  "
            f"cpu {res.cpu_us_per_request:>6.1f} us/req  errors {res.errors}"
        )
    ha = next((r for r in results if r.target == "haproxy"), None)
    if ha is not None:
        for res in results:
            res.ratio_rps_to_haproxy = res.rps / ha.rps if ha.rps else 0.0
            res.ratio_cpu_to_haproxy = res.cpu_us_per_request / ha.cpu_us_per_request if ha.cpu_us_per_request else 0.0
            res.ratio_p99_to_haproxy = res.p99_ms / ha.p99_ms if ha.p99_ms else 0.0
        print("\nratios to haproxy (throughput / cpu per request / p99):")
        for res in results:
            print(
                f"  {res.target:<20} {res.ratio_rps_to_haproxy:5.2f}x  {res.ratio_cpu_to_haproxy:5.2f}x  "
                f"{res.ratio_p99_to_haproxy:5.2f}x"
            )
    targets_met = _issue16_targets(results, args.body_size)
    coordination: dict[str, object] = {}
    if "gobalancer" in per_round and "gobalancer-redis-lc" in per_round:
        # Issue 4: Redis-coordinated least_connections vs the static round robin, round by round.
        ratios = [
            lc.rps / st.rps for st, lc in zip(per_round["gobalancer"], per_round["gobalancer-redis-lc"], strict=True)
        ]
        median = statistics.median(ratios)
        met = 1.0 - median <= 0.05
        coordination = {
            "ratio_rps_per_round": [round(x, 4) for x in ratios],
            "median_ratio_rps": round(median, 4),
            "apart_pct": round(100 * (1.0 - median), 2),
            "target_pct": 5.0,
            "met": met,
        }
        print(
            f"\nredis-coordinated least_connections / static round robin, per round: "
            f"{' '.join(f'{x:.3f}' for x in ratios)}\n  median {median:.3f}: "
            f"{100 * (1.0 - median):.1f} % apart (target <= 5 %: {'met' if met else 'NOT met'})"
        )
    meta = {
        "duration_sec": args.duration,
        "rounds": args.rounds,
        "connections": args.connections,
        "wrk_threads": args.threads,
        "backends": args.backends,
        "body_bytes": args.body_size,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    report = {
        "meta": meta,
        "results": [asdict(r) for r in results],
        "rounds": {name: [asdict(r) for r in rounds] for name, rounds in per_round.items()},
        "coordination": coordination,
        "targets": targets_met,
    }
    name = (
        "proxy.json"
        if (args.workers, args.body_size) == (1, len(BODY))
        else f"proxy-w{args.workers}-b{args.body_size}.json"
    )
    (out_dir / name).write_text(json.dumps(report, indent=2))
    png = bar_chart(
        "PROXY BENCHMARK (WRK, 127.0.0.1)",
        [r.target for r in results],
        {
            "REQ/S": [r.rps for r in results],
            "P50 MS": [r.p50_ms for r in results],
            "P99 MS": [r.p99_ms for r in results],
            "CPU US/REQ": [r.cpu_us_per_request for r in results],
        },
    )
    (out_dir / "proxy.png").write_bytes(png)
    print(f"\nwrote {out_dir / name} and {out_dir / 'proxy.png'}")
    return 0


def _issue16_targets(results: list[Result], body_size: int) -> dict[str, object]:
    """Issue 16's targets for gobalancer against HAProxy in this run: small responses throughput >=
    0.85x, CPU per request <= 1.2x, p99 <= 1.3x; large responses (64 KiB, 1 MiB) throughput >= 0.9x."""
    gb = next((r for r in results if r.target == "gobalancer"), None)
    if gb is None or not gb.ratio_rps_to_haproxy:
        return {}
    if body_size <= 4096:
        checks = {
            "throughput >= 0.85x": gb.ratio_rps_to_haproxy >= 0.85,
            "cpu per request <= 1.2x": gb.ratio_cpu_to_haproxy <= 1.2,
            "p99 <= 1.3x": gb.ratio_p99_to_haproxy <= 1.3,
        }
    else:
        checks = {"throughput >= 0.9x": gb.ratio_rps_to_haproxy >= 0.9}
    print(
        "\nissue 16 targets (gobalancer vs haproxy): "
        + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in checks.items())
    )
    return {k: bool(v) for k, v in checks.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench proxy", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of wrk per target and round (default 5)")
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds, each starting every target afresh; medians reported (default 5)"
    )
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--backends", type=int, default=2, help="nginx backends (default 2)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gobalancer proxy.workers, HAProxy nbthread and nginx worker_processes (default 1)",
    )
    parser.add_argument(
        "--body-size",
        type=int,
        default=len(BODY),
        help=f"response body bytes (default {len(BODY)}; e.g. 65536, 1048576)",
    )
    parser.add_argument(
        "--metrics", choices=("on", "off"), default="on", help="gobalancer's metrics.enabled (default on)"
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated subset: gobalancer,gobalancer-redis-lc,haproxy,nginx,direct; gobalancer-routed "
        "(100 routes, 20 pools) and gobalancer-limited (one rate-limit rule) run only when named",
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="output directory")

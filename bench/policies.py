"""Pick and rebuild cost per policy at 10, 1,000 and 100,000 backends: ``python -m bench policies``.

For each policy and pool size: the build time (``build_ms``: the policy alone, from its candidates,
cold caches), the rebuild time after one backend is removed (``rebuild_ms``: the view's candidates
plus the policy, what every view change costs; ``where``: on the event loop, or in a worker thread
when ``build_cost`` exceeds ``SYNC_BUILD_MAX_SEC``), and the cost of one pick
(timeit-style: the best of several repeats of a timed loop, in CPU ns per pick). Count-based policies
are also timed for a whole request cycle (acquire, then released), because their counts change on
every request. The pool has random weights 1..10 and a few hundred requests in flight, so the
count-based structures and the bounded-load walk are not in their trivial empty state.
The original GoBalancer is O(N): round robin 57.8 ns at 10 and 2,230 ns at 1,000 backends.

At the largest size a StoreBalancer is also driven on an asyncio loop: one backend removed, and
the loop's largest stall while the rebuild runs (``loop_gap_ms``, a ticker sleeping 2 ms) beside
the rebuild's wall time (``loop_rebuild_ms``) — the stall is what a synchronous rebuild would cost.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from services.proxy.balancer import Balancer, StaticRoundRobin, Upstream
from services.proxy.policies import POLICIES, Candidate, MutableCounts, PolicyEnv, build_cost, build_policy
from services.proxy.store_balancer import SYNC_BUILD_MAX_SEC, StoreBalancer
from services.proxy.view import LocalView, compute_candidates
from shared.config import Config
from shared.models import AlgorithmSetting, Backend, BackendView, Event, Health, Snapshot
from shared.replica import Replica
from shared.store import Store

SIZES = (10, 1_000, 100_000)
COUNT_POLICIES = ("least_connections", "weighted_least_connections", "p2c", "ewma", "ip_hash")


def _best_ns(run: Any, loops: int, repeats: int) -> float:
    """Best of ``repeats`` timed loops, in CPU ns per iteration: process CPU time, not wall time, so
    that other processes competing for a shared machine's cores do not inflate the figure."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time_ns()
        run(loops)
        best = min(best, (time.process_time_ns() - start) / loops)
    return best


def measure(name: str, n: int, loops: int, repeats: int) -> dict[str, Any]:
    rng = random.Random(n)
    candidates = [Candidate(a, rng.randint(1, 10)) for a in _addresses(n)]
    counts = MutableCounts()
    env = PolicyEnv(counts=counts, rng=random.Random(1), clock=time.time)
    for c in candidates[: min(n, 50)]:
        env.latency[c.address] = (0.01 + rng.random() * 0.01, time.time())
    start = time.perf_counter()
    policy = build_policy(name, candidates, env)
    build_ms = (time.perf_counter() - start) * 1000
    rebuild_ms = measure_rebuild(name, candidates, env)
    keys = [f"192.168.{i // 256}.{i % 256}" for i in range(4096)]
    # a few hundred requests in flight
    for i in range(300):
        chosen = policy.pick(keys[i])
        assert chosen is not None
        counts.add(chosen, 1)
        policy.count_changed(chosen)

    def picks(loops: int) -> None:
        pick = policy.pick
        for i in range(loops):
            pick(keys[i & 4095])

    def cycles(loops: int) -> None:
        # As the proxy's hot path drives a policy: acquire, then released at the request's end.
        acquire, changed, released, add = policy.acquire, policy.count_changed, policy.released, counts.add
        counted = policy.counts_acquired
        for i in range(loops):
            chosen = acquire(keys[i & 4095])
            assert chosen is not None
            add(chosen, 1)
            if not counted:
                changed(chosen)
            add(chosen, -1)
            released(chosen)

    row: dict[str, Any] = {
        "policy": name,
        "backends": n,
        "build_ms": round(build_ms, 2),
        "rebuild_ms": round(rebuild_ms, 2),
        "where": "thread" if build_cost(name, n) > SYNC_BUILD_MAX_SEC else "loop",
        "pick_ns": round(_best_ns(picks, loops, repeats), 1),
    }
    if name in COUNT_POLICIES:
        row["cycle_ns"] = round(_best_ns(cycles, loops, repeats), 1)
    return row


def _view(candidates: list[Candidate]) -> LocalView:
    view = LocalView()
    backends = {
        c.address: BackendView(backend=Backend(address=c.address, weight=c.weight), health=Health(status="up"))
        for c in candidates
    }
    view.apply(Snapshot(version=1, backends=backends, algorithm=AlgorithmSetting()))
    return view


def measure_rebuild(name: str, candidates: list[Candidate], env: PolicyEnv) -> float:
    """Wall ms of what one view change costs: one backend removed, candidates and policy rebuilt."""
    view = _view(candidates)
    view.candidates(time.time(), 0.0)  # the previous view (warm state)
    view.apply(Event(version=2, kind="backend_removed", address=candidates[len(candidates) // 2].address))
    start = time.perf_counter()
    result = compute_candidates(view.state(), time.time(), 0.0)
    build_policy(name, result.candidates, env)
    return (time.perf_counter() - start) * 1000


def _addresses(n: int) -> list[str]:
    return [f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}:80" for i in range(n)]


def _store_balancer(name: str, backends: dict[str, BackendView]) -> StoreBalancer:
    """A StoreBalancer (policy ``name``) fed ``backends`` by hand; its store reaches no Redis (close
    ``balancer.store`` when done). Call it on a running loop."""
    store = Store.from_url("redis://127.0.0.1:1/0", "bench")
    balancer = StoreBalancer(Config(), store, Replica(store, "proxy", ttl=5.0, heartbeat=1.0, replica_id="bench"))
    balancer.apply(Snapshot(version=1, backends=backends, algorithm=AlgorithmSetting(name=name, updated_at=1.0)))  # type: ignore[arg-type]
    return balancer


def measure_loop_gap(name: str, n: int) -> dict[str, Any]:
    """A StoreBalancer on an asyncio loop with ``n`` backends: one backend removed; the loop's largest
    stall during the rebuild, and the rebuild's wall time."""

    async def run() -> dict[str, Any]:
        addresses = _addresses(n)
        backends = {a: BackendView(backend=Backend(address=a), health=Health(status="up")) for a in addresses}
        balancer = _store_balancer(name, backends)
        await asyncio.sleep(0)
        await balancer.built()
        balancer.rebuild()  # warm: the first build after a snapshot creates every Candidate
        stop = asyncio.Event()
        gap = 0.0

        async def ticker() -> None:
            nonlocal gap
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.002)
                now = time.perf_counter()
                gap = max(gap, now - last)
                last = now

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)
        gap = 0.0
        before = balancer.rebuilds
        start = time.perf_counter()
        balancer.apply(Event(version=2, kind="backend_removed", address=addresses[n // 2]))
        while balancer.rebuilds == before:
            await asyncio.sleep(0.002)
            await balancer.built()
        wall = time.perf_counter() - start
        stop.set()
        await task
        await balancer.store.close()
        return {
            "policy": name,
            "backends": n,
            "loop_rebuild_ms": round(wall * 1000, 1),
            "loop_gap_ms": round(gap * 1000, 1),
        }

    return asyncio.run(run())


def measure_balancer(name: str, n: int, loops: int, repeats: int, equal: bool = False) -> dict[str, Any]:
    """One request's whole cost in the StoreBalancer the proxy calls: pick (the request starts) + finished
    (in-flight bookkeeping, outlier detection, the latency estimate for ewma), with
    50 requests in flight as in the proxy benchmark. No Redis is reached: the view is fed by hand and
    no background task runs. It runs on an asyncio loop, as in the proxy (the fast pick path relies
    on the loop's timer for time-based changes). ``name`` "static" is the StaticRoundRobin a proxy
    without Redis uses, for reference; ``equal`` gives every backend weight 1 (random 1-10 otherwise).

    Also counted: the bytecodes one request executes there (``balancer_cycle_bytecodes``), which,
    unlike times, do not vary from run to run. In a proxy under load a bytecode costs about three
    times what it costs in this loop (see bench/README.md), so this is the number to watch.
    """

    async def run() -> tuple[float, float]:
        rng = random.Random(n)
        addresses = _addresses(n)
        balancer: Balancer
        if name == "static":
            balancer = StaticRoundRobin([Upstream.from_address(a) for a in addresses])
        else:
            backends = {
                a: BackendView(
                    backend=Backend(address=a, weight=1 if equal else rng.randint(1, 10)), health=Health(status="up")
                )
                for a in addresses
            }
            sb = _store_balancer(name, backends)
            sb.rebuild()
            balancer = sb
        keys = [f"192.168.{i // 256}.{i % 256}" for i in range(4096)]
        pick, finished = balancer.pick, balancer.finished
        held: collections.deque[Upstream] = collections.deque()
        for i in range(50):
            upstream = pick(keys[i])
            assert upstream is not None
            held.append(upstream)

        def cycles(loops: int) -> None:
            for i in range(loops):
                finished(held.popleft(), True, 0.002)
                upstream = pick(keys[i & 4095])
                assert upstream is not None
                held.append(upstream)

        ns = _best_ns(cycles, loops, repeats)
        bytecodes = _bytecodes(cycles, 200) / 200
        if isinstance(balancer, StoreBalancer):
            await balancer.store.close()
        return ns, bytecodes

    ns, bytecodes = asyncio.run(run())
    label = f"{name} (equal weights)" if equal else name
    return {
        "policy": label,
        "backends": n,
        "balancer_cycle_ns": round(ns, 1),
        "balancer_cycle_bytecodes": round(bytecodes, 1),
    }


def _bytecodes(run: Callable[[int], None], loops: int) -> float:
    """Bytecodes executed by the functions ``run(loops)`` calls (its own loop not counted)."""
    count = 0

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if frame.f_code is run.__code__:
            return None  # the driving loop itself
        frame.f_trace_opcodes = True
        if event == "opcode":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        run(loops)
    finally:
        sys.settrace(None)
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench policies", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="pool sizes, comma-separated")
    parser.add_argument("--policies", default=",".join(POLICIES), help="policies, comma-separated")
    parser.add_argument("--loops", type=int, default=20_000, help="picks per timed loop")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default="bench/results/policies.json", help="where to write the results")
    args = parser.parse_args(argv)
    rows = []
    print(
        f"{'policy':28} {'backends':>9} {'build ms':>10} {'rebuild ms':>11} {'where':>7} {'pick ns':>9} {'cycle ns':>9}"
    )
    for name in args.policies.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            row = measure(name, n, args.loops, args.repeats)
            rows.append(row)
            cycle = f"{row['cycle_ns']:>9.0f}" if "cycle_ns" in row else f"{'-':>9}"
            print(
                f"{name:28} {n:>9,} {row['build_ms']:>10.1f} {row['rebuild_ms']:>11.1f} {row['where']:>7}"
                f" {row['pick_ns']:>9.0f} {cycle}",
                flush=True,
            )
    largest = max(int(s) for s in args.sizes.split(","))
    print(
        f"\nStoreBalancer on an asyncio loop, {largest:,} backends, one removed: rebuild wall ms, largest loop stall ms"
    )
    gap_rows = []
    for name in args.policies.split(","):
        row = measure_loop_gap(name, largest)
        gap_rows.append(row)
        print(f"{name:28} {row['loop_rebuild_ms']:>10.1f} {row['loop_gap_ms']:>9.1f}", flush=True)
    print("\nwhole request through StoreBalancer (pick + finished): CPU ns, bytecodes")
    balancer_rows = []
    cases = [("static", False)] + [(name, False) for name in args.policies.split(",")]
    cases.append(("least_connections", True))
    for name, equal in cases:
        for n in (2, 10, 1000):
            row = measure_balancer(name, n, args.loops, args.repeats, equal)
            balancer_rows.append(row)
            print(
                f"{row['policy']:28} {n:>9,} {row['balancer_cycle_ns']:>9.0f} {row['balancer_cycle_bytecodes']:>9.0f}",
                flush=True,
            )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "python": sys.version.split()[0],
                "machine": platform.machine(),
                "unit": "CPU ns (process time) per iteration, best of repeats",
                "results": rows,
                "loop_gap": gap_rows,
                "balancer": balancer_rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

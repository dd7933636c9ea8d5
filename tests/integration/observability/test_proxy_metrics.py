"""/metrics of a real proxy process: exact counts per backend and status class after traffic, metrics off,
and (with Redis) the store's view version, sync lag, Redis reachability and the replica's totals."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from shared.models import Backend as StoredBackend
from shared.redis_server import free_port
from shared.store import Store
from tests.helpers import eventually
from tests.integration.observability.scrape import named, scrape
from tests.integration.proxy.backends import Backend, Backends, read_response, status
from tests.integration.proxy.test_process import proxy_process, wait_listening


def raw_request(code: int) -> bytes:
    return b"GET /%d HTTP/1.1\r\nHost: test\r\n\r\n" % code


async def send_all(port: int, codes: list[int]) -> list[int]:
    """All requests on one keep-alive connection, in order; the statuses received."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = []
    try:
        for code in codes:
            writer.write(raw_request(code))
            got.append((await asyncio.wait_for(read_response(reader), 5)).status)
    finally:
        writer.close()
    return got


def dead_address() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens: connect refused


CODES = [200, 200, 200, 201, 302, 404, 404, 500, 503, 200, 204, 200]


async def test_counts_per_backend_and_class(tmp_path: Path, backends: Backends) -> None:
    b1 = await backends.add(Backend(status, name="b1"))
    b2 = await backends.add(Backend(status, name="b2"))
    assert isinstance(b1, Backend) and isinstance(b2, Backend)
    dead = dead_address()
    metrics = f"127.0.0.1:{free_port()}"
    extra = f"metrics:\n  proxy_listen_address: {metrics}\nproxy:\n  retry_budget: 1.0\n"
    with proxy_process(tmp_path, [b1.address, b2.address, dead], extra) as (_, port):
        await wait_listening(port)
        assert await send_all(port, CODES) == CODES
        # a request the proxy refuses itself
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        assert (await asyncio.wait_for(read_response(r), 5)).status == 400
        w.close()

        samples = await eventually(lambda: scrape(metrics), message="metrics served")

    requests = named(samples, "gobalancer_proxy_backend_requests_total")
    for b in (b1, b2):
        want = Counter(f"{int(req.target.strip('/')) // 100}xx" for req in b.requests)
        got = {dict(labels)["class"]: v for labels, v in requests.items() if dict(labels)["backend"] == b.address}
        assert got == want, (b.name, got, want)
        lb = (("backend", b.address),)
        assert samples[("gobalancer_proxy_backend_request_duration_seconds_count", lb)] == len(b.requests)
        assert samples[("gobalancer_proxy_backend_upstream_ttfb_seconds_count", lb)] == len(b.requests)
        assert samples[("gobalancer_proxy_backend_received_bytes_total", lb)] == sum(
            len(raw_request(int(req.target.strip("/")))) for req in b.requests
        )
        assert samples[("gobalancer_proxy_backend_sent_bytes_total", lb)] > len(b.requests) * 40
        assert samples[("gobalancer_proxy_backend_inflight", lb)] == 0
    assert len(b1.requests) + len(b2.requests) == len(CODES)
    # every attempt on the dead backend: a connect error, an "error" outcome and a retry elsewhere
    ld = (("backend", dead),)
    failures = samples[("gobalancer_proxy_backend_connect_errors_total", ld)]
    assert failures >= 3
    assert requests[(("backend", dead), ("class", "error"))] == failures
    assert samples[("gobalancer_proxy_backend_retries_total", ld)] == failures
    assert named(samples, "gobalancer_proxy_generated_responses_total") == {(("code", "400"),): 1.0}
    assert samples[("gobalancer_proxy_requests_total", ())] == len(CODES)


async def test_metrics_off_counts_nothing(tmp_path: Path, backends: Backends) -> None:
    b = await backends.add(Backend(status))
    metrics = f"127.0.0.1:{free_port()}"
    extra = f"metrics:\n  enabled: false\n  proxy_listen_address: {metrics}\n"
    with proxy_process(tmp_path, [b.address], extra) as (_, port):
        await wait_listening(port)
        assert await send_all(port, [200, 404, 200]) == [200, 404, 200]
        samples = await eventually(lambda: scrape(metrics), message="metrics served")
    assert named(samples, "gobalancer_proxy_backend_requests_total") == {}
    assert named(samples, "gobalancer_proxy_backend_request_duration_seconds_count") == {}
    assert named(samples, "gobalancer_proxy_info")  # still served


async def test_store_metrics_and_replica_totals(
    tmp_path: Path, backends: Backends, redis_url: str, namespace: str, store: Store
) -> None:
    b = await backends.add(Backend(status))
    await store.create_backend(StoredBackend(address=b.address))
    metrics = f"127.0.0.1:{free_port()}"
    extra = (
        f"redis:\n  url: {redis_url}\n  namespace: {namespace}\n  heartbeat_sec: 0.2\n  replica_ttl_sec: 2\n"
        f"metrics:\n  proxy_listen_address: {metrics}\nhealth_check:\n  start_healthy: true\n"
    )
    with proxy_process(tmp_path, [b.address], extra) as (_, port):
        await wait_listening(port)

        async def routed() -> bool:
            return (await send_all(port, [200]))[0] == 200

        await eventually(routed, timeout=10, message="backend from the store routed")
        version_before = (await scrape(metrics))[("gobalancer_proxy_view_version", ())]
        await store.update_backend(b.address, {"weight": 3})  # an event: applied by the proxy's watch

        async def lag_observed() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            s = await scrape(metrics)
            return s if s[("gobalancer_proxy_view_version", ())] > version_before else None

        samples = await eventually(lag_observed, message="event applied")
        assert samples[("gobalancer_proxy_store_sync_lag_seconds_count", ())] >= 1
        assert samples[("gobalancer_proxy_redis_up", ())] == 1

        async def registered() -> bool:
            proxies = await store.replicas("proxy")
            return bool(proxies) and proxies[0].metrics == metrics and proxies[0].totals.get(f"{b.address}|2xx", 0) >= 1

        await eventually(registered, message="replica registered with its metrics address and totals")

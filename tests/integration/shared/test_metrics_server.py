import asyncio

from prometheus_client import CollectorRegistry, Counter

from shared.addresses import with_port_offset
from shared.metrics import metrics_server
from shared.redis_server import free_port


async def _get(address: str, target: str) -> tuple[int, bytes]:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await reader.read(-1)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


async def test_serves_the_registry() -> None:
    registry = CollectorRegistry()
    counter = Counter("gobalancer_test_things", "things", registry=registry)
    counter.inc(3)
    async with metrics_server(f"127.0.0.1:{free_port()}", registry) as bound:
        status, body = await _get(bound, "/metrics")
        assert status == 200 and b"gobalancer_test_things_total 3.0" in body
        status, _ = await _get(bound, "/nope")
        assert status == 404


async def test_port_in_use_is_not_fatal() -> None:
    registry = CollectorRegistry()
    port = free_port()
    async with metrics_server(f"127.0.0.1:{port}", registry) as first:
        assert first
        async with metrics_server(f"127.0.0.1:{port}", registry) as second:
            assert second == ""


async def test_empty_address_serves_nothing() -> None:
    async with metrics_server("", CollectorRegistry()) as bound:
        assert bound == ""


def test_port_offset() -> None:
    assert with_port_offset("127.0.0.1:9100", 2) == "127.0.0.1:9102"
    assert with_port_offset(":9100", 1) == ":9101"
    assert with_port_offset("[::1]:9100", 1) == "[::1]:9101"


async def test_ready_follows_the_callable_and_exists_only_when_given() -> None:
    state = {"ready": True}
    async with metrics_server(f"127.0.0.1:{free_port()}", CollectorRegistry(), ready=lambda: state["ready"]) as bound:
        assert await _get(bound, "/ready") == (200, b"ready\n")
        state["ready"] = False
        assert await _get(bound, "/ready") == (503, b"not ready: stopping\n")
        assert (await _get(bound, "/metrics"))[0] == 200  # metrics still served while stopping
    async with metrics_server(f"127.0.0.1:{free_port()}", CollectorRegistry()) as bound:
        assert (await _get(bound, "/ready"))[0] == 404

"""Every request-smuggling vector and every limit: answered by the proxy, nothing reaches the backend."""

from __future__ import annotations

import pytest

from tests.integration.proxy.backends import Backends, RawCapture, exchange_raw
from tests.integration.proxy.conftest import StartProxy
from tests.unit.proxy.test_parser import SMUGGLING

BODY_VECTORS = {
    "invalid chunk size": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk size overflow": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
    "chunk bare lf": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
    "chunk data overrun": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabcGET / HTTP/1.1\r\n\r\n",
    "cl te smuggle": (
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"
    ),
    "te.cl smuggle": (
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n"
        b"5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n"
    ),
}


def vectors() -> dict[str, tuple[bytes, int]]:
    out = {name: (raw, 400) for name, raw in SMUGGLING.items()}
    out.update({name: (raw, 400) for name, raw in BODY_VECTORS.items()})
    out["target too long"] = (b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414)
    out["target too long, no end"] = (b"GET /" + b"a" * 3000, 414)
    out["head too large"] = (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-Big: " + b"a" * 3000 + b"\r\n\r\n", 431)
    out["head too large, no end"] = (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-Big: " + b"a" * 3000, 431)
    out["body too large (cl)"] = (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2000\r\n\r\n" + b"a" * 2000, 413)
    out["body too large (chunked)"] = (
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n" + b"a" * 2000 + b"\r\n0\r\n\r\n",
        413,
    )
    return out


VECTORS = vectors()


@pytest.mark.parametrize("raw,expected", VECTORS.values(), ids=VECTORS.keys())
async def test_rejected_and_nothing_forwarded(
    backends: Backends, start_proxy: StartProxy, raw: bytes, expected: int
) -> None:
    cap = await backends.add(RawCapture())
    proxy = await start_proxy([cap], proxy={"max_target_bytes": 256, "max_header_bytes": 2048, "max_body_bytes": 1000})
    answer = await exchange_raw(proxy.port, raw)  # returns when the proxy closes the connection
    assert answer.startswith(b"HTTP/1.1 %d " % expected), answer[:80]
    assert b"Connection: close" in answer and b"X-Request-ID: " in answer and b"request id: " in answer
    assert proxy.context.stats.errors[expected] == 1
    assert isinstance(cap, RawCapture)
    assert cap.connections == 0 and cap.received == b""  # never forwarded, not even the head

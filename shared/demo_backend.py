"""A tiny HTTP/1.1 server for demos and examples: it says who it is.

``python -m shared.demo_backend --listen 127.0.0.1:9001 --name A``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal

from shared.addresses import parse_address

MAX_HEAD = 65536


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str, listen: str) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, _, rest = lines[0].partition(" ")
            target, _, version = rest.partition(" ")
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    key, _, value = line.partition(":")
                    headers[key.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            if length:
                await reader.readexactly(length)
            keep_alive = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
            payload = {
                "backend": name,
                "address": listen,
                "method": method,
                "path": target,
                "request_id": headers.get("x-request-id", ""),
                "forwarded_for": headers.get("x-forwarded-for", ""),
            }
            body = (json.dumps(payload) + "\n").encode()
            writer.write(
                (
                    f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                    f"X-Backend: {name}\r\nConnection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
                ).encode()
                + (body if method != "HEAD" else b"")
            )
            await writer.drain()
            if not keep_alive:
                return
    finally:
        writer.close()


async def serve(listen: str, name: str) -> None:
    hp = parse_address(listen)
    server = await asyncio.start_server(
        lambda r, w: _handle(r, w, name, listen), hp.host, hp.port, limit=MAX_HEAD, reuse_address=True
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="GoBalancer demo backend")
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--name", default=str(os.getpid()))
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen, args.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A filtering proxy for the Docker API: only the read calls GoBalancer's Docker discovery makes get through.

    python3 docker_api_filter.py [--listen 0.0.0.0:2375] [--socket /var/run/docker.sock]

Allowed (GET or HEAD, with an optional /vX.Y version prefix and any query string): ``/_ping``,
``/version``, ``/containers/json`` (list), ``/containers/{id}/json`` (inspect), ``/events``.
Everything else (any other method or path, a request with a body, a malformed head) gets
``403`` (``405`` for another method) with a JSON ``message`` and never reaches the engine.

One request per connection: the head is read (at most 8 KiB, within 10 s), checked, forwarded with
``Connection: close``, and the engine's answer is relayed until it closes (so the events stream works).
Nothing the client sends after its head is forwarded, so no second request can ride along.
Standard library only: it runs from the same image as the services, with no dependency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys

MAX_HEAD = 8192
HEAD_TIMEOUT = 10.0
ALLOWED_METHODS = frozenset({"GET", "HEAD"})
ALLOWED_PATH = re.compile(
    r"(?:/v\d{1,2}\.\d{1,3})?/(?:_ping|version|events|containers/json|containers/[A-Za-z0-9][A-Za-z0-9_.-]{0,127}/json)"
)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TARGET = re.compile(r"[\x21-\x7e]+")


def check(head: bytes) -> tuple[int, str, bytes]:
    """(status, reason, head to forward): status 0 means allowed, and the head is rewritten to close."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return 400, "request head is not ASCII", b""
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        return 400, "malformed request line", b""
    method, target, version = parts
    if not _TARGET.fullmatch(target):
        return 400, "malformed request target", b""
    path = target.split("?", 1)[0]
    if method not in ALLOWED_METHODS:
        return 405, f"{method} is not allowed (a read-only filter: GET and HEAD only)", b""
    if not ALLOWED_PATH.fullmatch(path):
        return 403, f"{method} {path} is not allowed (only ping, version, containers list/inspect, events)", b""
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            return 400, "malformed header", b""
        lower = name.lower()
        if lower in ("content-length", "transfer-encoding"):
            if lower == "content-length" and value.strip() == "0":
                continue
            return 403, "a request with a body is not allowed", b""
        if lower in ("connection", "keep-alive", "upgrade"):
            continue
        headers.append(f"{name}:{value}")
    forward = "\r\n".join([f"{method} {target} {version}", *headers, "Connection: close", "", ""])
    return 0, "", forward.encode("ascii")


def refusal(status: int, reason: str) -> bytes:
    body = json.dumps({"message": f"refused by the GoBalancer Docker API filter: {reason}"}).encode() + b"\n"
    phrase = {400: "Bad Request", 403: "Forbidden", 405: "Method Not Allowed"}[status]
    return (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, socket_path: str) -> None:
    peer = writer.get_extra_info("peername")
    try:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            return
        status, reason, forward = check(head)
        if status:
            print(json.dumps({"event": "refused", "peer": str(peer), "status": status, "reason": reason}), flush=True)
            writer.write(refusal(status, reason))
            await writer.drain()
            return
        up_reader, up_writer = await asyncio.open_unix_connection(socket_path)
        try:
            up_writer.write(forward)
            await up_writer.drain()
            await _pipe(up_reader, writer)
        finally:
            up_writer.close()
    except OSError as exc:
        print(json.dumps({"event": "error", "peer": str(peer), "error": str(exc)}), flush=True)
    finally:
        writer.close()


async def serve(listen: str, socket_path: str) -> None:
    host, _, port = listen.rpartition(":")
    server = await asyncio.start_server(lambda r, w: handle(r, w, socket_path), host or None, int(port), limit=MAX_HEAD)
    print(json.dumps({"event": "listening", "address": listen, "socket": socket_path}), flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--listen", default="0.0.0.0:2375")
    parser.add_argument("--socket", default="/var/run/docker.sock")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.listen, args.socket))
    return 0


if __name__ == "__main__":
    sys.exit(main())

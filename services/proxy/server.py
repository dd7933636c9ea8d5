"""The listener(s) of one proxy process and its graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable, Mapping

from services.proxy.balancer import Balancer
from services.proxy.context import Context
from services.proxy.http.client import ClientConnection
from services.proxy.proxy_protocol import TrustedNetworks
from services.proxy.tcp import TcpClient
from shared.addresses import parse_address
from shared.config import Config
from shared.logs import get_logger

log = get_logger("proxy.server")

# On drain, an idle keep-alive connection stays open this long (capped by drain_sec) so a request
# already on its way is answered (with Connection: close) instead of meeting a closed socket.
IDLE_DRAIN_GRACE = 0.5


def make_ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


def listen_socket(address: str, reuse_port: bool) -> socket.socket:
    """A bound, listening socket; SO_REUSEPORT lets several worker processes share the port."""
    hp = parse_address(address, allow_empty_host=True)
    host = hp.host or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, hp.port))
        sock.listen(4096)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Server:
    """Owns the listener of one process, the shared :class:`Context`, and the drain on stop."""

    def __init__(
        self,
        config: Config,
        balancer: Balancer,
        *,
        reuse_port: bool = True,
        pools: Mapping[str, Balancer] | None = None,
    ) -> None:
        self.config = config
        self.balancer = balancer
        self.pools = pools
        self.reuse_port = reuse_port
        self.ctx: Context | None = None
        self._server: asyncio.Server | None = None

    @property
    def context(self) -> Context:
        assert self.ctx is not None, "server not started"
        return self.ctx

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self, sock: socket.socket | None = None) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        self.ctx = ctx = Context(config, self.balancer, loop, self.pools)
        if sock is None:
            sock = listen_socket(config.listen_address, self.reuse_port)
        tls = config.proxy.tls
        ssl_context = make_ssl_context(tls.cert_file, tls.key_file) if tls.enabled else None
        factory: Callable[[], asyncio.Protocol]
        if config.mode == "tcp":
            proxy_from = TrustedNetworks(config.proxy.proxy_protocol_from)
            factory = lambda: TcpClient(ctx, proxy_from)  # noqa: E731
        else:
            is_tls = ssl_context is not None
            factory = lambda: ClientConnection(ctx, tls=is_tls)  # noqa: E731
        self._server = await loop.create_server(factory, sock=sock, ssl=ssl_context, backlog=4096)
        ctx.start_sweeps()
        log.info("listening", address=config.listen_address, port=self.port, mode=config.mode, tls=bool(ssl_context))

    def begin_shutdown(self, delay: float) -> None:
        """The shutdown delay (``delay`` seconds before :meth:`stop`): still accepting, but every response now
        ends its connection (Connection: close), so keep-alive clients reconnect, by then to another replica.
        A keep-alive connection that stays idle through the delay is closed at its end."""
        ctx = self.context
        ctx.draining = True
        for conn in list(ctx.connections):
            conn.drain(delay)

    async def stop(self, drain_sec: float | None = None) -> None:
        """Stop accepting, let in-flight exchanges finish up to ``drain_sec``, then close everything."""
        ctx = self.context
        if drain_sec is None:
            drain_sec = float(self.config.timeout.drain_sec)
        ctx.draining = True
        ctx.all_closed.clear()  # it may have been set during the shutdown delay, with connections since
        if self._server is not None:
            self._server.close()
        grace = min(IDLE_DRAIN_GRACE, drain_sec)
        for conn in list(ctx.connections):
            conn.drain(grace)
        if ctx.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.all_closed.wait(), drain_sec)
        left = len(ctx.connections)
        for conn in list(ctx.connections):
            conn.abort()
        exporter, ctx.exporter = ctx.exporter, None
        ctx.close()
        if exporter is not None:  # flushing the last spans may take a network round trip: not on the loop
            await asyncio.to_thread(exporter.shutdown)
        if self._server is not None:
            await self._server.wait_closed()
        log.info("drained", aborted=left)

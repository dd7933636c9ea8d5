"""What every service process shares: argument parsing, config, logging, uvloop and signals.

A service provides ``async def run(config, stop)`` and returns when ``stop`` is set. The first
SIGTERM/SIGINT sets ``stop`` (graceful); a second one cancels the service (immediate).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable

from shared.config import Config, ConfigError, load_config
from shared.denylist import BackendDenyList
from shared.logs import configure_logging, get_logger
from shared.store import Store

ServiceMain = Callable[[Config, asyncio.Event], Awaitable[None]]


def parse_args(name: str, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m services.{name}", description=f"GoBalancer {name} service")
    parser.add_argument(
        "--config",
        default=os.environ.get("GOBALANCER_CONFIG"),
        help="YAML config file (default: $GOBALANCER_CONFIG, else built-in defaults)",
    )
    return parser.parse_args(argv)


def load_or_exit(name: str, path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"gobalancer {name}: config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def require_redis_url(name: str, config: Config) -> str:
    if not config.redis.url:
        print(
            f"gobalancer {name}: config error: redis.url is empty: set it (or GOBALANCER_REDIS_URL), "
            "or start the whole suite with `gobalancer up`, which runs a private Redis",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return config.redis.url


def open_store(config: Config) -> Store:
    """The service's store; writes that add a backend refuse the config's deny list (``backend_deny``)."""
    store = Store.from_url(config.redis.url, config.redis.namespace)
    store.denylist = BackendDenyList.from_config(config)
    return store


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; this keeps odd platforms working
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


async def _supervise(name: str, main: ServiceMain, config: Config) -> None:
    log = get_logger("service")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    task = asyncio.current_task()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("stopping", signal=signal.Signals(signum).name)
            stop.set()
        elif task is not None:
            log.warning("second signal: stopping now", signal=signal.Signals(signum).name)
            task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    log.info("starting", pid=os.getpid())
    try:
        await main(config, stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")


def run_service(name: str, main: ServiceMain, argv: list[str] | None = None) -> int:
    """Entry point of ``python -m services.<name>``; returns the process exit code."""
    args = parse_args(name, argv)
    config = load_or_exit(name, args.config)
    if args.config:
        # Child processes (proxy workers) read the same file with the same environment.
        os.environ["GOBALANCER_CONFIG"] = os.path.abspath(args.config)
    configure_logging(name, config.logging.level, config.logging.format)
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(_supervise(name, main, config))
    except asyncio.CancelledError:
        return 1
    except KeyboardInterrupt:
        return 130
    return 0

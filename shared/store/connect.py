"""Redis clients from URLs: redis://, rediss:// (TLS), unix:// and redis+sentinel://."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

Redis = aioredis.Redis

_COMMON: dict[str, Any] = {
    "socket_connect_timeout": 2.0,
    "socket_timeout": 5.0,
    "socket_keepalive": True,
    "health_check_interval": 5,
}


def _retry() -> Retry:
    return Retry(ExponentialBackoff(cap=0.5, base=0.02), retries=2)


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, dict[str, Any]]:
    """``redis+sentinel://[user:pass@]h1:26379,h2:26379/mymaster[/db][?sentinel_password=..]``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, _, hosts = netloc.rpartition("@")
    kwargs: dict[str, Any] = {}
    if userinfo:
        user, _, password = userinfo.partition(":")
        if user:
            kwargs["username"] = unquote(user)
        if password:
            kwargs["password"] = unquote(password)
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        if not item:
            continue
        if item.startswith("["):
            host, _, port = item[1:].partition("]:")
        else:
            host, _, port = item.rpartition(":") if ":" in item else (item, "", "26379")
        sentinels.append((host, int(port or 26379)))
    path = [p for p in parts.path.split("/") if p]
    if not path or not sentinels:
        raise ValueError("a sentinel URL needs sentinel hosts and a master name: redis+sentinel://h:26379/mymaster")
    if len(path) > 1:
        kwargs["db"] = int(path[1])
    query = parse_qs(parts.query)
    if "sentinel_password" in query:
        kwargs["sentinel_password"] = query["sentinel_password"][0]
    if parts.scheme.startswith("rediss"):
        kwargs["ssl"] = True
    return sentinels, path[0], kwargs


def redis_from_url(url: str, **overrides: Any) -> Redis:
    """A client for ``url`` with timeouts, keepalive and a short retry on connection errors."""
    options = {**_COMMON, **overrides}
    if url.startswith(("redis+sentinel://", "rediss+sentinel://")):
        sentinels, master, kwargs = parse_sentinel_url(url)
        sentinel_password = kwargs.pop("sentinel_password", None)
        sentinel_kwargs: dict[str, Any] = {"socket_connect_timeout": options["socket_connect_timeout"]}
        if sentinel_password:
            sentinel_kwargs["password"] = sentinel_password
        sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs, **options)  # type: ignore[no-untyped-call]
        client: Redis = sentinel.master_for(master, retry=_retry(), **kwargs)
        return client
    return aioredis.from_url(
        url,
        retry=_retry(),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        **options,
    )

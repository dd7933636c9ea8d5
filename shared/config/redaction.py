"""Presenting the settings: plain data, with the secrets (the admin token, Redis passwords) hidden."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from shared.config.schema import Config


def to_builtins(obj: object) -> Any:
    """Plain data (dicts, lists, numbers, strings) for any config object."""
    return msgspec.to_builtins(obj, enc_hook=lambda value: float(value) if isinstance(value, float) else value)


_SECRET_QUERY = re.compile(r"(?i)([?&](?:password|sentinel_password|ssl_password)=)[^&#]*")


def redact_url(url: str) -> str:
    """Hide the passwords in a Redis URL: in the userinfo (split at the *last* '@', as redis-py does)
    and in query parameters (``password``, ``sentinel_password``, ``ssl_password``)."""
    scheme, sep, rest = url.partition("://")
    if sep:
        authority_end = len(rest)
        for stop in "/?#":
            i = rest.find(stop)
            if i >= 0:
                authority_end = min(authority_end, i)
        authority, tail = rest[:authority_end], rest[authority_end:]
        userinfo, at, hosts = authority.rpartition("@")
        if at and ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            authority = f"{user}:***@{hosts}"
        url = f"{scheme}://{authority}{tail}"
    return _SECRET_QUERY.sub(lambda m: f"{m.group(1)}***", url)


def effective_settings(config: Config) -> dict[str, Any]:
    """The settings as plain data with secrets redacted (for `check-config` and logs)."""
    data: dict[str, Any] = to_builtins(config)
    if data["admin"]["token"]:
        data["admin"]["token"] = "***"
    data["redis"]["url"] = redact_url(data["redis"]["url"])
    return data

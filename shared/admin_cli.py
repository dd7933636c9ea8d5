"""`gobalancer backends ...` and `gobalancer algorithm ...`: a client of the admin API."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the admin subcommands to the `gobalancer` parser (filled in by the admin API work)."""
    del sub


__all__ = ["argparse", "register"]

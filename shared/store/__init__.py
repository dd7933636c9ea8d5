"""The Redis state model: keys and scripts (``keys``), clients (``connect``), the API (``store``)."""

from shared.store.connect import redis_from_url
from shared.store.keys import Keys
from shared.store.store import (
    STORE_ERRORS,
    UNAVAILABLE,
    BackendDenied,
    BackendExists,
    BackendNotFound,
    Fenced,
    Lease,
    OriginMismatch,
    PoolExists,
    PoolInUse,
    PoolNotFound,
    Store,
    StoreError,
    WriteResult,
)

__all__ = [
    "STORE_ERRORS",
    "UNAVAILABLE",
    "BackendDenied",
    "BackendExists",
    "BackendNotFound",
    "Fenced",
    "Keys",
    "Lease",
    "OriginMismatch",
    "PoolExists",
    "PoolInUse",
    "PoolNotFound",
    "Store",
    "StoreError",
    "WriteResult",
    "redis_from_url",
]

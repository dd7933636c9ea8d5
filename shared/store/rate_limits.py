"""The rate-limit rules in the store: one versioned document, ``NS:rate_limits`` (``RateLimitsDocument``).

Written by ``PUT /rate-limits`` (and removed by ``DELETE /rate-limits``) through one script,
``SET_RATE_LIMITS``, that writes, ``INCR``s ``NS:version`` and ``PUBLISH``es a ``rate_limits`` event carrying
the document byte for byte (``null`` once removed), like ``SET_ALGORITHM``. A write whose rules are those
already stored writes nothing and bumps nothing. While the store holds no document the config file's
``rate_limits.rules`` are in force. The proxies read the document when they start and after every full
re-sync of their view (a ``Snapshot`` does not carry it), and follow its events in between
(``services.proxy.limits.live``).
"""

from __future__ import annotations

import time

import msgspec

from shared.config.limits import RateLimitRule, RateLimitsDocument
from shared.store.store import Store

# KEYS: document, version. ARGV: events channel, now, the document (JSON; "" removes it), the encoded
# rules' prefix of the document ('{"rules":[...],': unchanged rules write nothing).
SET_RATE_LIMITS = """
local current = redis.call('GET', KEYS[1])
if ARGV[3] == '' then
  if not current then return {'unchanged'} end
  redis.call('DEL', KEYS[1])
else
  if current and string.sub(current, 1, #ARGV[4]) == ARGV[4] then return {'unchanged'} end
  redis.call('SET', KEYS[1], ARGV[3])
end
local version = redis.call('INCR', KEYS[2])
local doc = ARGV[3]
if doc == '' then doc = 'null' end
redis.call('PUBLISH', ARGV[1], '{"version":' .. version .. ',"kind":"rate_limits","at":' .. ARGV[2]
  .. ',"rate_limits":' .. doc .. '}')
return {'changed', version}
"""

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(RateLimitsDocument)


async def get_rate_limits(store: Store) -> tuple[RateLimitsDocument | None, int]:
    """The stored document (None: none, the config file's rules apply) and the state's version, read at once."""
    k = store.keys
    async with store.redis.pipeline(transaction=True) as pipe:
        pipe.get(k.rate_limits)
        pipe.get(k.version)
        raw, version = await pipe.execute()
    return (_decoder.decode(raw) if raw else None), int(version or 0)


async def set_rate_limits(store: Store, rules: list[RateLimitRule] | None) -> tuple[bool, int | None]:
    """Store ``rules`` (None: remove the document). Returns (changed, the version the change produced)."""
    k = store.keys
    at = time.time()
    if rules is None:
        doc, prefix = b"", b""
    else:
        doc = _encoder.encode(RateLimitsDocument(rules=rules, updated_at=at))
        prefix = doc[: doc.index(b',"updated_at":') + 1]
    script = store.redis.register_script(SET_RATE_LIMITS)
    reply = await script(keys=[k.rate_limits, k.version], args=[k.events, repr(at), doc, prefix])
    outcome = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
    if outcome == "changed":
        return True, int(reply[1])
    return False, None

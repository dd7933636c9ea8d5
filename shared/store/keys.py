"""The one place that names Redis keys and holds the Lua scripts that change them.

See docs/state-model.md for the model. Every change to the backend set, health, ejections or the
algorithm is one script: it writes, increments ``version`` and publishes an event carrying that
version, atomically. Readers that see a gap in versions re-read the whole state.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    namespace: str

    @property
    def backends(self) -> str:  # hash: address -> Backend (JSON)
        return f"{self.namespace}:backends"

    @property
    def health(self) -> str:  # hash: address -> Health (JSON)
        return f"{self.namespace}:health"

    @property
    def ejections(self) -> str:  # hash: address -> Ejection (JSON)
        return f"{self.namespace}:ejections"

    @property
    def algorithm(self) -> str:  # string: AlgorithmSetting (JSON)
        return f"{self.namespace}:algorithm"

    @property
    def pools(self) -> str:  # hash: pool name -> PoolSetting (JSON)
        return f"{self.namespace}:pools"

    @property
    def routes(self) -> str:  # string: RouteTableSetting (JSON); absent: the configuration's routes
        return f"{self.namespace}:routes"

    @property
    def version(self) -> str:  # integer, INCR on every change
        return f"{self.namespace}:version"

    @property
    def events(self) -> str:  # pub/sub channel of Event (JSON)
        return f"{self.namespace}:events"

    @property
    def replicas(self) -> str:  # sorted set: replica id -> expiry (ms, Redis clock)
        return f"{self.namespace}:replicas"

    def replica(self, replica_id: str) -> str:  # string with TTL: ReplicaInfo (JSON)
        return f"{self.namespace}:replica:{replica_id}"

    def inflight(self, replica_id: str) -> str:  # hash with TTL: address -> count, "__seq" -> n
        return f"{self.namespace}:inflight:{replica_id}"

    def totals(self, replica_id: str) -> str:  # hash with TTL: "address|class" -> requests since start
        return f"{self.namespace}:totals:{replica_id}"

    def lease(self, name: str) -> str:  # string with TTL: "holder:fence"
        return f"{self.namespace}:lease:{name}"

    def fence(self, name: str) -> str:  # integer: last fencing token handed out for a lease
        return f"{self.namespace}:lease:{name}:fence"

    @property
    def rate_limits(self) -> str:  # string: RateLimitsDocument (JSON), written by shared/store/rate_limits.py
        return f"{self.namespace}:rate_limits"


# Shared prologue: ARGV[1] is the expected lease value ("holder:fence") or "", KEYS[1] the lease key.
# A writer that lost its lease is refused, so a paused ex-leader cannot overwrite its successor.
_FENCE_CHECK = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {'fenced'}
end
"""

# Operator overrides. A backend of a discovery origin (static, docker, kubernetes) belongs to its source,
# which writes it with ``upsert``; an operator's ``update`` of one of its fields (weight, state) is kept
# as an override: ``override`` holds the operator's values, ``discovered`` the source's for the same
# fields. The record's own field is the value in force (the operator's), so readers need nothing new.
# A source's later write of an overridden field only updates ``discovered``; an operator's write back
# to the source's value ends that field's override; CLEAR_OVERRIDE ends them all, restoring the
# source's values. Backends of origin ``api`` belong to the operator: no override, plain writes.
_OVERRIDE_HELPERS = """
local OVERRIDABLE = {weight = true, state = true}
local function tbl(v) if type(v) == 'table' then return v end return {} end
local function packed(t) if next(t) == nil then return nil end return t end
"""

# KEYS: lease, backends, health, ejections, version
# ARGV: fence, events channel, now, mode (create|update|upsert), address, patch (JSON object), origin guard,
#       fields of the patch applied to an existing record ("a,b"; "" = all)
# ``update`` is the operator's write (an override on a discovery-owned backend), ``upsert`` a source's.
WRITE_BACKEND = (
    _FENCE_CHECK
    + _OVERRIDE_HELPERS
    + """
local mode, addr, guard = ARGV[4], ARGV[5], ARGV[7]
local now = tonumber(ARGV[3])
local cur = redis.call('HGET', KEYS[2], addr)
if mode == 'create' and cur then return {'exists', cur} end
if mode == 'update' and not cur then return {'missing'} end
local rec
if cur then
  rec = cjson.decode(cur)
  if guard ~= '' and rec['origin'] ~= guard then return {'origin', cur} end
else
  rec = {address = addr, weight = 1, origin = 'api', state = 'enabled', created_at = now}
end
local changed = not cur
local only = nil
if cur and ARGV[8] ~= '' then
  only = {}
  for f in string.gmatch(ARGV[8], '[^,]+') do only[f] = true end
end
local ov, src = tbl(rec['override']), tbl(rec['discovered'])
local operator_override = cur and mode == 'update' and rec['origin'] ~= 'api'
for k, v in pairs(cjson.decode(ARGV[6])) do
  if only == nil or only[k] then
    if operator_override and OVERRIDABLE[k] then
      if ov[k] == nil then src[k] = rec[k] end
      if src[k] == v then
        if ov[k] ~= nil then changed = true end
        ov[k], src[k] = nil, nil
      elseif ov[k] ~= v then
        ov[k] = v; changed = true
      end
      if rec[k] ~= v then rec[k] = v; changed = true end
    elseif cur and mode == 'upsert' and ov[k] ~= nil then
      if src[k] ~= v then src[k] = v; changed = true end
    elseif rec[k] ~= v then
      rec[k] = v; changed = true
    end
  end
end
if not changed then return {'unchanged', cur} end
rec['override'], rec['discovered'] = packed(ov), packed(src)
rec['updated_at'] = now
local enc = cjson.encode(rec)
redis.call('HSET', KEYS[2], addr, enc)
local version = redis.call('INCR', KEYS[5])
local kind = cur and 'backend_updated' or 'backend_added'
redis.call('PUBLISH', ARGV[2], cjson.encode({version = version, kind = kind, at = now, address = addr, backend = rec}))
return {kind, enc, version}
"""
)

# Ends every operator override of a backend: the source's values are back in force.
# KEYS: lease, backends, health, ejections, version
# ARGV: fence, events channel, now, address
CLEAR_OVERRIDE = (
    _FENCE_CHECK
    + _OVERRIDE_HELPERS
    + """
local addr = ARGV[4]
local now = tonumber(ARGV[3])
local cur = redis.call('HGET', KEYS[2], addr)
if not cur then return {'missing'} end
local rec = cjson.decode(cur)
local ov, src = tbl(rec['override']), tbl(rec['discovered'])
if next(ov) == nil then return {'unchanged', cur} end
for k, _ in pairs(ov) do
  if src[k] ~= nil then rec[k] = src[k] end
end
rec['override'], rec['discovered'] = nil, nil
rec['updated_at'] = now
local enc = cjson.encode(rec)
redis.call('HSET', KEYS[2], addr, enc)
local version = redis.call('INCR', KEYS[5])
redis.call('PUBLISH', ARGV[2], cjson.encode({version = version, kind = 'backend_updated', at = now, address = addr,
  backend = rec}))
return {'backend_updated', enc, version}
"""
)

# KEYS: lease, backends, health, ejections, version
# ARGV: fence, events channel, now, address, origin guard
REMOVE_BACKEND = (
    _FENCE_CHECK
    + """
local addr, guard = ARGV[4], ARGV[5]
local cur = redis.call('HGET', KEYS[2], addr)
if not cur then return {'missing'} end
local rec = cjson.decode(cur)
if guard ~= '' and rec['origin'] ~= guard then return {'origin', cur} end
redis.call('HDEL', KEYS[2], addr)
redis.call('HDEL', KEYS[3], addr)
redis.call('HDEL', KEYS[4], addr)
local version = redis.call('INCR', KEYS[5])
redis.call('PUBLISH', ARGV[2], cjson.encode({version = version, kind = 'backend_removed', at = tonumber(ARGV[3]),
  address = addr, backend = rec}))
return {'removed', cur, version}
"""
)

# A health verdict never touches a passive ejection: active health and outlier ejection are two
# signals, and a backend takes traffic only when health says up and no ejection is in force (an
# ejection ends at its own ``until``; a passing probe does not cut it short).
# KEYS: lease, backends, health, ejections, version
# ARGV: fence, events channel, now, address, status, reason
SET_HEALTH = (
    _FENCE_CHECK
    + """
local addr, status = ARGV[4], ARGV[5]
local now = tonumber(ARGV[3])
if redis.call('HEXISTS', KEYS[2], addr) == 0 then return {'missing'} end
local cur = redis.call('HGET', KEYS[3], addr)
if cur and cjson.decode(cur)['status'] == status then return {'unchanged'} end
local health = {status = status, changed_at = now, reason = ARGV[6]}
redis.call('HSET', KEYS[3], addr, cjson.encode(health))
local version = redis.call('INCR', KEYS[5])
redis.call('PUBLISH', ARGV[2], cjson.encode({version = version, kind = 'health', at = now, address = addr,
  health = health}))
return {'changed', version}
"""
)

# KEYS: lease, backends, health, ejections, version
# ARGV: fence, events channel, now, address, ejection (JSON) or "" to clear
# The event carries the ejection as stored, byte for byte (re-encoded by cjson its times would be rounded
# to 14 digits): replayed over a chunked read (``Store.watch``), it gives exactly what the hash holds.
SET_EJECTION = (
    _FENCE_CHECK
    + """
local addr = ARGV[4]
if redis.call('HEXISTS', KEYS[2], addr) == 0 then return {'missing'} end
if ARGV[5] == '' then
  if redis.call('HDEL', KEYS[4], addr) == 0 then return {'unchanged'} end
else
  redis.call('HSET', KEYS[4], addr, ARGV[5])
end
local version = redis.call('INCR', KEYS[5])
local event = '{"version":' .. version .. ',"kind":"ejection","at":' .. ARGV[3] .. ',"address":' .. cjson.encode(addr)
if ARGV[5] ~= '' then event = event .. ',"ejection":' .. ARGV[5] end
redis.call('PUBLISH', ARGV[2], event .. '}')
return {'changed', version}
"""
)

# KEYS: lease, algorithm, version
# ARGV: fence, events channel, now, setting (JSON)
# (The event carries the setting as stored, byte for byte, as SET_EJECTION's does.)
SET_ALGORITHM = (
    _FENCE_CHECK
    + """
if redis.call('GET', KEYS[2]) == ARGV[4] then return {'unchanged'} end
redis.call('SET', KEYS[2], ARGV[4])
local version = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[2], '{"version":' .. version .. ',"kind":"algorithm","at":' .. ARGV[3] .. ',"algorithm":'
  .. ARGV[4] .. '}')
return {'changed', version}
"""
)

# A pool's settings. The caller encodes the record (with its created_at / updated_at).
# KEYS: lease, pools, version
# ARGV: fence, events channel, now, name, record (JSON), mode (create|update|put)
SET_POOL = (
    _FENCE_CHECK
    + """
local name, mode = ARGV[4], ARGV[6]
local cur = redis.call('HGET', KEYS[2], name)
if mode == 'create' and cur then return {'exists', cur} end
if mode == 'update' and not cur then return {'missing'} end
if cur == ARGV[5] then return {'unchanged', cur} end
redis.call('HSET', KEYS[2], name, ARGV[5])
local version = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[2], '{"version":' .. version .. ',"kind":"pool_set","at":' .. ARGV[3] .. ',"name":'
  .. cjson.encode(name) .. ',"pool":' .. ARGV[5] .. '}')
return {'changed', ARGV[5], version}
"""
)

# Removes a pool's record, refused while a backend or the stored route table names it.
# KEYS: lease, pools, version, backends, routes
# ARGV: fence, events channel, now, name
REMOVE_POOL = (
    _FENCE_CHECK
    + """
local name = ARGV[4]
local cur = redis.call('HGET', KEYS[2], name)
if not cur then return {'missing'} end
local quoted = cjson.encode(name)
local needle = '"pool":' .. quoted
local n = 0
for _, v in ipairs(redis.call('HVALS', KEYS[4])) do
  if string.find(v, needle, 1, true) then n = n + 1 end
end
if n > 0 then return {'backends', tostring(n)} end
local routes = redis.call('GET', KEYS[5])
if routes and (string.find(routes, needle, 1, true) or string.find(routes, '"default_pool":' .. quoted, 1, true)) then
  return {'routes'}
end
redis.call('HDEL', KEYS[2], name)
local version = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[2], '{"version":' .. version .. ',"kind":"pool_removed","at":' .. ARGV[3] .. ',"name":'
  .. quoted .. '}')
return {'removed', cur, version}
"""
)

# Replaces the whole route table, refused when it names a pool the store does not hold ("default"
# always exists).
# KEYS: lease, routes, version, pools
# ARGV: fence, events channel, now, table (JSON), then the names of the pools it uses
SET_ROUTES = (
    _FENCE_CHECK
    + """
for i = 5, #ARGV do
  if ARGV[i] ~= 'default' and redis.call('HEXISTS', KEYS[4], ARGV[i]) == 0 then return {'missing_pool', ARGV[i]} end
end
if redis.call('GET', KEYS[2]) == ARGV[4] then return {'unchanged'} end
redis.call('SET', KEYS[2], ARGV[4])
local version = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[2], '{"version":' .. version .. ',"kind":"routes","at":' .. ARGV[3] .. ',"routes":'
  .. ARGV[4] .. '}')
return {'changed', version}
"""
)

# A replica's heartbeat and the batched push of its in-flight counters, in one round trip.
# KEYS: replicas (zset), replica info, inflight hash, totals hash
# ARGV: replica id, ttl ms, info (JSON), seq, number of in-flight pairs, number of totals pairs, then
#       pairs of address, delta (in-flight), then pairs of "address|class", delta (request totals:
#       monotonic), then "address|class" totals to delete (backends that left the replica's view)
# The hash carries "__seq", the last batch applied: a batch re-sent after a lost reply is not
# applied twice. When the hash is gone (first push, or it expired while Redis was unreachable)
# deltas cannot be applied to nothing, so the script answers 'resync' and the replica sends its
# absolute counts (PUSH_ABSOLUTE).
PUSH_COUNTERS = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now_ms + ttl, ARGV[1])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ttl)
local seq = tonumber(ARGV[4])
local cur = redis.call('HGET', KEYS[3], '__seq')
if not cur then return 'resync' end
redis.call('PEXPIRE', KEYS[3], ttl)
redis.call('PEXPIRE', KEYS[4], ttl)
if tonumber(cur) >= seq then return 'duplicate' end
local split = 7 + 2 * tonumber(ARGV[5])
local dropped = split + 2 * tonumber(ARGV[6])
for i = 7, split - 1, 2 do
  if redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1]) == 0 then redis.call('HDEL', KEYS[3], ARGV[i]) end
end
for i = split, dropped - 1, 2 do
  redis.call('HINCRBY', KEYS[4], ARGV[i], ARGV[i + 1])
end
for i = dropped, #ARGV do
  redis.call('HDEL', KEYS[4], ARGV[i])
end
redis.call('HSET', KEYS[3], '__seq', seq)
return 'ok'
"""

# KEYS: inflight hash, totals hash; ARGV: ttl ms, seq, number of in-flight pairs, then pairs of
# address, count (in-flight), then pairs of "address|class", total
PUSH_ABSOLUTE = """
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], '__seq', ARGV[2])
local split = 4 + 2 * tonumber(ARGV[3])
for i = 4, split - 1, 2 do
  if tonumber(ARGV[i + 1]) ~= 0 then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
for i = split, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[1]))
return 'ok'
"""

# Both replica reads start here: the time from Redis, then lapsed replicas dropped from the set.
_PRUNE_LAPSED = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
"""

# KEYS: replicas (zset); ARGV: key prefix ("ns:"). Returns {id, info, {address, count, ...},
# {totals...}} per live replica.
READ_REPLICAS = (
    _PRUNE_LAPSED
    + """
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local info = redis.call('GET', ARGV[1] .. 'replica:' .. id)
  if info then
    local inflight = redis.call('HGETALL', ARGV[1] .. 'inflight:' .. id)
    table.insert(out, {id, info, inflight, redis.call('HGETALL', ARGV[1] .. 'totals:' .. id)})
  end
end
return out
"""
)

# KEYS: replicas (zset); ARGV: key prefix ("ns:"). Returns the info (JSON) of every live replica, without
# its counters (the health service counts its peers every round: proxies' totals would be megabytes).
READ_REPLICA_INFOS = (
    _PRUNE_LAPSED
    + """
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local info = redis.call('GET', ARGV[1] .. 'replica:' .. id)
  if info then table.insert(out, info) end
end
return out
"""
)

# What a proxy reads every refresh interval: the live replicas' in-flight counts summed per backend
# here, leaving out the caller's own (it knows its exact count), as a flat [address, count, ...].
# KEYS: replicas; ARGV: key prefix, replica id to leave out
GLOBAL_INFLIGHT = (
    _PRUNE_LAPSED
    + """
local sums = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if id ~= ARGV[2] and redis.call('EXISTS', ARGV[1] .. 'replica:' .. id) == 1 then
    local flat = redis.call('HGETALL', ARGV[1] .. 'inflight:' .. id)
    for i = 1, #flat, 2 do
      if flat[i] ~= '__seq' then
        sums[flat[i]] = (sums[flat[i]] or 0) + tonumber(flat[i + 1])
      end
    end
  end
end
local out = {}
for addr, count in pairs(sums) do
  table.insert(out, addr)
  table.insert(out, count)
end
return out
"""
)

# KEYS: replicas, replica info, inflight hash, totals hash; ARGV: replica id
DEREGISTER = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
return 'ok'
"""

# Leases with fencing tokens. KEYS: lease, fence counter; ARGV: holder, ttl ms, current value or "".
# Acquire when free, renew when held by the same value; a new holder gets a new fencing token.
ACQUIRE_LEASE = """
local cur = redis.call('GET', KEYS[1])
if cur and ARGV[3] ~= '' and cur == ARGV[3] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, cur}
end
if cur then return {0, cur} end
local value = ARGV[1] .. ':' .. redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return {1, value}
"""

# KEYS: lease; ARGV: value
RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# One chunk of a full read (``Store.watch``'s re-sync): HSCAN the backends hash from a cursor, and for
# each backend found its health and ejection, answered as ONE string, a JSON array of
# {"backend": ..., "health": ..., "ejection": ...} (a BackendView), so the reader decodes a chunk with
# one C call instead of parsing thousands of reply elements in Python. Each backend's three parts are
# read together; a chunk is not consistent with the others (the reader replays the events published
# meanwhile). Read-only.
# KEYS: backends, health, ejections; ARGV: cursor, COUNT hint. Returns {next cursor, JSON array}.
SCAN_VIEWS = """
local scan = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local flat = scan[2]
if #flat == 0 then return {scan[1], '[]'} end
local fields = {}
for i = 1, #flat, 2 do fields[#fields + 1] = flat[i] end
-- (HMGET in slices: a hash kept as a listpack answers in one go however large, and unpack is bounded)
local hs, es = {}, {}
for first = 1, #fields, 1000 do
  local last = math.min(first + 999, #fields)
  local h = redis.call('HMGET', KEYS[2], unpack(fields, first, last))
  local e = redis.call('HMGET', KEYS[3], unpack(fields, first, last))
  for i = first, last do hs[i], es[i] = h[i - first + 1], e[i - first + 1] end
end
local out, n = {'['}, 1
for i = 1, #fields do
  out[n + 1] = '{"backend":'
  out[n + 2] = flat[2 * i]
  n = n + 2
  if hs[i] then out[n + 1] = ',"health":'; out[n + 2] = hs[i]; n = n + 2 end
  if es[i] then out[n + 1] = ',"ejection":'; out[n + 2] = es[i]; n = n + 2 end
  out[n + 1] = '},'
  n = n + 1
end
out[n] = '}]'
return {scan[1], table.concat(out)}
"""

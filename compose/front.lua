-- The front's hold (compose/haproxy.cfg: lua-load, then `tcp-request content lua.wait_for_replica BACKEND MS`):
-- a new client connection waits, up to MS milliseconds, while no proxy replica is ready, instead of being closed
-- at once. That happens when every replica is replaced at the same moment (Compose v2's `up` with a new image,
-- `docker-compose restart`, a single proxy service): the old ones say not-ready, then exit, and the new ones are
-- not listening yet.
--
-- Ready: up, and its last health check (GET /ready) passed. A replica that DNS has just given an address counts
-- as up to HAProxy before its first check, so "a server is up" alone would let a connection go to one still
-- starting, and its refused connect would leave nothing to redispatch to. The answer is cached for 100 ms, so
-- the servers' stats are read at most ten times a second whatever the connection rate; core.msleep yields, so
-- a held connection costs no CPU.

local cache = {}

local function now_ms()
    local t = core.now()
    return t.sec * 1000 + t.usec // 1000
end

local function has_ready_replica(backend)
    local now = now_ms()
    local hit = cache[backend]
    if hit ~= nil and now - hit.at < 100 then
        return hit.ready
    end
    local ready = false
    for _, server in pairs(core.backends[backend].servers) do
        local stats = server:get_stats()
        if string.sub(stats.status or "", 1, 2) == "UP" and stats.check_status == "L7OK" then
            ready = true
            break
        end
    end
    cache[backend] = { at = now, ready = ready }
    return ready
end

core.register_action("wait_for_replica", { "tcp-req" }, function(txn, backend, max_ms)
    local deadline = now_ms() + (tonumber(max_ms) or 0)
    while not has_ready_replica(backend) and now_ms() < deadline do
        core.msleep(100)
    end
end, 2)

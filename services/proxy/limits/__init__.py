"""Global rate limits and connection limits (issue 21).

- the configuration schema of rate-limit rules and limiter settings is ``shared.config.limits``.
- ``limiter``: the per-rule limiter, pure: ``Limiter.admit(key, now)`` on the hot path, batches for Redis.
- ``sync``: the background task that reconciles every limiter with Redis in one script per batch.
- ``headers``: the 429 response with ``Retry-After`` and the IETF ``RateLimit-Policy`` / ``RateLimit`` fields.
- ``circuit``: the connection-limit (circuit-breaking) decision, pure.
- ``gate``: the rules as the data plane applies them (which rules meet a request, its key for each).
- ``live``: the rules in force in a process (the store's ``PUT /rate-limits`` table, else the config file's),
  swapped into every listener's context when they change.
- ``pools``: the connection limits on the data plane: a limited pool's balancer wrapped at the pick (queue,
  503 with a reason); pools without limits keep theirs.
"""

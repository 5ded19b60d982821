"""A token bucket in Redis, shared by every process that calls Stripe.

Stripe allows about 100 requests per second per account. Without a shared budget, a burst
of due captures on several workers collects 429s, each retried later in synchronized waves
(bench/capture_drain.py). With it, callers queue for their turn instead.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import redis

log = logging.getLogger(__name__)

# Reserve one token; a negative balance is the queue of callers already waiting.
# Returns the seconds the caller must wait before using its token.
_RESERVE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate) - 1
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], 60)
if tokens >= 0 then return '0' end
return tostring(-tokens / rate)
"""


class RateLimitWaitTooLong(Exception):
    """The queue for Stripe is longer than a caller may wait."""


class SharedRateLimiter:
    def __init__(self, client: redis.Redis, per_second: float, *, key: str = "stripe:rate_limit",
                 max_wait: float = 30.0, sleep: Callable[[float], None] = time.sleep):
        self.redis = client
        self.per_second = per_second
        self.burst = max(1.0, per_second / 10)  # at most a tenth of a second's worth at once
        self.key = key
        self.max_wait = max_wait
        self.sleep = sleep
        self._script = client.register_script(_RESERVE)

    def acquire(self) -> float:
        """Wait for a turn; returns the seconds waited. Without Redis, let the call through."""
        try:
            wait = float(self._script(keys=[self.key], args=[self.per_second, self.burst, time.time()]))
        except redis.RedisError as exc:
            log.warning("Stripe rate limiter unavailable; calling without it", extra={"error": str(exc)})
            return 0.0
        if wait > self.max_wait:
            raise RateLimitWaitTooLong(f"{wait:.1f} s of Stripe requests queued ahead")
        if wait > 0:
            self.sleep(wait)
        return wait

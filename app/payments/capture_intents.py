"""Capture-intent tokens in Redis: `capture_intent:{order_id}` lives exactly as long as the grace period.

The key's expiry is the primary capture trigger (a keyspace notification picked up by the
listener). Redis only emits `expired` when it actually deletes a key, which lags seconds
behind the TTL when many keys carry one (its active expiry samples keys at random); so each
key is also listed by its deadline, and the listener touches the keys whose deadline passed,
making Redis expire them at once.

The deadline index is a Redis list per 10-second window of deadlines,
`capture_intents:due:{window}`, each entry `{ms into the window, hex}:{order id}`: a list packs
its entries into a few kilobyte-sized listpacks, ~35 bytes each, where a sorted set of 100k
entries costs ~140 bytes per entry. With the key (~150 bytes) a live grace period costs under
200 bytes of Redis memory (see docs/performance.md). Entries are only ever appended, so a reader
can walk a window with an offset; a removed intent leaves its entry behind, harmless to touch.

Deadlines are computed from Redis's own clock (`TIME`, inside the script that sets the key), the
clock its TTLs run on, so a skewed application clock cannot make the index disagree with them.
The deadline also lives on the payment in the database, the source of truth if Redis loses keys.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from datetime import datetime

import redis

from app.models.base import utcnow

log = logging.getLogger(__name__)

KEY_PREFIX = "capture_intent:"
WINDOW_PREFIX = "capture_intents:due:"
WINDOW_MS = 10_000
# Entries for the usual "order_…" ids drop that prefix (6 of ~37 bytes); any other id is kept whole.
ORDER_ID_PREFIX = "order_"

# KEYS[1] the intent key. ARGV: TTL ms, index member without its offset, window prefix, window ms,
# seconds a window outlives its last deadline (a safety net when no listener runs to delete it).
# Returns the deadline in ms since the epoch, by Redis's clock, or nil when the key already exists.
_CREATE_SCRIPT = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return false end
local now = redis.call('TIME')
local deadline = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[1])
local width = tonumber(ARGV[4])
local window = math.floor(deadline / width)
local list = ARGV[3] .. string.format('%d', window)
redis.call('RPUSH', list, string.format('%x', deadline - window * width) .. ARGV[2])
redis.call('EXPIREAT', list, string.format('%d', math.floor((window + 1) * width / 1000) + tonumber(ARGV[5])))
return deadline
"""

# ARGV: window prefix, window ms, grace period ms. The entries of every window from the current one
# to the last a new grace period can reach, by Redis's clock.
_COUNT_SCRIPT = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local width = tonumber(ARGV[2])
local total = 0
for window = math.floor(now_ms / width), math.floor((now_ms + tonumber(ARGV[3])) / width) + 1 do
  total = total + redis.call('LLEN', ARGV[1] .. string.format('%d', window))
end
return total
"""


def intent_key(order_id: str) -> str:
    return f"{KEY_PREFIX}{order_id}"


def order_id_from_key(key: str) -> str | None:
    return key[len(KEY_PREFIX):] if key.startswith(KEY_PREFIX) else None


def window_key(window: int) -> str:
    return f"{WINDOW_PREFIX}{window}"


def _member_tail(order_id: str) -> str:
    """The index entry after its offset: ':' + id without "order_", or '=' + any other id."""
    if order_id.startswith(ORDER_ID_PREFIX):
        return ":" + order_id[len(ORDER_ID_PREFIX):]
    return "=" + order_id


_MEMBER = re.compile(r"([0-9a-f]+)([:=])(.+)", re.DOTALL)


def parse_member(member: bytes | str) -> tuple[int, str]:
    """(ms into its window, order id) of an index entry."""
    match = _MEMBER.fullmatch(member.decode() if isinstance(member, bytes) else member)
    if match is None:
        raise ValueError(f"not a capture-intent index entry: {member!r}")
    offset, separator, rest = match.groups()
    return int(offset, 16), (ORDER_ID_PREFIX + rest if separator == ":" else rest)


def server_time_ms(client: redis.Redis) -> int:
    seconds, microseconds = client.time()
    return seconds * 1000 + microseconds // 1000


class CaptureIntentService:
    """Creates, checks and removes capture-intent keys."""

    def __init__(self, client: redis.Redis, grace_period_seconds: int):
        self.redis = client
        self.grace_period_seconds = grace_period_seconds
        self._create = client.register_script(_CREATE_SCRIPT)
        self._count = client.register_script(_COUNT_SCRIPT)

    def create_intent(self, order_id: str, deadline: datetime | None = None) -> bool:
        """SET NX with the grace period as TTL (or what is left of it); False if the key already exists.

        NX: a repeated `order.placed` never extends a running grace period.
        """
        ttl_ms = self._ttl_ms(deadline, int(utcnow().timestamp() * 1000))
        return ttl_ms > 0 and self._create(**self._script_args(order_id, ttl_ms)) is not None

    def create_intents(self, intents: Iterable[tuple[str, datetime | None]]) -> int:
        """`create_intent` for many orders in one pipeline; returns how many keys were created."""
        now_ms = int(utcnow().timestamp() * 1000)
        pipe = self.redis.pipeline(transaction=False)
        queued = 0
        for order_id, deadline in intents:
            ttl_ms = self._ttl_ms(deadline, now_ms)
            if ttl_ms > 0:
                self._create(**self._script_args(order_id, ttl_ms), client=pipe)
                queued += 1
        if not queued:
            return 0
        return sum(1 for deadline_ms in pipe.execute() if deadline_ms is not None)

    def _ttl_ms(self, deadline: datetime | None, now_ms: int) -> int:
        if deadline is None:
            return self.grace_period_seconds * 1000
        return int(deadline.timestamp() * 1000) - now_ms

    def _script_args(self, order_id: str, ttl_ms: int) -> dict:
        return {"keys": [intent_key(order_id)],
                "args": [ttl_ms, _member_tail(order_id), WINDOW_PREFIX, WINDOW_MS, self.grace_period_seconds]}

    def validate_intent(self, order_id: str) -> bool:
        """True while the grace period runs (the key exists)."""
        return bool(self.redis.exists(intent_key(order_id)))

    def remaining_seconds(self, order_id: str) -> int | None:
        """Seconds left on the key, or None when it does not exist."""
        pttl = self.redis.pttl(intent_key(order_id))
        if pttl is None or pttl < 0:
            return None
        return math.ceil(pttl / 1000)

    def count_indexed(self) -> int:
        """Index entries with deadlines from the current window on: at least every live intent.

        (A removed intent leaves its entry, so this can exceed the live keys; a key lost with
        Redis's data, or never written, has no entry either.) One round trip: a script sums the
        lengths of the ~360 windows a grace period spans.
        """
        return int(self._count(args=[WINDOW_PREFIX, WINDOW_MS, self.grace_period_seconds * 1000]))

    def remove_intent(self, order_id: str) -> None:
        """The order no longer needs a capture (canceled, captured early).

        Its index entry stays (entries are append-only); touching a missing key is harmless.
        """
        self.redis.delete(intent_key(order_id))


class DueKeyToucher:
    """Walks the deadline windows in order and touches each key once its deadline has passed.

    One per listener; several listeners may walk the same windows (touching twice is harmless).
    Its position: the first window not finished, and how many entries at its head are done.
    """

    MAX_ENTRIES_PER_CALL = 5_000
    # An entry whose key still exists this long after its deadline is stale (the key was
    # re-created under a later deadline, which has its own entry).
    STALE_AFTER_MS = 2_000

    def __init__(self, client: redis.Redis, lookback_seconds: int):
        self.redis = client
        self.lookback_ms = lookback_seconds * 1000
        self.window: int | None = None
        self.offset = 0

    def touch_due(self, batch: int = 1000) -> int:
        """Touch the keys whose deadline passed; returns how many Redis expired."""
        now_ms = server_time_ms(self.redis)
        current = now_ms // WINDOW_MS
        if self.window is None:
            self.window = self._first_window(now_ms)
        expired = examined = 0
        while self.window <= current and examined < self.MAX_ENTRIES_PER_CALL:
            entries = self.redis.lrange(window_key(self.window), self.offset, self.offset + batch - 1)
            if not entries:
                if self.window == current:
                    break  # later entries of the current window are not written yet
                # A past window is complete: every new deadline lies in the future.
                self.redis.delete(window_key(self.window))
                self.window, self.offset = self.window + 1, 0
                continue
            examined += len(entries)
            done, gone = self._touch(entries, self.window * WINDOW_MS, now_ms)
            expired += gone
            self.offset += done
            if done < len(entries):
                break  # the head of this window is not due yet
        return expired

    def _touch(self, entries: list[bytes], window_start_ms: int, now_ms: int) -> tuple[int, int]:
        """Touch the due entries; returns (leading entries finished, keys that Redis expired)."""
        parsed = [parse_member(entry) for entry in entries]
        due = [(i, order_id) for i, (offset, order_id) in enumerate(parsed) if window_start_ms + offset < now_ms]
        pipe = self.redis.pipeline(transaction=False)
        for _, order_id in due:
            pipe.exists(intent_key(order_id))  # reading an expired key makes Redis delete it and publish `expired`
        still_there = {i for (i, _), exists in zip(due, pipe.execute()) if exists}
        finished = 0
        for i, (offset, _) in enumerate(parsed):
            overdue_by = now_ms - (window_start_ms + offset)
            if overdue_by <= 0 or (i in still_there and overdue_by < self.STALE_AFTER_MS):
                break
            finished += 1
        return finished, len(due) - len(still_there)

    def _first_window(self, now_ms: int) -> int:
        """The oldest window still in Redis (they outlive their deadlines by at most the lookback)."""
        first = (now_ms - self.lookback_ms) // WINDOW_MS
        current = now_ms // WINDOW_MS
        windows = list(range(first, current + 1))
        pipe = self.redis.pipeline(transaction=False)
        for window in windows:
            pipe.exists(window_key(window))
        return next((w for w, exists in zip(windows, pipe.execute()) if exists), current)


def service_for(app) -> CaptureIntentService:
    return CaptureIntentService(app.extensions["redis"], app.config["ENGINE"].grace_period_seconds)


def on_order_placed(app, order_id: str, trace_id: str | None = None, **_: object) -> None:
    """`order.placed` subscriber: start the grace period in Redis.

    A Redis failure must not fail the checkout: the order's deadline is in the database,
    and the sweep re-creates missing keys.
    """
    try:
        created = service_for(app).create_intent(order_id)
        log.info("capture intent created" if created else "capture intent already running", extra={"order_id": order_id})
    except redis.RedisError as exc:
        log.error("could not create capture intent; the sweep will re-arm it", extra={"order_id": order_id, "error": str(exc)})

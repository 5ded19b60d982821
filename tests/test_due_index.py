"""The deadline index that makes Redis expire capture-intent keys on time, on a real Redis."""

import time

import pytest

from app.payments.capture_intents import (
    WINDOW_MS,
    CaptureIntentService,
    DueKeyToucher,
    intent_key,
    parse_member,
    server_time_ms,
    window_key,
)

GRACE = 3600


@pytest.fixture
def redis(app):
    return app.extensions["redis"]


@pytest.fixture
def intents(redis):
    return CaptureIntentService(redis, GRACE)


def _short_intent(intents, order_id: str, ttl_ms: int) -> None:
    """A grace period of `ttl_ms` (the service takes the remaining time as a deadline)."""
    from datetime import timedelta

    from app.models.base import utcnow

    assert intents.create_intent(order_id, utcnow() + timedelta(milliseconds=ttl_ms))


def _entries(redis, deadline_ms: int) -> list[tuple[int, str]]:
    window = deadline_ms // WINDOW_MS
    return [(window * WINDOW_MS + offset, order_id)
            for offset, order_id in map(parse_member, redis.lrange(window_key(window), 0, -1))]


def test_an_intent_is_indexed_once_under_its_deadline_by_the_redis_clock(redis, intents):
    before = server_time_ms(redis)
    assert intents.create_intent("order_01abc") is True
    assert intents.create_intent("order_01abc") is False  # a repeated order.placed adds nothing
    deadline_ms = before + GRACE * 1000
    entries = [e for e in _entries(redis, deadline_ms) + _entries(redis, deadline_ms + WINDOW_MS)
               if e[1] == "order_01abc"]
    assert len(entries) == 1
    assert before + GRACE * 1000 <= entries[0][0] <= server_time_ms(redis) + GRACE * 1000
    assert redis.get(intent_key("order_01abc")) == b"1"


@pytest.mark.parametrize("order_id", ["order_01HZX9", "o-42", "ord:er=1"])
def test_any_order_id_comes_back_from_its_index_entry(redis, intents, order_id):
    intents.create_intent(order_id)
    deadline_ms = server_time_ms(redis) + GRACE * 1000
    found = [oid for _, oid in _entries(redis, deadline_ms) + _entries(redis, deadline_ms - WINDOW_MS)]
    assert found == [order_id]


@pytest.fixture
def crowded(redis):
    """20k live grace periods: Redis's own expiry samples keys at random and then hardly notices a few due ones."""
    pipe = redis.pipeline(transaction=False)
    for i in range(20_000):
        pipe.set(f"capture_intent:order_live{i:05d}", 1, px=GRACE * 1000)
    pipe.execute()


def _expired_events(redis):
    redis.config_set("notify-keyspace-events", "Ex")
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"__keyevent@{redis.connection_pool.connection_kwargs.get('db', 0)}__:expired")
    return pubsub


def _announced(pubsub, within: float = 1.0) -> set[str]:
    """Keys whose `expired` event arrives within `within` seconds (what the listener would enqueue)."""
    keys = set()
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.05)
        if message:
            keys.add(message["data"].decode())
    return keys


def test_touching_expires_due_keys_at_once_among_many_live_ones_and_leaves_the_rest(redis, intents, crowded):
    due = [f"order_due{i:03d}" for i in range(300)]
    for order_id in due:
        _short_intent(intents, order_id, 400)
    _short_intent(intents, "order_later", 60_000)
    toucher = DueKeyToucher(redis, lookback_seconds=GRACE)
    assert toucher.touch_due() == 0  # nothing is due yet
    events = _expired_events(redis)
    time.sleep(0.5)
    # (Reading the keys here would expire them too: only the events tell what the toucher did.)
    toucher.touch_due()
    assert _announced(events) == {intent_key(o) for o in due}
    events.close()
    assert redis.exists(intent_key("order_later")) == 1


def test_a_listener_started_after_a_window_passed_still_touches_it_then_deletes_it(redis, intents, crowded):
    _short_intent(intents, "order_a", 300)
    first_window = (server_time_ms(redis) + 300) // WINDOW_MS
    assert redis.exists(window_key(first_window))
    events = _expired_events(redis)
    # Redis's clock leaves the window before any listener runs.
    wait_ms = (first_window + 1) * WINDOW_MS - server_time_ms(redis)
    if wait_ms > 0:
        time.sleep(wait_ms / 1000 + 0.05)
    # A listener that starts now looks back a grace period and finds the window.
    toucher = DueKeyToucher(redis, lookback_seconds=GRACE)
    toucher.touch_due()
    assert intent_key("order_a") in _announced(events, within=0.5)
    events.close()
    # Past and done: the window is deleted (its own EXPIREAT is a grace period away).
    assert not redis.exists(window_key(first_window))


def test_a_removed_or_re_created_intent_does_not_hold_up_the_index(redis, intents, crowded):
    _short_intent(intents, "order_canceled", 200)
    intents.remove_intent("order_canceled")  # its entry stays behind
    _short_intent(intents, "order_rearmed", 200)
    redis.delete(intent_key("order_rearmed"))
    _short_intent(intents, "order_rearmed", 40_000)  # re-created under a later deadline
    _short_intent(intents, "order_next", 300)
    toucher = DueKeyToucher(redis, lookback_seconds=GRACE)
    events = _expired_events(redis)
    time.sleep(DueKeyToucher.STALE_AFTER_MS / 1000 + 0.5)
    toucher.touch_due(batch=1)  # one entry at a time: a stuck head would stop the walk
    assert intent_key("order_next") in _announced(events, within=0.5)
    events.close()
    assert redis.exists(intent_key("order_rearmed"))  # still in its new grace period

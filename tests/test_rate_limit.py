"""The Stripe request budget shared by every process through Redis."""

import pytest

from app.payments.rate_limit import RateLimitWaitTooLong, SharedRateLimiter


def _limiter(app, **kw):
    waits = []
    limiter = SharedRateLimiter(app.extensions["redis"], 10, sleep=waits.append, **kw)
    return limiter, waits


def test_callers_beyond_the_budget_queue_for_their_turn(app):
    first, slept_first = _limiter(app)
    second, slept_second = _limiter(app)  # another worker process, same Redis key
    waits = [first.acquire(), second.acquire(), first.acquire(), second.acquire()]
    assert waits[0] == 0  # the burst allowance (a tenth of a second's worth: 1 request)
    assert 0 < waits[1] < waits[2] < waits[3] <= 0.31  # then one every 0.1 s, in order of arrival
    assert sorted(slept_first + slept_second) == sorted(w for w in waits if w > 0)


def test_a_queue_too_long_is_refused_instead_of_waited(app):
    limiter, _ = _limiter(app, max_wait=0.15)
    limiter.acquire()
    limiter.acquire()
    with pytest.raises(RateLimitWaitTooLong):
        for _ in range(5):
            limiter.acquire()


def test_gateway_calls_go_through_the_shared_budget(app, settings, client, sim_control):
    from app.payments import stripe_gateway
    from tests.helpers import place_order

    settings(stripe_max_requests_per_second=1000)
    stripe_gateway.init_app(app)
    try:
        assert app.extensions["stripe_gateway"]._limiter is not None
        place_order(client, sim_control)
        assert app.extensions["redis"].exists("stripe:rate_limit") == 1
    finally:
        settings(stripe_max_requests_per_second=0)
        stripe_gateway.init_app(app)

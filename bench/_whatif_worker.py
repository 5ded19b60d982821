"""What-if for capture_drain.py --what-if: the capture worker with the proposed 429 handling (NOT the app's code).

    python bench/_whatif_worker.py      (the app's environment, like `flask --app wsgi worker`)

Two patches on top of the app, both described in docs/performance.md (F4):

1. `app.payments.capture._after_ambiguous_failure`: a `RateLimited` error releases the claim and asks
   RQ to retry at once, without first retrieving the PaymentIntent (a 429 means Stripe did nothing;
   the retrieve only spends another request against the exhausted limit). Since commit 9561cfa
   the app does this itself (`_after_rate_limit`), so this patch no longer changes anything there.
2. `StripeGateway._call` takes a token from a Redis token bucket shared by every worker process before
   each request: STRIPE_MAX_REQUESTS_PER_SECOND (burst STRIPE_BURST, default 5). Workers wait for
   their turn instead of collecting 429s.

The worker itself is the app's: an RQ SimpleWorker with the scheduler on the same queues, in an app context.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import create_app  # noqa: E402
from app.db_tx import write_transaction  # noqa: E402
from app.payments import capture, transitions  # noqa: E402
from app.payments.errors import RateLimited  # noqa: E402
from app.payments.stripe_gateway import StripeGateway  # noqa: E402

TOKEN_BUCKET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) * 1000 / rate) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], 60000)
return wait
"""


def main() -> int:
    app = create_app()
    rate = float(os.environ.get("STRIPE_MAX_REQUESTS_PER_SECOND", "0") or 0)
    burst = float(os.environ.get("STRIPE_BURST", "5"))
    connection = app.extensions["redis"]
    bucket = connection.register_script(TOKEN_BUCKET)

    original_after = capture._after_ambiguous_failure

    def after_ambiguous_failure(payment, amount, trigger, exc):
        if isinstance(exc, RateLimited):
            with write_transaction():
                transitions.release_capture_claim(payment.id, error=f"retrying: {exc.message}"[:500])
            capture._record_attempt(payment, "retrying", amount, trigger, error=exc.message[:500])
            raise capture.CaptureRetryLater(exc.message) from exc
        return original_after(payment, amount, trigger, exc)

    capture._after_ambiguous_failure = after_ambiguous_failure

    if rate > 0:
        original_call = StripeGateway._call

        def call(self, description, fn, *args, **kwargs):
            while True:
                wait_ms = bucket(keys=["stripe:ratelimit"], args=[rate, burst])
                if not wait_ms:
                    break
                time.sleep(wait_ms / 1000)
            return original_call(self, description, fn, *args, **kwargs)

        StripeGateway._call = call

    from rq import SimpleWorker

    from app.queues import QUEUE_NAMES, queue

    with app.app_context():
        worker = SimpleWorker([queue(name) for name in QUEUE_NAMES], connection=connection)
        worker.work(burst=False, with_scheduler=True, logging_level="INFO")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Helper process for capture_lag.py: subscribe to a keyevent channel and record when each key's event arrives.

    python bench/_subscriber.py REDIS_URL CHANNEL OUT_FILE READY_FILE

Writes READY_FILE once subscribed; on SIGTERM writes OUT_FILE as JSON {key: unix time of first event}.
Nothing but receiving happens in this process, so the times are Redis's delivery times.
"""

from __future__ import annotations

import json
import signal
import sys
import time

import redis


def main() -> int:
    url, channel, out_file, ready_file = sys.argv[1:5]
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    # Wait for the subscription confirmation before announcing readiness.
    while True:
        msg = pubsub.get_message(timeout=1.0)
        if msg and msg["type"] == "subscribe":
            break
    open(ready_file, "w").write("ready")
    stop = False

    def on_term(signum, frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    seen: dict[str, float] = {}
    get = pubsub.get_message
    now = time.time
    while not stop:
        msg = get(timeout=0.2)
        if msg is None or msg["type"] != "message":
            continue
        key = msg["data"]
        if isinstance(key, bytes):
            key = key.decode()
        if key not in seen:
            seen[key] = now()
    with open(out_file, "w") as fh:
        json.dump(seen, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())

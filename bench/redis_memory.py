"""Redis memory per live grace period: the `capture_intent:{order_id}` key plus its `capture_intents:due` entry.

On a private, empty redis-server, N grace periods (100k; 10k with --quick) are created with the engine's
own `CaptureIntentService.create_intent(order_id)` (order ids from `app.ids.new_id`, the real shape).
Two measures:

  MEMORY USAGE   per key (every key, SAMPLES 0) + the due index's MEMORY USAGE divided by N
  INFO used_memory delta over the N grace periods, divided by N (includes what MEMORY USAGE leaves out:
                 the expires-dict entry and the main dict's bucket array)

Measured in the same run for comparison (each on a flushed server):

  key only       the same SET with TTL and no due index (what a plain expired-event design costs)
  small value    what-if: the same key + index, but the value is just the deadline (the JSON value
                 repeats the order id that is already in the key)
  index only     what-if: only the `capture_intents:due` entry, no key (a design where the listener
                 polls the index instead of waiting for `expired`)
  RQ scheduled   `queue.enqueue_at(deadline, f, order_id)`: a job hash + scheduled-registry entry per
                 grace period (RQ's own scheduling)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

GOAL_BYTES = 200


def used_memory(r) -> int:
    return int(r.info("memory")["used_memory"])


def settle(r) -> int:
    # used_memory moves a little with client buffers; read it a few times and take the minimum.
    values = []
    for _ in range(3):
        time.sleep(0.05)
        values.append(used_memory(r))
    return min(values)


def measure(r, n: int, create, keys_of) -> dict:
    r.flushall()
    time.sleep(0.2)
    before = settle(r)
    ids = create(n)
    after = settle(r)
    keys = keys_of(ids)
    pipe = r.pipeline(transaction=False)
    for key in keys["per_item"]:
        pipe.memory_usage(key, samples=0)
    per_item = [v or 0 for v in pipe.execute()]
    shared = sum(r.memory_usage(key, samples=0) or 0 for key in keys["shared"])
    usage_total = sum(per_item) + shared
    return {
        "n": n,
        "memory_usage_per_item": usage_total / n,
        "memory_usage_key": sum(per_item) / n,
        "memory_usage_shared": shared / n,
        "used_memory_delta_per_item": (after - before) / n,
        "dbsize": r.dbsize(),
    }


def main() -> int:
    parser = c.arg_parser(__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=None, help="grace periods (default 100000; quick 10000)")
    args = parser.parse_args()
    n = args.n or (10_000 if args.quick else 100_000)
    c.header(f"Redis memory per live grace period (N={n:,})")

    import datetime as dt
    import json

    from rq import Queue

    from app.ids import new_id
    from app.payments.capture_intents import DUE_INDEX, CaptureIntentService, intent_key

    tmp = c.workdir("redis-memory")
    results = {}
    with c.processes() as procs, c.own_redis(procs, tmp) as url:
        r = c.redis_client(url)
        info = r.info("server")
        info["mem_allocator"] = r.info("memory").get("mem_allocator", "?")
        svc = CaptureIntentService(r, 3600)
        order_ids = [new_id("order") for _ in range(n)]

        def engine(count):
            for oid in order_ids[:count]:
                svc.create_intent(oid)
            return order_ids[:count]

        def key_only(count):
            pipe = r.pipeline(transaction=False)
            now_ms = int(time.time() * 1000)
            for oid in order_ids[:count]:
                value = json.dumps({"order_id": oid, "deadline_ms": now_ms + 3_600_000})
                pipe.set(intent_key(oid), value, nx=True, ex=3600)
            pipe.execute()
            return order_ids[:count]

        def small_value(count):
            pipe = r.pipeline(transaction=False)
            deadline_ms = int(time.time() * 1000) + 3_600_000
            for oid in order_ids[:count]:
                pipe.set(intent_key(oid), deadline_ms, nx=True, px=3_600_000)
                pipe.zadd(DUE_INDEX, {oid: deadline_ms}, nx=True)
            pipe.execute()
            return order_ids[:count]

        def index_only(count):
            pipe = r.pipeline(transaction=False)
            deadline_ms = int(time.time() * 1000) + 3_600_000
            for oid in order_ids[:count]:
                pipe.zadd(DUE_INDEX, {oid: deadline_ms}, nx=True)
            pipe.execute()
            return order_ids[:count]

        queue = Queue("captures", connection=r)

        def rq_scheduled(count):
            at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
            for start in range(0, count, 1000):
                pipe = r.pipeline(transaction=False)
                for oid in order_ids[start:start + 1000]:
                    queue.enqueue_at(at, "app.jobs.capture_order_job", oid, "expiry", job_id=f"capture-{oid}",
                                     result_ttl=0, pipeline=pipe)
                pipe.execute()
            return order_ids[:count]

        ways = [
            ("engine: key + due-index entry", engine,
             lambda ids: {"per_item": [intent_key(i) for i in ids], "shared": [DUE_INDEX]}),
            ("key only (no due index)", key_only,
             lambda ids: {"per_item": [intent_key(i) for i in ids], "shared": []}),
            ("what-if: value = deadline only", small_value,
             lambda ids: {"per_item": [intent_key(i) for i in ids], "shared": [DUE_INDEX]}),
            ("what-if: due index only (no keys)", index_only,
             lambda ids: {"per_item": [], "shared": [DUE_INDEX]}),
            ("RQ enqueue_at (job hash + registry)", rq_scheduled,
             lambda ids: {"per_item": [f"rq:job:capture-{i}" for i in ids],
                          "shared": ["rq:scheduled:captures"]}),
        ]
        for name, create, keys_of in ways:
            print(f"-- {name} ...", flush=True)
            results[name] = measure(r, n, create, keys_of)
        sample_key = intent_key(order_ids[0])
        r.flushall()
        svc.create_intent(order_ids[0])
        sample_value = r.get(sample_key)

    engine_delta = results["engine: key + due-index entry"]["used_memory_delta_per_item"]
    rows = []
    for name, res in results.items():
        rows.append([name, res["memory_usage_key"], res["memory_usage_shared"], res["memory_usage_per_item"],
                     res["used_memory_delta_per_item"], res["used_memory_delta_per_item"] / engine_delta])
    print()
    print(f"redis {info['redis_version']}, {info.get('mem_allocator', '?')}; sample key {sample_key!r} "
          f"({len(sample_key)} B), value {sample_value!r} ({len(sample_value)} B)")
    print(c.table(["way", "key B", "index B", "MEMORY USAGE B", "used_memory Δ B", "× engine"],
                  rows, digits=1))
    verdict = "meets" if engine_delta < GOAL_BYTES else "MISSES"
    print(f"goal < {GOAL_BYTES} B per grace period (used_memory delta): {engine_delta:.0f} B → {verdict}")
    c.save_results("redis_memory", args, {
        "n": n, "redis_version": info["redis_version"], "sample_key": sample_key,
        "sample_value": sample_value.decode(), "results": results, "goal_bytes": GOAL_BYTES})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Redis memory per live grace period: the `capture_intent:{order_id}` key plus its deadline-index entry.

On a private, empty redis-server, N grace periods (100k; 10k with --quick) are created with the engine's
own `CaptureIntentService` (order ids from `app.ids.new_id`, the real shape). Two measures:

  MEMORY USAGE   per key (every key, SAMPLES 0) + the index lists' MEMORY USAGE divided by N
  INFO used_memory delta over the N grace periods, divided by N (includes what MEMORY USAGE leaves out:
                 the expires-dict entries and the main dict's bucket array)

Ways, each on a flushed server in the same run:

  engine, steady      the engine, deadlines spread over the grace period (orders arriving evenly for an
                      hour: N / 360 entries per 10-second index window). The figure the goal is about.
  engine, burst       the engine, all N created at once (a few windows holding thousands of entries each)
  key only            the same SET with TTL and no index (what a plain expired-event design costs)
  previous design     key holding the deadline + one sorted set `capture_intents:due` as the index
                      (the engine before the list index; 406 B with a JSON value before that)
  RQ scheduled        `queue.enqueue_at(deadline, f, order_id)`: a job hash + scheduled-registry entry per
                      grace period (RQ's own scheduling)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

GOAL_BYTES = 200
ENGINE = "engine, steady (deadlines over 1 h)"
OLD_INDEX = "capture_intents:due"


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
    from app.payments.capture_intents import WINDOW_PREFIX, CaptureIntentService, intent_key

    def engine_keys(ids):
        windows = [k.decode() for k in r.scan_iter(match=f"{WINDOW_PREFIX}*", count=1000)]
        return {"per_item": [intent_key(i) for i in ids], "shared": windows}

    tmp = c.workdir("redis-memory")
    results = {}
    with c.processes() as procs, c.own_redis(procs, tmp) as url:
        r = c.redis_client(url)
        info = r.info("server")
        info["mem_allocator"] = r.info("memory").get("mem_allocator", "?")
        svc = CaptureIntentService(r, 3600)
        order_ids = [new_id("order") for _ in range(n)]

        def engine(count, spread_s):
            now = dt.datetime.now(dt.timezone.utc)
            for start in range(0, count, 1000):
                svc.create_intents(
                    (oid, now + dt.timedelta(seconds=3600 - spread_s + spread_s * (start + i) / count))
                    for i, oid in enumerate(order_ids[start:start + 1000]))
            return order_ids[:count]

        def key_only(count):
            pipe = r.pipeline(transaction=False)
            for oid in order_ids[:count]:
                pipe.set(intent_key(oid), 1, nx=True, ex=3600)
            pipe.execute()
            return order_ids[:count]

        def previous_design(count):
            pipe = r.pipeline(transaction=False)
            deadline_ms = int(time.time() * 1000) + 3_600_000
            for oid in order_ids[:count]:
                pipe.set(intent_key(oid), deadline_ms, nx=True, px=3_600_000)
                pipe.zadd(OLD_INDEX, {oid: deadline_ms}, nx=True)
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
            (ENGINE, lambda count: engine(count, 3600), engine_keys),
            ("engine, burst (all at once)", lambda count: engine(count, 0), engine_keys),
            ("key only (no index)", key_only,
             lambda ids: {"per_item": [intent_key(i) for i in ids], "shared": []}),
            ("previous design: key + sorted set", previous_design,
             lambda ids: {"per_item": [intent_key(i) for i in ids], "shared": [OLD_INDEX]}),
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
        sample_entry = next(r.lindex(k, 0) for k in r.scan_iter(match=f"{WINDOW_PREFIX}*"))

    engine_delta = results[ENGINE]["used_memory_delta_per_item"]
    rows = []
    for name, res in results.items():
        rows.append([name, res["memory_usage_key"], res["memory_usage_shared"], res["memory_usage_per_item"],
                     res["used_memory_delta_per_item"], res["used_memory_delta_per_item"] / engine_delta])
    print()
    print(f"redis {info['redis_version']}, {info.get('mem_allocator', '?')}; sample key {sample_key!r} "
          f"({len(sample_key)} B), value {sample_value!r} ({len(sample_value)} B), index entry {sample_entry!r} "
          f"({len(sample_entry)} B)")
    print(c.table(["way", "key B", "index B", "MEMORY USAGE B", "used_memory Δ B", "× engine"],
                  rows, digits=1))
    verdict = "meets" if engine_delta < GOAL_BYTES else "MISSES"
    print(f"goal < {GOAL_BYTES} B per grace period (used_memory delta): {engine_delta:.0f} B → {verdict}")
    c.save_results("redis_memory", args, {
        "n": n, "redis_version": info["redis_version"], "sample_key": sample_key,
        "sample_value": sample_value.decode(), "sample_index_entry": sample_entry.decode(), "results": results, "goal_bytes": GOAL_BYTES})
    return 0


if __name__ == "__main__":
    sys.exit(main())

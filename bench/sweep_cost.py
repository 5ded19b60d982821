"""Sweep cost: `app.payments.sweep.sweep()` duration against the size of the orders table.

The tables grow 10k → 100k → 1M orders (1k → 10k with --quick), bulk-inserted with SQLAlchemy core
(COPY on PostgreSQL): one cart, order, payment collection, payment session and payment per order.
Almost all are captured; a fixed backlog stays the same at every size:

  50 overdue    authorized 2 h ago, deadline 1 h ago: the sweep must enqueue their captures
  100 live      authorized 10 min ago, deadline in 50 min, their keys present in Redis

Each size: one warm-up sweep, then 9 timed sweeps (5 with --quick), Redis flushed and the live keys
re-created before each so every sweep does the same work. SQLite (a file) and PostgreSQL (db `bench`).
The baseline is the 10k (1k) sweep of the same backend; the goal is 1M / 10k < 2.
The EXPLAIN plans of every statement the sweep ran at the largest size are printed at the end.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

UTC = dt.timezone.utc
BACKLOG = 50
LIVE = 100
CHUNK = 100_000


def insert_batch(app, start: int, count: int, now: dt.datetime, first: bool) -> None:
    """`count` orders numbered from `start`; the first batch also carries the backlog and the live ones."""
    done = 0
    while done < count:
        size = min(CHUNK, count - done)
        base = start + done
        statuses, due, authorized = [], [], []
        for i in range(size):
            k = base + i
            if first and k < BACKLOG:
                statuses.append("authorized")
                authorized.append(now - dt.timedelta(hours=2))
                due.append(now - dt.timedelta(hours=1))
            elif first and k < BACKLOG + LIVE:
                statuses.append("authorized")
                authorized.append(now - dt.timedelta(minutes=10))
                due.append(now + dt.timedelta(minutes=50))
            else:
                # Captured orders spread over the last 90 days.
                t = now - dt.timedelta(seconds=7200 + (k * 7919) % (90 * 86400))
                statuses.append("captured")
                authorized.append(t)
                due.append(t + dt.timedelta(hours=1))
        rows = c.order_rows(size, now=now, salt="w", statuses=statuses, due_at=due, authorized_at=authorized,
                            offset=base)
        c.insert_rows(app, rows, display_id_start=1_000_000 + base)
        done += size


def live_order_ids() -> list[str]:
    return [c.fake_id("order", i, "w") for i in range(BACKLOG, BACKLOG + LIVE)]


def timed_sweeps(app, r, repeats: int, capture_sql: bool = False) -> tuple[list[float], list, dict]:
    from sqlalchemy import event

    from app.extensions import db
    from app.payments.capture_intents import CaptureIntentService
    from app.payments.sweep import sweep

    svc = CaptureIntentService(r, 3600)
    deadline = dt.datetime.now(UTC) + dt.timedelta(minutes=49)
    times: list[float] = []
    statements: list = []
    last = {}
    for i in range(repeats + 1):
        r.flushdb()
        for oid in live_order_ids():
            svc.create_intent(oid, deadline)
        with app.app_context():
            engine = db.engine
            listener = None
            if capture_sql and i == repeats:
                def listener(conn, cursor, statement, parameters, context, executemany):
                    statements.append((statement, parameters))
                event.listen(engine, "before_cursor_execute", listener)
            started = time.perf_counter()
            result = sweep()
            elapsed = time.perf_counter() - started
            if listener is not None:
                event.remove(engine, "before_cursor_execute", listener)
            db.session.remove()
        last = result.as_dict()
        if i:  # the first one warms caches and connections
            times.append(elapsed)
    return times, statements, last


def explain(app, statements) -> list[tuple[str, str]]:
    from app.extensions import db

    plans = []
    seen = set()
    with app.app_context():
        engine = db.engine
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            for statement, params in statements:
                norm = " ".join(statement.split())
                if not norm.upper().startswith("SELECT") or norm in seen:
                    continue
                seen.add(norm)
                if engine.dialect.name == "postgresql":
                    cur.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) " + statement, params)
                    plan = "\n".join(row[0] for row in cur.fetchall())
                else:
                    cur.execute("EXPLAIN QUERY PLAN " + statement, params)
                    plan = "\n".join(row[-1] for row in cur.fetchall())
                plans.append((norm, plan))
            raw.rollback()
        finally:
            raw.close()
    return plans


def run_backend(backend: str, sizes: list[int], repeats: int, tmp: Path, redis_url: str) -> dict:
    database_url = c.PG_URL if backend == "postgresql" else f"sqlite:///{tmp}/sweep.sqlite3"
    if backend == "postgresql":
        c.ensure_pg_database()
    env = c.app_env(database_url, redis_url)
    app = c.make_app(env)
    c.reset_schema(app)
    r = c.redis_client(redis_url)
    now = dt.datetime.now(UTC)
    have = 0
    out = {"backend": backend, "sizes": []}
    statements = []
    for size in sizes:
        t0 = time.perf_counter()
        insert_batch(app, have, size - have, now, first=(have == 0))
        inserted_in = time.perf_counter() - t0
        have = size
        capture = size == sizes[-1]
        times, stmts, last = timed_sweeps(app, r, repeats, capture_sql=capture)
        if capture:
            statements = stmts
        s = c.summary(times)
        out["sizes"].append({"orders": size, "insert_s": inserted_in, "median_s": s["p50"], "min_s": s["min"],
                             "max_s": s["max"], "times_s": times, "last_result": last})
        print(f"   {backend:10s} {size:>9,} orders: insert {inserted_in:6.1f}s, sweep median "
              f"{s['p50'] * 1000:8.1f} ms (min {s['min'] * 1000:.1f}, max {s['max'] * 1000:.1f}); "
              f"enqueued {last['enqueued']}, overdue {last['overdue_seen']}", flush=True)
    out["plans"] = explain(app, statements)
    # Release the app's pooled connections before the next backend's app.
    from app.extensions import db

    with app.app_context():
        db.engine.dispose()
    return out


def main() -> int:
    parser = c.arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None, help="cumulative order counts (default 10000,100000,1000000)")
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    sizes = [int(s) for s in (args.sizes or ("1000,10000" if args.quick else "10000,100000,1000000")).split(",")]
    repeats = 5 if args.quick else 9
    c.header("sweep cost vs. orders table size")
    tmp = c.workdir("sweep")
    results = []
    with c.processes() as procs, c.own_redis(procs, tmp) as redis_url:
        for backend in args.backends.split(","):
            results.append(run_backend(backend, sizes, repeats, tmp, redis_url))

    rows = []
    for res in results:
        base = res["sizes"][0]["median_s"]
        for s in res["sizes"]:
            rows.append([res["backend"], s["orders"], s["median_s"] * 1000, s["min_s"] * 1000, s["max_s"] * 1000,
                         s["median_s"] / base])
    print()
    print(c.table(["backend", "orders", "median ms", "min ms", "max ms", f"× {sizes[0]:,}"], rows, digits=2))
    for res in results:
        ratio = res["sizes"][-1]["median_s"] / res["sizes"][0]["median_s"]
        verdict = "meets" if ratio < 2 else "MISSES"
        print(f"goal {sizes[-1]:,} / {sizes[0]:,} < 2 on {res['backend']}: {ratio:.2f} → {verdict}")
    for res in results:
        print(f"\n-- EXPLAIN of the sweep's queries, {res['backend']}, {sizes[-1]:,} orders")
        for statement, plan in res["plans"]:
            print(f"\n{statement}\n" + "\n".join("    " + line for line in plan.splitlines()))
    c.save_results("sweep_cost", args, {"backlog": BACKLOG, "live": LIVE, "repeats": repeats, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())

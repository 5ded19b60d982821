"""Capture drain: 10k captures due at once against a Stripe that allows 100 requests/s.

Setup: 10k PaymentIntents authorized at the simulator (500 with --quick), their orders and authorized
payments in PostgreSQL (db `bench`) with the deadline just passed, a private redis-server. Two worker
processes (`flask --app wsgi worker`, the Procfile's) start idle; then the simulator's rate limit is
set (`SimControl.set_rate_limit(100)`: a token bucket over every /v1 request, burst 100) and every
capture is enqueued at once with the engine's own `enqueue_capture(order_id, "sweep")`, as the sweep
or a listener catch-up would after an outage.

Measured until every payment is captured (or a time limit): time to drain, effective captures/s as
a share of the limit, the 429s the simulator answered, and what became of them (capture attempts
marked `retrying`, jobs RQ retried or failed, payments left `capture_failed`). The baseline in the
same run is the limit itself and, with --baseline, the same drain with no rate limit.
Goal: ≥ 90% of the limit, no capture failed because of a 429.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

UTC = dt.timezone.utc
LIMIT = 100.0


def drain(lab_env, app, procs, tmp, sim_url, redis_url, count: int, limit: float | None, time_limit: float,
          tag: str, worker_count: int = 2, budget: int = 0, payments_per_order: int = 1) -> dict:
    """Drain `count` captures: `count` orders of one payment, or `count // 2` orders of two payments
    (an increase paid with a second authorization) with `payments_per_order=2`: the same Stripe work."""
    from sqlalchemy import text

    from app.extensions import db
    from app.queues import enqueue_capture
    from stripe_sim.control import SimControl

    r = c.redis_client(redis_url)
    r.flushall()
    control = SimControl(sim_url)
    control.reset()
    with app.app_context():
        with db.engine.begin() as conn:
            conn.execute(text("TRUNCATE carts, orders, payment_collections, payment_sessions, payments, captures, "
                              "capture_attempts, order_transactions CASCADE"))
        db.session.remove()
    print(f"   [{tag}] authorizing {count:,} PaymentIntents at the simulator ...", flush=True)
    orders = count // payments_per_order
    intents = c.authorized_intents(sim_url, orders)
    second = c.authorized_intents(sim_url, orders, amount=c.SECOND_PAYMENT_AMOUNT) if payments_per_order == 2 else None
    count = orders * payments_per_order
    now = dt.datetime.now(UTC)
    due = now - dt.timedelta(seconds=1)
    rows = c.order_rows(orders, now=now, salt="d", statuses=["authorized"] * orders, due_at=[due] * orders,
                        authorized_at=[now - dt.timedelta(hours=1)] * orders, intents=intents, second_intents=second)
    c.insert_rows(app, rows)
    order_ids = [row["id"] for row in rows["orders"]]
    requests_before = control.ledger()["requests"]

    workers = []
    argv = [str(c.VENV_BIN / "flask"), "--app", "wsgi", "worker"]
    worker_env = dict(lab_env, STRIPE_MAX_REQUESTS_PER_SECOND=str(budget)) if budget else lab_env
    for i in range(worker_count):
        w = c.Proc(f"worker-{i}", argv, env=worker_env,
                   log=tmp / f"worker-{tag.replace('/', 'per').replace(' ', '-')}-{i}.log")
        procs.append(w)
        workers.append(w)
    limit_at = time.monotonic() + 30
    while r.scard("rq:workers") < worker_count:
        if time.monotonic() > limit_at:
            raise RuntimeError("workers did not start: " + workers[0].log_tail())
        time.sleep(0.05)
    if limit:
        control.set_rate_limit(limit)
    t0 = time.time()
    with app.app_context():
        for oid in order_ids:
            enqueue_capture(oid, "sweep")
    enqueued_in = time.time() - t0
    print(f"   [{tag}] {count:,} captures enqueued in {enqueued_in:.1f}s; draining ...", flush=True)

    def status_counts() -> dict:
        with app.app_context():
            counts = dict(db.session.execute(text("SELECT status, count(*) FROM payments GROUP BY status")).all())
            db.session.remove()
        return counts

    last_report = time.time()
    while True:
        counts = status_counts()
        if counts.get("captured", 0) >= count or time.time() - t0 > time_limit:
            break
        if time.time() - last_report > 15:
            print(f"   [{tag}] t+{time.time() - t0:.0f}s: {counts}", flush=True)
            last_report = time.time()
        time.sleep(0.5)
    finished = time.time()
    for w in workers:
        w.stop()
    if limit:
        control.set_rate_limit(None)
    ledger = control.ledger()
    captures = [op for op in ledger["operations"] if op["op"] == "capture"]
    with app.app_context():
        attempts = dict(db.session.execute(text(
            "SELECT outcome, count(*) FROM capture_attempts GROUP BY outcome")).all())
        errors = dict(db.session.execute(text(
            "SELECT coalesce(last_capture_error, ''), count(*) FROM payments WHERE status <> 'captured' "
            "GROUP BY 1")).all())
        captured_at = [row[0].timestamp() for row in db.session.execute(text(
            "SELECT captured_at FROM payments WHERE captured_at IS NOT NULL ORDER BY captured_at")).all()]
        db.session.remove()
    from rq import Queue
    from rq.registry import FailedJobRegistry, ScheduledJobRegistry

    q = Queue("captures", connection=r)
    failed_jobs = FailedJobRegistry(queue=q)
    failed_ids = failed_jobs.get_job_ids()
    failed_429 = 0
    for job_id in failed_ids:
        job = q.fetch_job(job_id)
        info = (job.latest_result().exc_string if job and job.latest_result() else "") or ""
        if "rate" in info.lower() or "429" in info:
            failed_429 += 1
    captured = counts.get("captured", 0)
    drain_s = (captured_at[-1] - t0) if captured_at else float("nan")
    lags = [at - due.timestamp() for at in captured_at]
    return {
        "tag": tag,
        "workers": worker_count,
        "count": count,
        "payments_per_order": payments_per_order,
        "orders": orders,
        "lag_p50_s": c.pct(lags, 50),
        "lag_p99_s": c.pct(lags, 99),
        "limit_rps": limit,
        "enqueued_in_s": enqueued_in,
        "drained": captured >= count,
        "captured": captured,
        "status_counts": counts,
        "drain_s": drain_s,
        "captures_per_s": captured / drain_s if captured_at else 0.0,
        "share_of_limit": (captured / drain_s / limit) if (limit and captured_at) else None,
        "stripe_requests": ledger["requests"] - requests_before,
        "stripe_captures": len(captures),
        "rate_limited_429": ledger["faults"].get("rate_limited", 0),
        "attempt_outcomes": attempts,
        "open_payment_errors": errors,
        "rq_failed_jobs": len(failed_ids),
        "rq_failed_jobs_429": failed_429,
        "rq_scheduled_retries_left": ScheduledJobRegistry(queue=q).count,
        "rq_queued_left": q.count,
        "waited_s": finished - t0,
        "captured_timeline": captured_at[:: max(1, len(captured_at) // 400)],
        "t0": t0,
    }


def main() -> int:
    parser = c.arg_parser(__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=None, help="captures (default 10000; quick 500)")
    parser.add_argument("--time-limit", type=float, default=None, help="stop waiting after this many seconds")
    parser.add_argument("--baseline", action="store_true", help="also drain once with no rate limit")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2, the brief's)")
    parser.add_argument("--budget", type=int, default=0,
                        help="also drain with the app's shared Stripe budget (STRIPE_MAX_REQUESTS_PER_SECOND)")
    parser.add_argument("--limit", type=float, default=LIMIT, help="requests/s the simulator allows (default 100)")
    parser.add_argument("--two-payments", action="store_true",
                        help="also drain the same number of captures as orders of two payments (order increases), "
                             "and compare (P6)")
    args = parser.parse_args()
    count = args.n or (500 if args.quick else 10_000)
    time_limit = args.time_limit or (20.0 if args.quick else 240.0)
    limit = args.limit
    c.header(f"capture drain: {count:,} captures due at once, simulator limited to {limit:.0f} requests/s")
    tmp = c.workdir("drain")
    results = []
    with c.processes() as procs, c.own_redis(procs, tmp) as redis_url, c.simulator(procs, tmp) as sim_url:
        c.ensure_pg_database()
        env = c.app_env(c.PG_URL, redis_url, sim_url)
        app = c.make_app(env)
        c.reset_schema(app)
        if args.baseline:
            results.append(drain(env, app, procs, tmp, sim_url, redis_url, count, None, time_limit, "no limit",
                                 args.workers))
        results.append(drain(env, app, procs, tmp, sim_url, redis_url, count, limit, time_limit, f"{limit:.0f}/s",
                             args.workers))
        if args.two_payments:
            results.append(drain(env, app, procs, tmp, sim_url, redis_url, count, limit, time_limit,
                                 f"{limit:.0f}/s, 2 payments/order", args.workers, payments_per_order=2))
        if args.budget:
            results.append(drain(env, app, procs, tmp, sim_url, redis_url, count, limit, time_limit,
                                 f"{limit:.0f}/s, app budget {args.budget}/s", args.workers, budget=args.budget))

    rows = []
    for res in results:
        rows.append([res["tag"], res["workers"], res["count"], res["captured"], res["drain_s"], res["captures_per_s"],
                     res["share_of_limit"] if res["share_of_limit"] is not None else float("nan"),
                     res["stripe_requests"], res["rate_limited_429"], res["attempt_outcomes"].get("retrying", 0),
                     res["rq_failed_jobs"], res["status_counts"].get("capture_failed", 0)])
    print()
    print(c.table(["limit", "workers", "due", "captured", "drain s", "captures/s", "× limit", "Stripe reqs", "429s",
                   "retrying", "RQ failed", "capture_failed"], rows, digits=2))
    main_res = next(r for r in results if r["limit_rps"] and r.get("payments_per_order", 1) == 1)
    two = next((r for r in results if r.get("payments_per_order") == 2), None)
    if two is not None:
        rate = two["captures_per_s"] / main_res["captures_per_s"] if main_res["captures_per_s"] else float("nan")
        lag = two["lag_p99_s"] / main_res["lag_p99_s"] if main_res["lag_p99_s"] else float("nan")
        print(f"P6 two payments per order vs one, same captures: captures/s × {rate:.3f}, capture lag p99 × {lag:.3f} "
              f"(p50 {two['lag_p50_s']:.2f} s vs {main_res['lag_p50_s']:.2f} s) → goal within 10%: "
              f"{'meets' if rate >= 0.9 and lag <= 1.1 else 'MISSES'} (no slower than 10%)")
    print(f"left when stopped: {main_res['status_counts']}; scheduled retries {main_res['rq_scheduled_retries_left']}, "
          f"queued {main_res['rq_queued_left']}; errors on open payments: {main_res['open_payment_errors']}")
    share = main_res["share_of_limit"] or 0.0
    failed = main_res["rq_failed_jobs_429"] + main_res["status_counts"].get("capture_failed", 0)
    print(f"goal ≥ 90% of the limit: {share:.0%} → {'meets' if share >= 0.9 and main_res['drained'] else 'MISSES'}; "
          f"goal 0 captures failed by a 429: {failed} → {'meets' if failed == 0 else 'MISSES'}")
    name = "capture_drain"
    if args.workers != 2 or limit != LIMIT:
        name += f"_{args.workers}w_{limit:.0f}rps"
    if args.two_payments:
        name += "_two_payments"
    c.save_results(name, args, {"limit_rps": limit, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())

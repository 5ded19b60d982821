"""Checkout throughput: cart → line item → payment-intent → confirm at the simulator → complete, per second.

The app runs as `gunicorn wsgi:app -w 2 --threads 4` (PostgreSQL db `bench`, a private redis-server,
the Stripe simulator as its Stripe); a closed-loop load generator in two other processes (4 threads
each, keep-alive `requests` sessions) repeats whole checkouts. Each checkout is 4 requests to the app
(2 of which call Stripe: create the PaymentIntent; retrieve it on complete, which places the order and
starts its grace period in Redis) and 1 from the "browser" to the simulator (confirm).

The ceiling is measured in the same run with the same load generator and concurrency: a bare Flask
endpoint under the same gunicorn settings (`_bare_app.py`), in requests per second. Ratios: app
requests/s (4 per checkout) over ceiling requests/s, and checkouts/s over ceiling/4 (the most
checkouts the HTTP stack alone would allow).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402
import _loadgen  # noqa: E402

PROCESSES, THREADS = 2, 4


def main() -> int:
    parser = c.arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=None, help="seconds per measured run (20; quick 5)")
    parser.add_argument("--rounds", type=int, default=None, help="ceiling/app pairs (2; quick 1)")
    args = parser.parse_args()
    duration = args.duration or (5.0 if args.quick else 20.0)
    rounds = args.rounds or (1 if args.quick else 2)
    c.header("checkout throughput through gunicorn -w 2 --threads 4")
    tmp = c.workdir("checkout")
    runs = []
    with c.processes() as procs, c.own_redis(procs, tmp) as redis_url, c.simulator(procs, tmp) as sim_url:
        c.ensure_pg_database()
        env = c.app_env(c.PG_URL, redis_url, sim_url)
        app = c.make_app(env)
        c.reset_schema(app)
        from sqlalchemy import text

        from app.extensions import db

        product_id = c.seeded_product_id(app)
        app_url = c.gunicorn(procs, tmp, "app", "wsgi:app", env, health_path="/health")
        bare_url = c.gunicorn(procs, tmp, "bare", "_bare_app:app", env, chdir=c.BENCH)
        params = {"app_url": app_url, "sim_url": sim_url, "product_id": product_id, "url": f"{bare_url}/bare"}
        _loadgen.run("checkout", 1, 2, 2, params)  # warm-up: connections, caches
        _loadgen.run("bare", 1, 2, 1, params)
        for rnd in range(rounds):
            res = _loadgen.run("bare", PROCESSES, THREADS, duration, params)
            runs.append({"target": "ceiling", "round": rnd, **res})
            print(f"   round {rnd + 1}: ceiling {res['per_s']:8.0f} requests/s", flush=True)
            res = _loadgen.run("checkout", PROCESSES, THREADS, duration, params)
            runs.append({"target": "checkout", "round": rnd, **res})
            print(f"   round {rnd + 1}: app     {res['per_s']:8.1f} checkouts/s "
                  f"({res['app_requests'] / duration:.0f} app requests/s), errors {res['errors'] or 0}", flush=True)
        with app.app_context():
            orders = db.session.execute(text("SELECT count(*) FROM orders")).scalar()
            payments = db.session.execute(text("SELECT count(*) FROM payments WHERE status = 'authorized'")).scalar()
            db.session.remove()
        keys = sum(1 for _ in c.redis_client(redis_url).scan_iter(match="capture_intent:*", count=1000))

    ceil = [r for r in runs if r["target"] == "ceiling"]
    chk = [r for r in runs if r["target"] == "checkout"]
    ceiling_rps = c.median([r["per_s"] for r in ceil])
    checkouts = c.median([r["per_s"] for r in chk])
    app_rps = c.median([r["app_requests"] / r["duration_s"] for r in chk])
    all_lat = [x for r in chk for x in r["latencies"]]
    ceil_lat = [x for r in ceil for x in r["latencies"]]
    steps: dict[str, list[float]] = {}
    for r in chk:
        for k, v in r["steps"].items():
            steps.setdefault(k, []).extend(v)
    rows = [
        ["ceiling: bare endpoint", "request", ceiling_rps, c.pct(ceil_lat, 50) * 1000, c.pct(ceil_lat, 99) * 1000, 1.0],
        ["app: whole checkout", "checkout", checkouts, c.pct(all_lat, 50) * 1000, c.pct(all_lat, 99) * 1000,
         checkouts / (ceiling_rps / 4)],
        ["app: its 4 requests", "request", app_rps, float("nan"), float("nan"), app_rps / ceiling_rps],
    ]
    print()
    print(c.table(["target", "unit", "per s", "p50 ms", "p99 ms", "× ceiling"], rows, digits=1))
    step_rows = [[name, len(v), c.pct(v, 50) * 1000, c.pct(v, 99) * 1000] for name, v in steps.items()]
    print(c.table(["step", "count", "p50 ms", "p99 ms"], step_rows, digits=1))
    errors: dict[str, int] = {}
    for r in chk:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    print(f"orders placed {orders:,}, authorized payments {payments:,}, grace periods in Redis {keys:,}; "
          f"errors {errors or 'none'}")
    c.save_results("checkout", args, {
        "duration_s": duration, "rounds": rounds, "concurrency": PROCESSES * THREADS,
        "ceiling_rps": ceiling_rps, "checkouts_per_s": checkouts, "app_rps": app_rps,
        "ratio_requests": app_rps / ceiling_rps, "ratio_checkouts": checkouts / (ceiling_rps / 4),
        "checkout_p50_ms": c.pct(all_lat, 50) * 1000, "checkout_p99_ms": c.pct(all_lat, 99) * 1000,
        "steps": {k: {"n": len(v), "p50_ms": c.pct(v, 50) * 1000, "p99_ms": c.pct(v, 99) * 1000}
                  for k, v in steps.items()},
        "orders": orders, "errors": errors,
        "runs": [{k: v for k, v in r.items() if k not in ("latencies", "steps")} for r in runs]})
    return 0


if __name__ == "__main__":
    sys.exit(main())

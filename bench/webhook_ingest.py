"""Webhook ingest: signed Stripe events per second through gunicorn, against the HTTP stack's ceiling.

Both targets run under the Procfile's web settings (`gunicorn -w 2 --threads 4`) on free ports:

  app      `gunicorn wsgi:app`, PostgreSQL db `bench`, a private redis-server, the Stripe simulator
  ceiling  `gunicorn _bare_app:app`: a bare Flask endpoint that reads the body and answers 200
           (and, for reference, the same endpoint plus one INSERT ... ON CONFLICT DO NOTHING of the
           event into PostgreSQL: the least a durable store costs)

The load is pre-signed events (the app's real `Stripe-Signature` check runs on each), replayed by
`wrk` (-t2 -c16, a Lua script) when installed, else by `_loadgen.py` (threads in other processes):
20% of deliveries repeat an event sent shortly before (Stripe's redeliveries); of the new events, 90%
are types the app stores and answers without acting on (customer.created, invoice.paid, ...) and 10%
`payment_intent.payment_failed` about real PaymentIntents at the simulator (the handler retrieves
the PaymentIntent from it). Rounds alternate ceiling and app; the figure is the median over rounds.
Goal: the app sustains at least half the ceiling.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

STORED_ONLY_TYPES = ["customer.created", "invoice.paid", "product.updated", "customer.updated", "price.created"]
DUPLICATE_SHARE = 0.20
FAILED_SHARE = 0.10


def make_events(count: int, intents: list[str], seed: int) -> tuple[list[tuple[str, str]], int]:
    """`count` deliveries (signature, body); returns them and how many distinct events they hold."""
    from stripe_sim.signing import sign_payload

    rng = random.Random(seed)
    now = int(time.time())
    sent: list[tuple[str, str]] = []
    distinct = 0
    run = secrets.token_hex(4)
    for k in range(count):
        if sent and rng.random() < DUPLICATE_SHARE:
            sent.append(sent[max(0, len(sent) - 1 - rng.randrange(200))])
            continue
        distinct += 1
        if intents and rng.random() < FAILED_SHARE:
            etype, obj = "payment_intent.payment_failed", {"id": rng.choice(intents), "object": "payment_intent",
                                                           "status": "requires_payment_method"}
        else:
            etype, obj = rng.choice(STORED_ONLY_TYPES), {"id": f"cus_{run}{k:08d}", "object": "customer",
                                                         "email": "ingest@example.com"}
        event = {"id": f"evt_{run}{k:010d}", "object": "event", "type": etype, "created": now,
                 "livemode": False, "api_version": "2024-06-20", "data": {"object": obj}}
        body = json.dumps(event, separators=(",", ":"))
        sent.append((sign_payload(body, c.WEBHOOK_SECRET, now), body))
    return sent, distinct


def drive(url: str, items: list[tuple[str, str]], duration: float, tmp: Path, tag: str,
          path: str = "/webhooks/stripe") -> dict:
    payload_file = tmp / f"payloads-{tag}.txt"
    with open(payload_file, "w") as fh:
        for signature, body in items:
            fh.write(f"{signature}\t{body}\n")
    if c.wrk_available():
        out = tmp / f"wrk-{tag}.json"
        env = dict(os.environ, WRK_OUT=str(out))
        subprocess.run(["wrk", "-t2", "-c16", f"-d{duration:.0f}s", "-s", str(c.BENCH / "_webhooks.lua"),
                        f"{url}{path}", "--", str(payload_file), "2"], env=env, check=True,
                       stdout=subprocess.DEVNULL, timeout=duration + 60)
        w = json.loads(out.read_text())
        errors = w["status_errors"] + w["connect_errors"] + w["read_errors"] + w["write_errors"] + w["timeouts"]
        seconds = w["duration_us"] / 1e6
        return {"tool": "wrk -t2 -c16", "requests": w["requests"], "per_s": (w["requests"] - errors) / seconds,
                "errors": errors, "p50_ms": w["p50_us"] / 1000, "p99_ms": w["p99_us"] / 1000,
                "max_ms": w["max_us"] / 1000}
    import _loadgen

    res = _loadgen.run("payloads", 2, 8, duration, {"url": f"{url}{path}", "items": items})
    lat = res["latencies"]
    return {"tool": "python loadgen 2x8", "requests": res["attempts"], "per_s": res["per_s"],
            "errors": sum(res["errors"].values()), "p50_ms": c.pct(lat, 50) * 1000, "p99_ms": c.pct(lat, 99) * 1000,
            "max_ms": max(lat) * 1000 if lat else float("nan"), "error_kinds": res["errors"]}


def main() -> int:
    parser = c.arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=None, help="seconds per measured run (15; quick 4)")
    parser.add_argument("--rounds", type=int, default=None, help="ceiling/app pairs (2; quick 1)")
    args = parser.parse_args()
    duration = args.duration or (4.0 if args.quick else 15.0)
    rounds = args.rounds or (1 if args.quick else 2)
    c.header("webhook ingest: signed events/s through gunicorn -w 2 --threads 4")
    print(f"   load: {'wrk -t2 -c16' if c.wrk_available() else 'python loadgen 2 processes x 8 threads'}, "
          f"{duration:.0f}s per run, {rounds} round(s), {DUPLICATE_SHARE:.0%} duplicates", flush=True)
    tmp = c.workdir("webhooks")
    runs: list[dict] = []
    with c.processes() as procs, c.own_redis(procs, tmp) as redis_url, c.simulator(procs, tmp) as sim_url:
        c.ensure_pg_database()
        env = c.app_env(c.PG_URL, redis_url, sim_url)
        app = c.make_app(env)
        c.reset_schema(app)
        intents = c.authorized_intents(sim_url, 50)
        from sqlalchemy import text as sql

        from app.extensions import db as app_db

        with app.app_context():
            with app_db.engine.begin() as conn:
                conn.execute(sql("CREATE TABLE bench_ceiling (id varchar(255) PRIMARY KEY, payload text NOT NULL)"))
            app_db.session.remove()
        app_url = c.gunicorn(procs, tmp, "app", "wsgi:app", env, health_path="/health")
        bare_url = c.gunicorn(procs, tmp, "bare", "_bare_app:app", env, chdir=c.BENCH)
        # Big enough that no app run wraps around its list (which would turn new events into duplicates).
        size = 4_000 if args.quick else 60_000
        warm, _ = make_events(2000, intents, seed=1)
        drive(app_url, warm, 2, tmp, "warm-app")
        drive(bare_url, warm, 2, tmp, "warm-bare")
        distinct_total = 0
        for rnd in range(rounds):
            items, distinct = make_events(size, intents, seed=100 + rnd)
            res = drive(bare_url, items, duration, tmp, f"bare-{rnd}")
            runs.append({"target": "ceiling (bare Flask)", "round": rnd, **res})
            print(f"   round {rnd + 1}: ceiling {res['per_s']:8.0f}/s", flush=True)
            res = drive(bare_url, items, duration, tmp, f"bare-db-{rnd}", path="/db/webhooks/stripe")
            runs.append({"target": "bare Flask + 1 INSERT", "round": rnd, **res})
            print(f"   round {rnd + 1}: ceiling + 1 INSERT {res['per_s']:8.0f}/s", flush=True)
            res = drive(app_url, items, duration, tmp, f"app-{rnd}")
            if res["requests"] > size:
                print(f"   warning: the app run sent {res['requests']} > {size} deliveries: the list wrapped")
            runs.append({"target": "app (wsgi:app)", "round": rnd, **res})
            print(f"   round {rnd + 1}: app     {res['per_s']:8.0f}/s", flush=True)
            distinct_total += distinct
        from sqlalchemy import text

        from app.extensions import db

        with app.app_context():
            stored = db.session.execute(text(
                "SELECT count(*), count(processed_at), count(last_error), sum(attempts) FROM webhook_events")).one()
            by_type = dict(db.session.execute(text(
                "SELECT type, count(*) FROM webhook_events GROUP BY type")).all())
            db.session.remove()

    def med(target: str, key: str) -> float:
        return c.median([r[key] for r in runs if r["target"] == target])

    ceiling = med("ceiling (bare Flask)", "per_s")
    durable = med("bare Flask + 1 INSERT", "per_s")
    app_rate = med("app (wsgi:app)", "per_s")
    rows = [[t, med(t, "per_s"), med(t, "p50_ms"), med(t, "p99_ms"), med(t, "max_ms"),
             sum(r["errors"] for r in runs if r["target"] == t), med(t, "per_s") / ceiling, med(t, "per_s") / durable]
            for t in ("ceiling (bare Flask)", "bare Flask + 1 INSERT", "app (wsgi:app)")
            if any(r["target"] == t for r in runs)]
    print()
    print(c.table(["target", "events/s", "p50 ms", "p99 ms", "max ms", "errors", "× ceiling", "× bare+INSERT"],
                  rows, digits=2))
    print(f"stored rows {stored[0]:,} (processed {stored[1]:,}, with an error {stored[2]:,}, attempts {stored[3]:,}); "
          f"types: {by_type}")
    verdict = "meets" if app_rate >= 0.5 * ceiling else "MISSES"
    print(f"goal ≥ 0.5 × ceiling: {app_rate / ceiling:.2f} → {verdict} "
          f"(the least durable store, bare + 1 INSERT, reaches {durable / ceiling:.2f}; "
          f"the app reaches {app_rate / durable:.2f} of it)")
    c.save_results("webhook_ingest", args, {
        "duration_s": duration, "rounds": rounds, "duplicate_share": DUPLICATE_SHARE, "runs": runs,
        "ceiling_per_s": ceiling, "app_per_s": app_rate, "ratio": app_rate / ceiling,
        "db_ceiling_per_s": durable, "ratio_to_db_ceiling": app_rate / durable,
        "stored": {"rows": stored[0], "processed": stored[1], "errors": stored[2], "attempts": stored[3]},
        "by_type": by_type})
    return 0


if __name__ == "__main__":
    sys.exit(main())

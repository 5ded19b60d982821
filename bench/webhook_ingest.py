"""Webhook ingest: signed Stripe events per second through gunicorn, against the HTTP stack's ceiling.

Both targets run under the Procfile's web settings (`gunicorn -w 2 --threads 4`) on free ports:

  app      `gunicorn wsgi:app`, PostgreSQL db `bench`, a private redis-server, the Stripe simulator
  ceiling  `gunicorn _bare_app:app`: a bare Flask endpoint that reads the body and answers 200
           (and, for reference, the same endpoint plus one INSERT ... ON CONFLICT DO NOTHING of the
           event into PostgreSQL: the least a durable store costs)

The load is pre-signed events (the app's real `Stripe-Signature` check runs on each), replayed by
`wrk` (-t2 -c16, a Lua script) when installed, else by `_loadgen.py` (threads in other processes):
20% of deliveries repeat an event sent shortly before (Stripe's redeliveries); of the new events,
half are types the app stores and answers without acting on (customer.created, invoice.paid, ...)
and half are every type it acts on, in equal shares, about real objects: carts checked out through
the app with their PaymentIntents confirmed at the simulator (`payment_intent.amount_capturable_updated`
places their orders; `succeeded`, `payment_failed`, `canceled` retrieve them; `charge.refunded`,
`refund.updated`, `refund.failed` sync their payment's refunds), and `charge.expired` about
PaymentIntents of another integration (looked up, ignored). Rounds alternate ceiling, ceiling + 1
INSERT and app; the figure is the median over rounds. Goal (P3): the app sustains at least 0.6 of
the durable reference (bare + 1 INSERT), with the handlers' work off the request path.

After the timed runs, two `flask --app wsgi worker --burst` processes run every queued event job
(not timed), then every stored event is checked: processed, no error, acted-on types exactly one
attempt, one order per cart.
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
# Every type the engine acts on (app/webhooks/handlers.py HANDLERS).
INTENT_TYPES = ["payment_intent.amount_capturable_updated", "payment_intent.succeeded",
                "payment_intent.payment_failed", "payment_intent.canceled"]
CHARGE_TYPES = ["charge.refunded", "refund.updated", "refund.failed"]
FOREIGN_TYPES = ["charge.expired"]
ACTED_ON_TYPES = INTENT_TYPES + CHARGE_TYPES + FOREIGN_TYPES
DUPLICATE_SHARE = 0.20
ACTED_ON_SHARE = 0.50
CARTS = 40


def make_events(count: int, ours: list[str], foreign: list[str], seed: int,
                acted_on_share: float = ACTED_ON_SHARE) -> tuple[list[tuple[str, str]], int]:
    """`count` deliveries (signature, body); returns them and how many distinct events they hold.

    `ours`: PaymentIntents of carts checked out through the app; `foreign`: of another integration."""
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
        if ours and rng.random() < acted_on_share:
            etype = rng.choice(ACTED_ON_TYPES)
            if etype in INTENT_TYPES:
                obj = {"id": rng.choice(ours), "object": "payment_intent"}
            elif etype in CHARGE_TYPES:
                obj = {"id": f"ch_{run}{k:08d}", "object": "charge", "payment_intent": rng.choice(ours)}
            else:
                obj = {"id": f"ch_{run}{k:08d}", "object": "charge", "payment_intent": rng.choice(foreign)}
        else:
            etype, obj = rng.choice(STORED_ONLY_TYPES), {"id": f"cus_{run}{k:08d}", "object": "customer",
                                                         "email": "ingest@example.com"}
        event = {"id": f"evt_{run}{k:010d}", "object": "event", "type": etype, "created": now,
                 "livemode": False, "api_version": "2024-06-20", "data": {"object": obj}}
        body = json.dumps(event, separators=(",", ":"))
        sent.append((sign_payload(body, c.WEBHOOK_SECRET, now), body))
    return sent, distinct


def checked_out_intents(app, sim_url: str, count: int) -> list[str]:
    """`count` carts checked out through the app (cart, line item, PaymentIntent), each PaymentIntent
    confirmed at the simulator but no order placed: what `amount_capturable_updated` acts on."""
    import requests

    product_id = c.seeded_product_id(app)
    client = app.test_client()
    intents = []
    for _ in range(count):
        cart = client.post("/store/carts", json={"email": "ingest@example.com", "currency": "usd"}).get_json()["cart"]
        client.post(f"/store/carts/{cart['id']}/line-items", json={"product_id": product_id, "quantity": 1})
        intent = client.post(f"/store/carts/{cart['id']}/payment-intent").get_json()["payment_intent"]
        r = requests.post(f"{sim_url}/v1/payment_intents/{intent['id']}/confirm", auth=("sk_test_bench", ""),
                          data={"payment_method": "pm_card_visa"}, timeout=30)
        assert r.json().get("status") == "requires_capture", r.text
        intents.append(intent["id"])
    return intents


def drain(procs: list, tmp: Path, env: dict[str, str], redis_url: str) -> tuple[float, int]:
    """Two `flask --app wsgi worker --burst` until the queues are empty; (seconds, jobs queued before)."""
    client = c.redis_client(redis_url)
    queued = sum(client.llen(key) for key in client.keys("rq:queue:*"))
    started = time.monotonic()
    workers = [c.Proc(f"worker-{i}", [str(c.VENV_BIN / "flask"), "--app", "wsgi", "worker", "--burst"], env=env,
                      log=tmp / f"worker-{i}.log") for i in range(2)]
    procs.extend(workers)
    for worker in workers:
        worker.popen.wait(timeout=900)
    return time.monotonic() - started, queued


def _cpu_of(pids) -> dict[int, float]:
    import psutil

    seconds = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            seconds[pid] = t.user + t.system
        except psutil.Error:
            pass
    return seconds


def _cpu_groups(procs: list, web: str) -> dict[str, list[int]]:
    """The processes whose CPU a run costs: the gunicorn under test (master and workers), the
    PostgreSQL backends of the bench database, the private redis-server."""
    import psutil

    by_name = {proc.name: proc for proc in procs}
    master = by_name[web].pid
    backends = [p.pid for p in psutil.process_iter(["cmdline"])
                if p.info["cmdline"] and p.info["cmdline"][0].startswith("postgres:")
                and f" {c.PG_URL.rsplit('/', 1)[1]} " in p.info["cmdline"][0]]
    return {"web": [master, *(child.pid for child in psutil.Process(master).children(recursive=True))],
            "postgres": backends, "redis": [by_name["redis-server"].pid]}


def cpu_ms_per_request(procs: list, web: str, run, requests_of) -> tuple[dict, dict[str, float]]:
    """Run `run()`; the CPU milliseconds per request each group spent meanwhile (a process started
    during the run counts from zero)."""
    before = {group: _cpu_of(pids) for group, pids in _cpu_groups(procs, web).items()}
    result = run()
    after = {group: _cpu_of(pids) for group, pids in _cpu_groups(procs, web).items()}
    n = max(1, requests_of(result))
    return result, {group: round(1000 * sum(t - before[group].get(pid, 0.0) for pid, t in after[group].items()) / n, 3)
                    for group in after}


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
    parser.add_argument("--acted-on-share", type=float, default=ACTED_ON_SHARE,
                        help=f"share of the new events of acted-on types ({ACTED_ON_SHARE})")
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
        foreign = c.authorized_intents(sim_url, 50)
        ours = checked_out_intents(app, sim_url, CARTS)
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
        warm, _ = make_events(2000, ours, foreign, seed=1)
        drive(app_url, warm, 2, tmp, "warm-app")
        drive(bare_url, warm, 2, tmp, "warm-bare")
        distinct_total = 0
        for rnd in range(rounds):
            items, distinct = make_events(size, ours, foreign, seed=100 + rnd, acted_on_share=args.acted_on_share)
            requests_of = lambda r: r["requests"]  # noqa: E731
            res, cpu = cpu_ms_per_request(procs, "gunicorn-bare", lambda: drive(bare_url, items, duration, tmp, f"bare-{rnd}"),
                                          requests_of)
            runs.append({"target": "ceiling (bare Flask)", "round": rnd, **res, "cpu_ms_per_request": cpu})
            print(f"   round {rnd + 1}: ceiling {res['per_s']:8.0f}/s  CPU ms/request {cpu}", flush=True)
            res, cpu = cpu_ms_per_request(procs, "gunicorn-bare", lambda: drive(
                bare_url, items, duration, tmp, f"bare-db-{rnd}", path="/db/webhooks/stripe"), requests_of)
            runs.append({"target": "bare Flask + 1 INSERT", "round": rnd, **res, "cpu_ms_per_request": cpu})
            print(f"   round {rnd + 1}: ceiling + 1 INSERT {res['per_s']:8.0f}/s  CPU ms/request {cpu}", flush=True)
            res, cpu = cpu_ms_per_request(procs, "gunicorn-app", lambda: drive(app_url, items, duration, tmp, f"app-{rnd}"),
                                          requests_of)
            if res["requests"] > size:
                print(f"   warning: the app run sent {res['requests']} > {size} deliveries: the list wrapped")
            runs.append({"target": "app (wsgi:app)", "round": rnd, **res, "cpu_ms_per_request": cpu})
            print(f"   round {rnd + 1}: app     {res['per_s']:8.0f}/s  CPU ms/request {cpu}", flush=True)
            distinct_total += distinct
        drained_s, queued_before = drain(procs, tmp, env, redis_url)
        print(f"   after the runs: {queued_before:,} queued jobs (and what they queued) run by 2 workers in {drained_s:.1f} s (not timed)",
              flush=True)
        from sqlalchemy import text

        from app.extensions import db

        acted_on = ", ".join(f"'{t}'" for t in ACTED_ON_TYPES)
        with app.app_context():
            stored = db.session.execute(text(
                "SELECT count(*), count(processed_at), count(last_error), sum(attempts) FROM webhook_events")).one()
            by_type = dict(db.session.execute(text(
                "SELECT type, count(*) FROM webhook_events GROUP BY type")).all())
            handled = db.session.execute(text(
                f"SELECT count(*), count(processed_at), count(*) FILTER (WHERE attempts = 1), max(attempts) "
                f"FROM webhook_events WHERE type IN ({acted_on})")).one()
            orders = db.session.execute(text("SELECT count(*), count(DISTINCT cart_id) FROM orders")).one()
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
    exactly_once = handled[0] == handled[1] == handled[2] and stored[0] == stored[1] and stored[2] == 0
    print(f"acted-on events {handled[0]:,}: processed {handled[1]:,}, in exactly one attempt {handled[2]:,} "
          f"(most attempts {handled[3]}); orders {orders[0]} for {orders[1]} carts of {CARTS} → "
          f"{'every stored event processed exactly once' if exactly_once and orders[0] == orders[1] else 'NOT all processed exactly once'}")
    verdict = "meets" if app_rate >= 0.6 * durable else "MISSES"
    print(f"goal ≥ 0.6 × bare + 1 INSERT: {app_rate / durable:.2f} → {verdict} "
          f"(× ceiling: app {app_rate / ceiling:.2f}, bare + 1 INSERT {durable / ceiling:.2f})")
    c.save_results("webhook_ingest", args, {
        "duration_s": duration, "rounds": rounds, "duplicate_share": DUPLICATE_SHARE,
        "acted_on_share": args.acted_on_share, "acted_on_types": ACTED_ON_TYPES, "runs": runs,
        "drain_s": drained_s, "queued_jobs_after_runs": queued_before,
        "acted_on": {"rows": handled[0], "processed": handled[1], "one_attempt": handled[2], "max_attempts": handled[3]},
        "orders": {"orders": orders[0], "carts": orders[1]}, "exactly_once": exactly_once,
        "ceiling_per_s": ceiling, "app_per_s": app_rate, "ratio": app_rate / ceiling,
        "db_ceiling_per_s": durable, "ratio_to_db_ceiling": app_rate / durable,
        "stored": {"rows": stored[0], "processed": stored[1], "errors": stored[2], "attempts": stored[3]},
        "by_type": by_type})
    return 0


if __name__ == "__main__":
    sys.exit(main())

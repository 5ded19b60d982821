"""Capture lag: how late after its deadline does a grace period end, with N grace periods live?

For each size N (10k and 100k; 1k with --quick), deadlines spread uniformly over a window, three ways
on a private redis-server (so nothing else touches it), one after the other:

  engine        `CaptureIntentService.create_intent(order_id, deadline)` for N orders whose authorized
                payments are in PostgreSQL (db `bench`), the real listener process
                (`flask --app wsgi capture-listener`, which touches due keys every 0.2 s). Measured:
                (a1) the `expired` event as received by an independent subscriber process and
                (a2) the capture job's `enqueued_at` (RQ's own timestamp, set by the listener's enqueue).
  expired-only  the same keys and due index, created the same way, but nobody touches the index:
                Redis's own active expiry alone decides when `expired` fires (just a subscriber).
  rq-scheduler  `queue.enqueue_at(deadline, job)` with an RQ worker running its scheduler: lag to the
                job being moved into the queue (`enqueued_at`) and to the job function starting.

Then (b) a sample of real orders (200; 10 with --quick): PaymentIntents authorized at the Stripe
simulator, rows in the database, intents created, listener and one `flask --app wsgi worker`: lag
from deadline to the capture committed (`payments.captured_at`).

Lag = (moment) - (deadline); negative means early.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

UTC = dt.timezone.utc


def parse_rq_time(raw: bytes | str | None) -> float | None:
    if not raw:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


class Lab:
    """One redis-server, the database and the app for the whole run."""

    def __init__(self, procs, tmp: Path):
        self.procs = procs
        self.tmp = tmp
        self.redis_url: str = ""
        self.env: dict[str, str] = {}
        self.app = None
        self.r = None

    def start(self, redis_url: str, sim_url: str | None = None) -> None:
        self.redis_url = redis_url
        self.env = c.app_env(c.PG_URL, redis_url, sim_url)
        c.ensure_pg_database()
        self.app = c.make_app(self.env)
        c.reset_schema(self.app)
        self.r = c.redis_client(redis_url)

    def clean(self) -> None:
        from sqlalchemy import text

        from app.extensions import db

        self.r.flushall()
        with self.app.app_context():
            with db.engine.begin() as conn:
                conn.execute(text("TRUNCATE carts, orders, payment_collections, payment_sessions, payments, "
                                  "captures, capture_attempts, order_transactions CASCADE"))
            db.session.remove()

    # -------------------------------------------------------------- helpers

    def subscriber(self, tag: str) -> tuple[c.Proc, Path]:
        out = self.tmp / f"events-{tag}.json"
        ready = self.tmp / f"ready-{tag}"
        proc = c.Proc("subscriber", [c.PYTHON, str(c.BENCH / "_subscriber.py"), self.redis_url,
                                     "__keyevent@0__:expired", str(out), str(ready)], log=self.tmp / f"sub-{tag}.log")
        self.procs.append(proc)
        deadline = time.monotonic() + 20
        while not ready.exists():
            if time.monotonic() > deadline or not proc.alive():
                raise RuntimeError("subscriber did not start: " + proc.log_tail())
            time.sleep(0.02)
        return proc, out

    def listener(self, tag: str, copies: int = 1) -> list[c.Proc]:
        """`copies` listener processes (each receives every `expired` event), once all are subscribed."""
        argv = [str(c.VENV_BIN / "flask"), "--app", "wsgi", "capture-listener"]
        procs = [c.Proc("listener", argv, env=self.env, log=self.tmp / f"listener-{tag}-{i}.log") for i in range(copies)]
        self.procs.extend(procs)
        proc = procs[0]
        deadline = time.monotonic() + 30
        while self.r.hlen("capture_listener:heartbeats") < copies:
            if time.monotonic() > deadline or not proc.alive():
                raise RuntimeError(f"listener did not start (rc {proc.popen.poll()}): " + proc.log_tail())
            time.sleep(0.05)
        return procs

    def engine_worker(self, tag: str, count: int = 1, env: dict | None = None) -> c.Proc:
        """A `flask worker` process; returns once `count` RQ workers are registered in all."""
        proc = c.Proc("worker", [str(c.VENV_BIN / "flask"), "--app", "wsgi", "worker"], env=env or self.env,
                      log=self.tmp / f"worker-{tag}.log")
        self.procs.append(proc)
        deadline = time.monotonic() + 30
        while self.r.scard("rq:workers") < count:
            if time.monotonic() > deadline or not proc.alive():
                raise RuntimeError("worker did not start: " + proc.log_tail())
            time.sleep(0.05)
        return proc

    def insert_orders(self, order_count: int, salt: str, intents=None) -> list[str]:
        """Payments parked as `canceling` with a placeholder deadline; `set_deadlines` authorizes them.

        (Parked, so that the listener's catch-up at start neither captures them as overdue nor
        re-arms them as live.)
        """
        placeholder = dt.datetime(1970, 1, 2, tzinfo=UTC)
        now = dt.datetime.now(UTC)
        rows = c.order_rows(order_count, now=now, salt=salt, statuses=["canceling"] * order_count,
                            due_at=[placeholder] * order_count, authorized_at=[now] * order_count, intents=intents)
        c.insert_rows(self.app, rows)
        return [row["id"] for row in rows["orders"]]

    def set_deadlines(self, order_ids: list[str], deadlines: list[float]) -> None:
        """Write each order's deadline to orders and payments (COPY into a temp table, one UPDATE each)."""
        from app.extensions import db

        with self.app.app_context():
            raw = db.engine.raw_connection()
            try:
                cur = raw.cursor()
                cur.execute("CREATE TEMP TABLE due (order_id varchar(40) primary key, due timestamptz) ON COMMIT DROP")
                with cur.copy("COPY due (order_id, due) FROM STDIN") as copy:
                    for oid, d in zip(order_ids, deadlines):
                        copy.write_row([oid, dt.datetime.fromtimestamp(d, UTC)])
                cur.execute("UPDATE payments p SET capture_due_at = due.due, status = 'authorized' "
                            "FROM due WHERE p.order_id = due.order_id")
                cur.execute("UPDATE orders o SET grace_period_ends_at = due.due FROM due WHERE o.id = due.order_id")
                raw.commit()
            finally:
                raw.close()


def spread(n: int, base: float, width: float, seed: int) -> list[float]:
    """Deadlines in the order orders would be placed: a grace period of fixed length makes them ascending."""
    rng = random.Random(seed)
    return sorted(round(base + rng.uniform(0, width), 3) for _ in range(n))


def create_intents(lab: Lab, order_ids: list[str], deadlines: list[float]) -> float:
    """The engine's `create_intents`, 1,000 orders per pipeline, in the order given; returns the seconds it took."""
    from app.payments.capture_intents import CaptureIntentService

    svc = CaptureIntentService(lab.r, 3600)
    started = time.perf_counter()
    for start in range(0, len(order_ids), 1000):
        chunk = list(zip(order_ids[start:start + 1000],
                         (dt.datetime.fromtimestamp(d, UTC) for d in deadlines[start:start + 1000])))
        if svc.create_intents(chunk) != len(chunk):
            raise RuntimeError("some intents were not created (deadline already passed?)")
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(predicate, until: float, poll: float = 0.25) -> bool:
    while time.time() < until:
        if predicate():
            return True
        time.sleep(poll)
    return predicate()


def series(deadlines: list[float], moments: list, points: int = 600) -> list[tuple[float, float | None]]:
    """(deadline offset from the first, lag) for a systematic sample, for the plots."""
    pairs = sorted(zip(deadlines, moments), key=lambda p: p[0])
    step = max(1, len(pairs) // points)
    first = pairs[0][0]
    return [(d - first, (m - d) if m is not None else None) for d, m in pairs[::step]]


def lag_stats(pairs: list[tuple[float, float | None]]) -> dict:
    """pairs: (deadline, moment or None if it never happened before the cut-off)."""
    lags = [m - d for d, m in pairs if m is not None]
    stats = c.summary(lags)
    stats["missing"] = sum(1 for _, m in pairs if m is None)
    stats["early"] = sum(1 for lag in lags if lag < 0)
    return stats


# ------------------------------------------------------------------------------- the three ways


def run_engine(lab: Lab, n: int, lead: float, width: float, tail: float, listeners: int = 1) -> dict:
    lab.clean()
    order_ids = lab.insert_orders(n, salt="e")
    tag = f"engine-{n}-x{listeners}"
    sub, events_file = lab.subscriber(tag)
    copies = lab.listener(tag, listeners)
    base = time.time() + lead
    deadlines = spread(n, base, width, seed=n)
    lab.set_deadlines(order_ids, deadlines)
    created_in = create_intents(lab, order_ids, deadlines)
    created_by = time.time()
    end = max(deadlines)
    wait_until(lambda: lab.r.llen("rq:queue:captures") >= n, end + tail)
    time.sleep(0.3)
    cpu_s = [cpu_seconds(listener.popen.pid) for listener in copies]  # whole life: start-up, catch-up, burst
    for listener in copies:
        listener.stop()
    sub.stop()
    queued = lab.r.lrange("rq:queue:captures", 0, -1)
    events = json.loads(events_file.read_text())
    pipe = lab.r.pipeline(transaction=False)
    for oid in order_ids:
        pipe.hget(f"rq:job:capture-{oid}", "enqueued_at")
    enqueued = [parse_rq_time(v) for v in pipe.execute()]
    first = min(deadlines)
    return {
        "way": "engine (touch due index + listener)" + (f" × {listeners} copies" if listeners > 1 else ""),
        "n": n,
        "listeners": listeners,
        "jobs_queued": len(queued),
        "jobs_queued_twice": len(queued) - len(set(queued)),
        "listener_cpu_s": cpu_s,
        "jobs_queued_early": sum(1 for d, e in zip(deadlines, enqueued) if e is not None and e < d),
        "created_in_s": created_in,
        "creation_margin_s": first - created_by,
        "event": lag_stats([(d, events.get(f"capture_intent:{oid}")) for oid, d in zip(order_ids, deadlines)]),
        "enqueued": lag_stats(list(zip(deadlines, enqueued))),
        "series": series(deadlines, enqueued),
    }


def run_expired_only(lab: Lab, n: int, lead: float, width: float, tail: float) -> dict:
    lab.clean()
    order_ids = [c.fake_id("order", i, "x") for i in range(n)]
    sub, events_file = lab.subscriber(f"expired-{n}")
    base = time.time() + lead
    deadlines = spread(n, base, width, seed=n)
    created_in = create_intents(lab, order_ids, deadlines)
    created_by = time.time()
    end = max(deadlines)
    # Done when only the due index is left (every key deleted, so every event published).
    wait_until(lambda: lab.r.dbsize() <= 1, end + tail)
    time.sleep(0.3)
    sub.stop()
    events = json.loads(events_file.read_text())
    return {
        "way": "expired events alone (no touching)",
        "n": n,
        "created_in_s": created_in,
        "creation_margin_s": min(deadlines) - created_by,
        "event": lag_stats([(d, events.get(f"capture_intent:{oid}")) for oid, d in zip(order_ids, deadlines)]),
        "series": series(deadlines, [events.get(f"capture_intent:{oid}") for oid in order_ids]),
    }


def run_rq(lab: Lab, n: int, lead: float, width: float, tail: float) -> dict:
    from rq import Queue

    from _jobs import STARTED_KEY, record_start

    lab.clean()
    worker = c.Proc("rq-worker", [c.PYTHON, str(c.BENCH / "_rq_worker.py"), lab.redis_url, "bench"],
                    env=lab.env, log=lab.tmp / f"rq-worker-{n}.log")
    lab.procs.append(worker)
    limit = time.monotonic() + 30
    while not lab.r.exists("rq:scheduler-lock:bench"):
        if time.monotonic() > limit or not worker.alive():
            raise RuntimeError("rq worker/scheduler did not start: " + worker.log_tail())
        time.sleep(0.05)
    queue = Queue("bench", connection=lab.r)
    base = time.time() + lead
    deadlines = spread(n, base, width, seed=n)
    ids = [f"rqb-{i}" for i in range(n)]
    started = time.perf_counter()
    for start in range(0, n, 1000):
        pipe = lab.r.pipeline(transaction=False)
        for i in range(start, min(n, start + 1000)):
            queue.enqueue_at(dt.datetime.fromtimestamp(deadlines[i], UTC), record_start, job_id=ids[i],
                             result_ttl=3600, pipeline=pipe)
        pipe.execute()
    created_in = time.perf_counter() - started
    created_by = time.time()
    end = max(deadlines)
    wait_until(lambda: lab.r.hlen(STARTED_KEY) >= n, end + tail)
    worker.stop()
    pipe = lab.r.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(f"rq:job:{job_id}", "enqueued_at")
    enqueued = [parse_rq_time(v) for v in pipe.execute()]
    started_at = lab.r.hgetall(STARTED_KEY)
    starts = [float(started_at[j.encode()]) if j.encode() in started_at else None for j in ids]
    # A job never moved into the queue still has its scheduling-time enqueued_at unset (None).
    return {
        "way": "RQ enqueue_at + worker with scheduler",
        "n": n,
        "created_in_s": created_in,
        "creation_margin_s": min(deadlines) - created_by,
        "enqueued": lag_stats(list(zip(deadlines, enqueued))),
        "started": lag_stats(list(zip(deadlines, starts))),
        "series": series(deadlines, enqueued),
        "cutoff_s": tail,
    }


def run_live(lab: Lab, live: int, spread_s: float, measure: float, tail: float, touching: bool) -> dict:
    """P1: `live` grace periods whose deadlines a steady store spreads over the grace period
    (`live / spread_s` fall due each second), measured over the first `measure` seconds of deadlines
    while the rest stay live around them. `touching`: the engine (listener); otherwise Redis's own
    expiry alone, with only the subscriber (the anchor)."""
    lab.clean()
    order_ids = [c.fake_id("order", i, "L") for i in range(live)]  # the listener reads no rows
    tag = f"live-{live}-{'engine' if touching else 'expired'}"
    sub, events_file = lab.subscriber(tag)
    copies = lab.listener(tag) if touching else []
    lead = max(10.0, live * 0.00004 + 5)  # long enough to create every intent before the first deadline
    base = time.time() + lead
    deadlines = spread(live, base, spread_s, seed=live)
    created_in = create_intents(lab, order_ids, deadlines)
    created_by = time.time()
    measured = [(oid, d) for oid, d in zip(order_ids, deadlines) if d <= base + measure]
    live_at_start = lab.r.dbsize()
    wait_until(lambda: False, base + measure + tail, poll=1.0)
    live_at_end = lab.r.dbsize()
    for listener in copies:
        listener.stop()
    sub.stop()
    events = json.loads(events_file.read_text())
    result = {
        "way": ("engine, steady store" if touching else "expired events alone, steady store"),
        "n": live,
        "live": live,
        "due_per_s": live / spread_s,
        "measured": len(measured),
        "measure_s": measure,
        "cutoff_s": tail,
        "redis_keys_at_first_deadline": live_at_start,
        "redis_keys_at_end": live_at_end,
        "created_in_s": created_in,
        "creation_margin_s": base - created_by,
        "event": lag_stats([(d, events.get(f"capture_intent:{oid}")) for oid, d in measured]),
        "series": series([d for _, d in measured], [events.get(f"capture_intent:{oid}") for oid, _ in measured]),
    }
    if touching:
        pipe = lab.r.pipeline(transaction=False)
        for oid, _ in measured:
            pipe.hget(f"rq:job:capture-{oid}", "enqueued_at")
        enqueued = [parse_rq_time(v) for v in pipe.execute()]
        # Every job in the queue, measured or not: none may have been queued before its deadline.
        deadline_of = dict(zip(order_ids, deadlines))
        queued = [job_id.decode()[len("capture-"):] for job_id in lab.r.lrange("rq:queue:captures", 0, -1)]
        pipe = lab.r.pipeline(transaction=False)
        for oid in queued:
            pipe.hget(f"rq:job:capture-{oid}", "enqueued_at")
        result["jobs_queued"] = len(queued)
        result["jobs_queued_early"] = sum(1 for oid, at in zip(queued, pipe.execute())
                                          if parse_rq_time(at) < deadline_of[oid])
        result["enqueued"] = lag_stats([(d, e) for (_, d), e in zip(measured, enqueued)])
        result["series"] = series([d for _, d in measured], enqueued)
    return result


def run_sample(lab: Lab, sim_url: str, m: int, lead: float, width: float, tail: float,
               workers: int = 1, limit: float | None = None, concurrency: int = 1, budget: int = 0,
               stripe_latency: float = 0.0) -> dict:
    """(b) real orders end to end; P2 is `m=1000, width=1, workers=2, limit=100`: 1,000 orders due
    within one second, two workers, the simulator answering 429 beyond 100 requests/s."""
    from sqlalchemy import text

    from app.extensions import db
    from stripe_sim.control import SimControl

    lab.clean()
    control = SimControl(sim_url)
    control.reset()
    intents = c.authorized_intents(sim_url, m)
    order_ids = lab.insert_orders(m, salt="s", intents=intents)
    listener, = lab.listener(f"sample-{m}")
    env = dict(lab.env, WORKER_CONCURRENCY=str(concurrency))
    if budget:
        env["STRIPE_MAX_REQUESTS_PER_SECOND"] = str(budget)
    engine_workers = [lab.engine_worker(f"sample-{m}-{i}", count=(i + 1) * concurrency, env=env) for i in range(workers)]
    if limit:
        control.set_rate_limit(limit)
    if stripe_latency:
        # Stripe answers a capture in a few hundred milliseconds; the simulator at once, unless told.
        control.set_faults(script=[{"fault": "slow", "method": "POST", "path_contains": "/capture",
                                    "times": 10 * m, "seconds": stripe_latency}])
    requests_before = control.ledger()["requests"]
    base = time.time() + lead
    deadlines = spread(m, base, width, seed=m + 7)
    lab.set_deadlines(order_ids, deadlines)
    create_intents(lab, order_ids, deadlines)
    end = max(deadlines)

    def captured() -> int:
        with lab.app.app_context():
            count = db.session.execute(text("SELECT count(*) FROM payments WHERE status = 'captured'")).scalar()
            db.session.remove()
        return count

    wait_until(lambda: captured() >= m, end + tail, poll=0.5)
    for worker in engine_workers:
        worker.stop()
    listener.stop()
    ledger = control.ledger()
    if limit:
        control.set_rate_limit(None)
    control.clear_faults()
    with lab.app.app_context():
        rows = db.session.execute(text("SELECT order_id, status, captured_at FROM payments")).all()
        attempts = db.session.execute(text("SELECT outcome, count(*) FROM capture_attempts GROUP BY outcome")).all()
        db.session.remove()
    by_order = {r.order_id: r for r in rows}
    pairs = []
    for oid, d in zip(order_ids, deadlines):
        row = by_order[oid]
        pairs.append((d, row.captured_at.timestamp() if row.captured_at else None))
    return {
        "way": (f"engine end to end (listener + {workers} worker{'s' if workers > 1 else ''}"
                + (f" × {concurrency}" if concurrency > 1 else "") + (f", budget {budget}/s" if budget else "")
                + (f", Stripe {stripe_latency * 1000:.0f} ms per capture" if stripe_latency else "")
                + " + simulator"
                + (f" at {limit:.0f} req/s)" if limit else ")")),
        "n": m,
        "window_s": width,
        "workers": workers,
        "worker_concurrency": concurrency,
        "budget_rps": budget,
        "stripe_latency_s": stripe_latency,
        "limit_rps": limit,
        "committed": lag_stats(pairs),
        "attempts": {k: v for k, v in attempts},
        "stripe_requests": ledger["requests"] - requests_before,
        "rate_limited_429": ledger["faults"].get("rate_limited", 0),
        "failed": sum(1 for r in rows if r.status != "captured"),
        "floor_s": (m / limit) if limit else None,
    }


# ------------------------------------------------------------------------------------------ main


def main() -> int:
    parser = c.arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None, help="comma-separated N (default 10000,100000; quick 1000)")
    parser.add_argument("--window", type=float, default=None, help="seconds the deadlines spread over (default 30)")
    parser.add_argument("--sample", type=int, default=None, help="real orders for (b) (default 200; quick 10)")
    parser.add_argument("--sample-window", type=float, default=None, help="(b)'s deadlines spread (default 20 s)")
    parser.add_argument("--sample-workers", type=int, default=1, help="(b)'s worker processes (P2: 2)")
    parser.add_argument("--sample-limit", type=float, default=None, help="(b)'s simulator limit, requests/s (P2: 100)")
    parser.add_argument("--sample-concurrency", default="1",
                        help="comma-separated WORKER_CONCURRENCY values for (b), each a run (e.g. 1,4)")
    parser.add_argument("--sample-budget", type=int, default=0, help="(b)'s STRIPE_MAX_REQUESTS_PER_SECOND")
    parser.add_argument("--sample-stripe-latency", type=float, default=0.0,
                        help="(b): seconds the simulator takes to answer each capture (Stripe's own latency)")
    parser.add_argument("--skip", default="", help="comma-separated ways to skip: engine,expired,rq,sample")
    parser.add_argument("--listeners", default="1",
                        help="comma-separated listener copies for the engine way (P1b: 1,2,3); each is a run")
    parser.add_argument("--live", type=int, default=0,
                        help="P1 instead: this many live grace periods spread over --spread s (a steady store), "
                             "the first --measure s of deadlines measured, engine then expired events alone")
    parser.add_argument("--spread", type=float, default=3600.0, help="with --live: the grace period (default 3600)")
    parser.add_argument("--measure", type=float, default=60.0, help="with --live: seconds of deadlines measured")
    args = parser.parse_args()
    sizes = [int(s) for s in (args.sizes or ("1000" if args.quick else "10000,100000")).split(",")]
    width = args.window or (2.0 if args.quick else 30.0)
    sample = args.sample if args.sample is not None else (10 if args.quick else 200)
    skip = set(filter(None, args.skip.split(",")))
    tail = 4.0 if args.quick else 12.0

    c.header("capture lag: deadline → expired event / capture job enqueued / capture committed")
    results: list[dict] = []
    tmp = c.workdir("capture-lag")
    with c.processes() as procs:
        lab = Lab(procs, tmp)
        with c.own_redis(procs, tmp) as redis_url:
            sim_url = None
            if "sample" not in skip and sample:
                sim_url = c.simulator(procs, tmp).__enter__()
            lab.start(redis_url, sim_url)
            if args.live:
                sizes = []
                for touching, way in ((True, "engine"), (False, "expired")):
                    if way in skip:
                        continue
                    print(f"-- {args.live:,} live, {args.live / args.spread:.0f} due/s, {way}: "
                          f"{args.measure:.0f}s of deadlines measured ...", flush=True)
                    result = run_live(lab, args.live, args.spread, args.measure, 30.0 if touching else 120.0, touching)
                    results.append(result)
                    if result["creation_margin_s"] < 0:
                        print(f"   note: creation ended {-result['creation_margin_s']:.1f}s after the first deadline")
            for n in sizes:
                # Long enough to create every intent before the first deadline.
                lead = 1.0 if args.quick else max(5.0, n * 0.0002 + 2)
                copies = [int(x) for x in args.listeners.split(",")]
                ways = [(f"engine ×{k}", lambda *a, k=k: run_engine(*a, listeners=k)) for k in copies]
                ways += [("expired", run_expired_only), ("rq", run_rq)]
                for way, fn in ways:
                    if way.split()[0] in skip:
                        continue
                    print(f"-- N={n:,} {way}: lead {lead:.0f}s, window {width:.0f}s ...", flush=True)
                    result = fn(lab, n, lead, width, tail)
                    results.append(result)
                    if result["creation_margin_s"] < 0:
                        print(f"   note: creation ended {-result['creation_margin_s']:.1f}s after the first deadline")
            if sim_url:
                for concurrency in (int(x) for x in args.sample_concurrency.split(",")):
                    print(f"-- sample of {sample} real orders end to end, {args.sample_workers} worker(s) × "
                          f"{concurrency} ...", flush=True)
                    results.append(run_sample(lab, sim_url, sample, 1.5 if args.quick else 5.0,
                                              args.sample_window or (2.0 if args.quick else 20.0), tail + 10,
                                              workers=args.sample_workers, limit=args.sample_limit,
                                              concurrency=concurrency, budget=args.sample_budget,
                                              stripe_latency=args.sample_stripe_latency))

    rows = []
    for res in results:
        for point in ("event", "enqueued", "started", "committed"):
            if point in res:
                s = res[point]
                rows.append([res["way"], res["n"], point, s["p50"], s["p99"], s["max"], s["early"], s["missing"]])
    print()
    print(c.table(["way", "N", "lag to", "p50 s", "p99 s", "max s", "early", "missing"], rows))
    # Ratios to the baselines measured in this run.
    ratio_rows = []
    for n in sizes:
        eng = next((r for r in results if r["n"] == n and r["way"].startswith("engine (")), None)
        exp = next((r for r in results if r["n"] == n and r["way"].startswith("expired")), None)
        rq = next((r for r in results if r["n"] == n and r["way"].startswith("RQ")), None)
        if eng and exp:
            ratio_rows.append([n, "engine event p99 / expired-only event p99",
                               eng["event"]["p99"] / exp["event"]["p99"] if exp["event"]["p99"] else float("nan")])
        if eng and rq:
            ratio_rows.append([n, "engine enqueued p99 / RQ enqueued p99",
                               eng["enqueued"]["p99"] / rq["enqueued"]["p99"] if rq["enqueued"]["p99"] else float("nan")])
    if ratio_rows:
        print(c.table(["N", "ratio", "value"], ratio_rows))
    for r in results:
        if "jobs_queued_twice" in r or "jobs_queued_early" in r:
            cpu = ", listener CPU " + " + ".join(f"{x:.1f}" for x in r["listener_cpu_s"]) + " s" if r.get("listener_cpu_s") else ""
            print(f"{r['way']}, N={r['n']:,}: {r.get('jobs_queued', 0):,} jobs queued, "
                  f"{r.get('jobs_queued_twice', 0)} twice, {r.get('jobs_queued_early', 0)} before their deadline{cpu}")
    live = [r for r in results if r.get("live")]
    engine_live = next((r for r in live if r["way"].startswith("engine")), None)
    alone_live = next((r for r in live if r["way"].startswith("expired")), None)
    if engine_live and alone_live and alone_live["event"]["p50"]:
        print(f"{engine_live['live']:,} live: engine enqueued p50 / expired-alone event p50 = "
              f"{engine_live['enqueued']['p50'] / alone_live['event']['p50']:.4f} "
              f"(expired alone: {alone_live['event']['missing']:,} of {alone_live['measured']:,} not fired "
              f"within {alone_live['cutoff_s']:.0f} s of the window's end)")
    if engine_live:
        e = engine_live["enqueued"]
        verdict = "meets" if e["p99"] < 1.0 and not e["missing"] and not e["early"] else "MISSES"
        print(f"goal P1 p99 < 1 s, none missing, none early, {engine_live['live']:,} live: enqueued p99 "
              f"{e['p99']:.3f} s, missing {e['missing']}, early {e['early']} → {verdict}")
    for r in results:
        if r.get("floor_s"):
            e = r["committed"]
            verdict = ("meets" if e["p99"] < 15.0 and not e["missing"] and not r["failed"] and not r["rate_limited_429"]
                       else "MISSES")
            print(f"P2 {r['n']:,} due within {r['window_s']:g} s, {r['workers']} workers × {r['worker_concurrency']}, "
                  f"{r['limit_rps']:.0f} req/s: "
                  f"captured p50 {e['p50']:.2f} s, p99 {e['p99']:.2f} s (floor {r['floor_s']:.1f} s, "
                  f"p99 / floor {e['p99'] / r['floor_s']:.2f}), {r['failed']} failed, {r['rate_limited_429']} × 429, "
                  f"{r['stripe_requests']:,} Stripe requests → goal p99 < 15 s: {verdict}")
    goal = [r for r in results if r["way"].startswith("engine (") and r["n"] >= 100_000]
    for r in goal:
        verdict = "meets" if r["enqueued"]["p99"] < 1.0 and not r["enqueued"]["missing"] else "MISSES"
        print(f"goal p99 < 1 s at N={r['n']:,}, {r['way']} (capture job enqueued): "
              f"{r['enqueued']['p99']:.3f} s → {verdict}")
    c.save_results("capture_lag", args, {"window_s": width, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

    def listener(self, tag: str) -> c.Proc:
        argv = [str(c.VENV_BIN / "flask"), "--app", "wsgi", "capture-listener"]
        proc = c.Proc("listener", argv, env=self.env, log=self.tmp / f"listener-{tag}.log")
        self.procs.append(proc)
        deadline = time.monotonic() + 30
        while not self.r.hlen("capture_listener:heartbeats"):
            if time.monotonic() > deadline or not proc.alive():
                raise RuntimeError(f"listener did not start (rc {proc.popen.poll()}): " + proc.log_tail())
            time.sleep(0.05)
        return proc

    def engine_worker(self, tag: str) -> c.Proc:
        proc = c.Proc("worker", [str(c.VENV_BIN / "flask"), "--app", "wsgi", "worker"], env=self.env,
                      log=self.tmp / f"worker-{tag}.log")
        self.procs.append(proc)
        deadline = time.monotonic() + 30
        while not self.r.scard("rq:workers"):
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


def run_engine(lab: Lab, n: int, lead: float, width: float, tail: float) -> dict:
    lab.clean()
    order_ids = lab.insert_orders(n, salt="e")
    tag = f"engine-{n}"
    sub, events_file = lab.subscriber(tag)
    listener = lab.listener(tag)
    base = time.time() + lead
    deadlines = spread(n, base, width, seed=n)
    lab.set_deadlines(order_ids, deadlines)
    created_in = create_intents(lab, order_ids, deadlines)
    created_by = time.time()
    end = max(deadlines)
    wait_until(lambda: lab.r.llen("rq:queue:captures") >= n, end + tail)
    time.sleep(0.3)
    listener.stop()
    sub.stop()
    events = json.loads(events_file.read_text())
    pipe = lab.r.pipeline(transaction=False)
    for oid in order_ids:
        pipe.hget(f"rq:job:capture-{oid}", "enqueued_at")
    enqueued = [parse_rq_time(v) for v in pipe.execute()]
    first = min(deadlines)
    return {
        "way": "engine (touch due index + listener)",
        "n": n,
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


def run_sample(lab: Lab, sim_url: str, m: int, lead: float, width: float, tail: float) -> dict:
    from sqlalchemy import text

    from app.extensions import db

    lab.clean()
    intents = c.authorized_intents(sim_url, m)
    order_ids = lab.insert_orders(m, salt="s", intents=intents)
    listener = lab.listener(f"sample-{m}")
    worker = lab.engine_worker(f"sample-{m}")
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
    worker.stop()
    listener.stop()
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
        "way": "engine end to end (listener + 1 worker + simulator)",
        "n": m,
        "committed": lag_stats(pairs),
        "attempts": {k: v for k, v in attempts},
    }


# ------------------------------------------------------------------------------------------ main


def main() -> int:
    parser = c.arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None, help="comma-separated N (default 10000,100000; quick 1000)")
    parser.add_argument("--window", type=float, default=None, help="seconds the deadlines spread over (default 30)")
    parser.add_argument("--sample", type=int, default=None, help="real orders for (b) (default 200; quick 10)")
    parser.add_argument("--skip", default="", help="comma-separated ways to skip: engine,expired,rq,sample")
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
            for n in sizes:
                # Long enough to create every intent before the first deadline.
                lead = 1.0 if args.quick else max(5.0, n * 0.0002 + 2)
                ways = [("engine", run_engine), ("expired", run_expired_only), ("rq", run_rq)]
                for way, fn in ways:
                    if way in skip:
                        continue
                    print(f"-- N={n:,} {way}: lead {lead:.0f}s, window {width:.0f}s ...", flush=True)
                    result = fn(lab, n, lead, width, tail)
                    results.append(result)
                    if result["creation_margin_s"] < 0:
                        print(f"   note: creation ended {-result['creation_margin_s']:.1f}s after the first deadline")
            if sim_url:
                print(f"-- sample of {sample} real orders end to end ...", flush=True)
                results.append(run_sample(lab, sim_url, sample, 1.5 if args.quick else 5.0,
                                          2.0 if args.quick else 20.0, tail + 10))

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
    goal = [r for r in results if r["way"].startswith("engine (") and r["n"] >= 100_000]
    for r in goal:
        verdict = "meets" if r["enqueued"]["p99"] < 1.0 and not r["enqueued"]["missing"] else "MISSES"
        print(f"goal p99 < 1 s at N={r['n']:,}, {r['way']} (capture job enqueued): "
              f"{r['enqueued']['p99']:.3f} s → {verdict}")
    c.save_results("capture_lag", args, {"window_s": width, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())

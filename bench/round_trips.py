"""Database round trips per operation: checkout steps, webhook deliveries, a capture, an order page.

Counted on the wire, not estimated: the app (in this process, Flask test client) talks to PostgreSQL
through a small TCP proxy that counts *flights*, a client message that follows a server answer (or
starts the connection). Every BEGIN, ping, statement, COMMIT and ROLLBACK that waits for PostgreSQL
is one flight; a pipelined batch is one. Connections are opened during a warm-up, so the figures
are those of a warm pool (pings included, connects not).

The baseline in the same run is the least the operation could do: the INSERTs, UPDATEs and SELECTs
it must make, each in an autocommitted statement (a checkout that creates a cart, a line item, ...).
Stripe runs as the simulator and Redis as a private redis-server; neither is counted here.
Each operation is repeated (20; 5 with --quick) and the median reported (they rarely differ).
"""

from __future__ import annotations

import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

DB_NAME = "round_trips"


class FlightCounter:
    """A TCP proxy to PostgreSQL that counts client→server flights."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432)):
        self.target = target
        self.flights = 0
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self._listener.accept()
            server = socket.create_connection(self.target)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            state = {"last": "server"}
            threading.Thread(target=self._pump, args=(client, server, state, "client"), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, state, "server"), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, state: dict, side: str) -> None:
        try:
            while data := source.recv(65536):
                if state["last"] != side:
                    state["last"] = side
                    if side == "client":
                        with self._lock:
                            self.flights += 1
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def count(self, fn) -> tuple[int, object]:
        """Flights during `fn()` (the proxy sees each flight before its answer comes back)."""
        before = self.flights
        result = fn()
        time.sleep(0.01)  # nothing is in flight once fn returned; let the pump threads settle
        return self.flights - before, result


def ensure_database() -> None:
    import psycopg

    with psycopg.connect(c.PG_ADMIN_URL, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone():
            conn.execute(f"CREATE DATABASE {DB_NAME}")


def main() -> int:
    parser = c.arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=None, help="times each operation runs (20; quick 5)")
    args = parser.parse_args()
    repeat = args.repeat or (5 if args.quick else 20)
    c.header("database round trips per operation (PostgreSQL, counted on the wire)")
    ensure_database()
    proxy = FlightCounter()
    tmp = c.workdir("round-trips")
    counts: dict[str, list[int]] = {}

    def record(name: str, flights: int) -> None:
        counts.setdefault(name, []).append(flights)

    with c.processes() as procs, c.own_redis(procs, tmp) as redis_url, c.simulator(procs, tmp) as sim_url:
        env = c.app_env(f"postgresql://postgres@127.0.0.1:{proxy.port}/{DB_NAME}", redis_url, sim_url,
                        GRACE_PERIOD_SECONDS="1")
        app = c.make_app(env)
        c.reset_schema(app)
        import json

        import requests

        from app.extensions import db
        from app.payments.capture import capture_order
        from stripe_sim.signing import sign_payload

        product_id = c.seeded_product_id(app)
        client = app.test_client()
        intents = c.authorized_intents(sim_url, repeat + 2)

        def checkout(measure: bool) -> str:
            def step(name, fn):
                flights, response = proxy.count(fn)
                assert response.status_code in (200, 201), (name, response.status_code, response.get_json())
                if measure:
                    record(name, flights)
                return response.get_json()

            cart = step("checkout: create cart", lambda: client.post(
                "/store/carts", json={"email": "rt@example.com", "currency": "usd"}))["cart"]
            step("checkout: add line item", lambda: client.post(
                f"/store/carts/{cart['id']}/line-items", json={"product_id": product_id, "quantity": 2}))
            pi = step("checkout: payment-intent", lambda: client.post(
                f"/store/carts/{cart['id']}/payment-intent"))["payment_intent"]["id"]
            requests.post(f"{sim_url}/v1/payment_intents/{pi}/confirm", data={"payment_method": "pm_card_visa"},
                          headers={"Authorization": "Bearer sk_test_bench"}, timeout=30).raise_for_status()
            order = step("checkout: complete (places the order)", lambda: client.post(
                f"/store/carts/{cart['id']}/complete"))["order"]
            step("order page (GET /store/orders/{id})", lambda: client.get(f"/store/orders/{order['id']}"))
            return order["id"]

        def deliver(event: dict):
            body = json.dumps(event)
            return client.post("/webhooks/stripe", data=body, content_type="application/json",
                               headers={"Stripe-Signature": sign_payload(body, c.WEBHOOK_SECRET)})

        def webhooks(k: int, measure: bool) -> None:
            now = int(time.time())
            unhandled = {"id": f"evt_rt_cus_{k}_{measure}", "type": "customer.created", "created": now,
                         "object": "event", "data": {"object": {"id": f"cus_rt{k}", "object": "customer"}}}
            handled = {"id": f"evt_rt_pf_{k}_{measure}", "type": "payment_intent.payment_failed", "created": now,
                       "object": "event", "data": {"object": {"id": intents[k], "object": "payment_intent"}}}
            for name, event in (("webhook: new event, no handler", unhandled),
                                ("webhook: redelivered event", unhandled),
                                ("webhook: new event with a handler (payment_failed)", handled)):
                flights, response = proxy.count(lambda e=event: deliver(e))
                assert response.status_code == 200, (name, response.get_json())
                if measure:
                    record(name, flights)

        # Warm-up: the pool opens its connections (connects are not counted).
        checkout(measure=False)
        webhooks(repeat + 1, measure=False)
        orders = []
        for k in range(repeat):
            orders.append(checkout(measure=True))
            webhooks(k, measure=True)
        time.sleep(1.1)  # the grace period (1 s here) ends
        with app.app_context():
            capture_order(orders[0], trigger="expiry")  # warm-up
            for order_id in orders[1:]:
                flights, outcome = proxy.count(lambda o=order_id: capture_order(o, trigger="expiry"))
                assert outcome == "captured", outcome
                record("capture job (capture_order)", flights)
            db.session.remove()

        # The baseline: the rows a checkout writes, one autocommitted statement each.
        from sqlalchemy import text

        with app.app_context():
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                statements = [
                    "SELECT 1 FROM products WHERE id = :p",
                    "INSERT INTO bench_rt (k) VALUES (:k)",
                ]
                conn.execute(text("CREATE TABLE IF NOT EXISTS bench_rt (k text)"))
                for k in range(repeat):
                    flights, _ = proxy.count(lambda: [conn.execute(text(s), {"p": product_id, "k": str(k)})
                                                      for s in statements])
                    record("baseline: 2 autocommitted statements", flights)
            db.session.remove()

    rows = [[name, statistics.median(values), min(values), max(values)] for name, values in counts.items()]
    checkout_total = sum(statistics.median(v) for n, v in counts.items() if n.startswith("checkout:"))
    print()
    print(c.table(["operation", "round trips (median)", "min", "max"], rows, digits=0))
    print(f"whole checkout (4 app requests): {checkout_total:.0f} round trips")
    c.save_results("round_trips", args, {
        "repeat": repeat, "checkout_total": checkout_total,
        "operations": {name: {"median": statistics.median(v), "min": min(v), "max": max(v)}
                       for name, v in counts.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())

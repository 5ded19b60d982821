"""Security headers, CORS for configured origins only, hostile input, and no secrets in logs."""

import json
import logging

import pytest

from tests.helpers import deliver_and_process, event_for, new_cart, place_order, product_ids


def test_security_headers_on_api_responses(client):
    response = client.get("/store/products")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Referrer-Policy"] == "same-origin"


def test_cors_only_for_configured_origins_on_store(client, settings):
    settings(cors_origins=("https://shop.example",))
    allowed = client.get("/store/products", headers={"Origin": "https://shop.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    other = client.get("/store/products", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    preflight = client.options("/store/carts", headers={"Origin": "https://shop.example",
                                                         "Access-Control-Request-Method": "POST"})
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    health = client.get("/health", headers={"Origin": "https://shop.example"})
    assert "Access-Control-Allow-Origin" not in health.headers


HOSTILE_STRINGS = ["' OR 1=1 --", "<script>alert(1)</script>", "𝓤𝓷𝓲𝓬𝓸𝓭𝓮 ☃", "\u0000", "a" * 5000, "../../etc/passwd"]


@pytest.mark.parametrize("value", HOSTILE_STRINGS)
def test_hostile_strings_as_ids_are_clean_4xx(client, value):
    cart = new_cart(client)
    for response in (
        client.post(f"/store/carts/{cart['id']}/line-items", json={"product_id": value, "quantity": 1}),
        client.post("/store/carts", json={"email": value, "currency": "usd"}),
        client.post("/store/carts", json={"email": "a@example.com", "currency": value}),
    ):
        assert 400 <= response.status_code < 500
        assert set(response.get_json()["error"]) == {"code", "message"}
    assert client.get(f"/store/carts/{cart['id']}").get_json()["cart"]["items"] == []


@pytest.mark.parametrize("quantity", [-5, 0, 10**20, "1; DROP TABLE carts", [], {}, 2.0])
def test_hostile_quantities_change_nothing(client, quantity):
    cart = new_cart(client)
    response = client.post(f"/store/carts/{cart['id']}/line-items",
                           json={"product_id": product_ids(client)[0], "quantity": quantity})
    assert response.status_code == 422
    assert client.get(f"/store/carts/{cart['id']}").get_json()["cart"]["total"] == 0


def test_hostile_path_ids_are_404(client):
    for path in ("/store/carts/%27%20OR%201%3D1", "/store/orders/<script>", "/store/carts/" + "x" * 500):
        response = client.get(path)
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"


def test_secrets_never_reach_the_logs(app, client, sim_control, caplog):
    from app.log import JsonFormatter

    caplog.set_level(logging.DEBUG)
    order = place_order(client, sim_control)
    deliver_and_process(client, event_for("payment_intent.canceled", "pi_unknown"))
    client.get(f"/store/orders/{order['id']}")
    formatter = JsonFormatter()
    text = "\n".join(formatter.format(record) for record in caplog.records)
    settings = app.config["ENGINE"]
    for secret in (settings.stripe_secret_key, settings.stripe_webhook_secret, app.config["SECRET_KEY"]):
        assert secret and secret not in text
    assert "client_secret" not in text and "_secret_" not in text
    json.loads(text.splitlines()[0])  # every line is JSON


# --- text and shapes no database can store, and numbers no parser should try ----------------------------


NESTED = "[" * 1500 + "]" * 1500


@pytest.mark.parametrize("path, body, raw", [
    ("/store/carts", None, NESTED),
    ("/store/carts", {"email": "ada\ud800@example.com", "currency": "usd"}, None),
    ("/store/carts", {"email": "ada\x00@example.com", "currency": "usd"}, None),
    ("/store/carts", {"email": "ada@example.com", "currency": "usd", "x": [[[[[[[[[[[1]]]]]]]]]]]}, None),
])
def test_unstorable_or_absurdly_nested_bodies_are_4xx(client, path, body, raw):
    import json as json_module

    data = raw if raw is not None else json_module.dumps(body)
    response = client.post(path, data=data, content_type="application/json")
    assert 400 <= response.status_code < 500 and "error" in response.get_json()


def test_a_lone_surrogate_or_nul_in_a_product_id_changes_nothing(client):
    from tests.helpers import new_cart

    cart = new_cart(client)
    for product_id in ("prod_\ud800", "prod_\x00abc"):
        response = client.post(f"/store/carts/{cart['id']}/line-items",
                               data=json.dumps({"product_id": product_id, "quantity": 1}),
                               content_type="application/json")
        assert 400 <= response.status_code < 500
    assert client.get(f"/store/carts/{cart['id']}").get_json()["cart"]["items"] == []


@pytest.mark.parametrize("url", ["/store/carts/%00", "/store/orders/%00", "/store/orders/a%00b/cancel",
                                 "/store/orders/order_x/edits/oedit_%00/complete",
                                 "/admin/orders/%00", "/admin/orders?q=%00"])
def test_a_nul_byte_in_a_path_or_query_is_4xx(client, url):
    method = client.post if url.endswith(("/cancel", "/complete")) else client.get
    assert 400 <= method(url).status_code < 500


def test_a_5000_digit_refund_amount_is_refused_on_the_form(app, client, sim_control):
    from app.payments.capture import capture_now
    from tests.helpers import place_order
    from tests.test_windows import _staff_client

    order = place_order(client, sim_control)
    with app.app_context():
        capture_now(order["id"], actor="staff:ops@example.com")
    staff = _staff_client(app)
    response = staff.get(f"/admin/orders/{order['id']}/refund?amount={'9' * 5000}")
    assert response.status_code == 302  # back to the order, with the reason flashed
    page = staff.get(response.headers["Location"]).get_data(as_text=True)
    assert "too large" in page

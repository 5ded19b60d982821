"""Security headers, CORS for configured origins only, hostile input, and no secrets in logs."""

import json
import logging

import pytest

from tests.helpers import new_cart, place_order, product_ids, signed_delivery, event_for


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
    signed_delivery(client, event_for("payment_intent.canceled", "pi_unknown"))
    client.get(f"/store/orders/{order['id']}")
    formatter = JsonFormatter()
    text = "\n".join(formatter.format(record) for record in caplog.records)
    settings = app.config["ENGINE"]
    for secret in (settings.stripe_secret_key, settings.stripe_webhook_secret, app.config["SECRET_KEY"]):
        assert secret and secret not in text
    assert "client_secret" not in text and "_secret_" not in text
    json.loads(text.splitlines()[0])  # every line is JSON

"""Products, carts and line items: totals from the server, bad input refused without changes."""

import pytest

from tests.helpers import add_item, new_cart, product_ids


def test_products_list_the_seeded_catalog_with_integer_prices(client):
    products = client.get("/store/products").get_json()["products"]
    assert {p["currency"] for p in products} >= {"usd", "jpy", "kwd"}
    for product in products:
        assert set(product) == {"id", "title", "description", "unit_amount", "currency"}
        assert product["id"].startswith("prod_") and isinstance(product["unit_amount"], int)


def test_seed_is_idempotent(runner, client):
    before = len(client.get("/store/products").get_json()["products"])
    result = runner.invoke(args=["seed"])
    assert "seeded 0 product(s)" in result.output
    assert len(client.get("/store/products").get_json()["products"]) == before


def test_cart_is_created_and_read_back(client):
    cart = new_cart(client, "usd", "grace@example.com")
    assert cart["id"].startswith("cart_") and cart["total"] == 0 and cart["items"] == []
    assert client.get(f"/store/carts/{cart['id']}").get_json()["cart"] == cart


def test_adding_a_product_twice_adds_to_its_line_and_totals_are_computed(client):
    cart = new_cart(client)
    first, second = product_ids(client)[:2]
    add_item(client, cart["id"], first, 2)
    add_item(client, cart["id"], second, 1)
    cart = add_item(client, cart["id"], first, 3)
    lines = {line["product_id"]: line for line in cart["items"]}
    assert len(cart["items"]) == 2 and lines[first]["quantity"] == 5
    assert lines[first]["total"] == 5 * lines[first]["unit_amount"]
    assert cart["total"] == sum(line["total"] for line in cart["items"])


def test_line_quantity_update_and_removal(client):
    cart = new_cart(client)
    cart = add_item(client, cart["id"], product_ids(client)[0], 1)
    line_id = cart["items"][0]["id"]
    updated = client.post(f"/store/carts/{cart['id']}/line-items/{line_id}", json={"quantity": 4}).get_json()["cart"]
    assert updated["items"][0]["quantity"] == 4 and updated["total"] == 4 * updated["items"][0]["unit_amount"]
    emptied = client.delete(f"/store/carts/{cart['id']}/line-items/{line_id}").get_json()["cart"]
    assert emptied["items"] == [] and emptied["total"] == 0


@pytest.mark.parametrize(
    "body, status, code",
    [
        ({"email": "not-an-email", "currency": "usd"}, 422, "invalid_request"),
        ({"email": "a@example.com", "currency": "USD"}, 422, "invalid_currency"),
        ({"email": "a@example.com", "currency": "xyz"}, 422, "invalid_currency"),
        ({"email": "a@example.com"}, 422, "invalid_request"),
        ({"email": "a@example.com", "currency": "usd", "total": 1}, 422, "invalid_request"),
        (["a@example.com"], 422, "invalid_request"),
    ],
)
def test_bad_cart_bodies_are_refused(client, body, status, code):
    response = client.post("/store/carts", json=body)
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code


def test_malformed_json_wrong_content_type_and_oversized_bodies(client):
    malformed = client.post("/store/carts", data="{not json", content_type="application/json")
    assert malformed.status_code == 400 and malformed.get_json()["error"]["code"] == "malformed_json"
    form = client.post("/store/carts", data={"email": "a@example.com", "currency": "usd"})
    assert form.status_code == 415 and form.get_json()["error"]["code"] == "unsupported_media_type"
    huge = client.post("/store/carts", data='{"email": "' + "a" * 100_000 + '"}', content_type="application/json")
    assert huge.status_code == 413 and huge.get_json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize("quantity", [0, -1, 1.5, "2", True, None, 10_001])
def test_bad_quantities_are_refused_and_change_nothing(client, quantity):
    cart = new_cart(client)
    response = client.post(
        f"/store/carts/{cart['id']}/line-items", json={"product_id": product_ids(client)[0], "quantity": quantity}
    )
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] in {"invalid_request", "quantity_too_large"}
    assert client.get(f"/store/carts/{cart['id']}").get_json()["cart"]["items"] == []


def test_unknown_cart_product_and_line_are_404(client):
    assert client.get("/store/carts/cart_nope").status_code == 404
    cart = new_cart(client)
    response = client.post(f"/store/carts/{cart['id']}/line-items", json={"product_id": "prod_nope", "quantity": 1})
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"
    missing_line = client.post(f"/store/carts/{cart['id']}/line-items/item_nope", json={"quantity": 1})
    assert missing_line.status_code == 404


def test_currency_mismatch_is_refused(client):
    cart = new_cart(client, "usd")
    yen_product = product_ids(client, "jpy")[0]
    response = client.post(f"/store/carts/{cart['id']}/line-items", json={"product_id": yen_product, "quantity": 1})
    assert response.status_code == 422 and response.get_json()["error"]["code"] == "currency_mismatch"


def test_quantity_cap_applies_to_the_sum_on_a_line(client):
    cart = new_cart(client)
    product = product_ids(client)[0]
    add_item(client, cart["id"], product, 999)
    response = client.post(f"/store/carts/{cart['id']}/line-items", json={"product_id": product, "quantity": 2})
    assert response.status_code == 422 and response.get_json()["error"]["code"] == "quantity_too_large"
    assert client.get(f"/store/carts/{cart['id']}").get_json()["cart"]["items"][0]["quantity"] == 999


def test_unknown_route_and_method_get_json_errors(client):
    assert client.get("/store/nothing").get_json()["error"]["code"] == "not_found"
    response = client.put("/store/products")
    assert response.status_code == 405 and response.get_json()["error"]["code"] == "method_not_allowed"

"""The storefront JSON API: products, carts, payment, orders."""

from flask import Blueprint

bp = Blueprint("storefront", __name__, url_prefix="/store")

from app.storefront import routes  # noqa: E402,F401

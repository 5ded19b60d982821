"""The storefront JSON API: products, carts, payment, orders."""

from app.storefront.routes import bp

__all__ = ["bp"]

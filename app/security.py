"""Security headers on every response, CORS for the storefront API from configured origins only, and
a refusal of text no database can store (NUL, unpaired surrogates) wherever a request carries it."""

from __future__ import annotations

import logging

from flask import Flask, abort, request

log = logging.getLogger(__name__)

HTML_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'; object-src 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'"
CORS_ALLOWED_HEADERS = "Content-Type, X-Request-Id"
CORS_ALLOWED_METHODS = "GET, POST, DELETE, OPTIONS"


def storable(text: str) -> bool:
    """No NUL (PostgreSQL refuses it in text) and valid UTF-8 (no unpaired surrogates)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def init_app(app: Flask) -> None:
    @app.before_request
    def refuse_unstorable_text():
        # Ids in the path, search terms, form fields: a 4xx here, never a database error later.
        if not storable(request.path):
            log.info("request refused: unstorable text in the path")
            abort(404)
        fields = list(request.args.items(multi=True))
        if request.path.startswith("/admin") and request.method == "POST":
            fields += list(request.form.items(multi=True))
        if not all(storable(key) and storable(value) for key, value in fields):
            log.info("request refused: unstorable text in a parameter")
            abort(400)

    @app.after_request
    def security_headers(response):
        headers = response.headers
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "same-origin")
        headers.setdefault("X-Frame-Options", "DENY")
        is_html = (response.mimetype or "").startswith("text/html")
        headers.setdefault("Content-Security-Policy", HTML_CSP if is_html else API_CSP)
        if not app.debug and request.is_secure:
            headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
        if request.path.startswith("/admin"):
            headers.setdefault("Cache-Control", "no-store")
        return _cors(app, response)


def _cors(app: Flask, response):
    """Only /store, only for origins listed in CORS_ORIGINS; never with credentials."""
    if not request.path.startswith("/store"):
        return response
    origin = request.headers.get("Origin")
    response.vary.add("Origin")
    if origin and origin in app.config["ENGINE"].cors_origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "X-Request-Id"
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = CORS_ALLOWED_METHODS
            response.headers["Access-Control-Allow-Headers"] = CORS_ALLOWED_HEADERS
            response.headers["Access-Control-Max-Age"] = "600"
    return response

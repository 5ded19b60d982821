"""The edge's errors and the one JSON error shape: {"error": {"code", "message"}}.

`ApiError` and its kinds are the HTTP layer's own refusals (a malformed body, a bad signature).
The domain raises `app.payments.errors.DomainError`s and the gateway `PaymentProviderError`s;
the handlers below are the one place that turns them into the contract's statuses.
"""

from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException

from app.extensions import db

from app.payments import errors as domain
from app.payments import provider_errors as provider

log = logging.getLogger(__name__)

JSON_PREFIXES = ("/store", "/webhooks", "/health", "/openapi.json")


class ApiError(Exception):
    """An error the client can act on, answered with its status and code."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status


class NotFound(ApiError):
    status = 404
    code = "not_found"


class InvalidRequest(ApiError):
    status = 422
    code = "invalid_request"


class ServiceUnavailable(ApiError):
    status = 503
    code = "service_unavailable"


# Each kind of domain error, its status (the contract: 404 missing, 422 validation, 409 state, 402 decline).
DOMAIN_STATUS: dict[type[domain.DomainError], int] = {
    domain.Missing: 404,
    domain.Invalid: 422,
    domain.StateConflict: 409,
    domain.Declined: 402,
    domain.TryAgainLater: 503,
}


def domain_status(error: domain.DomainError) -> int:
    for kind in type(error).__mro__:
        if kind in DOMAIN_STATUS:
            return DOMAIN_STATUS[kind]
    return 409


def provider_status(error: provider.PaymentProviderError) -> tuple[int, str]:
    """Stripe's answer, reaching the edge unhandled by a use case, as a status and code."""
    if isinstance(error, provider.CardDeclined):
        return 402, "payment_declined"
    if isinstance(error, provider.IdempotencyConflict):
        return 409, "idempotency_conflict"
    if isinstance(error, provider.ProviderRefused):
        return 409, "payment_provider_refused"
    return 503, "payment_provider_unavailable"  # rate limited, unavailable, misconfigured: try again later


def error_response(status: int, code: str, message: str):
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    return response


def _wants_json() -> bool:
    return request.path.startswith(JSON_PREFIXES)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
}


# PostgreSQL's deadlock_detected and serialization_failure.
_RETRYABLE_SQLSTATES = {"40P01", "40001"}


def init_app(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def handle_api_error(error: ApiError):
        log.info("request refused", extra={"status": error.status, "code": error.code, "reason": error.message})
        return error_response(error.status, error.code, error.message)

    @app.errorhandler(domain.DomainError)
    def handle_domain_error(error: domain.DomainError):
        status = domain_status(error)
        log.info("request refused", extra={"status": status, "code": error.code, "reason": error.message})
        return error_response(status, error.code, error.message)

    @app.errorhandler(provider.PaymentProviderError)
    def handle_provider_error(error: provider.PaymentProviderError):
        status, code = provider_status(error)
        log.warning("payment provider error", extra={"status": status, "code": code, "provider_code": error.code})
        return error_response(status, code, f"Stripe: {error.message}")

    @app.errorhandler(HTTPException)
    def handle_http_exception(error: HTTPException):
        if not _wants_json():
            return error
        status = error.code or 500
        code = _HTTP_CODES.get(status, "error")
        log.info("request refused", extra={"status": status, "code": code, "reason": error.description})
        response = error_response(status, code, error.description or error.name)
        if status == 405 and hasattr(error, "valid_methods") and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(DBAPIError)
    def handle_database_error(error: DBAPIError):
        # Two writers of the same order that PostgreSQL had to part (a deadlock, a serialization
        # failure): nothing was committed, and the same request may succeed now. Anything else is a bug.
        if getattr(getattr(error, "orig", None), "sqlstate", None) in _RETRYABLE_SQLSTATES:
            db.session.rollback()
            log.warning("write conflict", extra={"sqlstate": error.orig.sqlstate})
            return error_response(409, "order_busy", "The order is being changed by another request; try again.")
        return handle_unexpected(error)

    @app.errorhandler(Exception)
    def handle_unexpected(error: Exception):
        log.exception("unhandled error")
        if not _wants_json():
            return "Internal Server Error", 500
        return error_response(500, "internal_error", "The server failed to process the request.")

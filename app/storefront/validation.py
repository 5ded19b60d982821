"""Reading and checking request bodies: every problem is a clear 4xx, before anything changes."""

from __future__ import annotations

import json
import re
from typing import Any

from flask import request

from app.errors import ApiError, InvalidRequest
from app.money import is_valid_currency
from app.security import storable

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
MAX_BODY_BYTES = 64 * 1024


def json_body(*, required: bool = True) -> dict[str, Any]:
    """The request's JSON object; 415 for another content type, 400 for malformed JSON."""
    if not request.content_length and not request.data:
        if required:
            raise InvalidRequest("A JSON body is required.", code="invalid_request")
        return {}
    if request.content_length and request.content_length > MAX_BODY_BYTES:
        raise ApiError(f"The body may not exceed {MAX_BODY_BYTES} bytes.", code="payload_too_large", status=413)
    if not request.is_json:
        raise ApiError("Send the body as application/json.", code="unsupported_media_type", status=415)
    try:
        data = json.loads(request.get_data(cache=True))
    except (ValueError, RecursionError):  # malformed, or nested deeper than the parser goes
        raise ApiError("The body is not valid JSON.", code="malformed_json", status=400) from None
    if not isinstance(data, dict):
        raise InvalidRequest("The body must be a JSON object.")
    _check_shape(data)
    return data


MAX_DEPTH = 8


def _check_shape(value: Any, depth: int = 0) -> None:
    """No request body of ours nests deeper than a few levels; no string carries a NUL or a lone
    surrogate (neither can be stored: PostgreSQL refuses NUL, UTF-8 has no surrogates)."""
    if depth > MAX_DEPTH:
        raise InvalidRequest("The body nests too deeply.")
    if isinstance(value, str):
        if not storable(value):
            raise InvalidRequest("Text may not contain NUL characters or unpaired surrogates.")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_shape(key, depth + 1)
            _check_shape(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_shape(item, depth + 1)


def reject_unknown(data: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InvalidRequest(f"Unknown field(s): {', '.join(unknown)}.")


def positive_int(data: dict[str, Any], field: str, maximum: int) -> int:
    value = data.get(field)
    # bool is an int in Python; a quantity of `true` is still wrong.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"`{field}` must be a positive integer.")
    if value < 1:
        raise InvalidRequest(f"`{field}` must be at least 1.")
    if value > maximum:
        raise InvalidRequest(f"`{field}` may not exceed {maximum}.", code="quantity_too_large")
    return value


def id_string(data: dict[str, Any], field: str, prefix: str) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"`{field}` must be a string id.")
    if not value.startswith(prefix + "_") or len(value) > 64:
        raise InvalidRequest(f"`{field}` must be an id starting with {prefix}_.")
    return value


def email(data: dict[str, Any]) -> str:
    value = data.get("email")
    if not isinstance(value, str) or len(value) > 254 or not _EMAIL.match(value.strip()):
        raise InvalidRequest("`email` must be a valid email address.")
    return value.strip()


def currency(data: dict[str, Any]) -> str:
    value = data.get("currency")
    if not isinstance(value, str):
        raise InvalidRequest("`currency` must be a lowercase ISO 4217 code such as \"usd\".")
    if not is_valid_currency(value):
        raise InvalidRequest(f"`currency` {value[:10]!r} is not a supported lowercase ISO 4217 code.", code="invalid_currency")
    return value

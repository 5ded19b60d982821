"""Decode stripe-python's form encoding into nested dicts and validate parameter values."""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

from .errors import StripeError

_KEY_RE = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART_RE = re.compile(r"\[([^\[\]]*)\]")
_CURRENCY_RE = re.compile(r"^[a-z]{3}$")
_MAX_METADATA_KEYS = 50


def invalid_param(message: str, param: str | None = None, code: str | None = None) -> StripeError:
    """A 400 raised while validating input; such responses are never stored for idempotency (as Stripe)."""
    err = StripeError(400, "invalid_request_error", message, code=code, param=param)
    err.validation = True  # type: ignore[attr-defined]
    return err


def parse_pairs(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Turn ``[("metadata[a]", "1"), ("expand[0]", "x")]`` into ``{"metadata": {"a": "1"}, "expand": ["x"]}``."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        match = _KEY_RE.match(key)
        if not match:
            raise invalid_param(f"Invalid parameter name: {key}", param=key)
        parts = [match.group(1)] + _PART_RE.findall(match.group(2))
        node = root
        for part in parts[:-1]:
            part = part or str(len(node))
            child = node.get(part)
            if not isinstance(child, dict):
                # A scalar followed by nested keys (e.g. "metadata=" then "metadata[a]") keeps the nested form.
                child = node[part] = {}
            node = child
        node[parts[-1] or str(len(node))] = value
    return _listify(root)


def _listify(node: Any) -> Any:
    """Convert dicts whose keys are all indices (``expand[0]``, ``expand[1]``) into lists."""
    if not isinstance(node, dict):
        return node
    converted = {k: _listify(v) for k, v in node.items()}
    if converted and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


def reject_unknown(params: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Raise ``parameter_unknown`` for the first top-level key not in ``allowed``."""
    allowed_set = set(allowed)
    for key in params:
        if key not in allowed_set:
            raise invalid_param(f"Received unknown parameter: {key}", param=key, code="parameter_unknown")


def require(params: Mapping[str, Any], name: str) -> Any:
    """Return a required parameter or raise ``parameter_missing``."""
    value = params.get(name)
    if value is None or value == "":
        raise invalid_param(f"Missing required param: {name}.", param=name, code="parameter_missing")
    return value


def to_int(value: Any, param: str) -> int:
    """Parse an integer parameter (``parameter_invalid_integer`` otherwise)."""
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    raise invalid_param(f"Invalid integer: {value}", param=param, code="parameter_invalid_integer")


def to_positive_amount(value: Any, param: str) -> int:
    """Parse an amount in the smallest currency unit; it must be at least 1."""
    amount = to_int(value, param)
    if amount < 1:
        raise invalid_param("Amount must be at least 1.", param=param, code="amount_too_small")
    if amount > 99_999_999:
        raise invalid_param("Amount must be no more than 99999999.", param=param, code="amount_too_large")
    return amount


def to_bool(value: Any, param: str) -> bool:
    """Parse ``true``/``false`` as stripe-python encodes booleans."""
    if value in ("true", "True", "1"):
        return True
    if value in ("false", "False", "0"):
        return False
    raise invalid_param(f"Invalid boolean: {value}", param=param)


def to_enum(value: Any, choices: Iterable[str], param: str) -> str:
    """Check that a string parameter is one of ``choices``."""
    options = list(choices)
    if value not in options:
        raise invalid_param(f"Invalid {param}: must be one of {', '.join(options)}", param=param)
    return str(value)


def to_currency(value: Any) -> str:
    """Normalize a three-letter ISO currency code to lowercase, as Stripe returns it."""
    currency = str(value).lower()
    if not _CURRENCY_RE.match(currency):
        raise invalid_param(f"Invalid currency: {value}.", param="currency")
    return currency


def to_string(value: Any, param: str, max_length: int = 5000) -> str | None:
    """Accept a plain string parameter; the empty string unsets it, as in Stripe."""
    if isinstance(value, (dict, list)):
        raise invalid_param(f"Invalid string: {param} must be a string.", param=param)
    if value == "":
        return None
    if len(value) > max_length:
        raise invalid_param(f"Invalid string: {param} must be at most {max_length} characters.", param=param)
    return str(value)


def merge_metadata(current: dict[str, str], value: Any) -> dict[str, str]:
    """Apply a metadata update: keys with empty values are deleted and ``metadata=""`` clears all."""
    if value == "":
        return {}
    if not isinstance(value, dict):
        raise invalid_param("Invalid metadata: must be a hash.", param="metadata")
    merged = dict(current)
    for key, item in value.items():
        if not isinstance(item, str):
            raise invalid_param(f"Invalid metadata[{key}]: must be a string.", param=f"metadata[{key}]")
        if len(key) > 40:
            raise invalid_param("Metadata keys can be at most 40 characters.", param=f"metadata[{key}]")
        if len(item) > 500:
            raise invalid_param("Metadata values can be at most 500 characters.", param=f"metadata[{key}]")
        if item == "":
            merged.pop(key, None)
        else:
            merged[key] = item
    if len(merged) > _MAX_METADATA_KEYS:
        raise invalid_param("Metadata can have at most 50 keys.", param="metadata")
    return merged


def to_expand(value: Any) -> list[str]:
    """Normalize ``expand`` into a list of dotted paths."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise invalid_param("Invalid array: expand must be a list of strings.", param="expand")

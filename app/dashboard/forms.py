"""Parsing what staff type into the dashboard's forms and query strings (no request objects here)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from app.money import MAX_AMOUNT, exponent

# The list filters' allowed values; anything else in the query string is ignored.
PAYMENT_STATUSES = (
    "not_paid",
    "authorized",
    "partially_authorized",
    "captured",
    "partially_captured",
    "partially_refunded",
    "refunded",
    "canceled",
)
CAPTURE_STATUSES = ("scheduled", "in_progress", "succeeded", "failed", "canceled")
SHOW_CHOICES = {"": "All orders", "grace": "In grace period", "attention": "Needs attention"}
MAX_SEARCH_LENGTH = 254

_DECIMAL = re.compile(r"^(\d+)(?:\.(\d*))?$", re.ASCII)


class AmountError(ValueError):
    """The amount typed is not a valid amount of the currency; `str()` says why."""


def parse_amount(text: str | None, currency: str) -> int:
    """`"12.34", "usd"` → `1234`: a decimal string in the currency's major unit, exactly, in minor units.

    Integer arithmetic only (no float, no Decimal rounding): `"0.1"` is 10 cents, and more
    decimals than the currency has are refused rather than rounded.
    """
    raw = (text or "").strip().replace("\u00a0", "").replace(" ", "")
    # Thousands separators as `format_amount` prints them ("1,234.50").
    if re.fullmatch(r"\d{1,3}(,\d{3})+(\.\d*)?", raw, re.ASCII):
        raw = raw.replace(",", "")
    match = _DECIMAL.match(raw)
    if not match:
        raise AmountError(f"Enter an amount such as {'12.50' if exponent(currency) else '1250'}.")
    whole, fraction = match.group(1), match.group(2) or ""
    if len(whole.lstrip("0")) > 18:  # beyond any amount (and beyond what int() parses from a string)
        raise AmountError("The amount is too large.")
    places = exponent(currency)
    if len(fraction) > places:
        if places == 0:
            raise AmountError(f"{currency.upper()} has no decimal places.")
        raise AmountError(f"{currency.upper()} has {places} decimal places at most.")
    amount = int(whole) * 10**places + (int(fraction.ljust(places, "0")) if places else 0)
    if amount <= 0:
        raise AmountError("The amount must be more than zero.")
    if amount > MAX_AMOUNT:
        raise AmountError("The amount is too large.")
    return amount


def decimal_text(amount: int, currency: str) -> str:
    """`1234, "usd"` → `"12.34"`: the form's own notation, which `parse_amount` reads back exactly."""
    places = exponent(currency)
    if not places:
        return str(amount)
    whole, fraction = divmod(amount, 10**places)
    return f"{whole}.{str(fraction).zfill(places)}"


@dataclass(frozen=True)
class ListFilters:
    """The orders list's filters, as parsed from the query string."""

    payment_status: str = ""
    capture_status: str = ""
    show: str = ""
    q: str = ""

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> "ListFilters":
        payment_status = args.get("payment_status", "")
        capture_status = args.get("capture_status", "")
        show = args.get("show", "")
        q = " ".join((args.get("q") or "").split())[:MAX_SEARCH_LENGTH]
        return cls(
            payment_status=payment_status if payment_status in PAYMENT_STATUSES else "",
            capture_status=capture_status if capture_status in CAPTURE_STATUSES else "",
            show=show if show in SHOW_CHOICES else "",
            q=q,
        )

    def as_args(self) -> dict[str, str]:
        """The non-empty filters, for links that must keep them (pagination)."""
        return {key: value for key, value in vars(self).items() if value}

    @property
    def active(self) -> bool:
        return bool(self.as_args())

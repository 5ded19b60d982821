"""Money as integers in the currency's minor unit; which currencies have how many decimals."""

from __future__ import annotations

import re

# Stripe's zero-decimal and three-decimal currencies; every other ISO 4217 code has two.
ZERO_DECIMAL = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()
)
THREE_DECIMAL = frozenset("bhd jod kwd omr tnd".split())

# The currencies this store accepts (a store would configure this).
SUPPORTED_CURRENCIES = frozenset(
    "usd eur gbp chf cad aud sek nok dkk pln jpy krw clp kwd bhd jod omr".split()
)

# Largest amount accepted for one order, in minor units (Stripe's own cap is 99,999,999).
MAX_AMOUNT = 99_999_999

_CODE = re.compile(r"^[a-z]{3}$")


def exponent(currency: str) -> int:
    """Number of decimal places of the currency's minor unit."""
    if currency in ZERO_DECIMAL:
        return 0
    if currency in THREE_DECIMAL:
        return 3
    return 2


def is_valid_currency(currency: object) -> bool:
    return isinstance(currency, str) and bool(_CODE.match(currency)) and currency in SUPPORTED_CURRENCIES


def format_amount(amount: int, currency: str) -> str:
    """`1234, 'usd'` → `'12.34 USD'`; `1234, 'jpy'` → `'1,234 JPY'` (exact: integer arithmetic only)."""
    places = exponent(currency)
    sign = "-" if amount < 0 else ""
    whole, fraction = divmod(abs(amount), 10**places) if places else (abs(amount), 0)
    text = f"{whole:,}"
    if places:
        text += "." + str(fraction).zfill(places)
    return f"{sign}{text} {currency.upper()}"

"""Domain events, sent only after the transaction that caused them has committed."""

from blinker import Namespace

_signals = Namespace()

# sender: the app; kwargs: order_id, trace_id
order_placed = _signals.signal("order.placed")

"""The payment domain: Stripe gateway, order placement, capture engine, edits and refunds."""

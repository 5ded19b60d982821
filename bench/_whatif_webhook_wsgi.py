"""What-if for webhook_ingest.py --what-if: the app with a one-statement webhook store (NOT the app's code).

    gunicorn --chdir bench _whatif_webhook_wsgi:app -w 2 --threads 4

The real `app` (same configuration, same signature check, same handlers) with one change to
`POST /webhooks/stripe`: an event type without a handler is stored *and* marked processed by a single
`INSERT ... ON CONFLICT (id) DO NOTHING` (one transaction), instead of SELECT + INSERT, then a claim
UPDATE and a processed UPDATE in three more transactions. Events with a handler, and anything the fast
path does not recognise, go through the app's own view unchanged. It is the fix proposed in
docs/performance.md, measured without touching `app/`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask import current_app, g, jsonify, request  # noqa: E402
from sqlalchemy.dialects.postgresql import insert as pg_insert  # noqa: E402
from sqlalchemy.dialects.sqlite import insert as sqlite_insert  # noqa: E402

from app import create_app  # noqa: E402
from app.db_tx import write_transaction  # noqa: E402
from app.extensions import db  # noqa: E402
from app.models import WebhookEvent  # noqa: E402
from app.models.base import utcnow  # noqa: E402
from app.payments.stripe_gateway import WebhookSignatureError, verify_webhook  # noqa: E402
from app.webhooks.handlers import HANDLERS  # noqa: E402
from app.webhooks.routes import _check_shape  # noqa: E402

app = create_app()
_original = app.view_functions["webhooks.stripe_webhook"]


def stripe_webhook():
    secret = current_app.config["ENGINE"].stripe_webhook_secret
    payload = request.get_data(cache=True)  # cached, so the original view can read it again
    try:
        event = _check_shape(verify_webhook(payload, request.headers.get("Stripe-Signature"), secret))
    except (WebhookSignatureError, ValueError, Exception):
        return _original()  # the app's own errors and status codes
    if event["type"] in HANDLERS:
        return _original()
    now = utcnow()
    data_object = event["data"]["object"]
    insert = pg_insert if db.engine.dialect.name == "postgresql" else sqlite_insert
    statement = insert(WebhookEvent).values(
        id=event["id"], type=event["type"], payload=payload.decode("utf-8"),
        object_id=data_object.get("id"), trace_id=g.get("trace_id"),
        received_at=now, processed_at=now, attempts=1,
    ).on_conflict_do_nothing(index_elements=["id"])
    with write_transaction() as session:
        inserted = session.execute(statement).rowcount == 1
    return jsonify({"received": True, "duplicate": not inserted})


app.view_functions["webhooks.stripe_webhook"] = stripe_webhook

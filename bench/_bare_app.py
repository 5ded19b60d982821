"""The HTTP stack's ceilings: bare Flask endpoints under the same gunicorn settings as the real app.

`gunicorn --chdir bench _bare_app:app -w 2 --threads 4`.

- `POST /webhooks/stripe`, `POST /bare`: read the body, answer a small JSON 200; nothing else
  (no database, no Redis, no logging). The ceiling the benchmarks compare against.
- `POST /db/webhooks/stripe`: the same plus the least a durable webhook store can do, one
  autocommitted `INSERT ... ON CONFLICT DO NOTHING` of the event id and body into `bench_ceiling`
  (one round trip on a pooled connection, no ping) in DATABASE_URL. The table is created by
  webhook_ingest.py.
"""

import json
import os

from flask import Flask, jsonify, request

app = Flask(__name__)
_engine = None


def _db():
    global _engine
    if _engine is None:
        from sqlalchemy import create_engine

        url = os.environ["DATABASE_URL"]
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        _engine = create_engine(url, pool_size=5, max_overflow=10, isolation_level="AUTOCOMMIT")
    return _engine


@app.post("/webhooks/stripe")
def webhook():
    request.get_data()
    return jsonify({"received": True})


@app.post("/db/webhooks/stripe")
def webhook_db():
    from sqlalchemy import text

    body = request.get_data()
    event_id = json.loads(body)["id"]
    with _db().connect() as conn:
        conn.execute(text("INSERT INTO bench_ceiling (id, payload) VALUES (:id, :payload) ON CONFLICT (id) DO NOTHING"),
                     {"id": event_id, "payload": body.decode()})
    return jsonify({"received": True})


@app.post("/bare")
def bare():
    request.get_data()
    return jsonify({"ok": True})

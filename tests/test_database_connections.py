"""Pooled database connections: no round trip to check one out, and none handed out dead."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text


def test_the_pool_does_not_ping_at_checkout_and_recycles_old_connections(app):
    options = app.config["SQLALCHEMY_ENGINE_OPTIONS"]
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        assert not options.get("pool_pre_ping") and options["pool_recycle"] > 0


def test_a_connection_the_server_closed_is_replaced_at_checkout_without_failing_the_request(app, client, is_postgres):
    if not is_postgres:
        pytest.skip("PostgreSQL only: SQLite has no server to close a connection")
    from app.extensions import db

    with app.app_context(), db.engine.connect() as admin:
        pooled = [db.engine.connect() for _ in range(3)]
        for connection in pooled:
            connection.execute(text("SELECT 1"))
            connection.close()  # back to the pool, where the next requests find them
        # What a restart, an idle timeout or an operator's pg_terminate_backend does to the others.
        others = "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        admin.execute(text(f"SELECT pg_terminate_backend(pid) {others}"))
        deadline = time.monotonic() + 10
        admin.commit()
        while admin.execute(text(f"SELECT count(*) {others}")).scalar() and time.monotonic() < deadline:
            admin.commit()  # a transaction keeps its snapshot of pg_stat_activity
            time.sleep(0.05)  # each backend sends its FATAL, then exits

    for _ in range(3):
        assert client.get("/store/products").status_code == 200
    assert client.post("/store/carts", json={"email": "a@example.com", "currency": "usd"}).status_code == 201

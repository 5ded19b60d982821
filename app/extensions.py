"""Extensions, created unbound and attached to an app by `create_app`."""

from __future__ import annotations

import select
from typing import Any

import redis
from flask import Flask, current_app
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import MetaData, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import Pool

# Stable constraint names so migrations are identical on PostgreSQL and SQLite.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
csrf = CSRFProtect()


@event.listens_for(Engine, "connect")
def _sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    """Let SQLAlchemy, not pysqlite, emit BEGIN (see `_sqlite_begin`)."""
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()


@event.listens_for(Engine, "begin")
def _sqlite_begin(conn: Any) -> None:
    """SQLite has no SELECT ... FOR UPDATE: a write transaction takes the write lock up front.

    `write_transaction()` asks for BEGIN IMMEDIATE so that its read-then-write
    compare-and-set cannot be interleaved by another writer (and never fails with
    SQLITE_BUSY_SNAPSHOT); plain reads use a deferred BEGIN.
    """
    if conn.dialect.name != "sqlite":
        return
    options = conn.get_execution_options()
    if options.get("isolation_level") == "AUTOCOMMIT":
        return
    immediate = options.get("sqlite_begin_immediate", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@event.listens_for(Pool, "checkout")
def _replace_closed_connection(dbapi_connection: Any, connection_record: Any, connection_proxy: Any) -> None:
    """What `pool_pre_ping` did, without its round trip: a connection the server closed is not handed out.

    An idle psycopg connection has read every answer up to its last ReadyForQuery, so its socket
    turns readable only when the server says something unasked: in practice the FATAL of a
    shutdown, a terminated backend or an idle timeout, and then the end of the stream. Polling the
    socket (no wait, no message sent) sees that. `DisconnectionError` makes the pool discard the
    connection and check out another (SQLAlchemy's documented use of the `checkout` event). A
    connection dropped without a word (a network failure) is left to `pool_recycle` and to
    SQLAlchemy's invalidation of the pool on the first disconnect error.
    """
    if not type(dbapi_connection).__module__.startswith("psycopg"):
        return
    if dbapi_connection.closed:
        raise DisconnectionError("the connection is closed")
    if _readable_now(dbapi_connection.fileno()):
        raise DisconnectionError("the server closed the connection (or spoke unasked)")


def _readable_now(fd: int) -> bool:
    """Whether the socket has something to read (or hung up), without waiting."""
    if hasattr(select, "poll"):  # no FD_SETSIZE limit, unlike select()
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])


class RedisExtension:
    """One `redis.Redis` client per app, from `REDIS_URL`."""

    def init_app(self, app: Flask) -> None:
        url = app.config["ENGINE"].redis_url
        client = redis.Redis.from_url(url, health_check_interval=30) if url else None
        app.extensions["redis"] = client

    @property
    def client(self) -> redis.Redis:
        client = current_app.extensions.get("redis")
        if client is None:
            raise RuntimeError("REDIS_URL is not configured")
        return client


redis_ext = RedisExtension()


def get_redis() -> redis.Redis:
    """The current app's Redis client."""
    return redis_ext.client

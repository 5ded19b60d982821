"""Write transactions whose compare-and-set holds on PostgreSQL and on SQLite."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from app.extensions import db


@contextmanager
def write_transaction(*, expire_on_commit: bool = True) -> Iterator[Session]:
    """One atomic unit of work, committed on success and rolled back on any exception.

    The work sees fresh data. On SQLite, a read transaction the session had open is ended
    first and the write transaction starts with BEGIN IMMEDIATE (see
    `app.extensions._sqlite_begin`): writers queue up instead of interleaving. On PostgreSQL
    (READ COMMITTED) every statement reads the latest commits anyway, so an open read
    transaction simply becomes the write transaction, its loaded objects expired (saving a
    COMMIT, a connection checkout and a BEGIN); each compare-and-set is an
    `UPDATE ... WHERE status = :expected`, whose row lock and re-check serialise writers.

    `expire_on_commit=False` keeps the committed objects' loaded state for rendering the
    response (the values this transaction just wrote), instead of reloading them.
    """
    session = db.session()  # the scoped session's Session for this context
    if session.in_transaction() and session.get_bind().dialect.name == "postgresql":
        session.expire_all()
    else:
        if session.in_transaction():
            session.commit()
        session.connection(execution_options={"sqlite_begin_immediate": True})
    try:
        yield session
        session.expire_on_commit = expire_on_commit
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.expire_on_commit = True


@contextmanager
def single_statement() -> Iterator[Connection]:
    """A connection for one statement that is atomic on its own, outside the session.

    On PostgreSQL it is autocommitted: no BEGIN and no COMMIT, two round trips fewer. SQLite runs
    it in a transaction of its own (in process, a transaction costs no round trip; and an
    autocommit connection would come back to the pool with pysqlite's own BEGIN turned on).
    """
    engine = db.engine
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            yield connection
    else:
        with engine.begin() as connection:
            yield connection

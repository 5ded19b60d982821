"""Write transactions whose compare-and-set holds on PostgreSQL and on SQLite."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from sqlalchemy.orm import Session

from app.extensions import db


@contextmanager
def write_transaction() -> Iterator[Session]:
    """One atomic unit of work, committed on success and rolled back on any exception.

    Any read-only transaction the session had open is ended first, so the work sees
    fresh data. On SQLite the transaction starts with BEGIN IMMEDIATE (see
    `app.extensions._sqlite_begin`): writers queue up instead of interleaving. On
    PostgreSQL each compare-and-set is an `UPDATE ... WHERE status = :expected`, whose
    row lock and re-check serialise concurrent writers.
    """
    session = db.session()  # the scoped session's Session for this context
    if session.in_transaction():
        session.commit()
    session.connection(execution_options={"sqlite_begin_immediate": True})
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise

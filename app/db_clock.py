"""One clock for deadlines: the database's.

Web hosts set deadlines and workers compare them; with each reading its own clock, a worker
whose clock runs ahead would capture early by its skew. So "is the grace period over" is
decided inside the statement that acts on it, by the database server's clock: `db_now()` is
`clock_timestamp()` on PostgreSQL (the moment the statement runs, not the transaction's start).
SQLite is a file on the one host that runs every process, so its clock is that host's:
`strftime('now')`, in the text format SQLAlchemy stores SQLite datetimes in, so the two compare
as strings do.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from app.models.base import UTCDateTime


class db_now(FunctionElement):
    """The database server's current UTC time, as a SQL expression."""

    type = UTCDateTime()
    inherit_cache = True
    name = "db_now"


@compiles(db_now, "postgresql")
def _db_now_postgresql(element, compiler, **kw) -> str:
    return "clock_timestamp()"


@compiles(db_now, "sqlite")
def _db_now_sqlite(element, compiler, **kw) -> str:
    # '%f' is seconds with milliseconds (SS.SSS); SQLAlchemy stores microseconds: pad to six digits.
    return "(strftime('%Y-%m-%d %H:%M:%f', 'now') || '000')"


def read_db_now(session) -> datetime:
    """The database's time now (one round trip on PostgreSQL), for values that are stored, not compared."""
    return session.scalar(select(db_now()))

"""One schema reset for the test suite (tests/conftest.py) and the benchmarks (bench/_common.py), so neither keeps a copy."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Engine


def reset_schema(engine: Engine) -> None:
    """Drop every table (PostgreSQL: the whole `public` schema), so the migrations build the schema from nothing."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        else:
            tables = [row[0] for row in conn.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))]
            for table in tables:
                conn.execute(text(f'DROP TABLE IF EXISTS "{table}"'))

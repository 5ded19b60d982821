"""The sweep's cost follows its backlog, not the tables: every query it and its janitors run walks an index.

`bench/sweep_cost.py` shows the plans at a million orders; this keeps the queries' shapes from
drifting to one no index can serve (a `.is_(True)` where a partial index needs the bare column, an
OR across two columns, a status without an index).
"""

from __future__ import annotations

from sqlalchemy import event


def _sweep_statements(app) -> list[tuple[str, object]]:
    from app.extensions import db
    from app.payments.sweep import sweep

    statements = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if not executemany and statement.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE")):
            statements.append((statement, parameters))

    with app.app_context():
        engine = db.engine
        event.listen(engine, "before_cursor_execute", record)
        try:
            sweep()
        finally:
            event.remove(engine, "before_cursor_execute", record)
        db.session.remove()
    return statements


def _plan(app, statement: str, parameters) -> str:
    from app.extensions import db

    with app.app_context(), db.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            # The test's tables are nearly empty: ask whether an index *can* serve the statement.
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            rows = conn.exec_driver_sql("EXPLAIN (COSTS OFF) " + statement, parameters).all()
            plan = "\n".join(row[0] for row in rows)
        else:
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
            plan = "\n".join(row[-1] for row in rows)
        conn.rollback()
    return plan


def _reads_a_whole_table(plan: str) -> bool:
    lines = [line.strip().removeprefix("->").strip() for line in plan.splitlines()]
    return any(line.startswith("Seq Scan") or (line.startswith("SCAN ") and line != "SCAN CONSTANT ROW")
               for line in lines)


def test_every_query_of_the_sweep_and_its_janitors_walks_an_index(app):
    statements = _sweep_statements(app)
    tables = {table for statement, _ in statements for table in ("payments", "refunds", "webhook_events",
                                                                  "order_edits", "notices") if table in statement}
    assert tables == {"payments", "refunds", "webhook_events", "order_edits", "notices"}, tables
    full_scans = {}
    for statement, parameters in statements:
        plan = _plan(app, statement, parameters)
        if _reads_a_whole_table(plan):
            full_scans[" ".join(statement.split())[:200]] = plan
    assert full_scans == {}, full_scans

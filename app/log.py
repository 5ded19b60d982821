"""Structured JSON logs, each line carrying the trace id of the work it belongs to."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterator

_trace_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace_id", default=None)
_VALID_TRACE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

# Attributes every LogRecord has; anything else was passed through `extra=`.
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def new_trace_id() -> str:
    return uuid.uuid4().hex


def clean_trace_id(candidate: str | None) -> str:
    """An incoming trace id if it is sane, a fresh one otherwise (never trust header text in logs)."""
    if candidate and _VALID_TRACE_ID.match(candidate):
        return candidate
    return new_trace_id()


def current_trace_id() -> str | None:
    return _trace_id.get()


def set_trace_id(trace_id: str | None) -> contextvars.Token:
    return _trace_id.set(trace_id)


@contextmanager
def trace(trace_id: str | None) -> Iterator[str]:
    """Run a block (a job, a CLI command) under a trace id."""
    value = clean_trace_id(trace_id)
    token = _trace_id.set(value)
    try:
        yield value
    finally:
        _trace_id.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, trace_id and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "trace_id": getattr(record, "trace_id", None) or _trace_id.get(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _install_trace_record_factory() -> None:
    """Stamp the current trace id on every LogRecord when it is made (handlers may format later)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "stamps_trace_id", False):
        return

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        if not hasattr(record, "trace_id"):
            record.trace_id = _trace_id.get()
        return record

    factory.stamps_trace_id = True
    logging.setLogRecordFactory(factory)


def configure_logging(level: int = logging.INFO) -> None:
    """Send every logger's output to stderr as JSON lines (idempotent)."""
    _install_trace_record_factory()
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    # The stripe library logs request details at INFO; keep it quiet.
    logging.getLogger("stripe").setLevel(logging.WARNING)

"""Stripe idempotency-key semantics: replay, in-flight conflict and parameter-mismatch detection."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class StoredResponse:
    """A response as first sent, replayed byte for byte."""

    status: int
    body: bytes
    request_id: str


@dataclass
class _Entry:
    method: str
    path: str
    fingerprint: str
    response: StoredResponse | None = None  # None while the first request is still executing


@dataclass(frozen=True)
class Outcome:
    """Result of claiming a key: ``new``, ``replay``, ``in_flight``, ``endpoint_mismatch`` or ``params_mismatch``."""

    kind: str
    response: StoredResponse | None = None
    first_endpoint: str | None = None


def fingerprint(params: dict[str, Any]) -> str:
    """Canonical form of decoded parameters, so key order does not matter."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


class IdempotencyStore:
    """Remembers every key for the simulator's lifetime (Stripe keeps them 24 hours)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def reset(self) -> None:
        """Forget all keys."""
        with self._lock:
            self._entries.clear()

    def claim(self, key: str, method: str, path: str, params: dict[str, Any]) -> Outcome:
        """Claim ``key`` for a request, or report why the request must not execute."""
        fp = fingerprint(params)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._entries[key] = _Entry(method, path, fp)
                return Outcome("new")
            if entry.response is None:
                return Outcome("in_flight")
            if (entry.method, entry.path) != (method, path):
                return Outcome("endpoint_mismatch", first_endpoint=f"{entry.method} {entry.path}")
            if entry.fingerprint != fp:
                return Outcome("params_mismatch")
            return Outcome("replay", response=entry.response)

    def complete(self, key: str, response: StoredResponse) -> None:
        """Store the first response for ``key``."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.response = response

    def release(self, key: str) -> None:
        """Drop a claim whose request saved no result (validation errors, 500s), so a retry executes."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.response is None:
                del self._entries[key]

    def stored(self) -> dict[str, tuple[str, str, str, StoredResponse]]:
        """Every key with a stored response: (method, path, fingerprint, response). Keys in flight are left
        out: their request has not answered, so after a restart a retry runs it (as Stripe's would)."""
        with self._lock:
            return {
                key: (e.method, e.path, e.fingerprint, e.response)
                for key, e in self._entries.items()
                if e.response is not None
            }

    def restore(self, entries: dict[str, tuple[str, str, str, StoredResponse]]) -> None:
        """Replace every key by ``entries`` (as returned by ``stored``)."""
        with self._lock:
            self._entries = {key: _Entry(m, p, fp, resp) for key, (m, p, fp, resp) in entries.items()}

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

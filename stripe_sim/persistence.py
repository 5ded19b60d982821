"""The simulator's objects kept in one JSON file, so `make run` can be restarted without losing them.

Only used when a state file is given (``--state-file``); tests run the simulator in memory.
The whole state is rewritten after every change: write a temporary file next to it, fsync,
then ``os.replace``, so a crash leaves the previous snapshot or the new one, never half of one.
A development tool's state is small; a snapshot per change keeps the format obvious.

Saved: PaymentIntents, Charges, Refunds, Events, the simulator's per-intent and account settings, the
ledger, stored idempotent responses, and the ids of events not yet delivered (queued or in
flight), which are queued again at start. Events already delivered are not sent again. Faults,
rate limits and delivery options are test settings and start afresh.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .idempotency import StoredResponse
from .state import IntentSimState

if TYPE_CHECKING:
    from .app import SimApp

FORMAT_VERSION = 1


class StateFileError(RuntimeError):
    """The state file exists but cannot be read back."""


class StateFile:
    """Loads a SimApp from ``path`` and saves it there after every change."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._write_lock = threading.Lock()  # one writer at a time: request threads and the delivery thread

    def load(self, sim: SimApp) -> list[dict[str, Any]]:
        """Fill ``sim`` from the file (if any); returns the events that still await delivery."""
        if not self.path.exists():
            return []
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("version") != FORMAT_VERSION:
                raise ValueError(f"unknown format version {data.get('version')!r}")
            state = sim.state
            with state.lock:
                state.payment_intents = data["payment_intents"]
                state.charges = data["charges"]
                state.refunds = data["refunds"]
                state.events = data["events"]
                state.intent_sim = {pi: IntentSimState(**fields) for pi, fields in data["intent_sim"].items()}
                state.operations = data["operations"]
                state.request_count = data["request_count"]
                state.incremental_authorization_enabled = data.get("incremental_authorization_enabled", True)
                sim.idempotency.restore(
                    {key: (e["method"], e["path"], e["fingerprint"],
                           StoredResponse(e["status"], e["body"].encode("utf-8"), e["request_id"]))
                     for key, e in data["idempotency"].items()}
                )
                return [state.events[evt_id] for evt_id in data["undelivered"] if evt_id in state.events]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StateFileError(
                f"cannot read the simulator's state from {self.path}: {exc} (make clean starts afresh)"
            ) from exc

    def save(self, sim: SimApp) -> None:
        """Write a consistent snapshot of ``sim``; the state lock keeps changes out while it is taken."""
        state = sim.state
        with self._write_lock:
            with state.lock:
                snapshot = {
                    "version": FORMAT_VERSION,
                    "payment_intents": state.payment_intents,
                    "charges": state.charges,
                    "refunds": state.refunds,
                    "events": state.events,
                    "intent_sim": {pi: asdict(s) for pi, s in state.intent_sim.items()},
                    "operations": state.operations,
                    "request_count": state.request_count,
                    "incremental_authorization_enabled": state.incremental_authorization_enabled,
                    "idempotency": {
                        key: {"method": method, "path": path, "fingerprint": fp, "status": resp.status,
                              "body": resp.body.decode("utf-8"), "request_id": resp.request_id}
                        for key, (method, path, fp, resp) in sim.idempotency.stored().items()
                    },
                    "undelivered": sim.webhooks.undelivered_event_ids(),
                }
                text = json.dumps(snapshot, separators=(",", ":"))
            self._replace(text)

    def _replace(self, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

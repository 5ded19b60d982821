"""Background webhook delivery: signing, retries, duplicates, shuffling, pausing."""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import requests

from .signing import sign_payload

log = logging.getLogger("stripe_sim.delivery")

_OPTION_KEYS = {
    "duplicate_rate",
    "shuffle_window_ms",
    "paused",
    "delay_ms",
    "max_attempts",
    "retry_backoff_ms",
    "timeout_seconds",
    "seed",
}


@dataclass(frozen=True)
class Endpoint:
    """A webhook endpoint and its signing secret."""

    url: str
    secret: str


@dataclass
class DeliveryOptions:
    """How deliveries are made; changed at runtime through the control API."""

    duplicate_rate: float = 0.0
    shuffle_window_ms: float = 0.0
    paused: bool = False
    delay_ms: float = 0.0
    max_attempts: int = 4
    retry_backoff_ms: float = 200.0
    timeout_seconds: float = 5.0
    seed: int | None = None


@dataclass(order=True)
class _Job:
    due: float
    seq: int
    event: dict[str, Any] = field(compare=False)
    endpoint: Endpoint = field(compare=False)
    attempt: int = field(compare=False, default=1)


class WebhookDispatcher:
    """Queues Events per endpoint and POSTs them from one background thread."""

    def __init__(self, endpoints: list[Endpoint] | None = None) -> None:
        self._cond = threading.Condition()
        self._heap: list[_Job] = []
        self._seq = itertools.count()
        self._sending = 0
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._initial_endpoints: list[Endpoint] = list(endpoints or [])
        self.endpoints: list[Endpoint] = list(self._initial_endpoints)
        self.options = DeliveryOptions()
        self._rng = random.Random()
        self.attempts: list[dict[str, Any]] = []
        self._in_flight: dict[int, _Job] = {}
        # Called (outside the dispatcher's lock) whenever an event's delivery to an endpoint is over,
        # delivered or given up, so a state file can stop listing it as undelivered.
        self.on_settled: Callable[[], None] | None = None

    # ---------------------------------------------------------------- config

    def start(self) -> None:
        """Start the delivery thread."""
        self._thread = threading.Thread(target=self._run, name="stripe-sim-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the delivery thread, dropping undelivered jobs."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=self.options.timeout_seconds + 1)

    def add_endpoint(self, url: str, secret: str) -> None:
        """Register a webhook endpoint."""
        with self._cond:
            self.endpoints.append(Endpoint(url, secret))

    def clear_endpoints(self) -> None:
        """Remove all webhook endpoints."""
        with self._cond:
            self.endpoints.clear()

    def configure(self, changes: dict[str, Any]) -> DeliveryOptions:
        """Update some delivery options; raises ValueError on unknown keys."""
        unknown = set(changes) - _OPTION_KEYS
        if unknown:
            raise ValueError(f"unknown delivery settings: {sorted(unknown)}")
        with self._cond:
            for key, value in changes.items():
                current = getattr(self.options, key)
                if key == "paused":
                    value = bool(value)
                elif key == "seed":
                    self._rng = random.Random(value)
                elif key == "max_attempts":
                    value = max(1, int(value))
                else:
                    value = float(value) if value is not None else current
                setattr(self.options, key, value)
            if not 0.0 <= self.options.duplicate_rate <= 1.0:
                raise ValueError("duplicate_rate must be between 0 and 1")
            self._cond.notify_all()
            return DeliveryOptions(**vars(self.options))

    def reset(self) -> None:
        """Drop queued deliveries and history, restore default options and the endpoints given at start."""
        with self._cond:
            self._heap.clear()
            self.attempts.clear()
            self.options = DeliveryOptions()
            self._rng = random.Random()
            self.endpoints = list(self._initial_endpoints)

    # ------------------------------------------------------------- enqueueing

    def endpoint_count(self) -> int:
        """Number of endpoints an event will be sent to (``pending_webhooks``)."""
        return len(self.endpoints)

    def enqueue(self, event: dict[str, Any], *, redelivery: bool = False) -> None:
        """Schedule ``event`` for every endpoint, applying delay, shuffle and duplication."""
        with self._cond:
            opts = self.options
            base = time.time() + opts.delay_ms / 1000.0
            for endpoint in self.endpoints:
                copies = 1
                if not redelivery and opts.duplicate_rate and self._rng.random() < opts.duplicate_rate:
                    copies = 2
                for _ in range(copies):
                    jitter = 0.0 if redelivery else self._rng.uniform(0.0, opts.shuffle_window_ms / 1000.0)
                    heapq.heappush(self._heap, _Job(base + jitter, next(self._seq), event, endpoint))
            self._cond.notify_all()

    def undelivered_event_ids(self) -> list[str]:
        """Ids of the events queued or being sent, each once, oldest queued first."""
        with self._cond:
            jobs = sorted([*self._heap, *self._in_flight.values()], key=lambda job: job.seq)
            return list(dict.fromkeys(job.event["id"] for job in jobs))

    def pending(self) -> int:
        """Deliveries queued or being sent."""
        with self._cond:
            return len(self._heap) + self._sending

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Block until nothing is queued or in flight (True) or ``timeout`` passes (False)."""
        deadline = time.time() + timeout
        with self._cond:
            while self._heap or self._sending:
                remaining = deadline - time.time()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))
            return True

    # ---------------------------------------------------------------- worker

    def _next_job(self) -> _Job | None:
        with self._cond:
            while not self._stopped:
                if self._heap and not self.options.paused:
                    wait = self._heap[0].due - time.time()
                    if wait <= 0:
                        self._sending += 1
                        job = heapq.heappop(self._heap)
                        self._in_flight[job.seq] = job
                        return job
                    self._cond.wait(min(wait, 0.5))
                else:
                    self._cond.wait(0.5)
            return None

    def _run(self) -> None:
        session = requests.Session()
        try:
            while True:
                job = self._next_job()
                if job is None:
                    return
                settled = True
                try:
                    settled = self._send(session, job)
                except Exception:  # never let the delivery thread die
                    log.exception("webhook delivery crashed")
                finally:
                    with self._cond:
                        self._sending -= 1
                        self._in_flight.pop(job.seq, None)
                        self._cond.notify_all()
                if settled and self.on_settled is not None:
                    try:
                        self.on_settled()
                    except Exception:
                        log.exception("recording a settled delivery failed")
        finally:
            session.close()

    def _send(self, session: requests.Session, job: _Job) -> bool:
        """POST one attempt; returns whether the delivery is over (delivered or given up)."""
        payload = json.dumps(job.event, indent=2).encode("utf-8")
        # Stripe signs every attempt afresh, with the time of that attempt.
        header = sign_payload(payload, job.endpoint.secret, int(time.time()))
        status: int | None = None
        error: str | None = None
        try:
            resp = session.post(
                job.endpoint.url,
                data=payload,
                headers={
                    "Content-Type": "application/json; charset=utf-8",
                    "Stripe-Signature": header,
                    "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                },
                timeout=self.options.timeout_seconds,
            )
            status = resp.status_code
            resp.close()
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: {exc}"
        ok = status is not None and 200 <= status < 300
        with self._cond:
            self.attempts.append(
                {
                    "event": job.event["id"],
                    "type": job.event["type"],
                    "url": job.endpoint.url,
                    "attempt": job.attempt,
                    "status": status,
                    "error": error,
                    "ok": ok,
                    "at": time.time(),
                }
            )
            retry = not ok and job.attempt < self.options.max_attempts and not self._stopped
            if retry:
                backoff = self.options.retry_backoff_ms / 1000.0 * (2 ** (job.attempt - 1))
                heapq.heappush(
                    self._heap, _Job(time.time() + backoff, next(self._seq), job.event, job.endpoint, job.attempt + 1)
                )
            elif not ok and self._stopped:
                # Stopping: keep the job queued (never sent now) so a state file still lists the event.
                heapq.heappush(self._heap, job)
                retry = True
        outcome = status if status is not None else (error or "").split(":", 1)[0]
        log.info("webhook %s %s %s -> %s (attempt %d)", job.event["id"], job.event["type"], job.endpoint.url,
                 outcome, job.attempt)
        return not retry

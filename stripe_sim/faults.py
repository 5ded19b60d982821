"""Injectable faults (scripted or probabilistic) and the token-bucket rate limiter."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Any

# "card_declined": a 402 decline without performing (e.g. a capture the issuer refuses).
FAULT_KINDS = ("500", "429", "timeout", "lost_response", "slow", "card_declined")
_RATE_KEYS = {
    "error_500_rate": "500",
    "rate_limit_rate": "429",
    "timeout_rate": "timeout",
    "lost_response_rate": "lost_response",
}
_CONFIG_KEYS = set(_RATE_KEYS) | {"seed", "timeout_seconds", "lost_response_seconds", "script"}


@dataclass(frozen=True)
class Fault:
    """One fault to apply to the current request; ``seconds`` is how long to stall."""

    kind: str
    seconds: float


@dataclass
class _ScriptEntry:
    fault: str
    method: str | None
    path_contains: str | None
    times: int
    seconds: float | None

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method.upper()) and (
            self.path_contains is None or self.path_contains in path
        )


class FaultInjector:
    """Decides, per /v1 request, which fault (if any) to inject, and counts what it injected."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.configure({})
        self.counts: dict[str, int] = {}
        self.reset_counts()

    def reset_counts(self) -> None:
        """Zero the injected-fault counters."""
        with self._lock:
            self.counts = {kind: 0 for kind in FAULT_KINDS} | {"rate_limited": 0}

    def configure(self, config: dict[str, Any]) -> None:
        """Replace the fault configuration; ``{}`` disables all faults. Raises ValueError on bad input."""
        unknown = set(config) - _CONFIG_KEYS
        if unknown:
            raise ValueError(f"unknown fault settings: {sorted(unknown)}")
        rates: dict[str, float] = {}
        for key, kind in _RATE_KEYS.items():
            rate = float(config.get(key) or 0.0)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{key} must be between 0 and 1")
            rates[kind] = rate
        if sum(rates.values()) > 1.0:
            raise ValueError("fault rates must add up to at most 1")
        script = [self._parse_entry(e) for e in config.get("script") or []]
        with self._lock:
            self._rates = rates
            self._rng = random.Random(config.get("seed"))
            self.timeout_seconds = float(config.get("timeout_seconds", 3.0))
            self.lost_response_seconds = float(config.get("lost_response_seconds", 0.0))
            self._script = script
            self.config = dict(config)

    @staticmethod
    def _parse_entry(raw: Any) -> _ScriptEntry:
        if not isinstance(raw, dict):
            raise ValueError("script entries must be objects")
        unknown = set(raw) - {"fault", "method", "path_contains", "times", "seconds"}
        if unknown:
            raise ValueError(f"unknown script entry keys: {sorted(unknown)}")
        fault = str(raw.get("fault"))
        if fault not in FAULT_KINDS:
            raise ValueError(f"fault must be one of {FAULT_KINDS}")
        times = int(raw.get("times", 1))
        if times < 1:
            raise ValueError("times must be at least 1")
        method = raw.get("method")
        seconds = raw.get("seconds")
        return _ScriptEntry(
            fault=fault,
            method=str(method).upper() if method else None,
            path_contains=raw.get("path_contains"),
            times=times,
            seconds=float(seconds) if seconds is not None else None,
        )

    def pick(self, method: str, path: str) -> Fault | None:
        """Consume the first matching script entry, else roll the dice; count the fault chosen."""
        with self._lock:
            kind: str | None = None
            seconds: float | None = None
            for entry in self._script:
                if entry.matches(method, path):
                    kind, seconds = entry.fault, entry.seconds
                    entry.times -= 1
                    if entry.times == 0:
                        self._script.remove(entry)
                    break
            if kind is None and any(self._rates.values()):
                roll, threshold = self._rng.random(), 0.0
                for candidate, rate in self._rates.items():
                    threshold += rate
                    if roll < threshold:
                        kind = candidate
                        break
            if kind is None:
                return None
            self.counts[kind] += 1
            if seconds is None:
                seconds = self.lost_response_seconds if kind == "lost_response" else self.timeout_seconds
            return Fault(kind, seconds)

    def count_rate_limited(self) -> None:
        """Count a request rejected by the enforced rate limit."""
        with self._lock:
            self.counts["rate_limited"] += 1

    def pending_script(self) -> list[dict[str, Any]]:
        """Script entries not yet consumed."""
        with self._lock:
            return [dict(vars(e)) for e in self._script]


class TokenBucket:
    """Rate limiter over all /v1 requests: ``rate`` tokens per second, bursts up to ``burst``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.configure(None)

    def configure(self, rate: float | None, burst: float | None = None) -> None:
        """Enable with ``rate`` requests per second, or disable with None/0."""
        with self._lock:
            self.rate = float(rate) if rate else None
            self.burst = float(burst) if burst else (max(self.rate, 1.0) if self.rate else 0.0)
            self._tokens = self.burst
            self._stamp = time.monotonic()

    def allow(self) -> bool:
        """Take one token if available."""
        with self._lock:
            if self.rate is None:
                return True
            current = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (current - self._stamp) * self.rate)
            self._stamp = current
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False

"""Job functions for the RQ baseline (importable by an RQ worker as `bench._jobs`)."""

from __future__ import annotations

import time

from rq import get_current_job

STARTED_KEY = "bench:rq_started"


def record_start() -> None:
    """Record when the job started (unix time), in one HSET; nothing else."""
    started = time.time()
    job = get_current_job()
    job.connection.hset(STARTED_KEY, job.id, repr(started))

"""Helper process for capture_lag.py: a plain RQ SimpleWorker with the scheduler, on one queue.

    python bench/_rq_worker.py REDIS_URL QUEUE
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402
from rq import Queue, SimpleWorker  # noqa: E402


def main() -> int:
    url, name = sys.argv[1:3]
    connection = redis.Redis.from_url(url)
    worker = SimpleWorker([Queue(name, connection=connection)], connection=connection)
    worker.work(with_scheduler=True, logging_level="WARNING")
    return 0


if __name__ == "__main__":
    sys.exit(main())

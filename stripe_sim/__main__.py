"""Command line: ``python -m stripe_sim --port 12111 [--webhook-url URL --webhook-secret whsec_...] [--state-file F]``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType

from .persistence import StateFileError
from .server import SimServer


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, serve until SIGTERM/SIGINT, exit 0."""
    parser = argparse.ArgumentParser(prog="python -m stripe_sim", description="Offline Stripe API simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("STRIPE_SIM_PORT", "12111")))
    parser.add_argument("--webhook-url", default=os.environ.get("STRIPE_SIM_WEBHOOK_URL"))
    parser.add_argument("--webhook-secret", default=os.environ.get("STRIPE_WEBHOOK_SECRET"))
    parser.add_argument("--state-file", default=os.environ.get("STRIPE_SIM_STATE_FILE"),
                        help="keep every object in this JSON file, so a restart continues where it stopped")
    parser.add_argument("--max-delivery-attempts", type=int, default=None,
                        help="attempts per webhook delivery before giving up (default 4)")
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    args = parser.parse_args(argv)

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s stripe_sim %(message)s",
    )
    if args.webhook_url and not args.webhook_secret:
        parser.error("--webhook-secret (or STRIPE_WEBHOOK_SECRET) is required with a webhook URL")

    try:
        sim = SimServer(port=args.port, webhook_url=args.webhook_url, webhook_secret=args.webhook_secret,
                        host=args.host, state_file=args.state_file, max_delivery_attempts=args.max_delivery_attempts)
    except StateFileError as exc:
        parser.exit(2, f"stripe_sim: {exc}\n")
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    sim.start()
    logging.getLogger("stripe_sim").warning("listening on %s (webhooks: %s, state: %s)", sim.url,
                                            args.webhook_url or "none", args.state_file or "in memory")
    while not stop.wait(0.5):
        pass
    sim.stop()
    logging.getLogger("stripe_sim").warning("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

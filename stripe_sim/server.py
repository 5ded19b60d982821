"""Run the simulator on a threaded werkzeug server, in-process (tests) or standalone."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from .app import SimApp
from .control import SimControl
from .delivery import Endpoint, WebhookDispatcher
from .persistence import StateFile
from .state import SimState

log = logging.getLogger("stripe_sim")


class _QuietHandler(WSGIRequestHandler):
    """Werkzeug's own access log is replaced by the app's one-line-per-request log."""

    def log(self, type: str, message: str, *args: Any) -> None:
        log.debug("werkzeug %s: " + message, type, *args)


class SimServer:
    """A Stripe API simulator listening on ``host:port`` (port 0 picks a free port)."""

    def __init__(
        self,
        port: int = 0,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        host: str = "127.0.0.1",
        state_file: str | os.PathLike[str] | None = None,
        max_delivery_attempts: int | None = None,
    ) -> None:
        """``state_file``: keep every object in this JSON file across restarts (in memory when None)."""
        endpoints = []
        if webhook_url:
            if not webhook_secret:
                raise ValueError("webhook_secret is required with webhook_url")
            endpoints.append(Endpoint(webhook_url, webhook_secret))
        dispatcher = WebhookDispatcher(endpoints)
        if max_delivery_attempts is not None:
            dispatcher.configure({"max_attempts": max_delivery_attempts})
        self.app = SimApp(dispatcher, StateFile(state_file) if state_file is not None else None)
        self.host = host
        self.port = port
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> SimState:
        """Direct access to the simulated objects (hold ``state.lock`` while reading)."""
        return self.app.state

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321``."""
        return f"http://{self.host}:{self.port}"

    @property
    def control(self) -> SimControl:
        """A control-API client for this server."""
        return SimControl(self.url)

    def start(self) -> SimServer:
        """Bind, start serving in a background thread and start webhook delivery."""
        self._server = make_server(self.host, self.port, self.app, threaded=True, request_handler=_QuietHandler)
        self.port = self._server.server_port
        self.app.webhooks.start()
        server = self._server
        # A short poll interval keeps stop() fast (serve_forever checks for shutdown between polls).
        self._thread = threading.Thread(
            target=lambda: server.serve_forever(poll_interval=0.05), name="stripe-sim-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and delivering; safe to call twice."""
        if self._server is not None:
            server, self._server = self._server, None
            if self._thread is not None:
                server.shutdown()
                self._thread.join(timeout=5)
                self._thread = None
            server.server_close()
        self.app.webhooks.stop()
        self.app.save()  # deliveries cut short by the stop stay listed as undelivered

    def wait_for_webhooks(self, timeout: float = 5.0) -> bool:
        """Block until every queued webhook delivery finished (or ``timeout``)."""
        return self.app.webhooks.wait_idle(timeout)

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

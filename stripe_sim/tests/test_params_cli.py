"""Form decoding, the control client and the command line entry point."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import requests

from stripe_sim.control import SimControl
from stripe_sim.params import parse_pairs
from stripe_sim.server import SimServer

ROOT = Path(__file__).resolve().parents[2]


def test_parse_nested_form_pairs() -> None:
    parsed = parse_pairs(
        [
            ("amount", "100"),
            ("metadata[cart_id]", "x"),
            ("payment_method_options[card][request_incremental_authorization]", "if_available"),
            ("expand[0]", "latest_charge"),
            ("expand[1]", "payment_method"),
            ("types[]", "a"),
            ("types[]", "b"),
        ]
    )
    assert parsed == {
        "amount": "100",
        "metadata": {"cart_id": "x"},
        "payment_method_options": {"card": {"request_incremental_authorization": "if_available"}},
        "expand": ["latest_charge", "payment_method"],
        "types": ["a", "b"],
    }


def test_control_confirm_and_raw_state(sim: SimServer, control: SimControl) -> None:
    created = requests.post(
        f"{sim.url}/v1/payment_intents",
        data={"amount": "700", "currency": "usd", "capture_method": "manual"},
        headers={"Authorization": "Bearer sk_test_1"},
        timeout=5,
    ).json()
    confirmed = control.confirm(created["id"])
    assert confirmed["status"] == "requires_capture"
    raw = control.payment_intent(created["id"])
    assert raw["status"] == "requires_capture" and raw["amount_capturable"] == 700
    assert len(raw["_sim"]["charges"]) == 1 and raw["_sim"]["operations"][0]["op"] == "authorize"
    assert control.health()["ok"] is True
    control.reset()
    assert control.ledger() == {"operations": [], "faults": control.ledger()["faults"], "requests": 0}


def test_unauthenticated_request(sim: SimServer) -> None:
    resp = requests.get(f"{sim.url}/v1/payment_intents", timeout=5)
    assert resp.status_code == 401 and resp.json()["error"]["type"] == "authentication_error"


def test_cli_serves_and_exits_on_sigterm() -> None:
    env = {**os.environ, "STRIPE_SIM_PORT": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stripe_sim"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = re.search(r"listening on (http://\S+)", line)
        assert match, line
        assert SimControl(match.group(1)).health()["ok"] is True
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert "GET /_sim/health" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

"""A small closed-loop load generator in other processes (threads with keep-alive `requests` sessions).

`run(kind, processes, threads, duration, params)` starts `processes` processes of `threads` threads;
each thread repeats one unit of work until the time is up and records its latency. Kinds:

  bare      POST params["url"] with a small JSON body (the HTTP stack's ceiling)
  payloads  POST pre-signed webhook payloads params["items"] (signature, body) to params["url"],
            thread t of T taking items t, t+T, ... (a fallback when `wrk` is not installed)
  checkout  a customer's checkout: cart → line item → payment-intent → confirm at the simulator → complete
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
import traceback
from typing import Any


def _bare(session, params, state, thread_index, threads) -> tuple[int, str | None]:
    r = session.post(params["url"], json={"ping": 1}, timeout=30)
    return 1, None if r.status_code == 200 else f"http {r.status_code}"


def _payloads(session, params, state, thread_index, threads) -> tuple[int, str | None]:
    items = params["items"]
    i = state.setdefault("i", thread_index)
    state["i"] = i + threads
    signature, body = items[i % len(items)]
    r = session.post(params["url"], data=body, timeout=30,
                     headers={"Stripe-Signature": signature, "Content-Type": "application/json"})
    return 1, None if r.status_code == 200 else f"http {r.status_code}"


def _checkout(session, params, state, thread_index, threads) -> tuple[int, str | None]:
    base = params["app_url"]
    step_times = state.setdefault("steps", {})

    def step(name, fn):
        t = time.perf_counter()
        r = fn()
        step_times.setdefault(name, []).append(time.perf_counter() - t)
        return r

    r = step("cart", lambda: session.post(f"{base}/store/carts", json={"email": "load@example.com", "currency": "usd"},
                                          timeout=30))
    if r.status_code != 201:
        return 1, f"cart http {r.status_code}"
    cart_id = r.json()["cart"]["id"]
    r = step("line_item", lambda: session.post(f"{base}/store/carts/{cart_id}/line-items",
                                               json={"product_id": params["product_id"], "quantity": 2}, timeout=30))
    if r.status_code != 200:
        return 2, f"line item http {r.status_code}"
    r = step("payment_intent", lambda: session.post(f"{base}/store/carts/{cart_id}/payment-intent", timeout=30))
    if r.status_code != 200:
        return 3, f"payment-intent http {r.status_code}"
    pi = r.json()["payment_intent"]["id"]
    # The customer's browser confirms at Stripe (here the simulator), not through the app.
    r = step("confirm_at_stripe", lambda: session.post(
        f"{params['sim_url']}/v1/payment_intents/{pi}/confirm", data={"payment_method": "pm_card_visa"},
        headers={"Authorization": "Bearer sk_test_bench"}, timeout=30))
    if r.status_code != 200:
        return 3, f"confirm http {r.status_code}"
    r = step("complete", lambda: session.post(f"{base}/store/carts/{cart_id}/complete", timeout=30))
    if r.status_code != 200:
        return 4, f"complete http {r.status_code}: {r.text[:200]}"
    return 4, None


KINDS = {"bare": _bare, "payloads": _payloads, "checkout": _checkout}


def _process(kind: str, threads: int, duration: float, params: dict, start_at: float, out: mp.Queue,
             process_index: int, processes: int) -> None:
    import requests

    fn = KINDS[kind]
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def thread_main(t: int) -> None:
        session = requests.Session()
        state: dict[str, Any] = {}
        latencies: list[float] = []
        errors: dict[str, int] = {}
        app_requests = 0
        units = 0
        global_index = process_index * threads + t
        total = processes * threads
        while time.time() < start_at:
            time.sleep(0.001)
        end = start_at + duration
        while time.time() < end:
            t0 = time.perf_counter()
            try:
                n, error = fn(session, params, state, global_index, total)
            except Exception as exc:  # a connection error is a failed unit, not a crash
                n, error = 1, f"{type(exc).__name__}"
            latencies.append(time.perf_counter() - t0)
            app_requests += n
            if error:
                errors[error[:80]] = errors.get(error[:80], 0) + 1
            else:
                units += 1
        with lock:
            results.append({"latencies": latencies, "errors": errors, "units": units, "app_requests": app_requests,
                            "steps": state.get("steps", {})})

    try:
        ts = [threading.Thread(target=thread_main, args=(t,)) for t in range(threads)]
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        out.put(results)
    except Exception:
        out.put([{"crash": traceback.format_exc()}])


def run(kind: str, processes: int, threads: int, duration: float, params: dict) -> dict:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 1.5  # every process ready before the clock starts
    procs = [ctx.Process(target=_process, args=(kind, threads, duration, params, start_at, out, i, processes))
             for i in range(processes)]
    for p in procs:
        p.start()
    parts: list[dict] = []
    for _ in procs:
        parts.extend(out.get(timeout=duration + 120))
    for p in procs:
        p.join(30)
    crashes = [p["crash"] for p in parts if "crash" in p]
    if crashes:
        raise RuntimeError(crashes[0])
    latencies = [x for p in parts for x in p["latencies"]]
    errors: dict[str, int] = {}
    steps: dict[str, list[float]] = {}
    for p in parts:
        for k, v in p["errors"].items():
            errors[k] = errors.get(k, 0) + v
        for k, v in p["steps"].items():
            steps.setdefault(k, []).extend(v)
    units = sum(p["units"] for p in parts)
    return {
        "kind": kind,
        "duration_s": duration,
        "concurrency": processes * threads,
        "units": units,
        "attempts": len(latencies),
        "app_requests": sum(p["app_requests"] for p in parts),
        "per_s": units / duration,
        "latencies": latencies,
        "errors": errors,
        "steps": steps,
    }

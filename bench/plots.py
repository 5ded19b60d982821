"""Draw docs/plots/*.png from the saved results in bench/results/*.json (needs matplotlib).

    .venv/bin/python bench/plots.py

Only the full-size results are drawn (never the -quick ones). A figure whose results file is missing
is skipped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

OUT = c.ROOT / "docs" / "plots"
NOTE = "2 cores, shared"


def load(name: str) -> dict | None:
    path = c.RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def capture_lag(plt) -> None:
    base = load("capture_lag")
    if not base:
        return
    results = list(base["results"])
    extra = load("capture_lag_whatif")
    if extra:
        results += [r for r in extra["results"] if r["way"].startswith("what-if")]
    after = load("capture_lag_after")  # the engine re-measured after the fix was applied (commit 9561cfa)
    if after:
        results += [dict(r, way="after: " + r["way"]) for r in after["results"] if r["way"].startswith("engine (")]
    # The engine with the list index (2026-11-22, second round): 10k from one run, 100k from a run of its own
    # (the first run's 100k intents were created too slowly to be measured; see docs/performance.md).
    for name, n in (("capture_lag_lists", 10_000), ("capture_lag_lists_100k", 100_000)):
        now = load(name)
        if now:
            results += [dict(r, way="now: " + r["way"]) for r in now["results"]
                        if r["way"].startswith("engine (") and r["n"] == n]
    width = base["window_s"]
    styles = {"now": ("black", "engine now (list index, batched): capture job enqueued"),
              "engine": ("tab:blue", "engine before 9561cfa: capture job enqueued"),
              "what-if": ("tab:green", "what-if, batched listener: enqueued"),
              "after": ("tab:purple", "engine after commit 9561cfa (batched): enqueued"),
              "expired": ("tab:orange", "expired events alone: event received"),
              "RQ": ("tab:red", "RQ enqueue_at: job enqueued by its scheduler")}
    for n in sorted({r["n"] for r in results if "series" in r}):
        fig, ax = plt.subplots(figsize=(8.5, 4.8))
        for r in results:
            if r["n"] != n or "series" not in r:
                continue
            key = next(k for k in styles if r["way"].startswith(k))
            color, label = styles[key]
            xs = [x for x, y in r["series"] if y is not None]
            ys = [y for x, y in r["series"] if y is not None]
            missing = sum(1 for _, y in r["series"] if y is None)
            if missing:
                label += f" ({missing / len(r['series']):.0%} not yet at the cut-off)"
            ax.plot(xs, ys, ".", markersize=3, color=color, label=label)
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_xlabel(f"deadline, seconds into the {width:.0f} s window")
        ax.set_ylabel("lag after the deadline, s")
        ax.set_title(f"Capture lag with {n:,} live grace periods ({NOTE})")
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        save(fig, plt, f"capture_lag_{n}.png")


def redis_memory(plt) -> None:
    res = load("redis_memory")
    if not res:
        return
    names = list(res["results"])
    delta = [res["results"][k]["used_memory_delta_per_item"] for k in names]
    usage = [res["results"][k]["memory_usage_per_item"] for k in names]
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    ys = range(len(names))
    ax.barh([y + 0.2 for y in ys], delta, height=0.4, label="INFO used_memory delta / N")
    ax.barh([y - 0.2 for y in ys], usage, height=0.4, label="MEMORY USAGE / N")
    ax.axvline(res["goal_bytes"], color="grey", linestyle="--", linewidth=0.8, label=f"goal {res['goal_bytes']} B")
    ax.set_yticks(list(ys), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("bytes per live grace period (log scale)")
    ax.set_title(f"Redis memory per grace period, N={res['n']:,} ({NOTE})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, plt, "redis_memory.png")


def sweep_cost(plt) -> None:
    res = load("sweep_cost")
    if not res:
        return
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for backend in res["results"]:
        xs = [s["orders"] for s in backend["sizes"]]
        ax.plot(xs, [s["median_s"] * 1000 for s in backend["sizes"]], "o-", label=f"{backend['backend']} median")
        ax.fill_between(xs, [s["min_s"] * 1000 for s in backend["sizes"]],
                        [s["max_s"] * 1000 for s in backend["sizes"]], alpha=0.15)
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("orders in the database (log scale)")
    ax.set_ylabel("sweep() duration, ms (band: min–max)")
    ax.set_title(f"Fallback sweep cost, backlog fixed at {res['backlog']} overdue ({NOTE})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, plt, "sweep_cost.png")


def throughput(plt) -> None:
    web = load("webhook_ingest_2") or load("webhook_ingest")  # _2: the run back to back with aab72dc
    chk = load("checkout")
    if not web and not chk:
        return
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4))
    if web:
        ax = axes[0]
        labels = ["ceiling\n(bare Flask)", "bare Flask\n+ 1 INSERT", "app"]
        values = [web["ceiling_per_s"], web.get("db_ceiling_per_s") or 0.0, web["app_per_s"]]
        ax.bar(labels, values, color=["grey", "silver", "tab:blue", "tab:green"][:len(values)])
        ax.set_ylabel("signed events / s")
        ax.set_title("Webhook ingest (wrk, 20% duplicates)", fontsize=10)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
    if chk:
        ax = axes[1]
        values = [chk["ceiling_rps"], chk["app_rps"]]
        ax.bar(["ceiling\n(bare Flask)", "app: checkout\nrequests"], values, color=["grey", "tab:blue"])
        ax.set_ylabel("requests / s")
        ax.set_title(f"Checkout ({chk['checkouts_per_s']:.0f} checkouts/s = 4 requests each)", fontsize=10)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
    fig.suptitle(f"Throughput under gunicorn -w 2 --threads 4 ({NOTE})", fontsize=11)
    fig.tight_layout()
    save(fig, plt, "throughput.png")


def capture_drain(plt) -> None:
    runs = [(name, load(name)) for name in ("capture_drain", "capture_drain_2w_30rps")]
    runs = [(n, r) for n, r in runs if r]
    if not runs:
        return
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for name, res in runs:
        for r in res["results"]:
            timeline = r["captured_timeline"]
            if not timeline:
                continue
            step = max(1, r["captured"] // 400)  # how capture_drain.py sampled the timeline
            xs = [t - r["t0"] for t in timeline]
            ys = [i * step for i in range(len(timeline))]
            ax.plot(xs, ys, label=f"limit {r['tag']}, {r['workers']} workers: "
                                  f"{r['captures_per_s']:.0f} captures/s, {r['rate_limited_429']:,} × 429")
            if r["limit_rps"] and not r.get("what_if"):
                ax.plot([0, max(xs)], [0, r["limit_rps"] * max(xs)], ":", linewidth=0.8,
                        label=f"the limit itself ({r['limit_rps']:.0f}/s)")
    ax.set_xlabel("seconds after the captures were enqueued")
    ax.set_ylabel("captures committed")
    ax.set_title(f"Capture drain against a rate-limited Stripe simulator ({NOTE})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, plt, "capture_drain.png")


def capture_lag_live(plt) -> None:
    """P1: a steady store of 1M live grace periods, the engine against Redis's expiry alone."""
    res = load("capture_lag_live_1m")
    if not res:
        return
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    for r in res["results"]:
        engine = r["way"].startswith("engine")
        xs = [x for x, y in r["series"] if y is not None]
        ys = [y for x, y in r["series"] if y is not None]
        missing = sum(1 for _, y in r["series"] if y is None)
        label = ("engine: capture job enqueued" if engine else "Redis's expiry alone: expired event")
        if missing:
            label += f" ({missing / len(r['series']):.0%} not fired {r['cutoff_s']:.0f} s after the window)"
        ax.plot(xs, ys, ".", markersize=3, color="black" if engine else "tab:orange", label=label)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("deadline, seconds into the measured minute")
    ax.set_ylabel("lag after the deadline, s (log above 1 s)")
    live = res["results"][0]["live"]
    ax.set_title(f"P1: {live:,} live grace periods, {live / 3600:.0f} due a second ({NOTE})")
    ax.legend(fontsize=8, loc="center right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, plt, "capture_lag_live_1m.png")


def capture_lag_copies(plt) -> None:
    """P1b: 100k deadlines inside 30 s with 1, 2, 3 listener copies, before and after the copy fix."""
    rows = []
    for name, code in (("p1b_before", "before"), ("p1b_after", "after"),
                       ("p1b_before_x3", "before"), ("p1b_after_x3", "after")):
        res = load(name)
        for r in (res or {}).get("results", []):
            if "listener_cpu_s" in r or name in ("p1b_before", "p1b_after"):
                rows.append((code, r.get("listeners", 1), r["enqueued"]["p99"], sum(r.get("listener_cpu_s") or [0])))
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for code, color in (("before", "tab:red"), ("after", "black")):
        pts = [(k, p99) for c_, k, p99, _ in rows if c_ == code]
        ax.plot([k for k, _ in pts], [p for _, p in pts], "o", color=color, label=f"{code}: enqueued p99")
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks([1, 2, 3])
    ax.set_xlabel("listener copies")
    ax.set_ylabel("deadline → capture job enqueued, p99 s")
    ax.set_title(f"P1b: 100,000 deadlines inside 30 s ({NOTE})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, plt, "capture_lag_copies.png")


def save(fig, plt, name: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / name, dpi=110)
    plt.close(fig)
    print(f"wrote {(OUT / name).relative_to(c.ROOT)}")


def main() -> int:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: .venv/bin/pip install matplotlib")
        return 1
    for fn in (capture_lag, capture_lag_live, capture_lag_copies, redis_memory, sweep_cost, throughput, capture_drain):
        fn(plt)
    return 0


if __name__ == "__main__":
    sys.exit(main())

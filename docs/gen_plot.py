"""Render docs/img/performance.png from the committed benchmark results in docs/benchmarks/.

    python docs/gen_plot.py

The JSON files are written by ``benchmarks/bench_verify.py --json`` and
``benchmarks/bench_session.py --json``; CI only redraws the plot from them, it never times
anything. Left: ``verify_report`` per call against the bare cryptography, per product. Right: the
distribution of request latencies through ``SecureSession`` and ``requests.Session``.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FixedLocator, NullFormatter

HERE = Path(__file__).resolve().parent
DATA = HERE / "benchmarks"
OUT = HERE / "img" / "performance.png"
PRODUCTS = ("Milan", "Genoa", "Turin")
VERIFY_LINES = (
    ("bare ECDSA P-384 + RSA-PSS-4096", "bare cryptography (floor)", "#9e9e9e"),
    ("verify_report, warm", "verify_report, warm", "#1565c0"),
    ("verify_report, cold", "verify_report, cold (caches cleared)", "#90caf9"),
)
SESSION_SAMPLES = (
    ("steady_plain", "requests.Session\nsteady state"),
    ("steady_secure", "SecureSession\nsteady state"),
    ("first_plain", "requests.Session\nfirst request"),
    ("first_secure", "SecureSession\nfirst request"),
    ("first_floor", "floor: plain first\n+ evidence + ECDSA"),
    ("attest_only", "SecureSession()\nalone (attest)"),
)


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _log_axis(ax: plt.Axes, limits: tuple[float, float], ticks: tuple[float, ...]) -> None:
    ax.set_xscale("log")
    ax.set_xlim(*limits)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticklabels([f"{t:g}" for t in ticks])


def _verify_panel(ax: plt.Axes, runs: list[dict]) -> None:
    height = 0.26
    for row, run in enumerate(runs):
        results = {r["name"]: r["seconds_per_call"] for r in run["results"]}
        for i, (name, label, color) in enumerate(VERIFY_LINES):
            ms = results[name] * 1e3
            y = row + (i - 1) * height
            ax.barh(y, ms, height=height * 0.9, color=color, label=label if row == 0 else None)
            ax.text(ms * 1.04, y, f"{ms:.2f} ms", va="center", fontsize=8)
    ax.set_yticks(range(len(runs)))
    ax.set_yticklabels([f"{r['product']} v{r['report_version']}\nfull/bare {r['ratio']:.2f}x" for r in runs])
    ax.invert_yaxis()
    _log_axis(ax, (0.3, 100), (0.5, 1, 2, 5, 10, 20, 50))
    ax.set_xlabel("milliseconds per call (best of 7 interleaved rounds, log scale)")
    ax.set_title("verify_report on real reports with their VCEK")
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    ax.grid(axis="x", which="both", alpha=0.25)


def _session_panel(ax: plt.Axes, run: dict) -> None:
    samples = [[s * 1e3 for s in run["samples"][key]] for key, _ in SESSION_SAMPLES]
    box = ax.boxplot(samples, orientation="horizontal", widths=0.55, showfliers=True, patch_artist=True,
                     flierprops={"markersize": 2, "alpha": 0.4}, medianprops={"color": "black"})
    for patch, (key, _) in zip(box["boxes"], SESSION_SAMPLES, strict=True):
        patch.set_facecolor("#1565c0" if "secure" in key or key == "attest_only"
                            else "#eeeeee" if key == "first_floor" else "#bdbdbd")
    for i, values in enumerate(samples, start=1):
        median = statistics.median(values)
        ax.text(median, i + 0.38, f"median {median:.2f} ms", ha="center", fontsize=8)
    ax.set_yticks(range(1, len(SESSION_SAMPLES) + 1))
    ax.set_yticklabels([label for _, label in SESSION_SAMPLES], fontsize=8)
    ax.invert_yaxis()
    _log_axis(ax, (0.8, 40), (1, 2, 5, 10, 20))
    ax.set_xlabel("milliseconds per request (log scale)")
    ax.set_title(f"requests: steady {run['steady_ratio']:.2f}x, first request {run['first_ratio']:.2f}x "
                 f"(floor {run['floor_ratio']:.2f}x)")
    ax.grid(axis="x", which="both", alpha=0.25)


def main() -> int:
    runs = {}
    for path in sorted(DATA.glob("verify-*.json")):
        run = _load(path)
        runs[run["product"]] = run
    missing = [p for p in PRODUCTS if p not in runs]
    session_path = DATA / "session.json"
    if missing or not session_path.is_file():
        absent = [f"verify-{p.lower()}.json" for p in missing]
        absent += [] if session_path.is_file() else ["session.json"]
        print(f"gen_plot: missing in {DATA}: {', '.join(absent)}", file=sys.stderr)
        return 1
    session = _load(session_path)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1, 1.1]})
    _verify_panel(left, [runs[p] for p in PRODUCTS])
    _session_panel(right, session)
    machine = session["machine"]
    fig.suptitle(f"BlindBox benchmarks, {session['date'][:10]}: {machine['arch']}, {machine['cpus']} cores, "
                 f"Python {machine['python']} (shared machine, load average {machine['loadavg_1min']:.1f})",
                 fontsize=10)
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=110, metadata={"Software": None})
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""
Plots for the performance page, from the figures C{bench_frames.py} wrote.

    python bench/bench_frames.py --json bench/results/frames.json
    python bench/plot_frames.py bench/results/frames.json --out docs/images

Writes C{receive.png} (receive throughput of each receiver on each stream,
median of the runs) and C{ping.png} (round trips per second, twisted-frames
against the bare Int32StringReceiver echo of the same run).  Needs matplotlib
(in the C{docs} extra).  Every figure is labelled with the machine and the
date of the run it comes from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display needed

import matplotlib.pyplot as plt  # noqa: E402

RECEIVERS = {
    "frames": "FrameProtocol (streamed)",
    "stock": "stock Int32StringReceiver",
    "raw": "raw Protocol (bytes only)",
}
STREAMS = {"single": "1 x 64 MiB body", "many": "1024 x 64 KiB bodies"}
SYSTEMS = {"bare": "bare Int32StringReceiver echo", "frames": "twisted-frames"}


def caption(results: dict[str, Any]) -> str:
    """
    Where and when the figures were measured.
    """
    m = results.get("machine", {})
    return (
        f"{m.get('date', '?')}  Python {m.get('python', '?')}  Twisted {m.get('twisted', '?')}  "
        f"{m.get('cpu_count', '?')} CPUs  {m.get('platform', '')}"
    )


def plotReceive(results: dict[str, Any], out: Path) -> Path:
    """
    Grouped bars: MiB/s per receiver, one group per stream.
    """
    receive = results["receive"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(RECEIVERS)
    for i, (key, label) in enumerate(RECEIVERS.items()):
        xs, heights, notes = [], [], []
        for j, stream in enumerate(STREAMS):
            r = receive.get(f"{key}/{stream}")
            if r is None:
                continue
            xs.append(j + (i - (len(RECEIVERS) - 1) / 2) * width)
            heights.append(r["median_MiB_per_s"])
            notes.append("" if r.get("finished", True) else " (timed out)")
        bars = ax.bar(xs, heights, width, label=label)
        for bar, value, note in zip(bars, heights, notes, strict=True):
            ax.annotate(
                f"{value:.0f}{note}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    ax.set_xticks(range(len(STREAMS)), list(STREAMS.values()))
    ax.set_ylabel("MiB/s received (median)")
    ax.set_yscale("log")
    ax.set_title("Receiving 64 MiB on loopback")
    ax.legend(fontsize=8)
    return save(fig, results, out / "receive.png")


def save(fig: Any, results: dict[str, Any], path: Path) -> Path:
    """
    Caption C{fig} with the run it comes from, write it to C{path}, close it.
    """
    fig.text(0.01, 0.01, caption(results), fontsize=6, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plotPing(results: dict[str, Any], out: Path) -> Path:
    """
    Grouped bars: round trips per second, one group per connection count.
    """
    ping = results["ping"]
    counts = sorted({int(k.split("/")[1]) for k in ping})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(SYSTEMS)
    for i, (key, label) in enumerate(SYSTEMS.items()):
        xs = [j + (i - (len(SYSTEMS) - 1) / 2) * width for j in range(len(counts))]
        heights = [ping[f"{key}/{n}"]["per_s"] for n in counts]
        bars = ax.bar(xs, heights, width, label=label)
        for bar, value in zip(bars, heights, strict=True):
            ax.annotate(
                f"{value:.0f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    ax.set_xticks(range(len(counts)), [f"{n} connection{'s' if n > 1 else ''}" for n in counts])
    ax.set_ylabel("round trips per second")
    ax.set_title("Sequential ping round trips on loopback")
    ax.legend(fontsize=8)
    return save(fig, results, out / "ping.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("results", type=Path, help="JSON written by bench_frames.py --json")
    parser.add_argument("--out", type=Path, default=Path("docs/images"), help="output directory")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text(encoding="utf-8"))
    args.out.mkdir(parents=True, exist_ok=True)
    for path in (plotReceive(results, args.out), plotPing(results, args.out)):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""
Plots for the performance page, from the figures C{bench_vs_ssh.py} and
C{bench_files.py} wrote with C{--json}.

    python bench/bench_vs_ssh.py --json bench/results/vs_ssh.json
    python bench/bench_files.py --json bench/results/files.json
    python bench/plot_transfers.py --vs-ssh bench/results/vs_ssh.json \\
        --files bench/results/files.json --out docs/images

Writes, for each JSON file given:

  - C{vs_ssh_transfers.png}: MB/s of C{frames put}/C{get} over mutual TLS
    against C{sftp} and C{scp} (best of the rounds, a tick at the median),
    with the goal of 1.5x sftp marked;
  - C{vs_ssh_cli.png}: whole-process wall time of C{ssh host true} and the
    C{frames} commands (median, a bar from best to worst), with the goals
    (0.5x and 0.7x ssh) marked;
  - C{files_baseline.png}: MB/s of put and get against the C{raw tcp+sha}
    and C{raw ssl+sha} baselines, with the goal of 1.5x raw tcp+sha marked.

Needs matplotlib (in the C{docs} extra).  Every figure is labelled with the
machine and the date of the run it comes from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display needed

import matplotlib.pyplot as plt  # noqa: E402

FRAMES_COLOUR = "tab:blue"
OTHER_COLOUR = "tab:gray"
GOAL_COLOUR = "tab:red"


def caption(results: dict[str, Any]) -> str:
    """
    Where and when the figures were measured.
    """
    m = results.get("machine", {})
    load = m.get("loadavg_at_start") or ["?"]
    return (
        f"{m.get('date', '?')}  {m.get('cpu_count', '?')} CPUs ({m.get('cpu_model', '?')}), "
        f"load {load[0] if isinstance(load[0], str) else f'{load[0]:.1f}'} at start  "
        f"Python {m.get('python', '?')}  Twisted {m.get('twisted', '?')}"
    )


def _bars(
    ax: Any,
    labels: list[str],
    best: list[float],
    median: list[float],
    colours: list[str],
) -> None:
    xs = range(len(labels))
    ax.bar(xs, best, color=colours)
    ax.scatter(xs, median, marker="_", s=400, color="black", zorder=3, label="median")
    for x, value in zip(xs, best, strict=True):
        ax.annotate(f"{value:.0f}", (x, value), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=8)


def _save(fig: Any, results: dict[str, Any], out: Path, name: str) -> Path:
    fig.text(0.01, 0.01, caption(results), fontsize=7, color="dimgray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = out / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plotVsSSHTransfers(results: dict[str, Any], out: Path) -> Path:
    """
    MB/s of frames put/get against sftp and scp, with the 1.5x sftp goal.
    """
    t = results["transfers"]
    size = results["options"]["size_mib"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    for ax, op in zip(axes, ("put", "get"), strict=True):
        names = [f"frames_{op}", f"sftp_{op}", f"scp_{op}"]
        labels = [f"frames {op}\n(mutual TLS)", f"sftp {op}\n(aes128-gcm)", f"scp {op}"]
        _bars(
            ax,
            labels,
            [t[n]["best_MBps"] for n in names],
            [t[n]["median_MBps"] for n in names],
            [FRAMES_COLOUR, OTHER_COLOUR, OTHER_COLOUR],
        )
        goal = 1.5 * t[f"sftp_{op}"]["best_MBps"]
        ax.axhline(goal, color=GOAL_COLOUR, linestyle="--", linewidth=1)
        ax.annotate("goal: 1.5x sftp", (-0.4, goal), color=GOAL_COLOUR, fontsize=8, va="bottom")
        top = max(goal, *(t[n]["best_MBps"] for n in names))
        ax.set_ylim(0, max(ax.get_ylim()[1], top * 1.2))
        ax.set_title(f"{op} of {size} MiB, tmpfs, loopback", fontsize=10)
    axes[0].set_ylabel("MB/s, whole command (best of the rounds)")
    axes[0].legend(fontsize=8, loc="upper right")
    return _save(fig, results, out, "vs_ssh_transfers.png")


def plotVsSSHCLI(results: dict[str, Any], out: Path) -> Path:
    """
    Whole-process wall times, with the goals as fractions of ssh host true.
    """
    c = results["cli"]
    rows = [
        ("python_pass", "python -c pass", OTHER_COLOUR),
        ("ssh_true", "ssh host true", OTHER_COLOUR),
        ("frames_ping", "frames ping", FRAMES_COLOUR),
        ("frames_run_true", "frames run -- true", FRAMES_COLOUR),
        ("frames_ping_tls_login", "frames ping\nTLS + login", FRAMES_COLOUR),
        ("frames_run_true_tls_login", "frames run -- true\nTLS + login", FRAMES_COLOUR),
    ]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    ms = [c[k]["median"] * 1e3 for k, _, _ in rows]
    xs = range(len(rows))
    ax.bar(xs, ms, color=[colour for _, _, colour in rows])
    low = [m - c[k]["best"] * 1e3 for m, (k, _, _) in zip(ms, rows, strict=True)]
    high = [c[k]["max"] * 1e3 - m for m, (k, _, _) in zip(ms, rows, strict=True)]
    ax.errorbar(xs, ms, yerr=[low, high], fmt="none", ecolor="black", capsize=3)
    for x, value in zip(xs, ms, strict=True):
        ax.annotate(f"{value:.0f}", (x + 0.05, value), ha="left", va="bottom", fontsize=8)
    ssh = c["ssh_true"]["median"] * 1e3
    for fraction in (0.5, 0.7):
        ax.axhline(fraction * ssh, color=GOAL_COLOUR, linestyle="--", linewidth=1)
        ax.annotate(
            f"goal: {fraction}x ssh",
            (-0.4, fraction * ssh),
            color=GOAL_COLOUR,
            fontsize=8,
            ha="left",
            va="bottom",
        )
    ax.set_xticks(list(xs))
    ax.set_xticklabels([label for _, label, _ in rows], fontsize=8)
    ax.set_ylabel("wall time, ms (median; bar: best to worst)")
    ax.set_title(
        f"Whole-process wall time, {results['options']['cli_runs']} runs each", fontsize=10
    )
    return _save(fig, results, out, "vs_ssh_cli.png")


def plotFiles(results: dict[str, Any], out: Path) -> Path:
    """
    MB/s of put and get against the raw baselines, with the 1.5x goal.
    """
    t = results["transfers"]
    size = results["options"]["size_mib"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    for ax, transport, raw in (
        (axes[0], "tcp", "raw tcp+sha"),
        (axes[1], "tls", "raw ssl+sha"),
    ):
        names = [f"raw_{transport}", f"put_{transport}", f"get_{transport}"]
        _bars(
            ax,
            [raw, "frames put", "frames get"],
            [t[n]["best_MBps"] for n in names],
            [t[n]["median_MBps"] for n in names],
            [OTHER_COLOUR, FRAMES_COLOUR, FRAMES_COLOUR],
        )
        title = "plain TCP" if transport == "tcp" else "mutual TLS (frames: + login)"
        ax.set_title(f"{size} MiB, {title}", fontsize=10)
    goal = 1.5 * t["raw_tcp"]["best_MBps"]
    axes[0].axhline(goal, color=GOAL_COLOUR, linestyle="--", linewidth=1)
    axes[0].annotate(
        "goal: 1.5x raw tcp+sha", (-0.4, goal), color=GOAL_COLOUR, fontsize=8, va="bottom"
    )
    top = max(goal, *(s["best_MBps"] for s in t.values()))
    axes[0].set_ylim(0, top * 1.2)
    axes[0].set_ylabel("MB/s (best of the rounds)")
    axes[0].legend(fontsize=8, loc="upper right")
    return _save(fig, results, out, "files_baseline.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--vs-ssh", type=Path, help="JSON written by bench_vs_ssh.py --json")
    parser.add_argument("--files", type=Path, help="JSON written by bench_files.py --json")
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    if not args.vs_ssh and not args.files:
        parser.error("give --vs-ssh, --files or both")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.vs_ssh:
        results = json.loads(args.vs_ssh.read_text())
        if "skipped" in results:
            print(f"{args.vs_ssh}: the run was skipped ({results['skipped']}); nothing to plot")
        else:
            print(plotVsSSHTransfers(results, args.out))
            print(plotVsSSHCLI(results, args.out))
    if args.files:
        print(plotFiles(json.loads(args.files.read_text()), args.out))


if __name__ == "__main__":
    main()

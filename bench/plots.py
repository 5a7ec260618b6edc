"""PNG plots of a benchmark run, drawn with matplotlib (Agg, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

OURS, THEIRS = "tab:green", "tab:red"


def draw(fig: dict[str, Any], out: Path, stem: str) -> dict[str, str]:
    """Draw what the run measured; returns plot name -> file name (relative to `out`)."""
    out.mkdir(parents=True, exist_ok=True)
    parts = fig["parts"]
    made: dict[str, str] = {}
    for name, draw_one in (
        ("placement", _placement),
        ("apply", _apply),
        ("churn", _churn),
        ("optimal", _optimal),
    ):
        part = parts.get(name) or {}
        if "error" in part or "skipped" in part or not part:
            continue
        path = out / f"{stem}-{name}.png"
        figure = draw_one(part)
        figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(figure)
        made[name] = path.name
    return made


def _placement(part: dict[str, Any]) -> Figure:
    runs = part["runs"]
    figure, ax = plt.subplots(figsize=(6, 3.5))
    x = range(len(runs))
    ax.bar([i - 0.2 for i in x], [r["all"]["p50_ms"] for r in runs], 0.4, label="p50")
    ax.bar([i + 0.2 for i in x], [r["all"]["p99_ms"] for r in runs], 0.4, label="p99")
    ax.axhline(5, color="grey", linestyle="--", label="target p99 at 1,000 racks")
    ax.set_xticks(list(x), [f"{r['racks']} racks" for r in runs])
    ax.set_ylabel("ms per replica decision")
    ax.set_title("1. rackscale engine: placement latency")
    ax.legend()
    return figure


def _apply(part: dict[str, Any]) -> Figure:
    figure, axes = plt.subplots(1, 2, figsize=(8, 3.5), sharey=True)
    for ax, key, title in (
        (axes[0], "samples_bound_s", "all 16 bound"),
        (axes[1], "samples_running_s", "all 16 Running"),
    ):
        data = [part["rackscale"][key], part["kube-scheduler"][key]]
        ax.boxplot(data, tick_labels=["rackscale", "kube-scheduler"])
        for i, values in enumerate(data, 1):
            ax.scatter([i] * len(values), values, s=10, color=[OURS, THEIRS][i - 1], zorder=3)
        ax.set_title(f"2. apply to {title}")
    axes[0].set_ylabel("seconds")
    return figure


def _churn(part: dict[str, Any]) -> Figure:
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    colors = (OURS, THEIRS, "tab:orange")
    for name, color in zip(part["systems"], colors, strict=False):
        series = part["systems"][name]["series"]
        x = [s["event"] for s in series]
        axes[0].plot(x, [s["load"] for s in series], color=color, label=name)
        axes[1].plot(x, [s["whole_racks_free"] for s in series], color=color, label=name)
        axes[2].plot(x, [s["largest_in_one_rack"] for s in series], color=color, label=name)
    axes[0].set_title("GPUs in use (share)")
    axes[1].set_title("whole racks free")
    axes[2].set_title("largest replica one rack takes (GPUs)")
    for ax in axes:
        ax.set_xlabel("event")
        ax.legend()
    figure.suptitle("3-4. churn on the same stream", y=1.04)
    return figure


def _optimal(part: dict[str, Any]) -> Figure:
    families = part["families"]
    figure, axes = plt.subplots(1, len(families), figsize=(6 * len(families), 3.5), sharey=True)
    for ax, (name, fam) in zip(list(axes), families.items(), strict=True):
        for key, label in (
            ("ratio_one_pass", "one pass (the operator)"),
            ("ratio_one_at_a_time", "one at a time"),
        ):
            values = sorted(r[key] for r in fam["rows"])
            ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=label)
        ax.axvline(0.98, color="grey", linestyle="--", label="target 98%")
        lo, hi = fam["demand_of_free_gpus"]
        ax.set_title(f"demand {lo:.0%}-{hi:.0%} of free GPUs ({name})")
        ax.set_xlabel("GPUs placed / optimum")
        ax.legend()
    axes[0].set_ylabel("share of instances at or below")
    figure.suptitle("4. rackscale against CP-SAT (CDF)")
    return figure

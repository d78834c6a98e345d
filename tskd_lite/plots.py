"""The run report's pictures (PNG, matplotlib's Agg backend): each round's gaps against the keep rule's threshold,
kept and rejected apart; the per-round funnel; the evaluation per model against chance; the training curve by epoch.

Each drawing function returns a figure, or None when the run has nothing to draw yet (no scores, no evaluation,
no training); write_plots saves the figures it gets and returns their file names.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tskd_lite import atomic

KEPT, REJECTED, PENDING = "#2e8b57", "#c0504d", "#9e9e9e"
MODEL_COLOURS = {"teacher": "#4c72b0", "base": "#8c8c8c", "target before": "#dd8452", "target after": "#c44e52"}
DPI = 110


def write_plots(run_dir: Path, report: dict, pairs: list[dict]) -> list[str]:
    """Draw and save every plot the run has data for; returns the file names written, in report order."""
    plt = _pyplot()
    figures = {
        "eval.png": lambda: evaluation_bars(plt, report["eval"]),
        "funnel.png": lambda: funnel(plt, report["dataset"]["rounds"]),
        "gap_hist.png": lambda: gaps_by_round(plt, pairs, report["selection"]),
        "loss.png": lambda: loss_by_epoch(plt, report["train"]),
    }
    names = []
    for name, draw in figures.items():
        fig = draw()
        if fig is None:  # nothing to draw (yet): no picture of an earlier state is left beside the report
            (run_dir / name).unlink(missing_ok=True)
            continue
        with atomic.replacing(run_dir / name, "wb") as f:
            fig.savefig(f, format="png", dpi=DPI)
        plt.close(fig)
        names.append(name)
    return names


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def threshold_label(selection: dict) -> str | None:
    """The keep rule's threshold on the gap axis in words, or None where the rule sets none there."""
    if selection.get("gap_threshold") is None:
        return None
    return f"τ = {selection['tau']:g} (PPL ratio): gap = ln {selection['tau']:g} = {selection['gap_threshold']:.3f}"


def gaps_by_round(plt, pairs: list[dict], selection: dict):
    """One small panel per round (a shared gap axis, each its own count axis): kept and rejected stacked, so a small
    round is never hidden behind a large one, and the threshold as a dashed line through every panel."""
    if not pairs:
        return None
    from matplotlib.ticker import MaxNLocator

    rounds = sorted({p["round"] for p in pairs})
    threshold = selection.get("gap_threshold")
    every = [p["gap"] for p in pairs] + ([threshold] if threshold is not None else [])
    lo, hi = min(every), max(every)
    pad = 0.05 * (hi - lo) if hi > lo else 0.5
    bins = np.linspace(lo - pad, hi + pad, 31)
    fig, axes = plt.subplots(
        len(rounds), 1, figsize=(7.5, 1.5 + 1.25 * len(rounds)), sharex=True, squeeze=False, layout="constrained"
    )
    for ax, round_ in zip(axes[:, 0], rounds, strict=True):
        mine = [p for p in pairs if p["round"] == round_]
        groups = [
            ("kept", KEPT, [p["gap"] for p in mine if p["kept"]]),
            ("rejected", REJECTED, [p["gap"] for p in mine if p["kept"] == 0]),
            ("not selected yet", PENDING, [p["gap"] for p in mine if p["kept"] is None]),
        ]
        groups = [g for g in groups if g[2]] or groups[:1]
        ax.hist(
            [g[2] for g in groups], bins=bins, stacked=True, color=[g[1] for g in groups], label=[g[0] for g in groups]
        )
        if threshold is not None:
            ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2)
        counts = ", ".join(f"{len(g[2])} {g[0]}" for g in groups if g[2])
        seeds = " (the seed prompts)" if all(p["source"] == "seed" for p in mine) else ""
        ax.set_title(f"round {round_}{seeds}: {len(mine)} scored; {counts}", loc="left", fontsize=9)
        ax.set_ylabel("pairs")
        ax.yaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    if threshold is not None:
        axes[0, 0].annotate(
            f"τ = {selection['tau']:g}",
            (threshold, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -11),
            textcoords="offset points",
            fontsize=8,
        )
    _gap_legend(fig, selection, pairs)
    unit = selection.get("unit") or "token"
    need = "; a pair is kept only at gap ≥ ln τ" if threshold is not None else ""
    axes[-1, 0].set_xlabel(f"gap = ln PPL_base − ln PPL_teacher (nats per {unit}){need}")
    fig.suptitle(f"Gap of each scored pair by round, keep rule {selection['rule']}", fontsize=11)
    return fig


def _gap_legend(fig, selection: dict, pairs: list[dict]) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(color=KEPT, label="kept"), Patch(color=REJECTED, label="rejected")]
    if any(p["kept"] is None for p in pairs):
        handles.append(Patch(color=PENDING, label="not selected yet"))
    label = threshold_label(selection)
    if label is not None:
        handles.append(Line2D([], [], color="black", linestyle="--", label=label))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)


def funnel(plt, rounds: list[dict]):
    """Per round: the prompts written, those left after duplicates, empty and drifted ones, those scored, those kept."""
    if not rounds:
        return None
    stages = [
        ("candidates", "#b0c4de", lambda r: r["candidates"]),
        ("new (not duplicate, empty or drifted)", "#6f93c4", lambda r: r["new"]),
        ("scored", "#3b5b92", lambda r: r["scored"]),
        ("kept", KEPT, lambda r: r["kept"] or 0),
    ]
    fig, ax = plt.subplots(figsize=(7.5, 3.8), layout="constrained")
    x = np.arange(len(rounds))
    width = 0.8 / len(stages)
    for k, (label, colour, value) in enumerate(stages):
        bars = ax.bar(x + (k - 1.5) * width, [value(r) for r in rounds], width, color=colour, label=label)
        if len(rounds) <= 8:
            ax.bar_label(bars, fontsize=7, padding=1)
    ax.set_xticks(x, [f"round {r['round']}" for r in rounds])
    ax.set_ylabel("prompts")
    ax.margins(y=0.12)
    ax.set_title("Per round: candidates → new → scored → kept", fontsize=11)
    fig.legend(loc="outside lower center", ncols=len(stages), fontsize=8, frameon=False)
    return fig


def evaluation_bars(plt, rows: list[dict]):
    """Contains and exact match of each model on the held-out items, the chance row as a dashed line."""
    models = [r for r in rows if r["name"] in MODEL_COLOURS]
    if not models:
        return None
    chance = next((r for r in rows if r["name"] == "chance"), None)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8), sharey=True, layout="constrained")
    panels = (
        ("contains", "contains: the reference anywhere in the reply"),
        ("exact_match", "exact match: the reply's first line"),
    )
    names = [r["name"].replace(" ", "\n") for r in models]
    for ax, (metric, title) in zip(axes, panels, strict=True):
        bars = ax.bar(names, [r[metric] for r in models], color=[MODEL_COLOURS[r["name"]] for r in models])
        ax.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
        if chance is not None:
            ax.axhline(
                chance[metric], color="black", linestyle="--", linewidth=1.2, label=f"chance {chance[metric]:.3f}"
            )
            ax.legend(loc="upper right", fontsize=8, frameon=False)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 1.08)
    axes[0].set_ylabel(f"share of the {models[0]['n']} held-out items")
    fig.suptitle("Evaluation per model (greedy decoding); dashed: chance", fontsize=11)
    return fig


def loss_by_epoch(plt, train: dict | None):
    """Training loss at every step and validation loss at each epoch's end, against epochs."""
    curve = (train or {}).get("curve") or []
    if not curve:
        return None
    per_step = next((p["epoch"] / p["step"] for p in curve if p.get("epoch")), None)
    x_of = (lambda step: step * per_step) if per_step else (lambda step: step)
    fig, ax = plt.subplots(figsize=(7.5, 3.8), layout="constrained")
    last = curve[-1]["loss"]
    ax.plot(
        [x_of(p["step"]) for p in curve],
        [p["loss"] for p in curve],
        linewidth=1,
        label=f"train, each step (last {last:.3f})",
    )
    val = [p for p in curve if p.get("val_loss") is not None]
    if val:
        ax.plot(
            [x_of(p["step"]) for p in val],
            [p["val_loss"] for p in val],
            "o-",
            label=f"validation, each epoch's end (last {val[-1]['val_loss']:.3f})",
        )
    if train.get("best_step"):
        ax.axvline(x_of(train["best_step"]), color="grey", linestyle=":", label="weights kept (best validation)")
    ax.set_xlabel("epoch" if per_step else "optimiser step")
    if per_step:
        ax.set_xticks(range(0, math.ceil(x_of(curve[-1]["step"])) + 1))
    ax.set_ylabel("loss (nats per answer token)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Training: {train['n_train']} pairs, {train['n_val']} held out for validation", fontsize=11)
    ax.legend(fontsize=8, frameon=False)
    return fig

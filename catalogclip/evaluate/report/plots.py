"""PNG plots of a report (matplotlib, headless): gate weights per entity group, R@K curves."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from catalogclip.evaluate.report.collect import Entry, protocols_of
from catalogclip.io import atomic_path

#: R@K curves are drawn for these tasks' protocols (category queries have too many positives)
_NO_CURVES = ("category",)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def gates_plot(entries: Sequence[Entry], path: Path) -> Path | None:
    """Mean gate value per entity group, one bar per EI-CLIP run (None when no run has gates)."""
    with_gates = [e for e in entries if e.gates]
    if not with_gates:
        return None
    plt = _pyplot()
    groups = list(dict.fromkeys(g for e in with_gates for g in e.gates))
    x = np.arange(len(groups))
    width = 0.8 / len(with_gates)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(groups) + 2), 3.2))
    for i, entry in enumerate(with_gates):
        values = [entry.gates.get(g, np.nan) for g in groups]
        ax.bar(x + (i - (len(with_gates) - 1) / 2) * width, values, width, label=entry.label)
    ax.set_xticks(x, groups)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean gate value")
    ax.set_title("Entity gates per group (CE-Selector)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def curve_plots(entries: Sequence[Entry], folder: Path) -> dict[str, Path]:
    """One figure per protocol: R@K against K for each task, one line per entry."""
    plt = _pyplot()
    out = {}
    for protocol in protocols_of(entries):
        if protocol in _NO_CURVES:
            continue
        tasks = list(dict.fromkeys(
            t for e in entries for t, v in e.results.get(protocol, {}).get("tasks", {}).items() if "curve" in v
        ))
        if not tasks:
            continue
        fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.2), squeeze=False)
        for ax, task in zip(axes[0], tasks):
            for entry in entries:
                curve = entry.results.get(protocol, {}).get("tasks", {}).get(task, {}).get("curve")
                if curve:
                    ax.plot(curve["k"], 100 * np.asarray(curve["R@K"]), label=entry.label)
            ax.set_xscale("log")
            ax.set_xlabel("K")
            ax.set_ylabel("R@K (%)")
            ax.set_ylim(0, 102)  # headroom: a curve at 100% stays visible
            ax.set_title(f"{protocol}: {task}")
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=8)
        out[protocol] = _save(fig, folder / f"curves-{protocol}.png")
    return out

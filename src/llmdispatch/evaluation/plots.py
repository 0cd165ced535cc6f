"""One cost/quality plot per data set: single models, zero-router hull, oracle, each policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmdispatch.evaluation.bench import DatasetResult
from llmdispatch.evaluation.metrics import frontier

_FAMILY_STYLE = {
    "router": ("-", "o"),
    "cascade": ("--", "s"),
    "composition": ("-.", "D"),
    "bandit": (":", "^"),
    "reference": ("-", "x"),
}


def plot_dataset(d: DatasetResult, path: Path, *, max_policies: int = 14) -> Path:
    """Cost (log axis) against quality; policies drawn as their frontiers, best AIQ first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 6.5), dpi=110)
    refs = d.refs
    valid = refs.valid
    ax.scatter(refs.cost[valid], refs.quality[valid], c="black", s=30, zorder=5, label="models")
    for j in np.flatnonzero(valid):
        ax.annotate(
            d.models[j].split("/")[-1][:22],
            (refs.cost[j], refs.quality[j]),
            fontsize=7,
            xytext=(4, -9),
            textcoords="offset points",
            color="0.25",
        )
    zero = refs.zero_hull()
    xmax = refs.c_max * 1.6
    ax.plot(
        [*zero.cost, xmax],
        [*zero.quality, zero.quality[-1]],
        color="0.5",
        lw=2.2,
        alpha=0.7,
        label="zero router (hull of models)",
    )
    policies = [r for r in d.policies if r.run is not None and r.name != "zero-router"]
    oracle = next((r for r in policies if r.name == "oracle"), None)
    others = sorted(
        (r for r in policies if r.name not in ("oracle", "random")),
        key=lambda r: -r.metrics.get("aiq", 0.0),
    )[:max_policies]
    # Distinct hues first (tab10), then the paler tab20 shades when there are more curves.
    tab10, tab20 = plt.get_cmap("tab10"), plt.get_cmap("tab20")
    palette = [tab10(i) for i in range(10)] + [tab20(i) for i in range(1, 20, 2)]
    colors = palette[: max(len(others), 1)]
    for color, r in zip(colors, others, strict=False):
        assert r.run is not None
        hull = frontier(r.run.mean_cost, r.run.mean_quality, refs)
        style, marker = _FAMILY_STYLE.get(r.family, ("-", "o"))
        ax.plot(
            [*hull.cost, xmax],
            [*hull.quality, hull.quality[-1]],
            style,
            color=color,
            lw=1.5,
            label=f"{r.name} (AIQ {r.metrics.get('aiq', float('nan')):.3f})",
        )
        ax.scatter(r.run.mean_cost, r.run.mean_quality, color=color, s=8, marker=marker, alpha=0.6)
    if oracle is not None and oracle.run is not None:
        ax.scatter(
            oracle.run.mean_cost[0],
            oracle.run.mean_quality[0],
            marker="*",
            s=220,
            c="gold",
            edgecolors="black",
            zorder=6,
            label="oracle",
        )
    lo = min(refs.c_min, *(r.run.mean_cost.min() for r in others if r.run is not None))
    ax.set_xscale("log")
    ax.set_xlim(max(lo * 0.6, 1e-9), xmax)
    ax.set_xlabel("mean cost per query (USD, log scale)")
    ax.set_ylabel("mean quality")
    ax.set_title(f"{d.name}: test split, {d.prompts['test']} prompts")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

"""Online learners replayed over every shared data set: reward, regret, drift (issue 6).

    .venv/bin/python benchmarks/bench_online.py [DATA ...] [--seeds 5] [--lam 0.1] [--out results]

For each data set: the test split streams in random orders (one per seed) through LinUCB,
linear Thompson sampling and ε-greedy, cold and warm-started from the offline kNN router
trained on the train split. Where the data carries several benchmark labels, a *shift*
scenario trains on half of the labels and streams the others. A *drift* scenario makes the
model the offline router uses most answer like the weakest model from mid-stream on, and
measures how many requests each learner (stationary vs discounted) takes to move away.

Writes ``OUT/online/<data>.png`` (cumulative regret and reward gain vs the offline router,
mean ± sd over seeds), ``OUT/online/online.json`` and ``OUT/online/online.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from rich.console import Console
from rich.table import Table

from llmdispatch.data.locate import available_datasets, load_table
from llmdispatch.data.splits import train_test
from llmdispatch.data.table import OutcomeTable
from llmdispatch.evaluation.online import OnlineRun, simulate
from llmdispatch.policies.bandit import BanditRouter

ALGORITHMS = ("linucb", "thompson", "epsilon-greedy")
console = Console()


def scenarios(table: OutcomeTable) -> dict[str, tuple[OutcomeTable, OutcomeTable]]:
    """``same``: train split → test stream; ``shift``: half the benchmarks → the others."""
    train, test = train_test(table)
    out = {"same": (train, test)}
    labels = sorted(set(table.datasets.tolist()))
    if len(labels) >= 2:
        first, second = labels[::2], labels[1::2]
        out["shift"] = (train.only_datasets(first), test.only_datasets(second))
    return out


def run_scenario(
    train: OutcomeTable, stream: OutcomeTable, lam: float, seeds: list[int]
) -> list[OnlineRun]:
    """Every learner, cold and warm, on one stream; the offline router is the kNN prior."""
    warm_ref = BanditRouter(warm_start="knn").fit(train)
    offline = warm_ref.priors(stream.full_prompts(), lam)
    runs = []
    for warm in (None, "knn"):
        for algorithm in ALGORITHMS:
            policy = warm_ref if (warm and algorithm == "linucb") else None
            if policy is None:
                policy = BanditRouter(algorithm=algorithm, warm_start=warm).fit(train)
            label = f"{algorithm}{'-warm' if warm else '-cold'}"
            runs.append(simulate(policy, stream, lam, seeds, label=label, offline_prior=offline))
    return runs


def run_drift(
    train: OutcomeTable, stream: OutcomeTable, lam: float, seeds: list[int]
) -> tuple[list[OnlineRun], str]:
    """The offline router's favourite model degrades to the weakest model's answers."""
    base = BanditRouter(warm_start="knn").fit(train)
    prior = base.priors(stream.full_prompts(), lam)
    favourite = stream.models[int(np.bincount(prior.argmax(axis=1)).argmax())]
    weakest = stream.models[int(np.nanargmin(train.mean_score()))]
    if favourite == weakest:
        return [], ""
    runs = []
    for gamma in (1.0, 0.99):
        policy = BanditRouter(warm_start="knn", gamma=gamma).fit(train)
        label = f"linucb-warm γ={gamma}"
        runs.append(simulate(policy, stream, lam, seeds, label=label, drift=(favourite, weakest)))
    return runs, f"{favourite} answers like {weakest} from mid-stream on"


def plot(name: str, runs: list[OnlineRun], path: Path) -> None:
    """Cumulative regret vs the best fixed model, and cumulative gain vs the offline router."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in runs:
        steps = np.arange(1, run.steps + 1)
        regret = run.regret_vs_fixed()
        mu, sd = regret.mean(axis=0), regret.std(axis=0)
        (line,) = ax1.plot(steps, mu, label=run.label, lw=1.5)
        ax1.fill_between(steps, mu - sd, mu + sd, color=line.get_color(), alpha=0.15)
        gain = -run.regret_vs_offline()
        g_mu, g_sd = gain.mean(axis=0), gain.std(axis=0)
        ax2.plot(steps, g_mu, lw=1.5, color=line.get_color())
        ax2.fill_between(steps, g_mu - g_sd, g_mu + g_sd, color=line.get_color(), alpha=0.12)
    ax1.axhline(0, color="grey", lw=0.8)
    ax2.axhline(0, color="grey", lw=0.8)
    ax1.set(xlabel="requests", ylabel="cumulative regret vs best fixed model")
    ax2.set(xlabel="requests", ylabel="cumulative reward gain vs offline router")
    ax1.set_title(f"{name}: regret (mean ± sd over seeds)")
    ax2.set_title(f"{name}: learner − offline kNN router")
    ax1.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def row(run: OnlineRun) -> dict[str, Any]:
    """The table row of one run (means over seeds, sd where it matters)."""
    s = run.summary()
    return {"learner": run.label, "best_fixed": run.best_fixed_model, **s}


def markdown(results: dict[str, Any], command: str) -> str:
    """The report's Markdown: one table per data set and scenario, then the drift table."""
    lines = [f"Produced by `{command}`.", ""]
    lines += [
        "Reward r = quality − λ·cost/c_scale (c_scale: the largest per-model mean training cost);"
        " means over seeds ± sd of the per-seed mean. *Gain* is the learner's mean reward minus"
        " the offline kNN router's on the same stream (first and last quarter of the stream);"
        " *regret* is cumulative, against the best fixed model in hindsight.",
        "",
    ]
    for name, res in results.items():
        for scen, rows in res["scenarios"].items():
            lines += [
                f"#### {name} — {scen} (stream of {res['n_stream'][scen]}, λ = {res['lam']})",
                "",
                "| learner | mean reward | quality | cost/query | gain Q1 | gain Q4 "
                "| regret vs best fixed |",
                "| --- | --- | --- | --- | --- | --- | --- |",
            ]
            for r in rows:
                lines.append(
                    f"| {r['learner']} | {r['mean_reward']:.4f} ± {r['mean_reward_sd']:.4f} "
                    f"| {r['mean_quality']:.4f} | {r['mean_cost']:.2e} "
                    f"| {r['first_quarter_gain_vs_offline']:+.4f} "
                    f"| {r['last_quarter_gain_vs_offline']:+.4f} "
                    f"| {r['final_regret_vs_fixed']:.1f} ± {r['final_regret_vs_fixed_sd']:.1f} |"
                )
            ref = rows[0]
            lines += [
                f"| offline kNN router | {ref['offline_mean_reward']:.4f} "
                f"| {ref['offline_mean_quality']:.4f} | {ref['offline_mean_cost']:.2e} | | | |",
                f"| best fixed ({ref['best_fixed']}) | {ref['fixed_mean_reward']:.4f} | | | | | |",
                f"| oracle | {ref['oracle_mean_reward']:.4f} | | | | | |",
                "",
                f"![{name} {scen}](online/{name}-{scen}.png)",
                "",
            ]
        if res.get("drift"):
            lines += [
                f"#### {name} — drift: {res['drift_desc']}",
                "",
                "| learner | requests until its share halves (median over seeds) "
                "| seeds that moved | mean reward |",
                "| --- | --- | --- | --- |",
            ]
            for r in res["drift"]:
                lines.append(
                    f"| {r['learner']} | {r['drift_lag_requests']:.0f} "
                    f"| {r['drift_moved_share']:.0%} | {r['mean_reward']:.4f} |"
                )
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the online benchmark; print tables; write PNG, JSON and Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="*", help="data sets (default: every shared one)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--lam", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    names = args.data or list(available_datasets())
    out = args.out / "online"
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.seeds))
    results: dict[str, Any] = {}
    for name in names:
        t0 = time.perf_counter()
        table = load_table(name)
        res: dict[str, Any] = {"lam": args.lam, "scenarios": {}, "n_stream": {}}
        for scen, (train, stream) in scenarios(table).items():
            runs = run_scenario(train, stream, args.lam, seeds)
            plot(f"{name} ({scen})", runs, out / f"{name}-{scen}.png")
            res["scenarios"][scen] = [row(r) for r in runs]
            res["n_stream"][scen] = stream.n_prompts
            show(f"{name} — {scen}", res["scenarios"][scen])
        train, stream = train_test(table)
        drift, desc = run_drift(train, stream, args.lam, seeds)
        if drift:
            res["drift"] = [row(r) for r in drift]
            res["drift_desc"] = desc
        res["seconds"] = time.perf_counter() - t0
        results[name] = res
    command = "python benchmarks/bench_online.py " + " ".join(argv or names)
    (out / "online.json").write_text(json.dumps(results, indent=1, default=float))
    (out / "online.md").write_text(markdown(results, command))
    console.print(f"wrote {out}/online.md, online.json and one PNG per data set and scenario")
    return 0


def show(title: str, rows: list[dict[str, Any]]) -> None:
    """Print one scenario's table."""
    table = Table(title=title)
    for col in ("learner", "reward", "quality", "gain Q1", "gain Q4", "regret vs fixed"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["learner"],
            f"{r['mean_reward']:.4f}±{r['mean_reward_sd']:.4f}",
            f"{r['mean_quality']:.4f}",
            f"{r['first_quarter_gain_vs_offline']:+.4f}",
            f"{r['last_quarter_gain_vs_offline']:+.4f}",
            f"{r['final_regret_vs_fixed']:.1f}",
        )
    table.caption = (
        f"offline router {rows[0]['offline_mean_reward']:.4f} · best fixed "
        f"{rows[0]['best_fixed']} {rows[0]['fixed_mean_reward']:.4f} · oracle "
        f"{rows[0]['oracle_mean_reward']:.4f}"
    )
    console.print(table)


if __name__ == "__main__":
    raise SystemExit(main())

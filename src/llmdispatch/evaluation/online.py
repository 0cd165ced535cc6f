"""Offline evaluation of online learners by exact replay of an outcome table.

An outcome table holds every model's result on every prompt, so a bandit can be simulated
without bias (the "replay" method of Li, Chu, Langford & Wang, WSDM 2011, which here needs
no rejection step because every arm's reward is logged): the prompts of a stream arrive in a
random order (one order per seed), the learner picks a model, and only that model's score
and cost are revealed to it.

Reported per step ``t`` (means and spread over seeds):

* cumulative reward ``Σ r_s`` with ``r = q − λ·c/c_scale`` (the learner's own objective);
* regret against the best fixed model in hindsight, ``max_a Σ r_a(s) − Σ r_chosen(s)``
  (the best single model for this stream, chosen knowing every reward);
* regret against the offline router, i.e. the same learner's warm-start prior used greedily
  with no learning (argmax of ``Q − λ·Ĉ/c_scale``), trained on the training split only;
* the oracle's cumulative reward (per prompt, the best reward of any model) as the ceiling.

A drift scenario replaces a model's scores in the second half of the stream by those of a
weak model, and measures how many requests the learner takes to move its traffic away.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from llmdispatch.data.table import OutcomeTable
from llmdispatch.policies.bandit import BanditRouter
from llmdispatch.types import FloatMatrix, FloatVector


@dataclass(frozen=True)
class OnlineRun:
    """One learner streamed over a table with several seeds.

    Arrays are ``(seeds, steps)``: per-step reward, quality and cost of the learner, of the
    offline router (no learning), of the best fixed model in hindsight and of the oracle.
    ``chosen`` holds the model index per step.
    """

    label: str
    models: tuple[str, ...]
    lam: float
    reward: FloatMatrix
    quality: FloatMatrix
    cost: FloatMatrix
    chosen: npt.NDArray[np.intp]
    offline_reward: FloatMatrix
    offline_quality: FloatMatrix
    offline_cost: FloatMatrix
    fixed_reward: FloatMatrix
    oracle_reward: FloatMatrix
    best_fixed_model: str
    drift: dict[str, float] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        """Length of the stream."""
        return int(self.reward.shape[1])

    def cumulative(self, which: str = "reward") -> FloatMatrix:
        """Cumulative sum over steps of ``reward``, ``offline_reward``, ``fixed_reward``…"""
        return np.asarray(np.cumsum(getattr(self, which), axis=1), dtype=np.float64)

    def regret_vs_fixed(self) -> FloatMatrix:
        """Cumulative regret against the best fixed model in hindsight, per seed and step."""
        return self.cumulative("fixed_reward") - self.cumulative("reward")

    def regret_vs_offline(self) -> FloatMatrix:
        """Cumulative reward the learner lost (negative: gained) against the offline router."""
        return self.cumulative("offline_reward") - self.cumulative("reward")

    def summary(self) -> dict[str, float]:
        """Means over seeds (and standard deviations) of the stream's end figures."""
        out = {
            "mean_reward": float(self.reward.mean()),
            "mean_reward_sd": float(self.reward.mean(axis=1).std()),
            "mean_quality": float(self.quality.mean()),
            "mean_quality_sd": float(self.quality.mean(axis=1).std()),
            "mean_cost": float(self.cost.mean()),
            "offline_mean_reward": float(self.offline_reward.mean()),
            "offline_mean_quality": float(self.offline_quality.mean()),
            "offline_mean_cost": float(self.offline_cost.mean()),
            "fixed_mean_reward": float(self.fixed_reward.mean()),
            "oracle_mean_reward": float(self.oracle_reward.mean()),
            "final_regret_vs_fixed": float(self.regret_vs_fixed()[:, -1].mean()),
            "final_regret_vs_fixed_sd": float(self.regret_vs_fixed()[:, -1].std()),
            "final_gain_vs_offline": float(-self.regret_vs_offline()[:, -1].mean()),
            "final_gain_vs_offline_sd": float(self.regret_vs_offline()[:, -1].std()),
            "first_quarter_gain_vs_offline": float(
                (self.reward - self.offline_reward)[:, : max(self.steps // 4, 1)].mean()
            ),
            "last_quarter_gain_vs_offline": float(
                (self.reward - self.offline_reward)[:, -max(self.steps // 4, 1) :].mean()
            ),
        }
        out.update(self.drift)
        return out


def reward_matrix(policy: BanditRouter, table: OutcomeTable, lam: float) -> FloatMatrix:
    """Every model's reward on every prompt (``-inf`` where the outcome is unknown)."""
    cost = np.where(np.isnan(table.cost), 0.0, table.cost)
    r = table.score - lam * cost / policy.cost_scale_
    return np.asarray(np.where(table.known, r, -np.inf), dtype=np.float64)


def simulate(
    policy: BanditRouter,
    stream: OutcomeTable,
    lam: float,
    seeds: Sequence[int] = (0, 1, 2),
    label: str | None = None,
    drift: tuple[str, str] | None = None,
    offline_prior: FloatMatrix | None = None,
) -> OnlineRun:
    """Stream ``stream`` through a fitted ``policy``'s learner, once per seed.

    ``drift=(model, like)``: from the middle of each stream on, ``model``'s scores are
    replaced by ``like``'s (the model got worse); the run then records how many requests
    after the change the learner took to send ``model`` at most half its pre-change share.
    ``offline_prior`` is the offline router's reward estimate per prompt and model (its
    argmax is the reference decision); by default the policy's own warm-start prior.
    """
    policy._check_fitted()
    texts = stream.full_prompts()
    X = policy.contexts(texts)
    prior = policy.priors(texts, lam)
    n = stream.n_prompts
    shape = (len(seeds), n)
    reward, quality, cost = np.empty(shape), np.empty(shape), np.empty(shape)
    chosen = np.empty(shape, dtype=np.intp)
    off_r, off_q, off_c = np.empty(shape), np.empty(shape), np.empty(shape)
    fixed_r, oracle_r = np.empty(shape), np.empty(shape)
    lags: list[float] = []
    best_fixed = ""
    for s, seed in enumerate(seeds):
        order = np.random.default_rng(seed).permutation(n)
        table = stream
        if drift is not None:
            table = _drifted(stream, order, *drift)
        R = reward_matrix(policy, table, lam)
        learner_policy = _reseeded(policy, seed)
        picks = learner_policy.stream(table, X, prior, table.known, order, lam)
        steps = order
        rows = np.arange(n)
        chosen[s] = picks[steps]
        reward[s] = R[steps, picks[steps]]
        quality[s] = table.score[steps, picks[steps]]
        cost[s] = np.nan_to_num(table.cost[steps, picks[steps]])
        ref = prior if offline_prior is None else offline_prior
        offline = np.argmax(np.where(table.known, ref, -np.inf), axis=1)
        off_r[s] = R[steps, offline[steps]]
        off_q[s] = table.score[steps, offline[steps]]
        off_c[s] = np.nan_to_num(table.cost[steps, offline[steps]])
        finite = np.where(np.isfinite(R), R, 0.0)
        best = int(np.argmax(finite.sum(axis=0)))
        best_fixed = stream.models[best]
        fixed_r[s] = finite[steps, best]
        oracle_r[s] = R[rows, :].max(axis=1)[steps]
        if drift is not None:
            lags.append(_switch_lag(chosen[s], stream.model_index(drift[0])))
    drift_stats: dict[str, float] = {}
    if drift is not None:
        finite_lags = [v for v in lags if np.isfinite(v)]
        drift_stats = {
            "drift_lag_requests": float(np.median(lags)) if lags else float("nan"),
            "drift_moved_share": len(finite_lags) / max(len(lags), 1),
        }
    return OnlineRun(
        label=label or f"{policy.algorithm}{'-warm' if policy.warm_start else ''}",
        models=stream.models,
        lam=lam,
        reward=reward,
        quality=quality,
        cost=cost,
        chosen=chosen,
        offline_reward=off_r,
        offline_quality=off_q,
        offline_cost=off_c,
        fixed_reward=fixed_r,
        oracle_reward=oracle_r,
        best_fixed_model=best_fixed,
        drift=drift_stats,
    )


def _reseeded(policy: BanditRouter, seed: int) -> BanditRouter:
    clone = BanditRouter.__new__(BanditRouter)
    clone.__dict__.update(policy.__dict__)
    clone.seed = seed
    return clone


def _drifted(table: OutcomeTable, order: np.ndarray, model: str, like: str) -> OutcomeTable:
    """``model`` answers like ``like`` on the second half of ``order``."""
    j, k = table.model_index(model), table.model_index(like)
    late = order[len(order) // 2 :]
    score = table.score.copy()
    score[late, j] = table.score[late, k]
    return replace(table, score=score)


def _switch_lag(chosen: npt.NDArray[np.intp], model: int, window: int = 100) -> float:
    """Requests after mid-stream until ``model``'s windowed share is half its earlier share."""
    n = len(chosen)
    half = n // 2
    before = float((chosen[:half] == model).mean())
    if before == 0.0:
        return 0.0
    hits = (chosen[half:] == model).astype(float)
    if len(hits) < window:
        return float("nan")
    share = np.convolve(hits, np.ones(window) / window, mode="valid")
    below = np.flatnonzero(share <= before / 2)
    return float(below[0] + window) if len(below) else float("inf")


def mean_curve(values: FloatMatrix) -> tuple[FloatVector, FloatVector]:
    """Mean and standard deviation over seeds, per step."""
    return np.asarray(values.mean(axis=0)), np.asarray(values.std(axis=0))

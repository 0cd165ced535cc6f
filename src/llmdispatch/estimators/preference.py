"""Preference estimators: Bradley–Terry strengths, global and similarity-weighted (RouteLLM).

Both turn pairwise games (:mod:`llmdispatch.estimators.pairwise`) into a strength per model,
then into an expected quality in two documented steps:

1. ``p_m = P(m beats an opponent drawn uniformly from the other models)`` under the fitted
   strengths (:func:`~llmdispatch.estimators.ratings.win_prob_vs_field`);
2. a Platt map ``Q = σ(a · logit(p) + b)`` (``a > 0``, one map shared by every model) fitted
   by cross-entropy against the known training scores, so ``Q`` is on the table's score scale
   and keeps the strength order. For local estimators the map is fitted on *leave-one-out*
   strengths of the training prompts (each prompt's own games excluded), so it is calibrated
   for unseen queries, not for memorised ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Self

import numpy as np
from scipy.optimize import minimize

from llmdispatch.data.table import OutcomeTable
from llmdispatch.estimators._common import (
    as_dense,
    check_features,
    check_n_features,
    features_from_state,
    features_state,
    l2_normalize,
    validation_rows,
)
from llmdispatch.estimators.base import QualityEstimator, clip_quality
from llmdispatch.estimators.pairwise import (
    PairwiseData,
    Source,
    Ties,
    Weighting,
    pair_accuracy,
    pairwise_from_table,
)
from llmdispatch.estimators.ratings import bt_batch, bt_global, win_prob_vs_field
from llmdispatch.registry import register
from llmdispatch.types import Features, FloatMatrix, FloatVector

_EPS = 1e-6
_BLOCK = 512


# ---- shared pieces -------------------------------------------------------------------------
def fit_platt(p: FloatMatrix, score: FloatMatrix) -> tuple[float, float]:
    """``(a, b)`` of ``Q = σ(a·logit(p) + b)`` by soft cross-entropy over known scores."""
    known = ~np.isnan(score)
    x = _logit(p[known])
    y = score[known]

    def objective(ab: FloatVector) -> tuple[float, FloatVector]:
        z = ab[0] * x + ab[1]
        r = 0.5 * (1.0 + np.tanh(0.5 * z)) - y
        loss = float(np.sum(np.logaddexp(0.0, z) - y * z))
        return loss, np.array([r @ x, r.sum()])

    start = np.array([1.0, 0.0])
    bounds = [(1e-3, None), (None, None)]
    res = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds)
    return float(res.x[0]), float(res.x[1])


def apply_platt(p: FloatMatrix, a: float, b: float) -> FloatMatrix:
    """Expected quality from win probabilities."""
    z = a * _logit(p) + b
    return clip_quality(0.5 * (1.0 + np.tanh(0.5 * z)))


def _logit(p: FloatMatrix) -> FloatMatrix:
    q = np.clip(p, _EPS, 1.0 - _EPS)
    return np.asarray(np.log(q) - np.log1p(-q), dtype=np.float64)


def similarity_blocks(
    Xq: Features, Xtr: Features, *, exclude_self: bool = False
) -> Iterator[tuple[slice, FloatMatrix]]:
    """Cosine similarities of query rows to training rows, in row blocks.

    Both inputs must be L2-normalised. With ``exclude_self`` (``Xq is Xtr``) each row's
    similarity to itself is ``-inf``, for leave-one-out estimates on training prompts.
    """
    for start in range(0, Xq.shape[0], _BLOCK):
        sl = slice(start, min(start + _BLOCK, Xq.shape[0]))
        block = Xq[sl] @ Xtr.T
        S = np.asarray(as_dense(block), dtype=np.float64)
        if exclude_self:
            rows = np.arange(S.shape[0])
            S[rows, rows + start] = -np.inf
        yield sl, S


class PairwiseEstimatorBase(QualityEstimator):
    """Shared parameters and state of the preference estimators.

    ``source``, ``reference``, ``ties`` and ``weighting`` choose how games are derived from the
    table (:func:`~llmdispatch.estimators.pairwise.pairwise_from_table`); ``l2`` is the
    Bradley–Terry ridge (a Gaussian prior on strengths, on the scale of summed game weights).
    """

    def __init__(
        self,
        *,
        source: Source = "auto",
        reference: str | None = None,
        ties: Ties = "half",
        weighting: Weighting = "unit",
        l2: float = 1.0,
        validation_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        self.source = source
        self.reference = reference
        self.ties = ties
        self.weighting = weighting
        self.l2 = l2
        self.validation_fraction = validation_fraction
        self.seed = seed

    def _base_params(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "reference": self.reference,
            "ties": self.ties,
            "weighting": self.weighting,
            "l2": self.l2,
            "validation_fraction": self.validation_fraction,
            "seed": self.seed,
        }

    def _games(self, table: OutcomeTable) -> PairwiseData:
        if not (isinstance(self.l2, int | float) and self.l2 > 0):
            raise ValueError(f"l2 must be a number > 0, got {self.l2!r}")
        return pairwise_from_table(
            table,
            source=self.source,
            reference=self.reference,
            ties=self.ties,
            weighting=self.weighting,
        )


# ---- global Bradley–Terry ----------------------------------------------------------------------
@register("estimator", "bradley-terry")
class BradleyTerryEstimator(PairwiseEstimatorBase):
    """Global Bradley–Terry: one strength per model from every training game.

    References
    ----------
    Bradley & Terry, "Rank analysis of incomplete block designs", Biometrika 1952; the
    Chatbot Arena leaderboard's BT fit (Chiang et al., arXiv:2403.04132).

    ``θ = argmin Σ_p [n_p softplus(θ_a − θ_b) − w_p (θ_a − θ_b)] + (l2/2)‖θ‖²`` over the summed
    games; ``Q[x, m] = σ(a·logit p_m + b)`` for every query ``x`` (see the module docstring).
    Adapted: games come from score comparisons or a preference reference; the strengths are
    mapped to expected quality. It ignores the query, so it is the no-information preference
    baseline that the local estimators must beat.
    """

    def fit(self, table: OutcomeTable, X: Features) -> Self:
        """Fit strengths on all games, then the quality map."""
        check_features(X, table.n_prompts)
        data = self._games(table)
        theta = bt_global(
            data.wins.sum(axis=0),
            data.totals.sum(axis=0),
            data.first,
            data.second,
            data.n_models,
            float(self.l2),
        )
        p = win_prob_vs_field(theta[None, :])
        self.theta_ = theta
        self.platt_ = fit_platt(np.repeat(p, table.n_prompts, axis=0), table.score)
        self.quality_ = apply_platt(p, *self.platt_)[0]
        self.models_ = tuple(table.models)
        return self

    def predict(self, X: Features) -> FloatMatrix:
        """The same expected quality for every query."""
        self._check_fitted()
        return np.tile(self.quality_, (X.shape[0], 1))

    def get_state(self) -> dict[str, Any]:
        """Parameters, strengths and quality map."""
        self._check_fitted()
        return {
            "params": self._base_params(),
            "models": list(self.models_),
            "theta": self.theta_,
            "platt": list(self.platt_),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild from :meth:`get_state`."""
        est = cls(**state["params"])
        est.models_ = tuple(state["models"])
        est.theta_ = np.asarray(state["theta"], dtype=np.float64)
        a, b = state["platt"]
        est.platt_ = (float(a), float(b))
        est.quality_ = apply_platt(win_prob_vs_field(est.theta_[None, :]), a, b)[0]
        return est


# ---- RouteLLM similarity-weighted ranking ----------------------------------------------------
def sw_weights(S: FloatMatrix, gamma: float, top_n: int | None) -> FloatMatrix:
    """RouteLLM's weights ``γ^(1 + S_i / S_max)`` per row, rescaled to sum to the row width.

    The constant factor is dropped by the rescaling, which makes the total game weight equal
    to the global fit's, so ``l2`` means the same in both. ``-inf`` similarities (excluded
    prompts) weigh 0; with ``top_n`` only the ``top_n`` most similar prompts count; a row
    with no positive similarity weighs every prompt alike (the global fit).
    """
    S = S.copy()
    if top_n is not None and top_n < S.shape[1]:
        kth = np.partition(S, S.shape[1] - top_n, axis=1)[:, S.shape[1] - top_n]
        S[kth[:, None] > S] = -np.inf
    finite = np.isfinite(S)
    s_max = np.max(np.where(finite, S, -np.inf), axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        expo = np.where(s_max > 0, S / s_max - 1.0, 0.0)
    w = np.where(finite, np.power(gamma, np.where(finite, expo, 0.0)), 0.0)
    total = w.sum(axis=1, keepdims=True)
    return np.asarray(w * (S.shape[1] / np.maximum(total, 1e-300)), dtype=np.float64)


@register("estimator", "sw-ranking")
class SWRankingEstimator(PairwiseEstimatorBase):
    """RouteLLM's similarity-weighted (SW) ranking: a Bradley–Terry fit per query.

    References
    ----------
    Ong et al., "RouteLLM: Learning to Route LLMs with Preference Data", arXiv:2406.18665,
    §4.1 and ``routellm/routers/routers.py`` (``SWRankingRouter``).

    For a query ``q`` with cosine similarity ``S_i`` to training prompt ``i``, every game of
    prompt ``i`` weighs ``w_i = γ^(1 + S_i / S_max)`` and
    ``θ(q) = argmin Σ_i w_i Σ_p [n_ip softplus(θ_a − θ_b) − w_ip (θ_a − θ_b)] + (l2/2)‖θ‖²``.
    ``Q[q, m] = σ(a·logit p_m(q) + b)`` as in the module docstring.

    Adapted: RouteLLM fits arena battles between two model tiers with a logistic regression
    per query and γ = 10; here all models are ranked at once, the per-query fits are batched
    (the weighted games reduce to ``W @ wins``, then damped Newton on ``(queries, models)``),
    ``gamma=None`` picks γ from ``gammas`` by held-out pairwise accuracy on a validation split
    of the training table (γ = 10 is in the grid), and ``top_n`` optionally keeps only the
    most similar prompts for speed (``None``: all, as in the paper).
    """

    def __init__(
        self,
        *,
        gamma: float | None = None,
        gammas: tuple[float, ...] = (10.0, 100.0, 1000.0, 10000.0),
        top_n: int | None = None,
        source: Source = "auto",
        reference: str | None = None,
        ties: Ties = "half",
        weighting: Weighting = "unit",
        l2: float = 1.0,
        validation_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__(
            source=source,
            reference=reference,
            ties=ties,
            weighting=weighting,
            l2=l2,
            validation_fraction=validation_fraction,
            seed=seed,
        )
        self.gamma = gamma
        self.gammas = gammas
        self.top_n = top_n

    def fit(self, table: OutcomeTable, X: Features) -> Self:
        """Choose γ on a validation split, then fit the quality map on leave-one-out fits."""
        Xn = l2_normalize(check_features(X, table.n_prompts))
        data = self._games(table)
        for g in [self.gamma] if self.gamma is not None else list(self.gammas):
            if not (isinstance(g, int | float) and g >= 1.0):
                raise ValueError(f"gamma must be a number >= 1, got {g!r}")
        if self.top_n is not None and (not isinstance(self.top_n, int) or self.top_n < 1):
            raise ValueError(f"top_n must be a positive integer or None, got {self.top_n!r}")
        if self.gamma is None:
            fit_idx, val_idx = validation_rows(table.n_prompts, self.validation_fraction, self.seed)
            val = data.rows(val_idx)
            accuracy = [
                pair_accuracy(self._strengths(Xn[val_idx], Xn[fit_idx], data.rows(fit_idx), g), val)
                for g in self.gammas
            ]
            self.validation_accuracy_ = dict(zip(map(float, self.gammas), accuracy, strict=True))
            self.gamma_ = float(self.gammas[int(np.argmax(accuracy))])
        else:
            self.gamma_ = float(self.gamma)
        loo = self._strengths(Xn, Xn, data, self.gamma_, exclude_self=True)
        self.platt_ = fit_platt(win_prob_vs_field(loo), table.score)
        self.X_, self.data_ = Xn, data
        self.models_ = tuple(table.models)
        return self

    def _strengths(
        self,
        Xq: Features,
        Xtr: Features,
        data: PairwiseData,
        gamma: float,
        exclude_self: bool = False,
    ) -> FloatMatrix:
        out = np.empty((Xq.shape[0], data.n_models))
        for sl, S in similarity_blocks(Xq, Xtr, exclude_self=exclude_self):
            w = sw_weights(S, gamma, self.top_n)
            out[sl] = bt_batch(
                w @ data.wins, w @ data.totals, data.first, data.second, data.n_models, self.l2
            )
        return out

    def predict(self, X: Features) -> FloatMatrix:
        """Per-query strengths → win probability against the field → expected quality."""
        self._check_fitted()
        Xq = check_features(X)
        check_n_features(Xq, self.X_.shape[1])
        theta = self._strengths(l2_normalize(Xq), self.X_, self.data_, self.gamma_)
        return apply_platt(win_prob_vs_field(theta), *self.platt_)

    def get_state(self) -> dict[str, Any]:
        """Parameters, chosen γ, training features and games, quality map."""
        self._check_fitted()
        params = self._base_params()
        params.update(gamma=self.gamma, gammas=list(self.gammas), top_n=self.top_n)
        return {
            "params": params,
            "models": list(self.models_),
            "gamma": self.gamma_,
            "platt": list(self.platt_),
            "features": features_state(self.X_),
            "games": self.data_.get_state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild from :meth:`get_state`."""
        params = dict(state["params"])
        params["gammas"] = tuple(params["gammas"])
        est = cls(**params)
        est.models_ = tuple(state["models"])
        est.gamma_ = float(state["gamma"])
        a, b = state["platt"]
        est.platt_ = (float(a), float(b))
        est.X_ = features_from_state(state["features"])
        est.data_ = PairwiseData.from_state(state["games"])
        return est

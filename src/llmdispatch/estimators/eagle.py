"""Eagle: global Elo over all comparisons mixed with local Elo over a query's neighbours."""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import numpy.typing as npt

from llmdispatch.data.table import OutcomeTable
from llmdispatch.estimators._common import (
    check_features,
    check_n_features,
    features_from_state,
    features_state,
    l2_normalize,
    validation_rows,
)
from llmdispatch.estimators.pairwise import PairwiseData, Source, Ties, Weighting, pair_accuracy
from llmdispatch.estimators.preference import (
    PairwiseEstimatorBase,
    apply_platt,
    fit_platt,
    similarity_blocks,
)
from llmdispatch.estimators.ratings import ELO_SCALE, elo_games, elo_global, elo_local
from llmdispatch.estimators.ratings import win_prob_vs_field as _field
from llmdispatch.registry import register
from llmdispatch.types import Features, FloatMatrix, FloatVector

Games = tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], FloatMatrix, FloatMatrix]
_ELO_UNIT = float(np.log(10.0) / ELO_SCALE)


def nearest(
    Xq: Features, Xtr: Features, n: int, exclude_self: bool = False
) -> npt.NDArray[np.intp]:
    """Indices of the ``n`` most similar training rows per query, least similar first.

    Elo weighs late games most, so the closest neighbour's games are played last.
    """
    n = min(n, Xtr.shape[0] - int(exclude_self))
    out = np.empty((Xq.shape[0], n), dtype=np.intp)
    for sl, S in similarity_blocks(Xq, Xtr, exclude_self=exclude_self):
        top = np.argpartition(-S, n - 1, axis=1)[:, :n]
        order = np.argsort(np.take_along_axis(S, top, axis=1), axis=1, kind="stable")
        out[sl] = np.take_along_axis(top, order, axis=1)
    return out


@register("estimator", "eagle")
class EagleEstimator(PairwiseEstimatorBase):
    """Eagle's global + local Elo ranking.

    References
    ----------
    Zhao, Jin & Mao, "Eagle: Efficient Training-Free Router for Multi-LLM Inference",
    arXiv:2409.15518 (NeurIPS 2024 ML-for-Systems workshop).

    Global Elo ``G`` is played over every training game; for a query, local Elo ``L(q)`` is
    played from scratch over the games of its ``N`` nearest training prompts (cosine on the
    features); the score is ``R(q) = P·G + (1 − P)·L(q)``. Elo updates are
    ``R_a += K·w·(s − E_a)`` with ``E_a = 1/(1 + 10^((R_b − R_a)/400))`` (paper: ``K = 32``).
    ``Q[q, m] = σ(a·logit p_m + b)`` with ``p_m`` the Elo win probability of ``m`` against the
    field (see :mod:`llmdispatch.estimators.preference`).

    With every model pair compared on every prompt, ``K = 32`` forgets all but the last few
    prompts (each prompt moves a rating ``M − 1`` times), so ``K`` is tuned too: by default
    ``K``, ``N`` and ``P`` are chosen from ``k_grid × neighbor_grid × mix_grid``; give
    ``k_factor=32, n_neighbors=20`` for the paper's settings.

    Adapted: games come from score comparisons or a preference reference (soft outcomes and
    weights as in :mod:`~llmdispatch.estimators.pairwise`); prompts are played in table order
    (global) and neighbours from least to most similar (local); ``N`` and ``P`` are chosen on
    a validation split of the training table by held-out pairwise accuracy (the paper uses
    N = 20 and tunes P); the ratings are mapped to expected quality.
    """

    def __init__(
        self,
        *,
        k_factor: float | None = None,
        k_grid: tuple[float, ...] = (2.0, 8.0, 32.0),
        n_neighbors: int | None = None,
        neighbor_grid: tuple[int, ...] = (5, 10, 20, 50, 100, 200),
        mix: float | None = None,
        mix_grid: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0),
        source: Source = "auto",
        reference: str | None = None,
        ties: Ties = "half",
        weighting: Weighting = "unit",
        validation_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__(
            source=source,
            reference=reference,
            ties=ties,
            weighting=weighting,
            validation_fraction=validation_fraction,
            seed=seed,
        )
        self.k_factor = k_factor
        self.k_grid = k_grid
        self.n_neighbors = n_neighbors
        self.neighbor_grid = neighbor_grid
        self.mix = mix
        self.mix_grid = mix_grid

    def _check_params(self) -> None:
        ks = [self.k_factor] if self.k_factor is not None else list(self.k_grid)
        if not ks or any(not isinstance(k, int | float) or k <= 0 for k in ks):
            raise ValueError(f"Elo K factors must be numbers > 0, got {ks!r}")
        ns = [self.n_neighbors] if self.n_neighbors is not None else list(self.neighbor_grid)
        if not ns or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in ns):
            raise ValueError(f"neighbour counts must be positive integers, got {ns!r}")
        ps = [self.mix] if self.mix is not None else list(self.mix_grid)
        if not ps or any(not isinstance(p, int | float) or not 0.0 <= p <= 1.0 for p in ps):
            raise ValueError(f"mix weights P must lie in [0, 1], got {ps!r}")

    def fit(self, table: OutcomeTable, X: Features) -> Self:
        """Global Elo, (N, P) on a validation split, then the quality map on held-out ratings."""
        self._check_params()
        Xn = l2_normalize(check_features(X, table.n_prompts))
        data = self._games(table)
        games = elo_games(data, self.seed)
        if self.n_neighbors is None or self.mix is None or self.k_factor is None:
            self._select(Xn, data, games, table.n_prompts)
        else:
            self.n_neighbors_, self.mix_ = int(self.n_neighbors), float(self.mix)
            self.k_factor_ = float(self.k_factor)
        self.global_ = elo_global(*games, data.n_models, self.k_factor_)
        nb = nearest(Xn, Xn, self.n_neighbors_, exclude_self=True)
        loo = self._mixed(self.global_, elo_local(games, nb, data.n_models, self.k_factor_))
        self.platt_ = fit_platt(_field(loo, _ELO_UNIT), table.score)
        self.X_, self.games_ = Xn, games
        self.models_ = tuple(table.models)
        return self

    def _select(self, Xn: Features, data: PairwiseData, games: Games, n: int) -> None:
        fit_idx, val_idx = validation_rows(n, self.validation_fraction, self.seed)
        fit_games: Games = (
            games[0][fit_idx],
            games[1][fit_idx],
            games[2][fit_idx],
            games[3][fit_idx],
        )
        val = data.rows(val_idx)
        ks = [self.k_factor] if self.k_factor is not None else list(self.k_grid)
        ns = [self.n_neighbors] if self.n_neighbors is not None else list(self.neighbor_grid)
        ps = [self.mix] if self.mix is not None else list(self.mix_grid)
        n_grid = sorted({min(int(v), len(fit_idx)) for v in ns if v is not None})
        neighbours = {n_nb: nearest(Xn[val_idx], Xn[fit_idx], n_nb) for n_nb in n_grid}
        best: tuple[float, float, int, float] = (-1.0, 0.0, 0, 0.0)
        scores: dict[str, float] = {}
        for k in ks:
            glob = elo_global(*fit_games, data.n_models, float(k))
            for n_nb, nb in neighbours.items():
                local = elo_local(fit_games, nb, data.n_models, float(k))
                for p in ps:
                    acc = pair_accuracy(float(p) * glob + (1.0 - float(p)) * local, val)
                    scores[f"K={k},N={n_nb},P={p}"] = acc
                    if acc > best[0]:
                        best = (acc, float(k), n_nb, float(p))
        self.validation_accuracy_ = scores
        _, self.k_factor_, self.n_neighbors_, self.mix_ = best

    def _mixed(self, glob: FloatVector, local: FloatMatrix) -> FloatMatrix:
        return np.asarray(self.mix_ * glob[None, :] + (1.0 - self.mix_) * local)

    def ratings(self, X: Features) -> FloatMatrix:
        """The mixed Elo ratings ``P·G + (1 − P)·L(q)`` per query."""
        self._check_fitted()
        Xq = check_features(X)
        check_n_features(Xq, self.X_.shape[1])
        nb = nearest(l2_normalize(Xq), self.X_, self.n_neighbors_)
        local = elo_local(self.games_, nb, len(self.models_), self.k_factor_)
        return self._mixed(self.global_, local)

    def predict(self, X: Features) -> FloatMatrix:
        """Mixed ratings → win probability against the field → expected quality."""
        return apply_platt(_field(self.ratings(X), _ELO_UNIT), *self.platt_)

    def get_state(self) -> dict[str, Any]:
        """Parameters, chosen N and P, global ratings, training features and games."""
        self._check_fitted()
        params = self._base_params()
        del params["l2"]
        params.update(
            k_factor=self.k_factor,
            k_grid=list(self.k_grid),
            n_neighbors=self.n_neighbors,
            neighbor_grid=list(self.neighbor_grid),
            mix=self.mix,
            mix_grid=list(self.mix_grid),
        )
        a, b, s, w = self.games_
        return {
            "params": params,
            "models": list(self.models_),
            "k_factor": self.k_factor_,
            "n_neighbors": self.n_neighbors_,
            "mix": self.mix_,
            "global": self.global_,
            "platt": list(self.platt_),
            "features": features_state(self.X_),
            "games": {"a": a, "b": b, "outcome": s, "weight": w},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild from :meth:`get_state`."""
        params = dict(state["params"])
        params["k_grid"] = tuple(params["k_grid"])
        params["neighbor_grid"] = tuple(params["neighbor_grid"])
        params["mix_grid"] = tuple(params["mix_grid"])
        est = cls(**params)
        est.models_ = tuple(state["models"])
        est.k_factor_ = float(state["k_factor"])
        est.n_neighbors_ = int(state["n_neighbors"])
        est.mix_ = float(state["mix"])
        est.global_ = np.asarray(state["global"], dtype=np.float64)
        a, b = state["platt"]
        est.platt_ = (float(a), float(b))
        est.X_ = features_from_state(state["features"])
        g = state["games"]
        est.games_ = (
            np.asarray(g["a"], dtype=np.intp),
            np.asarray(g["b"], dtype=np.intp),
            np.asarray(g["outcome"], dtype=np.float64),
            np.asarray(g["weight"], dtype=np.float64),
        )
        return est

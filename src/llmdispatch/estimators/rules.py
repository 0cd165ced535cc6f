"""Rule-based routes (semantic-router, Arch-Router policies) as a quality estimator.

References
----------
Aurelio AI, semantic-router (github.com/aurelio-labs/semantic-router): a route is a set of
example utterances; a query goes to the route whose utterances it is most similar to, when that
similarity reaches the route's threshold, fitted on labelled utterances (``fit``).
Tran et al., "Arch-Router: Aligning LLM Routing with Human Preferences", arXiv:2506.16655
(2025): routes are plain-language policies (a domain and an action) mapped to models.

Matching, per route ``r`` of the spec (:mod:`llmdispatch.features.routes`), on the ``rules``
encoder's columns: a keyword or regex hit fires ``r`` outright with score ``s_r = 1``;
otherwise ``s_r`` is the largest cosine similarity of the query to ``r``'s examples and
description, and ``r`` fires when ``s_r ≥ t_r``. Among fired routes the highest ``s_r`` wins
(ties: the earlier route). The output, with ``μ_m`` model ``m``'s mean training score and
``φ = prior_factor`` in (0, 0.5)::

    Q[x, m] = 0.5 + 0.5 · s_r      for the winning route's model
    Q[x, m] = 0.5                  for the default model when no route fires (if a default is set)
    Q[x, m] = φ · μ_m  (< 0.5)     for every other model

so at λ = 0 the route's model (or the default) is chosen, and with λ > 0 a cheaper model wins
once the cost gap outweighs ``Q_route − φ·μ_m``; with no default and nothing fired the prior
(the best model on average) decides.

Thresholds (``threshold: auto``): on the training prompts, ``r`` should fire where its model is
among the best (its score equals the prompt's top score); prompts where every known score is
the same say nothing and are left out. ``t_r`` maximises the F1 of "``r`` fires" against that
label over every cut of the sorted similarities (the midpoint between the last prompt that
fires and the next), as semantic-router's ``fit`` searches thresholds on labelled data.
Adapted: semantic-router maximises accuracy of one route label per utterance by random
search; here each route gets its own exhaustive F1 search, since several models can be best.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

import numpy as np

from llmdispatch.data.table import OutcomeTable
from llmdispatch.estimators._common import check_features, table_scores
from llmdispatch.estimators.base import QualityEstimator, clip_quality
from llmdispatch.features.routes import RouteSpec, load_route_spec
from llmdispatch.registry import register
from llmdispatch.types import BoolMatrix, Features, FloatMatrix, FloatVector, IntVector

#: A threshold above every similarity: the route fires on keywords and regexes only.
NEVER = 2.0
_TIE = 1e-9


def fit_threshold(sim: FloatVector, hit: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    """``(threshold, F1)`` maximising F1 of ``hit | sim ≥ threshold`` against ``label``.

    Candidates cut the similarities sorted from high to low; the threshold is the midpoint
    between the lowest similarity that fires and the next one. Ties in F1 keep the higher
    threshold. No positive label, or hits alone are best: :data:`NEVER`.
    """
    sim, hit, label = np.asarray(sim, float), np.asarray(hit, bool), np.asarray(label, bool)
    positives = int(label.sum())
    if positives == 0:
        return NEVER, 0.0
    base_tp, base_fp = int((hit & label).sum()), int((hit & ~label).sum())
    order = np.argsort(-sim[~hit], kind="stable")
    s, y = sim[~hit][order], label[~hit][order]
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # last row of each distinct value
    values = s[ends]  # high to low
    tp = np.concatenate([[0.0], np.cumsum(y)[ends]]) + base_tp
    fp = np.concatenate([[0.0], np.cumsum(~y)[ends]]) + base_fp
    f1 = 2 * tp / np.maximum(2 * tp + fp + (positives - tp), 1.0)
    k = int(np.argmax(f1))  # first maximum: the highest threshold
    if k == 0:
        return NEVER, float(f1[0])
    low = values[k] if k < len(values) else 0.0
    return float((values[k - 1] + low) / 2.0), float(f1[k])


def best_models(Y: FloatMatrix, M: BoolMatrix) -> tuple[BoolMatrix, np.ndarray]:
    """Cells whose score equals the prompt's best; and the rows where models differ."""
    top = np.where(M, Y, -np.inf).max(axis=1)
    low = np.where(M, Y, np.inf).min(axis=1)
    best = M & (top[:, None] - _TIE <= Y)
    return best, (top - low) > _TIE


@register("estimator", "rules")
class RulesEstimator(QualityEstimator):
    """Routes from a spec; needs the ``rules`` encoder with the same spec (module docstring).

    Parameters
    ----------
    spec : a YAML path, a dict, or a :class:`~llmdispatch.features.routes.RouteSpec`.
    prior_factor : ``φ``, the share of its mean training score a model not chosen by a route
        keeps; in [0, 0.5) so a fired route's model always ranks first at λ = 0.
    """

    def __init__(
        self,
        spec: RouteSpec | str | Path | dict[str, Any] | None = None,
        prior_factor: float = 0.4,
    ) -> None:
        self.spec = spec
        self.prior_factor = prior_factor

    def fit(self, table: OutcomeTable, X: Features) -> Self:
        """Check the spec against the table, fit ``auto`` thresholds, tabulate the priors."""
        pf = self.prior_factor
        if isinstance(pf, bool) or not isinstance(pf, int | float) or not 0.0 <= pf < 0.5:
            raise ValueError(f"prior_factor must be in [0, 0.5), got {pf!r}")
        spec = load_route_spec(self.spec)
        spec.check_models(table.models)
        scores = table_scores(table)
        hit, sim = self._split(check_features(X, table.n_prompts), spec)
        best, informative = best_models(scores.Y, scores.M)
        self.thresholds_ = np.empty(len(spec.routes))
        self.f1_ = np.full(len(spec.routes), np.nan)
        for j, route in enumerate(spec.routes):
            col = table.model_index(route.model)
            if route.threshold != "auto":
                self.thresholds_[j] = float(route.threshold)
                continue
            rows = informative & scores.M[:, col]
            self.thresholds_[j], self.f1_[j] = fit_threshold(
                sim[rows, j], hit[rows, j], best[rows, col]
            )
        self.spec_ = spec
        self.models_ = scores.models
        self.prior_ = float(pf) * scores.prior
        self.route_model_ = np.array([table.model_index(r.model) for r in spec.routes])
        self.default_ = -1 if spec.default is None else table.model_index(spec.default)
        return self

    @staticmethod
    def _split(X: Features, spec: RouteSpec) -> tuple[np.ndarray, FloatMatrix]:
        R = len(spec.routes)
        if X.shape[1] != 2 * R:
            raise ValueError(
                f"X has {X.shape[1]} columns but the spec has {R} routes: the rules estimator "
                f"reads the 'rules' encoder's {2 * R} columns (use encoder 'rules' with the "
                "same spec)"
            )
        D = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float64)
        return D[:, :R] > 0.5, D[:, R:]

    def decide(self, X: Features) -> tuple[IntVector, FloatVector]:
        """Winning route per query (``-1``: none fired) and its score ``s_r``."""
        self._check_fitted()
        hit, sim = self._split(check_features(X), self.spec_)
        score = np.where(hit, 1.0, sim)
        fired = hit | (sim >= self.thresholds_[None, :])
        masked = np.where(fired, score, -np.inf)
        winner = np.where(fired.any(axis=1), masked.argmax(axis=1), -1).astype(np.intp)
        return winner, np.where(winner >= 0, masked.max(axis=1), 0.0)

    def routes(self, X: Features) -> list[str | None]:
        """The winning route's name per query, ``None`` where no route fires."""
        winner, _ = self.decide(X)
        names = self.spec_.names
        return [names[w] if w >= 0 else None for w in winner]

    def predict(self, X: Features) -> FloatMatrix:
        """``Q``: ``0.5 + 0.5·s_r`` for the route's model, 0.5 for the default, else ``φ·μ_m``."""
        winner, score = self.decide(X)
        Q = np.tile(self.prior_, (len(winner), 1))
        rows = np.flatnonzero(winner >= 0)
        Q[rows, self.route_model_[winner[rows]]] = 0.5 + 0.5 * score[rows]
        if self.default_ >= 0:
            Q[winner < 0, self.default_] = 0.5
        return clip_quality(Q)

    def get_state(self) -> dict[str, Any]:
        """The parsed spec, fitted thresholds (and their F1) and the priors."""
        self._check_fitted()
        return {
            "params": {"prior_factor": self.prior_factor},
            "spec": self.spec_.model_dump(mode="json"),
            "models": list(self.models_),
            "thresholds": self.thresholds_,
            "f1": [None if np.isnan(v) else float(v) for v in self.f1_],
            "prior": self.prior_,
            "route_model": self.route_model_,
            "default": self.default_,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild from :meth:`get_state`."""
        spec = RouteSpec.model_validate(state["spec"])
        est = cls(spec, **state["params"])
        est.spec_ = spec
        est.models_ = tuple(state["models"])
        est.thresholds_ = np.asarray(state["thresholds"], dtype=np.float64)
        est.f1_ = np.array([np.nan if v is None else v for v in state["f1"]], dtype=np.float64)
        est.prior_ = np.asarray(state["prior"], dtype=np.float64)
        est.route_model_ = np.asarray(state["route_model"], dtype=np.intp)
        est.default_ = int(state["default"])
        return est

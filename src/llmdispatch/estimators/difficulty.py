"""Hybrid LLM: a query-difficulty classifier for a (small, large) model pair.

Ding et al., "Hybrid LLM: Cost-Efficient and Quality-Aware Query Routing", ICLR 2024,
arXiv:2404.14618. A classifier ``p(x) ≈ P[q(S(x)) ≥ q(L(x)) − t]`` is trained on query
features; at test time the query goes to the small model ``S`` when ``p(x)`` clears a
threshold. Three label variants, as in the paper:

* ``hybrid-llm`` (deterministic, r_det): ``y = 1[q_S ≥ q_L − t]`` from the recorded scores.
* ``hybrid-llm-prob`` (probabilistic, r_prob): the paper estimates ``P[q_S ≥ q_L]`` from 10
  sampled answers per model. Outcome tables hold one answer per model, so each score is read
  as the success probability of a Bernoulli answer quality and the soft label is
  ``y = Σ_{b_S, b_L ∈ {0,1}} P(b_S) P(b_L) 1[b_S − b_L ≥ −t]`` (``= 1 − s_L (1 − s_S)`` for
  ``0 ≤ t < 1``). For 0/1 scores this equals the deterministic label; for ``alpaca-eval``,
  whose score *is* a win probability, it is a genuine soft label.
* ``hybrid-llm-trans`` (transformed, r_trans): ``y = 1[q_S ≥ q_L − t*]`` with
  ``t* = argmax_t Σ_{i,j} |y_i(t) − y_j(t)|``, i.e. the relaxation that balances the labels.
  Adapted: ``t`` may be negative (a strictly better answer is required) when the small model
  already matches the large one on most prompts, which the paper's data did not need.

Adapted elsewhere: the paper fine-tunes DeBERTa; here a logistic regression on the router's
features, its ``C`` chosen by k-fold cross-validated log-loss. To plug into ``argmax Q − λ·C``
the classifier's output is mapped to expected qualities with isotonic regressions fitted on
the *out-of-fold* probabilities: ``Q_S(x) = E[q_S | p(x)]`` (increasing) and
``Q_L(x) = E[q_L | p(x)]`` (direction fitted). Sweeping λ then moves a threshold on ``p(x)``
as the paper's router does. Only the pair is routed: ``models_ = (small, large)``; the
Router restricts its choice to these columns by name.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Self

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.optimize import minimize
from sklearn.isotonic import IsotonicRegression

from llmdispatch.data.splits import kfold_indices
from llmdispatch.data.table import OutcomeTable
from llmdispatch.estimators._common import check_features, check_n_features
from llmdispatch.estimators.base import QualityEstimator, clip_quality
from llmdispatch.registry import register
from llmdispatch.types import Features, FloatMatrix, FloatVector

Variant = Literal["deterministic", "probabilistic", "transformed"]


def choose_pair(table: OutcomeTable, strong_enough: float) -> tuple[str, str]:
    """``(small, large)``: the cheapest strong-enough model and the best model.

    ``large`` has the highest mean training score; ``small`` is, among the other models
    whose mean reaches ``strong_enough × mean(large)``, the one with the lowest mean cost
    (lowest mean score when no cost is known); if none qualifies, the best other model.
    """
    if table.n_models < 2:
        raise ValueError("hybrid-llm needs a table with at least two models")
    means = np.nan_to_num(table.mean_score(), nan=-np.inf)
    costs = table.mean_cost()
    large = int(np.argmax(means))
    others = [j for j in range(table.n_models) if j != large]
    eligible = [j for j in others if means[j] >= strong_enough * means[large]]
    if not eligible:
        eligible = [max(others, key=lambda j: means[j])]
    priced = [j for j in eligible if np.isfinite(costs[j])]
    if priced:
        small = min(priced, key=lambda j: (costs[j], -means[j]))
    else:
        small = min(eligible, key=lambda j: means[j])
    return table.models[small], table.models[large]


def soft_labels(
    s: FloatVector, big: FloatVector, variant: Variant, t: float
) -> tuple[FloatVector, float]:
    """Labels ``y ∈ [0, 1]`` for score pairs ``(s, big)`` and the relaxation ``t`` used."""
    if variant == "transformed":
        gap = s - big
        candidates = np.unique(np.concatenate([[0.0], -gap]))
        balance = np.array([abs(np.mean(gap >= -c) - 0.5) for c in candidates])
        best = np.flatnonzero(balance <= balance.min() + 1e-12)
        t = float(candidates[best[np.argmin(np.abs(candidates[best]))]])
        return (gap >= -t - 1e-12).astype(np.float64), t
    if variant == "deterministic":
        return (s - big >= -t - 1e-12).astype(np.float64), t
    y = np.zeros_like(s)
    for b_s in (0.0, 1.0):
        for b_l in (0.0, 1.0):
            p = (s if b_s else 1.0 - s) * (big if b_l else 1.0 - big)
            y += p * float(b_s - b_l >= -t - 1e-12)
    return np.clip(y, 0.0, 1.0), t


def _fit_lr(X: Features, y: FloatVector, C: float) -> tuple[FloatVector, float]:
    """Logistic regression on soft labels ``y ∈ [0, 1]`` by L-BFGS.

    Minimises ``C · Σ_i [softplus(z_i) − y_i z_i] + ½‖w‖²`` with ``z = X w + b`` (the
    intercept is not penalised): scikit-learn's objective, written out because soft labels
    are then direct and no row has to be duplicated.

    Sparse (hashed TF-IDF, ~10⁶ columns) input is fitted on the columns that occur in ``X``
    only: the weight of a column with no non-zero gets gradient ``w_j`` alone, so it stays 0
    and the optimum is the same, while L-BFGS no longer updates 10⁶-long vectors per step.
    """
    if sp.issparse(X):
        Xc = sp.csr_matrix(X)
        cols = np.unique(Xc.indices)
        coef = np.zeros(Xc.shape[1])
        coef[cols], intercept = _lbfgs_lr(Xc[:, cols], y, C)
        return coef, intercept
    return _lbfgs_lr(X, y, C)


def _lbfgs_lr(X: Features, y: FloatVector, C: float) -> tuple[FloatVector, float]:
    """:func:`_fit_lr` on every column of ``X``."""
    d = X.shape[1]

    def objective(wb: FloatVector) -> tuple[float, FloatVector]:
        w, b = wb[:d], wb[d]
        z = np.asarray(X @ w, dtype=np.float64).ravel() + b
        loss = C * float(np.sum(np.logaddexp(0.0, z) - y * z)) + 0.5 * float(w @ w)
        r = C * (0.5 * (1.0 + np.tanh(0.5 * z)) - y)
        grad = np.empty(d + 1)
        grad[:d] = np.asarray(X.T @ r).ravel() + w
        grad[d] = r.sum()
        return loss, grad

    start = np.zeros(d + 1)
    start[d] = _logit1(float(np.mean(y)))
    res = minimize(objective, start, jac=True, method="L-BFGS-B", options={"maxiter": 2000})
    return np.asarray(res.x[:d], dtype=np.float64), float(res.x[d])


def _proba(X: Features, coef: FloatVector, intercept: float) -> FloatVector:
    z = np.asarray(X @ coef, dtype=np.float64).ravel() + intercept
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)), dtype=np.float64)


def _soft_log_loss(p: FloatVector, y: FloatVector) -> float:
    q = np.clip(p, 1e-9, 1 - 1e-9)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q)))


class _Isotonic:
    """A fitted isotonic map kept as its breakpoints (``np.interp`` with clipping)."""

    def __init__(self, x: FloatVector, y: FloatVector) -> None:
        self.x, self.y = x, y

    @classmethod
    def fit(cls, p: FloatVector, q: FloatVector, directions: tuple[bool, ...]) -> _Isotonic:
        """The best-fitting (least squares) monotone map among ``directions``."""
        best: tuple[float, _Isotonic] | None = None
        for increasing in directions:
            iso = IsotonicRegression(
                y_min=0.0, y_max=1.0, increasing=increasing, out_of_bounds="clip"
            )
            fitted = iso.fit_transform(p, q)
            sse = float(np.sum((fitted - q) ** 2))
            if best is None or sse < best[0] - 1e-12:
                x, y = iso.X_thresholds_, iso.y_thresholds_
                best = (sse, cls(np.asarray(x, np.float64), np.asarray(y, np.float64)))
        assert best is not None
        return best[1]

    def __call__(self, p: FloatVector) -> FloatVector:
        return np.asarray(np.interp(p, self.x, self.y), dtype=np.float64)


class HybridLLMEstimator(QualityEstimator):
    """Hybrid LLM's difficulty classifier (deterministic labels); see the module docstring.

    Parameters: ``small``/``large`` name the pair (default: :func:`choose_pair` with
    ``strong_enough``); ``t`` is the quality relaxation (ignored by the transformed variant,
    which fits it); ``Cs`` is the grid for the logistic regression's inverse ridge, chosen by
    ``folds``-fold cross-validation.
    """

    variant: ClassVar[Variant] = "deterministic"

    def __init__(
        self,
        *,
        small: str | None = None,
        large: str | None = None,
        strong_enough: float = 0.8,
        t: float = 0.0,
        Cs: tuple[float, ...] = (0.1, 1.0, 10.0),
        folds: int = 5,
        seed: int = 0,
    ) -> None:
        self.small = small
        self.large = large
        self.strong_enough = strong_enough
        self.t = t
        self.Cs = Cs
        self.folds = folds
        self.seed = seed

    def _params(self) -> dict[str, Any]:
        return {
            "small": self.small,
            "large": self.large,
            "strong_enough": self.strong_enough,
            "t": self.t,
            "Cs": list(self.Cs),
            "folds": self.folds,
            "seed": self.seed,
        }

    def fit(self, table: OutcomeTable, X: Features) -> Self:
        """Labels from the pair's scores, C by cross-validation, then the quality maps."""
        X = check_features(X, table.n_prompts)
        if not self.Cs or any(not isinstance(c, int | float) or c <= 0 for c in self.Cs):
            raise ValueError(f"Cs must be positive numbers, got {self.Cs!r}")
        small, large = choose_pair(table, self.strong_enough)
        small, large = self.small or small, self.large or large
        if small == large:
            raise ValueError(f"small and large must differ, both are {small!r}")
        s = table.score[:, table.model_index(small)]
        big = table.score[:, table.model_index(large)]
        rows = np.flatnonzero(~np.isnan(s) & ~np.isnan(big))
        if len(rows) < max(4, self.folds):
            raise ValueError(
                f"only {len(rows)} prompts have scores for both {small!r} and {large!r}"
            )
        y, self.t_ = soft_labels(s[rows], big[rows], self.variant, float(self.t))
        Xr = X[rows]
        oof = self._cross_validate(Xr, y)
        if 0.0 < y.mean() < 1.0:
            self.coef_, self.intercept_ = _fit_lr(Xr, y, self.C_)
        else:  # one class only: nothing to separate, p(x) is the label rate
            self.coef_, self.intercept_ = np.zeros(X.shape[1]), _logit1(float(y.mean()))
        self.small_iso_ = _Isotonic.fit(oof, s[rows], (True,))
        self.large_iso_ = _Isotonic.fit(oof, big[rows], (True, False))
        self.label_rate_ = float(y.mean())
        self.models_ = (small, large)
        return self

    def _cross_validate(self, X: Features, y: FloatVector) -> FloatVector:
        """Pick ``C`` by k-fold soft log-loss; return the chosen C's out-of-fold p."""
        n = len(y)
        best: tuple[float, float, FloatVector] = (np.inf, float(self.Cs[0]), np.full(n, y.mean()))
        folds = list(kfold_indices(n, min(self.folds, n), self.seed))
        for C in self.Cs:
            oof = np.empty(n)
            for tr, te in folds:
                if 0.0 < y[tr].mean() < 1.0:
                    oof[te] = _proba(X[te], *_fit_lr(X[tr], y[tr], float(C)))
                else:
                    oof[te] = y[tr].mean()
            loss = _soft_log_loss(oof, y)
            if loss < best[0]:
                best = (loss, float(C), oof)
        self.cv_log_loss_, self.C_, oof = best
        return oof

    def proba(self, X: Features) -> FloatVector:
        """``p(x) = P[q_S ≥ q_L − t]`` per query."""
        self._check_fitted()
        Xq = check_features(X)
        check_n_features(Xq, len(self.coef_))
        return _proba(Xq, self.coef_, self.intercept_)

    def predict(self, X: Features) -> FloatMatrix:
        """``Q[:, 0] = E[q_S | p(x)]``, ``Q[:, 1] = E[q_L | p(x)]``."""
        p = self.proba(X)
        return clip_quality(np.column_stack([self.small_iso_(p), self.large_iso_(p)]))

    def get_state(self) -> dict[str, Any]:
        """Parameters, pair, classifier weights and isotonic breakpoints."""
        self._check_fitted()
        return {
            "params": self._params(),
            "models": list(self.models_),
            "t": self.t_,
            "C": self.C_,
            "coef": self.coef_,
            "intercept": self.intercept_,
            "label_rate": self.label_rate_,
            "cv_log_loss": self.cv_log_loss_,
            "small_iso": {"x": self.small_iso_.x, "y": self.small_iso_.y},
            "large_iso": {"x": self.large_iso_.x, "y": self.large_iso_.y},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild from :meth:`get_state`."""
        params = dict(state["params"])
        params["Cs"] = tuple(params["Cs"])
        est = cls(**params)
        est.models_ = tuple(state["models"])
        est.t_, est.C_ = float(state["t"]), float(state["C"])
        est.coef_ = np.asarray(state["coef"], dtype=np.float64)
        est.intercept_ = float(state["intercept"])
        est.label_rate_ = float(state["label_rate"])
        est.cv_log_loss_ = float(state["cv_log_loss"])
        est.small_iso_ = _Isotonic(_arr(state["small_iso"]["x"]), _arr(state["small_iso"]["y"]))
        est.large_iso_ = _Isotonic(_arr(state["large_iso"]["x"]), _arr(state["large_iso"]["y"]))
        return est


@register("estimator", "hybrid-llm")
class HybridLLMDeterministic(HybridLLMEstimator):
    """Hybrid LLM with deterministic labels ``1[q_S ≥ q_L − t]`` (r_det)."""

    variant: ClassVar[Variant] = "deterministic"


@register("estimator", "hybrid-llm-prob")
class HybridLLMProbabilistic(HybridLLMEstimator):
    """Hybrid LLM with probabilistic (score-based soft) labels (r_prob)."""

    variant: ClassVar[Variant] = "probabilistic"


@register("estimator", "hybrid-llm-trans")
class HybridLLMTransformed(HybridLLMEstimator):
    """Hybrid LLM with transformed labels: ``t`` fitted to balance them (r_trans)."""

    variant: ClassVar[Variant] = "transformed"


def _logit1(p: float) -> float:
    q = min(max(p, 1e-6), 1 - 1e-6)
    return float(np.log(q / (1 - q)))


def _arr(value: Any) -> npt.NDArray[np.float64]:
    return np.asarray(value, dtype=np.float64)

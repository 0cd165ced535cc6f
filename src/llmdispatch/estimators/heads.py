"""Per-model quality heads: a logistic (``linear``) or small neural (``mlp``) classifier per model.

References
----------
Šakota et al., "Fly-Swat or Cannon? Cost-Effective Language Model Choice via Meta-Modeling"
(FORC), WSDM 2024, arXiv:2308.06077; Hari & Thomson, "Tryage", arXiv:2308.11601 (2023);
Hu et al., "RouterBench", arXiv:2403.12031 (2024, its MLP/SVM predictive routers). Each
regresses every model's quality from query features and routes by ``Q − λ·C``.

Formula, per model ``m`` with features ``x`` (dense or sparse)::

    linear:  Q(x, m) = σ(w_mᵀ x + b_m)
    mlp:     Q(x, m) = σ(w_mᵀ relu(W_m z + c_m) + b_m),   z = standardised LSA/dense features

trained by cross-entropy against the known scores only (unknown cells are left out, never
read as 0). Adapted: fractional scores are soft targets, implemented for scikit-learn by
giving each row a positive copy weighted ``y`` and a negative copy weighted ``1 − y`` (the
exact soft-label log-loss); the L2 strength (``C`` / ``alpha``) of each head is chosen from a
grid by held-out Brier score, then the head is refitted on all rows; a model whose known
scores are constant gets a constant head. Predictions are computed in numpy from the learned
arrays, so a saved artifact predicts exactly what the fitted object did.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from llmdispatch.data.table import OutcomeTable
from llmdispatch.estimators._common import (
    as_dense,
    check_features,
    check_fraction,
    check_grid,
    check_int,
    check_n_features,
    features_from_state,
    features_state,
    l2_normalize,
    sigmoid,
    table_scores,
    validation_rows,
)
from llmdispatch.estimators._projection import Projector
from llmdispatch.estimators.base import QualityEstimator, clip_quality
from llmdispatch.features.lsa import column_positions, select_columns
from llmdispatch.registry import register
from llmdispatch.types import Features, FloatMatrix, FloatVector

Head = dict[str, Any]
_EPS = 1e-4


def soft_rows(y: FloatVector) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, labels and weights turning soft targets into weighted hard labels."""
    pos = np.flatnonzero(y > 0)
    neg = np.flatnonzero(y < 1)
    rows = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(len(pos), dtype=int), np.zeros(len(neg), dtype=int)])
    weights = np.concatenate([y[pos], 1.0 - y[neg]])
    return rows, labels, weights


def _constant_head(y: FloatVector) -> Head:
    p = float(np.clip(np.mean(y), _EPS, 1 - _EPS))
    return {"constant": np.log(p / (1 - p))}


class _PerModelHeads(QualityEstimator):
    """Shared fitting loop: one head per model, strength chosen on a held-out split."""

    grid_name: ClassVar[str]

    def __init__(
        self, grid: Sequence[float], validation_fraction: float = 0.2, random_state: int = 0
    ) -> None:
        self.grid = grid
        self.validation_fraction = validation_fraction
        self.random_state = random_state

    @abstractmethod
    def _design_fit(self, X: Features) -> Features:
        """Fit any input transform on training features and return the design matrix."""

    @abstractmethod
    def _design(self, X: Features) -> Features:
        """Design matrix for query features."""

    @abstractmethod
    def _fit_head(
        self, X: Features, y: FloatVector, strength: float, init: Head | None = None
    ) -> Head:
        """Fit one model's head on rows with known soft targets ``y``.

        ``init`` is a head fitted on similar data (a neighbouring strength, or the chosen
        strength on the fitting split) that a solver may start from.
        """

    @abstractmethod
    def _head_logits(self, X: Features, head: Head) -> FloatVector:
        """Logits of one head (non-constant)."""

    def _logits(self, X: Features, head: Head) -> FloatVector:
        if "constant" in head:
            return np.full(X.shape[0], float(head["constant"]))
        return self._head_logits(X, head)

    def fit(self, table: OutcomeTable, X: Features) -> Self:
        """Fit one head per model, choosing its regularisation by held-out Brier score."""
        grid = check_grid(self.grid_name, self.grid)
        check_fraction("validation_fraction", self.validation_fraction)
        check_int("random_state", self.random_state, 0)
        scores = table_scores(table)
        Xd = self._design_fit(check_features(X, table.n_prompts))
        fit_idx, val_idx = validation_rows(
            table.n_prompts, self.validation_fraction, self.random_state
        )
        heads: list[Head] = []
        chosen: list[float] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for j in range(len(scores.models)):
                strength, init = self._select(
                    Xd, scores.Y[:, j], scores.M[:, j], fit_idx, val_idx, grid
                )
                known = np.flatnonzero(scores.M[:, j])
                heads.append(self._head(Xd[known], scores.Y[known, j], strength, init))
                chosen.append(strength)
        self.models_ = scores.models
        self.heads_ = heads
        self.strengths_ = chosen
        return self

    def _head(self, X: Features, y: FloatVector, strength: float, init: Head | None = None) -> Head:
        if np.all(y == y[0]):
            return _constant_head(y)
        return self._fit_head(X, y, strength, None if init is None or "constant" in init else init)

    def _select(
        self,
        Xd: Features,
        y: FloatVector,
        known: np.ndarray,
        fit_idx: np.ndarray,
        val_idx: np.ndarray,
        grid: list[float],
    ) -> tuple[float, Head | None]:
        """The strength with the lowest held-out Brier score, and its head (a warm start).

        The grid is walked in increasing order, each fit starting from the previous head.
        """
        tr = fit_idx[known[fit_idx]]
        va = val_idx[known[val_idx]]
        if len(grid) == 1 or len(tr) < 2 or len(va) == 0 or np.all(y[tr] == y[tr][0]):
            return float(grid[len(grid) // 2]), None
        grid = sorted(grid)
        losses: list[float] = []
        heads: list[Head] = []
        for strength in grid:
            head = self._head(Xd[tr], y[tr], strength, heads[-1] if heads else None)
            q = sigmoid(self._logits(Xd[va], head))
            losses.append(float(np.mean((q - y[va]) ** 2)))
            heads.append(head)
        best = int(np.argmin(losses))
        return float(grid[best]), heads[best]

    def predict(self, X: Features) -> FloatMatrix:
        """``Q[n, m]``: each head's probability of a good answer."""
        self._check_fitted()
        Xd = self._design(check_features(X))
        logits = np.column_stack([self._logits(Xd, h) for h in self.heads_])
        return clip_quality(sigmoid(logits))


@register("estimator", "linear")
class LinearHeads(_PerModelHeads):
    """L2-regularised logistic regression per model on (L2-normalised) features.

    ``C`` (inverse regularisation) is chosen per model from ``Cs`` on a held-out split.
    """

    grid_name = "Cs"

    def __init__(
        self,
        Cs: Sequence[float] = (0.3, 1.0, 3.0, 10.0),
        validation_fraction: float = 0.2,
        random_state: int = 0,
        max_iter: int = 100,
    ) -> None:
        super().__init__(Cs, validation_fraction, random_state)
        self.Cs = Cs
        self.max_iter = max_iter

    def _design_fit(self, X: Features) -> Features:
        check_int("max_iter", self.max_iter, 1)
        self.n_features_ = int(X.shape[1])
        self.__dict__.pop("_position", None)
        # Hashed n-gram features have ~10⁶ columns, few of them ever seen: a column no
        # training prompt has gets a zero weight anyway, so fit on the seen ones only.
        if sp.issparse(X):
            self.columns_ = np.unique(sp.csr_matrix(X).indices).astype(np.int64)
        else:
            self.columns_ = np.arange(self.n_features_, dtype=np.int64)
        return self._design(X)

    def _design(self, X: Features) -> Features:
        check_n_features(X, self.n_features_)
        Xn = l2_normalize(X)
        if sp.issparse(Xn):
            return select_columns(sp.csr_matrix(Xn), self._positions(), len(self.columns_))
        return np.asarray(Xn)[:, self.columns_]

    def warm(self) -> None:
        """Build the column map now rather than on the first live query."""
        self._check_fitted()
        self._positions()

    def _positions(self) -> npt.NDArray[np.signedinteger[Any]]:
        """Column → its place among ``columns_`` (−1: not kept), built once."""
        position: npt.NDArray[np.signedinteger[Any]] | None = self.__dict__.get("_position")
        if position is None:
            position = self._position = column_positions(self.columns_, self.n_features_)
        return position

    def _fit_head(
        self, X: Features, y: FloatVector, strength: float, init: Head | None = None
    ) -> Head:
        rows, labels, weights = soft_rows(y)
        clf = LogisticRegression(C=strength, max_iter=self.max_iter, warm_start=init is not None)
        if init is not None:
            # L-BFGS starts from a nearby solution: the same optimum in ~25 % fewer
            # iterations on llmrouter-dc (benchmarks/bench_training.py).
            clf.coef_ = np.asarray(init["coef"], dtype=np.float64)[None, :].copy()
            clf.intercept_ = np.array([float(init["intercept"])])
        clf.fit(X[rows], labels, sample_weight=weights)
        return {"coef": clf.coef_.ravel().astype(np.float64), "intercept": float(clf.intercept_[0])}

    def _head_logits(self, X: Features, head: Head) -> FloatVector:
        logits = np.asarray(X @ head["coef"], dtype=np.float64).ravel()
        return np.asarray(logits + float(head["intercept"]), dtype=np.float64)

    def get_state(self) -> dict[str, Any]:
        """Coefficients of all heads as one (sparse when mostly zero) matrix."""
        self._check_fitted()
        coef = np.zeros((len(self.heads_), len(self.columns_)))
        intercept = np.zeros(len(self.heads_))
        constant = np.zeros(len(self.heads_), dtype=bool)
        for j, h in enumerate(self.heads_):
            constant[j] = "constant" in h
            intercept[j] = h["constant"] if constant[j] else h["intercept"]
            if not constant[j]:
                coef[j] = h["coef"]
        dense = np.count_nonzero(coef) > coef.size // 4
        return {
            "models": list(self.models_),
            "n_features": self.n_features_,
            "columns": self.columns_,
            "coef": features_state(coef if dense else sp.csr_matrix(coef)),
            "intercept": intercept,
            "constant": constant,
            "strengths": list(self.strengths_),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild from :meth:`get_state`."""
        est = cls()
        est.models_ = tuple(state["models"])
        est.n_features_ = int(state["n_features"])
        est.columns_ = np.asarray(state["columns"], dtype=np.int64)
        coef = as_dense(features_from_state(state["coef"]))
        est.heads_ = [
            {"constant": float(b)} if c else {"coef": coef[j], "intercept": float(b)}
            for j, (b, c) in enumerate(zip(state["intercept"], state["constant"], strict=True))
        ]
        est.strengths_ = [float(s) for s in state["strengths"]]
        return est


@register("estimator", "mlp")
class MLPHeads(_PerModelHeads):
    """One-hidden-layer MLP classifier per model on standardised dense (or LSA) features.

    ``alpha`` (L2 penalty) is chosen per model from ``alphas`` on a held-out split; L-BFGS
    training (deterministic, fast on a few thousand rows), in float32.

    scikit-learn divides ``alpha`` by the number of rows, so with ~10² standardised inputs
    the heads need ``alpha`` ≈ 10²: the held-out Brier score picks 100 for every head on
    llmrouter-dc (5608 prompts) and on a 300-prompt planted table. The former grid (0.3, 3)
    ended below that (3 was picked for every head) and overfitted: test MSE 0.189 on
    llmrouter-dc against 0.150 now. 128 LSA components instead of 256 halve the cost of
    the first layer at the same test MSE.
    """

    grid_name = "alphas"

    def __init__(
        self,
        alphas: Sequence[float] = (10.0, 100.0, 1000.0),
        hidden: int = 64,
        n_components: int = 128,
        validation_fraction: float = 0.2,
        random_state: int = 0,
        max_iter: int = 120,
    ) -> None:
        super().__init__(alphas, validation_fraction, random_state)
        self.alphas = alphas
        self.hidden = hidden
        self.n_components = n_components
        self.max_iter = max_iter

    def _design_fit(self, X: Features) -> Features:
        check_int("hidden", self.hidden, 1)
        check_int("n_components", self.n_components, 1)
        check_int("max_iter", self.max_iter, 1)
        self.projector_ = Projector(self.n_components, seed=self.random_state).fit(X)
        Z = self.projector_.transform(X)
        self.mean_ = Z.mean(axis=0)
        self.scale_ = np.where(Z.std(axis=0) > 1e-12, Z.std(axis=0), 1.0)
        return self._standardise(Z)

    def _design(self, X: Features) -> Features:
        return self._standardise(self.projector_.transform(X))

    def _standardise(self, Z: FloatMatrix) -> Features:
        # float32: scikit-learn's MLP keeps the input's precision, half the matmul cost.
        return np.asarray((Z - self.mean_) / self.scale_, dtype=np.float32)

    def _fit_head(
        self, X: Features, y: FloatVector, strength: float, init: Head | None = None
    ) -> Head:
        rows, labels, weights = soft_rows(y)
        clf = MLPClassifier(
            hidden_layer_sizes=(self.hidden,),
            alpha=strength,
            solver="lbfgs",
            max_iter=self.max_iter,
            random_state=self.random_state,
        )
        clf.fit(X[rows], labels, sample_weight=weights)
        return {
            "W0": clf.coefs_[0],
            "b0": clf.intercepts_[0],
            "W1": clf.coefs_[1].ravel(),
            "b1": float(clf.intercepts_[1][0]),
        }

    def _head_logits(self, X: Features, head: Head) -> FloatVector:
        hidden = np.maximum(np.asarray(X @ head["W0"]) + head["b0"], 0.0)
        return np.asarray(hidden @ head["W1"] + head["b1"], dtype=np.float64)

    def get_state(self) -> dict[str, Any]:
        """Projection, standardisation and every head's weights."""
        self._check_fitted()
        return {
            "models": list(self.models_),
            "projector": self.projector_.get_state(),
            "mean": self.mean_,
            "scale": self.scale_,
            "heads": self.heads_,
            "strengths": list(self.strengths_),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild from :meth:`get_state`."""
        est = cls()
        est.models_ = tuple(state["models"])
        est.projector_ = Projector.from_state(state["projector"])
        est.mean_ = np.asarray(state["mean"], dtype=np.float64)
        est.scale_ = np.asarray(state["scale"], dtype=np.float64)
        est.heads_ = [
            {"constant": float(h["constant"])}
            if "constant" in h
            else {k: (float(v) if k == "b1" else np.asarray(v)) for k, v in h.items()}
            for h in state["heads"]
        ]
        est.strengths_ = [float(s) for s in state["strengths"]]
        return est

"""EmbedLLM: compact learned model embeddings from a query × model correctness matrix.

Reference
---------
Zhuang et al., "EmbedLLM: Learning Compact Representations of Large Language Models",
arXiv:2410.02223 (ICLR 2025), §3 (the "TextMF" correctness predictor): every model ``m`` has a
learned embedding ``e_m ∈ R^d``; a query's sentence embedding ``v_q`` is mapped to ``R^d`` by a
learned linear layer; a classifier on the element-wise product gives the probability that
``m`` answers ``q`` correctly::

    P(correct | q, m) = softmax(W (e_m ⊙ (P v_q + c)) + β)₁ = σ(e_mᵀ (P v_q + c) + b + b_m)

trained with cross-entropy on the observed (query, model) cells by Adam with weight decay,
Gaussian noise of scale ``α`` added to ``v_q`` during training. A new model is represented by
fitting its embedding alone on a few scored queries, the rest frozen
(:meth:`EmbedLLMEstimator.add_model`).

Adapted: the two-class softmax is the sigmoid of the logit difference, and the classifier's
weight vector is absorbed into ``e_m`` (``w·(e_m ⊙ h) = (w ⊙ e_m)·h``); a per-model bias
``b_m`` is added, so a new model's base rate is one parameter of its own; fractional scores
are soft labels (unknown cells are skipped, never read as 0); minibatches are sets of prompts
with all their known cells; the number of epochs is chosen by early stopping on a held-out
slice of the training prompts, then the model is refitted on all of them for that many epochs.
``v_q`` comes from any encoder (sparse TF-IDF is projected to a dense space by LSA,
:class:`~llmdispatch.estimators._projection.Projector`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from llmdispatch.data.table import OutcomeTable
from llmdispatch.estimators._common import (
    Scores,
    check_features,
    check_fraction,
    check_int,
    check_positive,
    sigmoid,
    table_scores,
    validation_rows,
)
from llmdispatch.estimators._projection import Projector
from llmdispatch.estimators.base import QualityEstimator, clip_quality
from llmdispatch.registry import register
from llmdispatch.types import Features, FloatMatrix, FloatVector

_EPS = 1e-4


@dataclass
class _Params:
    """The factorisation: projection ``P, c``, model embeddings ``E``, biases ``b`` (per model)."""

    P: FloatMatrix
    c: FloatVector
    E: FloatMatrix
    b: FloatVector

    def logits(self, V: FloatMatrix) -> FloatMatrix:
        return np.asarray((V @ self.P + self.c) @ self.E.T + self.b)

    def arrays(self) -> list[FloatMatrix]:
        return [self.P, self.c, self.E, self.b]

    def copy(self) -> _Params:
        return _Params(self.P.copy(), self.c.copy(), self.E.copy(), self.b.copy())


def _masked_bce(Z: FloatMatrix, Y: FloatMatrix, W: FloatMatrix) -> float:
    """Mean soft-label cross-entropy of logits over the cells weighted 1 by ``W``."""
    n = float(W.sum())
    return float(((np.logaddexp(0.0, Z) - Y * Z) * W).sum() / max(n, 1.0))


class _Adam:
    """Adam (Kingma & Ba, 2015) over a list of arrays, with coupled L2 weight decay."""

    def __init__(self, arrays: list[FloatMatrix], lr: float, decay: list[float]) -> None:
        self.lr, self.decay, self.t = lr, decay, 0
        self.m = [np.zeros_like(a) for a in arrays]
        self.v = [np.zeros_like(a) for a in arrays]

    def step(self, arrays: list[FloatMatrix], grads: list[FloatMatrix]) -> None:
        self.t += 1
        b1, b2 = 0.9, 0.999
        for i, (a, g) in enumerate(zip(arrays, grads, strict=True)):
            g = g + self.decay[i] * a
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            m_hat = self.m[i] / (1 - b1**self.t)
            v_hat = self.v[i] / (1 - b2**self.t)
            a -= self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)


@register("estimator", "embedllm")
class EmbedLLMEstimator(QualityEstimator):
    """EmbedLLM's correctness factorisation (module docstring).

    Parameters
    ----------
    dim : size ``d`` of the model embeddings (the paper uses 232 for 112 models).
    n_components : width of the dense query space for sparse features (LSA).
    lr, weight_decay, noise : Adam step size, L2 strength on ``P`` and ``E``, and the scale
        ``α`` of the Gaussian noise added to query embeddings while training.
    batch_size : prompts per minibatch (with all their known cells).
    max_epochs, patience : the early-stopping budget on the held-out prompts.
    validation_fraction : share of training prompts held out to choose the epoch count.
    new_model_l2 : in :meth:`add_model`, the strength of the prior that pulls a new model's
        embedding and bias towards the mean of the fitted models.
    """

    def __init__(
        self,
        dim: int = 32,
        n_components: int = 128,
        lr: float = 0.003,
        weight_decay: float = 1e-4,
        noise: float = 0.02,
        batch_size: int = 128,
        max_epochs: int = 150,
        patience: int = 10,
        validation_fraction: float = 0.15,
        new_model_l2: float = 0.05,
        seed: int = 0,
    ) -> None:
        self.dim = dim
        self.n_components = n_components
        self.lr = lr
        self.weight_decay = weight_decay
        self.noise = noise
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.new_model_l2 = new_model_l2
        self.seed = seed

    def _check_params(self) -> None:
        check_int("dim", self.dim, 1)
        check_int("batch_size", self.batch_size, 1)
        check_int("max_epochs", self.max_epochs, 1)
        check_int("patience", self.patience, 1)
        check_positive("lr", self.lr)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_positive("noise", self.noise, allow_zero=True)
        check_positive("new_model_l2", self.new_model_l2, allow_zero=True)
        check_fraction("validation_fraction", self.validation_fraction)

    # ---- fitting ----------------------------------------------------------------------------
    def fit(self, table: OutcomeTable, X: Features) -> Self:
        """Project queries; choose the epoch count on held-out prompts; refit on all."""
        self._check_params()
        scores = table_scores(table)
        X = check_features(X, table.n_prompts)
        self.projector_ = Projector(self.n_components, seed=self.seed).fit(X)
        V = self.projector_.transform(X)
        fit_idx, val_idx = validation_rows(len(V), self.validation_fraction, self.seed)
        _, curve = self._train(
            V[fit_idx], scores.rows(fit_idx), self.max_epochs, V[val_idx], scores.rows(val_idx)
        )
        self.val_curve_ = curve
        self.n_epochs_ = int(np.argmin(curve)) + 1
        params, _ = self._train(V, scores, self.n_epochs_)
        self.P_, self.c_, self.E_, self.b_ = params.arrays()
        self.models_ = scores.models
        return self

    def _init(self, d_q: int, scores: Scores) -> _Params:
        rng = np.random.default_rng(self.seed)
        prior = np.clip(scores.prior, _EPS, 1 - _EPS)
        return _Params(
            P=rng.normal(0.0, 1.0 / np.sqrt(d_q), (d_q, self.dim)),
            c=np.zeros(self.dim),
            E=rng.normal(0.0, 0.1, (len(scores.models), self.dim)),
            b=np.log(prior / (1 - prior)),
        )

    def _train(
        self,
        V: FloatMatrix,
        scores: Scores,
        epochs: int,
        V_val: FloatMatrix | None = None,
        val: Scores | None = None,
    ) -> tuple[_Params, list[float]]:
        """Minibatch Adam for ``epochs``; with a validation set, stop after ``patience``
        epochs without improvement and return the per-epoch validation losses."""
        params = self._init(V.shape[1], scores)
        arrays = params.arrays()
        adam = _Adam(arrays, self.lr, [self.weight_decay, 0.0, self.weight_decay, 0.0])
        rng = np.random.default_rng(self.seed + 1)
        W = scores.M.astype(np.float64)
        n, curve = len(V), []
        for _ in range(epochs):
            for batch in np.array_split(rng.permutation(n), max(1, n // self.batch_size)):
                Vb = V[batch]
                if self.noise:
                    Vb = Vb + rng.normal(0.0, self.noise, Vb.shape)
                adam.step(arrays, self._grads(params, Vb, scores.Y[batch], W[batch]))
            if V_val is not None and val is not None:
                curve.append(_masked_bce(params.logits(V_val), val.Y, val.M.astype(np.float64)))
                if len(curve) - 1 - int(np.argmin(curve)) >= self.patience:
                    break
        return params, curve

    @staticmethod
    def _grads(p: _Params, V: FloatMatrix, Y: FloatMatrix, W: FloatMatrix) -> list[FloatMatrix]:
        """Gradients of the mean masked cross-entropy with respect to ``P, c, E, b``."""
        H = V @ p.P + p.c
        Z = H @ p.E.T + p.b
        G = (sigmoid(Z) - Y) * W / max(float(W.sum()), 1.0)  # d loss / d Z
        dH = G @ p.E
        return [V.T @ dH, dH.sum(axis=0), G.T @ H, G.sum(axis=0)]

    # ---- prediction -------------------------------------------------------------------------
    def _embed(self, X: Features) -> FloatMatrix:
        return self.projector_.transform(check_features(X))

    def predict(self, X: Features) -> FloatMatrix:
        """``Q[n, m] = σ(e_mᵀ (P v_q + c) + b_m)``: the predicted probability of a good answer."""
        self._check_fitted()
        Z = (self._embed(X) @ self.P_ + self.c_) @ self.E_.T + self.b_
        return clip_quality(sigmoid(Z))

    # ---- new models without retraining ------------------------------------------------------
    def add_model(self, name: str, table_or_scores: OutcomeTable | Any, X: Features) -> None:
        """Add a model from its scores on a few prompts (features ``X``), everything else frozen.

        ``table_or_scores`` is a table holding a column ``name`` (rows aligned with ``X``) or one
        score per row of ``X`` (NaN = unknown). Only ``e_m`` and ``b_m`` are fitted (L-BFGS),
        minimising the same cross-entropy plus ``new_model_l2/2 · ‖(e_m, b_m) − (ē, b̄)‖²``, a
        prior at the mean of the fitted models' embeddings and biases: with few prompts the
        new model starts as the average model and moves where its scores say so.
        """
        from scipy.optimize import minimize

        self._check_fitted()
        if name in self.models_:
            raise ValueError(f"model {name!r} is already known")
        if isinstance(table_or_scores, OutcomeTable):
            y = table_or_scores.score[:, table_or_scores.model_index(name)]
        else:
            y = np.asarray(table_or_scores, dtype=np.float64).ravel()
        if y.shape[0] != X.shape[0] or y.shape[0] == 0:
            raise ValueError("add_model needs one score per prompt of X (at least one)")
        known = ~np.isnan(y)
        if not known.any():
            raise ValueError(f"no known score for {name!r}")
        if y[known].min() < 0 or y[known].max() > 1:
            raise ValueError(f"scores of {name!r} must lie in [0, 1]")
        H = (self._embed(X) @ self.P_ + self.c_)[known]
        target = y[known]
        center = np.append(self.E_.mean(axis=0), self.b_.mean())
        lam = self.new_model_l2

        def objective(theta: FloatVector) -> tuple[float, FloatVector]:
            z = H @ theta[:-1] + theta[-1]
            g = (sigmoid(z) - target) / len(z)
            diff = theta - center
            loss = _masked_bce(z, target, np.ones_like(z)) + 0.5 * lam * float(diff @ diff)
            return loss, np.append(H.T @ g, g.sum()) + lam * diff

        theta = np.asarray(minimize(objective, center.copy(), jac=True, method="L-BFGS-B").x)
        self.E_ = np.vstack([self.E_, theta[:-1]])
        self.b_ = np.append(self.b_, theta[-1])
        self.models_ = (*self.models_, name)

    # ---- state ------------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Projection, factors and the chosen epoch count."""
        self._check_fitted()
        return {
            "params": {
                "dim": self.dim,
                "n_components": self.n_components,
                "lr": self.lr,
                "weight_decay": self.weight_decay,
                "noise": self.noise,
                "batch_size": self.batch_size,
                "max_epochs": self.max_epochs,
                "patience": self.patience,
                "validation_fraction": self.validation_fraction,
                "new_model_l2": self.new_model_l2,
                "seed": self.seed,
            },
            "models": list(self.models_),
            "projector": self.projector_.get_state(),
            "P": self.P_,
            "c": self.c_,
            "E": self.E_,
            "b": self.b_,
            "n_epochs": self.n_epochs_,
            "val_curve": [float(v) for v in self.val_curve_],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild from :meth:`get_state`."""
        est = cls(**state["params"])
        est.models_ = tuple(state["models"])
        est.projector_ = Projector.from_state(state["projector"])
        est.P_ = np.asarray(state["P"], dtype=np.float64)
        est.c_ = np.asarray(state["c"], dtype=np.float64)
        est.E_ = np.asarray(state["E"], dtype=np.float64)
        est.b_ = np.asarray(state["b"], dtype=np.float64)
        est.n_epochs_ = int(state["n_epochs"])
        est.val_curve_ = [float(v) for v in state["val_curve"]]
        return est

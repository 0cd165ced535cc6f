"""Contextual bandit learners over query features: LinUCB, linear Thompson sampling, ε-greedy.

All three keep the same per-arm ridge-regression statistics (disjoint linear models, one per
model/arm), so a state can be saved, merged and switched between algorithms:

* **LinUCB** (Li, Chu, Langford & Schapire, "A contextual-bandit approach to personalized news
  article recommendation", WWW 2010, Algorithm 1): ``A_a = λ_r I + Σ x xᵀ``, ``b_a = Σ r x``,
  ``θ_a = A_a⁻¹ b_a``, choose ``argmax_a θ_aᵀx + α √(xᵀ A_a⁻¹ x)``.
* **Linear Thompson sampling** (Agrawal & Goyal, "Thompson sampling for contextual bandits with
  linear payoffs", ICML 2013): draw ``θ̃_a ~ N(θ_a, v² A_a⁻¹)`` and choose ``argmax θ̃_aᵀx``.
* **ε-greedy**: the greedy ridge estimate, a uniformly random allowed arm with probability ε.

Adaptations for LLM routing (MetaLLM, Nguyen et al. 2024; PILOT, Panda et al. 2025; MixLLM,
Wang et al. 2025 all use a linear contextual bandit with reward = quality − λ·cost):

* **Warm start**: the learner models the *residual* of a prior reward ``p_a(x)`` given by an
  offline estimator (``Q_a(x) − λ·Ĉ_a``); with no data it chooses exactly as the offline router
  does, and ``prior_strength`` (a larger ridge on the residual) sets how much evidence moving
  away from it takes ("warm-starting contextual bandits", Zhang et al., ICML 2019, adapted).
* **Non-stationarity**: discounted statistics (D-LinUCB, Russac, Vernade & Cappé, NeurIPS
  2019): at every update all arms decay toward their prior, ``A ← γA + (1−γ)A₀``,
  ``b ← γb``, so a model whose answers get worse loses traffic within about ``1/(1−γ)`` steps.
* **New arms** join with the ridge prior only: their uncertainty term is large, so UCB and
  Thompson sampling try them (the exploration bonus) without retraining the others; arms leave
  by name.
* **Budget**: arms whose expected cost exceeds the caller's per-request cap are never
  explored (the cap comes from the gateway's remaining budget, or a pacing rule offline).
* **Mergeable state**: statistics are stored as a prior plus additive increments; replicas that
  learned from different requests merge by adding their increments (exact without discount,
  a first-order approximation with it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self

import numpy as np
import numpy.typing as npt

from llmdispatch.types import FloatMatrix, FloatVector

Algorithm = Literal["linucb", "thompson", "epsilon-greedy"]
ALGORITHMS: tuple[str, ...] = ("linucb", "thompson", "epsilon-greedy")


class BanditError(ValueError):
    """A bad learner parameter or an arm/context that does not fit the learner."""


@dataclass
class LinearBandit:
    """Disjoint linear reward models, one per arm, with a choice rule (see module docstring).

    ``dim`` is the context length (the caller includes a bias column if it wants one).
    ``alpha`` scales the UCB bonus, ``noise`` the Thompson posterior, ``epsilon`` the greedy
    exploration rate; ``ridge`` is the prior precision of every arm and ``gamma`` the
    discount (1.0 = stationary). Costs are per-request means learned from the rewards' costs.
    """

    arms: list[str]
    dim: int
    algorithm: str = "linucb"
    alpha: float = 0.5
    noise: float = 0.25
    epsilon: float = 0.05
    ridge: float = 1.0
    gamma: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise BanditError(
                f"unknown bandit algorithm {self.algorithm!r}; use {', '.join(ALGORITHMS)}"
            )
        if self.dim < 1:
            raise BanditError(f"dim must be at least 1, got {self.dim}")
        if not 0.0 < self.gamma <= 1.0:
            raise BanditError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.ridge <= 0:
            raise BanditError(f"ridge must be positive, got {self.ridge}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise BanditError(f"epsilon must be in [0, 1], got {self.epsilon}")
        if len(set(self.arms)) != len(self.arms):
            raise BanditError("arm names must be unique")
        m, d = len(self.arms), self.dim
        self.A = np.tile(np.eye(d) * self.ridge, (m, 1, 1))
        self.b = np.zeros((m, d))
        self.pulls = np.zeros(m)
        self.cost_sum = np.zeros(m)
        self.cost_weight = np.zeros(m)
        self.prior_ridge = np.full(m, self.ridge)
        self._rng = np.random.default_rng(self.seed)
        self._refresh()

    # ---- arms -----------------------------------------------------------------------------
    def arm_index(self, name: str) -> int:
        """Column of an arm; a clear error names the known arms."""
        try:
            return self.arms.index(name)
        except ValueError:
            raise BanditError(f"unknown arm {name!r}; arms are {', '.join(self.arms)}") from None

    def add_arm(self, name: str, prior_cost: float | None = None) -> None:
        """A new model joins: only the ridge prior, so its uncertainty invites exploration."""
        if name in self.arms:
            raise BanditError(f"arm {name!r} already exists")
        d = self.dim
        self.arms.append(name)
        self.A = np.concatenate([self.A, (np.eye(d) * self.ridge)[None]], axis=0)
        self.b = np.concatenate([self.b, np.zeros((1, d))], axis=0)
        self.pulls = np.append(self.pulls, 0.0)
        self.cost_sum = np.append(self.cost_sum, 0.0 if prior_cost is None else prior_cost)
        self.cost_weight = np.append(self.cost_weight, 0.0 if prior_cost is None else 1.0)
        self.prior_ridge = np.append(self.prior_ridge, self.ridge)
        self._refresh()

    def remove_arm(self, name: str) -> None:
        """A model leaves; the other arms keep what they learned."""
        j = self.arm_index(name)
        keep = np.arange(len(self.arms)) != j
        self.arms.pop(j)
        for attr in ("A", "b", "pulls", "cost_sum", "cost_weight", "prior_ridge"):
            setattr(self, attr, getattr(self, attr)[keep])
        self._refresh()

    def set_prior_strength(self, strength: float) -> None:
        """Ridge of the residual model: how much evidence it takes to leave a warm start."""
        if strength <= 0:
            raise BanditError(f"prior strength must be positive, got {strength}")
        extra = strength - self.prior_ridge
        self.A += extra[:, None, None] * np.eye(self.dim)[None]
        self.prior_ridge = np.full(len(self.arms), float(strength))
        self._refresh()

    # ---- estimates --------------------------------------------------------------------------
    def _refresh(self) -> None:
        self.A_inv = np.linalg.inv(self.A)
        self.theta = np.einsum("mij,mj->mi", self.A_inv, self.b)

    def _check_context(self, X: FloatMatrix) -> FloatMatrix:
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        if X.shape[1] != self.dim:
            raise BanditError(f"context has {X.shape[1]} columns, the learner expects {self.dim}")
        return X

    def mean(self, X: FloatMatrix) -> FloatMatrix:
        """Estimated residual reward ``θ_aᵀx`` for every row and arm: ``(n, m)``."""
        X = self._check_context(X)
        return np.asarray(X @ self.theta.T, dtype=np.float64)

    def width(self, X: FloatMatrix) -> FloatMatrix:
        """Confidence width ``√(xᵀ A_a⁻¹ x)`` for every row and arm: ``(n, m)``."""
        X = self._check_context(X)
        quad = np.einsum("nd,mde,ne->nm", X, self.A_inv, X)
        return np.asarray(np.sqrt(np.maximum(quad, 0.0)), dtype=np.float64)

    def expected_cost(self, default: FloatVector | None = None) -> FloatVector:
        """Mean observed cost per arm; ``default`` where an arm has none yet."""
        base = np.zeros(len(self.arms)) if default is None else np.asarray(default, dtype=float)
        seen = self.cost_weight > 0
        out = base.copy()
        out[seen] = self.cost_sum[seen] / self.cost_weight[seen]
        return out

    # ---- decisions --------------------------------------------------------------------------
    def choose(
        self,
        x: FloatVector,
        prior: FloatVector | None = None,
        allowed: npt.NDArray[np.bool_] | None = None,
        expected_cost: FloatVector | None = None,
        cost_cap: float | None = None,
    ) -> int:
        """Pick an arm for one context.

        ``prior`` is the warm-start reward per arm (zeros when cold); ``allowed`` masks arms
        the caller forbids; arms whose ``expected_cost`` exceeds ``cost_cap`` are not
        explored (if none fits, the cheapest allowed arm is chosen).
        """
        m = len(self.arms)
        allow = np.ones(m, dtype=bool) if allowed is None else np.asarray(allowed, dtype=bool)
        if allow.shape != (m,):
            raise BanditError(f"allowed has {allow.shape[0]} entries, the learner has {m} arms")
        if not allow.any():
            raise BanditError("no arm is allowed for this request")
        if cost_cap is not None and expected_cost is not None:
            fits = allow & (np.asarray(expected_cost) <= cost_cap)
            if not fits.any():
                costs = np.where(allow, expected_cost, np.inf)
                return int(np.argmin(costs))
            allow = fits
        xr = self._check_context(x)
        base = np.zeros(m) if prior is None else np.asarray(prior, dtype=np.float64)
        if self.algorithm == "linucb":
            score = base + self.mean(xr)[0] + self.alpha * self.width(xr)[0]
        elif self.algorithm == "thompson":
            score = base + self._thompson(xr[0])
        else:
            if self._rng.random() < self.epsilon:
                return int(self._rng.choice(np.flatnonzero(allow)))
            score = base + self.mean(xr)[0]
        score = np.where(allow, score, -np.inf)
        best = np.flatnonzero(score == score.max())
        return int(best[0] if len(best) == 1 else self._rng.choice(best))

    def _thompson(self, x: FloatVector) -> FloatVector:
        # θ̃ᵀx ~ N(θᵀx, v² xᵀA⁻¹x): sampling the scalar is exact and avoids m Cholesky factors.
        mu = self.theta @ x
        sd = self.noise * np.sqrt(np.maximum(np.einsum("d,mde,e->m", x, self.A_inv, x), 0.0))
        return np.asarray(mu + sd * self._rng.standard_normal(len(mu)), dtype=np.float64)

    def update(self, arm: int, x: FloatVector, reward: float, cost: float | None = None) -> None:
        """Learn from one observed (residual) reward of ``arm`` on context ``x``."""
        if not 0 <= arm < len(self.arms):
            raise BanditError(f"arm index {arm} out of range for {len(self.arms)} arms")
        if not np.isfinite(reward):
            raise BanditError(f"reward must be finite, got {reward}")
        xv = self._check_context(x)[0]
        if self.gamma < 1.0:
            eye = np.eye(self.dim)[None] * self.prior_ridge[:, None, None]
            self.A = self.gamma * self.A + (1.0 - self.gamma) * eye
            self.b *= self.gamma
            self.cost_sum *= self.gamma
            self.cost_weight *= self.gamma
        self.A[arm] += np.outer(xv, xv)
        self.b[arm] += reward * xv
        self.pulls[arm] += 1
        if cost is not None and np.isfinite(cost):
            self.cost_sum[arm] += cost
            self.cost_weight[arm] += 1.0
        self._refresh_arm(arm)

    def _refresh_arm(self, arm: int) -> None:
        if self.gamma < 1.0:
            self._refresh()  # every arm decayed
            return
        self.A_inv[arm] = np.linalg.inv(self.A[arm])
        self.theta[arm] = self.A_inv[arm] @ self.b[arm]

    # ---- state ------------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue learning (arrays are saved as ``.npz``)."""
        return {
            "arms": list(self.arms),
            "params": {
                "dim": self.dim,
                "algorithm": self.algorithm,
                "alpha": self.alpha,
                "noise": self.noise,
                "epsilon": self.epsilon,
                "ridge": self.ridge,
                "gamma": self.gamma,
                "seed": self.seed,
            },
            "A": self.A.copy(),
            "b": self.b.copy(),
            "pulls": self.pulls.copy(),
            "cost_sum": self.cost_sum.copy(),
            "cost_weight": self.cost_weight.copy(),
            "prior_ridge": self.prior_ridge.copy(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild a learner from :meth:`get_state`."""
        learner = cls(arms=list(state["arms"]), **state["params"])
        m, d = len(learner.arms), learner.dim
        for key, shape in (
            ("A", (m, d, d)),
            ("b", (m, d)),
            ("pulls", (m,)),
            ("cost_sum", (m,)),
            ("cost_weight", (m,)),
            ("prior_ridge", (m,)),
        ):
            arr = np.asarray(state[key], dtype=np.float64)
            if arr.shape != shape:
                raise BanditError(f"bandit state field {key} has shape {arr.shape}, not {shape}")
            setattr(learner, key, arr.copy())
        learner._refresh()
        return learner

    def increments_since(self, base: LinearBandit) -> dict[str, FloatMatrix]:
        """What this learner added on top of ``base`` (same arms): the mergeable part."""
        if base.arms != self.arms or base.dim != self.dim:
            raise BanditError("increments need the same arms and context size")
        return {
            "A": self.A - base.A,
            "b": self.b - base.b,
            "pulls": self.pulls - base.pulls,
            "cost_sum": self.cost_sum - base.cost_sum,
            "cost_weight": self.cost_weight - base.cost_weight,
        }

    def apply_increments(self, inc: dict[str, FloatMatrix]) -> None:
        """Add another replica's increments (see :meth:`increments_since`)."""
        for key in ("A", "b", "pulls", "cost_sum", "cost_weight"):
            cur = getattr(self, key)
            arr = np.asarray(inc[key], dtype=np.float64)
            if arr.shape != cur.shape:
                raise BanditError(f"increment {key} has shape {arr.shape}, not {cur.shape}")
            setattr(self, key, cur + arr)
        self._refresh()


def merge_learners(base: LinearBandit, replicas: Sequence[LinearBandit]) -> LinearBandit:
    """One learner holding ``base`` plus every replica's increments since ``base``."""
    merged = LinearBandit.from_state(base.get_state())
    for replica in replicas:
        merged.apply_increments(replica.increments_since(base))
    return merged

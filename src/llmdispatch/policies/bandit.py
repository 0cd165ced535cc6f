"""``BanditRouter``: a router that keeps learning from the rewards of the requests it serves.

Context: ``[1, z(x)]`` with ``z`` a low-dimensional LSA projection of the query (the
``tfidf-svd`` encoder, fitted on the training prompts). Reward of serving query ``x`` with model
``a``: ``r = q − λ·c / c_scale`` (quality minus λ times cost, with ``c_scale`` the largest
per-model mean training cost so that λ is unit-free and comparable to the router's knob), or
a pairwise preference in the dueling variant. The learner is one of
:mod:`llmdispatch.policies.linear_bandit`'s algorithms; with ``warm_start`` it learns the
residual of an offline estimator's reward ``Q_a(x) − λ·Ĉ_a / c_scale``.

Offline, ``sweep`` replays the learner exactly as an online deployment would see the data:
the test prompts stream in a seeded random order and only the chosen model's score and cost
are revealed to it (``needs_scores`` is set so the replay can read that one entry; the
learner never sees any other). Live, ``start`` yields one attempt and remembers the context
under the request id, and ``feedback`` turns a reward posted later into an update.

Dueling variant (``feedback_preference``): when feedback compares two answers, the winner
is updated toward 1 and the loser toward 0 (the Sparring reduction of dueling bandits to two
ordinary bandits, Ailon, Karnin & Joachims, ICML 2014); ``choose_pair`` draws the two
contenders as Double Thompson Sampling does (Wu & Liu, NeurIPS 2016), adapted to contexts.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Self

import numpy as np

from llmdispatch.artifacts import component_state, restore
from llmdispatch.data.table import OutcomeTable
from llmdispatch.policies.base import Attempt, AttemptResult, Candidate, Decisions, Plan, Policy
from llmdispatch.policies.linear_bandit import BanditError, LinearBandit
from llmdispatch.query import Query
from llmdispatch.registry import REGISTRY, register
from llmdispatch.types import BoolMatrix, FloatMatrix, FloatVector

DEFAULT_LAMBDAS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5)
_PENDING_LIMIT = 100_000
#: (cold, warm) exploration defaults per parameter.
_EXPLORATION_DEFAULTS = {"alpha": (1.0, 0.1), "noise": (0.15, 0.05), "epsilon": (0.05, 0.02)}


class UnknownRequestError(KeyError):
    """Feedback for a request id the learner never served (or has forgotten)."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class PendingDecision:
    """A served request's decision, kept until its reward arrives."""

    arm: int
    context: FloatVector
    prior: float
    model: str


class LearnerStore(Protocol):
    """Shared learner statistics (see :mod:`llmdispatch.gateway.learner_state`)."""

    def init(self, name: str, learner: LinearBandit) -> None: ...
    def version(self, name: str) -> int: ...
    def load(self, name: str) -> tuple[int, LinearBandit]: ...
    def update(
        self, name: str, arm: int, x: FloatVector, reward: float, cost: float | None
    ) -> None: ...
    def put_pending(self, request_id: str, decision: PendingDecision) -> None: ...
    def pop_pending(self, request_id: str) -> PendingDecision: ...


@register("policy", "bandit")
class BanditRouter(Policy):
    """A contextual-bandit router (LinUCB, Thompson sampling or ε-greedy), optionally warm.

    Parameters
    ----------
    algorithm : ``"linucb"``, ``"thompson"`` or ``"epsilon-greedy"``.
    warm_start : name of a registered estimator whose ``Q`` is the prior (``None``: cold).
    estimator_params, encoder, encoder_params : the warm-start estimator and its encoder.
    dim : size of the bandit's LSA context (plus a bias column).
    lam : the cost weight λ used live; ``lambdas`` are swept offline.
    alpha, noise, epsilon : exploration of LinUCB, Thompson sampling and ε-greedy; ``None``
        takes the defaults below, smaller when warm (the prior already knows most of it).
        Chosen on cascades9 (train split → test stream and across benchmarks), not on the
        data sets they are reported on alone.
    gamma : discount of past statistics (1.0: stationary).
    prior_strength : ridge on the residual when warm (larger: trust the prior longer).
    budget_per_query : optional pacing cap in USD per request (exploration never exceeds it).
    calibrate : a router calibration target (e.g. ``{"quality_fraction": 0.95}``): λ is taken
        from a :class:`~llmdispatch.policies.router.Router` with the same estimator calibrated
        on the validation table, so the bandit trades cost exactly as the offline router
        does (both weigh cost by the largest per-model mean cost: the same unit-free λ).
    """

    knob_name: ClassVar[str] = "lambda"
    needs_scores: ClassVar[bool] = True

    def __init__(
        self,
        algorithm: str = "linucb",
        warm_start: str | None = None,
        estimator_params: dict[str, Any] | None = None,
        encoder: str = "tfidf",
        encoder_params: dict[str, Any] | None = None,
        dim: int = 24,
        lam: float = 0.1,
        lambdas: Sequence[float] = DEFAULT_LAMBDAS,
        alpha: float | None = None,
        noise: float | None = None,
        epsilon: float | None = None,
        gamma: float = 1.0,
        prior_strength: float = 50.0,
        budget_per_query: float | None = None,
        seed: int = 0,
        calibrate: dict[str, Any] | None = None,
    ) -> None:
        self.algorithm = algorithm
        self.warm_start = warm_start
        self.estimator_params = dict(estimator_params or {})
        self.encoder = encoder
        self.encoder_params = dict(encoder_params or {})
        self.dim = dim
        self.lam = lam
        self.lambdas = tuple(float(v) for v in lambdas)
        self.alpha = alpha
        self.noise = noise
        self.epsilon = epsilon
        self.gamma = gamma
        self.prior_strength = prior_strength
        self.budget_per_query = budget_per_query
        self.seed = seed
        self.calibrate = None if calibrate is None else dict(calibrate)
        self.calibration_: dict[str, Any] = {}
        self._pending: OrderedDict[str, PendingDecision] = OrderedDict()
        self._store: LearnerStore | None = None
        self._store_name = ""
        self._store_version = -1
        LinearBandit(
            ["probe"], 1, algorithm=algorithm, gamma=gamma, epsilon=self._default("epsilon")
        )

    # ---- fitting ----------------------------------------------------------------------------
    def fit(self, train: OutcomeTable, validation: OutcomeTable | None = None) -> Self:
        """Fit the context projection (and the warm-start estimator) on ``train``."""
        if train.n_prompts < 2:
            raise BanditError("a bandit router needs at least two training prompts")
        texts = train.full_prompts()
        n_comp = max(1, min(self.dim, train.n_prompts - 1))
        self.context_encoder_ = REGISTRY.get("encoder", "tfidf-svd")(n_components=n_comp)
        self.context_encoder_.fit(texts)
        self.models_ = train.models
        mean_cost = np.nanmean(np.where(train.known, train.cost, np.nan), axis=0)
        self.mean_cost_ = np.nan_to_num(mean_cost, nan=0.0)
        self.cost_scale_ = float(max(self.mean_cost_.max(), 1e-12))
        self.estimator_ = None
        self.quality_encoder_ = None
        if self.warm_start is not None:
            enc = REGISTRY.get("encoder", self.encoder)(**self.encoder_params).fit(texts)
            est = REGISTRY.get("estimator", self.warm_start)(**self.estimator_params)
            self.quality_encoder_ = enc
            self.estimator_ = est.fit(train, enc.encode(texts))
        self.estimator_columns_: tuple[int, ...] = tuple(range(len(self.models_)))
        if self.calibrate is not None:
            from llmdispatch.policies.router import Router

            router = Router(
                estimator=self.warm_start or "knn",
                estimator_params=self.estimator_params,
                encoder=self.encoder,
                encoder_params=self.encoder_params,
                calibrate=self.calibrate,
            ).fit(train, validation)
            self.lam = router.lam_
            self.calibration_ = router.calibration_
        self.learner_ = self._new_learner(self.lam)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "learner_"):
            raise RuntimeError("BanditRouter is not fitted; call fit() first")

    def _new_learner(self, lam: float) -> LinearBandit:
        learner = LinearBandit(
            arms=list(self.models_),
            dim=self.context_encoder_.encode(["x"]).shape[1] + 1,
            algorithm=self.algorithm,
            alpha=self._default("alpha"),
            noise=self._default("noise"),
            epsilon=self._default("epsilon"),
            gamma=self.gamma,
            seed=self.seed,
        )
        if self.estimator_ is not None:
            learner.set_prior_strength(self.prior_strength)
        return learner

    def _default(self, name: str) -> float:
        value = getattr(self, name)
        if value is not None:
            return float(value)
        return _EXPLORATION_DEFAULTS[name][self.warm_start is not None]

    # ---- features ---------------------------------------------------------------------------
    def contexts(self, texts: Sequence[str]) -> FloatMatrix:
        """Bandit contexts ``[1, z(x)]`` for these prompts."""
        z = np.asarray(self.context_encoder_.encode(list(texts)), dtype=np.float64)
        return np.hstack([np.ones((z.shape[0], 1)), z])

    def priors(self, texts: Sequence[str], lam: float) -> FloatMatrix:
        """Warm-start rewards ``Q − λ·Ĉ/c_scale`` per prompt and model (zeros when cold)."""
        n, m = len(texts), len(self.models_)
        if self.estimator_ is None or self.quality_encoder_ is None:
            return np.zeros((n, m))
        q_est = self.estimator_.predict(self.quality_encoder_.encode(list(texts)))
        cols = np.asarray(self.estimator_columns_, dtype=np.intp)
        known = cols >= 0
        q = np.empty((n, m))
        q[:, known] = q_est[:, cols[known]]
        if not known.all():
            q[:, ~known] = q[:, known].max(axis=1, keepdims=True) if known.any() else 1.0
        return np.asarray(q - lam * self.mean_cost_[None, :] / self.cost_scale_, dtype=float)

    def reward(self, quality: float, cost: float, lam: float) -> float:
        """The learner's reward for one served request."""
        return float(quality - lam * (cost if np.isfinite(cost) else 0.0) / self.cost_scale_)

    # ---- offline replay ---------------------------------------------------------------------
    def sweep(self, table: OutcomeTable, available: BoolMatrix) -> list[tuple[float, Decisions]]:
        """Stream ``table`` in a seeded random order per λ; reveal only the chosen score."""
        self._check_fitted()
        self._check_models(table)
        if (available & np.isnan(table.score)).all(axis=1).any():
            raise BanditError(
                "the bandit learns from the chosen model's score, revealed after each "
                "decision, so its replay needs the table with its scores (as `replay` passes "
                "it); this table has none on some prompt's available models"
            )
        texts = table.full_prompts()
        X = self.contexts(texts)
        order = np.random.default_rng(self.seed).permutation(table.n_prompts)
        out = []
        for lam in self.lambdas:
            prior = self.priors(texts, lam)
            chosen = self.stream(table, X, prior, available, order, lam)
            out.append((lam, Decisions.routed(chosen, table.n_models)))
        return out

    def stream(
        self,
        table: OutcomeTable,
        X: FloatMatrix,
        prior: FloatMatrix,
        available: BoolMatrix,
        order: np.ndarray,
        lam: float,
        learner: LinearBandit | None = None,
    ) -> np.ndarray:
        """One online pass over ``order``; returns the chosen model per prompt (table order)."""
        learner = learner if learner is not None else self._new_learner(lam)
        chosen = np.empty(table.n_prompts, dtype=np.intp)
        spent = 0.0
        total_budget = None
        if self.budget_per_query is not None:
            total_budget = self.budget_per_query * len(order)
        for served, i in enumerate(order):
            cap = None
            if total_budget is not None:
                # Pacing: what is left of the stream's budget, spread over what is left of it.
                cap = (total_budget - spent) / max(len(order) - served, 1)
            expected = learner.expected_cost(self.mean_cost_)
            a = learner.choose(X[i], prior[i], available[i], expected, cap)
            chosen[i] = a
            cost = float(table.cost[i, a])
            r = self.reward(float(table.score[i, a]), cost, lam)
            learner.update(a, X[i], r - prior[i, a], cost)
            spent += cost if np.isfinite(cost) else 0.0
        return chosen

    def _check_models(self, table: OutcomeTable) -> None:
        if tuple(table.models) != tuple(self.models_):
            raise BanditError(
                f"table models {list(table.models)} differ from the router's {list(self.models_)}"
            )

    # ---- live -------------------------------------------------------------------------------
    def _allowed_mask(self, allowed: frozenset[str]) -> np.ndarray:
        mask = np.array([m in allowed for m in self.models_])
        if not mask.any():
            raise BanditError(f"none of the router's models is allowed: {sorted(allowed)}")
        return mask

    def attach_store(self, store: LearnerStore, name: str) -> None:
        """Share the learner through ``store`` under ``name`` (first replica seeds it)."""
        self._check_fitted()
        store.init(name, self.learner_)
        self._store, self._store_name, self._store_version = store, name, -1
        self._sync()

    def _sync(self) -> None:
        if self._store is None:
            return
        version = self._store.version(self._store_name)
        if version != self._store_version:
            self._store_version, learner = self._store.load(self._store_name)
            if list(learner.arms) != list(self.models_):
                raise BanditError(
                    f"shared learner {self._store_name!r} has arms {learner.arms}, "
                    f"this router has {list(self.models_)}"
                )
            self.learner_ = learner

    def choose(self, query: Query, allowed: frozenset[str], request_id: str | None = None) -> str:
        """Pick a model for one live request and remember its context for feedback."""
        self._check_fitted()
        self._sync()
        x = self.contexts([query.text])[0]
        prior = self.priors([query.text], self.lam)[0]
        mask = self._allowed_mask(allowed)
        expected = self.learner_.expected_cost(self.mean_cost_)
        a = self.learner_.choose(x, prior, mask, expected, self.budget_per_query)
        if request_id is not None:
            pending = PendingDecision(
                arm=a, context=x, prior=float(prior[a]), model=self.models_[a]
            )
            if self._store is not None:
                self._store.put_pending(request_id, pending)
            else:
                self._pending[request_id] = pending
                while len(self._pending) > _PENDING_LIMIT:
                    self._pending.popitem(last=False)
        return self.models_[a]

    def start(
        self, query: Query, allowed: frozenset[str]
    ) -> Generator[Attempt, AttemptResult, str]:
        """Yield one attempt to the chosen model (request id from ``query.metadata``)."""
        model = self.choose(query, allowed, query.metadata.get("request_id"))
        result = yield Attempt(model=model, reason=f"{self.algorithm} bandit")
        return result.model

    def feedback(self, request_id: str, quality: float, cost: float | None = None) -> str:
        """Learn from a reward for a served request; returns the model that served it.

        Unknown (or already rewarded) ids raise :class:`UnknownRequestError` and change
        nothing; so does a quality outside [0, 1].
        """
        if not 0.0 <= quality <= 1.0:
            raise BanditError(f"quality must be in [0, 1], got {quality}")
        if self._store is not None:
            d = self._store.pop_pending(request_id)
        elif request_id in self._pending:
            d = self._pending.pop(request_id)
        else:
            raise UnknownRequestError(f"no pending bandit decision for request {request_id!r}")
        c = float(self.mean_cost_[d.arm]) if cost is None else cost
        residual = self.reward(quality, c, self.lam) - d.prior
        if self._store is not None:
            self._store.update(self._store_name, d.arm, d.context, residual, c)
            self._sync()
        else:
            self.learner_.update(d.arm, d.context, residual, c)
        return d.model

    def choose_pair(self, query: Query, allowed: frozenset[str]) -> tuple[str, str]:
        """Two distinct contenders for a duel (two posterior draws; needs ≥ 2 allowed)."""
        self._check_fitted()
        mask = self._allowed_mask(allowed)
        if mask.sum() < 2:
            raise BanditError("a duel needs at least two allowed models")
        x = self.contexts([query.text])[0]
        prior = self.priors([query.text], self.lam)[0]
        first = self.learner_.choose(x, prior, mask)
        mask2 = mask.copy()
        mask2[first] = False
        draws = prior + self.learner_._thompson(x)
        second = int(np.argmax(np.where(mask2, draws, -np.inf)))
        return self.models_[first], self.models_[second]

    def feedback_preference(self, query: Query, winner: str, loser: str) -> None:
        """Dueling feedback: ``winner``'s answer was preferred to ``loser``'s on ``query``."""
        self._check_fitted()
        x = self.contexts([query.text])[0]
        prior = self.priors([query.text], 0.0)[0]
        w, lo = self.learner_.arm_index(winner), self.learner_.arm_index(loser)
        if w == lo:
            raise BanditError("a preference needs two different models")
        self.learner_.update(w, x, 1.0 - prior[w])
        self.learner_.update(lo, x, 0.0 - prior[lo])

    def explain(self, query: Query, allowed: frozenset[str]) -> Plan:
        """Per-model prior, learned residual and exploration bonus, best first."""
        self._check_fitted()
        x = self.contexts([query.text])[0][None, :]
        prior = self.priors([query.text], self.lam)[0]
        mean = self.learner_.mean(x)[0]
        bonus = 0.0
        if self.algorithm == "linucb":
            bonus = self.learner_.alpha * self.learner_.width(x)[0]
        utility = prior + mean + bonus
        cands = [
            Candidate(
                model=m,
                quality=float(utility[j] + self.lam * self.mean_cost_[j] / self.cost_scale_),
                cost=float(self.mean_cost_[j]),
                utility=float(utility[j]),
                excluded=None if m in allowed else "not allowed",
            )
            for j, m in enumerate(self.models_)
        ]
        cands.sort(key=lambda c: (c.excluded is not None, -c.utility))
        ok = [c for c in cands if c.excluded is None]
        if not ok:
            raise BanditError(f"none of the router's models is allowed: {sorted(allowed)}")
        return Plan(policy="bandit", choice=ok[0].model, candidates=tuple(cands), knob=self.lam)

    # ---- models joining and leaving --------------------------------------------------------
    def add_model(self, name: str, mean_cost: float) -> None:
        """A new model joins with an exploration bonus; nothing else is retrained.

        Its prior reward is the best prior among the known models (optimism), and its
        residual starts at the ridge prior with full uncertainty, so it is tried and then
        kept or dropped on its own rewards.
        """
        self._check_fitted()
        self.learner_.add_arm(name, prior_cost=mean_cost)
        self.models_ = (*self.models_, name)
        self.mean_cost_ = np.append(self.mean_cost_, mean_cost)
        self.estimator_columns_ = (*self.estimator_columns_, -1)

    def remove_model(self, name: str) -> None:
        """A model leaves; what was learned about the others is kept."""
        self._check_fitted()
        j = self.learner_.arm_index(name)
        self.learner_.remove_arm(name)
        keep = [i for i in range(len(self.models_)) if i != j]
        self.models_ = tuple(self.models_[i] for i in keep)
        self.mean_cost_ = self.mean_cost_[keep]
        self.estimator_columns_ = tuple(self.estimator_columns_[i] for i in keep)

    # ---- artifacts --------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Constructor parameters (JSON-able)."""
        return {
            "algorithm": self.algorithm,
            "warm_start": self.warm_start,
            "estimator_params": self.estimator_params,
            "encoder": self.encoder,
            "encoder_params": self.encoder_params,
            "dim": self.dim,
            "lam": self.lam,
            "lambdas": list(self.lambdas),
            "alpha": self.alpha,
            "noise": self.noise,
            "epsilon": self.epsilon,
            "gamma": self.gamma,
            "prior_strength": self.prior_strength,
            "budget_per_query": self.budget_per_query,
            "seed": self.seed,
            "calibrate": self.calibrate,
        }

    def get_state(self) -> dict[str, Any]:
        """Fitted state, learner statistics included (JSON + arrays, no pickle)."""
        self._check_fitted()
        return {
            "params": self.params(),
            "models": list(self.models_),
            "mean_cost": self.mean_cost_,
            "cost_scale": self.cost_scale_,
            "estimator_columns": list(self.estimator_columns_),
            "context_encoder": component_state(self.context_encoder_),
            "quality_encoder": (
                None if self.quality_encoder_ is None else component_state(self.quality_encoder_)
            ),
            "estimator": None if self.estimator_ is None else component_state(self.estimator_),
            "learner": self.learner_.get_state(),
            "calibration": self.calibration_,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild a fitted bandit router from :meth:`get_state`."""
        policy = cls(**state["params"])
        policy.models_ = tuple(state["models"])
        policy.mean_cost_ = np.asarray(state["mean_cost"], dtype=np.float64)
        policy.cost_scale_ = float(state["cost_scale"])
        policy.estimator_columns_ = tuple(int(c) for c in state["estimator_columns"])
        policy.context_encoder_ = restore(state["context_encoder"])
        qe, est = state.get("quality_encoder"), state.get("estimator")
        policy.quality_encoder_ = None if qe is None else restore(qe)
        policy.estimator_ = None if est is None else restore(est)
        policy.learner_ = LinearBandit.from_state(state["learner"])
        policy.calibration_ = dict(state.get("calibration", {}))
        if list(policy.learner_.arms) != list(policy.models_):
            raise BanditError("bandit state: the learner's arms differ from the router's models")
        return policy

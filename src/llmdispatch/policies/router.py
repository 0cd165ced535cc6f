"""The router: one rule for every pre-generation paradigm.

``choose argmax_m  Q̂[x, m] − λ · Ĉ[x, m] / c̄``  over the models allowed for ``x``

``Q̂`` comes from any registered quality estimator (kNN, heads, matrix factorisation,
clusters, preference, difficulty, rules) on any registered encoder's features; ``Ĉ`` is the
expected cost before the call (:mod:`llmdispatch.policies.costs`); ``c̄`` is the largest
per-model mean cost on the training table, so ``λ`` is unit-free: ``λ = 1`` trades the whole
price of the most expensive model for one point of quality, and the same λ means the same
trade-off on every data set and for the bandits, which share the convention. Ties go to the
cheaper model. Sweeping ``λ`` traces the cost/quality curve; calibration
(:mod:`llmdispatch.policies.calibrate`) picks ``λ`` for a target on a validation split.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import Any, ClassVar, Self, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmdispatch.artifacts import component_state, restore
from llmdispatch.catalog import ModelCard
from llmdispatch.data.splits import kfold_indices, train_validation
from llmdispatch.data.table import OutcomeTable
from llmdispatch.estimators.base import QualityEstimator
from llmdispatch.evaluation.metrics import References, aiq
from llmdispatch.features.base import Encoder
from llmdispatch.features.cache import encode_with_cache
from llmdispatch.policies.base import Attempt, AttemptResult, Candidate, Decisions, Plan, Policy
from llmdispatch.policies.calibrate import CalibrationTarget, achieved, choose_lambda
from llmdispatch.policies.costs import CostModel, card_fits
from llmdispatch.policies.mixing import MixLoss, brier_loss, mix_weights
from llmdispatch.query import Query
from llmdispatch.registry import REGISTRY, register
from llmdispatch.types import BoolMatrix, Features, FloatMatrix, FloatVector, IntVector

#: ``encoder="auto"``: choose among ``encoder_candidates`` on the validation table.
AUTO = "auto"
#: ``encoder="ensemble"``: average the estimates of every candidate encoder's estimator, with
#: convex weights chosen on the validation table.
ENSEMBLE = "ensemble"
#: How the members of an ensemble or a stack are weighed (and ``auto`` chooses its encoder).
WEIGHT_METRICS = ("brier", "aiq")
#: Weight grid of an ensemble: multiples of 1/ENSEMBLE_STEPS that sum to one.
ENSEMBLE_STEPS = 10
#: Batches smaller than this are not worth splitting across threads.
PARALLEL_MIN_QUERIES = 256
#: Fewer live queries than this are estimated one by one: the one-row path is faster
#: (default kNN on cascades9: 4 queries cost 405 µs each in a batch, 422 µs alone; 16 cost 220).
PREFETCH_MIN_QUERIES = 4

#: Unit-free λ values swept offline: 0 (quality only) up to "cheapest model always".
DEFAULT_LAMBDAS: tuple[float, ...] = (0.0, *np.geomspace(1e-3, 1e3, 61).round(6).tolist())


_T = TypeVar("_T")
_R = TypeVar("_R")


def resolve_jobs(n_jobs: int) -> int:
    """Threads for ``n_jobs``: itself, or with ``-1`` the cores this process may use."""
    if n_jobs != -1:
        return n_jobs
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere every core
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


class RouterError(ValueError):
    """A router that cannot be built or asked (bad names, no allowed model)."""


class MemberSpec(BaseModel):
    """One member of a stacked router: an estimator on an encoder."""

    model_config = ConfigDict(extra="forbid")

    estimator: str
    estimator_params: dict[str, Any] = Field(default_factory=dict)
    encoder: str = "tfidf"
    encoder_params: dict[str, Any] = Field(default_factory=dict)
    name: str | None = Field(default=None, description="label (default: estimator@encoder)")

    @property
    def label(self) -> str:
        """How reports name the member."""
        return self.name or f"{self.estimator}@{self.encoder}"


@register("policy", "router")
class Router(Policy):
    """Pre-generation router: encoder → quality estimator → ``argmax Q − λ·Ĉ``.

    Parameters
    ----------
    estimator, estimator_params : a registered estimator name and its constructor arguments.
    encoder, encoder_params : a registered encoder name and its constructor arguments.
    lambdas : the unit-free λ values ``sweep`` replays (default: 0 and 61 values 1e-3…1e3).
    lam : the λ used live when no calibration target is given (default 0: best quality).
    calibrate : a target such as ``{"quality_fraction": 0.95}`` or
        ``{"cost_per_query": 0.002}``; λ is chosen on the validation table passed to ``fit``
        (or a 25 % validation split of the training table when none is given).
    allow : only these models may be chosen (``None``: all).
    cache_encodings : encode tables through the on-disk encoding cache (worth it for slow
        encoders such as MiniLM, which ``bench`` would otherwise re-embed on every run).
    encoder_candidates : with ``encoder="auto"``, the encoders tried; the one whose quality
        estimates score best on the validation table is kept (the choice is
        made on validation, never on test). With ``encoder="ensemble"``, one estimator is
        fitted per candidate and ``Q̂`` is their weighted mean, the convex weights (multiples
        of 1/10) that score best on validation; a candidate whose weight is 0 is
        dropped. Two views of a prompt (hashed n-grams, MiniLM) err differently, and their
        mean is often better calibrated than either.
    members : a stacked router: a list of :class:`MemberSpec` (``estimator``,
        ``estimator_params``, ``encoder``, ``encoder_params``), each fitted on the training
        table; ``Q̂`` is their convex mix with the weights that score best on validation
        (ensemble selection, Caruana et al. 2004: the exact grid of tenths while it
        has at most 10,000 points, greedy forward selection with replacement beyond).
        Paradigms err apart (a kNN's neighbourhood average, a factorisation's model
        embedding), so the mix can be better than its best member. ``estimator`` and
        ``encoder`` are then unused (leave them at their defaults).
    weight_folds : with ``K >= 2``, ``auto``'s encoder and the weights of an ensemble or a
        stack are chosen on more rows: out-of-fold estimates of the whole training table
        (each member refitted on ``K - 1`` folds and asked about the held-out one, as in
        stacked generalisation, Wolpert 1992, and the super learner, van der Laan et al.
        2007) together with the validation table's estimates; the members that are kept are
        still those fitted on the whole training table. Costs ``K`` extra fits per member.
        ``0``: validation only.
    refit : once the encoder, the members' weights and λ have been chosen on the validation
        table, fit the kept members again on the training and validation tables together
        (as scikit-learn's searches refit their best estimator), so the router that is kept
        has learnt from every labelled prompt; the choices and λ stay as made. A single
        estimator with nothing to choose on validation is fitted once, on both tables.
    weight_metric : what "scores best" means for ``auto``, an ensemble and a stack:
        ``"brier"`` (default), the Brier score of the (mixed) estimates; ``"aiq"``, the area
        under the cost/quality curve the router itself traces on the validation rows with
        those estimates (its λ sweep), which judges members by the decisions they lead to
        rather than by their calibration, so a member with well-ranked but badly scaled
        estimates can still earn weight.
    n_jobs : threads that fit the members of an ensemble or a stack side by side (and the
        out-of-fold copies of ``weight_folds``, and the refit); ``-1``: one per available
        core. The fits are numpy, BLAS and scikit-learn calls that mostly release the GIL,
        and each member is fitted exactly as alone, so the router is the same whatever
        ``n_jobs`` is (``benchmarks/bench_training.py`` measures the gain).

    Examples
    --------
    Both models are right on their own topic; ``large`` is right on both but costs 100×:

    >>> from llmdispatch import Query, from_records
    >>> table = from_records(
    ...     {"id": str(i),
    ...      "prompt": f"integral of x^{i} dx" if i % 2 else f"a poem about the sea, verse {i}",
    ...      "outcomes": {"math": {"score": i % 2, "cost_usd": 1e-5},
    ...                   "poet": {"score": 1 - i % 2, "cost_usd": 1e-5},
    ...                   "large": {"score": 1, "cost_usd": 1e-3}}}
    ...     for i in range(60))
    >>> query = Query.from_text("integral of x^9 dx")
    >>> Router(lam=0.0).fit(table).explain(query).choice   # quality alone: the sure model
    'large'
    >>> Router(lam=1.0).fit(table).explain(query).choice   # quality − cost: the specialist
    'math'
    """

    knob_name: ClassVar[str] = "lambda"

    def __init__(
        self,
        estimator: str = "knn",
        estimator_params: dict[str, Any] | None = None,
        encoder: str = "tfidf",
        encoder_params: dict[str, Any] | None = None,
        lambdas: Sequence[float] | None = None,
        lam: float | None = None,
        calibrate: CalibrationTarget | dict[str, Any] | None = None,
        allow: Sequence[str] | None = None,
        cache_encodings: bool = False,
        encoder_candidates: Sequence[str] = ("tfidf", "minilm"),
        members: Sequence[MemberSpec | Mapping[str, Any]] | None = None,
        weight_folds: int = 0,
        refit: bool = False,
        weight_metric: str = "brier",
        n_jobs: int = 1,
    ) -> None:
        self.estimator = estimator
        self.estimator_params = dict(estimator_params or {})
        self.encoder = encoder
        self.encoder_params = dict(encoder_params or {})
        self.lambdas = tuple(
            float(v) for v in (lambdas if lambdas is not None else DEFAULT_LAMBDAS)
        )
        if not self.lambdas or min(self.lambdas) < 0:
            raise RouterError("lambdas must be a non-empty list of values >= 0")
        if lam is not None and lam < 0:
            raise RouterError(f"lam must be >= 0, got {lam}")
        self.lam = lam
        self.calibrate = (
            None
            if calibrate is None
            else calibrate
            if isinstance(calibrate, CalibrationTarget)
            else CalibrationTarget.model_validate(calibrate)
        )
        self.allow = tuple(allow) if allow is not None else None
        self.cache_encodings = cache_encodings
        self.encoder_candidates = tuple(encoder_candidates)
        self.members = None if members is None else [_member_spec(m) for m in members]
        if weight_folds < 0 or weight_folds == 1:
            raise RouterError(
                f"weight_folds must be 0 (validation only) or >= 2, got {weight_folds}"
            )
        self.weight_folds = weight_folds
        self.refit = refit
        if weight_metric not in WEIGHT_METRICS:
            raise RouterError(
                f"weight_metric must be one of {list(WEIGHT_METRICS)}, got {weight_metric!r}"
            )
        self.weight_metric = weight_metric
        if n_jobs == 0 or n_jobs < -1:
            raise RouterError(f"n_jobs must be >= 1 or -1 (one per core), got {n_jobs}")
        self.n_jobs = n_jobs
        if self.members is not None:
            if not self.members:
                raise RouterError("members must name at least one estimator")
            labels = [m.label for m in self.members]
            if len(set(labels)) < len(labels):
                raise RouterError(f"members need distinct names (give `name`); got {labels}")
        # Fail early on unknown names, with the registry's list of known ones.
        for spec in self.member_specs():
            REGISTRY.get("estimator", spec.estimator)
            REGISTRY.get("encoder", spec.encoder)

    def member_specs(self) -> list[MemberSpec]:
        """What is fitted: the stacked members, one estimator per candidate encoder
        (``auto``/``ensemble``), or the single estimator on its encoder."""
        if self.members is not None:
            return list(self.members)
        if self.encoder in (AUTO, ENSEMBLE):
            return [
                MemberSpec(
                    estimator=self.estimator,
                    estimator_params=self.estimator_params,
                    encoder=name,
                    name=name,
                )
                for name in self.encoder_candidates
            ]
        return [
            MemberSpec(
                estimator=self.estimator,
                estimator_params=self.estimator_params,
                encoder=self.encoder,
                encoder_params=self.encoder_params,
            )
        ]

    # ---- fitting ----------------------------------------------------------------------------
    def fit(self, train: OutcomeTable, validation: OutcomeTable | None = None) -> Self:
        """Fit encoder, estimator and cost model on ``train``; calibrate λ on ``validation``."""
        if train.n_prompts < 2:
            raise RouterError("a router needs at least two training prompts")
        if self.calibrate is not None and self.calibrate.kind != "lambda" and validation is None:
            train, validation = train_validation(train)
        if self.allow is not None:
            unknown = sorted(set(self.allow) - set(train.models))
            if unknown:
                raise RouterError(f"allow names unknown models {unknown}; known: {train.models}")
        self.models_ = tuple(train.models)
        specs = self.member_specs()
        calibrates = self.calibrate is not None and self.calibrate.kind != "lambda"
        merged = False
        if self.refit and validation is not None and len(specs) == 1 and not calibrates:
            # Nothing is chosen on validation: one fit on both is what the refit would give.
            train, validation, merged = train.concat(validation), None, True
        if len(specs) > 1:
            if validation is None:
                train, validation = train_validation(train)
            self._set_members(*self._select_members(specs, train, validation))
        else:
            self._set_members([self._fit_member(specs[0], train, train.full_prompts())], [1.0])
        unknown = sorted({m for _, est in self.members_ for m in est.models_} - set(self.models_))
        if unknown:
            raise RouterError(f"the estimator predicts models {unknown} the table does not have")
        self.cards_ = {name: train.card(name) for name in self.models_}
        self.costs_ = CostModel().fit(train)
        self.cost_scale_ = self.costs_.cost_scale
        means = train.mean_score()
        self.strongest_ = int(np.nanargmax(np.where(np.isnan(means), -np.inf, means)))
        self.trained_on_ = {
            "table": train.name,
            "prompts": int(train.n_prompts),
            "datasets": sorted({str(d) for d in train.datasets}),
            "models": list(self.models_),
            "encoder": self.encoder_.registry_name,
            "member_scores": dict(getattr(self, "member_scores_", {})),
            "member_weights": dict(zip(self.member_labels_, self.weights_.tolist(), strict=True)),
        }
        self.lam_ = float(self.lam) if self.lam is not None else 0.0
        self.calibration_: dict[str, Any] = {}
        if self.calibrate is not None:
            self._calibrate(self.calibrate, validation)
        if merged:
            self.trained_on_["refit_prompts"] = int(train.n_prompts)
        elif self.refit and validation is not None:
            self._refit(train.concat(validation))
        return self

    def _refit(self, table: OutcomeTable) -> None:
        """Each kept member fitted again, from its spec, on ``table``; weights unchanged."""
        specs = self.member_specs()
        by_label = {spec.label: spec for spec in specs}
        chosen = specs if len(specs) == 1 else [by_label[lb] for lb in self.member_labels_]
        texts = table.full_prompts()
        refitted = self._map(lambda spec: self._fit_member(spec, table, texts), chosen)
        self._set_members(refitted, self.weights_.tolist(), list(self.member_labels_))
        self.trained_on_["refit_prompts"] = int(table.n_prompts)

    def _fit_member(
        self, spec: MemberSpec, train: OutcomeTable, texts: list[str]
    ) -> tuple[Encoder, QualityEstimator]:
        encoder: Encoder = REGISTRY.get("encoder", spec.encoder)(**spec.encoder_params).fit(texts)
        est: QualityEstimator = REGISTRY.get("estimator", spec.estimator)(**spec.estimator_params)
        X = encode_with_cache(encoder, texts) if self.cache_encodings else encoder.encode(texts)
        return encoder, est.fit(train, X)

    def _map(self, fn: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
        """``fn`` of every item, on up to ``n_jobs`` threads; results in the items' order."""
        threads = min(len(items), resolve_jobs(self.n_jobs))
        if threads <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(fn, items))

    def _set_members(
        self,
        members: list[tuple[Encoder, QualityEstimator]],
        weights: Sequence[float],
        labels: Sequence[str] | None = None,
    ) -> None:
        """Keep the members with positive weight; the heaviest is ``encoder_``/``estimator_``
        (what a single-encoder router has, and what reports name)."""
        if labels is None:
            labels = [_default_label(enc, est) for enc, est in members]
        kept = [
            (m, float(w), label)
            for m, w, label in zip(members, weights, labels, strict=True)
            if w > 0
        ]
        kept.sort(key=lambda mwl: -mwl[1])
        self.members_ = [m for m, _, _ in kept]
        self.member_labels_ = [label for _, _, label in kept]
        self.weights_ = np.array([w for _, w, _ in kept]) / sum(w for _, w, _ in kept)
        self.encoder_, self.estimator_ = self.members_[0]
        self.__dict__.pop("_allow_cache", None)

    def _select_members(
        self, specs: list[MemberSpec], train: OutcomeTable, validation: OutcomeTable
    ) -> tuple[list[tuple[Encoder, QualityEstimator]], list[float], list[str]]:
        """Each member fitted on ``train`` and scored by ``weight_metric`` on ``validation``
        (with ``weight_folds``, on out-of-fold estimates of ``train`` too);
        ``encoder="auto"`` keeps the best one, an ensemble or a stack the convex weights
        whose mixture scores best."""
        texts, val_texts = train.full_prompts(), validation.full_prompts()

        def fit_and_ask(spec: MemberSpec) -> tuple[Encoder, QualityEstimator, FloatMatrix]:
            encoder, est = self._fit_member(spec, train, texts)
            return (
                encoder,
                est,
                self._full(est.predict(self._encode_texts(encoder, val_texts)), est),
            )

        fitted = self._map(fit_and_ask, specs)
        members = [(encoder, est) for encoder, est, _ in fitted]
        predictions = [estimates for _, _, estimates in fitted]
        admitted = self._admitted(members)
        loss = self._mix_loss(train, validation, admitted)
        if self.weight_folds:
            # Judged on out-of-fold estimates of the training rows as well as on validation.
            out_of_fold = self._out_of_fold(specs, train)
            predictions = [np.vstack([o, q]) for o, q in zip(out_of_fold, predictions, strict=True)]
            loss = self._mix_loss(train, train.concat(validation), admitted)
        losses = [loss(q) for q in predictions]
        # Reported as the metric itself (Brier: lower is better; AIQ: higher is better).
        sign = -1.0 if self.weight_metric == "aiq" else 1.0
        self.member_scores_: dict[str, float] = {
            spec.label: sign * value for spec, value in zip(specs, losses, strict=True)
        }
        if self.members is None and self.encoder == AUTO:
            weights = np.eye(len(members))[int(np.argmin(losses))]
        else:
            weights = mix_weights(predictions, loss, ENSEMBLE_STEPS)
        return members, weights.tolist(), [spec.label for spec in specs]

    def _mix_loss(
        self, train: OutcomeTable, rows: OutcomeTable, admitted: npt.NDArray[np.bool_]
    ) -> MixLoss:
        """How a mix of estimates of ``rows`` is scored (lower is better): its Brier score,
        or with ``weight_metric="aiq"`` minus the AIQ of the router's λ sweep over ``rows``
        with that mix as ``Q̂`` (costs expected by a cost model fitted on ``train``; only the
        ``admitted`` models may be chosen, as live)."""
        truth = np.nan_to_num(rows.score)
        if self.weight_metric == "brier":
            return brier_loss(truth, rows.known)
        has_outcome = rows.known.any(axis=1)
        known, truth = rows.known[has_outcome], truth[has_outcome]
        cost = np.nan_to_num(rows.cost[has_outcome])
        costs = CostModel().fit(train)
        expected = costs.for_table(rows.blind())[has_outcome]
        scale = costs.cost_scale
        allowed = known & admitted[None, :]
        refs = References.from_matrices(
            tuple(rows.models), np.where(known, truth, np.nan), np.where(known, cost, np.nan)
        )
        picked = np.arange(len(truth))

        def loss(q: FloatMatrix) -> float:
            q = q[has_outcome]
            choices = [self.choose(q, expected, allowed, lam, scale) for lam in self.lambdas]
            quality = np.array([truth[picked, c].mean() for c in choices])
            spent = np.array([cost[picked, c].mean() for c in choices])
            return -aiq(spent, quality, refs)

        return loss

    def _out_of_fold(self, specs: list[MemberSpec], train: OutcomeTable) -> list[FloatMatrix]:
        """Each member's estimates of every training row by a copy fitted without that row's
        fold (``weight_folds`` shuffled folds, the same folds for every member)."""
        if train.n_prompts < 2 * self.weight_folds:
            raise RouterError(
                f"weight_folds={self.weight_folds} needs at least {2 * self.weight_folds} "
                f"training prompts (two per fold); the table has {train.n_prompts}"
            )
        texts = train.full_prompts()
        folds = list(kfold_indices(train.n_prompts, self.weight_folds))
        parts = [
            (train.take(fit_rows), [texts[r] for r in fit_rows], [texts[r] for r in held_rows])
            for fit_rows, held_rows in folds
        ]

        def held_out(job: tuple[int, int]) -> FloatMatrix:
            fold, i = job
            part, part_texts, held_texts = parts[fold]
            encoder, est = self._fit_member(specs[i], part, part_texts)
            return self._full(est.predict(self._encode_texts(encoder, held_texts)), est)

        jobs = [(fold, i) for fold in range(len(folds)) for i in range(len(specs))]
        out = [np.zeros((train.n_prompts, len(self.models_))) for _ in specs]
        for (fold, i), estimates in zip(jobs, self._map(held_out, jobs), strict=True):
            out[i][folds[fold][1]] = estimates
        return out

    def _calibrate(self, target: CalibrationTarget, validation: OutcomeTable | None) -> None:
        if target.kind == "lambda" or validation is None:
            self.lam_ = target.value if target.kind == "lambda" else self.lam_
            self.calibration_ = {"target": target.model_dump(), "lambda": self.lam_}
            return
        sweep = self.sweep(validation.blind(), validation.known)
        self.lam_, found = choose_lambda(target, validation, sweep, self.strongest_)
        self.calibration_ = {
            "target": target.model_dump(),
            "lambda": self.lam_,
            "validation": {k: float(v) for k, v in found.items()},
            "validation_prompts": int(validation.n_prompts),
        }

    def check_calibration(self, table: OutcomeTable) -> dict[str, float]:
        """The calibration target's figure achieved at the chosen λ on ``table`` (e.g. test)."""
        self._check_fitted()
        if self.calibrate is None:
            raise RouterError("this router has no calibration target")
        d = self.decide_table(table.blind(), table.known, self.lam_)
        return achieved(self.calibrate, table, d, self.strongest_)

    def _check_fitted(self) -> None:
        if not hasattr(self, "estimator_"):
            raise RuntimeError("Router is not fitted; call fit() first")

    # ---- estimates --------------------------------------------------------------------------
    def quality_table(self, table: OutcomeTable) -> FloatMatrix:
        """``Q̂`` for every prompt of a table."""
        self._check_fitted()
        self._check_models(table.models)
        texts = table.full_prompts()
        return self._mix(
            [
                self._full(est.predict(self._encode_texts(enc, texts)), est)
                for enc, est in self.members_
            ]
        )

    def _encode_texts(self, encoder: Encoder, texts: list[str]) -> Features:
        if self.cache_encodings:
            return encode_with_cache(encoder, texts)
        return encoder.encode(texts)

    def _mix(self, estimates: list[FloatMatrix]) -> FloatMatrix:
        """The members' estimates weighted (one member: its own, untouched)."""
        if len(estimates) == 1:
            return estimates[0]
        return np.asarray(sum(w * q for w, q in zip(self.weights_, estimates, strict=True)))

    def quality(self, queries: Sequence[Query], n_jobs: int = 1) -> FloatMatrix:
        """``Q̂`` for live queries; ``n_jobs`` threads share a large batch (encoding and
        estimation are numpy and BLAS calls that release the GIL)."""
        self._check_fitted()
        if n_jobs < 1:
            raise RouterError(f"n_jobs must be >= 1, got {n_jobs}")
        if len(queries) == 1:
            ahead = queries[0].estimates.get(id(self))
            if ahead is not None:
                return np.asarray(ahead)[None, :]
            one = self._quality_one(queries[0])
            if one is not None:
                return one[None, :]
        queries = list(queries)
        if n_jobs == 1 or len(queries) < PARALLEL_MIN_QUERIES:
            return self._quality_batch(queries)
        self.warm()  # lazily built caches, built once before the threads share them
        bounds = np.linspace(0, len(queries), 4 * n_jobs + 1).astype(int)
        with ThreadPoolExecutor(n_jobs) as pool:
            parts = pool.map(self._quality_batch, [queries[a:b] for a, b in pairwise(bounds)])
            return np.vstack(list(parts))

    def prefetches(self) -> bool:
        """A router's estimates are worth computing ahead in batches."""
        return True

    def prefetch(self, queries: Sequence[Query]) -> None:
        """``Q̂`` of ``queries`` in one batch, left in each query's ``estimates`` for
        :meth:`explain` (fewer than :data:`PREFETCH_MIN_QUERIES` are left to the one-row
        path, which is faster for them)."""
        todo = [q for q in queries if id(self) not in q.estimates]
        if len(todo) < PREFETCH_MIN_QUERIES:
            return
        for query, row in zip(todo, self.quality(todo), strict=True):
            query.estimates[id(self)] = row

    def _quality_batch(self, queries: list[Query]) -> FloatMatrix:
        return self._mix(
            [
                self._full(est.predict(enc.encode_queries(queries)), est)
                for enc, est in self.members_
            ]
        )

    def _quality_one(self, query: Query) -> FloatVector | None:
        """``Q̂`` of one live query through the encoder's and estimator's one-row path (no
        sparse matrix is built; the same numbers as the batch call), or ``None`` when either
        has none."""
        rows: list[FloatMatrix] = []
        for encoder, est in self.members_:
            predict_row = getattr(est, "predict_row", None)
            if predict_row is None:
                return None
            row = encoder.encode_query_row(query)
            if row is None:
                return None
            rows.append(self._full(np.asarray(predict_row(row))[None, :], est))
        q: FloatVector = self._mix(rows)[0]
        return q

    def _full(self, q: FloatMatrix, estimator: QualityEstimator) -> FloatMatrix:
        """``estimator``'s estimates in the router's model order; models it does not cover get
        0 and are left out of the choice (e.g. Hybrid LLM's classifier covers one pair)."""
        names = tuple(estimator.models_)
        if names == self.models_:
            return q
        out = np.zeros((q.shape[0], len(self.models_)))
        for j, name in enumerate(names):
            out[:, self.models_.index(name)] = q[:, j]
        return out

    def expected_cost(self, queries: Sequence[Query]) -> FloatMatrix:
        """``Ĉ`` in USD for live queries."""
        self._check_fitted()
        return self.costs_.for_queries(queries)

    def _allow_mask(self) -> npt.NDArray[np.bool_]:
        """Models every member estimates and the allow-list admits (cached: read per request)."""
        key = (self.models_, self.allow)  # _set_members drops the cache
        cached = getattr(self, "_allow_cache", None)
        if cached is None or cached[0] != key:
            cached = self._allow_cache = (key, self._admitted(self.members_))
        return cached[1]

    def _admitted(
        self, members: Sequence[tuple[Encoder, QualityEstimator]]
    ) -> npt.NDArray[np.bool_]:
        """Models every one of ``members`` estimates (a mix is only defined there) and the
        allow-list admits."""
        names = np.array(self.models_)
        covered = np.ones(len(names), dtype=bool)
        for _, est in members:
            covered &= np.isin(names, np.array(est.models_))
        if self.allow is not None:
            covered &= np.isin(names, np.array(self.allow))
        return covered

    @staticmethod
    def choose(
        Q: FloatMatrix, C: FloatMatrix, allowed: BoolMatrix, lam: float, scale: float
    ) -> IntVector:
        """``argmax Q − λ·C/scale`` per row over allowed models; ties go to the cheaper one."""
        utility = Q - lam * C / scale
        # Tie-break on cost: a tiny term well below any estimator's resolution.
        utility = utility - 1e-9 * C / scale
        utility = np.where(allowed, utility, -np.inf)
        choice = np.asarray(utility.argmax(axis=1), dtype=np.intp)
        none = ~allowed.any(axis=1)
        if none.any():
            raise RouterError(f"{int(none.sum())} queries have no allowed model")
        return choice

    # ---- offline ----------------------------------------------------------------------------
    def decide_table(self, table: OutcomeTable, available: BoolMatrix, lam: float) -> Decisions:
        """Decisions at one λ for every prompt of a (blinded) table."""
        Q = self.quality_table(table)
        C = self.costs_.for_table(table)
        allowed = available & self._allow_mask()[None, :]
        return Decisions.routed(self.choose(Q, C, allowed, lam, self.cost_scale_), table.n_models)

    def sweep(self, table: OutcomeTable, available: BoolMatrix) -> list[tuple[float, Decisions]]:
        """One routed decision per prompt for each λ in ``lambdas``."""
        Q = self.quality_table(table)
        C = self.costs_.for_table(table)
        allowed = available & self._allow_mask()[None, :]
        return [
            (lam, Decisions.routed(self.choose(Q, C, allowed, lam, self.cost_scale_), len(Q[0])))
            for lam in self.lambdas
        ]

    def _check_models(self, models: Sequence[str]) -> None:
        if tuple(models) != self.models_:
            raise RouterError(
                f"the table's models {list(models)} differ from the router's {list(self.models_)}"
            )

    # ---- live -------------------------------------------------------------------------------
    def explain(self, query: Query, allowed: frozenset[str] | None = None) -> Plan:
        """Per-model quality, expected cost and utility, best first; excluded models last."""
        self._check_fitted()
        q = self.quality([query])[0].tolist()
        c = self.costs_.for_query(query).tolist()
        allow_list = self._allow_mask().tolist()
        lam, scale = self.lam_, self.cost_scale_
        candidates: list[Candidate] = []
        for j, name in enumerate(self.models_):
            reason = None
            if allowed is not None and name not in allowed:
                reason = "not allowed for this request"
            elif not allow_list[j]:
                reason = "not in the allow-list or not covered by the estimator"
            else:
                reason = card_fits(self.cards_[name], query)
            utility = q[j] - lam * c[j] / scale
            candidates.append(Candidate(name, q[j], c[j], utility, reason))
        ok = sorted(
            (c for c in candidates if c.excluded is None), key=lambda c: (-c.utility, c.cost)
        )
        if not ok:
            reasons = "; ".join(f"{c.model}: {c.excluded}" for c in candidates)
            raise RouterError(f"no model can take this request ({reasons})")
        excluded = [c for c in candidates if c.excluded is not None]
        return Plan(
            policy=self.label or "router",
            choice=ok[0].model,
            candidates=(*ok, *excluded),
            knob=self.lam_,
        )

    def start(
        self, query: Query, allowed: frozenset[str]
    ) -> Generator[Attempt, AttemptResult, str]:
        """Call the best allowed model once; its answer is the reply."""
        plan = self.explain(query, allowed)
        best = plan.candidates[0]
        result = yield Attempt(
            model=plan.choice,
            reason=f"router: Q={best.quality:.3f}, cost≈${best.cost:.6f}, λ={self.lam_:g}",
            quality=best.quality,
            cost=best.cost,
        )
        return result.model

    # ---- state ------------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Parameters, fitted encoder, estimator and cost model, λ and calibration."""
        self._check_fitted()
        return {
            "params": {
                "estimator": self.estimator,
                "estimator_params": self.estimator_params,
                "encoder": self.encoder,
                "encoder_params": self.encoder_params,
                "lambdas": list(self.lambdas),
                "lam": self.lam,
                "calibrate": None if self.calibrate is None else self.calibrate.model_dump(),
                "allow": None if self.allow is None else list(self.allow),
                "cache_encodings": self.cache_encodings,
                "encoder_candidates": list(self.encoder_candidates),
                "weight_folds": self.weight_folds,
                "refit": self.refit,
                "weight_metric": self.weight_metric,
                "n_jobs": self.n_jobs,
                "members": (
                    None
                    if self.members is None
                    else [m.model_dump(exclude_none=True) for m in self.members]
                ),
            },
            "label": self.label,
            **self._members_state(),
            "costs": self.costs_.get_state(),
            "cards": {name: card.model_dump(mode="json") for name, card in self.cards_.items()},
            "models": list(self.models_),
            "cost_scale": self.cost_scale_,
            "strongest": self.strongest_,
            "lam": self.lam_,
            "calibration": self.calibration_,
            "trained_on": self.trained_on_,
        }

    def _members_state(self) -> dict[str, Any]:
        """One encoder and estimator, or an ensemble's members with their weights."""
        if len(self.members_) == 1:
            return {
                "encoder": component_state(self.encoder_),
                "estimator": component_state(self.estimator_),
            }
        return {
            "members": [
                {
                    "encoder": component_state(enc),
                    "estimator": component_state(est),
                    "weight": w,
                    "label": label,
                }
                for (enc, est), w, label in zip(
                    self.members_, self.weights_.tolist(), self.member_labels_, strict=True
                )
            ]
        }

    def warm(self) -> None:
        """Warm every member's estimator (the kNN's similarity index)."""
        self._check_fitted()
        for _, est in self.members_:
            est.warm()

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild a fitted router from :meth:`get_state`."""
        router = cls(**state["params"])
        router.label = state.get("label", "")
        if state.get("members"):
            nodes = state["members"]
            members = [(restore(m["encoder"]), restore(m["estimator"])) for m in nodes]
            labels = [
                m.get("label") or _default_label(*pair)
                for m, pair in zip(nodes, members, strict=True)
            ]
            router._set_members(members, [float(m["weight"]) for m in nodes], labels)
        else:
            router._set_members([(restore(state["encoder"]), restore(state["estimator"]))], [1.0])
        router.costs_ = CostModel.from_state(state["costs"])
        router.cards_ = {n: ModelCard.model_validate(c) for n, c in state["cards"].items()}
        router.models_ = tuple(state["models"])
        router.cost_scale_ = float(state["cost_scale"])
        router.strongest_ = int(state["strongest"])
        router.lam_ = float(state["lam"])
        router.calibration_ = dict(state["calibration"])
        router.trained_on_ = dict(state["trained_on"])
        return router


def _member_spec(member: MemberSpec | Mapping[str, Any]) -> MemberSpec:
    if isinstance(member, MemberSpec):
        return member
    if not isinstance(member, Mapping):
        raise RouterError(f"a router member is a mapping with an `estimator`, got {member!r}")
    try:
        return MemberSpec.model_validate(dict(member))
    except ValidationError as exc:
        why = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise RouterError(f"bad router member {member!r}: {why}") from None


def _default_label(encoder: Encoder, estimator: QualityEstimator) -> str:
    return f"{estimator.registry_name}@{encoder.registry_name}"

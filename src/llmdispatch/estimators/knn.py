"""Similarity-weighted k-nearest-neighbour quality estimator (the baseline to beat).

References
----------
Shnitzer et al., "Large Language Model Routing with Benchmark Datasets", arXiv:2309.15789
(2023): a kNN correctness predictor per model on sentence embeddings. Hu et al.,
"RouterBench", arXiv:2403.12031 (2024), and LLMRouterBench (2026) use it as the baseline that
most learned routers only tie.

Formula, with cosine similarity ``s_j`` of the query to training prompt ``j``, its ``k``
nearest neighbours ``N_k(x)``, known-score mask ``M``, scores ``y`` and the model's mean
training score ``ȳ_m``::

    Q(x, m) = (Σ_{j∈N_k(x)} w_j M_jm y_jm + α ȳ_m) / (Σ_{j∈N_k(x)} w_j M_jm + α)
    w_j = max(s_j, 0)              (temperature None)
    w_j = exp((s_j − 1) / τ)       (temperature τ)

Adapted: the pseudo-count ``α`` shrinks towards ``ȳ_m`` when the neighbours are dissimilar or
lack a score for ``m`` (unknown scores are masked, never read as 0). ``k``, ``τ`` and ``α``
are chosen by leave-one-out on the training rows: neighbours are found once at the largest
``k`` of the grid and every ``(k, τ, α)`` is scored from running sums over them.

Sparse features (hashed TF-IDF, 2²⁰ columns) are searched in a low-rank space by default:
an ``n_components``-dimensional LSA projection (Deerwester et al., 1990; see
:class:`~llmdispatch.features.lsa.LsaProjection`) fitted on the training rows, as approximate
nearest-neighbour indexes reduce dimension before searching (e.g. FAISS's PCA pre-transform).
One query then costs a dense product with the training rows instead of gathering posting
lists of thousands of n-grams: several times faster, with a bounded worst case.
``n_components=None`` searches the sparse rows exactly, and ``"auto"`` picks by leave-one-out;
``llmdispatch bench`` runs the default and the exact search side by side
(``router-knn-tfidf``, ``router-knn-exact``).

Optional supervised neighbourhoods (``supervised_components``, dense features only): the
cosine of two prompts' embeddings says how alike they read, not how alike the models do on
them. Partial least squares (Wold, 1975) finds the ``c`` directions of the embedding whose
scores covary most with the training score matrix (unknown cells at the model means); each
row is then searched as ``[t̂, x] / √2``, its unit PLS scores ``t̂ = (x − x̄) R`` beside the
embedding itself, so the similarity is the mean of the two cosines: prompts must read alike
and sit alike along the directions that move the models' scores (a supervised metric for
the neighbour search, as in metric-learning kNN, Weinberger & Saul 2009). ``k``, ``τ`` and
``α`` are then chosen by leave-one-out in that space; the map itself saw every training
row's scores, so that choice is slightly optimistic (judge the option on held-out prompts,
as ``benchmarks/bench_dev.py`` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Self

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from llmdispatch.data.table import OutcomeTable
from llmdispatch.estimators._common import (
    Scores,
    as_dense,
    check_features,
    check_grid,
    check_int,
    check_n_features,
    check_positive,
    features_from_state,
    features_state,
    l2_normalize,
    masked_mse,
    table_scores,
)
from llmdispatch.estimators._similarity import FEW_ROWS, SimilarityIndex
from llmdispatch.estimators.base import QualityEstimator, clip_quality
from llmdispatch.features.lsa import LsaProjection
from llmdispatch.kernels import kernels
from llmdispatch.registry import register
from llmdispatch.types import Features, FloatMatrix, FloatVector, IntVector

if TYPE_CHECKING:
    from llmdispatch.features.hashing import SparseRow

Auto = Literal["auto"]
#: A fitted PLS map: the features' column mean and their rotations (features × components).
PlsMap = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]
DEFAULT_K_GRID = (5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500)
DEFAULT_TEMPERATURE_GRID: tuple[float | None, ...] = (None, 0.2, 0.1, 0.05, 0.02)
DEFAULT_PRIOR_GRID = (0.1, 1.0, 5.0)
DEFAULT_COMPONENTS_GRID = (128, 256)


@register("estimator", "knn")
class KNNEstimator(QualityEstimator):
    """Similarity-weighted kNN over L2-normalised features (dense or CSR).

    Parameters
    ----------
    k : int or "auto"
        Neighbours per query (the most similar training rows; of equally similar rows, the
        earlier ones); ``"auto"`` picks from ``k_grid`` by leave-one-out MSE.
    temperature : float, None or "auto"
        ``None``: weights are the (clipped) cosine similarities; a float ``τ``: weights
        ``exp((s − 1)/τ)``; ``"auto"``: chosen from ``temperature_grid``.
    prior_strength : float or "auto"
        Pseudo-count ``α`` pulling towards each model's mean score.
    n_components : int, None or "auto"
        Sparse features wider than this are searched in an LSA projection of this many
        dimensions fitted on the training rows; ``None``: exact search over the sparse rows;
        ``"auto"``: the exact search or one of ``components_grid``, by leave-one-out MSE.
    supervised_components : int or None
        Search neighbours in a space that adds ``c`` partial-least-squares directions fitted
        on the training scores to the features (see the module docstring); dense features
        only (MiniLM, static, ``tfidf-svd``). ``None`` (default): the features alone.

    Examples
    --------
    Model ``math`` solves the integrals, ``poet`` writes the poems:

    >>> from llmdispatch.data import from_records
    >>> from llmdispatch.features.tfidf import TfidfEncoder
    >>> table = from_records(
    ...     {"id": str(i),
    ...      "prompt": f"integral of x^{i} dx" if i % 2 else f"a poem about the sea, verse {i}",
    ...      "outcomes": {"math": {"score": i % 2}, "poet": {"score": 1 - i % 2}}}
    ...     for i in range(40))
    >>> enc = TfidfEncoder().fit(table.full_prompts())
    >>> est = KNNEstimator(k=5).fit(table, enc.encode(table.full_prompts()))
    >>> table.models, est.predict(enc.encode(["integral of x^7 dx"])).round(1)
    (('math', 'poet'), array([[1., 0.]]))
    """

    _X_train: Features | None

    def __init__(
        self,
        k: int | Auto = "auto",
        temperature: float | Auto | None = "auto",
        prior_strength: float | Auto = "auto",
        k_grid: Sequence[int] = DEFAULT_K_GRID,
        temperature_grid: Sequence[float | None] = DEFAULT_TEMPERATURE_GRID,
        prior_grid: Sequence[float] = DEFAULT_PRIOR_GRID,
        n_components: int | Auto | None = 128,
        components_grid: Sequence[int] = DEFAULT_COMPONENTS_GRID,
        supervised_components: int | None = None,
    ) -> None:
        self.k = k
        self.temperature = temperature
        self.prior_strength = prior_strength
        self.k_grid = k_grid
        self.temperature_grid = temperature_grid
        self.prior_grid = prior_grid
        self.n_components = n_components
        self.components_grid = components_grid
        self.supervised_components = supervised_components

    # ---- fitting ---------------------------------------------------------------------
    def _candidates(self, n: int) -> tuple[list[int], list[float | None], list[float]]:
        if self.k == "auto":
            grid = [int(v) for v in check_grid("k_grid", self.k_grid, integer=True)]
            ks = sorted({min(k, n - 1) for k in grid})
        else:
            ks = [min(check_int("k", self.k, 1), n - 1)]
        if self.temperature == "auto":
            temps = list(self.temperature_grid)
            if not temps:
                raise ValueError("temperature_grid must not be empty")
        else:
            temps = [self.temperature]
        for t in temps:
            if t is not None:
                check_positive("temperature", t)
        if self.prior_strength == "auto":
            alphas = check_grid("prior_grid", self.prior_grid)
        else:
            check_positive("prior_strength", self.prior_strength, allow_zero=True)
            alphas = [float(self.prior_strength)]
        return ks, temps, alphas

    def fit(self, table: OutcomeTable, X: Features) -> Self:
        """Store the training rows and choose ``k``, ``τ``, ``α`` (and with
        ``n_components="auto"`` the search space) by leave-one-out."""
        scores = table_scores(table)
        ks, temps, alphas = self._candidates(table.n_prompts)
        Xn = l2_normalize(check_features(X, table.n_prompts))
        self.n_features_ = int(Xn.shape[1])
        self.supervised_: PlsMap | None = None
        if self.supervised_components is not None:
            self.supervised_ = _fit_pls(Xn, scores, self.supervised_components)
            Xn = self._supervise(Xn)
        results: list[dict[str, Any]] = []
        chosen: tuple[dict[str, Any], LsaProjection | None, Features] | None = None
        for n_components in self._search_spaces(Xn):
            projection = None if n_components is None else LsaProjection.fit(Xn, n_components)
            Z = Xn if projection is None else projection.transform(Xn)
            found = _loo_search(Z, scores, ks, temps, alphas)
            for r in found:
                r["n_components"] = n_components
            results += found
            top = min(found, key=lambda r: r["mse"])
            if chosen is None or top["mse"] < chosen[0]["mse"]:
                chosen = (top, projection, Z)
        assert chosen is not None
        best, self.projection_, self.X_train_ = chosen
        self._index_cache: SimilarityIndex | None = None
        self._targets_cache: tuple[FloatMatrix, FloatMatrix] | None = None
        self.Y_ = scores.Y
        self.M_ = scores.M
        self.prior_ = scores.prior
        self.models_ = scores.models
        self.k_ = int(best["k"])
        self.temperature_ = best["temperature"]
        self.prior_strength_ = float(best["alpha"])
        self.cv_results_ = results
        return self

    def _search_spaces(self, X: Features) -> list[int | None]:
        """LSA widths to try (``None``: the features themselves); only sparse features wider
        than a width are projected."""
        if self.n_components == "auto":
            grid = [
                int(v) for v in check_grid("components_grid", self.components_grid, integer=True)
            ]
        elif self.n_components is None:
            grid = []
        else:
            grid = [check_int("n_components", self.n_components, 1)]
        widths: list[int | None] = [w for w in grid if sp.issparse(X) and X.shape[1] > w]
        if self.n_components == "auto" or not widths:
            return [None, *widths]
        return widths

    def _supervise(self, Xn: Features) -> npt.NDArray[np.float32]:
        """Unit rows ``[t̂, x] / √2`` of L2-normalised dense rows ``x`` (PLS scores ``t̂``)."""
        assert self.supervised_ is not None
        mean, rotations = self.supervised_
        x = np.asarray(as_dense(Xn), dtype=np.float32)
        t = l2_normalize((x - mean) @ rotations)
        return np.hstack([t, x]).astype(np.float32) / np.float32(np.sqrt(2.0))

    # ---- prediction ------------------------------------------------------------------
    def predict(self, X: Features) -> FloatMatrix:
        """Expected quality ``Q[n, m]`` of each model on each query."""
        self._check_fitted()
        supervised = self.supervised_ is not None
        if sp.issparse(X) and X.shape[0] <= FEW_ROWS and not supervised:
            return self._predict_few(sp.csr_matrix(X))
        Xq = check_features(X)
        check_n_features(Xq, self.n_features_)
        # The projection's rows come out unit-norm whatever the input's scale.
        Xq = l2_normalize(Xq) if self.projection_ is None else self.projection_.transform(Xq)
        if supervised:
            Xq = self._supervise(Xq)
        YM, Mf = self._targets()
        out = np.empty((Xq.shape[0], len(self.models_)), dtype=np.float64)
        n_train = self.Y_.shape[0]
        for start, sims in self._index().chunks(Xq):
            idx, top = _top_k(sims, self.k_)
            w = _weights(top, self.temperature_)
            rows = np.repeat(np.arange(len(w)), w.shape[1])
            W = sp.csr_matrix((w.ravel(), (rows, idx.ravel())), shape=(len(w), n_train))
            num = W @ YM + self.prior_strength_ * self.prior_
            den = W @ Mf + self.prior_strength_
            out[start : start + len(w)] = _divide(num, den, self.prior_)
        return clip_quality(out)

    def _predict_few(self, X: sp.csr_matrix) -> FloatMatrix:
        """The live path for a handful of sparse rows: :meth:`predict_row` row by row."""
        check_n_features(X, self.n_features_)
        out = np.empty((X.shape[0], len(self.models_)), dtype=np.float64)
        for i in range(X.shape[0]):
            lo, hi = X.indptr[i], X.indptr[i + 1]
            out[i] = self._predict_one(X.indices[lo:hi], X.data[lo:hi])
        return out

    def predict_row(self, row: SparseRow) -> FloatVector:
        """``Q`` of one sparse query row (an encoder's ``encode_query_row``): the formula of
        :meth:`predict` without building sparse matrices, whose construction costs more than
        the maths (the live path)."""
        self._check_fitted()
        if self.supervised_ is not None:
            raise ValueError("a kNN with supervised_components searches dense features only")
        if row.n_features != self.n_features_:
            raise ValueError(
                f"X has {row.n_features} features but the estimator was fitted with "
                f"{self.n_features_} (same encoder?)"
            )
        return self._predict_one(row.columns, row.values)

    def _predict_one(self, cols: npt.NDArray[np.int32], values: npt.NDArray[Any]) -> FloatVector:
        vals = np.asarray(values, dtype=np.float32)
        square = np.dot(vals, vals)  # not finite when a value is not (or on overflow)
        if not np.isfinite(square) and not np.isfinite(vals).all():
            raise ValueError("X contains NaN or infinite values")
        norm = float(np.sqrt(square))
        vals = vals / norm if norm > 0 else vals
        if self.projection_ is not None:
            sims = self._index().dot_dense_one(self.projection_.transform_row(cols, vals))
        else:
            sims = self._index().dot_one(cols, vals)
        fast = kernels()
        if fast is not None:  # selection, weights and average in one compiled pass
            q: FloatVector = fast.knn_average(
                np.asarray(sims, dtype=np.float64), *self._kernel_args()
            )
            return q
        idx, top = _top_k_one(sims, self.k_)
        w = _weights(top, self.temperature_)
        YM, Mf = self._targets()
        num = w @ YM[idx] + self.prior_strength_ * self.prior_
        den = w @ Mf[idx] + self.prior_strength_
        return clip_quality(_divide(num, den, self.prior_))

    def _kernel_args(self) -> tuple[int, float, FloatMatrix, FloatMatrix, float, FloatVector]:
        """What the compiled neighbour average takes after the similarities (a temperature
        of −1 stands for none: weights ``max(s, 0)``)."""
        YM, Mf = self._targets()
        temperature = -1.0 if self.temperature_ is None else float(self.temperature_)
        return int(self.k_), temperature, YM, Mf, float(self.prior_strength_), self.prior_

    def _targets(self) -> tuple[FloatMatrix, FloatMatrix]:
        """Known scores ``Y ⊙ M`` and the mask as floats (cached: reused by every query)."""
        cached = getattr(self, "_targets_cache", None)
        if cached is None:
            cached = self._targets_cache = (self.Y_ * self.M_, self.M_.astype(np.float64))
        return cached

    def _index(self) -> SimilarityIndex:
        index = getattr(self, "_index_cache", None)
        if index is None:
            index = self._index_cache = SimilarityIndex(self.X_train_)
            if index.holds_rows:
                # The index holds the same rows in another layout; keeping both would double
                # a served router's largest arrays (X_train_ is rebuilt when saving).
                self._X_train = None
        return index

    def warm(self) -> None:
        """Build the similarity index now rather than on the first live query."""
        self._check_fitted()
        self._index()

    @property
    def X_train_(self) -> Features:
        """The L2-normalised training rows."""
        rows = self.__dict__.get("_X_train")
        if rows is None:
            index = self.__dict__.get("_index_cache")
            if index is None:
                raise AttributeError("X_train_")  # not fitted: hasattr() is False
            return index.matrix()
        return rows

    @X_train_.setter
    def X_train_(self, rows: Features) -> None:
        self._X_train = rows

    # ---- state -----------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Training rows, scores and the chosen hyper-parameters."""
        self._check_fitted()
        pls = self.supervised_
        return {
            "models": list(self.models_),
            "X_train": features_state(self.X_train_),
            "Y": self.Y_,
            "M": self.M_,
            "prior": self.prior_,
            "k": self.k_,
            "temperature": self.temperature_,
            "prior_strength": self.prior_strength_,
            "cv_results": self.cv_results_,
            "n_features": self.n_features_,
            "projection": None if self.projection_ is None else self.projection_.get_state(),
            "supervised": None if pls is None else {"mean": pls[0], "rotations": pls[1]},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild a fitted estimator from :meth:`get_state`."""
        projection = state.get("projection")
        est = cls(
            k=int(state["k"]),
            temperature=state["temperature"],
            prior_strength=float(state["prior_strength"]),
            n_components=None if projection is None else int(np.shape(projection["projection"])[1]),
        )
        est.models_ = tuple(state["models"])
        est.X_train_ = features_from_state(state["X_train"])
        est._index_cache = None
        est._targets_cache = None
        est.projection_ = None if projection is None else LsaProjection.from_state(projection)
        est.n_features_ = int(state.get("n_features") or est.X_train_.shape[1])
        est.Y_ = np.asarray(state["Y"], dtype=np.float64)
        est.M_ = np.asarray(state["M"], dtype=bool)
        est.prior_ = np.asarray(state["prior"], dtype=np.float64)
        est.k_ = int(state["k"])
        est.temperature_ = state["temperature"]
        est.prior_strength_ = float(state["prior_strength"])
        est.cv_results_ = list(state.get("cv_results", []))
        supervised = state.get("supervised")
        est.supervised_ = None
        if supervised is not None:
            rotations = np.asarray(supervised["rotations"], dtype=np.float32)
            est.supervised_ = (np.asarray(supervised["mean"], dtype=np.float32), rotations)
            est.supervised_components = int(rotations.shape[1])
        return est


# ---- internals ---------------------------------------------------------------------------
def _top_k(sims: npt.NDArray[np.floating[Any]], k: int) -> tuple[IntVector, FloatMatrix]:
    """Indices and similarities (float64) of the ``k`` most similar columns, most similar
    first; equal similarities go by column (the lower index first), so every path picks the
    same neighbours."""
    n = sims.shape[1]
    k = min(k, n)
    if n >= 8 * k and len(sims):  # on each row's threshold candidates (see _top_k_one)
        return _top_k_candidates(sims, k)
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(sims, idx, axis=1).astype(np.float64, copy=False)


def _top_k_candidates(sims: npt.NDArray[np.floating[Any]], k: int) -> tuple[IntVector, FloatMatrix]:
    """:func:`_top_k` of a block through :func:`_top_k_one`'s sampled thresholds, all rows
    at once: each row's candidates (about ``2k`` of its ``n`` similarities) are packed into
    one padded block whose selection is a single vectorised call. Rows whose threshold
    leaves fewer than ``k`` candidates, or far more (many equal similarities), take the
    one-row path."""
    n_rows = sims.shape[0]
    sample = sims[:, ::8]
    at = sample.shape[1] - max(1, k // 4)
    threshold = np.partition(sample, at, axis=1)[:, at]
    passed = sims >= threshold[:, None]
    counts = passed.sum(axis=1)
    width_cap = max(8 * k, 64)
    packed = np.flatnonzero((counts >= k) & (counts <= width_cap))
    idx = np.empty((n_rows, k), dtype=np.intp)
    top = np.empty((n_rows, k), dtype=np.float64)
    if len(packed):
        rows, cols = np.nonzero(passed[packed])  # row-major: each row's candidates together
        sizes = counts[packed]
        slot = np.arange(len(rows)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        values = np.full((len(packed), int(sizes.max())), -np.inf, dtype=sims.dtype)
        columns = np.zeros(values.shape, dtype=np.intp)
        values[rows, slot] = sims[packed[rows], cols]
        columns[rows, slot] = cols
        # Stable: equal similarities keep their column order (padding sorts last).
        pick = np.argsort(-values, axis=1, kind="stable")[:, :k]
        idx[packed] = np.take_along_axis(columns, pick, axis=1)
        top[packed] = np.take_along_axis(values, pick, axis=1)
    rest = np.ones(n_rows, dtype=bool)
    rest[packed] = False
    for i in np.flatnonzero(rest):
        idx[i], top[i] = _top_k_one(sims[i], k)
    return idx, top


def _top_k_one(sims: npt.NDArray[np.floating[Any]], k: int) -> tuple[IntVector, FloatVector]:
    """:func:`_top_k` of one row (the same selection and order, without 2-D indexing).

    A threshold from every 8th similarity usually leaves about ``2k`` candidates, so the
    exact selection runs on those instead of all ``n`` (a third of the time at n = 5,600);
    when fewer than ``k`` pass, it falls back to the full sort.
    """
    n = len(sims)
    k = min(k, n)
    if k < n:
        idx = None
        if n >= 8 * k:
            sample = sims[::8]
            at = len(sample) - max(1, k // 4)
            threshold = np.partition(sample, at)[at]
            cand = np.flatnonzero(sims >= threshold)
            if len(cand) >= k:
                idx = cand[np.argsort(-sims[cand], kind="stable")[:k]]
        if idx is None:
            idx = np.argsort(-sims, kind="stable")[:k]
    else:
        idx = np.argsort(-sims, kind="stable")
    return idx, sims[idx].astype(np.float64, copy=False)


def _weights(top: FloatMatrix, temperature: float | None) -> FloatMatrix:
    if temperature is None:
        return np.maximum(top, 0.0)
    return np.exp((np.minimum(top, 1.0) - 1.0) / temperature)


def _divide(num: FloatMatrix, den: FloatMatrix, prior: FloatMatrix) -> FloatMatrix:
    safe = np.where(den > 0, den, 1.0)
    return np.where(den > 0, num / safe, prior)


def _fit_pls(Xn: Features, scores: Scores, components: int) -> PlsMap:
    """Column mean and ``x`` rotations (features × ``components``, float32) of a partial
    least squares fit of the score matrix (unknown cells at the model means) on ``Xn``."""
    from sklearn.cross_decomposition import PLSRegression

    if sp.issparse(Xn):
        raise ValueError(
            "supervised_components needs dense features (minilm, static, tfidf-svd), "
            "not sparse TF-IDF rows"
        )
    n, d = Xn.shape
    c = check_int("supervised_components", components, 1)
    if c > min(n - 1, d):
        raise ValueError(
            f"supervised_components={c} exceeds what {n} prompts × {d} features allow "
            f"(at most {min(n - 1, d)})"
        )
    x = np.asarray(Xn, dtype=np.float64)
    y = np.where(scores.M, scores.Y, scores.prior)
    pls = PLSRegression(n_components=c, scale=False).fit(x, y)
    mean = x.mean(axis=0).astype(np.float32)
    return mean, np.asarray(pls.x_rotations_, dtype=np.float32)


def _loo_search(
    Xn: Features,
    scores: Scores,
    ks: list[int],
    temps: list[float | None],
    alphas: list[float],
) -> list[dict[str, Any]]:
    """Leave-one-out MSE of every (k, τ, α): neighbours once at max k, running sums."""
    n = Xn.shape[0]
    kmax = max(ks)
    idx_all = np.empty((n, kmax), dtype=np.intp)
    sim_all = np.empty((n, kmax), dtype=np.float64)
    for start, sims in SimilarityIndex(Xn).chunks(Xn):
        rows = np.arange(len(sims))
        sims[rows, start + rows] = -np.inf  # leave the row itself out
        idx, top = _top_k(sims, kmax)
        idx_all[start : start + len(sims)] = idx
        sim_all[start : start + len(sims)] = top
    YM = scores.Y * scores.M
    Mf = scores.M.astype(np.float64)
    results: list[dict[str, Any]] = []
    for temp in temps:
        w_all = _weights(sim_all, temp)
        num = np.zeros_like(YM)
        den = np.zeros_like(YM)
        prev = 0
        for k in ks:
            w = w_all[:, prev:k, None]
            num += (w * YM[idx_all[:, prev:k]]).sum(axis=1)
            den += (w * Mf[idx_all[:, prev:k]]).sum(axis=1)
            prev = k
            for alpha in alphas:
                q = _divide(num + alpha * scores.prior, den + alpha, scores.prior)
                mse = masked_mse(np.clip(q, 0.0, 1.0), scores)
                results.append({"k": k, "temperature": temp, "alpha": alpha, "mse": mse})
    return results

"""Matrix factorisation (RouteLLM) and UniRoute: planted signals, gradients, new models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import check_grad

from llmdispatch.artifacts import load_artifact, save_artifact
from llmdispatch.data import load_table
from llmdispatch.estimators.mf import MatrixFactorizationEstimator, preference_pairs
from llmdispatch.estimators.uniroute import UniRouteEstimator
from llmdispatch.features import TfidfEncoder
from test_router import planted


def features(texts: list[str]) -> np.ndarray:
    enc = TfidfEncoder().fit(texts)
    return enc.encode(texts)


@pytest.mark.parametrize("cls", [MatrixFactorizationEstimator, UniRouteEstimator])
def test_learns_the_planted_specialists(cls: type, tmp_path: Path) -> None:
    table = planted(300)
    texts = table.full_prompts()
    enc = TfidfEncoder().fit(texts[:240])
    est = cls().fit(table.take(np.arange(240)), enc.encode(texts[:240]))
    Q = est.predict(enc.encode(texts[240:]))
    test = table.take(np.arange(240, 300))
    assert Q.shape == (60, 3) and Q.min() >= 0 and Q.max() <= 1
    # Between the two cheap specialists the right one ranks higher on nearly every prompt.
    right = np.where(test.score[:, 0] == 1, 0, 1)
    picked = np.where(Q[:, 0] >= Q[:, 1], 0, 1)
    assert (picked == right).mean() >= 0.9
    save_artifact(tmp_path / "e", est)
    again, _ = load_artifact(tmp_path / "e")
    np.testing.assert_allclose(again.predict(enc.encode(texts[240:])), Q)


def test_mf_gradient_is_exact() -> None:
    table = planted(40)
    X = features(table.full_prompts())
    est = MatrixFactorizationEstimator(dim=4, n_components=6, max_iter=1).fit(table, X)
    V = est.projector_.transform(X)
    q, w, lo = preference_pairs(table.score, table.known, 10_000, 0)
    d_q = V.shape[1]
    m = table.n_models

    def loss(theta: np.ndarray) -> float:
        W1, b, Vm, w2 = est._unpack(theta, d_q, m)
        H = V @ W1 + b
        delta = ((Vm[w] - Vm[lo]) * H[q]) @ w2
        return float(np.logaddexp(0, -delta).sum()) / len(q) + 0.5 * est.l2 * float(theta @ theta)

    def grad(theta: np.ndarray) -> np.ndarray:
        eps = 1e-6
        return np.array(
            [
                (loss(theta + eps * e) - loss(theta - eps * e)) / (2 * eps)
                for e in np.eye(len(theta))
            ]
        )

    rng = np.random.default_rng(1)
    theta = rng.normal(0, 0.3, sum(int(np.prod(s)) for s in est._shapes(d_q, m)))
    # The estimator's analytic gradient (through its objective) against finite differences.
    captured: dict[str, object] = {}
    real_minimize = __import__("scipy.optimize", fromlist=["minimize"]).minimize

    def spy(fun, x0, **kw):  # type: ignore[no-untyped-def]
        captured["fun"] = fun
        return real_minimize(fun, x0, **kw)

    import scipy.optimize

    orig = scipy.optimize.minimize
    scipy.optimize.minimize = spy
    try:
        MatrixFactorizationEstimator(dim=4, n_components=6, max_iter=1).fit(table, X)
    finally:
        scipy.optimize.minimize = orig
    fun = captured["fun"]
    value, analytic = fun(theta)  # type: ignore[operator]
    assert value == pytest.approx(loss(theta))
    np.testing.assert_allclose(analytic, grad(theta), atol=1e-5)
    assert check_grad(lambda t: fun(t)[0], lambda t: fun(t)[1], theta) < 1e-4  # type: ignore[operator]


def test_uniroute_adds_a_model_from_a_representative_set() -> None:
    table = planted(300)
    texts = table.full_prompts()
    enc = TfidfEncoder().fit(texts)
    X = enc.encode(texts)
    full = UniRouteEstimator(k=4).fit(table, X)
    without = UniRouteEstimator(k=4).fit(table.select_models(["cheap", "big"]), X)
    rep = without.representative_set(per_cluster=10)
    assert 4 <= len(rep) <= 40
    without.add_model("math", table.score[rep, table.model_index("math")], X[rep])
    assert without.models_ == ("cheap", "big", "math")
    Q_full = full.predict(X)[:, table.model_index("math")]
    Q_added = without.predict(X)[:, 2]
    assert np.abs(Q_full - Q_added).mean() < 0.15
    with pytest.raises(ValueError, match="already known"):
        without.add_model("math", np.ones(len(rep)), X[rep])


def test_beat_random_on_real_data(shared_data: Callable[[str], Path]) -> None:
    table = load_table(shared_data("routerbench-subset"))
    train, test = table.split("train"), table.split("test")
    enc = TfidfEncoder().fit(train.full_prompts())
    Xtr, Xte = enc.encode(train.full_prompts()), enc.encode(test.full_prompts())
    for est in (UniRouteEstimator(k=16), MatrixFactorizationEstimator(max_iter=30)):
        Q = est.fit(train, Xtr).predict(Xte)
        routed = test.score[np.arange(test.n_prompts), Q.argmax(axis=1)]
        assert np.nanmean(routed) > np.nanmean(test.score) + 0.1, type(est).__name__


def test_bad_parameters() -> None:
    table = planted(40)
    X = features(table.full_prompts())
    with pytest.raises(ValueError, match="dim"):
        MatrixFactorizationEstimator(dim=0).fit(table, X)
    with pytest.raises(ValueError, match="alpha"):
        UniRouteEstimator(alpha=-1).fit(table, X)

"""EmbedLLM and rule-based routes: planted signals, new models, thresholds, errors, artifacts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _cascade_tables import make_table
from llmdispatch.artifacts import load_artifact, save_artifact
from llmdispatch.cli import main
from llmdispatch.data import load_table
from llmdispatch.data.table import OutcomeTable
from llmdispatch.estimators._common import table_scores
from llmdispatch.estimators.embedllm import EmbedLLMEstimator
from llmdispatch.estimators.rules import NEVER, RulesEstimator, fit_threshold
from llmdispatch.features import TfidfEncoder
from llmdispatch.features.routes import RouteMatchEncoder, load_route_spec
from llmdispatch.policies.router import Router
from llmdispatch.yamlconfig import ConfigError
from test_router import planted


# ---- EmbedLLM ---------------------------------------------------------------------------------
def clusters(n: int, seed: int = 0, dim: int = 16) -> tuple[OutcomeTable, np.ndarray, np.ndarray]:
    """Two query clusters in a dense space: ``A`` is right on cluster 0 (90 %), ``B`` on
    cluster 1; ``C`` is right 50 % everywhere."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (2, dim))
    group = rng.integers(0, 2, n)
    X = centres[group] + rng.normal(0, 0.3, (n, dim))
    skill = np.array([[0.9, 0.1, 0.5], [0.1, 0.9, 0.5]])[group]
    score = (rng.random((n, 3)) < skill).astype(float)
    score[rng.random((n, 3)) < 0.1] = np.nan  # unknown cells are skipped, never read as 0
    table = make_table(score, models=("A", "B", "C"))
    return table, X, group


def test_embedllm_learns_planted_clusters_and_beats_the_mean_predictor() -> None:
    table, X, group = clusters(600)
    train, test = table.take(np.arange(400)), table.take(np.arange(400, 600))
    est = EmbedLLMEstimator().fit(train, X[:400])
    Q = est.predict(X[400:])
    assert Q.shape == (200, 3) and Q.min() >= 0 and Q.max() <= 1
    known = test.known
    brier = float(((Q - np.nan_to_num(test.score)) ** 2)[known].mean())
    mean_pred = np.tile(np.nanmean(train.score, axis=0), (200, 1))
    brier_mean = float(((mean_pred - np.nan_to_num(test.score)) ** 2)[known].mean())
    # Bayes Brier ≈ 0.09 / 0.25 against ≈ 0.25 for the mean: the factorisation finds the split.
    assert brier < brier_mean - 0.08, (brier, brier_mean)
    # The specialist of each query's cluster ranks first between A and B.
    assert (Q[:, :2].argmax(axis=1) == group[400:]).mean() >= 0.95
    assert 1 <= est.n_epochs_ <= est.max_epochs


def test_embedllm_gradients_match_finite_differences() -> None:
    table, X, _ = clusters(40, dim=5)
    est = EmbedLLMEstimator(dim=3, max_epochs=1)
    params = est._init(5, table_scores(table))
    Y, W = np.nan_to_num(table.score), table.known.astype(float)
    arrays = params.arrays()

    def loss() -> float:
        Z = params.logits(X)
        return float(((np.logaddexp(0, Z) - Y * Z) * W).sum() / W.sum())

    grads = est._grads(params, X, Y, W)
    rng = np.random.default_rng(0)
    for a, g in zip(arrays, grads, strict=True):
        for _ in range(4):
            idx = tuple(rng.integers(0, s) for s in a.shape)
            old = a[idx]
            a[idx] = old + 1e-6
            up = loss()
            a[idx] = old - 1e-6
            down = loss()
            a[idx] = old
            assert g[idx] == pytest.approx((up - down) / 2e-6, abs=1e-6)


def test_embedllm_round_trip_through_artifacts(tmp_path: Path) -> None:
    table = planted(160)
    enc = TfidfEncoder().fit(table.full_prompts())
    X = enc.encode(table.full_prompts())
    est = EmbedLLMEstimator().fit(table, X)
    save_artifact(tmp_path / "e", est)
    again, _ = load_artifact(tmp_path / "e")
    assert isinstance(again, EmbedLLMEstimator) and again.models_ == est.models_
    np.testing.assert_array_equal(again.predict(X), est.predict(X))
    assert again.from_state(again.get_state()).n_epochs_ == est.n_epochs_


def test_embedllm_adds_a_model_from_a_few_prompts() -> None:
    table, X, group = clusters(500, seed=1)
    base = table.select_models(["A", "C"])
    est = EmbedLLMEstimator().fit(base.take(np.arange(400)), X[:400])
    before = est.predict(X[400:])
    # The new model is B: right on cluster 1 only. 30 scored prompts, rest frozen.
    few = np.arange(400, 430)
    est.add_model("B", table.score[few, table.model_index("B")], X[few])
    after = est.predict(X[430:])
    assert est.models_ == ("A", "C", "B") and after.shape == (70, 3)
    np.testing.assert_allclose(after[:, :2], before[30:], rtol=0, atol=0)
    # Its predictions follow its planted skill: 0.9 on cluster 1, 0.1 on cluster 0.
    skill = np.where(group[430:] == 1, 0.9, 0.1)
    assert np.corrcoef(after[:, 2], skill)[0, 1] > 0.9
    assert after[group[430:] == 1, 2].mean() > after[group[430:] == 0, 2].mean() + 0.4
    # B mirrors A: where A is predicted good, B is predicted bad.
    assert np.corrcoef(after[:, 2], after[:, 0])[0, 1] < -0.8
    # From a table as well; a known name or misaligned scores are errors.
    est2 = EmbedLLMEstimator().fit(base.take(np.arange(400)), X[:400])
    est2.add_model("B", table.take(few), X[few])
    np.testing.assert_allclose(est2.predict(X[430:]), after)
    with pytest.raises(ValueError, match="already known"):
        est.add_model("B", np.ones(30), X[few])
    with pytest.raises(ValueError, match="one score per prompt"):
        est.add_model("D", np.ones(3), X[few])


def test_embedllm_beats_random_routing_on_real_data(shared_data: Callable[[str], Path]) -> None:
    table = load_table(shared_data("routerbench-subset"))
    train, test = table.split("train"), table.split("test")
    rng = np.random.default_rng(0)
    train = train.take(np.sort(rng.choice(train.n_prompts, 800, replace=False)))
    test = test.take(np.sort(rng.choice(test.n_prompts, 400, replace=False)))
    enc = TfidfEncoder().fit(train.full_prompts())
    est = EmbedLLMEstimator().fit(train, enc.encode(train.full_prompts()))
    Q = est.predict(enc.encode(test.full_prompts()))
    routed = float(np.nanmean(test.score[np.arange(test.n_prompts), Q.argmax(axis=1)]))
    assert routed > float(np.nanmean(test.score)) + 0.1


def test_embedllm_bad_parameters() -> None:
    table, X, _ = clusters(40)
    for bad in ({"dim": 0}, {"lr": -1.0}, {"validation_fraction": 1.5}, {"batch_size": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            EmbedLLMEstimator(**bad).fit(table, X)


# ---- rules ------------------------------------------------------------------------------------
MODELS = ("coder", "poet", "big")
SPEC: dict[str, Any] = {
    "routes": [
        {
            "name": "code",
            "model": "coder",
            "keywords": ["python", "c++"],
            "regex": [r"def \w+\("],
        },
        {
            "name": "poetry",
            "model": "poet",
            "examples": ["write a poem about the sea", "a sonnet in rhyming verse"],
            "description": "poems, verse and rhyme",
            "threshold": 0.3,
        },
    ],
    "default": "big",
}
POEM = ["write", "a", "poem", "sonnet", "verse", "rhyme", "about", "the", "sea"]
OTHER = ["tell", "me", "the", "history", "capital", "of", "france", "economy", "population"]


def rules_table(n: int = 120, seed: int = 0) -> OutcomeTable:
    """Poem prompts: ``poet`` is best; code prompts: ``coder``; others: only ``big``."""
    rng = np.random.default_rng(seed)
    prompts, score = [], []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            prompts.append(" ".join(rng.choice(POEM, 6)))
            score.append([0.0, 1.0, 1.0])
        elif kind == 1:
            prompts.append(f"in python, how do I sort item {i}")
            score.append([1.0, 0.0, 1.0])
        else:
            prompts.append(" ".join(rng.choice(OTHER, 6)))
            score.append([0.0, 0.0, 1.0])
    cost = np.tile([1e-4, 1e-4, 1e-2], (n, 1))
    return make_table(score, cost, models=MODELS, prompts=prompts)


def fit_rules(spec: Any, table: OutcomeTable) -> tuple[RouteMatchEncoder, RulesEstimator]:
    enc = RouteMatchEncoder(spec).fit(table.full_prompts())
    est = RulesEstimator(spec).fit(table, enc.encode(table.full_prompts()))
    return enc, est


def test_keywords_and_regex_fire_outright() -> None:
    enc, est = fit_rules(SPEC, rules_table())
    texts = [
        "How do I read a file in PYTHON?",  # keyword, any case
        "what is pythonic code",  # not a whole word
        "def main(argv): pass",  # regex
        "is C++ faster",  # keyword with non-word characters
    ]
    X = enc.encode(texts)
    assert X.shape == (4, 4)
    assert est.routes(X)[0] == "code" and est.routes(X)[2] == "code" and est.routes(X)[3] == "code"
    assert est.routes(X)[1] != "code"
    Q = est.predict(X)
    assert Q[0].argmax() == 0 and Q[0, 0] == pytest.approx(1.0)  # hit: s = 1 → Q = 1


def test_exemplar_similarity_fires_above_threshold_only() -> None:
    enc, est = fit_rules(SPEC, rules_table())
    texts = ["write a poem about the sea", "a rhyming sonnet", "the capital of france"]
    sims = enc.similarities(texts)[:, 1]
    X = enc.encode(texts)
    got = est.routes(X)
    assert sims[0] > 0.9 and got[0] == "poetry"
    for s, r in zip(sims, got, strict=True):
        assert (r == "poetry") == (s >= 0.3)
    assert got[2] is None
    # Higher-threshold copy: the weaker match no longer fires.
    strict = {**SPEC, "routes": [SPEC["routes"][0], {**SPEC["routes"][1], "threshold": 0.99}]}
    enc2, est2 = fit_rules(strict, rules_table())
    assert enc2.encode(texts).shape == X.shape
    assert est2.routes(enc2.encode(texts))[:2] == ["poetry" if sims[0] >= 0.99 else None, None]


def test_default_and_priors_when_nothing_fires() -> None:
    table = rules_table()
    enc, est = fit_rules(SPEC, table)
    X = enc.encode(["the population of france"])
    Q = est.predict(X)[0]
    assert est.routes(X) == [None]
    # Documented mapping: 0.5 for the default, φ·μ_m for the others.
    assert Q[2] == pytest.approx(0.5)
    np.testing.assert_allclose(Q[:2], 0.4 * table.mean_score()[:2])
    # Without a default the priors decide: the best model on average (big).
    no_default = {k: v for k, v in SPEC.items() if k != "default"}
    enc2, est2 = fit_rules(no_default, table)
    Q2 = est2.predict(enc2.encode(["the population of france"]))[0]
    np.testing.assert_allclose(Q2, 0.4 * table.mean_score())


def test_router_with_rules_trades_cost_with_lambda() -> None:
    table = rules_table()
    router = Router(
        encoder="rules",
        encoder_params={"spec": SPEC},
        estimator="rules",
        estimator_params={"spec": SPEC},
    ).fit(table)
    q = router.quality_table(table)
    C = router.costs_.for_table(table)
    allowed = np.ones_like(q, dtype=bool)
    other = np.flatnonzero(np.arange(table.n_prompts) % 3 == 2)
    at0 = router.choose(q, C, allowed, 0.0, router.cost_scale_)
    assert (at0[other] == 2).all()  # the default serves what no route matches
    assert (at0[np.arange(1, table.n_prompts, 3)] == 0).all()  # code → coder
    # A large λ makes the expensive default lose to a cheap model's prior.
    at_big = router.choose(q, C, allowed, 10.0, router.cost_scale_)
    assert not (at_big[other] == 2).any()


def test_auto_threshold_separates_planted_labels() -> None:
    assert fit_threshold(
        np.array([0.9, 0.8, 0.7, 0.3, 0.2]), np.zeros(5, bool), np.array([1, 1, 1, 0, 0], bool)
    ) == (0.5, 1.0)
    assert fit_threshold(np.array([0.5]), np.zeros(1, bool), np.zeros(1, bool))[0] == NEVER
    # On the planted table, poem prompts are where ``poet`` is among the best.
    auto = {**SPEC, "routes": [SPEC["routes"][0], {**SPEC["routes"][1], "threshold": "auto"}]}
    table = rules_table()
    enc, est = fit_rules(auto, table)
    sims = enc.similarities(table.full_prompts())[:, 1]
    poem = np.arange(table.n_prompts) % 3 == 0
    t = est.thresholds_[1]
    assert sims[~poem].max() < t <= sims[poem].min()
    assert est.f1_[1] == pytest.approx(1.0)
    # The code route has no exemplars: its keyword hits alone match its labels exactly.
    assert est.thresholds_[0] == NEVER and est.f1_[0] == pytest.approx(1.0)


def test_spec_errors_name_the_field(tmp_path: Path) -> None:
    table = rules_table(30)
    with pytest.raises(
        ValueError,
        match=r"route 'code' names model 'gpt-9'.*known models: "
        r"\['coder', 'poet', 'big'\]",
    ):
        bad = {**SPEC, "routes": [{**SPEC["routes"][0], "model": "gpt-9"}, SPEC["routes"][1]]}
        fit_rules(bad, table)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"regex": ["def (", "ok"]}, r"routes\.0 \(code\)\.regex: item 0: bad regular expression"),
        ({"colour": "red"}, r"routes\.0 \(code\)\.colour: Extra inputs are not permitted"),
        ({"threshold": 1.5}, r"routes\.0 \(code\)\.threshold"),
    ]
    for change, pattern in cases:
        spec = {**SPEC, "routes": [{**SPEC["routes"][0], **change}, SPEC["routes"][1]]}
        with pytest.raises(ValueError, match=pattern):
            load_route_spec(spec)
    missing = {"routes": [{"name": "code", "keywords": ["x"]}]}
    with pytest.raises(ValueError, match=r"routes\.0 \(code\)\.model: Field required"):
        load_route_spec(missing)
    with pytest.raises(ValueError, match="rutes: Extra inputs"):
        load_route_spec({"rutes": []})
    with pytest.raises(ValueError, match="can never fire"):
        load_route_spec({"routes": [{"name": "empty", "model": "big"}]})
    with pytest.raises(ValueError, match="a route spec is needed"):
        RulesEstimator().fit(table, np.zeros((30, 4)))
    path = tmp_path / "routes.yaml"
    path.write_text("routes:\n  - name: code\n    model: coder\n    regex: ['(']\n")
    with pytest.raises(ConfigError, match=r"routes.yaml:4: routes\.0\.regex"):
        load_route_spec(path)
    enc, _ = fit_rules(SPEC, table)
    with pytest.raises(ValueError, match="use encoder 'rules' with the same spec"):
        RulesEstimator(SPEC).fit(table, np.zeros((30, 6)))
    with pytest.raises(ValueError, match="prior_factor"):
        RulesEstimator(SPEC, prior_factor=0.7).fit(table, enc.encode(table.full_prompts()))


def test_rules_round_trip(tmp_path: Path) -> None:
    table = rules_table()
    path = tmp_path / "routes.yaml"
    path.write_text(json.dumps(SPEC))  # JSON is YAML
    enc, est = fit_rules(str(path), table)
    texts = ["python please", "a poem of the sea", "france", "def f(x): return x"]
    save_artifact(tmp_path / "enc", enc)
    save_artifact(tmp_path / "est", est)
    path.unlink()  # the artifacts carry the parsed spec
    enc2, _ = load_artifact(tmp_path / "enc")
    est2, _ = load_artifact(tmp_path / "est")
    np.testing.assert_array_equal(enc2.encode(texts), enc.encode(texts))
    np.testing.assert_array_equal(est2.predict(enc2.encode(texts)), est.predict(enc.encode(texts)))
    assert est2.routes(enc2.encode(texts)) == ["code", "poetry", None, "code"]
    assert enc2.key == enc.key


# ---- train / route commands --------------------------------------------------------------------
def write_jsonl(path: Path, table: OutcomeTable) -> None:
    with path.open("w") as fh:
        for i in range(table.n_prompts):
            outcomes = {
                m: {"score": float(table.score[i, j]), "cost_usd": float(table.cost[i, j])}
                for j, m in enumerate(table.models)
            }
            rec = {
                "id": f"p{i}",
                "dataset": "planted",
                "split": "test" if i % 4 == 0 else "train",
                "prompt": str(table.prompts[i]),
                "outcomes": outcomes,
            }
            fh.write(json.dumps(rec) + "\n")


@pytest.mark.parametrize("kind", ["embedllm", "rules-inline", "rules-file"])
def test_train_config_writes_an_artifact_route_reloads(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data.jsonl"
    write_jsonl(data, rules_table(120))
    cfg = tmp_path / "train.yaml"
    head = f"data: {data}\nout: {tmp_path / 'art'}\n"
    if kind == "embedllm":
        cfg.write_text(head + "estimator: embedllm\nestimator_params: {dim: 8}\n")
    elif kind == "rules-inline":
        spec = json.dumps(SPEC)
        cfg.write_text(
            head + f"encoder: rules\nencoder_params: {{spec: {spec}}}\n"
            f"estimator: rules\nestimator_params: {{spec: {spec}}}\n"
        )
    else:
        (tmp_path / "routes.yaml").write_text(json.dumps(SPEC))
        cfg.write_text(
            head + f"encoder: rules\nencoder_params: &r {{spec: {tmp_path / 'routes.yaml'}}}\n"
            "estimator: rules\nestimator_params: *r\n"
        )
    assert main(["train", str(cfg)]) == 0
    assert (tmp_path / "art" / "artifact.json").is_file()
    capsys.readouterr()
    assert main(["route", str(tmp_path / "art"), "def main(): in python", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["candidates"]) == 3
    if kind != "embedllm":
        assert doc["choice"] == "coder"

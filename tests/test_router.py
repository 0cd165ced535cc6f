"""The Router policy: planted signal, constraints, calibration, artifacts, train/route CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from _cascade_tables import make_table
from llmdispatch.artifacts import load_artifact, save_artifact
from llmdispatch.catalog import ModelCard
from llmdispatch.cli import main
from llmdispatch.data import load_table, train_validation
from llmdispatch.data.table import OutcomeTable
from llmdispatch.evaluation.replay import replay
from llmdispatch.policies.calibrate import describe, describe_figures, describe_target
from llmdispatch.policies.router import Router, RouterError
from llmdispatch.query import Query
from llmdispatch.registry import UnknownComponentError

TOPICS = {
    "math": "solve the equation integral derivative algebra number",
    "poem": "write a poem sonnet verse rhyme about the sea",
}


def planted(n: int = 200, seed: int = 0) -> OutcomeTable:
    """Model ``cheap`` is right on poems, ``math`` on math; ``big`` on both but costly."""
    rng = np.random.default_rng(seed)
    prompts, score = [], []
    for i in range(n):
        topic = "math" if i % 2 else "poem"
        words = TOPICS[topic].split()
        prompts.append(" ".join(rng.choice(words, size=6)) + f" item {i}")
        score.append([1.0, 0.0, 1.0] if topic == "poem" else [0.0, 1.0, 1.0])
    cost = np.tile([1e-4, 2e-4, 1e-2], (n, 1))
    table = make_table(score, cost, models=("cheap", "math", "big"), prompts=prompts)
    cards = {
        "cheap": ModelCard(name="cheap", modalities=("text", "image"), context_window=8),
        "math": ModelCard(name="math"),
        "big": ModelCard(name="big"),
    }
    from dataclasses import replace

    return replace(table, cards=cards)


def noisy_planted(n: int, seed: int, flip: float = 0.3) -> OutcomeTable:
    """:func:`planted` with a ``flip`` share of its scores turned over (a noisy signal)."""
    from dataclasses import replace

    table = planted(n)
    flipped = np.random.default_rng(seed).random(table.score.shape) < flip
    return replace(table, score=np.where(flipped, 1 - table.score, table.score))


def test_router_learns_planted_signal_and_trades_cost() -> None:
    table = planted()
    router = Router(estimator="knn", lam=1.0).fit(table.take(np.arange(0, 160)))
    test = table.take(np.arange(160, 200))
    run = replay(router, test)
    # At λ = 0 quality is perfect; with a cost weight the cheap specialists answer.
    assert run.mean_quality[0] == pytest.approx(1.0)
    d = router.decide_table(test.blind(), test.known, 1.0)
    assert (test.score[np.arange(test.n_prompts), d.final] == 1.0).mean() >= 0.95
    assert not (d.final == 2).any()
    assert run.mean_cost[-1] < run.mean_cost[0]


def test_explain_lists_constraints_and_start_yields_one_attempt() -> None:
    router = Router(lam=1.0).fit(planted())
    long_poem = Query(text="write a poem about the sea " * 40, modalities=frozenset({"text"}))
    plan = router.explain(long_poem, None)
    excluded = {c.model: c.excluded for c in plan.candidates if c.excluded}
    assert "context window" in str(excluded.get("cheap"))
    image = Query(text="solve the equation", modalities=frozenset({"text", "image"}))
    plan = router.explain(image, None)
    assert plan.choice == "cheap"  # the only model that takes images
    flow = router.start(Query(text="solve the integral derivative"), frozenset({"math", "big"}))
    attempt = next(flow)
    assert attempt.model == "math"
    from llmdispatch.policies.base import AttemptResult

    with pytest.raises(StopIteration) as done:
        flow.send(AttemptResult(model="math", text="42"))
    assert done.value.value == "math"
    with pytest.raises(RouterError, match="no model can take"):
        router.explain(image, frozenset({"math"}))


def test_unknown_names_and_bad_values_are_clear_errors() -> None:
    with pytest.raises(UnknownComponentError, match="unknown estimator 'nope'"):
        Router(estimator="nope")
    with pytest.raises(UnknownComponentError, match="unknown encoder"):
        Router(encoder="nope")
    with pytest.raises(ValueError, match="calibration target"):
        Router(calibrate={"budget": 3})
    with pytest.raises(RouterError, match="allow names unknown"):
        Router(allow=["ghost"]).fit(planted())


def test_artifact_round_trip_gives_identical_decisions(tmp_path: Path) -> None:
    table = planted()
    router = Router(estimator="linear", calibrate={"cost_per_query": 5e-4}).fit(table)
    save_artifact(tmp_path / "r", router, {"note": "unit"})
    again, meta = load_artifact(tmp_path / "r")
    assert meta == {"note": "unit"}
    assert again.lam_ == router.lam_
    np.testing.assert_allclose(again.quality_table(table), router.quality_table(table))
    for a, b in zip(replay(router, table).quality, replay(again, table).quality, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "target",
    [{"quality_fraction": 0.95}, {"cost_per_query": 3e-4}, {"strong_share": 0.2}],
)
def test_calibration_hits_target_on_held_out_data(
    shared_data: Callable[[str], Path], target: dict[str, float]
) -> None:
    table = load_table(shared_data("cascades9"))
    fit, val = train_validation(table.split("train"))
    router = Router(calibrate=target).fit(fit, val)
    got = router.check_calibration(table.split("test"))
    ((kind, value),) = target.items()
    assert router.calibration_["validation"]["met"] == 1.0
    # Held-out: within a tolerance of the target (5 % relative for cost and share).
    if kind == "quality_fraction":
        assert got["achieved"] >= value - 0.02
    else:
        assert got["achieved"] <= value * 1.25 + 0.01


def test_calibration_is_described_in_words() -> None:
    found = {
        "cost_per_query": 0.0004,
        "quality": 0.8,
        "strong_share": 0.25,
        "best_single_quality": 0.9,
        "achieved": 0.0004,
        "met": 0.0,
    }
    text = describe(
        {
            "target": {"kind": "cost_per_query", "value": 0.0003},
            "lambda": 0.5,
            "validation": found,
            "validation_prompts": 1200,
        }
    )
    assert text.splitlines() == [
        "calibration: cost ≤ $0.000300 per query → λ = 0.5",
        "  on validation (1,200 prompts): quality 0.800 (88.9% of the best single model's "
        "0.900), $0.000400 per query, 25.0% of calls to the strongest model; "
        "target NOT met: the closest λ was taken",
    ]
    fixed = describe({"target": {"kind": "lambda", "value": 2.0}, "lambda": 2.0})
    assert fixed == "calibration: fixed λ = 2"
    kept = describe({"target": {"kind": "quality_fraction", "value": 0.9}, "lambda": 0.0})
    assert kept.endswith("→ λ = 0 (no validation prompts: λ kept, not calibrated)")
    assert describe_target({"kind": "strong_share", "value": 0.2}) == (
        "≤ 20.0% of calls to the strongest model"
    )
    assert "n/a" in describe_figures({**found, "best_single_quality": 0.0})


def test_router_beats_random_on_real_data(shared_data: Callable[[str], Path]) -> None:
    table = load_table(shared_data("routerbench-subset"))
    train, test = table.split("train"), table.split("test")
    run = replay(Router().fit(train), test)
    random_quality = float(np.nanmean(test.score))
    assert run.mean_quality[0] > random_quality + 0.1
    assert run.mean_quality[0] >= np.nanmax(test.mean_score()) - 0.02


def test_train_and_route_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "planted.jsonl"
    table = planted(120)
    with data.open("w") as fh:
        for i in range(table.n_prompts):
            outcomes = {
                m: {"score": float(table.score[i, j]), "cost_usd": float(table.cost[i, j])}
                for j, m in enumerate(table.models)
            }
            split = "test" if i % 4 == 0 else "train"
            rec = {
                "id": f"p{i}",
                "dataset": "planted",
                "split": split,
                "prompt": str(table.prompts[i]),
                "outcomes": outcomes,
            }
            fh.write(json.dumps(rec) + "\n")
    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        f"data: {data}\nout: {tmp_path / 'art'}\nestimator: knn\n"
        "calibrate: {quality_fraction: 0.9}\n"
    )
    assert main(["train", str(cfg)]) == 0
    assert (tmp_path / "art" / "artifact.json").is_file()
    err = capsys.readouterr().err
    # The calibration is reported in words, on validation and on test, not as a raw dict.
    assert "calibration: quality ≥ 90.0% of the best single model's → λ = " in err
    assert "on validation (" in err and "on test (30 prompts): quality " in err
    assert "{" not in err
    assert main(["route", str(tmp_path / "art"), "solve the integral", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["choice"] in table.models and len(doc["candidates"]) == 3
    # Many prompts at once: one JSON line each, the same decisions as one at a time.
    prompts = [str(p) for p in table.prompts[:40]]
    batch = tmp_path / "prompts.jsonl"
    batch.write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n" for i, p in enumerate(prompts))
    )
    assert main(["route", str(tmp_path / "art"), "--file", str(batch)]) == 0
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [d["id"] for d in lines] == [f"q{i}" for i in range(40)]
    for i in (0, 7, 39):
        assert main(["route", str(tmp_path / "art"), prompts[i], "--json"]) == 0
        one = json.loads(capsys.readouterr().out)
        assert lines[i]["choice"] == one["choice"]
        assert lines[i]["quality"] == {
            c["model"]: round(c["quality"], 6) for c in one["candidates"]
        }
    text = tmp_path / "prompts.txt"
    text.write_text("solve the integral\n\nwrite a poem\n")
    assert main(["route", str(tmp_path / "art"), "--file", str(text), "--only", "cheap"]) == 0
    rows = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [(r["id"], r["choice"]) for r in rows] == [("1", "cheap"), ("3", "cheap")]
    assert main(["route", str(tmp_path / "art"), "--file", str(text), "--only", "nosuch"]) == 2
    assert "--only names models this artifact does not know: nosuch" in capsys.readouterr().err
    batch.write_text('{"id": "a", "prompt": "fine"}\n{"id": "b"}\n')
    assert main(["route", str(tmp_path / "art"), "--file", str(batch)]) == 2
    assert "prompts.jsonl:2: field 'prompt': expected a non-empty string" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"data: {data}\nout: x\nestimator: knn\nvalidation_fraction: 3\n")
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml:4: validation_fraction" in err
    # A bad calibration target is reported at its line, without pydantic's input dump.
    bad.write_text(f"data: {data}\nout: x\ncalibrate: {{quality_fraction: 1.5}}\n")
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml:3: calibrate: Value error, quality_fraction must be in [0, 1]" in err
    assert "errors.pydantic.dev" not in err and "input_value" not in err
    assert main(["route", str(tmp_path / "missing"), "hi"]) == 2
    capsys.readouterr()
    assert main(["route", str(tmp_path / "art"), "hi", "--only", "nosuch", table.models[0]]) == 2
    err = capsys.readouterr().err
    assert "--only names models this artifact does not know: nosuch; known: " in err


def test_encoder_is_chosen_on_validation() -> None:
    table = planted(240)
    train, validation = table.take(np.arange(0, 180)), table.take(np.arange(180, 240))
    router = Router(encoder="auto", encoder_candidates=("tfidf", "tfidf-svd")).fit(
        train, validation
    )
    scores = router.member_scores_
    assert set(scores) == {"tfidf", "tfidf-svd"}
    chosen = min(scores, key=lambda k: scores[k])
    assert router.trained_on_["encoder"] == chosen
    again = Router.from_state(router.get_state())
    np.testing.assert_allclose(again.quality_table(validation), router.quality_table(validation))


def test_encoder_ensemble_weighs_its_members_on_validation(tmp_path: Path) -> None:
    from dataclasses import replace

    table = planted(300)
    rng = np.random.default_rng(1)  # 30 % of the scores flipped: the two views err apart
    flip = rng.random(table.score.shape) < 0.3
    table = replace(table, score=np.where(flip, 1 - table.score, table.score))
    train, validation = table.take(np.arange(0, 200)), table.take(np.arange(200, 300))
    router = Router(encoder="ensemble", encoder_candidates=("tfidf", "tfidf-svd")).fit(
        train, validation
    )
    weights = router.trained_on_["member_weights"]
    assert set(weights) == {"tfidf", "tfidf-svd"} and sum(weights.values()) == pytest.approx(1)
    assert all(abs(10 * w - round(10 * w)) < 1e-9 for w in weights.values())
    assert len(router.members_) == len(weights) and router.encoder_ is router.members_[0][0]
    # The weights minimise the validation Brier score over the grid: no single member of
    # the ensemble (weight 1 on it) does better.
    known, truth = validation.known, np.nan_to_num(validation.score)

    def brier(q: np.ndarray) -> float:
        return float(((q - truth) ** 2)[known].mean())

    mixed = brier(router.quality_table(validation))
    assert all(mixed <= s + 1e-12 for s in router.member_scores_.values())
    # Q̂ is the weighted mean of the members' estimates, live and offline alike.
    texts = validation.full_prompts()
    parts = [est.predict(enc.encode(texts)) for enc, est in router.members_]
    expected = sum(w * q for w, q in zip(router.weights_, parts, strict=True))
    np.testing.assert_allclose(router.quality_table(validation), expected, atol=1e-6)
    live = np.vstack([router.quality([Query.from_text(t)]) for t in texts[:10]])
    np.testing.assert_allclose(live, expected[:10], atol=1e-5)
    save_artifact(tmp_path / "ens", router)
    again, _ = load_artifact(tmp_path / "ens")
    np.testing.assert_allclose(again.weights_, router.weights_)
    np.testing.assert_allclose(again.quality_table(validation), router.quality_table(validation))
    assert (
        again.explain(Query.from_text(texts[0])).choice
        == router.explain(Query.from_text(texts[0])).choice
    )


def test_auto_keeps_one_member_and_the_single_encoder_artifact_layout() -> None:
    table = planted(240)
    train, validation = table.take(np.arange(0, 180)), table.take(np.arange(180, 240))
    router = Router(encoder="auto", encoder_candidates=("tfidf", "tfidf-svd")).fit(
        train, validation
    )
    assert len(router.members_) == 1 and router.weights_.tolist() == [1.0]
    state = router.get_state()
    assert "members" not in state and {"encoder", "estimator"} <= set(state)
    assert list(router.trained_on_["member_weights"].values()) == [1.0]


@pytest.mark.parametrize(("n", "count"), [(1, 1), (2, 11), (3, 66), (6, 3003)])
def test_ensemble_weight_grid_is_every_tenth_split(n: int, count: int) -> None:
    from llmdispatch.policies.mixing import simplex

    grid = simplex(n, 10)
    assert grid.shape == (count, n) and len({tuple(r) for r in grid}) == count
    np.testing.assert_allclose(grid.sum(axis=1), 1.0)
    assert (grid >= 0).all() and np.allclose(grid * 10, np.round(grid * 10))


def test_route_command_shows_how_an_ensemble_mixes_its_encoders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = noisy_planted(300, seed=1)
    train, validation = table.take(np.arange(0, 200)), table.take(np.arange(200, 300))
    router = Router(encoder="ensemble", encoder_candidates=("tfidf", "tfidf-svd"))
    save_artifact(tmp_path / "ens", router.fit(train, validation))
    capsys.readouterr()
    assert main(["route", str(tmp_path / "ens"), "write a sonnet about the sea"]) == 0
    out = capsys.readouterr().out
    weights = router.trained_on_["member_weights"]
    assert "estimates mixed over members" in out
    assert all(f"{name} {w:.2f}" in out for name, w in weights.items())


def test_stacked_router_mixes_paradigms_on_validation(tmp_path: Path) -> None:
    table = noisy_planted(300, seed=2)
    train, validation = table.take(np.arange(0, 200)), table.take(np.arange(200, 300))
    members = [
        {"estimator": "knn"},
        {"estimator": "embedllm"},
        {"estimator": "linear", "encoder": "tfidf-svd", "name": "linear-svd"},
    ]
    router = Router(members=members).fit(train, validation)
    assert set(router.member_scores_) == {"knn@tfidf", "embedllm@tfidf", "linear-svd"}
    weights = router.trained_on_["member_weights"]
    assert set(weights) <= set(router.member_scores_) and sum(weights.values()) == pytest.approx(1)
    known, truth = validation.known, np.nan_to_num(validation.score)
    mixed = float(((router.quality_table(validation) - truth) ** 2)[known].mean())
    assert all(mixed <= s + 1e-12 for s in router.member_scores_.values())
    texts = validation.full_prompts()
    live = np.vstack([router.quality([Query.from_text(t)]) for t in texts[:8]])
    np.testing.assert_allclose(live, router.quality_table(validation)[:8], atol=1e-5)
    save_artifact(tmp_path / "stack", router)
    again, _ = load_artifact(tmp_path / "stack")
    assert again.member_labels_ == router.member_labels_
    np.testing.assert_allclose(again.quality_table(validation), router.quality_table(validation))


def test_mix_weights_search_the_grid_or_select_greedily() -> None:
    from llmdispatch.policies.mixing import brier_loss, mix_weights

    rng = np.random.default_rng(0)
    truth = (rng.random((120, 4)) < 0.5).astype(float)
    known = np.ones_like(truth, dtype=bool)
    noisy = [np.clip(truth + rng.normal(0, s, truth.shape), 0, 1) for s in (0.3, 0.5, 0.7)]
    # Two independent noisy views: the best mix weighs both (exact grid of tenths).
    brier = brier_loss(truth, known)
    w = mix_weights([noisy[0], np.clip(truth + rng.normal(0, 0.3, truth.shape), 0, 1)], brier, 10)
    assert 0 < w[0] < 1 and w.sum() == pytest.approx(1)
    # Twelve members: greedy selection; a member equal to the truth takes all the weight.
    many = [*noisy * 3, np.full_like(truth, 0.5), truth.copy(), 1 - truth]
    w = mix_weights(many, brier, 10)
    assert w.tolist() == [0.0] * 10 + [1.0, 0.0]
    # Without a perfect member the greedy mix still beats its best single member.
    w = mix_weights(
        [*noisy, *(np.clip(truth + rng.normal(0, 0.4, truth.shape), 0, 1) for _ in range(9))],
        brier,
        10,
    )
    assert np.allclose(w * 10, np.round(w * 10)) and w.sum() == pytest.approx(1)
    assert (w > 0).sum() > 1


def test_stack_members_are_checked() -> None:
    with pytest.raises(UnknownComponentError, match="knn"):
        Router(members=[{"estimator": "nope"}])
    with pytest.raises(RouterError, match="distinct names"):
        Router(members=[{"estimator": "knn"}, {"estimator": "knn", "estimator_params": {}}])
    with pytest.raises(RouterError, match="bad router member"):
        Router(members=[{"estimator": "knn", "encoderr": "tfidf"}])
    with pytest.raises(RouterError, match="at least one"):
        Router(members=[])
    with pytest.raises(RouterError, match="mapping"):
        Router(members=[3])  # type: ignore[list-item]


def test_a_stack_only_chooses_models_every_member_estimates() -> None:
    table = planted(240)
    train, validation = table.take(np.arange(0, 180)), table.take(np.arange(180, 240))
    router = Router(members=[{"estimator": "knn"}, {"estimator": "hybrid-llm-prob"}])
    router.fit(train, validation)
    # Whatever weights validation chose, mix both members equally.
    knn = Router(estimator="knn").fit(train).members_[0]
    hybrid = Router(estimator="hybrid-llm-prob").fit(train).members_[0]
    router._set_members([knn, hybrid], [0.5, 0.5], ["knn", "hybrid"])
    pair = set(hybrid[1].models_)
    assert len(pair) == 2 < len(router.models_)  # Hybrid LLM covers one (cheap, strong) pair
    assert {router.models_[j] for j in np.flatnonzero(router._allow_mask())} == pair
    plan = router.explain(Query.from_text("solve the integral"))
    assert plan.choice in pair
    assert all(c.excluded for c in plan.candidates if c.model not in pair)


def test_stack_weights_from_out_of_fold_estimates(tmp_path: Path) -> None:
    from llmdispatch.data.splits import kfold_indices
    from llmdispatch.policies.mixing import brier_loss, mix_weights

    table = noisy_planted(240, seed=3)
    train, validation = table.take(np.arange(0, 160)), table.take(np.arange(160, 240))
    members = [{"estimator": "knn"}, {"estimator": "linear"}]
    router = Router(members=members, weight_folds=4).fit(train, validation)
    # Every training row is estimated by copies fitted without its fold, not by the
    # members that saw it: the first fold, refitted by hand, gives the same numbers.
    out_of_fold = router._out_of_fold(router.member_specs(), train)
    fit_rows, held = next(kfold_indices(train.n_prompts, 4))
    for spec, oof in zip(router.member_specs(), out_of_fold, strict=True):
        alone = Router(estimator=spec.estimator).fit(train.take(fit_rows))
        np.testing.assert_allclose(oof[held], alone.quality_table(train.take(held)))
    in_sample = Router(estimator="knn").fit(train).quality_table(train)
    assert not np.allclose(out_of_fold[0], in_sample)
    # The weights minimise the Brier score over out-of-fold and validation rows together.
    val = [Router(estimator=m["estimator"]).fit(train).quality_table(validation) for m in members]
    rows = [np.vstack([o, v]) for o, v in zip(out_of_fold, val, strict=True)]
    truth = np.vstack([np.nan_to_num(train.score), np.nan_to_num(validation.score)])
    known = np.vstack([train.known, validation.known])
    expected = mix_weights(rows, brier_loss(truth, known), 10)
    weights = router.trained_on_["member_weights"]
    assert [weights.get(label, 0.0) for label in ("knn@tfidf", "linear@tfidf")] == pytest.approx(
        expected.tolist()
    )
    save_artifact(tmp_path / "cv", router)
    again, _ = load_artifact(tmp_path / "cv")
    assert again.weight_folds == 4
    np.testing.assert_allclose(again.quality_table(validation), router.quality_table(validation))
    with pytest.raises(RouterError, match="weight_folds"):
        Router(members=members, weight_folds=1)
    with pytest.raises(RouterError, match="weight_folds=10 needs at least 20 training prompts"):
        Router(members=members, weight_folds=10).fit(train.take(np.arange(12)), validation)


def test_members_fitted_on_threads_give_the_same_router(tmp_path: Path) -> None:
    """``n_jobs`` fits members, out-of-fold copies and the refit side by side; each is
    fitted as alone, so every choice and estimate equals the one-thread router's."""
    table = noisy_planted(240, seed=6)
    train, validation = table.take(np.arange(0, 160)), table.take(np.arange(160, 240))
    members = [{"estimator": "knn"}, {"estimator": "linear"}, {"estimator": "embedllm"}]
    params = {"members": members, "weight_folds": 3, "refit": True}
    one = Router(**params).fit(train, validation)
    threads = Router(**params, n_jobs=2).fit(train, validation)
    assert threads.member_scores_ == one.member_scores_
    assert threads.trained_on_ == one.trained_on_
    np.testing.assert_array_equal(threads.quality_table(validation), one.quality_table(validation))
    every_core = Router(**params, n_jobs=-1).fit(train, validation)
    np.testing.assert_array_equal(
        every_core.quality_table(validation), one.quality_table(validation)
    )
    save_artifact(tmp_path / "threads", threads)
    again, _ = load_artifact(tmp_path / "threads")
    assert again.n_jobs == 2
    for bad in (0, -2):
        with pytest.raises(RouterError, match="n_jobs must be >= 1 or -1"):
            Router(members=members, n_jobs=bad)


def test_auto_encoder_chosen_on_out_of_fold_estimates_too() -> None:
    """``encoder="auto"`` with ``weight_folds`` judges each candidate on out-of-fold
    estimates of the training rows together with validation, and keeps the best."""
    from llmdispatch.policies.mixing import brier_loss

    table = noisy_planted(240, seed=5)
    train, validation = table.take(np.arange(0, 160)), table.take(np.arange(160, 240))
    params = {"encoder": "auto", "encoder_candidates": ("tfidf", "tfidf-svd")}
    router = Router(**params, weight_folds=4).fit(train, validation)
    specs = router.member_specs()
    out_of_fold = router._out_of_fold(specs, train)
    truth = np.vstack([np.nan_to_num(train.score), np.nan_to_num(validation.score)])
    loss = brier_loss(truth, np.vstack([train.known, validation.known]))
    expected = {}
    for spec, oof in zip(specs, out_of_fold, strict=True):
        alone = Router(encoder=spec.encoder).fit(train).quality_table(validation)
        expected[spec.label] = loss(np.vstack([oof, alone]))
    assert router.member_scores_ == pytest.approx(expected)
    assert router.member_labels_ == [min(expected, key=expected.__getitem__)]
    on_validation = Router(**params).fit(train, validation).member_scores_
    assert on_validation != pytest.approx(expected)  # validation alone scores differently


def test_refit_learns_from_validation_too_and_keeps_the_choices(tmp_path: Path) -> None:
    table = noisy_planted(240, seed=4)
    train, validation = table.take(np.arange(0, 160)), table.take(np.arange(160, 240))
    members = [{"estimator": "knn"}, {"estimator": "linear"}]
    kept = Router(members=members, calibrate={"quality_fraction": 0.9}).fit(train, validation)
    refit = Router(members=members, calibrate={"quality_fraction": 0.9}, refit=True)
    refit.fit(train, validation)
    # Weights and λ are chosen before the refit, so they are the same as without it ...
    assert refit.trained_on_["member_weights"] == kept.trained_on_["member_weights"]
    assert refit.lam_ == kept.lam_ and refit.trained_on_["refit_prompts"] == 240
    # ... and the members are those a fit on both tables gives.
    both = train.concat(validation)
    texts = validation.full_prompts()
    for label, (enc, est) in zip(refit.member_labels_, refit.members_, strict=True):
        alone = Router(estimator=label.split("@")[0]).fit(both)
        np.testing.assert_allclose(
            est.predict(enc.encode(texts)), alone.estimator_.predict(alone.encoder_.encode(texts))
        )
    single = Router(estimator="knn", refit=True).fit(train, validation)
    assert single.trained_on_["refit_prompts"] == 240
    np.testing.assert_allclose(
        single.quality_table(validation),
        Router(estimator="knn").fit(both).quality_table(validation),
    )
    assert not np.allclose(
        single.quality_table(validation),
        Router(estimator="knn").fit(train).quality_table(validation),
    )
    save_artifact(tmp_path / "refit", refit)
    again, _ = load_artifact(tmp_path / "refit")
    assert again.refit
    np.testing.assert_allclose(again.quality_table(validation), refit.quality_table(validation))


def test_tables_join_only_with_the_same_models() -> None:
    table = planted(20)
    both = table.take(np.arange(0, 8)).concat(table.take(np.arange(8, 20)))
    assert both.n_prompts == 20 and list(both.ids) == list(table.ids)
    np.testing.assert_array_equal(both.score, table.score)
    with pytest.raises(ValueError, match="different models"):
        table.concat(table.select_models(["big", "cheap"]))


def test_weights_by_aiq_judge_members_by_the_routes_they_give(tmp_path: Path) -> None:
    from llmdispatch.evaluation.metrics import References, aiq

    table = noisy_planted(240, seed=5)
    train, validation = table.take(np.arange(0, 160)), table.take(np.arange(160, 240))
    members = [{"estimator": "knn"}, {"estimator": "linear"}]
    router = Router(members=members, weight_metric="aiq").fit(train, validation)
    # Each member's score is the AIQ of that member routing the validation prompts alone.
    refs = References.from_matrices(validation.models, validation.score, validation.cost)
    for m in members:
        run = replay(Router(estimator=m["estimator"]).fit(train), validation)
        label = f"{m['estimator']}@tfidf"
        expected = aiq(run.mean_cost, run.mean_quality, refs)
        assert router.member_scores_[label] == pytest.approx(expected)
    # The loss ranks decisions, not levels: estimates that order the models as the truth does
    # but sit far from it lose nothing by it, whereas their Brier score is poor.
    loss = router._mix_loss(train, validation, np.ones(validation.n_models, dtype=bool))
    truth = np.nan_to_num(validation.score)
    squashed = 0.5 + 0.01 * (truth - 0.5)
    assert loss(squashed) == pytest.approx(loss(truth), abs=0.02)
    assert loss(truth) < loss(np.full_like(truth, 0.5)) < 0
    save_artifact(tmp_path / "aiq", router)
    again, _ = load_artifact(tmp_path / "aiq")
    assert again.weight_metric == "aiq"
    np.testing.assert_allclose(again.quality_table(validation), router.quality_table(validation))
    with pytest.raises(RouterError, match="weight_metric must be one of"):
        Router(members=members, weight_metric="accuracy")

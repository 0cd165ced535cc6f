"""Core contracts: the registry, artifacts, splits and the JSONL loader on real shared data."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import numpy as np
import pytest

from llmdispatch.artifacts import ArtifactError, load_artifact, save_artifact
from llmdispatch.data.builder import DataError
from llmdispatch.data.locate import available_datasets, load_table, resolve_dataset
from llmdispatch.data.splits import hash_split_label, kfold_indices
from llmdispatch.registry import REGISTRY, Registry, UnknownComponentError


class _Constant:
    """A tiny persistable component used only by these tests."""

    def __init__(self, values: np.ndarray, label: str) -> None:
        self.values = values
        self.label = label

    def get_state(self) -> dict[str, Any]:
        return {"values": self.values, "label": self.label, "nested": {"w": self.values * 2}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        assert np.array_equal(state["nested"]["w"], state["values"] * 2)
        return cls(state["values"], state["label"])


def test_registry_rejects_unknown_names_and_kinds() -> None:
    reg = Registry()
    reg._builtins_loaded = True  # a private registry: no built-ins
    reg.register("encoder", "a")(type("A", (), {}))
    with pytest.raises(UnknownComponentError, match="known: a"):
        reg.get("encoder", "b")
    with pytest.raises(ValueError, match="unknown kind"):
        reg.register("nope", "x")


@pytest.fixture
def constant_registered() -> Iterator[None]:
    """Register the test component for one test only, so suites never see it."""
    REGISTRY.register("estimator", "_test-constant")(_Constant)
    yield
    del REGISTRY._items["estimator"]["_test-constant"]


@pytest.mark.usefixtures("constant_registered")
def test_artifact_round_trip_without_pickle(tmp_path: Path) -> None:
    obj = _Constant(np.arange(6, dtype=np.float64).reshape(2, 3), "demo")
    save_artifact(tmp_path / "a", obj, {"trained_on": "unit"})  # type: ignore[arg-type]
    doc = json.loads((tmp_path / "a" / "artifact.json").read_text())
    assert doc["metadata"] == {"trained_on": "unit"}
    back, _meta = load_artifact(tmp_path / "a")
    assert isinstance(back, _Constant) and back.label == "demo"
    np.testing.assert_array_equal(back.values, obj.values)
    with pytest.raises(ArtifactError, match=r"no artifact\.json"):
        load_artifact(tmp_path / "missing")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["arrays.npz", "artifact.json"]


@pytest.mark.usefixtures("constant_registered")
def test_an_artifact_mixed_from_two_saves_is_refused(tmp_path: Path) -> None:
    first = _Constant(np.zeros((2, 3)), "first")
    second = _Constant(np.ones((2, 3)), "second")
    save_artifact(tmp_path / "a", first)  # type: ignore[arg-type]
    old_json = (tmp_path / "a" / "artifact.json").read_text()
    save_artifact(tmp_path / "a", second)  # type: ignore[arg-type]
    assert load_artifact(tmp_path / "a")[0].label == "second"
    # The JSON of one save beside the arrays of the next: same layout, different save.
    (tmp_path / "a" / "artifact.json").write_text(old_json)
    with pytest.raises(ArtifactError, match="come from different saves"):
        load_artifact(tmp_path / "a")
    # Artifacts written before save ids existed still load.
    doc = json.loads(old_json)
    del doc["save_id"]
    (tmp_path / "a" / "artifact.json").write_text(json.dumps(doc))
    assert load_artifact(tmp_path / "a")[0].label == "first"


def test_hash_split_is_deterministic_and_balanced() -> None:
    labels = [hash_split_label(f"prompt-{i}", 0.3) for i in range(4000)]
    assert labels == [hash_split_label(f"prompt-{i}", 0.3) for i in range(4000)]
    share = labels.count("test") / len(labels)
    assert 0.27 < share < 0.33
    folds = kfold_indices(100, 5, seed=0)
    covered = np.sort(np.concatenate([test for _, test in folds]))
    np.testing.assert_array_equal(covered, np.arange(100))


def test_missing_dataset_lists_what_exists() -> None:
    with pytest.raises(DataError, match="Found:"):
        resolve_dataset("no-such-dataset-xyz")


def test_jsonl_loader_matches_direct_computation(shared_data: Callable[[str], Path]) -> None:
    folder = shared_data("cascades9")
    assert available_datasets()["cascades9"] == folder
    table = load_table("cascades9")
    rows: dict[str, dict[str, float]] = {}
    with gzip.open(folder / "outcomes.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            for model, outcome in rec["outcomes"].items():
                if outcome.get("score") is not None:
                    rows.setdefault(model, {})[rec["id"]] = float(outcome["score"])
    for j, model in enumerate(table.models):
        direct = np.mean(list(rows[model].values()))
        assert table.mean_score()[j] == pytest.approx(direct, abs=1e-9)

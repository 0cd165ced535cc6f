"""The package's public surface: what `from llmdispatch import …` offers, and that it is light."""

from __future__ import annotations

import inspect
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import llmdispatch

EXPECTED = {
    "BanditRouter",
    "CalibrationTarget",
    "Cascade",
    "CascadeRouting",
    "DataError",
    "FrugalGPTCascade",
    "GuaranteedCascade",
    "ModelCard",
    "OutcomeTable",
    "Plan",
    "Policy",
    "Query",
    "REGISTRY",
    "Router",
    "RouterCascade",
    "__version__",
    "from_records",
    "load_artifact",
    "load_table",
    "replay",
    "save_artifact",
    "train_validation",
}


def test_exports_are_the_curated_list() -> None:
    # A change to the public surface is a decision: update EXPECTED (and the README) with it.
    assert set(llmdispatch.__all__) == EXPECTED
    assert set(llmdispatch._EXPORTS) == EXPECTED - {"__version__"}
    assert set(dir(llmdispatch)) >= EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED - {"__version__", "REGISTRY"}))
def test_every_export_is_the_documented_object_it_names(name: str) -> None:
    value = getattr(llmdispatch, name)
    assert value.__module__.startswith("llmdispatch.")
    assert inspect.getdoc(value), f"{name} has no docstring"
    assert getattr(value, "__name__", name) == name


def test_policies_exported_are_registered_by_their_names() -> None:
    for name, kind in [
        ("Router", "router"),
        ("Cascade", "cascade"),
        ("RouterCascade", "router-cascade"),
        ("CascadeRouting", "cascade-routing"),
        ("BanditRouter", "bandit"),
    ]:
        assert llmdispatch.REGISTRY.get("policy", kind) is getattr(llmdispatch, name)


def test_unknown_names_raise_attribute_error_and_submodules_still_import() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = llmdispatch.Nope  # type: ignore[attr-defined]
    from llmdispatch import kernels

    assert kernels.__name__ == "llmdispatch.kernels"


def test_importing_the_package_loads_no_heavy_dependency() -> None:
    code = (
        "import sys, llmdispatch\n"
        "heavy = ['scipy', 'sklearn', 'torch', 'sentence_transformers', 'starlette', "
        "'uvicorn', 'numba', 'redis', 'sqlalchemy', 'openai']\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == ""


def test_the_readme_python_example_runs_as_written(
    shared_data: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared_data("cascades9")  # skips (fails in CI) without the shared data
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    after = readme.split("In Python (the package's top level", 1)[1]
    code = after.split("```python\n", 1)[1].split("```", 1)[0]
    assert "from llmdispatch import" in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "artifacts" / "my-router" / "artifact.json").is_file()

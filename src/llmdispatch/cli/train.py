"""``llmdispatch train CONFIG``: fit a policy on an outcome table and save it as an artifact."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmdispatch.yamlconfig import load_yaml_model


class TrainConfig(BaseModel):
    """The YAML file ``train`` reads. Router shortcuts sit at the top; other policies use
    ``params``."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="data-set name (e.g. cascades9) or path")
    out: str = Field(description="artifact folder to write")
    policy: str = "router"
    params: dict[str, Any] = Field(default_factory=dict)
    encoder: str | None = None
    encoder_params: dict[str, Any] | None = None
    estimator: str | None = None
    estimator_params: dict[str, Any] | None = None
    calibrate: dict[str, Any] | None = None
    allow: list[str] | None = None
    datasets: list[str] | None = Field(default=None, description="keep only these labels")
    models: list[str] | None = Field(default=None, description="keep only these models")
    validation_fraction: float = Field(default=0.25, gt=0, lt=1)
    allow_pickle: bool = False

    @field_validator("calibrate")
    @classmethod
    def _known_target(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """Check the target here, so that a bad one is reported at its line of the file."""
        if value is not None:
            from llmdispatch.policies.calibrate import CalibrationTarget

            CalibrationTarget.model_validate(value)
        return value

    def policy_params(self) -> dict[str, Any]:
        """Constructor arguments of the policy: ``params`` plus the router shortcuts."""
        params = dict(self.params)
        for key in ("encoder", "encoder_params", "estimator", "estimator_params", "calibrate"):
            value = getattr(self, key)
            if value is not None:
                params[key] = value
        if self.allow is not None:
            params["allow"] = self.allow
        return params


def register(subparsers: Any) -> None:
    """Add the ``train`` command."""
    p = subparsers.add_parser(
        "train",
        help="train a router (or any registered policy) from a YAML config",
        description="Fit a policy on the training split of a data set, calibrate it on a "
        "validation split carved from it, report the calibration on the test split, and "
        "save it as an artifact (JSON + arrays, no pickle).",
    )
    p.add_argument("config", type=Path, help="YAML config (data, encoder, estimator, ...)")
    p.add_argument("--out", type=Path, help="override the config's artifact folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train, save, and print what was done."""
    from rich.console import Console

    from llmdispatch.artifacts import save_artifact
    from llmdispatch.data import load_table, train_validation
    from llmdispatch.data.locate import resolve_dataset
    from llmdispatch.evaluation.replay import replay
    from llmdispatch.policies.calibrate import describe, describe_figures
    from llmdispatch.registry import REGISTRY

    console = Console(stderr=True)
    cfg = load_yaml_model(args.config, TrainConfig)
    out = args.out or Path(cfg.out)
    start = time.perf_counter()
    table = load_table(cfg.data, allow_pickle=cfg.allow_pickle)
    if cfg.datasets:
        table = table.only_datasets(cfg.datasets)
    if cfg.models:
        table = table.select_models(cfg.models)
    train, test = table.split("train"), table.split("test")
    if train.n_prompts == 0:
        raise ValueError(f"{cfg.data}: no training rows (split == 'train') after filtering")
    fit_part, validation = train_validation(train, cfg.validation_fraction)
    policy = REGISTRY.get("policy", cfg.policy)(**cfg.policy_params())
    policy.label = out.name
    console.print(
        f"training {cfg.policy} on {fit_part.n_prompts} prompts × {train.n_models} models "
        f"(validation {validation.n_prompts}, test {test.n_prompts})"
    )
    policy.fit(fit_part, validation)
    metadata: dict[str, Any] = {
        "config": cfg.model_dump(),
        "data": str(resolve_dataset(cfg.data)),
        "train_prompts": int(fit_part.n_prompts),
        "validation_prompts": int(validation.n_prompts),
        "trained_seconds": round(time.perf_counter() - start, 3),
    }
    if test.n_prompts and hasattr(policy, "check_calibration") and cfg.calibrate:
        metadata["test_calibration"] = policy.check_calibration(test)
    if test.n_prompts:
        run_ = replay(policy, test)
        metadata["test_curve"] = {
            "knob": run_.knobs.tolist(),
            "cost": run_.mean_cost.tolist(),
            "quality": run_.mean_quality.tolist(),
        }
    save_artifact(out, policy, metadata)
    cal = getattr(policy, "calibration_", None)
    if cal:
        console.print(describe(cal), highlight=False)
    if "test_calibration" in metadata:
        console.print(
            f"  on test ({test.n_prompts:,} prompts): "
            f"{describe_figures(metadata['test_calibration'])}",
            highlight=False,
        )
    console.print(f"saved {out} in {metadata['trained_seconds']:.1f} s")
    print(out)
    return 0

"""llmdispatch: multi-LLM routing and cascading, measured honestly and served live.

The names a user needs are importable from here::

    from llmdispatch import Router, load_table, replay, train_validation

    table = load_table("cascades9")
    fit, val = train_validation(table.split("train"))
    router = Router(calibrate={"quality_fraction": 0.95}).fit(fit, val)
    curve = replay(router, table.split("test"))

They load on first use (PEP 562), so ``import llmdispatch`` stays light: no SciPy,
scikit-learn, torch or web stack until a router, a metric or the gateway is asked for.
Everything else lives in the subpackages (``data``, ``features``, ``estimators``,
``policies``, ``signals``, ``evaluation``, ``gateway``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name → the module that defines it.
_EXPORTS: dict[str, str] = {
    # outcome tables
    "DataError": "llmdispatch.data",
    "ModelCard": "llmdispatch.catalog",
    "OutcomeTable": "llmdispatch.data",
    "from_records": "llmdispatch.data",
    "load_table": "llmdispatch.data",
    "train_validation": "llmdispatch.data",
    # queries and policies
    "BanditRouter": "llmdispatch.policies.bandit",
    "CalibrationTarget": "llmdispatch.policies.calibrate",
    "Cascade": "llmdispatch.policies.cascade",
    "CascadeRouting": "llmdispatch.policies.cascade_routing",
    "FrugalGPTCascade": "llmdispatch.policies.cascade_fit",
    "GuaranteedCascade": "llmdispatch.policies.guaranteed",
    "Plan": "llmdispatch.policies.base",
    "Policy": "llmdispatch.policies.base",
    "Query": "llmdispatch.query",
    "Router": "llmdispatch.policies.router",
    "RouterCascade": "llmdispatch.policies.router_cascade",
    # components by name, artifacts, evaluation
    "REGISTRY": "llmdispatch.registry",
    "load_artifact": "llmdispatch.artifacts",
    "replay": "llmdispatch.evaluation.replay",
    "save_artifact": "llmdispatch.artifacts",
}

__all__ = [
    "REGISTRY",
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
    "Router",
    "RouterCascade",
    "__version__",
    "from_records",
    "load_artifact",
    "load_table",
    "replay",
    "save_artifact",
    "train_validation",
]

if TYPE_CHECKING:
    from llmdispatch.artifacts import load_artifact, save_artifact
    from llmdispatch.catalog import ModelCard
    from llmdispatch.data import (
        DataError,
        OutcomeTable,
        from_records,
        load_table,
        train_validation,
    )
    from llmdispatch.evaluation.replay import replay
    from llmdispatch.policies.bandit import BanditRouter
    from llmdispatch.policies.base import Plan, Policy
    from llmdispatch.policies.calibrate import CalibrationTarget
    from llmdispatch.policies.cascade import Cascade
    from llmdispatch.policies.cascade_fit import FrugalGPTCascade
    from llmdispatch.policies.cascade_routing import CascadeRouting
    from llmdispatch.policies.guaranteed import GuaranteedCascade
    from llmdispatch.policies.router import Router
    from llmdispatch.policies.router_cascade import RouterCascade
    from llmdispatch.query import Query
    from llmdispatch.registry import REGISTRY


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use and cache the name here."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llmdispatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})

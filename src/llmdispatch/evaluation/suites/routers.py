"""Benchmark routers: one :class:`~llmdispatch.policies.router.Router` per paradigm.

Each is the default encoder (hashed n-gram TF-IDF) with one estimator. The kNN baseline
(``router-knn``) chooses its encoder (TF-IDF or MiniLM) on the validation split, and by
leave-one-out its ``k`` and whether to search neighbours exactly or in an LSA projection, so
every other router is compared with the tuned kNN, not a weak one. ``router-knn-tfidf`` is
the default kNN (LSA, 128 dimensions), ``router-knn-exact`` the exact sparse search, and
``router-knn-ensemble`` averages a TF-IDF kNN and a MiniLM kNN (each tuned the same way)
with weights chosen on the validation split. ``router-stack`` mixes five members across
paradigms and encoders (kNN on TF-IDF and on MiniLM; EmbedLLM, MLP and Eagle on TF-IDF) with
the convex weights that minimise the validation Brier score.
Every router is refitted (``refit=True``): once its choices (encoder, members' weights) are
made on the validation split, what it keeps has learnt from the whole training split, so no
router is compared with fewer labelled prompts than another.
Hyper-parameters are the estimators' own validation-tuned defaults; nothing here is tuned on
a test split.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmdispatch.evaluation.suites import benchmark_policy
from llmdispatch.policies.base import Policy
from llmdispatch.policies.router import Router

#: label → Router parameters.
ROUTERS: dict[str, dict[str, Any]] = {
    "knn": {
        "estimator": "knn",
        "estimator_params": {"n_components": "auto"},
        "encoder": "auto",
        "cache_encodings": True,
    },
    "knn-tfidf": {"estimator": "knn"},
    "knn-exact": {"estimator": "knn", "estimator_params": {"n_components": None}},
    "knn-ensemble": {
        "estimator": "knn",
        "estimator_params": {"n_components": "auto"},
        "encoder": "ensemble",
        "cache_encodings": True,
    },
    "stack": {
        "members": [
            {"estimator": "knn", "estimator_params": {"n_components": "auto"}, "encoder": e}
            for e in ("tfidf", "minilm")
        ]
        + [{"estimator": name} for name in ("embedllm", "mlp", "eagle")],
        "cache_encodings": True,
    },
    "linear": {"estimator": "linear"},
    "mlp": {"estimator": "mlp"},
    "mf": {"estimator": "mf"},
    "embedllm": {"estimator": "embedllm"},
    "uniroute": {"estimator": "uniroute"},
    "bradley-terry": {"estimator": "bradley-terry"},
    "sw-ranking": {"estimator": "sw-ranking"},
    "eagle": {"estimator": "eagle"},
    "hybrid-llm": {"estimator": "hybrid-llm-prob"},
}


def router_factory(label: str, params: dict[str, Any]) -> Callable[[], Policy]:
    """A zero-argument factory of an unfitted, labelled router."""

    def factory() -> Policy:
        router = Router(**{"refit": True, **params})
        router.label = label
        return router

    factory.__doc__ = f"Router {label}: {params}."
    return factory


for _label, _params in ROUTERS.items():
    benchmark_policy(f"router-{_label}", family="router")(
        router_factory(f"router-{_label}", _params)
    )

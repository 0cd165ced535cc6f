"""Benchmark routers: one :class:`~llmdispatch.policies.router.Router` per paradigm.

Each is the default encoder (hashed n-gram TF-IDF) with one estimator. The kNN baseline
(``router-knn``) chooses its encoder (TF-IDF or MiniLM) on the validation split, and by
leave-one-out its ``k`` and whether to search neighbours exactly or in an LSA projection, so
every other router is compared with the tuned kNN, not a weak one. ``router-knn-tfidf`` is
the default kNN (LSA, 128 dimensions), ``router-knn-exact`` the exact sparse search, and
``router-knn-ensemble`` averages a TF-IDF kNN and a MiniLM kNN (each tuned the same way)
with weights chosen on the validation split. ``router-stack`` mixes six members across
paradigms and encoders (kNN on TF-IDF and on MiniLM; EmbedLLM, MLP and Eagle on TF-IDF; a kNN
on MiniLM searching supervised neighbourhoods, ``supervised_components=8``) with the convex
weights that minimise the validation Brier score. The sixth member and its 8 components were
chosen on the development cuts of ``benchmarks/bench_dev.py`` (8, 16 and 32 tried; with 8
the stack was at least as good as the five-member stack on 9 of 10 cuts).
The three that choose on the validation split (``router-knn``, ``router-knn-ensemble``,
``router-stack``) are refitted (``refit=True``): once the encoder or the members' weights are
chosen, the members are fitted again on the whole training split. The single-estimator
routers are fitted on the training split less its validation share: on the development cuts
of ``benchmarks/bench_dev.py`` refitting them gained nothing (Eagle lost on 7 of 10 cuts).
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
        "refit": True,
    },
    "knn-tfidf": {"estimator": "knn"},
    "knn-exact": {"estimator": "knn", "estimator_params": {"n_components": None}},
    "knn-ensemble": {
        "estimator": "knn",
        "estimator_params": {"n_components": "auto"},
        "encoder": "ensemble",
        "cache_encodings": True,
        "refit": True,
    },
    "stack": {
        "members": [
            {"estimator": "knn", "estimator_params": {"n_components": "auto"}, "encoder": e}
            for e in ("tfidf", "minilm")
        ]
        + [{"estimator": name} for name in ("embedllm", "mlp", "eagle")]
        + [
            {
                "estimator": "knn",
                "encoder": "minilm",
                "name": "knn-pls@minilm",
                "estimator_params": {"supervised_components": 8},
            }
        ],
        "cache_encodings": True,
        "refit": True,
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
        router = Router(**params)
        router.label = label
        return router

    factory.__doc__ = f"Router {label}: {params}."
    return factory


for _label, _params in ROUTERS.items():
    benchmark_policy(f"router-{_label}", family="router")(
        router_factory(f"router-{_label}", _params)
    )

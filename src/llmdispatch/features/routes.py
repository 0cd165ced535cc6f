"""``rules``: route specs (keywords, regex, exemplars, plain-language policy) and their matches.

A route spec is what semantic-router and Arch-Router users write: named routes, each served by
one model, matched by keywords, regular expressions, example utterances and a description::

    routes:
      - name: code
        model: gpt-4o
        keywords: [python, function]        # case-insensitive whole-word match
        regex: ['```', 'def \\w+\\(']         # re.search, as written
        examples: ["write a python function that ..."]
        description: "programming and debugging questions"
        threshold: auto                     # or a number in [0, 1]
    default: mixtral-8x7b                   # optional: the model when no route fires

:class:`RouteMatchEncoder` turns prompts into route-match features, two columns per route in
spec order: first ``R`` columns 1.0 where a keyword or regex matches, then ``R`` columns with
the largest cosine similarity between the prompt and the route's examples and description,
embedded by an inner encoder (TF-IDF by default) fitted on the training prompts plus those
texts. The ``rules`` estimator (:mod:`llmdispatch.estimators.rules`) reads these columns;
it needs the same spec.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Self, cast

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llmdispatch.artifacts import Persistable, component_state, restore
from llmdispatch.features._util import check_texts, digest, l2_normalize_csr, l2_normalize_dense
from llmdispatch.features.base import Encoder
from llmdispatch.registry import REGISTRY, register
from llmdispatch.types import Features, FloatMatrix


def _as_list(value: Any) -> Any:
    """A single string where a list is expected becomes a one-item list."""
    return [value] if isinstance(value, str) else value


class Route(BaseModel):
    """One route: the model that serves it and what makes it fire."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    model: str = Field(min_length=1)
    keywords: tuple[str, ...] = ()
    regex: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()
    description: str | None = None
    threshold: float | Literal["auto"] = "auto"

    @field_validator("keywords", "regex", "examples", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("keywords", "examples")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for i, item in enumerate(value):
            if not item.strip():
                raise ValueError(f"item {i} is empty")
        return value

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for i, pattern in enumerate(value):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"item {i}: bad regular expression {pattern!r}: {exc}") from None
        return value

    @field_validator("threshold")
    @classmethod
    def _unit(cls, value: float | str) -> float | str:
        if isinstance(value, float) and not 0.0 <= value <= 1.0:
            raise ValueError(f"must be 'auto' or a number in [0, 1], got {value}")
        return value

    @property
    def exemplars(self) -> list[str]:
        """Texts whose embeddings stand for the route: examples, then the description."""
        return [*self.examples, *([self.description] if self.description else [])]

    def matchers(self) -> list[re.Pattern[str]]:
        """Patterns that fire the route: all keywords (whole words, any case) in one, then
        each regex on its own (so inline flags such as ``(?i)`` stay valid)."""
        out = [re.compile(r) for r in self.regex]
        if self.keywords:
            words = sorted((k.strip() for k in self.keywords), key=len, reverse=True)
            alternatives = "|".join(re.escape(w) for w in words)
            out.insert(0, re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE))
        return out


class RouteSpec(BaseModel):
    """Routes in priority order (ties go to the earlier route) and an optional default model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    routes: tuple[Route, ...] = Field(min_length=1)
    default: str | None = None

    @field_validator("routes")
    @classmethod
    def _distinct(cls, routes: tuple[Route, ...]) -> tuple[Route, ...]:
        seen: set[str] = set()
        for route in routes:
            if route.name in seen:
                raise ValueError(f"route name {route.name!r} is used twice")
            if not (route.keywords or route.regex or route.exemplars):
                raise ValueError(
                    f"route {route.name!r} has no keywords, regex, examples or description, "
                    "so it can never fire"
                )
            seen.add(route.name)
        return routes

    @property
    def names(self) -> list[str]:
        """Route names in spec order."""
        return [r.name for r in self.routes]

    def check_models(self, known: Sequence[str]) -> None:
        """A clear error when a route (or the default) names a model the table lacks."""
        for route in self.routes:
            if route.model not in known:
                raise ValueError(
                    f"route {route.name!r} names model {route.model!r}, which is not in the "
                    f"table; known models: {list(known)}"
                )
        if self.default is not None and self.default not in known:
            raise ValueError(
                f"default model {self.default!r} is not in the table; known models: {list(known)}"
            )


def load_route_spec(spec: RouteSpec | str | Path | dict[str, Any] | None) -> RouteSpec:
    """A validated spec from a YAML file path, a dict, or a spec; errors name the field."""
    from llmdispatch.yamlconfig import load_yaml_model

    if spec is None:
        raise ValueError("a route spec is needed: spec=<path to routes.yaml> or an inline dict")
    if isinstance(spec, RouteSpec):
        return spec
    if isinstance(spec, str | Path):
        return load_yaml_model(spec, RouteSpec)  # errors give file:line: field: message
    if not isinstance(spec, dict):
        raise ValueError(f"spec must be a path or a mapping, got {type(spec).__name__}")
    try:
        return RouteSpec.model_validate(spec)
    except ValidationError as exc:
        raise ValueError("invalid route spec\n  " + "\n  ".join(_problems(exc, spec))) from None


def _problems(exc: ValidationError, raw: dict[str, Any]) -> list[str]:
    """``routes.0 (code).regex: message`` lines: the path, with the route's name when known."""
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if len(loc) >= 2 and loc[0] == "routes" and loc[1].isdigit():
            routes = raw.get("routes")
            item = routes[int(loc[1])] if isinstance(routes, list) else None
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                loc[1] = f"{loc[1]} ({item['name']})"
        msg = str(err["msg"]).removeprefix("Value error, ")
        out.append(f"{'.'.join(loc) or '(top)'}: {msg}")
    return out


@register("encoder", "rules")
class RouteMatchEncoder(Encoder):
    """Route-match features of a spec: ``[hits (n, R) | similarities (n, R)]``, dense.

    Parameters
    ----------
    spec : the route spec (a YAML path, a dict, or a :class:`RouteSpec`).
    encoder, encoder_params : the inner encoder that embeds prompts and exemplars.
    """

    unit_rows = False

    def __init__(
        self,
        spec: RouteSpec | str | Path | dict[str, Any] | None = None,
        encoder: str = "tfidf",
        encoder_params: dict[str, Any] | None = None,
    ) -> None:
        self.spec = spec
        self.encoder = encoder
        self.encoder_params = encoder_params

    def fit(self, texts: Sequence[str]) -> Self:
        """Fit the inner encoder on the prompts and the exemplars; embed the exemplars."""
        texts = check_texts(texts)
        self.spec_ = load_route_spec(self.spec)
        exemplars = [t for r in self.spec_.routes for t in r.exemplars]
        inner = REGISTRY.get("encoder", self.encoder)(**(self.encoder_params or {}))
        self.inner_: Encoder = inner.fit([*texts, *exemplars])
        self.exemplar_route_ = np.array(
            [i for i, r in enumerate(self.spec_.routes) for _ in r.exemplars], dtype=np.int64
        )
        self.exemplars_ = _unit(self.inner_.encode(exemplars)) if exemplars else None
        return self

    def encode(self, texts: Sequence[str]) -> Features:
        """``(n, 2R)`` float64: keyword/regex hits, then the best exemplar similarity."""
        if not hasattr(self, "spec_"):
            raise RuntimeError("RouteMatchEncoder is not fitted; call fit(texts) first")
        texts = check_texts(texts)
        R = len(self.spec_.routes)
        hits = np.zeros((len(texts), R))
        for j, route in enumerate(self.spec_.routes):
            patterns = route.matchers()
            if patterns:
                hits[:, j] = [any(p.search(t) for p in patterns) for t in texts]
        return np.hstack([hits, self.similarities(texts)])

    def similarities(self, texts: Sequence[str]) -> FloatMatrix:
        """``(n, R)``: per route, the largest cosine similarity to its exemplars (0 if none)."""
        R = len(self.spec_.routes)
        sims = np.zeros((len(texts), R))
        if self.exemplars_ is None or not texts:
            return sims
        product = _unit(self.inner_.encode(list(texts))) @ self.exemplars_.T
        dense = product.toarray() if sp.issparse(product) else product  # type: ignore[union-attr]
        S = np.clip(np.asarray(dense, dtype=np.float64), 0.0, 1.0)
        for j in range(R):
            cols = self.exemplar_route_ == j
            if cols.any():
                sims[:, j] = S[:, cols].max(axis=1)
        return sims

    @property
    def key(self) -> str:
        """``rules:<digest of the spec and the inner encoder's key>``."""
        spec = load_route_spec(getattr(self, "spec_", self.spec))
        inner = self.inner_.key if hasattr(self, "inner_") else self.encoder
        return "rules:" + digest(spec.model_dump(mode="json"), inner)

    def get_state(self) -> dict[str, Any]:
        """The parsed spec, the inner encoder and the exemplar embeddings."""
        if not hasattr(self, "spec_"):
            raise RuntimeError("RouteMatchEncoder is not fitted; call fit(texts) first")
        return {
            "params": {"encoder": self.encoder, "encoder_params": self.encoder_params},
            "spec": self.spec_.model_dump(mode="json"),
            "inner": component_state(cast(Persistable, self.inner_)),
            "exemplar_route": self.exemplar_route_,
            "exemplars": None if self.exemplars_ is None else _features_node(self.exemplars_),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild from :meth:`get_state`."""
        spec = RouteSpec.model_validate(state["spec"])
        enc = cls(spec, **state["params"])
        enc.spec_ = spec
        enc.inner_ = restore(state["inner"])
        enc.exemplar_route_ = np.asarray(state["exemplar_route"], dtype=np.int64)
        node = state["exemplars"]
        enc.exemplars_ = None if node is None else _features_from_node(node)
        return enc


def _unit(X: Features) -> Features:
    """Rows at unit L2 norm, so inner products are cosine similarities."""
    if sp.issparse(X):
        return l2_normalize_csr(sp.csr_matrix(X, dtype=np.float32, copy=True))
    return l2_normalize_dense(np.asarray(X))


def _features_node(X: Features) -> dict[str, Any]:
    if sp.issparse(X):
        C = sp.csr_matrix(X)
        shape = [int(s) for s in C.shape]
        return {"data": C.data, "indices": C.indices, "indptr": C.indptr, "shape": shape}
    return {"array": np.asarray(X)}


def _features_from_node(node: dict[str, Any]) -> Features:
    if "array" in node:
        return np.asarray(node["array"])
    return sp.csr_matrix(
        (node["data"], node["indices"], node["indptr"]), shape=tuple(node["shape"])
    )

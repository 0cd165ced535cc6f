"""Hand-built outcome tables for the signal, cascade and composite tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmdispatch.catalog import ModelCard
from llmdispatch.data.table import OutcomeTable


def make_table(
    score: Sequence[Sequence[float]] | np.ndarray,
    cost: Sequence[Sequence[float]] | np.ndarray | None = None,
    confidence: Sequence[Sequence[float]] | np.ndarray | None = None,
    *,
    models: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    responses: Sequence[Sequence[str | None]] | np.ndarray | None = None,
    prompts: Sequence[str] | None = None,
    name: str = "hand",
) -> OutcomeTable:
    """A table from matrices; missing parts get simple defaults (cost 1, 2, 3, ... per model)."""
    s = np.asarray(score, dtype=np.float64)
    n, m = s.shape
    names = tuple(models) if models is not None else tuple(f"m{j}" for j in range(m))
    c = (
        np.asarray(cost, dtype=np.float64)
        if cost is not None
        else np.tile(np.arange(1.0, m + 1.0), (n, 1))
    )
    conf = (
        np.asarray(confidence, dtype=np.float64)
        if confidence is not None
        else np.full((n, m), np.nan)
    )
    resp = np.empty((n, m), dtype=object)
    if responses is not None:
        for i in range(n):
            for j in range(m):
                resp[i, j] = responses[i][j]
    texts = list(prompts) if prompts is not None else [f"prompt {i}" for i in range(n)]
    return OutcomeTable(
        name=name,
        ids=np.array([f"p{i}" for i in range(n)], dtype=str),
        prompts=np.array(texts, dtype=object),
        systems=np.array([None] * n, dtype=object),
        references=np.array([None] * n, dtype=object),
        datasets=np.array(list(datasets) if datasets is not None else ["d"] * n, dtype=str),
        splits=np.array(["train"] * n, dtype=str),
        models=names,
        score=s,
        raw_score=s.copy(),
        cost=c,
        tokens_in=np.full((n, m), 10.0),
        tokens_out=np.full((n, m), 1.0),
        latency_ms=np.full((n, m), 100.0),
        confidence=conf,
        responses=resp,
        cards={k: ModelCard(name=k) for k in names},
    )


def planted_table(
    n: int = 600, m: int = 3, seed: int = 0, datasets: Sequence[str] = ("a", "b")
) -> OutcomeTable:
    """Models of rising cost and accuracy whose confidence predicts their correctness.

    Model j is right with probability ``0.5 + 0.2·j`` (capped at 0.95); its confidence is a
    noisy log-prob, higher when right. Costs are 1, 4, 16, ... per call.
    """
    rng = np.random.default_rng(seed)
    acc = np.minimum(0.5 + 0.2 * np.arange(m), 0.95)
    score = (rng.random((n, m)) < acc).astype(float)
    conf = np.minimum(-np.abs(rng.normal(0.0, 0.6, (n, m))) - 0.9 * (1 - score), 0.0)
    cost = np.tile(4.0 ** np.arange(m), (n, 1))
    labels = [datasets[i % len(datasets)] for i in range(n)]
    return make_table(score, cost, conf, datasets=labels)

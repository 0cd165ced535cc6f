"""Prompts that appear in both the train and the test split (a leak inflates test scores)."""

from __future__ import annotations

import re

import numpy as np
import numpy.typing as npt

from llmdispatch.data.table import OutcomeTable

_SPACE = re.compile(r"\s+")


def normalize_prompt(text: str) -> str:
    """Case-folded text with runs of whitespace collapsed (how duplicates are matched)."""
    return _SPACE.sub(" ", str(text)).strip().casefold()


def find_leaks(table: OutcomeTable) -> npt.NDArray[np.intp]:
    """Indices of test rows whose system + prompt text also occurs among training rows."""
    texts = [normalize_prompt(t) for t in table.full_prompts()]
    train = {t for t, s in zip(texts, table.splits, strict=True) if s == "train"}
    return np.array(
        [
            i
            for i, (t, s) in enumerate(zip(texts, table.splits, strict=True))
            if s == "test" and t in train
        ],
        dtype=np.intp,
    )


def drop_leaks(table: OutcomeTable) -> tuple[OutcomeTable, int]:
    """The table without leaked test rows, and how many were dropped."""
    leaks = find_leaks(table)
    if len(leaks) == 0:
        return table, 0
    keep = np.ones(table.n_prompts, dtype=bool)
    keep[leaks] = False
    return table.take(keep), len(leaks)

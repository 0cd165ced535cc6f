"""Answer keys: reduce a free-text answer to what two answers must share to agree.

Self-consistency (Wang et al., ICLR 2023) and cross-model agreement compare final answers,
not wording. The key is, in order of preference: a multiple-choice letter (``"B"``,
``"(b)"``, ``"Answer: B"``), the number after a GSM8K-style ``####`` marker, else the
normalised text (lower case, no punctuation or articles, collapsed spaces: the SQuAD
normalisation of Rajpurkar et al., 2016).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_LETTER = re.compile(r"^\s*(?:answer\s*[:\-]?\s*)?\(?([A-Ja-j])\)?\s*(?:[.:)\-]|$)", re.I)
_FINAL_NUMBER = re.compile(r"####\s*\$?\s*(-?[\d,]*\.?\d+)")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def answer_key(text: str | None) -> str:
    """The comparable core of an answer ("" for an empty or missing answer)."""
    if not text:
        return ""
    if m := _LETTER.match(text):
        return m.group(1).upper()
    if m := _FINAL_NUMBER.search(text):
        number = m.group(1).replace(",", "")
        try:
            value = float(number)
        except ValueError:
            return number
        return f"{value:g}"
    norm = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(norm.split())


def agreement(answer: str | None, samples: Sequence[str | None]) -> float:
    """Share of ``samples`` whose key equals the key of ``answer`` (NaN without samples)."""
    if not samples:
        return float("nan")
    key = answer_key(answer)
    return sum(answer_key(s) == key for s in samples) / len(samples)


def majority_share(samples: Sequence[str | None]) -> float:
    """Share of the most common key among ``samples`` (NaN without samples)."""
    if not samples:
        return float("nan")
    counts = Counter(answer_key(s) for s in samples)
    return max(counts.values()) / len(samples)

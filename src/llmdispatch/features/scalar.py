"""``scalar``: cheap request features — length, code/math/multiple-choice markers, script,
turns and attached images — from a :class:`~llmdispatch.query.Query` or plain text.

Every feature is scaled into [0, 1] by a fixed rule (no fitting), so rows are comparable
across data sets; rows are *not* L2-normalised (``unit_rows = False``): combine them with a
text encoder through ``concat``, which scales this block down. The columns, in order, are
:data:`FEATURE_NAMES`.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt

from llmdispatch.features._util import check_texts
from llmdispatch.features.base import Encoder
from llmdispatch.query import Query
from llmdispatch.registry import register

SCRIPTS = ("latin", "cjk", "cyrillic", "arabic", "devanagari", "other")
FEATURE_NAMES = (
    "log_tokens",
    "code",
    "math",
    "multiple_choice",
    "digit_share",
    *(f"script_{s}" for s in SCRIPTS),
    "log_turns",
    "log_images",
)
IMAGE_PART_TYPES = frozenset({"image_url", "input_image", "image"})

_CODE = re.compile(
    r"```|^\s*(?:def|class|import|from\s+\S+\s+import|#include|function|public|private|"
    r"const|let|var|return|for|while|if)\b.*[:{(;=]|\b(?:printf|console\.log|System\.out|"
    r"std::)\b|^.*[;{}]\s*$",
    re.MULTILINE,
)
_CODE_REQUEST = re.compile(
    r"\b(?:write|implement|create|complete|fix|debug|refactor)\b[^.\n]{0,40}\b(?:function|"
    r"program|script|class|method|code|query|regex)\b|\b(?:python|javascript|typescript|java|"
    r"golang|rust|sql|bash)\b|\bc\+\+",
    re.IGNORECASE,
)
_MATH = re.compile(
    r"\\(?:frac|sqrt|sum|int|cdot|times|le|ge|pi|alpha|beta|theta|lambda|infty)\b|\$[^$\n]+\$|"
    r"\d\s*[-+*/^×÷=<>]\s*\(?\d|\b(?:solve|equation|integral|derivative|probability|"
    r"calculate|compute|how many|how much|remainder|percent|sum of|product of)\b",
    re.IGNORECASE,
)
_CHOICE = re.compile(r"(?:^|[\s(])\(?([A-Ha-h])[).:]\s+\S", re.MULTILINE)
#: (first, last, script index) of letter ranges by Unicode block.
_SCRIPT_RANGES = (
    (0x0041, 0x024F, 0),
    (0x1E00, 0x1EFF, 0),
    (0x0400, 0x052F, 2),
    (0x0600, 0x06FF, 3),
    (0x0750, 0x077F, 3),
    (0xFB50, 0xFDFF, 3),
    (0xFE70, 0xFEFF, 3),
    (0x0900, 0x097F, 4),
    (0x1100, 0x11FF, 1),
    (0x3040, 0x30FF, 1),
    (0x3400, 0x4DBF, 1),
    (0x4E00, 0x9FFF, 1),
    (0xAC00, 0xD7AF, 1),
    (0xF900, 0xFAFF, 1),
)


@functools.cache
def _script_table() -> npt.NDArray[np.int8]:
    """Script index of every BMP letter (−1 for non-letters)."""
    table = np.full(0x10000, -1, dtype=np.int8)
    letters = np.array([chr(i).isalpha() for i in range(0x10000)])
    table[letters] = len(SCRIPTS) - 1
    for lo, hi, idx in _SCRIPT_RANGES:
        block = np.arange(lo, hi + 1)
        table[block[letters[block]]] = idx
    return table


def script_shares(text: str) -> npt.NDArray[np.float64]:
    """Share of the text's letters in each of :data:`SCRIPTS` (all zero without letters)."""
    cp = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    scripts = np.where(cp > 0xFFFF, 1, _script_table()[np.minimum(cp, 0xFFFF)])
    counts = np.bincount(scripts[scripts >= 0], minlength=len(SCRIPTS)).astype(np.float64)
    total = counts.sum()
    return counts / total if total else counts


def dominant_script(text: str) -> str:
    """The script of most of the text's letters, or ``"none"`` (a cheap language signal)."""
    shares = script_shares(text)
    return SCRIPTS[int(shares.argmax())] if shares.any() else "none"


def count_images(messages: Sequence[dict[str, Any]]) -> int:
    """Image parts in OpenAI-format messages (``image_url`` / ``input_image`` parts)."""
    n = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            n += sum(isinstance(p, dict) and p.get("type") in IMAGE_PART_TYPES for p in content)
    return n


def _markers(text: str) -> tuple[float, float, float]:
    code = 1.0 if _CODE_REQUEST.search(text) else min(1.0, len(_CODE.findall(text)) / 3.0)
    math_ = min(1.0, len(_MATH.findall(text)) / 3.0)
    letters = {m.group(1).upper() for m in _CHOICE.finditer(text)}
    choice = 1.0 if len(letters) >= 2 and {"A", "B"} <= letters else 0.0
    return code, math_, choice


def scalar_row(text: str, tokens: int, turns: int = 1, images: int = 0) -> list[float]:
    """The :data:`FEATURE_NAMES` values for one request."""
    code, math_, choice = _markers(text)
    digits = sum(c.isdigit() for c in text) / len(text) if text else 0.0
    return [
        min(1.0, math.log1p(tokens) / math.log1p(32768)),
        code,
        math_,
        choice,
        digits,
        *script_shares(text).tolist(),
        min(1.0, math.log(max(1, turns)) / math.log(64)),
        min(1.0, math.log1p(images) / math.log1p(16)),
    ]


@register("encoder", "scalar")
class ScalarEncoder(Encoder):
    """Fixed-rule request features in [0, 1]; dense float32, columns :data:`FEATURE_NAMES`.

    Examples
    --------
    >>> row = ScalarEncoder().encode(["Solve 2x + 3 = 7. (A) 1 (B) 2 (C) 3"])[0]
    >>> float(dict(zip(FEATURE_NAMES, row))["multiple_choice"])
    1.0
    """

    unit_rows: ClassVar[bool] = False
    feature_names: ClassVar[tuple[str, ...]] = FEATURE_NAMES

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Rows for plain texts (one turn, no images, about four characters a token)."""
        rows = [scalar_row(t, max(1, len(t) // 4)) for t in check_texts(texts)]
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), len(FEATURE_NAMES))

    def encode_queries(self, queries: Sequence[Query]) -> npt.NDArray[np.float32]:
        """Rows for full requests: known token counts, turns and attached images."""
        rows = []
        for q in queries:
            images = count_images(q.messages)
            if not images and "image" in q.modalities:
                images = 1
            turns = max(q.turns, sum(m.get("role") == "user" for m in q.messages))
            rows.append(scalar_row(q.text, q.estimated_tokens_in, turns, images))
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), len(FEATURE_NAMES))

    @property
    def key(self) -> str:
        """``scalar:v1`` (bump when a rule changes)."""
        return "scalar:v1"

    def get_state(self) -> dict[str, Any]:
        """Nothing is learned; the version guards against rule changes."""
        return {"version": 1}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild (rejects states of other rule versions)."""
        if state.get("version") != 1:
            raise ValueError(f"scalar encoder state version {state.get('version')!r} != 1")
        return cls()

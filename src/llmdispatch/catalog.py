"""Model metadata: prices, context window, modalities and where a model is served."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

TEXT = "text"
IMAGE = "image"


class ModelCard(BaseModel):
    """What the router knows about one model before calling it.

    Prices are USD per million tokens. ``None`` means unknown, never zero.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    price_in_per_mtok: float | None = None
    price_out_per_mtok: float | None = None
    context_window: int | None = None
    modalities: tuple[str, ...] = (TEXT,)
    params_b: float | None = None
    family: str | None = None
    provider: str | None = None
    prices_estimated: bool = False
    extra: dict[str, Any] = Field(default_factory=dict)

    def cost(self, tokens_in: float, tokens_out: float) -> float:
        """USD for one call with these token counts; NaN where a price is unknown."""
        if self.price_in_per_mtok is None or self.price_out_per_mtok is None:
            return math.nan
        return (tokens_in * self.price_in_per_mtok + tokens_out * self.price_out_per_mtok) / 1e6

    def accepts(self, modality: str) -> bool:
        """Whether the model takes input parts of this modality (``text``, ``image``, ...)."""
        return modality in self.modalities


_CARD_FIELDS = set(ModelCard.model_fields) - {"name", "extra"}


def card_from_metadata(name: str, meta: Mapping[str, Any]) -> ModelCard:
    """Build a card from a ``models.json`` entry; unknown keys go to ``extra``."""
    known = {k: v for k, v in meta.items() if k in _CARD_FIELDS and v is not None}
    extra = {k: v for k, v in meta.items() if k not in _CARD_FIELDS}
    if "modalities" in known:
        known["modalities"] = tuple(known["modalities"])
    source = str(meta.get("price_source", "")).lower()
    if any(word in source for word in ("estimate", "tier", "approximate")):
        known.setdefault("prices_estimated", True)
    return ModelCard(name=name, extra=extra, **known)


def load_catalog(path: Path) -> dict[str, ModelCard]:
    """Read a ``models.json`` file into cards keyed by model name."""
    with path.open(encoding="utf-8") as fh:
        raw = json.load(fh)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of models, got {type(raw).__name__}")
    return {name: card_from_metadata(name, meta or {}) for name, meta in raw.items()}

"""A request as policies see it: the text to route on plus what constraints need."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Query:
    """One request to decide on.

    ``text`` is what routers encode (system prompt and the user turns, joined); ``messages``
    are the OpenAI-format messages when the request came through the gateway. ``estimates``
    holds what a batched :meth:`~llmdispatch.policies.base.Policy.prefetch` computed ahead
    for this query (keyed by the policy that will read it); it is not part of the query's
    identity.
    """

    text: str
    messages: tuple[dict[str, Any], ...] = ()
    modalities: frozenset[str] = frozenset({"text"})
    tokens_in: int | None = None
    turns: int = 1
    user: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    estimates: dict[int, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def estimated_tokens_in(self) -> int:
        """Prompt tokens: the known count, else about four characters a token."""
        return self.tokens_in if self.tokens_in is not None else max(1, len(self.text) // 4)

    @classmethod
    def from_text(cls, text: str, system: str | None = None) -> Query:
        """A single-turn text query, as the outcome tables hold them."""
        full = f"{system}\n\n{text}" if system else text
        messages: list[dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": text})
        return cls(text=full, messages=tuple(messages))

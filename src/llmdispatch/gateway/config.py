"""The gateway's YAML configuration (pydantic-validated; errors name the file's lines).

```yaml
models:
  gpt-4o-mini:
    base_url: https://api.example.com/v1   # any OpenAI-compatible endpoint
    api_key_env: EXAMPLE_API_KEY           # the key is read from this variable
    price_in_per_mtok: 0.15
    price_out_per_mtok: 0.6
    context_window: 128000
    modalities: [text, image]
    timeout_s: 60
policies:
  auto: {artifact: artifacts/cascades9-knn}   # served as llmdispatch/auto
default_policy: auto
state: memory            # or redis://127.0.0.1:6379/0 to share budgets between replicas
database: llmdispatch.sqlite   # or postgresql://user@host/db
keys:                    # optional; without keys the gateway is open
  - id: team-a
    hash: sha256:...     # `llmdispatch keys hash SECRET`
    policies: [auto]
    budget_usd: 50
budgets: {global_usd: 1000, per_model_usd: {gpt-4o: 200}, on_exhausted: reject}
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmdispatch.catalog import ModelCard
from llmdispatch.yamlconfig import load_yaml_model


class ModelEndpoint(BaseModel):
    """One upstream model."""

    model_config = ConfigDict(extra="forbid")

    base_url: str
    api_key_env: str | None = None
    upstream_name: str | None = Field(default=None, description="model name upstream")
    price_in_per_mtok: float | None = Field(default=None, ge=0)
    price_out_per_mtok: float | None = Field(default=None, ge=0)
    context_window: int | None = Field(default=None, gt=0)
    modalities: tuple[str, ...] = ("text",)
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=2, ge=0)

    def card(self, name: str) -> ModelCard:
        """The model's card for routing constraints and cost accounting."""
        return ModelCard(
            name=name,
            price_in_per_mtok=self.price_in_per_mtok,
            price_out_per_mtok=self.price_out_per_mtok,
            context_window=self.context_window,
            modalities=self.modalities,
        )


class PolicyRef(BaseModel):
    """A trained policy to serve."""

    model_config = ConfigDict(extra="forbid")

    artifact: Path


class KeyConfig(BaseModel):
    """An API key: its hash, what it may use and what it may spend."""

    model_config = ConfigDict(extra="forbid")

    id: str
    hash: str
    policies: list[str] | None = None
    models: list[str] | None = None
    budget_usd: float | None = Field(default=None, ge=0)
    requests_per_minute: int | None = Field(default=None, gt=0)

    @field_validator("hash")
    @classmethod
    def _hashed(cls, value: str) -> str:
        if not value.startswith("sha256:") or len(value) != 7 + 64:
            raise ValueError("keys are stored hashed: 'sha256:<64 hex>' (llmdispatch keys hash)")
        return value


class Budgets(BaseModel):
    """Spending limits in USD (``None``: unlimited)."""

    model_config = ConfigDict(extra="forbid")

    global_usd: float | None = Field(default=None, ge=0)
    per_model_usd: dict[str, float] = Field(default_factory=dict)
    on_exhausted: Literal["reject", "cheaper"] = "reject"
    requests_per_minute: int | None = Field(default=None, gt=0)


class Breaker(BaseModel):
    """Per-model circuit breaker."""

    model_config = ConfigDict(extra="forbid")

    failures: int = Field(default=5, ge=1)
    cooldown_s: float = Field(default=30.0, gt=0)


class GatewayConfig(BaseModel):
    """The whole gateway configuration."""

    model_config = ConfigDict(extra="forbid")

    models: dict[str, ModelEndpoint]
    policies: dict[str, PolicyRef] = Field(default_factory=dict)
    default_policy: str | None = None
    state: str = "memory"
    state_prefix: str = "llmdispatch"
    database: str | None = None
    keys: list[KeyConfig] = Field(default_factory=list)
    budgets: Budgets = Field(default_factory=Budgets)
    breaker: Breaker = Field(default_factory=Breaker)
    retry_backoff_s: float = Field(default=0.05, ge=0)
    max_fallbacks: int = Field(default=3, ge=0)
    log_prompts: bool = True

    @field_validator("models")
    @classmethod
    def _some_models(cls, value: dict[str, ModelEndpoint]) -> dict[str, ModelEndpoint]:
        if not value:
            raise ValueError("configure at least one model")
        return value

    def check(self) -> GatewayConfig:
        """Cross-field checks pydantic cannot express per field."""
        if self.default_policy is not None and self.default_policy not in self.policies:
            raise ValueError(
                f"default_policy {self.default_policy!r} is not among the policies "
                f"{sorted(self.policies)}"
            )
        for key in self.keys:
            for p in key.policies or []:
                if p not in self.policies:
                    raise ValueError(f"key {key.id!r} names an unknown policy {p!r}")
        unknown = sorted(set(self.budgets.per_model_usd) - set(self.models))
        if unknown:
            raise ValueError(f"budgets.per_model_usd names unknown models {unknown}")
        if not (self.state == "memory" or self.state.startswith(("redis://", "rediss://"))):
            raise ValueError(f"state must be 'memory' or a redis:// URL, got {self.state!r}")
        return self


def load_config(path: Path | str) -> GatewayConfig:
    """Read and validate a gateway config; artifact and database paths are relative to it."""
    path = Path(path)
    cfg = load_yaml_model(path, GatewayConfig).check()
    base = path.resolve().parent
    for ref in cfg.policies.values():
        if not ref.artifact.is_absolute():
            ref.artifact = base / ref.artifact
    if cfg.database and "://" not in cfg.database and not Path(cfg.database).is_absolute():
        cfg.database = str(base / cfg.database)
    return cfg

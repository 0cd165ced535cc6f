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
    requests_per_minute: 500               # at its limit the policy routes around it
policies:
  auto: artifacts/cascades9-knn         # an artifact folder (`llmdispatch train`)
  quick:                                # or inline: trained on the data at start-up
    policy: router
    data: cascades9
    params: {estimator: knn}
default_policy: auto                    # served as llmdispatch/auto
state: memory            # or redis://127.0.0.1:6379/0 to share budgets between replicas
database: llmdispatch.sqlite   # or postgresql://user@host/db
keys:                    # optional; without keys the gateway is open
  - id: team-a
    hash: sha256:...     # `llmdispatch keys hash SECRET`
    policies: [auto]
    budget_usd: 50
    budget_window: day
budgets: {global_usd: 1000, per_model_usd: {gpt-4o: 200}, window: month, on_exhausted: reject}
breaker: {failures: 5, cooldown_s: 30}   # per-model circuit breaker
upstream_transport: fast                 # or httpx (proxies from the environment, HTTP/2)
max_decision_batch: 256  # requests decided together under load (1: one at a time)
compiled_kernels: false  # true: numba kernels for one decision's features (the `fast` extra;
                         # ~1.8x faster, +~115 MiB resident per worker for LLVM)
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmdispatch.catalog import ModelCard
from llmdispatch.yamlconfig import ConfigError, load_yaml_model

BudgetWindow = Literal["total", "hour", "day", "month"]
#: Environment variable naming the config file for ``uvicorn --factory`` workers.
CONFIG_ENV = "LLMDISPATCH_GATEWAY_CONFIG"


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
    #: Per-minute limits of this model; at its limit the policy routes around it.
    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)

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
    """A policy to serve: a trained artifact, or an inline spec trained at start-up.

    Inline: ``policy`` is a registered policy name, ``params`` its constructor arguments;
    it is fitted on the train split of ``data`` (a validation part carved from it), after
    keeping only the ``datasets`` labels and ``models`` when given. A bare string is an
    artifact path.
    """

    model_config = ConfigDict(extra="forbid")

    artifact: Path | None = None
    policy: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    data: str | None = None
    datasets: list[str] | None = None
    models: list[str] | None = None
    validation_fraction: float = Field(default=0.25, gt=0, lt=1)

    @model_validator(mode="before")
    @classmethod
    def _path(cls, value: Any) -> Any:
        return {"artifact": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_source(self) -> PolicyRef:
        if (self.artifact is None) == (self.policy is None):
            raise ValueError("give either 'artifact' (a trained policy) or 'policy' (inline)")
        if self.policy is not None and self.data is None:
            raise ValueError("an inline policy is trained at start-up: name its 'data'")
        return self


class KeyConfig(BaseModel):
    """An API key: its hash, what it may use and what it may spend."""

    model_config = ConfigDict(extra="forbid")

    id: str
    hash: str
    policies: list[str] | None = None
    models: list[str] | None = None
    budget_usd: float | None = Field(default=None, ge=0)
    budget_window: BudgetWindow = "total"
    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)

    @field_validator("hash")
    @classmethod
    def _hashed(cls, value: str) -> str:
        if not value.startswith("sha256:") or len(value) != 7 + 64:
            raise ValueError("keys are stored hashed: 'sha256:<64 hex>' (llmdispatch keys hash)")
        return value


class Budgets(BaseModel):
    """Spending limits in USD (``None``: unlimited), over all time or per UTC period."""

    model_config = ConfigDict(extra="forbid")

    global_usd: float | None = Field(default=None, ge=0)
    per_model_usd: dict[str, float] = Field(default_factory=dict)
    #: The period the global and per-model limits apply to (UTC hours, days, months).
    window: BudgetWindow = "total"
    on_exhausted: Literal["reject", "cheaper"] = "reject"
    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)


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
    max_retry_wait_s: float = Field(
        default=5.0, ge=0, description="a longer Retry-After falls back instead of waiting"
    )
    max_fallbacks: int = Field(default=3, ge=0)
    upstream_transport: Literal["fast", "httpx"] = Field(
        default="fast", description="fast: lean HTTP/1.1 keep-alive; httpx: proxies, HTTP/2"
    )
    max_decision_batch: int = Field(
        default=256,
        ge=1,
        description="routing decisions of requests that arrive together are estimated in "
        "batches of up to this many (1: each alone)",
    )
    compiled_kernels: bool = Field(
        default=False,
        description="run one decision's feature hashing, weighting, projection and kNN "
        "average on numba kernels (the `fast` extra): about 1.8x faster per decision, for "
        "about 115 MiB more resident memory per worker (LLVM)",
    )
    affinity_ttl_s: float = Field(default=3600.0, gt=0)
    log_prompts: bool = True
    reload_artifacts_s: float | None = Field(
        default=5.0,
        gt=0,
        description="every this many seconds, each worker checks its policies' artifact "
        "folders and serves a new artifact saved over one (loaded, checked and warmed "
        "beside the old, which keeps serving if the new one fails); null: never",
    )

    @field_validator("models")
    @classmethod
    def _some_models(cls, value: dict[str, ModelEndpoint]) -> dict[str, ModelEndpoint]:
        if not value:
            raise ValueError("configure at least one model")
        return value

    def problems(self) -> list[tuple[tuple[str, ...], str]]:
        """Cross-field checks pydantic cannot express per field: (location, message) pairs."""
        out: list[tuple[tuple[str, ...], str]] = []
        if self.default_policy is not None and self.default_policy not in self.policies:
            out.append(
                (
                    ("default_policy",),
                    f"{self.default_policy!r} is not among the policies {sorted(self.policies)}",
                )
            )
        for i, key in enumerate(self.keys):
            for p in key.policies or []:
                if p not in self.policies:
                    out.append((("keys", str(i), "policies"), f"unknown policy {p!r}"))
            for m in key.models or []:
                if m not in self.models:
                    out.append((("keys", str(i), "models"), f"unknown model {m!r}"))
        ids = [k.id for k in self.keys]
        for i, key in enumerate(self.keys):
            if ids.index(key.id) != i:
                out.append((("keys", str(i), "id"), f"duplicate key id {key.id!r}"))
        for m in sorted(set(self.budgets.per_model_usd) - set(self.models)):
            out.append((("budgets", "per_model_usd", m), f"unknown model {m!r}"))
        if not (self.state == "memory" or self.state.startswith(("redis://", "rediss://"))):
            out.append((("state",), f"must be 'memory' or a redis:// URL, got {self.state!r}"))
        return out

    def check(self) -> GatewayConfig:
        """Raise ``ValueError`` on the first cross-field problem."""
        problems = self.problems()
        if problems:
            loc, message = problems[0]
            raise ValueError(f"{'.'.join(loc)}: {message}")
        return self


def _line_of(text: str, loc: tuple[str, ...]) -> int | None:
    """The line of the deepest existing node on ``loc`` (1-based)."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    line = None if node is None else node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if str(k.value) == part), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            break
    return line


def load_config(path: Path | str) -> GatewayConfig:
    """Read and validate a gateway config; artifact and database paths are relative to it.

    Every problem names the file and line: ``gw.yaml:7: default_policy: 'x' is not among
    the policies ['auto']`` (a :class:`~llmdispatch.yamlconfig.ConfigError`).
    """
    path = Path(path)
    cfg = load_yaml_model(path, GatewayConfig)
    problems = cfg.problems()
    if problems:
        text = path.read_text(encoding="utf-8")
        lines = [
            f"{path}:{_line_of(text, loc) or 1}: {'.'.join(loc)}: {message}"
            for loc, message in problems
        ]
        raise ConfigError("invalid configuration\n  " + "\n  ".join(lines))
    base = path.resolve().parent
    for ref in cfg.policies.values():
        if ref.artifact is not None and not ref.artifact.is_absolute():
            ref.artifact = base / ref.artifact
    if cfg.database and "://" not in cfg.database and not Path(cfg.database).is_absolute():
        cfg.database = str(base / cfg.database)
    return cfg

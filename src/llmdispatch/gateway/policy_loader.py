"""The policies a gateway serves: trained artifacts, or inline specs trained at start-up."""

from __future__ import annotations

from llmdispatch import kernels
from llmdispatch.catalog import ModelCard
from llmdispatch.gateway.config import GatewayConfig, PolicyRef
from llmdispatch.policies.base import Policy


def build_policy(name: str, ref: PolicyRef) -> Policy:
    """Load an artifact, or fit an inline policy on its data's train split."""
    if ref.artifact is not None:
        from llmdispatch.artifacts import load_artifact

        policy, _meta = load_artifact(ref.artifact)
    else:
        from llmdispatch.data import load_table, train_validation
        from llmdispatch.registry import REGISTRY

        assert ref.policy is not None and ref.data is not None  # PolicyRef validates this
        table = load_table(ref.data)
        if ref.datasets:
            table = table.only_datasets(ref.datasets)
        if ref.models:
            table = table.select_models(ref.models)
        train = table.split("train")
        if train.n_prompts == 0:
            raise ValueError(f"policy {name!r}: {ref.data} has no train split to fit on")
        fit, validation = train_validation(train, ref.validation_fraction)
        policy = REGISTRY.get("policy", ref.policy)(**ref.params).fit(fit, validation)
    if not isinstance(policy, Policy):
        raise ValueError(f"policy {name!r}: {type(policy).__name__} is not a policy")
    policy.label = name
    return policy


def deployed_cards(policy: Policy, cfg: GatewayConfig) -> None:
    """Give a policy the deployed endpoints' modalities and context windows.

    A policy trained on an outcome table knows each model's card from that table; what the
    configured endpoint accepts (images, a longer window) is what counts when serving.
    """
    cards = getattr(policy, "cards_", None)
    if not isinstance(cards, dict):
        return
    for name, card in list(cards.items()):
        ep = cfg.models.get(name)
        if ep is None or not isinstance(card, ModelCard):
            continue
        update: dict[str, object] = {"modalities": tuple(ep.modalities)}
        if ep.context_window is not None:
            update["context_window"] = ep.context_window
        cards[name] = card.model_copy(update=update)


def load_policies(cfg: GatewayConfig) -> dict[str, Policy]:
    """Every configured policy, checked against the configured models."""
    if cfg.compiled_kernels and not kernels.warm():
        raise ValueError(
            "compiled_kernels: true needs numba (pip install 'llmdispatch[fast]') and "
            "LLMDISPATCH_KERNELS not set to numpy"
        )
    return {name: load_policy(name, ref, cfg) for name, ref in cfg.policies.items()}


def load_policy(name: str, ref: PolicyRef, cfg: GatewayConfig) -> Policy:
    """One configured policy, checked against the configured models and warmed."""
    policy = build_policy(name, ref)
    known = set(getattr(policy, "models_", ()) or ())
    if known and not known & set(cfg.models):
        raise ValueError(
            f"policy {name!r} routes among {sorted(known)}, none of which is configured"
        )
    deployed_cards(policy, cfg)
    policy.warm()  # the first requests must not pay for lazily built indexes
    return policy

"""Model families, selected by ``model.method`` in the config (DESIGN §2).

Every generator follows one protocol so that the trainer, inference and evaluation treat them alike::

    out = model(images (B, M, H, W), observed (B, M) bool, temperature=1.0, available=None)
    out.reconstructions  # (B, M, H, W), every modality decoded
    out.kl               # list of (B,) per latent level (empty for deterministic models)
    out.latents          # list of latents, finest first (may be empty)
    model.synthesize({name: (B, H, W)}, temperature=..., targets=None) -> {name: (B, H, W)}
    model.cfg            # its ModelConfig

A family registers a builder here with :func:`register`.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from mmhvae.config import ConfigError, ModelConfig

_BUILDERS: dict[str, Callable[[ModelConfig], nn.Module]] = {}


def register(name: str):
    """Decorator: ``@register("mvae") def build(cfg): ...``."""

    def wrap(fn: Callable[[ModelConfig], nn.Module]):
        _BUILDERS[name] = fn
        return fn

    return wrap


def _load_families() -> None:
    # Importing a family module registers its builders.
    import importlib

    for module in ("mmhvae.models.mmhvae", "mmhvae.models.baselines"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def available_methods() -> list[str]:
    _load_families()
    return sorted(_BUILDERS)


def build_model(cfg: ModelConfig) -> nn.Module:
    """The generator for ``cfg.method``."""
    _load_families()
    try:
        builder = _BUILDERS[cfg.method]
    except KeyError:
        raise ConfigError(f"unknown model.method {cfg.method!r}; available: {sorted(_BUILDERS)}") from None
    return builder(cfg)

"""Config files of earlier versions in today's layout, so that old run folders stay loadable.

:func:`upgrade_dict` runs on every dict :meth:`mmhvae.config.ExperimentConfig.from_dict` reads;
each change it makes is announced by a ``UserWarning`` naming the keys.
"""

from __future__ import annotations

from typing import Any

#: Families with their own generator config section (``mmhvae.config.FAMILY_CONFIGS``).
FAMILY_METHODS = ("mmgan", "resvit")

#: Keys that are gone: nothing read them. An old config.yaml that has them loads with a warning.
REMOVED_KEYS = {"data.num_workers": "nothing read it (training batches are built in the main process)"}
#: ResViT's settings lived at the top of ``model`` before each family had its own config (issue 13).
_RESVIT_KEYS = ("art_blocks", "transformer_blocks", "transformer_dim", "transformer_layers", "transformer_heads")


def _warn_legacy(message: str) -> None:
    import warnings

    warnings.warn(message, UserWarning, stacklevel=4)


def renamed_override(item: str) -> str:
    """``model.art_blocks=4`` (before issue 13) -> ``model.resvit.art_blocks=4``."""
    key, sep, raw = item.partition("=")
    name = key.strip()
    if sep and name.startswith("model.") and name[len("model."):] in _RESVIT_KEYS:
        _warn_legacy(f"override {name} is now model.resvit.{name[len('model.'):]}")
        return f"model.resvit.{name[len('model.'):]}={raw}"
    return item


def upgrade_dict(data: dict[str, Any]) -> dict[str, Any]:
    """A config dict of an earlier version in today's layout (a copy; warns once per change).

    * ``data.num_workers`` (read nowhere) is dropped;
    * ResViT's ``model.art_blocks`` / ``model.transformer_*`` move to ``model.resvit``;
    * an ``mmgan`` or ``resvit`` run's ``model.channels`` were its generator's widths: they move to
      ``model.mmgan.channels`` / ``model.resvit.channels`` (and its all-zero ``latent_channels`` go).
    """
    import copy

    data = copy.deepcopy(data)
    train = data.get("train")
    if isinstance(train, dict) and "channels_last" in train:  # a bool before issue 14
        layout = "channels_last" if train.pop("channels_last") else "contiguous"
        train.setdefault("memory_format", layout)
        _warn_legacy(f"config key train.channels_last is now train.memory_format ({layout})")
    for dotted, why in REMOVED_KEYS.items():
        section, key = dotted.split(".")
        if isinstance(data.get(section), dict) and key in data[section]:
            del data[section][key]
            _warn_legacy(f"config key {dotted} is ignored: {why}")
    model = data.get("model")
    if not isinstance(model, dict):
        return data
    resvit = {k: model.pop(k) for k in _RESVIT_KEYS if k in model}
    method = model.get("method")
    family = {}
    if method in FAMILY_METHODS and method not in model and "channels" in model:
        family = {"channels": model.pop("channels")}
        model.pop("latent_channels", None)  # the MMHVAE widths of this family's run are the defaults
    for name, moved in (("resvit", resvit), (method, family)):
        if moved:
            section = model.setdefault(name, {})
            for k, v in moved.items():
                section.setdefault(k, v)
            keys = ", ".join(f"model.{k}" for k in sorted(moved))
            _warn_legacy(f"a config written before model.{name} existed: {keys} read as model.{name}.*")
    return data

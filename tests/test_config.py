"""The configuration: every field is read, per-family generator configs, old run folders still load."""

from __future__ import annotations

import ast
import dataclasses
import typing
import warnings
from pathlib import Path

import pytest

from mmhvae.config import (
    ConfigError,
    ExperimentConfig,
    ModelConfig,
    apply_overrides,
    preset,
)
from mmhvae.methods import apply_method

SRC = Path(__file__).resolve().parents[1] / "src" / "mmhvae"


def _leaf_fields(cls: type, prefix: str = ""):
    """``(dotted key, field name)`` of every field of ``cls``, recursively into nested dataclasses."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield f"{prefix}{f.name}", f.name
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _leaf_fields(hints[f.name], f"{prefix}{f.name}.")


def _attributes_read_outside_config() -> set[str]:
    """Every ``x.name`` attribute in the source, config.py (definitions and validation) excluded."""
    names = set()
    for path in SRC.rglob("*.py"):
        if path.name == "config.py" and path.parent == SRC:
            continue
        names |= {n.attr for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute)}
    return names


def test_every_config_field_is_read_somewhere():
    read = _attributes_read_outside_config()
    unread = [key for key, name in _leaf_fields(ExperimentConfig) if name not in read]
    assert not unread, f"config fields nothing reads (use them or remove them): {unread}"


def test_model_config_defaults_are_the_paper_preset():
    assert ModelConfig() == preset("paper").model


def test_family_configs_hold_what_each_generator_reads():
    paper = preset("paper")
    resvit = apply_method(paper, "resvit").model
    mmgan = apply_method(paper, "mmgan").model
    assert resvit.resvit.channels == [64, 128, 256] and resvit.channels == paper.model.channels
    assert mmgan.mmgan.channels == [64, 128, 256, 512, 512, 512] and mmgan.latent_channels == paper.model.latent_channels
    cfg = apply_overrides(preset("tiny"), ["model.method=resvit", "model.resvit.art_blocks=2",
                                           "model.resvit.transformer_blocks=[1]"])
    assert (cfg.model.resvit.art_blocks, cfg.model.resvit.transformer_blocks) == (2, [1])
    with pytest.raises(ConfigError, match="model.resvit.transformer_blocks"):
        apply_overrides(cfg, ["model.resvit.transformer_blocks=[3]"])
    with pytest.raises(ConfigError, match="model.mmgan.channels"):
        apply_overrides(preset("tiny"), ["model.method=mmgan", "model.mmgan.channels=[8,8,8,8,8,8,8]"])
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg  # YAML round trip


def test_gradient_penalty_weight_is_a_config_field():
    assert preset("paper").train.gan.gradient_penalty == 10.0
    assert apply_overrides(preset("tiny"), ["train.gan.gradient_penalty=5"]).train.gan.gradient_penalty == 5.0


def _old_layout(cfg: ExperimentConfig) -> dict:
    """``cfg`` as a config.yaml written before issue 13 (ResViT keys and family widths in ``model``)."""
    data = cfg.to_dict()
    model = data["model"]
    resvit, mmgan = model.pop("resvit"), model.pop("mmgan")
    model.update({k: v for k, v in resvit.items() if k != "channels"})
    if model["method"] in ("mmgan", "resvit"):
        model["channels"] = (resvit if model["method"] == "resvit" else mmgan)["channels"]
        model["latent_channels"] = [0] * len(model["channels"])
    data["data"]["num_workers"] = 0
    return data


@pytest.mark.parametrize("method", ["mmhvae", "mmgan", "resvit"])
def test_config_yaml_of_an_earlier_version_still_loads(tmp_path, method):
    cfg = apply_method(preset("tiny"), method)
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_old_layout(cfg), sort_keys=False))
    with pytest.warns(UserWarning, match="num_workers"):
        loaded = ExperimentConfig.load(path)
    family = {"mmgan": "mmgan", "resvit": "resvit"}.get(method)
    if family:
        assert getattr(loaded.model, family) == getattr(cfg.model, family)
    assert loaded.model.resvit == cfg.model.resvit and loaded.train == cfg.train
    if method == "mmhvae":
        assert loaded == cfg


def test_the_upgrade_knows_every_family_config():
    from mmhvae.config import FAMILY_CONFIGS
    from mmhvae.config_upgrade import FAMILY_METHODS

    assert set(FAMILY_CONFIGS) == set(FAMILY_METHODS)


def test_an_old_resvit_override_is_renamed():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = apply_overrides(preset("tiny"), ["model.art_blocks=3"])
    assert cfg.model.resvit.art_blocks == 3 and any("model.resvit.art_blocks" in str(w.message) for w in caught)


def test_scientific_notation_is_a_number_in_overrides_and_yaml(tmp_path):
    """PyYAML reads "1e-4" as a string; the config takes it as the number a user means."""
    from mmhvae.config import ConfigError, ExperimentConfig, apply_overrides, preset

    cfg = apply_overrides(preset("tiny"), ["train.kl_weight=1e-4", "train.lr=2E-3"])
    assert cfg.train.kl_weight == 1e-4 and cfg.train.lr == 2e-3
    path = tmp_path / "c.yaml"
    cfg.save(path)
    path.write_text(path.read_text().replace("kl_weight: 0.0001", "kl_weight: 5e-5"))
    assert "5e-5" in path.read_text()
    assert ExperimentConfig.load(path).train.kl_weight == 5e-5
    with pytest.raises(ConfigError, match="expected a number"):
        apply_overrides(preset("tiny"), ["train.kl_weight=small"])

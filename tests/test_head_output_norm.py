"""The image heads' output normalization (issue 17): off for new networks, on for files of format 1.

A GroupNorm right before the output convolution normalizes with the whole slice's statistics; the
multivae comparison traced the baselines' deficit to the haze it leaves where the truth is 0. New
networks go without it; checkpoints written before (format version 1, every head had it) must still
load as the network they were trained as, and give the same images.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mmhvae.checkpoint import FORMAT, load_generator, read_metadata, save_generator
from mmhvae.config import preset
from mmhvae.models import build_model


def _head_norms(model) -> list[int]:
    """Per head, how many GroupNorms sit directly before its output convolution."""
    out = []
    for head in model.heads:
        layers = list(head)
        assert isinstance(layers[-1], nn.Conv2d) and layers[-1].out_channels == 1
        out.append(sum(isinstance(m, nn.GroupNorm) for m in layers[-3:-1]))
    return out


def test_new_heads_have_no_normalization_before_their_output():
    cfg = preset("tiny")
    assert cfg.model.head_output_norm is False
    assert _head_norms(build_model(cfg.model)) == [0] * cfg.model.num_modalities
    cfg.model.head_output_norm = True
    assert _head_norms(build_model(cfg.model)) == [1] * cfg.model.num_modalities


def _write_format_1(path, model, cfg) -> None:
    """A checkpoint as version 1 wrote it: no head_output_norm key in the embedded config."""
    from safetensors.torch import save_file

    data = cfg.to_dict()
    del data["model"]["head_output_norm"]
    import yaml

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "format_version": "1", "family": "mmhvae", "step": "7",
                "config": yaml.safe_dump(data), "extra": json.dumps({})}
    save_file(state, str(path), metadata=metadata)


def test_a_format_1_checkpoint_loads_with_its_head_norms_and_gives_the_same_images(tmp_path):
    cfg = preset("tiny")
    cfg.model.head_output_norm = True  # the network as it was built before issue 17
    torch.manual_seed(0)
    old = build_model(cfg.model).eval()
    with torch.no_grad():  # non-trivial norm parameters, so that dropping them would show
        for head in old.heads:
            norm = [m for m in head if isinstance(m, nn.GroupNorm)][0]
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    path = tmp_path / "old.safetensors"
    _write_format_1(path, old, cfg)

    loaded = load_generator(path).eval()
    assert loaded.cfg.head_output_norm is True
    x = torch.rand(2, cfg.model.num_modalities, cfg.model.image_size, cfg.model.image_size)
    observed = torch.tensor([[True, False, True], [False, True, False]])
    with torch.no_grad():
        want = old(x, observed, temperature=0.0).reconstructions
        got = loaded(x, observed, temperature=0.0).reconstructions
    # (the loaded generator may run another memory layout: float rounding, not a different network)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("norm", [False, True])
def test_a_current_checkpoint_keeps_the_setting_it_was_trained_with(tmp_path, norm):
    cfg = preset("tiny")
    cfg.model.head_output_norm = norm
    path = tmp_path / "new.safetensors"
    save_generator(path, build_model(cfg.model), cfg, step=1)
    assert read_metadata(path)["format_version"] == "2"
    loaded = load_generator(path)
    assert loaded.cfg.head_output_norm is norm
    assert _head_norms(loaded) == [int(norm)] * cfg.model.num_modalities

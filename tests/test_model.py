"""The MMHVAE generator: shapes, masks, the math wired correctly, numerics in fp32 and bf16."""

import copy

import pytest
import torch

from mmhvae.config import ModelConfig, preset
from mmhvae.models.mmhvae import MMHVAE


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MMHVAE(preset("tiny").model).eval()


def _batch(cfg, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, cfg.num_modalities, cfg.image_size, cfg.image_size, generator=g)


def test_forward_shapes_and_levels(model):
    cfg = model.cfg
    x = _batch(cfg)
    out = model(x, torch.ones(3, 3, dtype=torch.bool))
    assert out.reconstructions.shape == x.shape
    assert len(out.kl) == len(out.latents) == cfg.num_levels == 3
    assert out.latents[0].shape == (3, 4, 32, 32)  # z_1: finest, full resolution
    assert out.latents[-1].shape == (3, cfg.top_latent_dim)  # z_L: a vector
    assert all(k.shape == (3,) and (k >= -1e-5).all() for k in out.kl)


@pytest.mark.parametrize("latents,levels", [([0, 0, 0], 1), ([4, 0, 0], 2), ([4, 6, 8], 4)])
def test_any_number_of_levels_including_the_mvae_case(latents, levels):
    cfg = preset("tiny").model
    cfg.latent_channels = latents
    m = MMHVAE(cfg)
    out = m(_batch(cfg, 2), torch.tensor([[1, 0, 0], [0, 1, 1]], dtype=torch.bool))
    assert len(out.kl) == levels == cfg.num_levels
    assert out.reconstructions.shape == (2, 3, 32, 32)


def test_two_modalities_and_names_from_config():
    cfg = preset("tiny").model
    cfg.modalities = ["ct", "mr"]
    m = MMHVAE(cfg)
    y = m.synthesize({"mr": torch.rand(32, 32)}, temperature=0.0)
    assert set(y) == {"ct", "mr"} and y["ct"].shape == (32, 32)


def test_per_sample_masks_equal_running_each_sample_alone(model):
    x = _batch(model.cfg, 3, seed=1)
    obs = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        joint = model(x, obs, temperature=0.0).reconstructions
        alone = torch.cat([model(x[b : b + 1], obs[b : b + 1], temperature=0.0).reconstructions for b in range(3)])
    assert torch.allclose(joint, alone, atol=1e-5)


def test_unobserved_slot_is_ignored_and_its_encoder_gets_zero_gradient():
    torch.manual_seed(0)
    m = MMHVAE(preset("tiny").model)
    x = _batch(m.cfg, 2)
    obs = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    garbage = x.clone()
    garbage[:, 2] = float("nan")
    garbage[1, 1] = 1e6
    out_a = m(x, obs, temperature=0.0)
    out_b = m(garbage, obs, temperature=0.0)
    assert torch.allclose(out_a.reconstructions, out_b.reconstructions)
    out_b.reconstructions.square().mean().backward()
    enc2 = [p.grad for p in m.encoders[2].parameters()]
    assert all(g is None or (g == 0).all() for g in enc2)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.encoders[0].parameters())


def test_permutation_of_modalities_permutes_outputs():
    torch.manual_seed(0)
    m = MMHVAE(preset("tiny").model).eval()
    perm = [2, 0, 1]
    p = copy.deepcopy(m)
    p.cfg = copy.deepcopy(m.cfg)
    p.cfg.modalities = [m.cfg.modalities[i] for i in perm]
    p.encoders = torch.nn.ModuleList(m.encoders[i] for i in perm)
    p.top_experts = torch.nn.ModuleList(m.top_experts[i] for i in perm)
    for k in m.experts:
        p.experts[k] = torch.nn.ModuleList(m.experts[k][i] for i in perm)
    p.heads = torch.nn.ModuleList(m.heads[i] for i in perm)
    x = _batch(m.cfg, 2)
    obs = torch.tensor([[1, 0, 1], [0, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        a = m(x, obs, temperature=0.0)
        b = p(x[:, perm], obs[:, perm], temperature=0.0)
    assert torch.allclose(a.reconstructions[:, perm], b.reconstructions, atol=1e-5)
    assert all(torch.allclose(ka, kb, rtol=1e-4, atol=1e-4) for ka, kb in zip(a.kl, b.kl))


def test_temperature_zero_is_deterministic_and_positive_temperature_is_not(model):
    x = _batch(model.cfg, 1)
    obs = torch.ones(1, 3, dtype=torch.bool)
    with torch.no_grad():
        a = model(x, obs, temperature=0.0).reconstructions
        b = model(x, obs, temperature=0.0).reconstructions
        c = model(x, obs, temperature=1.0).reconstructions
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_synthesize_every_modality_from_every_subset_and_clear_errors(model):
    from mmhvae.subsets import all_subsets

    x = _batch(model.cfg, 2)
    for s in all_subsets(3):
        inputs = {m: x[:, j] for j, m in enumerate(model.modalities) if s[j]}
        out = model.synthesize(inputs, temperature=0.0)
        assert set(out) == set(model.modalities) and all(v.shape == (2, 32, 32) for v in out.values())
    with pytest.raises(ValueError, match="empty input subset"):
        model.synthesize({})
    with pytest.raises(ValueError, match="unknown modality"):
        model.synthesize({"pet": x[:, 0]})
    with pytest.raises(ValueError, match="share one shape"):
        model.synthesize({"us": x[:, 0], "t2": x[:1, 1]})
    with pytest.raises(ValueError, match=r"images must be \(B, M=3, 32, 32\)"):
        model(torch.zeros(1, 3, 16, 16), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="subset of the available"):
        model(x, torch.ones(2, 3, dtype=torch.bool), available=torch.zeros(2, 3, dtype=torch.bool))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["scaled", "constant", "zeros"])
def test_outputs_and_gradients_finite_under_extreme_inputs(dtype, kind):
    torch.manual_seed(0)
    m = MMHVAE(preset("tiny").model)
    x = _batch(m.cfg, 2)
    x = {"scaled": x * 1e4, "constant": torch.full_like(x, 3.0), "zeros": torch.zeros_like(x)}[kind]
    obs = torch.tensor([[1, 1, 1], [0, 1, 0]], dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = m(x, obs)
        loss = (out.reconstructions.float() - x).square().mean() + 1e-3 * out.kl_total.mean()
    assert torch.isfinite(out.reconstructions).all() and torch.isfinite(loss)
    assert all(z.dtype == torch.float32 for z in out.latents)  # latent algebra stays float32
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in m.parameters())


def test_fusion_variants_run():
    for fusion in ("average", "concat"):
        cfg = preset("tiny").model
        cfg.fusion = fusion
        m = MMHVAE(cfg)
        out = m(_batch(cfg, 2), torch.tensor([[1, 0, 1], [0, 1, 0]], dtype=torch.bool))
        assert out.reconstructions.shape == (2, 3, 32, 32)
        if fusion == "average":
            assert all((k == 0).all() for k in out.kl)


def test_paper_preset_size_matches_the_official_implementation():
    from torch.utils.flop_counter import FlopCounterMode

    cfg = preset("paper").model
    m = MMHVAE(cfg).eval()
    params = sum(p.numel() for p in m.parameters())
    assert abs(params / 13.77e6 - 1) < 0.15
    x = torch.zeros(1, 4, 192, 192)
    macs = {}
    for k in (4, 1):
        obs = torch.zeros(1, 4, dtype=torch.bool)
        obs[0, :k] = True
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            m(x, obs)
        macs[k] = counter.get_total_flops() / 2
    assert abs(macs[4] / 12.65e9 - 1) < 0.15 and abs(macs[1] / 6.54e9 - 1) < 0.15


def test_config_validation_errors():
    with pytest.raises(ValueError, match="divisible"):
        MMHVAE(ModelConfig(image_size=100))
    with pytest.raises(ValueError, match="same length"):
        MMHVAE(ModelConfig(channels=[8, 8], latent_channels=[4]))

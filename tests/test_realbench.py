"""The real-data benchmark (issue 18): split, reference baselines, model card, the `benchmark real` verb.

Tiny configurations only (the built-in cohort at 32², a few steps); the real-data checks read the
manifest level of ../shared/data/real and are skipped when it is absent.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from mmhvae.config import EvalConfig
from mmhvae.errors import CohortError
from mmhvae.eval import reference as ref
from mmhvae.realbench import build_split


def _planes(name, rng, shift=0.0, noise_target=None):
    """A subject whose modality b is a monotone function of a, and c is unrelated noise."""
    fg = np.zeros((6, 24, 24), dtype=bool)
    fg[:, 4:20, 5:19] = True
    a = np.where(fg, rng.random(fg.shape).astype(np.float32) + shift, 0).astype(np.float32)
    smooth = np.where(fg, a, 0)
    b = np.where(fg, np.sqrt(smooth) * 0.5 + 0.05 * rng.random(fg.shape), 0).astype(np.float32)
    c = np.where(fg, rng.random(fg.shape), 0).astype(np.float32)
    if noise_target is not None:  # a test subject on which c happens to equal b exactly
        c = b.copy()
    data = {"a": a, "b": b, "c": c}
    return ref.Planes(name, dict(data), dict(data), fg)


def test_histogram_match_takes_the_target_distribution_inside_the_foreground():
    rng = np.random.default_rng(0)
    fg = np.zeros((4, 10, 10), dtype=bool)
    fg[:, 2:8, 2:8] = True
    image = np.where(fg, rng.normal(5, 2, fg.shape), 7.0).astype(np.float32)
    quantiles = np.quantile(rng.uniform(0, 1, 5000), np.linspace(0, 1, 1001))
    out = ref.histogram_match(image, fg, quantiles)
    assert np.all(out[~fg] == 0)
    assert 0 <= out[fg].min() < 0.01 and 0.99 < out[fg].max() <= 1
    order = np.argsort(image[fg])
    assert np.all(np.diff(out[fg][order]) >= -1e-6)  # rank order preserved
    assert abs(np.median(out[fg]) - 0.5) < 0.02


def test_position_matched_moves_the_foreground_box_onto_the_target_box():
    src = np.zeros((4, 20, 20), dtype=np.float32)
    src_fg = np.zeros(src.shape, dtype=bool)
    src_fg[1:3, 2:6, 2:6] = True
    src[src_fg] = 3.0
    tgt_fg = np.zeros((6, 16, 16), dtype=bool)
    tgt_fg[2:6, 8:16, 4:12] = True
    out = ref.position_matched(src, src_fg, tgt_fg)
    assert out.shape == tgt_fg.shape
    assert np.allclose(out[tgt_fg], 3.0, atol=1e-5) and np.all(out[~tgt_fg] == 0)


def test_nearest_contrast_is_ranked_on_training_subjects_not_test_ones():
    rng = np.random.default_rng(1)
    training = [_planes(f"tr{i}", rng) for i in range(3)]
    fitted = ref.fit_references(training, ["a", "b", "c"])
    ranked = [s for s, _ in fitted.ranking["b"]]
    assert ranked[0] == "b" and ranked[1] == "a" and ranked[-1] == "c"  # itself, then its partner
    assert fitted.nearest("b", ["a", "c"]) == "a"
    # On this test subject c would be the perfect copy; the choice must not look at it.
    test = [_planes("te", rng, noise_target=True)]
    rows, pictures = ref.score_references(fitted, test, ["a", "b", "c"], EvalConfig(lpips=False, ssim_3d=False))
    methods = {r["method"] for r in rows}
    assert methods == set(ref.REFERENCES)
    nearest = {(r["subset"], r["target"], r["metric"]): r["value"] for r in rows if r["method"] == ref.NEAREST_CONTRAST}
    assert nearest[("a+c", "b", "psnr")] == pytest.approx(nearest[("a", "b", "psnr")])  # a was copied, not c
    assert nearest[("c", "b", "psnr")] > nearest[("a", "b", "psnr")]  # c alone is copied (and is perfect here)
    # 7 subsets x 3 targets x 2 metrics per method
    assert sum(r["method"] == ref.MEAN_IMAGE for r in rows) == 7 * 3 * 2
    assert set(pictures[ref.MEAN_IMAGE]["te"]) == {"b+c->a", "a+c->b", "a+b->c"}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from mmhvae.data.phantom import make_cohort

    return make_cohort(tmp_path_factory.mktemp("phantom") / "cohort", subjects=5, seed=0, shape=(32, 32, 12),
                       workers=1)


def _split_rows(manifest: Path) -> dict[str, str]:
    with open(manifest, newline="") as fh:
        return {r["subject"]: r["split"] for r in csv.DictReader(fh)}


def test_build_split_keeps_test_subjects_out_of_training_and_selection(phantom, tmp_path):
    from mmhvae.data.cohort import Cohort

    names = [s.name for s in Cohort.load(phantom).subjects]
    split = build_split(tmp_path, phantom, ["us", "t2", "cet1"], test_subjects=names[:2], val_subjects=[names[2]],
                        exclude=[names[3]])
    rows = _split_rows(split.manifest)
    assert {n for n, s in rows.items() if s == "test"} == set(names[:2])
    assert rows[names[2]] == "val" and names[3] not in rows
    assert split.train == [n for n in names[4:]]
    with pytest.raises(CohortError, match="test subjects"):
        build_split(tmp_path, phantom, ["us", "t2", "cet1"], test_subjects=[names[0]], val_subjects=[names[0]])
    with pytest.raises(CohortError, match="not found"):
        build_split(tmp_path, phantom, ["us", "t2", "cet1"], test_subjects=["nobody"])
    # A separately given test cohort that is also in the pool is refused (no leakage).
    with pytest.raises(CohortError, match="also in the training pool"):
        build_split(tmp_path, phantom, ["us", "t2", "cet1"], test_source=phantom, test_subjects=[names[0]])


def test_benchmark_real_verb_end_to_end(phantom, tmp_path, monkeypatch):
    import mmhvae.eval.lpips as lpips_module
    from mmhvae.cli import main

    class MeanAbsDistance(torch.nn.Module):  # LPIPS stand-in for the validation curve (no weights needed)
        def forward(self, x, y):
            return (x - y).abs().flatten(1).mean(1)

    monkeypatch.setattr(lpips_module, "load_lpips", lambda **kw: MeanAbsDistance())

    from mmhvae.data.cohort import Cohort

    names = [s.name for s in Cohort.load(phantom).subjects]
    out = tmp_path / "bench"
    rc = main(["benchmark", "real", "--train", str(phantom), "--test-subjects", names[0], "--val-subjects", names[1],
               "--methods", "mmhvae", "--budget-steps", "2", "--preset", "tiny", "--out", str(out), "--no-progress",
               "--threads", "1", "train.validate_every=1", "train.validate_lpips=true"])
    assert rc == 0
    text = (out / "realbench.md").read_text()
    for needle in ("## Table 1", "| mean-image |", "| nearest-contrast |", "## Split", names[0], "KL per latent level",
                   "## Training curves (validation PSNR, dB)", "## Training curves (validation LPIPS"):
        assert needle in text
    assert (out / "pictures" / f"{names[0]}.png").is_file()
    card = (out / "runs" / "mmhvae" / "MODEL_CARD.md").read_text()
    assert "## Training data" in card and f"| {names[2]} | train |" in card and f"| {names[0]} |" not in card
    assert "reconstruction `mse`" in card  # the likelihood is part of the budget line
    assert "(ran as: contiguous, fp32)" in card or "(ran as: contiguous, bf16)" in card \
        or "(ran as: channels_last," in card  # the precision and layout actually used, not only "auto"
    assert "Validation LPIPS (%, the same outputs): step 1:" in card
    metrics = list(csv.DictReader(open(out / "realbench_metrics.csv")))
    assert {r["subject"] for r in metrics} == {names[0]}  # only the test subject is scored


def test_real_folder_split_and_licences(real_cases_dir, tmp_path):
    from mmhvae.train.model_card import _readme_rows, licence_of

    us = ["RESECT-Case2", "RESECT-Case21", "RESECT-Case24"]
    split = build_split(tmp_path, real_cases_dir, ["t1", "t2", "cet1", "flair"], exclude=us,
                        test_subjects=["BraTS-GLI-00001-000", "LjMS-cs-patient19"], val_subjects=["GliomaGAN-example"])
    assert {f"BraTS2013-pat000{i}" for i in range(1, 5)} <= set(split.train)  # FLAIR + T1c-only cases train
    assert split.availability["BraTS2013-pat0003"] == ["cet1", "flair"]
    assert not set(us) & set(split.train)
    ultrasound = build_split(tmp_path / "us", real_cases_dir, ["us", "t1"], train_subjects=us[1:], test_subjects=us[:1])
    assert ultrasound.train == us[1:] and ultrasound.test == us[:1]
    rows = _readme_rows(real_cases_dir)
    assert "CC BY-NC-SA" in licence_of("BraTS2013-pat0003", rows)
    assert "CC BY 4.0" in licence_of("RESECT-Case21", rows)
    assert "CC-BY" in licence_of("LjMS-cs-patient19", rows)


def test_unreliable_harmonization_is_found_in_a_head_that_is_not_skull_stripped(real_cases_dir, tmp_path):
    """LjMS-long-patient01 keeps its skull and has no brain mask: its white-matter estimate is wrong,
    and the benchmark's screen names it; skull-stripped cases pass."""
    from mmhvae.config import preset
    from mmhvae.realbench import unreliable_harmonization

    cfg = preset("real-cpu")
    names = ["LjMS-long-patient01", "LjMS-cs-patient07", "BraTS2013-pat0001"]
    split = build_split(tmp_path, real_cases_dir, cfg.model.modalities, cfg.data.modality_aliases,
                        train_subjects=names, test_subjects=["LjMS-cs-patient19"])
    flagged = unreliable_harmonization(split.manifest, cfg.data, cfg.model.modalities)
    assert set(flagged) == {"LjMS-long-patient01"} and "white-matter" in flagged["LjMS-long-patient01"]


def test_real_cpu_preset_synthesizes_at_the_papers_temperature():
    """The real preset samples at tau = 0.5 (paper §4.1); the phantom presets keep posterior means."""
    from mmhvae.config import preset

    assert preset("real-cpu").eval.temperature == 0.5
    assert preset("small").eval.temperature == 0.0


def test_real_cpu_preset_scores_reconstructions_with_l1():
    """The real preset's likelihood is L1 (the authors' code), and the trainer's loss is then the mean
    absolute error: a residual of 0.1 costs 0.1, not 0.01."""
    import torch

    from mmhvae.config import preset
    from mmhvae.train.losses import reconstruction_loss

    kind = preset("real-cpu").train.reconstruction
    assert kind == "l1"
    truth = torch.zeros(1, 2, 4, 4)
    recon = truth + 0.1
    available = torch.tensor([[True, False]])
    assert float(reconstruction_loss(recon, truth, available, kind)) == pytest.approx(0.1)

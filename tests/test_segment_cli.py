"""The user-facing aliases of issue 7: ``mmhvae train --method uhved`` and ``mmhvae segment``."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from mmhvae.cli import main


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from mmhvae.data.phantom import make_cohort

    return make_cohort(tmp_path_factory.mktemp("seg_cohort"), subjects=4, seed=5, shape=(24, 24, 16),
                       missingness="complete", workers=1)


def test_train_method_uhved_then_segment_keeps_the_input_geometry(cohort, tmp_path):
    torch.set_num_threads(1)
    run = tmp_path / "run"
    # The cohort's split may leave few training subjects at this size: train on all of them.
    rc = main(["train", "--method", "uhved", "--config", "uhved-tiny", "--cohort", str(cohort), "--out", str(run),
               "--no-progress", "train.steps=2"])
    assert rc == 0 and (run / "checkpoints" / "last.safetensors").is_file()
    assert "method: uhved" in (run / "config.yaml").read_text()
    t2 = cohort.parent / "phantom000" / "phantom000-t2.nii.gz"
    out = tmp_path / "seg"
    assert main(["segment", "--checkpoint", str(run), "--input", f"t2={t2}", "--out", str(out)]) == 0
    seg = nib.load(next(out.glob("*seg*.nii.gz")))
    ref = nib.load(t2)
    assert seg.shape == ref.shape and np.allclose(seg.affine, ref.affine)

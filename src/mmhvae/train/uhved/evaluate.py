"""U-HVED evaluation: Dice per input subset (seed Table 1) and completion PSNR / SSIM."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from mmhvae.models.uhved import UHVED, UHVEDConfig, sliding_window_predict
from mmhvae.subsets import all_subsets, subset_name
from mmhvae.train.uhved.cases import Case


def region_dice(pred: np.ndarray, truth: np.ndarray, values: Iterable[int]) -> float:
    """Dice of the region ``label in values``; 1.0 when both are empty (MONAI ``ignore_empty=False``)."""
    values = list(values)
    p, t = np.isin(pred, values), np.isin(truth, values)
    denom = int(p.sum()) + int(t.sum())
    if denom == 0:
        return 1.0
    return 2.0 * float(np.logical_and(p, t).sum()) / denom


def evaluate_cases(
    model: UHVED,
    cfg: UHVEDConfig,
    cases: Sequence[Case],
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Every case x every input subset of its available modalities -> one row of metrics.

    Row keys: subject, subset, ``dice_<region>`` (labelled cases), ``psnr_<mod>``/``ssim_<mod>`` for
    every available target modality (U-HVED only; :mod:`mmhvae.eval.metrics` conventions, inside the
    brain mask when the case has one) and ``in_input_<mod>``."""
    from mmhvae.eval.metrics import psnr, ssim3d

    mods = cfg.model.modalities
    labels = np.asarray(cfg.model.seg_labels)
    device = next(model.parameters()).device
    rows = []
    for n, case in enumerate(cases):
        images = torch.from_numpy(case.images)[None].to(device)
        for subset in all_subsets(len(mods)):
            if not all(a or not s for a, s in zip(case.available, subset)):
                continue
            observed = torch.tensor([subset], dtype=torch.bool, device=device)
            probs, decoded = sliding_window_predict(model, images, observed, cfg.eval, output_device="cpu")
            row: dict[str, Any] = {"subject": case.name, "subset": subset_name(subset, mods)}
            if case.seg is not None:
                pred = labels[probs[0].argmax(0).numpy()]
                truth = labels[case.seg]
                for region, values in cfg.eval.regions.items():
                    row[f"dice_{region}"] = region_dice(pred, truth, values)
            if decoded is not None:
                for j, m in enumerate(mods):
                    if not case.available[j]:
                        continue
                    gt, est = case.images[j], decoded[0, j].numpy()
                    row[f"psnr_{m}"] = psnr(est, gt, cfg.eval.data_range, mask=case.brain)
                    row[f"ssim_{m}"] = ssim3d(est, gt, cfg.eval.data_range, foreground=case.brain)
                    row[f"in_input_{m}"] = bool(subset[j])
            rows.append(row)
        log(f"evaluated {case.name} ({n + 1}/{len(cases)})")
    return rows

"""The U-HVED objective (seed §3) and its schedules: Dice + CE + 0.1·MSE + 0.1·KL, warm-up, decay.

Conventions: the MSE is the mean over voxels of each available (sample, modality) pair, averaged
over those pairs; the KL is the per-element mean over latent elements and scales (the official
code's ``reduce_mean``), so the 0.1 weights do not depend on the patch size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mmhvae.models.uhved import UHVEDOutput, UHVEDTrainConfig
from mmhvae.train.uhved.patches import PatchBatch


def soft_dice_loss(logits: Tensor, target: Tensor, eps: float = 1e-5) -> Tensor:
    """1 - mean over classes of the soft Dice of softmax(logits), pooled over the batch.

    logits ``(B, K, D, H, W)``, target ``(B, D, H, W)`` int64 class indices."""
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target, probs.shape[1]).movedim(-1, 1).float()
    dims = (0, *range(2, probs.dim()))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2.0 * inter + eps) / (denom + eps)).mean()


def uhved_loss(
    out: UHVEDOutput, batch: PatchBatch, cfg: UHVEDTrainConfig, kl_scale: float = 1.0
) -> dict[str, Tensor]:
    """Seed §3: L = Dice + CE + 0.1·L2 + 0.1·KL, with missing labels and images masked out.

    ``kl_scale`` multiplies the KL weight (warm-up). Returns the total and every (unweighted) term,
    zero when a term has nothing to score in this batch."""
    zero = out.seg_logits.new_zeros(()).float()
    terms = {"dice": zero, "ce": zero, "mse": zero, "kl": zero}
    labelled = batch.has_seg.nonzero().flatten()
    if labelled.numel():
        logits, target = out.seg_logits[labelled], batch.seg[labelled]
        terms["dice"] = soft_dice_loss(logits, target)
        terms["ce"] = F.cross_entropy(logits.float(), target)
    if out.images is not None:
        # Reconstruction of every *available* modality, in the input subset or not (seed §2.2).
        per_pair = ((out.images.float() - batch.images) ** 2).flatten(2).mean(dim=2)  # (B, M)
        avail = batch.available.float()
        terms["mse"] = (per_pair * avail).sum() / avail.sum().clamp_min(1.0)
    if out.kl is not None:
        terms["kl"] = out.kl.mean()
    total = (
        cfg.dice_weight * terms["dice"]
        + cfg.ce_weight * terms["ce"]
        + cfg.reconstruction_weight * terms["mse"]
        + kl_scale * cfg.kl_weight * terms["kl"]
    )
    return {"loss": total, **terms}


def learning_rate(cfg: UHVEDTrainConfig, step: int) -> float:
    """Linear warm-up to ``lr`` then cosine / poly decay to ``lr_min`` at ``steps`` (or constant)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, cfg.steps - cfg.warmup_steps)
    t = min(1.0, max(0.0, (step - cfg.warmup_steps) / span))
    if cfg.schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * t))
    else:
        factor = (1.0 - t) ** cfg.poly_power
    return cfg.lr_min + (cfg.lr - cfg.lr_min) * factor


def kl_warmup(cfg: UHVEDTrainConfig, step: int) -> float:
    """Factor of the KL weight: a linear ramp from 0 to 1 over ``kl_warmup_fraction`` of the steps."""
    ramp = cfg.kl_warmup_fraction * cfg.steps
    return 1.0 if ramp <= 0 else min(1.0, step / ramp)

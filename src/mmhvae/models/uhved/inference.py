"""Whole-volume U-HVED inference: MONAI sliding windows, latent noise from ``eval.seed``."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from mmhvae.models.uhved.config import UHVEDEvalConfig
from mmhvae.models.uhved.network import UHVED


@torch.no_grad()
def sliding_window_predict(
    model: UHVED,
    images: Tensor,
    observed: Tensor,
    eval_cfg: UHVEDEvalConfig,
    output_device: Optional[torch.device | str] = None,
) -> tuple[Tensor, Optional[Tensor]]:
    """Whole volumes of any size through MONAI ``sliding_window_inference``.

    Args:
        images: ``(B, M, X, Y, Z)`` (any X, Y, Z; unobserved slots are never read).
        observed: ``(B, M)`` bool input subsets.
    Returns:
        class probabilities ``(B, K, X, Y, Z)`` and decoded images ``(B, M, X, Y, Z)`` (None for
        U-HeMIS), blended over overlapping windows, on ``output_device`` (default: the input's).
        Latent noise (``eval.temperature`` > 0) comes from ``eval.seed``; the global RNG is untouched.
    """
    if images.dim() != 5:
        raise ValueError(f"images must be (B, M, X, Y, Z), got {tuple(images.shape)}")
    if observed.shape != images.shape[:2]:
        raise ValueError(f"observed mask must be (B, M)={tuple(images.shape[:2])}, got {tuple(observed.shape)}")
    device = next(model.parameters()).device
    out_device = torch.device(output_device) if output_device is not None else images.device
    was_training = model.training
    model.eval()
    probs, decoded = [], []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(eval_cfg.seed)
            for b in range(images.shape[0]):
                one = images[b : b + 1], observed[b : b + 1]
                prob, imgs = _sliding_window_one(model, *one, eval_cfg, out_device)
                probs.append(prob)
                if imgs is not None:
                    decoded.append(imgs)
    finally:
        model.train(was_training)
    return torch.cat(probs), (torch.cat(decoded) if decoded else None)


def _sliding_window_one(
    model: UHVED, image: Tensor, observed: Tensor, eval_cfg: UHVEDEvalConfig, out_device: torch.device
) -> tuple[Tensor, Optional[Tensor]]:
    """One sample ``(1, M, X, Y, Z)``: every window sees the same input subset ``observed`` ``(1, M)``."""
    from monai.inferers import sliding_window_inference

    device = next(model.parameters()).device
    row = observed.to(device)

    def predictor(window: Tensor) -> dict[str, Tensor]:
        obs = row.expand(window.shape[0], -1)
        prob, imgs = model.predict(window, obs, eval_cfg.temperature, eval_cfg.samples)
        return {"prob": prob} if imgs is None else {"prob": prob, "images": imgs}

    res = sliding_window_inference(
        image.float(),
        roi_size=tuple(eval_cfg.window),
        sw_batch_size=eval_cfg.sw_batch_size,
        predictor=predictor,
        overlap=eval_cfg.overlap,
        mode=eval_cfg.blend,
        sw_device=device,
        device=out_device,
    )
    return res["prob"], res.get("images")

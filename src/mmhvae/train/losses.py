"""The MMHVAE objective for one draw of r' (paper eq. 9 and 19; DESIGN §1).

Normalization (so that lambda values do not depend on image size):
* reconstruction: per modality, the mean over pixels of the squared error (Gaussian log-likelihood
  with fixed sigma, up to constants) or the absolute error; summed over the *available* modalities
  (inputs and cross-modal targets alike, eq. 9), averaged over the batch;
* KL: summed over all latent elements of all levels, divided by the number of pixels H * W
  (nats per pixel), averaged over the batch.
With this convention the paper's lambda_KL = 1e-3 and lambda_GAN = 0.025 are the defaults.
"""

from __future__ import annotations

from torch import Tensor


def reconstruction_loss(recon: Tensor, images: Tensor, available: Tensor, kind: str = "mse") -> Tensor:
    """Sum over available modalities of the per-pixel mean error, batch mean. Shapes ``(B, M, H, W)``."""
    diff = recon.float() - images.float()
    if kind == "mse":
        per = diff.square().flatten(2).mean(dim=2)
    elif kind == "l1":
        per = diff.abs().flatten(2).mean(dim=2)
    else:
        raise ValueError(f"unknown reconstruction loss {kind!r}; choose mse or l1")
    # where() rather than a product: a missing modality's zero-filled slot must not produce NaN * 0.
    per = per.where(available.bool(), per.new_zeros(()))
    return per.sum(dim=1).mean()


def kl_per_pixel(kl_total: Tensor, height: int, width: int) -> Tensor:
    """``(B,)`` KL summed over levels -> batch mean of nats per pixel."""
    return (kl_total / float(height * width)).mean()

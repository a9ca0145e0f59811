"""Adversarial regularization of every modality (paper §3.5, eq. 15-16).

Loss families: ``lsgan`` (default; Mao et al.), ``hinge``, and ``wasserstein`` as printed in eq. 15,
with a gradient penalty (Gulrajani et al.) because the plain critic is unbounded.

:class:`RealImageMemory` is the paper's m_j: recent real images of modality j, used as the "real"
side of the discriminator loss when a batch has no (or too few) subjects with modality j.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

LOSSES = ("lsgan", "hinge", "wasserstein")


def discriminator_loss(kind: str, real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    if kind == "lsgan":
        return 0.5 * ((real_scores - 1).square().mean() + fake_scores.square().mean())
    if kind == "hinge":
        return torch.relu(1 - real_scores).mean() + torch.relu(1 + fake_scores).mean()
    if kind == "wasserstein":  # eq. 15: E[d(fake)] - E[d(real)] minimized by the critic
        return fake_scores.mean() - real_scores.mean()
    raise ValueError(f"unknown GAN loss {kind!r}; choose one of {LOSSES}")


def generator_loss(kind: str, fake_scores: Tensor) -> Tensor:
    """The generator's adversarial term for one modality (eq. 16)."""
    if kind == "lsgan":
        return 0.5 * (fake_scores - 1).square().mean()
    if kind in ("hinge", "wasserstein"):
        return -fake_scores.mean()
    raise ValueError(f"unknown GAN loss {kind!r}; choose one of {LOSSES}")


def gradient_penalty(critic, real: Tensor, fake: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """WGAN-GP: (||grad d(x_hat)|| - 1)^2 on random interpolates of real and fake ``(B, H, W)``."""
    n = min(real.shape[0], fake.shape[0])
    eps = torch.rand(n, 1, 1, generator=generator, device="cpu").to(real.device, real.dtype)
    x = (eps * real[:n] + (1 - eps) * fake[:n]).requires_grad_(True)
    scores = critic(x[:, None])
    (grad,) = torch.autograd.grad(scores.sum(), x, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).square().mean()


class RealImageMemory:
    """Ring buffer of the last ``capacity`` real images of one modality, ``(capacity, H, W)`` on CPU."""

    def __init__(self, capacity: int, image_size: int):
        self.capacity = capacity
        self.buffer = torch.zeros(capacity, image_size, image_size)
        self.count = 0  # images stored so far (saturates at capacity)
        self.cursor = 0

    def add(self, images: Tensor) -> None:
        for img in images.detach().float().cpu():
            self.buffer[self.cursor] = img
            self.cursor = (self.cursor + 1) % self.capacity
            self.count = min(self.count + 1, self.capacity)

    def __len__(self) -> int:
        return self.count

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        if self.count == 0:
            raise RuntimeError("the memory holds no real image yet")
        idx = torch.randint(self.count, (n,), generator=generator)
        return self.buffer[idx]

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.clone(), "count": self.count, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        if state["buffer"].shape != self.buffer.shape:
            raise ValueError(
                f"memory shape {tuple(state['buffer'].shape)} does not match {tuple(self.buffer.shape)}"
            )
        self.buffer.copy_(state["buffer"])
        self.count = int(state["count"])
        self.cursor = int(state["cursor"])


def real_images_for(
    j: int,
    images: Tensor,
    available: Tensor,
    memory: RealImageMemory,
    n: int,
    generator: Optional[torch.Generator] = None,
) -> Optional[Tensor]:
    """``n`` real images of modality ``j``: the batch's where r_j = 1, topped up from the memory.

    Returns None when neither the batch nor the memory has any (the discriminator then skips a step).
    """
    batch_real = images[available[:, j], j]
    if batch_real.shape[0] >= n:
        return batch_real[:n]
    if len(memory) == 0:
        return batch_real if batch_real.shape[0] > 0 else None
    extra = memory.sample(n - batch_real.shape[0], generator).to(images.device, images.dtype)
    return torch.cat([batch_real, extra], dim=0)

"""Baseline generators with their own architecture (DESIGN §2), registered by ``model.method``.

* ``mmgan``: :class:`~mmhvae.models.baselines.mmgan.MMGANGenerator` (Sharma & Hamarneh 2020).
* ``resvit``: :class:`~mmhvae.models.baselines.resvit.ResViTGenerator` (Dalmaz et al. 2022).
* ``mopoe``: :class:`~mmhvae.models.baselines.mopoe.MoPoEVAE` (Sutter et al. 2021): the MMHVAE network
  (L = 1) with the mixture-of-subset-PoEs posterior.

The other compared methods (MVAE, MHVAE, the fusion, depth and GAN ablations) are the MMHVAE network
under another configuration (MVAE with its own objective, ``train.objective=mvae``); :mod:`mmhvae.methods` turns a method name into that
configuration for any preset.
"""

from __future__ import annotations

from mmhvae.models import register
from mmhvae.models.baselines.mmgan import MMGANGenerator
from mmhvae.models.baselines.mopoe import MoPoEVAE
from mmhvae.models.baselines.resvit import ResViTGenerator

register("mmgan")(MMGANGenerator)
register("resvit")(ResViTGenerator)
register("mopoe")(MoPoEVAE)

__all__ = ["MMGANGenerator", "MoPoEVAE", "ResViTGenerator"]

"""Baseline generators with their own architecture (DESIGN §2), registered by ``model.method``.

* ``mmgan``: :class:`~mmhvae.models.baselines.mmgan.MMGANGenerator` (Sharma & Hamarneh 2020).
* ``resvit``: :class:`~mmhvae.models.baselines.resvit.ResViTGenerator` (Dalmaz et al. 2022).

The other compared methods (MVAE, MoPoE, MHVAE, the fusion, depth and GAN ablations) are the MMHVAE
network under another configuration; :mod:`mmhvae.methods` turns a method name into that
configuration for any preset.
"""

from __future__ import annotations

from mmhvae.models import register
from mmhvae.models.baselines.mmgan import MMGANGenerator
from mmhvae.models.baselines.resvit import ResViTGenerator

register("mmgan")(MMGANGenerator)
register("resvit")(ResViTGenerator)

__all__ = ["MMGANGenerator", "ResViTGenerator"]

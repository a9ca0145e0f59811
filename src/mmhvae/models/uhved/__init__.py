"""U-HVED: hetero-modal variational 3D encoder-decoder (Dorent et al., MICCAI 2019; DESIGN §4).

One encoder per modality maps a volume to Gaussians ``(mu, logvar)`` at ``S`` scales (paper §2.3:
S = 4). At every scale the experts of the *observed* modalities are fused with an N(0, I) prior by
the exact product of Gaussians (paper eq. 4, :func:`mmhvae.nn.gaussian.product_of_experts`), a latent
is sampled, and the multi-scale latents feed, as U-Net skip connections, one decoder per modality
(completion) and one segmentation decoder. The ``uhemis`` method is the seed's U-HeMIS comparison:
the same encoders, skip connections made of the mean and variance of the observed modalities'
feature maps (HeMIS), and a segmentation decoder only.

Layout: images ``(B, M, D, H, W)`` with modalities in config order; ``observed`` ``(B, M)`` bool is
the input subset r' of each sample. A slot whose ``observed`` is False is never read (its encoder is
not run for that sample), so its content does not matter.

Modules: ``config`` (:class:`UHVEDConfig`, presets ``uhved-tiny`` / ``uhved-cpu`` / ``uhved-paper``),
``network`` (:class:`UHVED`), ``inference`` (:func:`sliding_window_predict`).
"""

from mmhvae.models.uhved.config import (  # noqa: F401 - the family's public names
    METHODS,
    UHVED_PRESETS,
    UHVEDConfig,
    UHVEDEvalConfig,
    UHVEDModelConfig,
    UHVEDTrainConfig,
    resolve_uhved_config,
    uhved_preset,
)
from mmhvae.models.uhved.inference import sliding_window_predict  # noqa: F401
from mmhvae.models.uhved.network import UHVED, UHVEDOutput  # noqa: F401

"""mmhvae: unified multimodal image synthesis from any subset of modalities.

Implements MMHVAE (Dorent et al., TPAMI 2025) and U-HVED (Dorent et al., MICCAI 2019).
"""

__version__ = "0.1.0"

from mmhvae.config import ExperimentConfig, ModelConfig, preset  # noqa: E402

__all__ = ["ExperimentConfig", "ModelConfig", "preset", "__version__"]

"""Method presets: the compared methods and ablations of the paper as configurations (DESIGN §2).

``apply_method(cfg, name)`` returns a copy of an experiment configuration (any preset or YAML file)
changed into method ``name``; everything not named below is left as configured, so all methods of
a comparison share data, image size, batch size, step budget, seed and evaluation.

========================  ==========================================================================
``mmhvae``                the configuration as given (paper: L = 7, PoE, mixture policy, GAN)
``mvae``                  MVAE (Wu & Goodman 2018): L = 1 PoE with prior expert, sub-sampled ELBOs, no GAN
``mopoe``                 MoPoE-VAE (Sutter et al. 2021): L = 1, mixture of subset PoEs and its ELBO, no GAN
``mhvae``                 MHVAE (Dorent et al. 2023): hierarchical PoE, complete subjects only
``concat-zeros``          fusion ablation: one encoder on zero-imputed concatenated inputs
``average``               fusion ablation: deterministic mean of the per-modality experts
``mmgan``                 MM-GAN (Sharma & Hamarneh 2020): U-Net + PatchGAN on zero-imputed inputs
``resvit``                ResViT (Dalmaz et al. 2022): conv encoder, ART/transformer bottleneck
``L1`` ... ``L7``         depth ablation (paper Table 2): which latent groups are kept
``no-gan``                GAN ablation (paper Table 4): lambda_GAN = 0
========================  ==========================================================================

**Depth mapping.** The paper numbers its seven latent groups from 1 (finest, 192²) to 7 (the top
vector) and keeps, for L = 1, 2, 3, 5, 7, the groups {7}, {1, 7}, {1, 4, 7}, {1, 3, 4, 5, 7} and all.
A preset with S spatial stages has G = S + 1 groups (stage s = group s + 1, the top vector = group G);
paper group g maps to group ``1 + round((g - 1) * (G - 1) / 6)`` (halves rounded up), which is the
identity for the paper preset (S = 6). With fewer stages, distinct paper groups can land on the same
stage, so L is then the number of distinct groups kept (small preset, S = 4: L7 and L5 keep all five
groups; tiny, S = 3: L5 and L7 keep all four). A kept stage has the preset's latent width there, or,
where the preset has none, the width of the nearest stage that has one (the finer one on a tie).

**Baseline sizes.** ``mmgan`` and ``resvit`` read their own configs (``model.mmgan``,
``model.resvit``), set here from the preset: the authors' widths at full size
(``model.image_size >= 128``): U-Net 64-128-256-512-512-... (one stage per preset stage) and ResViT
64-128-256 with 9 ART blocks, transformer in blocks 1 and 6, ViT-B (768-d, 12 layers, 12 heads),
PatchGAN discriminators of 64 channels and 3 layers. Below that size they are scaled to stay
CPU-trainable: base width b = 2 x the preset's first stage width (U-Net widths b * 2^s capped at 8b,
ResViT b-2b-4b with 4 ART blocks, transformer in blocks 1 and 3, 4b-wide, 2 layers, 4 heads), and
the preset's discriminator size is kept.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

from mmhvae.config import ConfigError, ExperimentConfig

FULL_SIZE = 128  # image sizes from here on get the baselines' original widths


@dataclass(frozen=True)
class Method:
    """One compared method: what it is, where it comes from, which paper table it belongs to."""

    name: str
    group: str  # "baseline" (Table 1) | "depth" (Table 2) | "fusion" (Table 3) | "gan" (Table 4)
    summary: str
    source: str
    apply: Callable[[ExperimentConfig], None]


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def paper_groups_to_stages(num_stages: int, paper_groups: list[int]) -> list[int]:
    """Spatial stages (0-based, finest first) that carry a latent for paper groups ``paper_groups``.

    Group 7 (the top vector) exists in every model and is not a stage; see the module docstring.
    """
    top = num_stages + 1
    out = set()
    for g in paper_groups:
        mapped = 1 + int((g - 1) * (top - 1) / 6 + 0.5)
        if mapped < top:
            out.add(mapped - 1)
    return sorted(out)


DEPTH_GROUPS = {1: [7], 2: [1, 7], 3: [1, 4, 7], 5: [1, 3, 4, 5, 7], 7: [1, 2, 3, 4, 5, 6, 7]}


def _latent_width(latent_channels: list[int], channels: list[int], stage: int) -> int:
    if latent_channels[stage] > 0:
        return latent_channels[stage]
    with_latent = [s for s, c in enumerate(latent_channels) if c > 0]
    if not with_latent:
        return max(1, channels[stage] // 4)
    nearest = min(with_latent, key=lambda s: (abs(s - stage), s))
    return latent_channels[nearest]


def _depth(L: int) -> Callable[[ExperimentConfig], None]:
    def apply(cfg: ExperimentConfig) -> None:
        m = cfg.model
        keep = set(paper_groups_to_stages(len(m.channels), DEPTH_GROUPS[L]))
        m.latent_channels = [
            _latent_width(m.latent_channels, m.channels, s) if s in keep else 0 for s in range(len(m.channels))
        ]

    return apply


def _single_level(cfg: ExperimentConfig) -> None:
    cfg.model.latent_channels = [0] * len(cfg.model.channels)


def _is_full_size(cfg: ExperimentConfig) -> bool:
    return cfg.model.image_size >= FULL_SIZE


def _base_width(cfg: ExperimentConfig) -> int:
    return 64 if _is_full_size(cfg) else 2 * cfg.model.channels[0]


def _adversarial_baseline(cfg: ExperimentConfig, gan_weight: float) -> None:
    """Training recipe shared by MM-GAN and ResViT: L1 + LSGAN from the first step, Adam 2e-4."""
    tc = cfg.train
    tc.reconstruction = "l1"
    tc.use_gan = True
    tc.gan.loss = "lsgan"
    tc.gan.weight = gan_weight
    tc.gan.start_fraction = 0.0
    tc.optimizer = "adam"
    tc.betas = [0.5, 0.999]  # pix2pix-family setting used by MM-GAN and ResViT
    tc.lr = 2e-4
    tc.lr_min = 0.0  # both decay the rate linearly to 0; the trainer's cosine also ends at lr_min
    tc.kl_weight = 0.0
    # "Random missing channels": a uniform draw over the non-empty input subsets of each subject.
    tc.subset_policy = "uniform"
    if _is_full_size(cfg):
        tc.gan.channels, tc.gan.layers = 64, 3  # the PatchGAN of pix2pix / MM-GAN / ResViT


# --------------------------------------------------------------------------------------------------
# The methods
# --------------------------------------------------------------------------------------------------


def _mmhvae(cfg: ExperimentConfig) -> None:
    cfg.model.method = "mmhvae"


def _mvae(cfg: ExperimentConfig) -> None:
    _single_level(cfg)
    # Sub-sampled training (Wu & Goodman 2018, §3.2): the sum of the ELBOs of the joint, of every single
    # modality and of k = 1 random subset, each reconstructing its own inputs (mmhvae.train.objectives).
    cfg.train.objective = "mvae"
    cfg.train.mvae_random_subsets = 1
    cfg.train.use_gan = False  # the original MVAE has no adversarial term


def _mopoe(cfg: ExperimentConfig) -> None:
    _single_level(cfg)
    # The posterior is the uniform mixture of the PoEs of all subsets of the inputs, with the
    # subset-averaged KL (mmhvae.models.baselines.mopoe); every available modality is reconstructed.
    cfg.model.method = "mopoe"
    cfg.train.objective = "mopoe"
    cfg.train.use_gan = False  # the original MoPoE-VAE has no adversarial term


def _mhvae(cfg: ExperimentConfig) -> None:
    # Same hierarchical PoE network; trained on complete subjects, inputs drawn uniformly among their
    # subsets, i.e. without the paper's mixture over incomplete observations.
    cfg.train.complete_only = True
    cfg.train.subset_policy = "uniform"


def _concat_zeros(cfg: ExperimentConfig) -> None:
    cfg.model.fusion = "concat"


def _average(cfg: ExperimentConfig) -> None:
    cfg.model.fusion = "average"


def _no_gan(cfg: ExperimentConfig) -> None:
    cfg.train.use_gan = False


def _mmgan(cfg: ExperimentConfig) -> None:
    m = cfg.model
    m.method = "mmgan"
    b = _base_width(cfg)
    m.mmgan.channels = [min(b * 2**s, 8 * b) for s in range(len(m.channels))]
    # Authors' generator loss: 0.9 * L1 + 0.1 * LSGAN, i.e. lambda_GAN = 0.1 / 0.9 relative to L1.
    _adversarial_baseline(cfg, gan_weight=0.1 / 0.9)


def _resvit(cfg: ExperimentConfig) -> None:
    cfg.model.method = "resvit"
    b = _base_width(cfg)
    r = cfg.model.resvit
    r.channels = [b, 2 * b, 4 * b]
    if _is_full_size(cfg):
        r.art_blocks, r.transformer_blocks = 9, [0, 5]
        r.transformer_dim, r.transformer_layers, r.transformer_heads = 768, 12, 12
    else:
        r.art_blocks, r.transformer_blocks = 4, [0, 2]
        r.transformer_dim, r.transformer_layers, r.transformer_heads = 4 * b, 2, 4
    # Authors' loss: 100 * L1 + 1 * adversarial, i.e. lambda_GAN = 0.01 relative to L1.
    _adversarial_baseline(cfg, gan_weight=0.01)


WU_GOODMAN = "Wu & Goodman, Multimodal generative models for scalable weakly-supervised learning, NeurIPS 2018"
SUTTER = "Sutter, Daunhawer & Vogt, Generalized multimodal ELBO, ICLR 2021"
DORENT_2023 = (
    "Dorent et al., Unified brain MR-ultrasound synthesis using multi-modal hierarchical representations, MICCAI 2023"
)
SHARMA = (
    "Sharma & Hamarneh, Missing MRI pulse sequence synthesis using multi-modal generative adversarial network, "
    "IEEE TMI 2020"
)
DALMAZ = (
    "Dalmaz, Yurt & Cukur, ResViT: residual vision transformers for multimodal medical image synthesis, IEEE TMI 2022"
)
TPAMI = "Dorent et al., TPAMI 2025 (this paper)"

METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("mmhvae", "baseline", "MMHVAE as configured (paper: L = 7, PoE, mixture of PoE, GAN)", TPAMI, _mmhvae),
        Method("mvae", "baseline", "L = 1 product of experts, sub-sampled ELBOs (joint, unimodal, 1 random)", WU_GOODMAN, _mvae),
        Method("mopoe", "baseline", "L = 1, mixture of the subsets' products of experts and its ELBO", SUTTER, _mopoe),
        Method("mhvae", "baseline", "hierarchical PoE trained on complete subjects only", DORENT_2023, _mhvae),
        Method("mmgan", "baseline", "U-Net + PatchGAN on zero-imputed concatenated inputs", SHARMA, _mmgan),
        Method("resvit", "baseline", "conv encoder + ART transformer bottleneck, zero-imputed inputs", DALMAZ, _resvit),
        Method("concat-zeros", "fusion", "one encoder, zero-imputed concatenated inputs (Table 3)", TPAMI, _concat_zeros),
        Method("average", "fusion", "deterministic mean of per-modality features per level (Table 3)", TPAMI, _average),
        Method("L1", "depth", "latent group 7 only (Table 2)", TPAMI, _depth(1)),
        Method("L2", "depth", "latent groups 1 and 7 (Table 2)", TPAMI, _depth(2)),
        Method("L3", "depth", "latent groups 1, 4 and 7 (Table 2)", TPAMI, _depth(3)),
        Method("L5", "depth", "latent groups 1, 3, 4, 5 and 7 (Table 2)", TPAMI, _depth(5)),
        Method("L7", "depth", "all seven latent groups (Table 2)", TPAMI, _depth(7)),
        Method("no-gan", "gan", "lambda_GAN = 0 (Table 4)", TPAMI, _no_gan),
    ]
}


def apply_method(cfg: ExperimentConfig, method: str) -> ExperimentConfig:
    """A validated copy of ``cfg`` configured as ``method`` (one of :data:`METHODS`).

    The copy's ``name`` becomes ``"<cfg.name>-<method>"`` so that run folders and logs say which
    method they hold; the input config is not modified.
    """
    try:
        spec = METHODS[method]
    except KeyError:
        raise ConfigError(f"unknown method {method!r}; choose one of {list(METHODS)}") from None
    out = copy.deepcopy(cfg)
    spec.apply(out)
    out.name = f"{cfg.name}-{method}"
    return out.validate()


def parse_methods(text: str) -> list[str]:
    """``"mmhvae,mvae"`` -> ``["mmhvae", "mvae"]``; ``"all"`` -> every method; unknown names refused."""
    names = list(METHODS) if text.strip() == "all" else [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ConfigError(f"no method given; choose from {list(METHODS)} or 'all'")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; choose from {list(METHODS)} or 'all'")
    return list(dict.fromkeys(names))

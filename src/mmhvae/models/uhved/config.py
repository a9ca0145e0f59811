"""U-HVED configuration: one typed dataclass tree and the family's presets (DESIGN §4).

Serialized with the project's shared machinery (:mod:`mmhvae.config`: ``from_dict``, ``load_config``,
``override_dict``). Presets are named ``uhved-tiny`` (tests), ``uhved-cpu`` (the built-in cohort on a
laptop) and ``uhved-paper`` (BraTS 2018 as in the seed), so that they cannot be mistaken for the
MMHVAE presets (``paper``, ``small``, ``tiny``, ``real-cpu``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Optional, Sequence

import yaml

from mmhvae.config import ConfigError, DataConfig, from_dict, load_config, override_dict

METHODS = ("uhved", "uhemis")
SCHEDULES = ("cosine", "poly", "constant")
SUBSET_POLICIES = ("size-uniform", "uniform", "weights")

# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass
class UHVEDModelConfig:
    """Architecture. Scale ``s`` (0 = full resolution) works at ``1 / 2**s`` of the patch size.

    ``channels[s]`` is the width of the encoders and decoders at scale ``s`` and
    ``latent_channels[s]`` the number of latent channels of the Gaussian at that scale (seed: 4 scales,
    widths 8-16-32-64, latents of half the width). ``seg_labels`` lists the label values of the
    segmentation maps; class ``k`` of the network is label value ``seg_labels[k]`` and
    ``seg_labels[0]`` is the background.
    """

    method: str = "uhved"  # "uhved" | "uhemis" (the seed's U-HeMIS comparison)
    modalities: list[str] = field(default_factory=lambda: ["t2", "cet1", "flair"])
    channels: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    latent_channels: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    seg_labels: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    negative_slope: float = 0.01  # LeakyReLU, as the official implementation
    logvar_clamp: float = 8.0  # soft clamp of expert log-variances (DESIGN §1)
    mean_clamp: float = 20.0

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    @property
    def num_scales(self) -> int:
        return len(self.channels)

    @property
    def num_classes(self) -> int:
        return len(self.seg_labels)

    @property
    def divisor(self) -> int:
        """Spatial sizes fed to the network must be multiples of this (one pooling per scale)."""
        return 2 ** (self.num_scales - 1)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"model.method must be one of {METHODS}, got {self.method!r}")
        if not self.modalities:
            raise ConfigError("model.modalities: at least one modality is required")
        if len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"model.modalities: duplicate names in {self.modalities}")
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ConfigError(
                f"model.channels must be a non-empty list of positive widths, got {self.channels}"
            )
        if len(self.latent_channels) != len(self.channels):
            raise ConfigError(
                "model.latent_channels needs one entry per scale like model.channels, got "
                f"{len(self.latent_channels)} and {len(self.channels)}"
            )
        if any(c <= 0 for c in self.latent_channels):
            raise ConfigError(f"model.latent_channels must be positive, got {self.latent_channels}")
        if (
            len(self.seg_labels) < 2
            or len(set(self.seg_labels)) != len(self.seg_labels)
            or min(self.seg_labels) < 0
        ):
            raise ConfigError(
                "model.seg_labels must list >= 2 distinct non-negative label values (background first), "
                f"got {self.seg_labels}"
            )


@dataclass
class UHVEDTrainConfig:
    """Patch-based training (seed §3). Loss = dice·Dice + ce·CE + reconstruction·MSE + kl·KL."""

    steps: int = 2000
    batch_size: int = 2
    patch_size: list[int] = field(default_factory=lambda: [48, 48, 48])
    tumour_patch_fraction: float = 0.5  # share of patches centred on a tumour voxel (labelled subjects)
    flip: bool = True  # random flips along the three axes (seed §3)
    subset_policy: str = "size-uniform"  # r' ~ p(r' | r): uniform size, then uniform subset (seed §3)
    subset_weights: dict[str, float] = field(default_factory=dict)  # for subset_policy "weights"
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    reconstruction_weight: float = 0.1
    kl_weight: float = 0.1
    kl_warmup_fraction: float = 0.0  # KL weight ramps linearly from 0 over this fraction of the steps
    lr: float = 1e-3
    lr_min: float = 1e-5
    schedule: str = "cosine"  # "cosine" | "poly" | "constant", after a linear warm-up
    warmup_steps: int = 0
    poly_power: float = 0.9
    weight_decay: float = 1e-5
    grad_clip: float = 10.0  # max gradient norm; 0 disables
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    device: str = "auto"  # "auto" (CUDA when available) | "cpu" | "cuda" | "cuda:1"
    amp: str = "auto"  # "auto" (bf16 on CUDA, fp32 on CPU) | "bf16" | "fp32"


@dataclass
class UHVEDEvalConfig:
    """Sliding-window inference and metrics."""

    # Latent temperature at inference: 0 decodes the posterior means; > 0 averages ``samples``
    # decoded draws. Default 1, as the official code segments from a sample: the decoders (with
    # instance norm on the latents) are trained on samples, and on the built-in cohort sampling
    # scored higher Dice and PSNR than the posterior mean.
    temperature: float = 1.0
    samples: int = 1
    seed: int = 0  # sampling noise at inference is drawn from this seed (reproducible outputs)
    window: list[int] = field(default_factory=lambda: [64, 64, 64])
    overlap: float = 0.25
    sw_batch_size: int = 4  # windows per forward pass
    blend: str = "gaussian"  # MONAI blend mode: "gaussian" | "constant"
    data_range: float = 0.0  # PSNR/SSIM data range; 0: the ground truth's max - min per volume
    regions: dict[str, list[int]] = field(
        default_factory=lambda: {"whole": [1, 2, 3], "core": [1, 3], "enhancing": [3]}
    )


@dataclass
class UHVEDConfig:
    """Everything a U-HVED run needs; written as ``config.yaml`` in every run folder.

    ``data`` is the project's :class:`~mmhvae.config.DataConfig` (cohort, modality aliases,
    harmonization); its 2D slicing fields are not used by this 3D model."""

    model: UHVEDModelConfig = field(default_factory=UHVEDModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: UHVEDTrainConfig = field(default_factory=UHVEDTrainConfig)
    eval: UHVEDEvalConfig = field(default_factory=UHVEDEvalConfig)
    name: str = "uhved"
    family: ClassVar[str] = "uhved"  # checkpoint metadata: which config a generator file embeds

    def validate(self) -> "UHVEDConfig":
        self.model.validate()
        div = self.model.divisor
        for key, size in (("train.patch_size", self.train.patch_size), ("eval.window", self.eval.window)):
            if len(size) != 3 or any(p <= 0 or p % div for p in size):
                raise ConfigError(
                    f"{key}={size}: need three positive sizes divisible by 2**(scales-1)={div}"
                )
        if self.train.subset_policy not in SUBSET_POLICIES:
            raise ConfigError(
                f"train.subset_policy must be one of {SUBSET_POLICIES}, got {self.train.subset_policy!r}"
            )
        if self.train.schedule not in SCHEDULES:
            raise ConfigError(f"train.schedule must be one of {SCHEDULES}, got {self.train.schedule!r}")
        for key in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self.train, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(self.train, key)}")
        if self.eval.sw_batch_size < 1:
            raise ConfigError(f"eval.sw_batch_size must be >= 1, got {self.eval.sw_batch_size}")
        if not 0.0 <= self.train.tumour_patch_fraction <= 1.0:
            raise ConfigError("train.tumour_patch_fraction must lie in [0, 1]")
        if not 0.0 <= self.train.kl_warmup_fraction <= 1.0:
            raise ConfigError("train.kl_warmup_fraction must lie in [0, 1]")
        if self.train.amp not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"train.amp must be auto, bf16 or fp32, got {self.train.amp!r}")
        if self.eval.samples < 1 or not self.eval.temperature >= 0 or self.eval.temperature == float("inf"):
            raise ConfigError(
                f"eval.samples must be >= 1 and eval.temperature a finite number >= 0, got "
                f"{self.eval.samples} and {self.eval.temperature}"
            )
        if not 0.0 <= self.eval.overlap < 1.0:
            raise ConfigError(f"eval.overlap must lie in [0, 1), got {self.eval.overlap}")
        if self.eval.blend not in ("gaussian", "constant"):
            raise ConfigError(f"eval.blend must be gaussian or constant, got {self.eval.blend!r}")
        labels = set(self.model.seg_labels[1:])
        for region, values in self.eval.regions.items():
            unknown = [v for v in values if v not in labels]
            if not values or unknown:
                raise ConfigError(
                    f"eval.regions.{region}={values}: a region is a non-empty list of foreground "
                    f"labels from model.seg_labels {self.model.seg_labels[1:]}"
                )
        return self

    # --- YAML -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "UHVEDConfig":
        return from_dict(cls, dict(data), "").validate()

    def save(self, path: str | Path) -> None:
        from mmhvae.atomic import atomic_write_text

        atomic_write_text(Path(path), self.to_yaml())

    @classmethod
    def load(cls, path: str | Path) -> "UHVEDConfig":
        return load_config(cls, path)

    def with_overrides(self, overrides: Sequence[str]) -> "UHVEDConfig":
        """A copy with ``section.key=value`` overrides applied (values parsed as YAML)."""
        return UHVEDConfig.from_dict(override_dict(self.to_dict(), list(overrides)))


def _tiny() -> UHVEDConfig:
    """For tests: 3 scales, 4-8-8 channels, 16³ patches."""
    cfg = UHVEDConfig(name="uhved-tiny")
    cfg.model = UHVEDModelConfig(channels=[4, 8, 8], latent_channels=[2, 4, 4])
    cfg.train = UHVEDTrainConfig(
        steps=4, batch_size=2, patch_size=[16, 16, 16], checkpoint_every=2, log_every=1, lr=3e-3
    )
    cfg.eval = UHVEDEvalConfig(window=[16, 16, 16])
    return cfg


def _cpu() -> UHVEDConfig:
    """The built-in cohort (t2, cet1, flair at 64×64×48) trained in minutes on two CPU cores."""
    cfg = UHVEDConfig(name="uhved-cpu")
    cfg.model = UHVEDModelConfig(channels=[8, 16, 32, 32], latent_channels=[4, 8, 16, 16])
    # ~1% of the seed's iterations: the KL weight ramps up over the first half so that the latents
    # carry information before the KL pulls them towards the prior.
    cfg.train = UHVEDTrainConfig(
        steps=1000, batch_size=2, patch_size=[24, 24, 24], tumour_patch_fraction=0.6,
        kl_warmup_fraction=0.5, lr=2e-3, warmup_steps=25, checkpoint_every=250, log_every=10,
    )
    # Windows of the training patch size: instance-norm statistics of a window then match training.
    cfg.eval = UHVEDEvalConfig(window=[24, 24, 24], overlap=0.5)
    return cfg


def _paper() -> UHVEDConfig:
    """The seed's BraTS 2018 setup: T1, T1c (``cet1``), T2, FLAIR; 4 scales of 8-16-32-64; 112³ patches;
    Adam 1e-3, weight decay 1e-5, batch 1, 60k iterations (cosine decay replaces the official
    code's division by 4 every 10 iterations)."""
    cfg = UHVEDConfig(name="uhved-paper")
    cfg.model = UHVEDModelConfig(
        modalities=["t1", "cet1", "t2", "flair"],
        channels=[8, 16, 32, 64],
        latent_channels=[4, 8, 16, 32],
        seg_labels=[0, 1, 2, 4],
    )
    cfg.data = DataConfig(harmonization="percentile")
    cfg.train = UHVEDTrainConfig(
        steps=60_000, batch_size=1, patch_size=[112, 112, 112], lr=1e-3, weight_decay=1e-5,
        checkpoint_every=5000, log_every=100,
    )
    cfg.eval = UHVEDEvalConfig(
        window=[112, 112, 112], overlap=0.5,
        regions={"whole": [1, 2, 4], "core": [1, 4], "enhancing": [4]},
    )
    return cfg


UHVED_PRESETS = {"uhved-tiny": _tiny, "uhved-cpu": _cpu, "uhved-paper": _paper}
DEFAULT_PRESET = "uhved-cpu"


def uhved_preset(name: str) -> UHVEDConfig:
    """A fresh copy of a named preset (``uhved-tiny``, ``uhved-cpu``, ``uhved-paper``)."""
    if name not in UHVED_PRESETS:  # (a KeyError raised inside a preset is a bug, not an unknown name)
        from mmhvae.config import PRESETS

        what = "an MMHVAE preset, not a U-HVED one" if name in PRESETS else "unknown U-HVED preset"
        raise ConfigError(f"{name!r}: {what}; choose one of {', '.join(UHVED_PRESETS)} or a YAML file")
    return UHVED_PRESETS[name]().validate()


def is_preset_name(config: str) -> bool:
    """A bare name (no folder, no ``.yaml``): meant as a preset, not a file."""
    return not any(ch in config for ch in "/\\") and not config.endswith((".yaml", ".yml"))


def resolve_uhved_config(config: Optional[str] = None, overrides: Sequence[str] = ()) -> UHVEDConfig:
    """A preset name or a YAML path (default: the ``uhved-cpu`` preset), then ``key=value`` overrides.

    A name that is no U-HVED preset (e.g. the MMHVAE preset ``small``) and no existing file is refused
    with the valid choices."""
    if config is None:
        cfg = uhved_preset(DEFAULT_PRESET)
    elif config in UHVED_PRESETS or (is_preset_name(config) and not Path(config).is_file()):
        cfg = uhved_preset(config)
    else:
        cfg = UHVEDConfig.load(config)
    return cfg.with_overrides(list(overrides))

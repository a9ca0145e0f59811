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

The configuration (:class:`UHVEDConfig`) is one typed dataclass tree, serialized to YAML with
``dataclasses.asdict`` and read back with :func:`mmhvae.config.from_dict`; presets ``tiny`` (tests),
``cpu`` (the built-in cohort on a laptop) and ``paper`` (BraTS 2018 as in the seed) live here.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from mmhvae.config import ConfigError, DataConfig, from_dict
from mmhvae.nn.gaussian import DiagonalGaussian, product_of_experts

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

    @classmethod
    def load(cls, path) -> "UHVEDConfig":
        from pathlib import Path

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def with_overrides(self, overrides: Sequence[str]) -> "UHVEDConfig":
        """A copy with ``section.key=value`` overrides applied (values parsed as YAML)."""
        from mmhvae.config import override_dict

        data = override_dict(self.to_dict(), list(overrides))
        return UHVEDConfig.from_dict(data)


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


UHVED_PRESETS = {"tiny": _tiny, "cpu": _cpu, "paper": _paper}


def uhved_preset(name: str) -> UHVEDConfig:
    """A fresh copy of a named preset (``tiny``, ``cpu``, ``paper``)."""
    try:
        return UHVED_PRESETS[name]().validate()
    except KeyError:
        raise ConfigError(f"unknown U-HVED preset {name!r}; choose one of {sorted(UHVED_PRESETS)}") from None


def resolve_uhved_config(config: Optional[str] = None, overrides: Sequence[str] = ()) -> UHVEDConfig:
    """A preset name or a YAML path (default: the ``cpu`` preset), then ``key=value`` overrides."""
    if config is None:
        cfg = uhved_preset("cpu")
    elif config in UHVED_PRESETS:
        cfg = uhved_preset(config)
    else:
        cfg = UHVEDConfig.load(config)
    return cfg.with_overrides(list(overrides))


# --------------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------------


class ResBlock3d(nn.Module):
    """Pre-activation residual block ``(B, Cin, D, H, W) -> (B, Cout, D, H, W)``:
    (InstanceNorm -> LeakyReLU -> conv 3³) x 2, plus a 1³ projection of the input.

    Instance normalization is per sample, so encoders can run on the sub-batch of samples that
    observe their modality without changing any sample's output.
    """

    def __init__(self, in_channels: int, out_channels: int, negative_slope: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.InstanceNorm3d(in_channels, affine=True),
            nn.LeakyReLU(negative_slope),
            nn.Conv3d(in_channels, out_channels, 3, padding=1),
            nn.InstanceNorm3d(out_channels, affine=True),
            nn.LeakyReLU(negative_slope),
            nn.Conv3d(out_channels, out_channels, 3, padding=1),
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv3d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


class ModalityEncoder(nn.Module):
    """One modality ``(n, 1, D, H, W)`` -> features ``[(n, channels[s], D/2^s, H/2^s, W/2^s)]``."""

    def __init__(self, channels: Sequence[int], negative_slope: float):
        super().__init__()
        self.stem = nn.Conv3d(1, channels[0], 1)
        widths = [channels[0], *channels]
        self.blocks = nn.ModuleList(
            ResBlock3d(widths[s], widths[s + 1], negative_slope) for s in range(len(channels))
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        h = self.stem(x)
        features = []
        for s, block in enumerate(self.blocks):
            if s > 0:
                h = F.max_pool3d(h, 2)
            h = block(h)
            features.append(h)
        return features


class SkipDecoder(nn.Module):
    """U-Net decoder from multi-scale skips ``[(B, skip[s], D/2^s, ...)]`` to ``(B, out, D, H, W)``.

    The coarsest skip starts the flow; at each finer scale the flow is upsampled (trilinear),
    concatenated with that scale's skip and refined by a residual block (seed Fig. 2).
    """

    def __init__(
        self, skip_channels: Sequence[int], channels: Sequence[int], out_channels: int, negative_slope: float
    ):
        super().__init__()
        top = len(channels) - 1
        self.top = ResBlock3d(skip_channels[top], channels[top], negative_slope)
        self.blocks = nn.ModuleList(
            ResBlock3d(channels[s + 1] + skip_channels[s], channels[s], negative_slope) for s in range(top)
        )
        self.head = nn.Sequential(
            nn.InstanceNorm3d(channels[0], affine=True),
            nn.LeakyReLU(negative_slope),
            nn.Conv3d(channels[0], out_channels, 1),
        )

    def forward(self, skips: Sequence[Tensor]) -> Tensor:
        h = self.top(skips[-1])
        for s in reversed(range(len(self.blocks))):
            h = F.interpolate(h, size=skips[s].shape[2:], mode="trilinear", align_corners=False)
            h = self.blocks[s](torch.cat([h, skips[s].to(h.dtype)], dim=1))
        return self.head(h)


@dataclass
class UHVEDOutput:
    """Network outputs for one batch.

    seg_logits: ``(B, K, D, H, W)``, K = len(seg_labels).
    images: ``(B, M, D, H, W)`` decoded modalities (all M, from any input subset); None for U-HeMIS.
    kl: ``(B,)`` KL(q(z | x_r') || N(0, I)) per element, averaged over elements and scales; None for U-HeMIS.
    """

    seg_logits: Tensor
    images: Optional[Tensor]
    kl: Optional[Tensor]


class UHVED(nn.Module):
    """U-HVED (``method="uhved"``) or U-HeMIS (``method="uhemis"``); see the module docstring."""

    def __init__(self, cfg: UHVEDModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = copy.deepcopy(cfg)
        slope = cfg.negative_slope
        self.encoders = nn.ModuleDict({m: ModalityEncoder(cfg.channels, slope) for m in cfg.modalities})
        if cfg.method == "uhved":
            # Seed §2.3: each encoder emits (mu, log sigma²) at every scale.
            self.heads = nn.ModuleDict(
                {
                    m: nn.ModuleList(nn.Conv3d(c, 2 * z, 1) for c, z in zip(cfg.channels, cfg.latent_channels))
                    for m in cfg.modalities
                }
            )
            skip_channels = list(cfg.latent_channels)
            self.image_decoders = nn.ModuleDict(
                {m: SkipDecoder(skip_channels, cfg.channels, 1, slope) for m in cfg.modalities}
            )
        else:
            # HeMIS fusion: first and second moments of the observed modalities' features.
            skip_channels = [2 * c for c in cfg.channels]
        self.seg_decoder = SkipDecoder(skip_channels, cfg.channels, cfg.num_classes, slope)

    @classmethod
    def from_config(cls, cfg: UHVEDConfig | UHVEDModelConfig) -> "UHVED":
        return cls(cfg.model if isinstance(cfg, UHVEDConfig) else cfg)

    @property
    def modalities(self) -> list[str]:
        return list(self.cfg.modalities)

    # --- inputs -----------------------------------------------------------------------------------
    def check_inputs(self, images: Tensor, observed: Tensor) -> None:
        """Refuse wrong shapes, empty subsets and sizes the pooling cannot halve, with clear messages."""
        m = self.cfg.num_modalities
        if images.dim() != 5 or images.shape[1] != m:
            raise ValueError(
                f"images must be (B, M={m}, D, H, W) in the order {self.modalities}, got {tuple(images.shape)}"
            )
        if observed.shape != images.shape[:2]:
            raise ValueError(
                f"observed mask must be (B, M)={tuple(images.shape[:2])}, got {tuple(observed.shape)}"
            )
        empty = (~observed.bool()).all(dim=1).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"empty input subset for sample(s) {empty}: observe at least one of {self.modalities}"
            )
        div = self.cfg.divisor
        if any(s % div for s in images.shape[2:]):
            raise ValueError(
                f"spatial size {tuple(images.shape[2:])} must be divisible by {div} "
                f"(2**(scales-1)); pad the volume or use sliding-window inference"
            )

    def stack_inputs(self, images: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Named volumes ``{name: (B, D, H, W) or (B, 1, D, H, W)}`` -> images ``(B, M, D, H, W)``
        (zeros in unobserved slots, never read) and ``observed`` ``(B, M)`` bool."""
        if not images:
            raise ValueError(f"empty input subset: give at least one of {self.modalities}")
        unknown = sorted(set(images) - set(self.modalities))
        if unknown:
            raise ValueError(f"unknown modality {unknown}; this model knows {self.modalities}")
        vols = {k: (v[:, 0] if v.dim() == 5 else v) for k, v in images.items()}
        ref = next(iter(vols.values()))
        for k, v in vols.items():
            if v.shape != ref.shape:
                raise ValueError(f"modality {k!r} has shape {tuple(v.shape)}, expected {tuple(ref.shape)}")
        batch, m = ref.shape[0], self.cfg.num_modalities
        stacked = torch.zeros(batch, m, *ref.shape[1:], dtype=torch.float32, device=ref.device)
        observed = torch.zeros(batch, m, dtype=torch.bool, device=ref.device)
        for j, name in enumerate(self.modalities):
            if name in vols:
                stacked[:, j] = vols[name].float()
                observed[:, j] = True
        return stacked, observed

    # --- forward ----------------------------------------------------------------------------------
    def _encode(self, images: Tensor, observed: Tensor) -> list[Optional[tuple[Tensor, list[Tensor]]]]:
        """Per modality: (indices of the samples observing it, its features at every scale), or None.

        Only observed samples go through an encoder, so an absent modality costs nothing and its
        encoder receives exactly zero gradient from that sample."""
        out: list[Optional[tuple[Tensor, list[Tensor]]]] = []
        for j, name in enumerate(self.modalities):
            idx = observed[:, j].nonzero().flatten()
            if idx.numel() == 0:
                out.append(None)
                continue
            out.append((idx, self.encoders[name](images[idx, j : j + 1])))
        return out

    @staticmethod
    def _scatter(parts: list[Optional[tuple[Tensor, Tensor]]], batch: int) -> Tensor:
        """Per-modality ``(idx, (n_j, C, ...))`` -> ``(B, M, C, ...)``; rows of unobserved samples are zero
        (and masked out downstream)."""
        ref = next(p[1] for p in parts if p is not None)
        full = []
        for p in parts:
            t = ref.new_zeros(batch, *ref.shape[1:])
            full.append(t if p is None else t.index_copy(0, p[0], p[1].to(t.dtype)))
        return torch.stack(full, dim=1)

    def _hemis_skips(self, encoded, observed: Tensor, batch: int) -> list[Tensor]:
        """HeMIS fusion per scale: ``[mean, variance]`` over observed modalities, ``(B, 2C, ...)``
        (variance 0 when one modality is observed)."""
        skips = []
        mask = observed.float()
        for s in range(self.cfg.num_scales):
            feats = self._scatter([None if e is None else (e[0], e[1][s]) for e in encoded], batch)
            w = mask.reshape(*mask.shape, *([1] * (feats.dim() - 2)))
            count = w.sum(dim=1)
            mean = (feats * w).sum(dim=1) / count
            var = (((feats - mean.unsqueeze(1)) ** 2) * w).sum(dim=1) / count
            skips.append(torch.cat([mean, var], dim=1))
        return skips

    def posteriors(self, images: Tensor, observed: Tensor) -> list[DiagonalGaussian]:
        """U-HVED: q(z_s | x_r') at every scale ``s``, tensors ``(B, latent_channels[s], D/2^s, ...)``."""
        if self.cfg.method != "uhved":
            raise ValueError(f"method {self.cfg.method!r} has no latent posteriors")
        self.check_inputs(images, observed)
        observed = observed.bool()
        batch = images.shape[0]
        encoded = self._encode(images, observed)
        out = []
        for s in range(self.cfg.num_scales):
            params = [
                None if e is None else (e[0], self.heads[name][s](e[1][s]))
                for name, e in zip(self.modalities, encoded)
            ]
            experts = DiagonalGaussian.from_params(
                self._scatter(params, batch), self.cfg.logvar_clamp, self.cfg.mean_clamp, dim=2
            )
            prior = DiagonalGaussian.standard(experts.mu[:, 0])
            # Seed eq. 4: q(z | x_r') ∝ N(0, I) · Π_{j in r'} q_j(z | x_j).
            out.append(product_of_experts(prior, experts, observed))
        return out

    def decode(self, latents: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Multi-scale latents -> segmentation logits ``(B, K, D, H, W)`` and images ``(B, M, D, H, W)``."""
        images = torch.cat([self.image_decoders[m](latents) for m in self.modalities], dim=1)
        return self.seg_decoder(latents), images

    def forward(self, images: Tensor, observed: Tensor, temperature: float = 1.0) -> UHVEDOutput:
        """images ``(B, M, D, H, W)``, observed ``(B, M)`` bool -> :class:`UHVEDOutput`.

        ``temperature`` scales the sampling noise: 1 in training, 0 for posterior means."""
        if self.cfg.method == "uhemis":
            self.check_inputs(images, observed)
            observed = observed.bool()
            encoded = self._encode(images, observed)
            seg = self.seg_decoder(self._hemis_skips(encoded, observed, images.shape[0]))
            return UHVEDOutput(seg_logits=seg, images=None, kl=None)
        posteriors = self.posteriors(images, observed)
        kl = torch.stack(
            [q.kl(DiagonalGaussian.standard(q.mu)).flatten(1).mean(dim=1) for q in posteriors], dim=1
        ).mean(dim=1)
        seg, decoded = self.decode([q.sample(temperature) for q in posteriors])
        return UHVEDOutput(seg_logits=seg, images=decoded, kl=kl)

    @torch.no_grad()
    def predict(
        self, images: Tensor, observed: Tensor, temperature: float = 0.0, samples: int = 1
    ) -> tuple[Tensor, Optional[Tensor]]:
        """Class probabilities ``(B, K, D, H, W)`` and images ``(B, M, D, H, W)`` (None for U-HeMIS),
        averaged over ``samples`` latent draws at ``temperature`` (one pass when it is 0)."""
        if self.cfg.method == "uhemis":
            return torch.softmax(self(images, observed).seg_logits.float(), dim=1), None
        posteriors = self.posteriors(images, observed)
        draws = max(1, samples) if temperature > 0 else 1
        probs, decoded = 0.0, 0.0
        for _ in range(draws):
            seg, imgs = self.decode([q.sample(temperature) for q in posteriors])
            probs = probs + torch.softmax(seg.float(), dim=1) / draws
            decoded = decoded + imgs.float() / draws
        return probs, decoded


# --------------------------------------------------------------------------------------------------
# Whole-volume inference
# --------------------------------------------------------------------------------------------------


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

"""Typed configuration: dataclasses serialized to YAML, presets, command-line overrides.

Every run writes its resolved :class:`ExperimentConfig` as ``config.yaml`` next to its checkpoints,
so any result can be reproduced from its folder. Nothing in the model or trainer hard-codes modality
names, image sizes or step counts: the paper's setup is the ``paper`` preset.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml


from mmhvae.errors import ConfigError  # noqa: E402,F401 - defined with the other project errors


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


def _check_widths(key: str, widths: list[int], image_size: int) -> None:
    """``widths`` (one stride-2 stage each) positive, and ``image_size`` divisible by 2**len(widths)."""
    if len(widths) < 1:
        raise ConfigError(f"{key}: at least one spatial stage is required")
    if any(c <= 0 for c in widths):
        raise ConfigError(f"{key} must be positive, got {widths}")
    div = 2 ** len(widths)
    if image_size % div != 0:
        raise ConfigError(f"model.image_size={image_size} must be divisible by 2**len({key})={div}")


@dataclass
class MMGANConfig:
    """MM-GAN's U-Net generator (``model.method=mmgan``, Sharma & Hamarneh 2020): one stride-2 stage
    per width. The default is the authors' widths at the paper preset's six stages (``methods.py``)."""

    channels: list[int] = field(default_factory=lambda: [64, 128, 256, 512, 512, 512])

    def validate(self, image_size: int) -> None:
        _check_widths("model.mmgan.channels", self.channels, image_size)


@dataclass
class ResViTConfig:
    """ResViT's generator (``model.method=resvit``, Dalmaz et al. 2022; defaults = the original sizes):
    encoder widths (one stride-2 downsampling between consecutive ones), ART blocks in the
    bottleneck, the ones that carry the (weight-shared) transformer, its width, depth and heads."""

    channels: list[int] = field(default_factory=lambda: [64, 128, 256])
    art_blocks: int = 9
    transformer_blocks: list[int] = field(default_factory=lambda: [0, 5])
    transformer_dim: int = 768
    transformer_layers: int = 12
    transformer_heads: int = 12

    def validate(self, image_size: int) -> None:
        _check_widths("model.resvit.channels", self.channels, image_size)
        if self.art_blocks < 0 or any(not 0 <= b < self.art_blocks for b in self.transformer_blocks):
            raise ConfigError(
                f"model.resvit.transformer_blocks {self.transformer_blocks} must index the "
                f"{self.art_blocks} model.resvit.art_blocks"
            )
        if self.transformer_heads <= 0 or self.transformer_dim % self.transformer_heads != 0:
            raise ConfigError(
                f"model.resvit.transformer_dim={self.transformer_dim} must be a multiple of "
                f"model.resvit.transformer_heads={self.transformer_heads}"
            )


#: Families with their own generator config: ``model.<method>`` holds what that generator reads.
FAMILY_CONFIGS = {"mmgan": MMGANConfig, "resvit": ResViTConfig}


@dataclass
class ModelConfig:
    """The generator: what every family shares (modalities, image size, ``method``), the
    hierarchical multimodal VAE's architecture (DESIGN §1; read by ``mmhvae`` and ``mopoe``), and
    the MM-GAN and ResViT generators' own configs in ``model.mmgan`` / ``model.resvit``.

    Spatial stage ``s`` (0-based, finest first) works at resolution ``image_size / 2**s``. Stage ``s``
    carries a latent group with ``latent_channels[s]`` channels, or none when it is 0 (the depth
    ablation of paper Table 2 removes groups this way while keeping the network depth). The coarsest
    latent ``z_L`` is always a vector of ``top_latent_dim`` elements, encoded from the features at
    resolution ``image_size / 2**len(channels)``. The number of latent groups is
    ``L = 1 + #{s : latent_channels[s] > 0}``. The defaults are the ``paper`` preset.
    """

    modalities: list[str] = field(default_factory=lambda: ["us", "t2", "cet1", "flair"])
    method: str = "mmhvae"  # model family; baselines register other names (DESIGN §2)
    image_size: int = 192
    # The authors' width schedule, one decoder cell per stage (issue 14): compute sits at the coarse
    # stages, not at 192² where element-wise work and memory traffic dominate. 13.3 M parameters,
    # 11.8 / 6.9 GMACs with 4 / 1 inputs (official: 13.77 M, 12.65 / 6.54; benchmarks/profile_report.md).
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 128, 128])
    latent_channels: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 64, 64])
    top_channels: int = 64
    top_latent_dim: int = 256
    encoder_cells: int = 1
    decoder_cells: int = 1
    expand_ratio: int = 6
    depthwise_kernel: int = 5
    head_blocks: int = 5
    head_channels: int = 16
    # A GroupNorm right before each head's output convolution (as every head had before issue 17).
    # Off: it normalizes with the whole slice's statistics, so the level it leaves where the image is 0
    # moves with the slice's content, a haze the output convolution cannot cancel (measured in
    # BENCHMARKS.md, "Against the multivae library"). Checkpoints of format 1 load with it on.
    head_output_norm: bool = False
    se_reduction: int = 8
    logvar_clamp: float = 8.0
    mean_clamp: float = 20.0
    fusion: str = "poe"  # "poe" (paper eq. 13-14) | "average" (HeMIS-style ablation) | "concat"
    mmgan: MMGANConfig = field(default_factory=MMGANConfig)
    resvit: ResViTConfig = field(default_factory=ResViTConfig)

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    @property
    def num_levels(self) -> int:
        return 1 + sum(1 for c in self.latent_channels if c > 0)

    def validate(self) -> None:
        if len(self.modalities) < 1:
            raise ConfigError("model.modalities: at least one modality is required")
        if len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"model.modalities: duplicate names in {self.modalities}")
        if self.method in FAMILY_CONFIGS:  # a family with its own generator reads only its own config
            getattr(self, self.method).validate(self.image_size)
            return
        if len(self.channels) != len(self.latent_channels):
            raise ConfigError(
                "model.channels and model.latent_channels must have the same length "
                f"(one entry per spatial stage), got {len(self.channels)} and {len(self.latent_channels)}"
            )
        _check_widths("model.channels", self.channels, self.image_size)
        if self.top_channels <= 0 or self.top_latent_dim <= 0:
            raise ConfigError("model.channels, top_channels and top_latent_dim must be positive")
        if any(c < 0 for c in self.latent_channels):
            raise ConfigError("model.latent_channels must be >= 0 (0 = no latent at that stage)")
        if self.fusion not in ("poe", "average", "concat"):
            raise ConfigError(f"model.fusion must be poe, average or concat, got {self.fusion!r}")


@dataclass
class DataConfig:
    """Cohort, harmonization and slicing (DESIGN §3).

    White-matter median harmonization (paper §4.4.1) needs a white-matter (WM) mask per volume: the
    subject's ``wm`` map when the cohort has one, else a 3-class intensity clustering inside the brain
    mask. Which of the three classes (sorted by mean intensity) is WM depends on the contrast and is
    set per modality by ``wm_cluster_rule``: ``brightest`` for T1-like images (CSF < GM < WM),
    ``darkest`` for T2 (WM < GM < CSF), ``middle`` for FLAIR with CSF nulled (CSF < WM < GM).
    A single contrast's WM class is ambiguous (ceT1: enhancement and vessels; FLAIR: WM/GM contrast
    varies between protocols and some invert it), so ``wm_reference`` lists, per modality, alternative
    sources tried in order: ``"t1+t2"`` applies when the subject has T1 and T2 and gives the voxels
    both call WM (the intersection of their masks); ``"t2"`` borrows the co-registered T2's mask. When
    no alternative applies, the modality's own rule is used. On the two real cases of the test data,
    the ``t1+t2`` consensus made harmonized WM agree best across cases (see tests/test_data_harmonize.py).
    """

    cohort: str = ""  # manifest CSV or folder (BraTS-style convention)
    # File suffix / CSV column -> modality name; the defaults cover BraTS 2021/2023 and TCGA names.
    modality_aliases: dict[str, str] = field(
        default_factory=lambda: {
            "t1c": "cet1", "t1ce": "cet1", "t1gd": "cet1", "t2w": "t2", "t2f": "flair",
            "fla": "flair", "t1n": "t1", "t1w": "t1",
        }
    )
    # The model's frame (DESIGN §3 "Geometry", mmhvae.data.frame): every volume is reoriented to
    # `orientation` and resampled to `spacing` (mm per frame axis; [] = the training cohort's median
    # spacing, resolved when training starts and written to config.yaml); slices are cut along
    # `slice_axis` of that frame (2 = axial in RAS), `model.image_size` pixels placed on the foreground.
    spacing: list[float] = field(default_factory=list)
    orientation: str = "RAS"
    slice_axis: int = 2
    # A foreground wider than the field of view: "tile" (overlapping windows, blended) or "refuse".
    fit: str = "tile"
    # Recorded when training starts: the training subjects had brain masks (a `mask` column), so
    # synthesis warns when it is given none (inputs are scaled inside the foreground).
    trained_with_masks: bool = False
    # Synthesized images are set to 0 outside the inputs' foreground (the brain mask, else the
    # non-background voxels of the inputs), as the authors' code does; the evaluator scores them so.
    mask_outputs: bool = True
    harmonization: str = "wm-median"  # "wm-median" | "percentile" | "none"
    wm_targets: dict[str, float] = field(
        default_factory=lambda: {"t2": 1 / 7, "cet1": 1 / 5, "flair": 1 / 3, "t1": 1 / 5}
    )
    wm_cluster_rule: dict[str, str] = field(
        default_factory=lambda: {"t1": "brightest", "cet1": "brightest", "t2": "darkest", "flair": "middle"}
    )
    wm_reference: dict[str, list[str]] = field(
        default_factory=lambda: {
            "t1": ["t1+t2"], "t2": ["t1+t2"], "cet1": ["t1+t2"], "flair": ["t1+t2", "t2", "t1", "cet1"],
        }
    )
    # Intensities are clipped to these brain percentiles before clustering so that small very bright
    # regions (enhancing tumour, vessels) cannot claim a class of their own.
    wm_clip_percentiles: list[float] = field(default_factory=lambda: [0.5, 97.0])
    wm_cluster_samples: int = 20000  # brain voxels subsampled (deterministically) to fit the clustering
    clip_negative: bool = True  # MR magnitudes are >= 0; negatives are resampling ringing -> 0
    minmax_modalities: list[str] = field(default_factory=lambda: ["us"])
    percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])
    # What the encoders see (paper §4.4.1: inputs are not harmonized; see data/input_normalization.py):
    # "volume" | "slice" | "none" percentile min-max to [0, 1] over the foreground.
    input_normalization: str = "volume"
    input_percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])
    affine_tolerance: float = 1e-3  # max |difference| between the affines of one subject's images
    crop_to_modality: str = ""  # e.g. "us": crop MR to the ultrasound field of view
    crop_margin: int = 4  # voxels kept around that field of view
    foreground_only: bool = True
    min_foreground_fraction: float = 0.05
    balance_patterns: bool = False
    augment: bool = False
    augment_flip: bool = True  # left-right flip (first in-plane axis) with probability 1/2
    augment_rotation: float = 10.0  # degrees, uniform in [-a, a]
    augment_scale: float = 0.1  # zoom uniform in [1 - s, 1 + s]
    augment_translation: float = 0.05  # fraction of the image size, uniform in [-t, t]
    cache_dir: str = ""  # preprocessed slices (.npy); "" = $MMHVAE_CACHE or ~/.cache/mmhvae


@dataclass
class GanConfig:
    loss: str = "lsgan"  # "lsgan" | "hinge" | "wasserstein" (paper eq. 15)
    weight: float = 0.025  # lambda_GAN
    start_fraction: float = 0.8  # lambda_GAN = 0 before this fraction of training (paper: last 20%)
    gradient_penalty: float = 10.0  # weight of the critics' gradient penalty with loss "wasserstein" (WGAN-GP)
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    channels: int = 32
    layers: int = 3
    memory_size: int = 64  # per-modality memory of real images (paper's m_j)


@dataclass
class TrainConfig:
    """Algorithm 1 and its optimisation (DESIGN §1)."""

    steps: int = 1000
    batch_size: int = 16
    draws: int = 3  # T subsets r' per step
    subset_policy: str = "paper"  # "paper" | "uniform" | "size-uniform" | "weights"
    subset_groups: dict[str, list[str]] = field(
        default_factory=lambda: {"anchor": ["us"]}
    )  # for the "paper" policy: named groups drawn alone with prob 1/3
    subset_weights: dict[str, float] = field(default_factory=dict)  # "t2+us": w, for "weights"
    reconstruction: str = "mse"  # "mse" | "l1"
    kl_weight: float = 1e-3
    kl_warmup_fraction: float = 0.0
    optimizer: str = "adamax"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam/Adamax/AdamW moments
    lr: float = 2e-3
    lr_min: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 200.0
    gan: GanConfig = field(default_factory=GanConfig)
    use_gan: bool = True
    # Train on subjects with every modality only (the complete-data MHVAE baseline, DESIGN §2).
    complete_only: bool = False
    seed: int = 0
    checkpoint_every: int = 200
    validate_every: int = 200
    # Which validated model becomes best.safetensors: "auto" = "final-phase" when the run has a GAN
    # phase that starts after step 0, else "best"; "final-phase" = highest validation PSNR once the
    # full objective is on (from the GAN start); "best" = highest over the whole run; "last" = the
    # final model. PSNR alone would always prefer the pre-GAN model, hence the GAN window.
    selection: str = "auto"
    # The training objective (mmhvae.train.objectives): "mixture" = Algorithm 1 (T draws of r' from
    # subset_policy, every available modality scored); "mvae" = MVAE's sub-sampled ELBOs (joint, each
    # single modality, mvae_random_subsets random subsets; each scores its own inputs); "mopoe" = the
    # MoPoE ELBO (the model's mixture posterior over the subsets of all available inputs).
    objective: str = "mixture"
    mvae_random_subsets: int = 1
    val_subjects: int = 4
    # Also log the mean validation LPIPS (AlexNet, as the evaluator scores it) beside the PSNR, as
    # "val_lpips" in metrics.csv: a curve of the metric the smooth outputs lose on. Model selection
    # stays on PSNR unless select_metric says otherwise. Without the LPIPS weights (mmhvae.eval.lpips)
    # the run warns and logs PSNR only.
    validate_lpips: bool = False
    # The validation metric that picks best.safetensors (within the window of `selection`): "psnr" (the
    # mean PSNR) or "lpips" (the lowest mean LPIPS; needs validate_lpips and the LPIPS weights, checked
    # when training starts). PSNR favours a smooth mean; LPIPS the detail that the GAN phase adds.
    select_metric: str = "psnr"
    log_every: int = 10
    # Execution (mmhvae.runtime), chosen by measurement where "auto": at the first step the trainer
    # times each allowed plan on the first batch and keeps the fastest (recorded in the training state,
    # kept on --resume; distributed runs take NHWC + bf16 on GPU, NCHW + fp32 on CPU without timing).
    amp: str = "auto"  # "auto" (GPU: bf16; CPU with bf16 instructions: fp32 or bf16, the faster) | "bf16" | "fp32"
    memory_format: str = "auto"  # "auto" (NCHW or NHWC, the faster) | "contiguous" (NCHW) | "channels_last" (NHWC)
    compile: bool = False  # torch.compile the network's cells (falls back to eager where compilation fails)
    device: str = "auto"


SELECTIONS = ("auto", "final-phase", "best", "last")
SELECT_METRICS = ("psnr", "lpips")
OBJECTIVES = ("mixture", "mvae", "mopoe")


AMP_MODES = ("auto", "bf16", "fp32")  # fp16 would need loss scaling, which the trainer does not do
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")


def _check_numbers(train: "TrainConfig", evaluation: "EvalConfig") -> None:
    """Counts >= 1, finite non-negative rates and temperatures, known AMP modes (one line each)."""
    import math

    for key in ("steps", "batch_size", "draws", "checkpoint_every", "validate_every", "log_every"):
        value = getattr(train, key)
        if value < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {value}")
    if train.val_subjects < 0:
        raise ConfigError(f"train.val_subjects must be >= 0 (0 = no validation), got {train.val_subjects}")
    for key in ("lr", "lr_min", "kl_weight", "weight_decay", "grad_clip"):
        value = getattr(train, key)
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"train.{key} must be a finite number >= 0, got {value}")
    if train.amp not in AMP_MODES:
        hint = " (fp16 is not supported: use bf16, which needs no loss scaling)" if train.amp == "fp16" else ""
        raise ConfigError(f"train.amp must be one of {', '.join(AMP_MODES)}, got {train.amp!r}{hint}")
    if train.memory_format not in MEMORY_FORMATS:
        raise ConfigError(f"train.memory_format must be one of {', '.join(MEMORY_FORMATS)}, got {train.memory_format!r}")
    if not math.isfinite(evaluation.temperature) or evaluation.temperature < 0:
        raise ConfigError(f"eval.temperature must be a finite number >= 0, got {evaluation.temperature}")
    if evaluation.batch_size < 1:
        raise ConfigError(f"eval.batch_size must be >= 1, got {evaluation.batch_size}")
    if not math.isfinite(evaluation.data_range) or evaluation.data_range < 0:
        raise ConfigError(f"eval.data_range must be a finite number >= 0 (0 = per volume), got {evaluation.data_range}")


@dataclass
class EvalConfig:
    temperature: float = 0.5
    data_range: float = 0.0  # 0: per-volume (max - min) of the ground truth; else a fixed range
    ssim_3d: bool = True
    lpips: bool = True
    batch_size: int = 16


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    name: str = "mmhvae"

    def validate(self) -> "ExperimentConfig":
        self.model.validate()
        _check_numbers(self.train, self.eval)
        if self.train.selection not in SELECTIONS:
            raise ConfigError(f"train.selection must be one of {', '.join(SELECTIONS)}, got {self.train.selection!r}")
        if self.train.select_metric not in SELECT_METRICS:
            raise ConfigError(f"train.select_metric must be one of {', '.join(SELECT_METRICS)}, "
                              f"got {self.train.select_metric!r}")
        if self.train.select_metric == "lpips" and not self.train.validate_lpips:
            raise ConfigError("train.select_metric=lpips needs train.validate_lpips=true (the LPIPS it selects on)")
        if self.train.objective not in OBJECTIVES:
            raise ConfigError(f"train.objective must be one of {', '.join(OBJECTIVES)}, got {self.train.objective!r}")
        if self.train.mvae_random_subsets < 0:
            raise ConfigError(f"train.mvae_random_subsets must be >= 0, got {self.train.mvae_random_subsets}")
        if self.data.fit not in ("tile", "refuse"):
            raise ConfigError(f"data.fit must be tile or refuse, got {self.data.fit!r}")
        if self.data.spacing and (len(self.data.spacing) != 3 or not all(float(v) > 0 for v in self.data.spacing)):
            raise ConfigError(f"data.spacing must be [] (from the cohort) or 3 positive mm values, got {self.data.spacing}")
        if self.data.input_normalization not in ("volume", "slice", "none"):
            raise ConfigError(
                f"data.input_normalization must be volume, slice or none, got {self.data.input_normalization!r}"
            )
        return self

    # --- YAML -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        from mmhvae.atomic import atomic_write_text

        atomic_write_text(Path(path), self.to_yaml())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ExperimentConfig":
        from mmhvae.config_upgrade import upgrade_dict

        return from_dict(cls, upgrade_dict(data), "").validate()

    @classmethod
    def load(cls, path: str | Path) -> "ExperimentConfig":
        return load_config(cls, path)


# --------------------------------------------------------------------------------------------------
# Typed construction from plain dicts
# --------------------------------------------------------------------------------------------------


_SCIENTIFIC = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, key)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(kt, k, key): _coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            # YAML 1.1 (PyYAML) reads "1e-4" as a string (it wants "1.0e-4"); a user means a number.
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, refusing unknown keys and wrong types by name."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key(s) {sorted(where + u for u in unknown)}; valid keys: {sorted(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(hints[name], value, key)
    return cls(**kwargs)


def load_config(cls: type, path: str | Path) -> Any:
    """``cls.from_dict`` of a YAML file (any config with that classmethod), errors naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return cls.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def override_dict(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a nested config dict in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.steps=500")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"override {item!r}: unknown key {key!r}")
            node = node[part]
        if not isinstance(node, dict) or parts[-1] not in node:
            raise ConfigError(f"override {item!r}: unknown key {key!r}")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def apply_overrides(config: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """Apply ``section.key=value`` overrides (values parsed as YAML) and re-validate."""
    from mmhvae.config_upgrade import renamed_override

    return ExperimentConfig.from_dict(override_dict(config.to_dict(), [renamed_override(o) for o in overrides]))


# --------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------


def _paper() -> ExperimentConfig:
    """The paper's configuration (TPAMI 2025 §4): 192², L = 7, M = 4, 1000 epochs, B = 16 (the
    :class:`ModelConfig` defaults)."""
    cfg = ExperimentConfig(name="paper")
    cfg.train = TrainConfig(steps=100_000, batch_size=16, draws=3, kl_weight=1e-3)
    return cfg


def _reduced_model(
    modalities: list[str], image_size: int, channels: list[int], latent_channels: list[int], top: int,
    head_channels: int, **extra: Any,
) -> ModelConfig:
    """A CPU-sized network: expand ratio 2, one head block, a top grid and vector of ``top`` channels."""
    return ModelConfig(
        modalities=modalities, image_size=image_size, channels=channels, latent_channels=latent_channels,
        top_channels=top, top_latent_dim=top, expand_ratio=2, head_blocks=1, head_channels=head_channels, **extra,
    )


def _small() -> ExperimentConfig:
    """CPU-trainable in minutes: 64², L = 4 (three spatial groups + the top vector), the built-in cohort's modalities."""
    cfg = ExperimentConfig(name="small")
    cfg.model = _reduced_model(["us", "t2", "cet1", "flair"], 64, [8, 16, 32, 32], [4, 8, 0, 16], 32, 8, depthwise_kernel=3)
    cfg.train = TrainConfig(
        steps=600, batch_size=16, draws=2, checkpoint_every=200, validate_every=100, log_every=10
    )
    cfg.train.gan.memory_size = 32
    cfg.train.gan.channels = 16
    cfg.eval.temperature = 0.0
    return cfg


def _tiny() -> ExperimentConfig:
    """For tests: 32², L = 3, three modalities."""
    cfg = ExperimentConfig(name="tiny")
    cfg.model = _reduced_model(["us", "t2", "cet1"], 32, [8, 8, 16], [4, 0, 8], 16, 4, se_reduction=4)
    cfg.train = TrainConfig(steps=4, batch_size=4, draws=2, checkpoint_every=2, validate_every=2, log_every=1)
    cfg.train.gan.channels = 8
    cfg.train.gan.layers = 2
    cfg.train.gan.memory_size = 8
    cfg.train.gan.start_fraction = 0.5
    cfg.train.memory_format, cfg.train.amp = "contiguous", "fp32"  # tests: one plan, no timing at the first step
    cfg.eval.temperature = 0.0
    cfg.eval.lpips = False
    return cfg


def _real_cpu() -> ExperimentConfig:
    """Real brain MR on a CPU (issue 18): T1 / T2 / T1c / FLAIR, 96² at 2 mm isotropic (a 192 mm field
    of view: a whole adult brain in one tile), the ``small`` network with wider fine stages and heads,
    L1 reconstruction, uniform input subsets (no ultrasound anchor group). ``--preset real-cpu
    model.modalities=[us,t1]`` and a finer ``data.spacing`` for the RESECT ultrasound pairs (see
    docs/real_data.md)."""
    cfg = _small()
    cfg.name = "real-cpu"
    cfg.model.modalities = ["t1", "t2", "cet1", "flair"]
    cfg.model.image_size = 96
    cfg.data.spacing = [2.0, 2.0, 2.0]
    cfg.train.subset_policy = "uniform"
    cfg.train.batch_size = 8
    cfg.train.val_subjects = 1
    # The paper's inference temperature (§4.1: "we lower the temperature ... to 0.5"), not the
    # `small` preset's 0: on real anatomy the posterior mean is smoother than the model's samples and
    # scores worse on LPIPS for no PSNR gain (BENCHMARKS.md, issue 18, measured on a development split
    # without the test subjects).
    cfg.eval.temperature = 0.5
    # L1 reconstruction (the authors' code, train.py: l1_loss), not the squared error of the paper's
    # eq. 19: on real MR it gains 0.1-2.7 dB PSNR and 0.5-2.5 points SSIM on every target at 800 steps
    # (LPIPS mixed), and the KL weight then no longer matters (1e-3, 1e-4, 1e-5 score the same). Measured on
    # the development split without the test subjects (BraTS-GLI-00000-000 validates, GliomaGAN-example
    # is scored; BENCHMARKS.md, issue 18, Run F).
    cfg.train.reconstruction = "l1"
    # Twice the channels at the two finest stages (96² and 48²) and in the image heads: +0.3 to +1.1 dB
    # PSNR, +0.5 to +1.4 points SSIM and LPIPS -0.1 to -2.1 on three of four targets on the same
    # development split (Run F), at about 1.3x the step time.
    cfg.model.channels = [16, 16, 32, 32]
    cfg.model.head_channels = 16
    cfg.train.validate_lpips = True  # the learning curve of the metric real outputs lose on
    # The budget: on the development split validation PSNR flattens after ~1500 steps but LPIPS keeps
    # falling to step 3000 (18.7 -> 9.4 %, BENCHMARKS.md Run J); 5000 steps is ~35 min on 2 CPU threads
    # (Run H: 0.41 s per step).
    cfg.train.steps = 5000
    cfg.train.validate_every = 250
    cfg.train.checkpoint_every = 500
    return cfg


PRESETS = {"paper": _paper, "small": _small, "tiny": _tiny, "real-cpu": _real_cpu}


def preset(name: str) -> ExperimentConfig:
    """A fresh copy of a named preset (``paper``, ``small``, ``tiny``)."""
    if name not in PRESETS:  # (a KeyError raised inside a preset is a bug, not an unknown name)
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]().validate()


def resolve(config: Optional[str] = None, overrides: Optional[list[str]] = None) -> ExperimentConfig:
    """A preset name or a YAML path, then ``key=value`` overrides."""
    if config is None:
        cfg = preset("small")
    elif config in PRESETS:
        cfg = preset(config)
    else:
        cfg = ExperimentConfig.load(config)
    return apply_overrides(cfg, overrides or [])

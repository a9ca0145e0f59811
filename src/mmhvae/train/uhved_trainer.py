"""Training, checkpoints and evaluation of U-HVED / U-HeMIS on 3D patches (seed §2.2-§3, DESIGN §4).

One training step is the seed's mixture sampling (eq. 5), per sample rather than per batch:

    1. draw B random patches (optionally centred on tumour voxels) with their availability r
    2. draw r' ~ p(r' | r) per sample: uniform subset size, then a uniform subset (seed §3)
    3. encode the observed modalities, fuse by product of Gaussians at every scale, sample z
    4. L = Dice + CE (labelled samples only) + 0.1 · MSE (all *available* modalities) + 0.1 · KL
    5. Adam step; learning rate: linear warm-up then cosine (or poly) decay

Conventions: the MSE is the mean over voxels of each available (sample, modality) pair, averaged
over those pairs; the KL is the per-element mean over latent elements and scales (the official
code's ``reduce_mean``), so the 0.1 weights do not depend on the patch size.

A run folder holds ``model.safetensors`` (weights; the resolved config and step in its metadata),
``config.yaml``, ``optimizer.safetensors`` + ``trainer_state.json`` (to resume) and ``log.csv``.
Nothing is unpickled when loading.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmhvae.atomic import atomic_write, atomic_write_text
from mmhvae.models.uhved import UHVED, UHVEDConfig, UHVEDOutput, UHVEDTrainConfig, sliding_window_predict
from mmhvae.subsets import SubsetPolicy, all_subsets, subset_name

CHECKPOINT_FORMAT = "mmhvae-uhved"
CHECKPOINT_VERSION = "1"
MODEL_FILE = "model.safetensors"

# --------------------------------------------------------------------------------------------------
# Cases in memory
# --------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One harmonized subject.

    images: ``(M, X, Y, Z)`` float32 in model modality order; slots with ``available`` False are zeros
        and are never read. available: ``(M,)`` bool. seg: ``(X, Y, Z)`` int64 class indices (position
        in ``seg_labels``) or None. brain: ``(X, Y, Z)`` bool or None. affine/header: NIfTI geometry.
    """

    name: str
    images: np.ndarray
    available: np.ndarray
    seg: Optional[np.ndarray] = None
    brain: Optional[np.ndarray] = None
    affine: Optional[np.ndarray] = None
    header: Any = None


def labels_to_classes(seg: np.ndarray, seg_labels: Sequence[int], where: str = "segmentation") -> np.ndarray:
    """Label values -> class indices ``k`` with ``seg_labels[k] == value``; unknown values are refused."""
    seg = np.asarray(seg)
    rounded = np.rint(seg).astype(np.int64)
    values = np.unique(rounded)
    unknown = sorted(set(values.tolist()) - set(int(v) for v in seg_labels))
    if unknown:
        raise ValueError(
            f"{where}: label value(s) {unknown} are not in model.seg_labels {list(seg_labels)}; "
            "set model.seg_labels to the label values of your cohort"
        )
    lut = np.zeros(max(seg_labels) + 1, dtype=np.int64)
    for k, v in enumerate(seg_labels):
        lut[int(v)] = k
    return lut[rounded]


def case_from_volumes(volumes: Any, cfg: UHVEDConfig) -> Case:
    """A :class:`mmhvae.data.cohort.SubjectVolumes` -> harmonized :class:`Case` (model modalities only)."""
    from mmhvae.data.harmonize import harmonize_subject

    mods = cfg.model.modalities
    present = [m for m in mods if m in volumes.images]
    if not present:
        raise ValueError(
            f"subject {volumes.name}: none of the model's modalities {mods} is present "
            f"(has {sorted(volumes.images)})"
        )
    harmonized, _ = harmonize_subject(volumes, cfg.data)
    images = np.zeros((len(mods), *volumes.shape), dtype=np.float32)
    for j, m in enumerate(mods):
        if m in harmonized:
            images[j] = harmonized[m]
    seg = None
    if volumes.seg is not None:
        seg = labels_to_classes(volumes.seg, cfg.model.seg_labels, f"subject {volumes.name}")
    return Case(
        name=volumes.name,
        images=images,
        available=np.array([m in volumes.images for m in mods]),
        seg=seg,
        brain=volumes.brain_mask,
        affine=volumes.affine,
        header=volumes.header,
    )


def load_cases(
    cohort: str | Path, split: str, cfg: UHVEDConfig, log: Callable[[str], None] = print
) -> list[Case]:
    """Load and harmonize the subjects of ``split`` (``train``/``val``/``test``/``all``) of a cohort
    manifest or folder. Only the model's modalities are read; subjects with none of them are skipped."""
    import dataclasses

    from mmhvae.data.cohort import Cohort, load_subject

    co = Cohort.load(cohort, aliases=cfg.data.modality_aliases)
    subjects = co.select(split)
    if not subjects:
        raise ValueError(f"{cohort}: no subject in split {split!r}")
    mods = cfg.model.modalities
    cases, skipped = [], []
    for subject in subjects:
        paths = {m: p for m, p in subject.paths.items() if m in mods}
        if not paths:
            skipped.append(subject.name)
            continue
        cases.append(case_from_volumes(load_subject(dataclasses.replace(subject, paths=paths)), cfg))
    if skipped:
        log(f"skipped {len(skipped)} subject(s) without any of {mods}: {skipped[:5]}")
    if not cases:
        raise ValueError(
            f"{cohort}: no subject in split {split!r} has any of {mods} (cohort has {co.modalities})"
        )
    return cases


# --------------------------------------------------------------------------------------------------
# Patch sampling
# --------------------------------------------------------------------------------------------------


@dataclass
class PatchBatch:
    """images ``(B, M, P, P, P)``; available ``(B, M)`` bool; seg ``(B, P, P, P)`` int64 (0 where
    ``has_seg`` is False, never read); has_seg ``(B,)`` bool."""

    images: Tensor
    available: Tensor
    seg: Tensor
    has_seg: Tensor

    def to(self, device: torch.device) -> "PatchBatch":
        return PatchBatch(*(t.to(device) for t in (self.images, self.available, self.seg, self.has_seg)))


class PatchSampler:
    """Random patches; a share ``tumour_fraction`` of the patches of labelled cases is centred on a
    random tumour voxel, the others lie uniformly anywhere in the volume (as NiftyNet's uniform
    sampler of the official code), so that skull and background are seen as often as at inference."""

    def __init__(
        self,
        cases: Sequence[Case],
        patch_size: Sequence[int],
        tumour_fraction: float = 0.5,
        flip: bool = True,
        seed: int = 0,
        labelled_only: bool = False,
    ):
        self.patch = tuple(int(p) for p in patch_size)
        self.tumour_fraction = tumour_fraction
        self.flip = flip
        self.rng = np.random.default_rng(seed)
        self.cases = [self._pad(c) for c in cases if c.seg is not None or not labelled_only]
        if not self.cases:
            need = " with a segmentation (U-HeMIS needs labels)" if labelled_only else ""
            raise ValueError(f"no training case{need}")
        self.tumour = [None if c.seg is None else np.argwhere(c.seg > 0) for c in self.cases]

    def _pad(self, case: Case) -> Case:
        """Zero-pad volumes smaller than the patch (background; availability is unchanged)."""
        shape = case.images.shape[1:]
        extra = [max(0, p - s) for p, s in zip(self.patch, shape)]
        if not any(extra):
            return case
        pads = [(e // 2, e - e // 2) for e in extra]
        return Case(
            name=case.name,
            images=np.pad(case.images, [(0, 0), *pads]),
            available=case.available,
            seg=None if case.seg is None else np.pad(case.seg, pads),
            brain=None if case.brain is None else np.pad(case.brain, pads),
        )

    def _corner(self, i: int) -> tuple[int, ...]:
        case = self.cases[i]
        shape = case.images.shape[1:]
        tumour = self.tumour[i]
        if tumour is not None and len(tumour) and self.rng.random() < self.tumour_fraction:
            centre = tumour[self.rng.integers(len(tumour))]
            return tuple(int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, self.patch, shape))
        return tuple(int(self.rng.integers(s - p + 1)) for p, s in zip(self.patch, shape))

    def sample(self, batch_size: int) -> PatchBatch:
        images, available, segs, has_seg = [], [], [], []
        for _ in range(batch_size):
            i = int(self.rng.integers(len(self.cases)))
            case = self.cases[i]
            c = self._corner(i)
            window = tuple(slice(a, a + p) for a, p in zip(c, self.patch))
            img = case.images[(slice(None), *window)]
            seg = case.seg[window] if case.seg is not None else np.zeros(self.patch, dtype=np.int64)
            if self.flip:
                for axis in range(3):
                    if self.rng.random() < 0.5:
                        img, seg = np.flip(img, axis + 1), np.flip(seg, axis)
            images.append(np.ascontiguousarray(img))
            segs.append(np.ascontiguousarray(seg))
            available.append(case.available)
            has_seg.append(case.seg is not None)
        return PatchBatch(
            images=torch.from_numpy(np.stack(images)).float(),
            available=torch.from_numpy(np.stack(available)).bool(),
            seg=torch.from_numpy(np.stack(segs)).long(),
            has_seg=torch.tensor(has_seg, dtype=torch.bool),
        )


# --------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------


def soft_dice_loss(logits: Tensor, target: Tensor, eps: float = 1e-5) -> Tensor:
    """1 - mean over classes of the soft Dice of softmax(logits), pooled over the batch.

    logits ``(B, K, D, H, W)``, target ``(B, D, H, W)`` int64 class indices."""
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target, probs.shape[1]).movedim(-1, 1).float()
    dims = (0, *range(2, probs.dim()))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2.0 * inter + eps) / (denom + eps)).mean()


def uhved_loss(
    out: UHVEDOutput, batch: PatchBatch, cfg: UHVEDTrainConfig, kl_scale: float = 1.0
) -> dict[str, Tensor]:
    """Seed §3: L = Dice + CE + 0.1·L2 + 0.1·KL, with missing labels and images masked out.

    ``kl_scale`` multiplies the KL weight (warm-up). Returns the total and every (unweighted) term,
    zero when a term has nothing to score in this batch."""
    zero = out.seg_logits.new_zeros(()).float()
    terms = {"dice": zero, "ce": zero, "mse": zero, "kl": zero}
    labelled = batch.has_seg.nonzero().flatten()
    if labelled.numel():
        logits, target = out.seg_logits[labelled], batch.seg[labelled]
        terms["dice"] = soft_dice_loss(logits, target)
        terms["ce"] = F.cross_entropy(logits.float(), target)
    if out.images is not None:
        # Reconstruction of every *available* modality, in the input subset or not (seed §2.2).
        per_pair = ((out.images.float() - batch.images) ** 2).flatten(2).mean(dim=2)  # (B, M)
        avail = batch.available.float()
        terms["mse"] = (per_pair * avail).sum() / avail.sum().clamp_min(1.0)
    if out.kl is not None:
        terms["kl"] = out.kl.mean()
    total = (
        cfg.dice_weight * terms["dice"]
        + cfg.ce_weight * terms["ce"]
        + cfg.reconstruction_weight * terms["mse"]
        + kl_scale * cfg.kl_weight * terms["kl"]
    )
    return {"loss": total, **terms}


def learning_rate(cfg: UHVEDTrainConfig, step: int) -> float:
    """Linear warm-up to ``lr`` then cosine / poly decay to ``lr_min`` at ``steps`` (or constant)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, cfg.steps - cfg.warmup_steps)
    t = min(1.0, max(0.0, (step - cfg.warmup_steps) / span))
    if cfg.schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * t))
    else:
        factor = (1.0 - t) ** cfg.poly_power
    return cfg.lr_min + (cfg.lr - cfg.lr_min) * factor


def kl_warmup(cfg: UHVEDTrainConfig, step: int) -> float:
    """Factor of the KL weight: a linear ramp from 0 to 1 over ``kl_warmup_fraction`` of the steps."""
    ramp = cfg.kl_warmup_fraction * cfg.steps
    return 1.0 if ramp <= 0 else min(1.0, step / ramp)


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def _model_path(path: str | Path) -> Path:
    path = Path(path)
    return path / MODEL_FILE if path.is_dir() else path


def save_checkpoint(run_dir: str | Path, model: UHVED, cfg: UHVEDConfig, step: int, optimizer=None) -> Path:
    """Write ``model.safetensors`` (+ config.yaml, and optimizer state when given) atomically."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "step": str(step),
        "config": json.dumps(cfg.to_dict()),
    }
    atomic_write(run_dir / MODEL_FILE, lambda p: save_file(tensors, str(p), metadata=meta))
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    if optimizer is not None:
        state = optimizer.state_dict()
        opt_tensors, opt_scalars = {}, {}
        for pid, slots in state["state"].items():
            for key, value in slots.items():
                if torch.is_tensor(value):
                    opt_tensors[f"{pid}.{key}"] = value.detach().to("cpu").contiguous()
                else:
                    opt_scalars[f"{pid}.{key}"] = value
        atomic_write(run_dir / "optimizer.safetensors", lambda p: save_file(opt_tensors, str(p)))
        groups = [{k: v for k, v in g.items()} for g in state["param_groups"]]
        info = {"format": CHECKPOINT_FORMAT, "step": step, "param_groups": groups, "scalars": opt_scalars}
        atomic_write_text(run_dir / "trainer_state.json", json.dumps(info, indent=1))
    return run_dir / MODEL_FILE


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], UHVEDConfig, dict[str, str]]:
    """Weights, config and metadata of a U-HVED checkpoint (a run folder or its model.safetensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    from mmhvae.errors import CheckpointError, CheckpointNotFoundError

    file = _model_path(path)
    if not file.exists():
        raise CheckpointNotFoundError(f"{file}: checkpoint not found (give a run folder or its {MODEL_FILE})")
    try:
        with safe_open(str(file), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file}: not a safetensors checkpoint ({exc})") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{file}: not a U-HVED checkpoint (format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r}); "
            "was it written by another model?"
        )
    if meta.get("format_version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{file}: unsupported U-HVED checkpoint version {meta.get('format_version')!r}")
    try:
        cfg = UHVEDConfig.from_dict(json.loads(meta["config"]))
        weights = load_file(str(file))
    except (KeyError, SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file}: corrupt U-HVED checkpoint ({type(exc).__name__}: {exc})") from None
    return weights, cfg, meta


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[UHVED, UHVEDConfig, int]:
    """Rebuild the model of a checkpoint: ``(model in eval mode, config, step)``."""
    from mmhvae.checkpoint import check_weights

    weights, cfg, meta = read_checkpoint(path)
    model = UHVED.from_config(cfg)
    check_weights(_model_path(path), weights, model)  # names, shapes, finite: one line naming the file
    model.load_state_dict(weights)
    return model.to(device).eval(), cfg, int(meta.get("step", 0))


def _load_optimizer(run_dir: Path, optimizer: torch.optim.Optimizer) -> None:
    from safetensors.torch import load_file

    info = json.loads((run_dir / "trainer_state.json").read_text())
    tensors = load_file(str(run_dir / "optimizer.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(info["scalars"].items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})


# --------------------------------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------------------------------


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class UHVEDTrainer:
    """Owns the model, optimizer, sampler and run folder; :meth:`step` is the algorithm, the rest plumbing."""

    def __init__(self, cfg: UHVEDConfig, cases: Sequence[Case], out_dir: str | Path, resume: bool = False):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.device = pick_device(cfg.train.device)
        torch.manual_seed(cfg.train.seed)
        self.model = UHVED.from_config(cfg).to(self.device)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
        self.start_step = 0
        if resume:
            self._resume()
        self.sampler = PatchSampler(
            cases,
            cfg.train.patch_size,
            cfg.train.tumour_patch_fraction,
            cfg.train.flip,
            seed=cfg.train.seed + self.start_step,
            labelled_only=cfg.model.method == "uhemis",
        )
        self.policy = SubsetPolicy(
            cfg.model.modalities, policy=cfg.train.subset_policy, weights=cfg.train.subset_weights
        )
        self.generator = torch.Generator().manual_seed(cfg.train.seed + self.start_step)
        amp = cfg.train.amp
        self.autocast = self.device.type == "cuda" and amp in ("auto", "bf16")

    def _resume(self) -> None:
        from mmhvae.errors import CheckpointError

        model_file = self.out / MODEL_FILE
        if not model_file.exists():
            raise CheckpointError(f"--resume: no {MODEL_FILE} in {self.out} (nothing to resume; drop --resume)")
        weights, saved_cfg, meta = read_checkpoint(model_file)
        if saved_cfg.model != self.cfg.model:
            raise CheckpointError(f"--resume: the model config differs from the one saved in {self.out}")
        self.model.load_state_dict(weights)
        if (self.out / "optimizer.safetensors").exists():
            _load_optimizer(self.out, self.optimizer)
        self.start_step = int(meta.get("step", 0))

    def step(self, step: int, batch: Optional[PatchBatch] = None) -> dict[str, float]:
        """One optimisation step (the numbered lines of the module docstring)."""
        cfg = self.cfg.train
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        batch = (batch or self.sampler.sample(cfg.batch_size)).to(self.device)  # 1
        observed = self.policy.sample_masks(batch.available, self.generator)  # 2: r' ~ p(r' | r)
        self.model.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = self.model(batch.images, observed, temperature=1.0)  # 3
        terms = uhved_loss(out, batch, cfg, kl_scale=kl_warmup(cfg, step))  # 4
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()  # 5
        return {k: float(v.detach()) for k, v in terms.items()} | {"lr": self.optimizer.param_groups[0]["lr"]}

    def fit(self, progress: bool = True, log: Callable[[str], None] = print) -> Path:
        """Train to ``train.steps``, checkpointing every ``checkpoint_every`` steps and at the end."""
        from tqdm import tqdm

        cfg = self.cfg.train
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "config.yaml", self.cfg.to_yaml())
        log_file = self.out / "log.csv"
        fields = ["step", "loss", "dice", "ce", "mse", "kl", "lr", "seconds"]
        from mmhvae.checkpoint import remove_stale_temporaries, truncate_log

        remove_stale_temporaries(self.out)  # left by a run killed during a save
        truncate_log(log_file, self.start_step)  # rows past the resumed checkpoint would repeat
        new_log = not log_file.exists() or self.start_step == 0
        t0 = time.time()
        running: dict[str, float] = {}
        steps = range(self.start_step, cfg.steps)
        bar = tqdm(steps, initial=self.start_step, total=cfg.steps, disable=not progress, desc="uhved")
        with open(log_file, "w" if new_log else "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            if new_log:
                writer.writeheader()
            for step in bar:
                terms = self.step(step)
                running = {k: running.get(k, v) * 0.9 + v * 0.1 for k, v in terms.items()}
                bar.set_postfix({k: f"{running[k]:.3f}" for k in ("loss", "dice", "mse", "kl")})
                if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                    values = {k: f"{terms[k]:.6g}" for k in fields[1:7]}
                    writer.writerow({"step": step + 1, **values, "seconds": f"{time.time() - t0:.1f}"})
                    fh.flush()
                if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                    save_checkpoint(self.out, self.model, self.cfg, step + 1, self.optimizer)
        path = save_checkpoint(self.out, self.model, self.cfg, cfg.steps, self.optimizer)
        log(f"trained {cfg.steps - self.start_step} steps in {time.time() - t0:.0f} s -> {path}")
        return path


# --------------------------------------------------------------------------------------------------
# Evaluation: Dice per input subset (seed Table 1) and completion PSNR / SSIM
# --------------------------------------------------------------------------------------------------


def region_dice(pred: np.ndarray, truth: np.ndarray, values: Iterable[int]) -> float:
    """Dice of the region ``label in values``; 1.0 when both are empty (MONAI ``ignore_empty=False``)."""
    values = list(values)
    p, t = np.isin(pred, values), np.isin(truth, values)
    denom = int(p.sum()) + int(t.sum())
    if denom == 0:
        return 1.0
    return 2.0 * float(np.logical_and(p, t).sum()) / denom


def evaluate_cases(
    model: UHVED,
    cfg: UHVEDConfig,
    cases: Sequence[Case],
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Every case x every input subset of its available modalities -> one row of metrics.

    Row keys: subject, subset, ``dice_<region>`` (labelled cases), ``psnr_<mod>``/``ssim_<mod>`` for
    every available target modality (U-HVED only; :mod:`mmhvae.eval.metrics` conventions, inside the
    brain mask when the case has one) and ``in_input_<mod>``."""
    from mmhvae.eval.metrics import psnr, ssim3d

    mods = cfg.model.modalities
    labels = np.asarray(cfg.model.seg_labels)
    device = next(model.parameters()).device
    rows = []
    for n, case in enumerate(cases):
        images = torch.from_numpy(case.images)[None].to(device)
        for subset in all_subsets(len(mods)):
            if not all(a or not s for a, s in zip(case.available, subset)):
                continue
            observed = torch.tensor([subset], dtype=torch.bool, device=device)
            probs, decoded = sliding_window_predict(model, images, observed, cfg.eval, output_device="cpu")
            row: dict[str, Any] = {"subject": case.name, "subset": subset_name(subset, mods)}
            if case.seg is not None:
                pred = labels[probs[0].argmax(0).numpy()]
                truth = labels[case.seg]
                for region, values in cfg.eval.regions.items():
                    row[f"dice_{region}"] = region_dice(pred, truth, values)
            if decoded is not None:
                for j, m in enumerate(mods):
                    if not case.available[j]:
                        continue
                    gt, est = case.images[j], decoded[0, j].numpy()
                    row[f"psnr_{m}"] = psnr(est, gt, cfg.eval.data_range, mask=case.brain)
                    row[f"ssim_{m}"] = ssim3d(est, gt, cfg.eval.data_range, foreground=case.brain)
                    row[f"in_input_{m}"] = bool(subset[j])
            rows.append(row)
        log(f"evaluated {case.name} ({n + 1}/{len(cases)})")
    return rows

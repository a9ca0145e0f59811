"""The MMHVAE trainer: Algorithm 1 of the paper, plus what a real run needs around it.

:meth:`Trainer.training_step` is Algorithm 1, with the paper's line numbers in comments. Everything
else (data, checkpoints, validation, logging, distribution) sits outside it.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.data import Dataset

from mmhvae.config import ExperimentConfig
from mmhvae.errors import ConfigError, MmhvaeError
from mmhvae.models import build_model
from mmhvae.nn.discriminator import ModalityDiscriminators
from mmhvae.subsets import SubsetPolicy, all_subsets
from mmhvae import checkpoint as ckpt
from mmhvae import runtime
from mmhvae.train.batches import StepBatches, collate
from mmhvae.train.distributed import DistributedContext
from mmhvae.train.gan import (
    RealImageMemory,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
    real_images_for,
)
from mmhvae.train.losses import kl_per_pixel, reconstruction_loss
from mmhvae.train.objectives import build_objective
from mmhvae.train.run_log import RunLogger


def selection_rule(tc) -> str:
    """``train.selection`` resolved: ``auto`` is ``final-phase`` for a run with a GAN phase that starts
    after step 0 (PSNR would otherwise always pick the pre-GAN model) and ``best`` (the whole run)
    for every other run (MVAE, MoPoE, ``no-gan``, or MM-GAN/ResViT whose GAN is on from step 0)."""
    if tc.selection != "auto":
        return tc.selection
    gan_phase = tc.use_gan and tc.gan.weight > 0 and 0 < tc.gan.start_fraction < 1
    return "final-phase" if gan_phase else "best"


class TrainingDiverged(MmhvaeError, ValueError):
    """The loss became NaN/Inf; training stopped and the last good checkpoint was kept."""


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0  # wall time of the training loop, summed over resumed sessions


def _build_optimizer(name: str, params, lr: float, weight_decay: float, betas=(0.9, 0.999)):
    name, betas = name.lower(), tuple(betas)
    if name == "adamax":
        return torch.optim.Adamax(params, lr=lr, weight_decay=weight_decay, betas=betas)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, betas=betas)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas)
    raise ValueError(f"unknown optimizer {name!r}; choose adamax, adam or adamw")


class Trainer:
    """Trains a generator (any registered method) and its per-modality discriminators."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        run_dir: Path,
        train_set: Dataset,
        val_set: Optional[Dataset] = None,
        progress: bool = True,
    ):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.dist = DistributedContext.from_env(cfg.train.device)
        self.device = self.dist.device
        tc = cfg.train
        torch.manual_seed(tc.seed + self.dist.rank)
        self.model = build_model(cfg.model).to(self.device)
        # The execution plan (memory layout, autocast precision): fixed by the config, or measured at
        # the first step of fit() among the candidates (mmhvae.runtime); None until then.
        self.plan: Optional[runtime.ExecutionPlan] = None
        self.candidates = runtime.candidate_plans(tc.memory_format, tc.amp, self.device)
        self._apply_plan(self.candidates[0] if len(self.candidates) == 1 else
                         runtime.default_plan(tc.memory_format, tc.amp, self.device), chosen=False)
        self.compiled = bool(tc.compile) and runtime.compile_cells(self.model) > 0
        self.discriminators = ModalityDiscriminators(cfg.model.num_modalities, tc.gan.channels, tc.gan.layers).to(
            self.device
        )
        self.ddp_model = self.dist.wrap(self.model)
        self.opt_g = _build_optimizer(tc.optimizer, self.model.parameters(), tc.lr, tc.weight_decay, tc.betas)
        self.opt_d = _build_optimizer("adam", self.discriminators.parameters(), tc.gan.lr, 0.0, tc.gan.betas)
        # Cosine decay from lr to lr_min over the run (paper-like: Adamax 2e-3 -> 1e-4).
        floor = tc.lr_min / tc.lr if tc.lr > 0 else 0.0
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(
            self.opt_g, lambda s: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(s, tc.steps) / max(tc.steps, 1)))
        )
        self.policy = SubsetPolicy(cfg.model.modalities, tc.subset_policy, tc.subset_groups, tc.subset_weights)
        self.objective = build_objective(tc, self.policy, cfg.model.num_modalities)  # the method's ELBO terms
        self.subset_rng = torch.Generator().manual_seed(tc.seed * 7919 + self.dist.rank)
        self.memories = [RealImageMemory(tc.gan.memory_size, cfg.model.image_size) for _ in cfg.model.modalities]
        weights = None
        if cfg.data.balance_patterns:
            from mmhvae.data.dataset import pattern_balanced_weights

            weights = pattern_balanced_weights(train_set)
        self.batches = StepBatches(train_set, tc.batch_size, tc.seed, self.dist.rank, self.dist.world_size, weights)
        self.val_batch = self._fixed_validation_batch(val_set)
        self.val_lpips_model = None
        if tc.validate_lpips and self.val_batch is not None and self.dist.is_main:
            from mmhvae.eval.lpips import MIN_SIZE, load_lpips

            if cfg.model.image_size < MIN_SIZE:
                warnings.warn(f"train.validate_lpips: LPIPS (AlexNet) needs images of at least {MIN_SIZE}² and "
                              f"this model's are {cfg.model.image_size}²; validating on PSNR only", RuntimeWarning,
                              stacklevel=2)
            else:
                self.val_lpips_model = load_lpips(device=self.device)  # fetched once, as the evaluator does
        if tc.select_metric == "lpips" and self.val_batch is not None and self.dist.is_main \
                and self.val_lpips_model is None:
            raise ConfigError("train.select_metric=lpips, but this run has no validation LPIPS (the LPIPS weights "
                              "are not available, or the images are below AlexNet's 32²: see the warning above); "
                              "select on psnr or provide the weights (mmhvae.eval.lpips)")
        self.val_lpips: Optional[float] = None  # mean LPIPS of the last validation (validate_lpips)
        self.step = 0
        self.best_score = -math.inf
        self.best_step = 0
        self.history: list[dict] = []
        # Wall time of the training loop (steps, validation, checkpoints) up to self.step, over every
        # session: kept in the training state, so a killed session's time up to its last checkpoint counts.
        self.train_seconds = 0.0

    # ------------------------------------------------------------------------------------------------
    def lambda_gan(self, step: int) -> float:
        tc = self.cfg.train
        if not tc.use_gan or tc.gan.weight <= 0:
            return 0.0
        return tc.gan.weight if step >= tc.gan.start_fraction * tc.steps else 0.0

    def lambda_kl(self, step: int) -> float:
        tc = self.cfg.train
        if tc.kl_warmup_fraction <= 0:
            return tc.kl_weight
        return tc.kl_weight * min(1.0, step / (tc.kl_warmup_fraction * tc.steps))

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        """One iteration of Algorithm 1 (paper lines 3-33) on a batch with per-sample r."""
        tc = self.cfg.train
        # line 4: x_r^o. The encoders see the inputs as acquired (scaled per image); the loss scores the
        # harmonized targets, so the model learns to harmonize (paper §4.4.1).
        inputs = batch["inputs"].to(self.device).contiguous(memory_format=self.memory_format)
        targets = batch["targets"].to(self.device)
        available = batch["available"].to(self.device)  # line 3: r, per sample (B, M)
        lam_gan, lam_kl = self.lambda_gan(step), self.lambda_kl(step)
        self.model.train()
        self.opt_g.zero_grad(set_to_none=True)
        # lines 8-9: the step's terms (train.objective): T draws of r' from the mixture for Algorithm 1;
        # the sub-sampled ELBOs for MVAE; the mixture posterior's draws for MoPoE (mmhvae.train.objectives).
        terms = self.objective.terms(available.cpu(), self.subset_rng)
        loss_img, loss_kl, loss_gan, fakes = self._generator_terms(inputs, targets, available, terms, step)
        total = loss_img + lam_kl * loss_kl + lam_gan * loss_gan
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        if not torch.isfinite(grad_norm):
            raise TrainingDiverged(f"non-finite gradient norm at step {step}; the last good checkpoint is kept")
        self.opt_g.step()  # line 25
        self.sched_g.step()
        for j, memory in enumerate(self.memories):  # lines 27-28: m_j <- x_j where r_j = 1
            memory.add(targets[available[:, j], j])
        loss_d = self._discriminator_step(targets, available, torch.cat(fakes)) if lam_gan > 0 else torch.zeros(())
        return {
            "loss": total.item(),
            "img": loss_img.item(),
            "kl": loss_kl.item(),
            "gan_g": loss_gan.item(),
            "gan_d": loss_d.item(),
            "lambda_gan": lam_gan,
            "lr": self.opt_g.param_groups[0]["lr"],
            "grad_norm": float(grad_norm),
        }

    def _generator_terms(self, inputs, targets, available, terms, step: int):
        """Lines 10-24 for every term, gradients accumulated: ``(img, kl, gan, fakes)`` weighted sums.

        A generator whose encoders' features do not depend on r' (MMHVAE) encodes each modality once
        for all terms (same loss and gradients). One process: decode and backward per term from the
        features as leaves, then one encoder backward (one decoder graph alive at a time). DDP: all
        terms in one forward (batched decoder) and one backward, so DDP sees one forward/backward."""
        multi = getattr(self.model, "draws_in_one_forward", False) and len(terms) > 1
        term_rows = [None if term.rows is None else term.rows.to(self.device) for term in terms]
        term_observed = [term.observed.to(self.device) for term in terms]
        encoding = leaves = outs = None
        shared = multi and self.dist.enabled
        with self._autocast():
            if shared:
                outs = self.ddp_model(inputs, term_observed, 1.0, available, rows=term_rows)
            elif multi:
                encoding = self.model.encode_draws(inputs, term_observed, term_rows)
                leaves = encoding.detached() if encoding is not None else None
        zero = torch.zeros((), device=self.device)
        loss_img = loss_kl = loss_gan = step_total = zero
        fakes = []
        for t, term in enumerate(terms):
            rows = slice(None) if term.rows is None else term.rows.to(self.device)
            # One backward per term (gradients accumulate; DDP all-reduces on the last term only).
            with self.dist.no_sync(self.ddp_model, skip=t < len(terms) - 1):
                with self._autocast():  # lines 10-16: encode, sample, decode
                    if shared:
                        out = outs[t]
                    elif leaves is not None:
                        out = self.ddp_model(inputs[rows], term_observed[t], 1.0, available[rows],
                                             rows=term_rows[t], encoding=leaves)
                    else:
                        out = self.ddp_model(inputs[rows], term_observed[t], 1.0, available[rows])
                    draw_gan = self._adversarial_term(out, step)
                draw_img, draw_kl, draw_total = self._term_loss(out, targets[rows], term.scored.to(self.device),
                                                                draw_gan, step)
                if shared:
                    step_total = step_total + draw_total * term.weight
                else:
                    (draw_total * term.weight).backward()  # line 24
            loss_img = loss_img + draw_img.detach() * term.weight
            loss_kl = loss_kl + draw_kl.detach() * term.weight
            loss_gan = loss_gan + draw_gan.detach() * term.weight
            fakes.append(out.reconstructions.detach().float())
        if shared:
            step_total.backward()  # line 24, all terms at once (DDP all-reduces here)
        if encoding is not None:
            encoding.backward(leaves)  # the encoders' backward, once for all terms
        return loss_img, loss_kl, loss_gan, fakes

    def _autocast(self):
        return self.running.autocast(self.device)

    @property
    def memory_format(self) -> torch.memory_format:
        return self.running.torch_memory_format

    def _adversarial_term(self, out, step: int) -> torch.Tensor:
        """Line 17: the adversarial term of every decoded modality (0 before the GAN phase)."""
        draw_gan = torch.zeros((), device=self.device)
        if self.lambda_gan(step) > 0:
            for j in range(len(self.memories)):
                scores = self.discriminators(j, out.reconstructions[:, j])
                draw_gan = draw_gan + generator_loss(self.cfg.train.gan.loss, scores.float())
        return draw_gan

    def _term_loss(self, out, targets, scored, draw_gan, step: int):
        """Lines 12-13 (KL), 18-19 and 23 for one term: every *available* modality is scored, in r' or
        not (eq. 9). Returns ``(img, kl, total)``; a non-finite total stops the run."""
        H, W = targets.shape[-2:]
        draw_kl = kl_per_pixel(out.kl_total, H, W) if out.kl else torch.zeros((), device=self.device)
        draw_img = reconstruction_loss(out.reconstructions, targets, scored, self.cfg.train.reconstruction)
        draw_total = draw_img + self.lambda_kl(step) * draw_kl + self.lambda_gan(step) * draw_gan
        if not torch.isfinite(draw_total):
            raise TrainingDiverged(
                f"non-finite loss at step {step} (img={draw_img.item():.4g}, kl={draw_kl.item():.4g}, "
                f"gan={draw_gan.item():.4g}); the last good checkpoint is kept in "
                f"{self.run_dir / 'checkpoints'}. Lower train.lr, check the inputs for extreme values, "
                "or raise train.grad_clip."
            )
        return draw_img, draw_kl, draw_total

    def _discriminator_step(self, targets, available, fake) -> torch.Tensor:
        """Lines 26-32: each modality's discriminator, real images from the batch or the memory m_j."""
        tc = self.cfg.train
        loss_d = torch.zeros((), device=self.device)
        self.opt_d.zero_grad(set_to_none=True)
        for j, memory in enumerate(self.memories):
            real = real_images_for(j, targets, available, memory, fake.shape[0], self.subset_rng)  # line 30: m_j
            if real is None:
                continue
            d_real = self.discriminators(j, real)
            d_fake = self.discriminators(j, fake[:, j])
            loss_j = discriminator_loss(tc.gan.loss, d_real.float(), d_fake.float())
            if tc.gan.loss == "wasserstein":
                penalty = gradient_penalty(self.discriminators.critics[j], real, fake[:, j], self.subset_rng)
                loss_j = loss_j + tc.gan.gradient_penalty * penalty
            loss_d = loss_d + loss_j
        if loss_d.requires_grad:
            loss_d.backward()  # line 31
            self.dist.sync_gradients(self.discriminators)
            self.opt_d.step()  # line 32
        return loss_d

    # ------------------------------------------------------------------------------------------------
    def _fixed_validation_batch(self, val_set: Optional[Dataset]) -> Optional[dict]:
        if val_set is None or len(val_set) == 0:
            return None
        n = min(len(val_set), 4 * self.cfg.train.val_subjects)
        idx = torch.linspace(0, len(val_set) - 1, n).round().long().unique().tolist()
        return collate([val_set[i] for i in idx])

    @torch.no_grad()
    def validate(self) -> Optional[float]:
        """Mean PSNR over every input subset and every available target, on held-out slices (tau = 0).

        As in the evaluator (:mod:`mmhvae.eval.metrics`), the data range of a modality is fixed (its
        maximum over the validation slices; harmonized images start at 0) and only slices holding
        foreground of the target are scored: a per-slice peak would let near-empty edge slices, whose
        tiny peak turns any error into a hugely negative PSNR, dominate the mean and the model selection.
        With ``train.validate_lpips`` the same outputs are also scored by LPIPS (``self.val_lpips``;
        ``[0, range]`` mapped to [-1, 1], clipped, as the evaluator does).
        """
        self.val_lpips = None
        if self.val_batch is None:
            return None
        self.model.eval()
        inputs = self.val_batch["inputs"].to(self.device)
        targets = self.val_batch["targets"].to(self.device)
        available = self.val_batch["available"].to(self.device)
        peaks = targets.flatten(2).amax(2)  # (B, M)
        span = torch.where(available, peaks, torch.zeros_like(peaks)).amax(0)  # (M,): per-modality range
        scored = available & (peaks > 0) & (span[None] > 0)
        scores, perceptual = [], []
        for subset in all_subsets(self.cfg.model.num_modalities):
            observed = available & torch.tensor(subset, device=self.device)[None]
            keep = observed.any(dim=1)
            if not keep.any():
                continue
            out = self.model(inputs[keep], observed[keep], temperature=0.0)
            err = (out.reconstructions.float() - targets[keep]).square().flatten(2).mean(2)
            psnr = 10 * torch.log10(span[None].clamp_min(1e-6).square() / err.clamp_min(1e-10))
            scores.append(psnr[scored[keep]])
            if self.val_lpips_model is not None:
                perceptual.append(self._lpips(out.reconstructions.float(), targets[keep], span)[scored[keep]])
        scores = [s for s in scores if s.numel()]
        perceptual = [p for p in perceptual if p.numel()]
        if perceptual:
            self.val_lpips = float(torch.cat(perceptual).mean())
        return float(torch.cat(scores).mean()) if scores else None

    def _lpips(self, pred: torch.Tensor, target: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
        """LPIPS of every (slice, modality) pair, ``(B, M)``; intensities ``[0, span_j]`` -> [-1, 1]."""
        b, m = pred.shape[:2]
        scale = span.clamp_min(1e-6)[None, :, None, None]
        x = (2 * pred / scale - 1).clamp(-1, 1).reshape(b * m, 1, *pred.shape[2:])
        y = (2 * target / scale - 1).clamp(-1, 1).reshape(b * m, 1, *target.shape[2:])
        return self.val_lpips_model(x, y).reshape(b, m)

    @property
    def selection_start(self) -> int:
        """Models after this many steps are the candidates for ``best.safetensors`` (``train.selection``)."""
        tc = self.cfg.train
        rule = selection_rule(tc)
        if rule == "last":
            return tc.steps - 1
        if rule == "final-phase" and self.lambda_gan(tc.steps - 1) > 0:
            return min(tc.steps - 1, math.ceil(tc.gan.start_fraction * tc.steps))  # first step with the GAN
        return 0

    def selection_score(self, psnr: float) -> float:
        """The validation score that selects the best model, higher is better: the mean PSNR, or with
        ``train.select_metric = lpips`` minus the mean LPIPS of the same validation."""
        if self.cfg.train.select_metric == "lpips" and self.val_lpips is not None:
            return -self.val_lpips
        return psnr

    def improves(self, score: float) -> bool:
        """Does the model now (``self.step`` steps trained, validation ``score``) replace the best one?

        The criterion is ``selection_score`` (the mean validation PSNR over every subset and target, or
        minus their mean LPIPS). Before the selection window (``selection_start``) the best model is
        provisional (an interrupted run still has one); the first validated model inside the window
        replaces it whatever its score: PSNR would otherwise always prefer the model before the GAN,
        which costs PSNR by design.
        """
        start = self.selection_start
        if self.step > start and self.best_step <= start:
            return True
        return score > self.best_score

    # ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "best_score": self.best_score,
            "best_step": self.best_step,
            "model": self.model.state_dict(),
            "discriminators": self.discriminators.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "memories": [m.state_dict() for m in self.memories],
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "rng_subsets": self.subset_rng.get_state(),
            "history": self.history,
            "train_seconds": self.train_seconds,
            "config_yaml": self.cfg.to_yaml(),
            "execution": self.plan.to_dict() if self.plan is not None else {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.discriminators.load_state_dict(state["discriminators"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        for m, s in zip(self.memories, state["memories"]):
            m.load_state_dict(s)
        torch.set_rng_state(state["rng_torch"])
        if state.get("rng_cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.subset_rng.set_state(state["rng_subsets"])
        self.step = int(state["step"])
        self.best_score = float(state["best_score"])
        self.best_step = int(state.get("best_step", 0))
        self.history = list(state["history"])
        self.train_seconds = float(state.get("train_seconds", 0.0))  # older states: not recorded
        if state.get("execution"):  # the plan the run was measured with (older states: decided again)
            self._apply_plan(runtime.ExecutionPlan.from_dict(state["execution"]))

    # ------------------------------------------------------------------------------------------------
    def _apply_plan(self, plan: "runtime.ExecutionPlan", chosen: bool = True) -> None:
        self.running = plan  # what the steps use now; ``plan`` once chosen
        self.model.to(memory_format=plan.torch_memory_format)
        if chosen:
            self.plan = plan

    def choose_plan(self) -> "runtime.ExecutionPlan":
        """Fix the execution plan before the first step: the only candidate, the device default for
        distributed or compiled runs (ranks must agree; compiling every candidate would cost minutes),
        else the fastest candidate timed on this run's first batch. Timing runs real training steps
        and then restores the whole training state (weights, optimizers, memories, RNG), so the run is
        the same as one started with the chosen plan fixed in the config."""
        tc = self.cfg.train
        if self.plan is not None:
            return self.plan
        if len(self.candidates) == 1:
            plan = self.candidates[0]
        elif self.dist.enabled or self.compiled:
            plan = runtime.default_plan(tc.memory_format, tc.amp, self.device)
        else:
            import copy

            snapshot = copy.deepcopy(self.state_dict())
            batch = self.batches.batch(self.step)

            def run(candidate: "runtime.ExecutionPlan") -> None:
                self._apply_plan(candidate, chosen=False)
                self.training_step(batch, self.step)

            plan, times = runtime.choose_by_timing(self.candidates, run)
            self.load_state_dict(snapshot)
            if self.dist.is_main:
                timed = ", ".join(f"{p.describe()} {t:.3g} s" for p, t in times.items())
                print(f"execution plan: {plan.describe()} (timed one training step each: {timed})", flush=True)
        self._apply_plan(plan)
        return plan

    def _step_or_fall_back(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """A training step; with compiled cells, a compilation failure turns them back to eager (once,
        with a warning) and the step is run again."""
        try:
            return self.training_step(batch, self.step)
        except Exception as exc:  # noqa: BLE001 - only torch.compile's own failures are caught
            if not (self.compiled and runtime.is_compile_failure(exc)):
                raise
            runtime.warn_compile_fallback(exc)
            runtime.uncompile(self.model)
            self.compiled = False
            return self.training_step(batch, self.step)

    def save(self, best: bool = False) -> None:
        if not self.dist.is_main:
            return
        d = self.run_dir / "checkpoints"
        ckpt.save_generator(d / "last.safetensors", self.model, self.cfg, self.step)
        if best:
            ckpt.save_generator(d / "best.safetensors", self.model, self.cfg, self.step, score=self.best_score)
        ckpt.save_state(d / "last_state.pt", self.state_dict())

    def resume(self) -> bool:
        state = ckpt.resume_state(self.run_dir, ExperimentConfig, self.cfg.model)
        if state is None:
            return False
        # e.g. a run started before model.head_output_norm existed: its heads hold a GroupNorm more
        ckpt.check_weights(ckpt.latest_state(self.run_dir), state["model"], self.model,
                           "this version's network for the run's config (a run started by an earlier version "
                           "is resumed with that version; its best/last checkpoints load here)")
        self.load_state_dict(state)
        return True

    # ------------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        tc = self.cfg.train
        run_dir = self.run_dir
        # Rows logged after the checkpoint we resume from are dropped: one row per step and key.
        logger = RunLogger(run_dir, enabled=self.dist.is_main, resume_step=self.step)
        if self.dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.cfg.save(run_dir / "config.yaml")
        bar = None
        if self.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=tc.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        start, seconds_before = time.perf_counter(), self.train_seconds
        try:
            self.choose_plan()
            t0, steps0 = time.perf_counter(), self.step
            while self.step < tc.steps:
                batch = self.batches.batch(self.step)
                logs = self._step_or_fall_back(batch)
                self.step += 1
                self.train_seconds = seconds_before + time.perf_counter() - start
                rate = (self.step - steps0) / max(time.perf_counter() - t0, 1e-9)
                logs["steps_per_s"] = rate
                if self.step % tc.log_every == 0 or self.step == tc.steps:
                    logger.log(self.step, logs)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(img=f"{logs['img']:.4f}", kl=f"{logs['kl']:.3f}", gan=f"{logs['gan_g']:.3f}",
                                    it_s=f"{rate:.2f}")
                is_val = self.step % tc.validate_every == 0 or self.step == tc.steps
                is_ckpt = self.step % tc.checkpoint_every == 0 or self.step == tc.steps
                best = False
                if is_val:
                    score = self.validate()
                    if score is not None:
                        row = {"val_psnr": score}
                        if self.val_lpips is not None:
                            row["val_lpips"] = self.val_lpips
                        logger.log(self.step, row)
                        self.history.append({"step": self.step, **row})
                        score = self.selection_score(score)
                        if self.improves(score):
                            self.best_score, self.best_step, best = score, self.step, True
                    elif self.step == tc.steps:
                        best = True  # no validation set: the final model is the best we know
                if is_ckpt or best:
                    self.train_seconds = seconds_before + time.perf_counter() - start
                    self.save(best=best)
        finally:
            if bar is not None:
                bar.close()
            logger.close()
        d = run_dir / "checkpoints"
        best_path = d / "best.safetensors"
        return TrainResult(run_dir, best_path if best_path.exists() else d / "last.safetensors", d / "last.safetensors",
                           self.history, self.train_seconds)


def train(cfg: ExperimentConfig, run_dir: Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train ``cfg`` on ``cfg.data.cohort`` (its ``train`` split; ``val`` for model selection), alone in
    ``run_dir`` (:mod:`mmhvae.train.run_lock`)."""
    from mmhvae.train.run_lock import RunLock

    lock = RunLock(Path(run_dir))
    if int(os.environ.get("RANK", "0")) == 0:
        lock.acquire()  # one trainer per run folder (RunInUseError if another process trains it)
    try:
        return _train_locked(cfg, Path(run_dir), resume, progress)
    finally:
        lock.release()


def _train_locked(cfg: ExperimentConfig, run_dir: Path, resume: bool, progress: bool) -> TrainResult:
    from mmhvae.train.data import build_datasets

    if int(os.environ.get("RANK", "0")) == 0:
        ckpt.remove_stale_temporaries(Path(run_dir))  # left by a run killed during a save
    train_set, val_set = build_datasets(cfg)
    trainer = Trainer(cfg, Path(run_dir), train_set, val_set, progress=progress)
    if resume:
        if trainer.resume():
            if trainer.dist.is_main:
                print(f"resumed from step {trainer.step} in {run_dir}")
        elif trainer.dist.is_main:
            print(f"no checkpoint in {run_dir}; starting from scratch")
    elif ckpt.latest_state(Path(run_dir)) is not None:
        raise ckpt.CheckpointError(
            f"{run_dir} already holds a training run; pass --resume to continue it or choose another --out"
        )
    try:
        result = trainer.fit()
        if trainer.dist.is_main:  # RUN/MODEL_CARD.md: data, geometry, budget, curve, licences (issue 18)
            from mmhvae.train.model_card import write_model_card

            write_model_card(cfg, Path(run_dir), best_step=trainer.best_step, best_score=trainer.best_score,
                             train_seconds=trainer.train_seconds,
                             execution=trainer.plan.describe() if trainer.plan is not None else None)
        return result
    finally:
        trainer.dist.close()

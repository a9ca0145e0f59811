"""The U-HVED / U-HeMIS trainer on 3D patches (seed §2.2-§3, DESIGN §4), on the project's shared parts.

:meth:`UHVEDTrainer.step` is the seed's mixture sampling (eq. 5), per sample rather than per batch:

    1. draw B random patches (optionally centred on tumour voxels) with their availability r
    2. draw r' ~ p(r' | r) per sample: uniform subset size, then a uniform subset (seed §3)
    3. encode the observed modalities, fuse by product of Gaussians at every scale, sample z
    4. L = Dice + CE (labelled samples only) + 0.1 · MSE (all *available* modalities) + 0.1 · KL
    5. Adam step; learning rate: linear warm-up then cosine (or poly) decay

Everything around the step is shared with the MMHVAE trainer: the run folder (``config.yaml``,
``checkpoints/last.safetensors`` written by :func:`mmhvae.checkpoint.save_generator` with family
``uhved``, ``checkpoints/last_state.pt`` holding the model, optimizer, step and every random state,
read weights-only), the run logger (``metrics.csv``, TensorBoard), device and AMP selection. A
resumed run continues bit-identically.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from mmhvae import checkpoint as ckpt
from mmhvae import runtime
from mmhvae.errors import check_device
from mmhvae.models.uhved import UHVED, UHVEDConfig
from mmhvae.subsets import SubsetPolicy
from mmhvae.train.run_log import RunLogger
from mmhvae.train.uhved.cases import Case, load_cases
from mmhvae.train.uhved.losses import kl_warmup, learning_rate, uhved_loss
from mmhvae.train.uhved.patches import PatchBatch, PatchSampler


class UHVEDTrainer:
    """Owns the model, optimizer, sampler and run folder; :meth:`step` is the algorithm, the rest plumbing."""

    def __init__(self, cfg: UHVEDConfig, cases: Sequence[Case], out_dir: str | Path, resume: bool = False):
        self.cfg = cfg
        self.out = Path(out_dir)
        tc = cfg.train
        self.device = check_device(tc.device)
        torch.manual_seed(tc.seed)  # weights, then the latent noise of every step
        self.model = UHVED.from_config(cfg).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        self.sampler = PatchSampler(
            cases, tc.patch_size, tc.tumour_patch_fraction, tc.flip, seed=tc.seed,
            labelled_only=cfg.model.method == "uhemis",
        )
        self.policy = SubsetPolicy(cfg.model.modalities, policy=tc.subset_policy, weights=tc.subset_weights)
        self.generator = torch.Generator().manual_seed(tc.seed)  # r' ~ p(r' | r)
        # 3D volumes: NCDHW, autocast as train.amp says (auto: bf16 on GPU, float32 on CPU; mmhvae.runtime).
        self.autocast_dtype = runtime.default_plan("contiguous", tc.amp, self.device).autocast_dtype
        self.start_step = 0
        if resume and not self.resume():
            raise ckpt.CheckpointError(f"--resume: no training state in {self.out / 'checkpoints'} (nothing to "
                                       "resume; drop --resume)")

    def step(self, step: int, batch: Optional[PatchBatch] = None) -> dict[str, float]:
        """One optimisation step (the numbered lines of the module docstring)."""
        cfg = self.cfg.train
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        batch = (batch or self.sampler.sample(cfg.batch_size)).to(self.device)  # 1
        observed = self.policy.sample_masks(batch.available, self.generator)  # 2: r' ~ p(r' | r)
        self.model.train()
        dtype = self.autocast_dtype
        with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = self.model(batch.images, observed, temperature=1.0)  # 3
        terms = uhved_loss(out, batch, cfg, kl_scale=kl_warmup(cfg, step))  # 4
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()  # 5
        return {k: float(v.detach()) for k, v in terms.items()} | {"lr": self.optimizer.param_groups[0]["lr"]}

    # --- checkpoints: the shared format ---------------------------------------------------------------
    def state_dict(self, step: int) -> dict[str, Any]:
        return {
            "step": step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "rng_subsets": self.generator.get_state(),
            "sampler": self.sampler.state_dict(),
            "config_yaml": self.cfg.to_yaml(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_torch"])
        if state.get("rng_cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.generator.set_state(state["rng_subsets"])
        self.sampler.load_state_dict(state["sampler"])
        self.start_step = int(state["step"])

    def save(self, step: int) -> Path:
        d = self.out / "checkpoints"
        ckpt.save_generator(d / "last.safetensors", self.model, self.cfg, step)
        ckpt.save_state(d / "last_state.pt", self.state_dict(step))
        return d / "last.safetensors"

    def resume(self) -> bool:
        """Continue from ``checkpoints/last_state.pt`` (False when there is none)."""
        state = ckpt.resume_state(self.out, UHVEDConfig, self.cfg.model)
        if state is None:
            return False
        self.load_state_dict(state)
        return True

    # --- the loop ---------------------------------------------------------------------------------------
    def fit(self, progress: bool = True, log: Callable[[str], None] = print) -> Path:
        """Train to ``train.steps``, checkpointing every ``checkpoint_every`` steps and at the end."""
        cfg = self.cfg.train
        self.out.mkdir(parents=True, exist_ok=True)
        ckpt.remove_stale_temporaries(self.out)  # left by a run killed during a save
        self.cfg.save(self.out / "config.yaml")
        logger = RunLogger(self.out, resume_step=self.start_step)  # rows past the checkpoint would repeat
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.start_step, desc="uhved", unit="step", dynamic_ncols=True)
        t0 = time.time()
        try:
            for step in range(self.start_step, cfg.steps):
                terms = self.step(step)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{terms[k]:.3f}" for k in ("loss", "dice", "mse", "kl")})
                if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                    logger.log(step + 1, {**terms, "seconds": time.time() - t0})
                if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                    self.save(step + 1)
        finally:
            if bar is not None:
                bar.close()
            logger.close()
        path = self.out / "checkpoints" / "last.safetensors"
        log(f"trained {max(0, cfg.steps - self.start_step)} steps in {time.time() - t0:.0f} s -> {path}")
        return path


def train_uhved(cfg: UHVEDConfig, run_dir: Path, split: str = "train", resume: bool = False,
                progress: bool = True) -> Path:
    """Train ``cfg`` on the ``split`` of ``cfg.data.cohort`` (the U-HVED side of ``mmhvae train``), alone
    in ``run_dir`` (:mod:`mmhvae.train.run_lock`)."""
    from mmhvae.train.run_lock import RunLock

    with RunLock(Path(run_dir)):
        return _train_uhved_locked(cfg, Path(run_dir), split, resume, progress)


def _train_uhved_locked(cfg: UHVEDConfig, run_dir: Path, split: str, resume: bool, progress: bool) -> Path:
    if not resume and ckpt.latest_state(run_dir) is not None:
        raise ckpt.CheckpointError(
            f"{run_dir} already holds a training run; pass --resume to continue it or choose another --out"
        )
    cases = load_cases(cfg.data.cohort, split, cfg)
    labelled = sum(c.seg is not None for c in cases)
    print(f"{len(cases)} training subjects ({labelled} with a segmentation); method {cfg.model.method}")
    trainer = UHVEDTrainer(cfg, cases, run_dir)
    if resume:
        if trainer.resume():
            print(f"resumed from step {trainer.start_step} in {run_dir}")
        else:
            print(f"no checkpoint in {run_dir}; starting from scratch")
    return trainer.fit(progress=progress)

"""Training throughput (steps/s and slices/s) of Algorithm 1 for a preset, on CPU or GPU.

    python benchmarks/train_speed.py --preset small --steps 20 [--device cuda] [--threads 2]

Runs the real :class:`mmhvae.train.trainer.Trainer` (T subset draws, KL, GAN on for the second half)
on random slices with the ReMIND availability pattern, after a few warm-up steps, and prints one
Markdown row. Timing only; for quality see the demo and `mmhvae benchmark compare`.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from mmhvae.compute import machine_description
from mmhvae.config import apply_overrides, preset
from mmhvae.train.batches import ArraySliceDataset
from mmhvae.train.trainer import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = apply_overrides(preset(args.preset), [f"train.device={args.device}", *args.overrides])
    cfg.train.steps = args.warmup + args.steps
    cfg.train.gan.start_fraction = 0.5
    M, S, n = cfg.model.num_modalities, cfg.model.image_size, 256
    g = torch.Generator().manual_seed(0)
    available = torch.rand(n, M, generator=g) < torch.tensor([1.0, 0.63, 0.94, 0.2][:M] + [0.5] * max(0, M - 4))
    available[:, 0] = True
    data = ArraySliceDataset(torch.rand(n, M, S, S, generator=g), available)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, tmp, data, None, progress=False)
        for s in range(args.warmup):
            trainer.training_step(trainer.batches.batch(s), s)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for s in range(args.warmup, args.warmup + args.steps):
            trainer.training_step(trainer.batches.batch(s), s)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    rate = args.steps / dt
    print("| preset | device | batch | T | steps/s | slices/s |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.preset} | {args.device} | {cfg.train.batch_size} | {cfg.train.draws} | {rate:.2f} | "
          f"{rate * cfg.train.batch_size:.1f} |")
    print(f"\nMeasured on: {machine_description(args.device)}")


if __name__ == "__main__":
    main()

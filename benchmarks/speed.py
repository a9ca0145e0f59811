"""Old vs new MMHVAE speed, side by side in one process (issue 14), and torch.profiler tables.

    OMP_NUM_THREADS=1 python benchmarks/speed.py compare --threads 1,2 --repeats 5
    OMP_NUM_THREADS=1 python benchmarks/speed.py profile --which old   # or new

"old" is the generator as it was at ``--ref`` (default b62c212, before issue 14): ``models/mmhvae.py``,
``nn/cells.py`` and ``nn/gaussian.py`` are read with ``git show`` into a temporary package, so both
run on the same torch, the same machine and the same interleaved schedule. "new" is the working tree.

Work measured (paper preset, 192², four modalities, float32, CPU):

* **train**: one generator step as the trainer runs it: ``T`` draws of r' from the paper's subset
  policy (batch 8, every modality available), MSE + lambda_KL * KL, backward, Adamax step (the GAN
  term, on in the last 20 % of training only, is left out of both). Old: one forward + backward per
  draw, each draw encoding its r'. New: as the trainer on one process: one encoding of the modalities
  the T draws use (``encode_draws``), then decode + backward per draw from the features as leaves, and
  one backward through the encoders.
* **synth-all** / **synth-us**: one batch of 16 slices through ``forward`` at tau = 0.5 under
  ``torch.inference_mode`` with all four inputs / the ultrasound only.

Timing: runs are interleaved (old, new, old, new, ...), ``--warmup`` passes first, then the minimum
of ``--repeats`` (the CPU is shared with other jobs, so the minimum is the least disturbed figure).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

from mmhvae.config import preset
from mmhvae.subsets import SubsetPolicy
from mmhvae.train.losses import kl_per_pixel, reconstruction_loss

ROOT = Path(__file__).resolve().parents[1]
REF = "b62c212"
# The paper preset's widths at REF (the new preset follows the authors' schedule, see config.py).
OLD_PAPER = dict(channels=[32, 32, 64, 64, 128, 128], top_channels=128, decoder_cells=2, head_channels=8)


def load_reference(commit: str = REF):
    """The MMHVAE class as it was at ``commit`` (its cells and Gaussians too), as a private package."""
    tmp = Path(tempfile.mkdtemp(prefix="mmhvae_ref_"))
    pkg = tmp / "mmhvae_ref"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for src, dst in (("src/mmhvae/nn/cells.py", "cells.py"), ("src/mmhvae/nn/gaussian.py", "gaussian.py"),
                     ("src/mmhvae/models/mmhvae.py", "mmhvae.py")):
        text = subprocess.run(["git", "show", f"{commit}:{src}"], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout
        text = text.replace("from mmhvae.nn.cells", "from mmhvae_ref.cells")
        text = text.replace("from mmhvae.nn.gaussian", "from mmhvae_ref.gaussian")
        text = text.replace("\n_register()\n", "\n")  # never touch the real model registry
        (pkg / dst).write_text(text)
    sys.path.insert(0, str(tmp))
    spec = importlib.util.spec_from_file_location("mmhvae_ref.mmhvae", pkg / "mmhvae.py")
    importlib.import_module("mmhvae_ref")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mmhvae_ref.mmhvae"] = module
    spec.loader.exec_module(module)
    return module.MMHVAE


def build(which: str, cfg, ref: str = REF, widths: str = "own"):
    """``widths``: "own" = each model at its own paper preset; "old" = both at the old widths."""
    import dataclasses

    torch.manual_seed(0)
    if (which == "old" or widths == "old") and cfg.image_size == 192:
        cfg = dataclasses.replace(cfg, **OLD_PAPER)
    if which == "old":
        return load_reference(ref)(cfg)
    from mmhvae.models.mmhvae import MMHVAE

    return MMHVAE(cfg)


def make_batch(cfg, batch: int, draws: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    M, S = cfg.num_modalities, cfg.image_size
    images = torch.rand(batch, M, S, S, generator=g)
    available = torch.ones(batch, M, dtype=torch.bool)
    tc = preset("paper").train
    policy = SubsetPolicy(cfg.modalities, tc.subset_policy, tc.subset_groups, tc.subset_weights)
    masks = [policy.sample_masks(available, g) for _ in range(draws)]
    return images, available, masks


def train_step(model, opt, images, available, masks, shared: bool) -> float:
    """One generator step; ``shared``: one forward for the T draws (new API), else one per draw."""
    H, W = images.shape[-2:]
    opt.zero_grad(set_to_none=True)
    T = len(masks)
    total = 0.0
    if shared:  # as Trainer.training_step on one process: one encoding, decode + backward per draw
        encoding = model.encode_draws(images, list(masks))
        leaves = encoding.detached()
        for observed in masks:
            out = model.decode(leaves, observed, 1.0)
            loss = reconstruction_loss(out.reconstructions, images, available) + 1e-3 * kl_per_pixel(out.kl_total, H, W)
            (loss / T).backward()
            total += float(loss.detach()) / T
        encoding.backward(leaves)
    else:
        for observed in masks:
            out = model(images, observed, 1.0, available)
            loss = reconstruction_loss(out.reconstructions, images, available) + 1e-3 * kl_per_pixel(out.kl_total, H, W)
            (loss / T).backward()
            total += float(loss.detach()) / T
    opt.step()
    return total


def synth(model, images, observed) -> None:
    with torch.inference_mode():
        model(images, observed, 0.5)


def workloads(cfg, model, which: str, draws: int, train_batch: int, synth_batch: int):
    """name -> zero-argument callable running that work once on ``model``."""
    images, available, masks = make_batch(cfg, train_batch, draws)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-6)
    model.train()
    simages = torch.rand(synth_batch, cfg.num_modalities, cfg.image_size, cfg.image_size)
    all_in = torch.ones(synth_batch, cfg.num_modalities, dtype=torch.bool)
    us = torch.zeros_like(all_in)
    us[:, 0] = True

    def synth_run(obs):
        def run():
            model.eval()
            synth(model, simages, obs)
            model.train()
        return run

    return {
        "train": lambda: train_step(model, opt, images, available, masks, shared=(which == "new")),
        "synth-all": synth_run(all_in),
        "synth-us": synth_run(us),
    }


def compare(args) -> None:
    cfg = preset(args.preset).model
    models = {w: build(w, cfg, args.ref, args.widths) for w in ("old", "new")}
    if args.channels_last:
        models = {w: m.to(memory_format=torch.channels_last) for w, m in models.items()}
    work = {w: workloads(cfg, m, w, args.draws, args.batch, args.synth_batch) for w, m in models.items()}
    names = [n for n in args.work.split(",")]
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for name in names:
            times = {"old": [], "new": []}
            warmup = 0 if name == "train" else args.warmup  # a training step is long enough on its own
            for i in range(warmup + args.repeats):
                for w in ("old", "new"):
                    t0 = time.perf_counter()
                    work[w][name]()
                    dt = time.perf_counter() - t0
                    if i >= warmup:
                        times[w].append(dt)
            old, new = min(times["old"]), min(times["new"])
            rows.append((threads, name, old, new))
            print(f"threads={threads} {name}: old {old:.3f} s, new {new:.3f} s, new/old {new / old:.2f}, "
                  f"speed-up {old / new:.2f}x  (all old: {[round(t, 2) for t in times['old']]}, "
                  f"new: {[round(t, 2) for t in times['new']]})", flush=True)
    print("\n| work | threads | old (s) | new (s) | speed-up old/new |")
    print("|---|---|---|---|---|")
    for threads, name, old, new in rows:
        print(f"| {name} | {threads} | {old:.2f} | {new:.2f} | {old / new:.2f}x |")


def profile(args) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    torch.set_num_threads(int(args.threads.split(",")[0]))
    cfg = preset(args.preset).model
    model = build(args.which, cfg, args.ref, args.widths)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    work = workloads(cfg, model, args.which, args.draws, args.batch, args.synth_batch)
    for name in args.work.split(","):
        work[name]()  # warm-up
        with torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            t0 = time.perf_counter()
            work[name]()
            dt = time.perf_counter() - t0
        print(f"\n## {args.which}: {name} ({dt:.2f} s under the profiler)\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=38))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["compare", "profile"])
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--ref", default=REF, help="git commit of the old model")
    ap.add_argument("--which", default="old", choices=["old", "new"], help="profile: which model")
    ap.add_argument("--work", default="train,synth-all,synth-us")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--synth-batch", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=18)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--widths", default="own", choices=["own", "old"],
                    help="own: each model at its paper preset; old: both at the old widths (the code alone)")
    args = ap.parse_args()
    (compare if args.mode == "compare" else profile)(args)


if __name__ == "__main__":
    main()

"""Memory layout x precision x torch.compile, side by side in one process (issue 14).

    OMP_NUM_THREADS=1 python benchmarks/execution.py --preset small --threads 1,2 --repeats 3
    python benchmarks/execution.py --preset paper --device cuda --compile   # on a GPU

For each execution plan (NCHW / NHWC, float32 / bf16 autocast; with ``--compile`` also the cells
compiled with torch.compile) it times, on the current tree's MMHVAE:

* **train**: one generator step as the trainer runs it on one process (T draws of r' from the paper's
  subset policy, one encoding for all draws, decode + backward per draw, Adamax step;
  ``benchmarks/speed.py``'s ``train_step``);
* **synth-all** / **synth-us**: a batch of slices through ``forward`` at tau = 0.5 under
  ``torch.inference_mode`` with every input / the first modality only.

Runs are interleaved (every plan once, then again), the minimum of ``--repeats`` after ``--warmup``
untimed passes is kept, and each figure is printed as a ratio to NCHW float32 eager (above 1 = faster).
Compilation time (the first call of a compiled plan) is reported separately. It prints the machine,
the command and a Markdown table for BENCHMARKS.md. ``mmhvae train`` makes the same choice at run time
(``train.memory_format=auto``, ``train.amp=auto``: :mod:`mmhvae.runtime`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import make_batch, train_step  # noqa: E402

from mmhvae.compute import machine_description  # noqa: E402
from mmhvae.config import preset  # noqa: E402
from mmhvae.models.mmhvae import MMHVAE  # noqa: E402
from mmhvae.runtime import ExecutionPlan, bf16_supported, compile_cells  # noqa: E402


def variants(device: torch.device, with_compile: bool) -> list[tuple[ExecutionPlan, bool]]:
    precisions = ["fp32"] + (["bf16"] if bf16_supported(device) else [])
    out = [(ExecutionPlan(layout, amp), False) for layout in ("contiguous", "channels_last") for amp in precisions]
    if with_compile:
        out += [(plan, True) for plan, _ in list(out)]
    return out


def workloads(cfg, plan: ExecutionPlan, compiled: bool, device, draws: int, batch: int, synth_batch: int):
    torch.manual_seed(0)
    model = MMHVAE.from_config(cfg).to(device).to(memory_format=plan.torch_memory_format)
    if compiled:
        compile_cells(model)
    images, available, masks = make_batch(cfg, batch, draws)
    images = images.to(device).contiguous(memory_format=plan.torch_memory_format)
    available, masks = available.to(device), [m.to(device) for m in masks]
    opt = torch.optim.Adamax(model.parameters(), lr=1e-6)
    g = torch.Generator().manual_seed(1)
    simages = torch.rand(synth_batch, cfg.num_modalities, cfg.image_size, cfg.image_size, generator=g)
    simages = simages.to(device).contiguous(memory_format=plan.torch_memory_format)
    all_in = torch.ones(synth_batch, cfg.num_modalities, dtype=torch.bool, device=device)
    first = torch.zeros_like(all_in)
    first[:, 0] = True

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train():
        model.train()
        with plan.autocast(device):
            train_step(model, opt, images, available, masks, shared=True)
        sync()

    def synth(observed):
        def run():
            model.eval()
            with torch.inference_mode(), plan.autocast(device):
                model(simages, observed, 0.5)
            sync()
        return run

    return {"train": train, "synth-all": synth(all_in), "synth-us": synth(first)}


def label(plan: ExecutionPlan, compiled: bool) -> str:
    return f"{'NHWC' if plan.memory_format == 'channels_last' else 'NCHW'} {plan.amp}" + (" compiled" if compiled else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", default="1")
    ap.add_argument("--work", default="train,synth-all,synth-us")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--synth-batch", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time the cells compiled with torch.compile")
    args = ap.parse_args()
    device = torch.device(args.device)
    cfg = preset(args.preset).model
    print(f"machine: {machine_description()}; torch {torch.__version__}; bf16 native: {bf16_supported(device)}")
    print("command: python benchmarks/execution.py " + " ".join(sys.argv[1:]))
    plans = variants(device, args.compile)
    work = {v: workloads(cfg, *v, device, args.draws, args.batch, args.synth_batch) for v in plans}
    names = args.work.split(",")
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        if device.type == "cpu":
            torch.set_num_threads(threads)
        for name in names:
            first_call = {}
            for v in plans:  # warm-up; a compiled plan compiles here
                t0 = time.perf_counter()
                for _ in range(max(args.warmup, 1 if v[1] else 0)):
                    work[v][name]()
                first_call[v] = time.perf_counter() - t0
            times = {v: float("inf") for v in plans}
            for _ in range(args.repeats):
                for v in plans:
                    t0 = time.perf_counter()
                    work[v][name]()
                    times[v] = min(times[v], time.perf_counter() - t0)
            base = times[plans[0]]
            for v in plans:
                rows.append((threads, name, label(*v), times[v], base / times[v], first_call[v] if v[1] else None))
                print(f"threads={threads} {name} {label(*v)}: {times[v]:.3f} s ({base / times[v]:.2f}x)", flush=True)
    print("\n| work | threads | plan | time (s) | vs NCHW fp32 eager | first call (compile) |")
    print("|---|---|---|---|---|---|")
    for threads, name, plan, t, ratio, compile_s in rows:
        extra = f"{compile_s:.0f} s" if compile_s is not None else ""
        print(f"| {name} | {threads} | {plan} | {t:.3f} | {ratio:.2f}x | {extra} |")


if __name__ == "__main__":
    main()

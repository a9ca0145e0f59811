#!/usr/bin/env bash
# GPU check (issue 18): install, train the `paper` preset on the real MR pool in bf16 within ~8 minutes,
# print steps/s, slices/s of synthesis, peak GPU memory and the validation curve.
#
#   benchmarks/gpu_check.sh               # on a machine with one CUDA GPU (about 7 minutes of training)
#   benchmarks/gpu_check.sh --cpu-smoke   # the same path on a CPU at toy size (a minute): checks the script
#
# Environment: REAL (default ../shared/data/real), OUT (default /tmp/mmhvae_gpu_check), TRAIN_SECONDS (default
# 360: the training budget after a 30-step calibration run). The machine needs no network: the project is
# installed from this checkout into the existing environment (torch must already be there).
# The real cases are read in place; nothing trained on them is kept outside OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
REAL=${REAL:-../shared/data/real}
OUT=${OUT:-/tmp/mmhvae_gpu_check}
TRAIN_SECONDS=${TRAIN_SECONDS:-360}
MODE=gpu
[[ "${1:-}" == "--cpu-smoke" ]] && MODE=cpu && TRAIN_SECONDS=${TRAIN_SECONDS_CPU:-20}

PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [[ $MODE == gpu ]]; then  # the CPU smoke runs in the developer's environment as it is
  echo "[gpu_check] install (editable, no dependency download) with $PY"
  "$PY" -m pip install --quiet --no-deps --no-build-isolation -e . 2>&1 | tail -2 || echo "[gpu_check] pip install failed; using the source tree"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
[[ -d "$REAL" ]] || { echo "[gpu_check] real cases not found at $REAL"; exit 2; }
rm -rf "$OUT"; mkdir -p "$OUT"

MODE=$MODE REAL=$REAL OUT=$OUT TRAIN_SECONDS=$TRAIN_SECONDS "$PY" - <<'PYEOF'
import csv, json, os, time
from pathlib import Path

import numpy as np
import torch

from mmhvae.config import resolve
from mmhvae.realbench import build_split
from mmhvae.train.trainer import train

mode, real, out = os.environ["MODE"], Path(os.environ["REAL"]), Path(os.environ["OUT"])
budget = float(os.environ["TRAIN_SECONDS"])
gpu = mode == "gpu"
if gpu and not torch.cuda.is_available():
    raise SystemExit("[gpu_check] no CUDA device; run with --cpu-smoke for the CPU path")
mods = ["t1", "t2", "cet1", "flair"]
split = build_split(out, real, mods, exclude="RESECT-Case2,RESECT-Case21,RESECT-Case24",
                    test_subjects="BraTS-GLI-00001-000,TCGA-DU-7294,LjMS-cs-patient19",
                    val_subjects="GliomaGAN-example")
print(f"[gpu_check] train {split.train}\n[gpu_check] val {split.val}, test {split.test}")
if gpu:  # the paper network at 192² on a 1.25 mm frame (240 mm: the whole brain in one tile), bf16
    preset, extra = "paper", ["data.spacing=[1.25,1.25,1.25]", "train.amp=bf16", "train.device=cuda",
                              "train.batch_size=16", "train.log_every=10"]
else:  # the same code path at toy size
    preset, extra = "real-cpu", ["train.amp=fp32", "train.device=cpu", "train.batch_size=4"]
base = [f"data.cohort={split.manifest}", f"model.modalities=[{','.join(mods)}]", "train.subset_policy=uniform",
        "train.val_subjects=1", *extra]


def run(steps: int, name: str):
    every = max(1, steps // 8)
    cfg = resolve(preset, base + [f"train.steps={steps}", f"train.validate_every={every}",
                                  f"train.checkpoint_every={max(every, steps // 2)}"])
    if gpu:
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = train(cfg, out / name, progress=False)
    if gpu:
        torch.cuda.synchronize()
    return cfg, result, time.perf_counter() - t0


calib = 30 if gpu else 2
_, _, secs = run(calib, "calibration")  # also fills the preprocessing cache
rate = calib / secs
steps = max(calib, int(budget * rate))
print(f"[gpu_check] calibration: {calib} steps in {secs:.1f} s -> {steps} steps for ~{budget:.0f} s")
cfg, result, secs = run(steps, "paper")
peak = torch.cuda.max_memory_allocated() / 2**30 if gpu else float("nan")
print(f"[gpu_check] training: {steps} steps in {secs:.1f} s = {steps / secs:.2f} steps/s "
      f"(batch {cfg.train.batch_size}, {cfg.train.draws} draws, with validation and checkpoints)")

from mmhvae.data.cohort import Cohort
from mmhvae.data.dataset import preprocess_subject
from mmhvae.eval.runner import synthesize_slices
from mmhvae.infer import load_model

model = load_model(result.best_checkpoint, "cuda" if gpu else "cpu")
cohort = Cohort.load(split.manifest, modalities=mods)
pre = preprocess_subject(cohort.select("test")[0], model.config.data, mods, model.config.model.image_size)
inputs = {m: v for m, v in pre.inputs.items() if m != "flair"}
n = next(iter(inputs.values())).shape[0]
synthesize_slices(model, {m: v[:4] for m, v in inputs.items()}, 0.0, 16, ["flair"])  # warm-up
if gpu:
    torch.cuda.synchronize()
t0 = time.perf_counter()
synthesize_slices(model, inputs, 0.0, 16, ["flair"])
if gpu:
    torch.cuda.synchronize()
syn = n / (time.perf_counter() - t0)
curve = [(int(r["step"]), float(r["value"])) for r in csv.DictReader(open(out / "paper" / "metrics.csv"))
         if r["key"] == "val_psnr"]
report = {"mode": mode, "device": torch.cuda.get_device_name(0) if gpu else "cpu", "steps": steps,
          "train_seconds": round(secs, 1), "steps_per_s": round(steps / secs, 3),
          "synthesis_slices_per_s": round(syn, 1), "peak_gpu_memory_gib": round(peak, 2),
          "val_psnr_curve": curve}
print(f"[gpu_check] synthesis (t1+t2+cet1 -> flair, {n} slices, batch 16): {syn:.1f} slices/s")
print(f"[gpu_check] peak GPU memory: {peak:.2f} GiB")
print("[gpu_check] validation PSNR: " + ", ".join(f"{s}: {v:.2f}" for s, v in curve))
(out / "gpu_check.json").write_text(json.dumps(report, indent=2))
print(json.dumps(report))
PYEOF

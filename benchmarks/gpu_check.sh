#!/usr/bin/env bash
# GPU check (issue 18): install, train the `paper` preset on the real MR pool in bf16 within ~8 minutes,
# print steps/s, slices/s of synthesis, peak GPU memory and the validation curve.
#
#   benchmarks/gpu_check.sh               # on a machine with one CUDA GPU (about 6 minutes of training)
#   benchmarks/gpu_check.sh --cpu-smoke   # the same path on a CPU at toy size (a minute): checks the script
#
# On a lent device machine (see benchmarks/gpu_stage.sh, which prepares the call): the real cases beside
# the checkout do not travel there and nibabel is not installed there, so gpu_stage.sh links the cases
# as .device_real/ and downloads the missing wheels into .whl/; this script installs those wheels and
# reads .device_real/ when they exist.
#
# Environment: REAL (default .device_real if present, else ../shared/data/real), WORK (default
# /tmp/mmhvae_gpu_check: the runs), OUT (where the small results go: gpu_check.json and the run's
# metrics.csv; default WORK), TRAIN_SECONDS (default 360: the training budget after a 30-step
# calibration run), DEADLINE_SECONDS (default 450: the training is shortened so that the script, from
# its start, ends within about this plus the synthesis timing). Nothing is downloaded; torch must be
# there. The real cases are read in place; nothing trained on them is kept outside WORK.
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
if [[ -z "${REAL:-}" ]]; then
  if [[ -d .device_real ]]; then REAL=.device_real; else REAL=../shared/data/real; fi
fi
WORK=${WORK:-/tmp/mmhvae_gpu_check}
RESULTS=${OUT:-$WORK}
TRAIN_SECONDS=${TRAIN_SECONDS:-360}
DEADLINE_SECONDS=${DEADLINE_SECONDS:-450}
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
if compgen -G ".whl/*.whl" > /dev/null; then  # wheels carried to a machine that lacks them (gpu_stage.sh)
  echo "[gpu_check] installing the carried wheels: $(ls .whl | tr '\n' ' ')"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/mmhvae_site .whl/*.whl
  export PYTHONPATH="/tmp/mmhvae_site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"  # the source tree itself: no build, no network
[[ -d "$REAL" ]] || { echo "[gpu_check] real cases not found at $REAL (run benchmarks/gpu_stage.sh first on a device)"; exit 2; }
rm -rf "$WORK"; mkdir -p "$WORK" "$RESULTS"

MODE=$MODE REAL=$REAL WORK=$WORK RESULTS=$RESULTS TRAIN_SECONDS=$TRAIN_SECONDS START=$START \
DEADLINE_SECONDS=$DEADLINE_SECONDS "$PY" - <<'PYEOF'
import json, os, shutil, time
from pathlib import Path

import torch

from mmhvae.config import resolve
from mmhvae.realbench import build_split
from mmhvae.train.run_log import read_series
from mmhvae.train.trainer import train

mode, real, work, results = os.environ["MODE"], Path(os.environ["REAL"]), Path(os.environ["WORK"]), Path(os.environ["RESULTS"])
budget = float(os.environ["TRAIN_SECONDS"])
deadline = float(os.environ["START"]) + float(os.environ["DEADLINE_SECONDS"])
gpu = mode == "gpu"
if gpu and not torch.cuda.is_available():
    raise SystemExit("[gpu_check] no CUDA device; run with --cpu-smoke for the CPU path")
print(f"[gpu_check] torch {torch.__version__}, device {torch.cuda.get_device_name(0) if gpu else 'cpu'}", flush=True)
mods = ["t1", "t2", "cet1", "flair"]
# The split of the real benchmark (BENCHMARKS.md, Run K) as far as the cases present allow: the staged
# subset of a device call holds fewer training subjects and another held-out subject.
present = {p.name for p in real.iterdir() if p.is_dir()}
test = [s for s in ("BraTS-GLI-00001-000", "TCGA-DU-7294", "LjMS-cs-patient19") if s in present] \
    or [s for s in ("BraTS2013-pat0004",) if s in present]
val = [s for s in ("GliomaGAN-example",) if s in present]
exclude = [s for s in ("RESECT-Case2", "RESECT-Case21", "RESECT-Case24", "LjMS-long-patient01") if s in present]
split = build_split(work, real, mods, exclude=exclude or None, test_subjects=test or None, val_subjects=val or None)
print(f"[gpu_check] train {split.train}\n[gpu_check] val {split.val}, test {split.test}", flush=True)
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
    result = train(cfg, work / name, progress=False)
    if gpu:
        torch.cuda.synchronize()
    return cfg, result, time.perf_counter() - t0


calib = 30 if gpu else 2
_, _, secs = run(calib, "calibration")  # also fills the preprocessing cache
rate = calib / secs
left = deadline - time.time() - (60 if gpu else 10)  # keep time for the synthesis timing
seconds = min(budget, max(left, 0.0))
steps = max(calib, int(seconds * rate))
print(f"[gpu_check] calibration: {calib} steps in {secs:.1f} s -> {steps} steps for ~{seconds:.0f} s "
      f"(budget {budget:.0f} s, {left:.0f} s left before the deadline)", flush=True)
cfg, result, secs = run(steps, "paper")
peak = torch.cuda.max_memory_allocated() / 2**30 if gpu else float("nan")
print(f"[gpu_check] training: {steps} steps in {secs:.1f} s = {steps / secs:.2f} steps/s "
      f"(batch {cfg.train.batch_size}, {cfg.train.draws} draws, with validation and checkpoints)", flush=True)

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
curve = read_series(work / "paper", "val_psnr")
report = {"mode": mode, "device": torch.cuda.get_device_name(0) if gpu else "cpu", "torch": torch.__version__,
          "train": split.train, "val": split.val, "test": split.test, "steps": steps,
          "batch_size": cfg.train.batch_size, "train_seconds": round(secs, 1), "steps_per_s": round(steps / secs, 3),
          "synthesis_slices_per_s": round(syn, 1), "peak_gpu_memory_gib": round(peak, 2) if gpu else None,
          "val_psnr_curve": curve, "wall_seconds": round(time.time() - float(os.environ["START"]), 1)}
print(f"[gpu_check] synthesis (t1+t2+cet1 -> flair, {n} slices, batch 16): {syn:.1f} slices/s")
print(f"[gpu_check] peak GPU memory: {peak:.2f} GiB")
print("[gpu_check] validation PSNR: " + ", ".join(f"{s}: {v:.2f}" for s, v in curve))
results.mkdir(parents=True, exist_ok=True)
(results / "gpu_check.json").write_text(json.dumps(report, indent=2))
if results != work:
    shutil.copyfile(work / "paper" / "metrics.csv", results / "gpu_check_metrics.csv")
    shutil.copyfile(work / "paper" / "config.yaml", results / "gpu_check_config.yaml")
print(json.dumps(report))
PYEOF

#!/usr/bin/env bash
# Reproduces the pretrained built-in model shipped in src/mmhvae/pretrained/ (issue 16):
# MMHVAE, `small` preset, trained at length on a built-in cohort that the demo never sees
# (seed 1; the demo's cohort is seed 0). CPU: ~80 min on one core of the 2-core development machine.
#   bash benchmarks/pretrain_builtin.sh [WORK_DIR]
set -euo pipefail
WORK=${1:-pretrain_builtin}
MMHVAE=${MMHVAE:-.venv/bin/mmhvae}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
$MMHVAE make-cohort "$WORK/cohort" --subjects 240 --seed 1 --shape 64 64 40
$MMHVAE train --config small --cohort "$WORK/cohort/manifest.csv" --out "$WORK/run" --no-progress \
  train.steps=6000 train.seed=1 train.checkpoint_every=500 train.validate_every=250 train.log_every=50
$PY -m mmhvae.pretrained "$WORK/run" src/mmhvae/pretrained/builtin-small.safetensors \
  "built-in cohort: mmhvae make-cohort --subjects 240 --seed 1 --shape 64 64 40"
# Scores of the card: Table 1 on the demo's test subjects, and sim-to-real on the real MR cases.
$MMHVAE make-cohort "$WORK/demo_cohort" --subjects 60 --seed 0 --shape 64 64 40
$MMHVAE evaluate --checkpoint pretrained=src/mmhvae/pretrained/builtin-small.safetensors \
  --cohort "$WORK/demo_cohort/manifest.csv" --split test --out "$WORK/table1"
if [ -d ../shared/data/real ]; then
  $MMHVAE evaluate --checkpoint pretrained=src/mmhvae/pretrained/builtin-small.safetensors \
    --cohort ../shared/data/real --split all --out "$WORK/sim_to_real"
fi

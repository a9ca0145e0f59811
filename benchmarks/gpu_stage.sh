#!/usr/bin/env bash
# Prepare, here, the one device call of the GPU check (benchmarks/gpu_check.sh) and print it.
#
#   benchmarks/gpu_stage.sh
#
# A lent device machine receives the checkout only: the real cases beside it (../shared/data/real) do
# not travel, its Python has no nibabel, and nothing can be fetched there. This script
#   * links the real pool into the checkout as .device_real (a link, ignored by git: no case is copied
#     into the project) so that `carry` can name subject folders through it (at most 8 paths, 64 MiB);
#   * downloads the wheels the device lacks into .whl/ (ignored), for its Python 3.12;
#   * checks the size of what will travel and prints the `run` call (command, carry, timeout).
# Seven subjects travel (5 train, 1 validation, 1 held out: about 53 MiB); the others stay here.
set -euo pipefail
cd "$(dirname "$0")/.."
REAL=${REAL:-../shared/data/real}
SUBJECTS=(BraTS-GLI-00000-000 BraTS-unknownID-PR138 BraTS2013-pat0001 BraTS2013-pat0002 BraTS2013-pat0003
          GliomaGAN-example BraTS2013-pat0004)
WHEELS=(nibabel)  # what the device image lacks among the training path's imports (KINDS.md's package list)
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
[[ -d "$REAL" ]] || { echo "[gpu_stage] real cases not found at $REAL"; exit 2; }
for s in "${SUBJECTS[@]}"; do [[ -d "$REAL/$s" ]] || { echo "[gpu_stage] $REAL/$s missing"; exit 2; }; done
for p in /.device_real /.whl/; do grep -qxF "$p" .git/info/exclude 2>/dev/null || echo "$p" >> .git/info/exclude; done
ln -sfn "$(cd "$REAL" && pwd)" .device_real
rm -rf .whl; mkdir -p .whl
for w in "${WHEELS[@]}"; do
  version=$("$PY" -c "import importlib.metadata as m; print(m.version('$w'))")
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "$w==$version"
done
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
data=$(du -cbL $(printf '.device_real/%s ' "${SUBJECTS[@]}") | tail -1 | cut -f1)
wheels=$(du -cb .whl | tail -1 | cut -f1)
total=$(( (tree + data + wheels) / 1048576 ))
echo "[gpu_stage] travels: tree $((tree / 1048576)) MiB + cases $((data / 1048576)) MiB + wheels $((wheels / 1048576)) MiB = $total MiB (limit 64)"
(( total < 64 )) || { echo "[gpu_stage] too large: drop a subject from SUBJECTS"; exit 3; }
carry=$(printf '".device_real/%s", ' "${SUBJECTS[@]}")
echo "[gpu_stage] the device call (one run, about 8-9 minutes of device time with the machine's start):"
echo "  run(command='PYTHONUNBUFFERED=1 bash benchmarks/gpu_check.sh 2>&1 | tee \$OUT/gpu_check.log',"
echo "      carry=[${carry}\".whl\"], timeout_s=600)"

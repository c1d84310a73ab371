#!/usr/bin/env bash
# The GPU check on a lent GPU machine, as one command (docs/benchmarks.md, "GPU check").
#
# That machine runs its own image: python3 with torch, transformers and most of what we need, no network, and
# only the working tree plus the carried folder .whl/ (made here by `make gpu-wheels`) arrive there. This script
# installs the carried wheels into a private folder (never over the image's torch: --no-deps), puts it and the
# working tree on PYTHONPATH, runs scripts/gpu_check.py and copies its report and log to $OUT (the folder whose
# files come back), or to build/gpu_check/ where $OUT is unset.
#
#   bash scripts/gpu_device.sh                      # on the GPU machine
#   PYTHON=/path/to/python bash scripts/gpu_device.sh --dry-run   # the same steps on a CPU (a rehearsal)
#
# Extra arguments go to gpu_check.py (e.g. --only parity train_1024, --no-compile, --budget 420).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SITE=${GPU_SITE:-/tmp/mmbert-gpu-site}
WORK=build/gpu_check
RESULTS=${OUT:-$WORK}

shopt -s nullglob
wheels=(.whl/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
  echo "gpu_device: no wheels in .whl/ (run 'make gpu-wheels' where PyPI is reachable, and carry .whl)" >&2
  exit 2
fi
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}"
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export WANDB_MODE=disabled HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
"$PYTHON" -c "import torch, transformers, composer, streaming; print('gpu_device: torch', torch.__version__, \
'transformers', transformers.__version__, 'composer', composer.__version__, 'cuda', torch.cuda.is_available())"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true

mkdir -p "$WORK" "$RESULTS"
status=0
"$PYTHON" scripts/gpu_check.py --out "$WORK" "$@" 2>&1 | tee "$WORK/gpu_check.log" || status=$?
if [ "$RESULTS" != "$WORK" ]; then
  for f in gpu_check.json gpu_check.md gpu_check.log gpu_tests.xml; do
    [ -f "$WORK/$f" ] && cp "$WORK/$f" "$RESULTS/"
  done
fi
exit $status

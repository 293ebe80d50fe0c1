#!/usr/bin/env bash
# The GPU path on a real GPU, for the day one is at hand: the smoke preset with --device cuda (Train workers on
# CUDA, autocast, CUDA onnxruntime providers), then what was used: the training runtime of every checkpoint and
# the providers each served file runs with. Exits non-zero when CUDA is missing or was not used.
#
#   scripts/gpu_check.sh                      # on a GPU machine, in the checkout (make setup first)
#   ray attach cluster.yaml                   # on a cluster GPU node: then cd ~/raymotion && scripts/gpu_check.sh
#   EXTRA="--set torch_compile=true --set amp_dtype=fp16" scripts/gpu_check.sh   # the other paths
#
# Variables: PY (python to use; default .venv/bin/python, else python), DATA (a data root; default the
# tune command's own: ../shared/data/emotions or generated faces), OUT (run directory), MODELS, EXTRA (more
# flags for python -m raymotion.tune).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
OUT=${OUT:-runs/gpu-check-$(date +%Y%m%d-%H%M%S)}
MODELS=${MODELS:-lenet,mobilenet_v2}

"$PY" - <<'EOF'
import sys
import torch
import onnxruntime as ort
print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, available: {torch.cuda.is_available()}")
print(f"onnxruntime {ort.__version__}, providers: {ort.get_available_providers()}")
if not torch.cuda.is_available():
    sys.exit("no CUDA device visible to torch: this check needs a GPU (nvidia-smi, and a CUDA build of torch)")
for i in range(torch.cuda.device_count()):
    print(f"GPU {i}: {torch.cuda.get_device_name(i)}, bf16: {torch.cuda.is_bf16_supported()}")
EOF

# A Ray of its own ("local"), which sees this machine's GPUs; one trial per model, smoke-sized epochs.
"$PY" -m raymotion.tune --address local --preset smoke --models "$MODELS" --num-samples 1 --device cuda \
    --out "$OUT" ${DATA:+--data "$DATA"} ${EXTRA:-}

echo
echo "=== what the run used ($OUT) ==="
"$PY" -m bench gpu "$OUT" --require-gpu --json "$OUT/gpu_check.json"

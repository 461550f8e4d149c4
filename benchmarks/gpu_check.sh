#!/usr/bin/env bash
# GPU check (under 5 minutes): the Dem-HEC/plain step-cost ratio on the GPU and the time of one
# Dem-HEC epoch of ResNet-20 on 50,000 CIFAR-size images held on the device (bf16 autocast for
# the training passes, channels_last, fp32 generation). Run from the repository root on a
# machine with CUDA, e.g. through the device tool: bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
if ! $PY -c "import demhec" 2>/dev/null; then
  $PY -m pip install --quiet -e . >/dev/null
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
$PY benchmarks/step_cost.py --device cuda --steps 30 --the 1 5 10 --channels-last --amp
$PY benchmarks/epoch_time.py --device cuda --images 50000
# torch.compile of the training passes (compilation time is excluded: warm-up steps are dropped)
$PY benchmarks/step_cost.py --device cuda --steps 30 --the 5 --channels-last --amp --compile

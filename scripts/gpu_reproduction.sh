#!/usr/bin/env bash
# The device tool's command for scripts/gpu_reproduction.py: run `make gpu-carry` here first, then
# call the device tool with carry [".gpu_carry"], timeout_s 600 and the command
#   bash scripts/gpu_reproduction.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONUNBUFFERED=1 exec "${PY:-python3}" scripts/gpu_reproduction.py --carry .gpu_carry --out "${OUT:?OUT is not set: run this through the device tool}" "$@"

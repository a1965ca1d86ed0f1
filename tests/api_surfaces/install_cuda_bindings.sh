#!/usr/bin/env bash
# Install the real cuda-python bindings of each CUDA major the CUDA layer supports, each into its own folder, for
# tests/test_cuda_bindings.py (they import on a machine without a GPU or driver). Idempotent.
#   usage: tests/api_surfaces/install_cuda_bindings.sh [DIR]   (default: .cuda-bindings; python: $PYTHON or python3)
set -euo pipefail
base=${1:-.cuda-bindings}
python=${PYTHON:-python3}
install() {  # folder, module that must import, requirements...
  local dir="$base/$1" module=$2
  shift 2
  if [ -e "$dir/.ok" ]; then return; fi
  rm -rf "$dir" && mkdir -p "$dir"
  "$python" -m pip install --quiet --no-deps --only-binary=:all: --target "$dir" "$@"
  PYTHONPATH="$dir" "$python" -c "import $module" && touch "$dir/.ok"
}
# CUDA 11 drivers (x86_64): 11.8 has `from cuda import cudart` and cuda.bindings; needs nothing else.
install 11 cuda.cudart "cuda-python==11.8.7" "cuda-bindings==11.8.7"
# JetPack 6 (CUDA 12.6) and drivers 525-575; 12.9+ needs cuda-pathfinder at import.
install 12 cuda.bindings.runtime "cuda-bindings==12.9.*" "cuda-pathfinder>=1.1,<2"
# Drivers >= 580 (CUDA 13).
install 13 cuda.bindings.runtime "cuda-bindings==13.*" "cuda-pathfinder>=1.4.2,<2"

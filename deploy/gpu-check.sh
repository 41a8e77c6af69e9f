#!/usr/bin/env bash
# The engine's GPU check, within 10 minutes on one GPU: parity with PEFT (float32 row by row,
# bfloat16 within its tolerance) and `promptmux bench engine`'s figures on CUDA in bfloat16
# (engine_over_hf, step_over_bound against the GPU's own peak, kv_bytes_per_token, the profile).
# On a machine with an NVIDIA GPU, from the repository root:
#   make install TORCH_SPEC=torch==2.13.0   # PyPI's wheel: the CUDA build
#   deploy/gpu-check.sh [OUT_DIR]          # writes what it printed under OUT_DIR (default gpu-check/)
# Record the results in docs/benchmarks.md with the GPU's name.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
mkdir -p "$out"
nvidia-smi | tee "$out/nvidia-smi.txt"
.venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device: this check needs a GPU'"
RAY_AUTH_MODE=disabled timeout 300 .venv/bin/python -m pytest -q -p no:cacheprovider \
  tests/test_engine.py tests/test_kv_pool.py tests/test_real_model.py \
  "tests/test_peft_methods.py::test_one_mixed_batch_of_all_four_methods_equals_peft_row_by_row" \
  "tests/test_peft_methods.py::test_in_bfloat16_every_method_stays_within_bfloat16s_own_rounding_of_peft" \
  2>&1 | tee "$out/parity.txt"
timeout 240 .venv/bin/promptmux bench engine --quick --device cuda --base-model smollm2-135m-instruct \
  --json "$out/bench-engine.json" 2>&1 | tee "$out/bench-engine.txt"

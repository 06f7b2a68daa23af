#!/usr/bin/env bash
# One prepared check for a lent GPU (about 5 minutes; run from the repository root on the GPU machine):
#   1. network and detector FPS at 640x480 top-1000 for torch fp32, torch fp16 and TensorRT fp16/fp32
#      (benchmarks/gpu_check.py; goal: >= 300 network FPS),
#   2. the exported engine's agreement with fp32 (share of keypoints within 1 px) and the TensorRT test,
#   3. a short fp32 / bf16 / fp16 training step (bench_training.py, 3 steps each, batch 8 at 240x320).
# Results under ${OUT:-benchmarks/results}/ (gpu_check.json, gpu_training.json, gpu_tests.log).
# It needs a Python with a CUDA build of torch and the project installed (the machine may have no registry
# access: PYTHON=... points at a ready interpreter; default .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
mkdir -p "$out"
python=${PYTHON:-.venv/bin/python}
[[ -x "$python" ]] || python=python3
nvidia-smi -L
"$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA in this torch'; print(torch.__version__)"
"$python" -c "import tensorrt; print('tensorrt', tensorrt.__version__)" || echo "tensorrt not installed: its rows will be missing"
timeout 150 "$python" benchmarks/gpu_check.py --output "$out/gpu_check.json"
timeout 60 "$python" -m pytest -q test/test_engines.py -k "tensorrt or onnx_export" 2>&1 | tee "$out/gpu_tests.log" | tail -3
timeout 90 "$python" benchmarks/bench_training.py --device cuda --variants fp32 bf16 fp16 --sizes 8x240x320 \
    --warmup 1 --repeats 3 --out "$out/gpu_training.json"

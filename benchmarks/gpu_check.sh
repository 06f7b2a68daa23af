#!/usr/bin/env bash
# One prepared check for a lent GPU (about 3 minutes on an H200, 2026-11-29; run from the repository root there):
#   1. speed and agreement of every CUDA engine (benchmarks/gpu_check.py): network, detector and the node's frame
#      path FPS at 640x480 top-1000 (x1 and x2.5) and 320x240 top-300; keypoints within 1 px of CPU fp32; TF32;
#   2. the CUDA tests (test/test_cuda.py: fp32 equals the CPU reference, fp16 agreement, auto's log line) and the
#      TensorRT test where tensorrt is installed;
#   3. C3 / MScore of CUDA fp32 and fp16 on the project's benchmark (kp2d-make-hpatches --seed 0, made there);
#   4. a short fp32 / bf16 / fp16 training step (bench_training.py, 3 steps each, batch 8 at 240x320).
# Results under ${OUT:-benchmarks/results}/ (gpu_check.json, gpu_tests.log, gpu_quality.json, gpu_training.json).
# Each step runs even when an earlier one failed; the exit status is the number of failed steps.
# Needs a Python with a CUDA build of torch (PYTHON=..., default .venv/bin/python, else python3). The project runs
# from this checkout (PYTHONPATH). Wheels the machine lacks (kornia for training, a machine without registry
# access) can be put in .whl/ beside this checkout: they are installed into a temporary folder first.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
mkdir -p "$out"
python=${PYTHON:-.venv/bin/python}
[[ -x "$python" ]] || python=python3
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" KP2D_ENGINE_CACHE=${KP2D_ENGINE_CACHE:-/tmp/kp2d_engine_cache}
if compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/kp2d_wheels .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/kp2d_wheels"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA in this torch'; print('torch', torch.__version__)" \
    || exit 1
"$python" -c "import tensorrt; print('tensorrt', tensorrt.__version__)" 2>/dev/null \
    || echo "tensorrt not installed: its rows and test are missing"
failed=0
step() {  # step SECONDS COMMAND...: run one step under a time limit, count it if it fails
    local seconds=$1
    shift
    echo "== $*"
    timeout "$seconds" "$@" || { echo "== FAILED ($?): $*"; failed=$((failed + 1)); }
}
step 170 "$python" benchmarks/gpu_check.py --output "$out/gpu_check.json"
step 90 bash -c "'$python' -m pytest -q -p no:cacheprovider test/test_cuda.py test/test_engines.py -k 'cuda or tensorrt' \
    2>&1 | tee '$out/gpu_tests.log' | tail -4"
step 20 "$python" -m kp2d_model.evaluation.synthetic --out /tmp/kp2d_hp0 --seed 0
step 150 "$python" -m kp2d_model.evaluation.cli --hpatches /tmp/kp2d_hp0 --device cuda --precision fp32 \
    --precision fp16 --resolution 320x240 --resolution 640x480 --input-scale 1 --input-scale 2.5 --quiet \
    --json "$out/gpu_quality.json"
step 100 "$python" benchmarks/bench_training.py --device cuda --variants fp32 bf16 fp16 bf16_channels_last \
    --sizes 8x240x320 --warmup 1 --repeats 3 --out "$out/gpu_training.json"
echo "gpu_check.sh: $failed step(s) failed"
exit "$failed"

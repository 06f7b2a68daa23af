#!/usr/bin/env bash
# CI step: the fidelity tests (our numbers against the original code's fixtures) rerun with torch forced onto
# other CPU kernels, so an assertion that holds only with this machine's float32 rounding fails here, on any
# machine, instead of on someone else's (Intel AMX / AVX-512, AMD, AVX2-only CPUs):
#   ATEN_CPU_CAPABILITY=default   ATen without vectorised kernels
#   ATEN_CPU_CAPABILITY=avx2      ATen's AVX2 kernels (the CPU must have AVX2)
#   ONEDNN_MAX_CPU_ISA=AVX2       oneDNN (convolutions) limited to AVX2: no AVX-512 / AMX
# and the engine tests once more under ONEDNN_MAX_CPU_ISA=AVX2, which OpenVINO's CPU plugin obeys too: an AVX2-only
# CPU for every engine but ONNX Runtime (its MLAS kernels ignore the cap), where "auto" must pick fp32 and INT8 on
# AVX2's kernels must still agree with fp32.
set -euo pipefail
cd "$(dirname "$0")/.."
FIDELITY_TESTS=(
    test/test_networks_reference.py
    test/test_loss_reference.py
    test/test_metrics_reference.py
    test/test_evaluate_reference.py
    test/test_evaluate_cli.py
    test/test_detector.py
    test/test_default_model.py
)
failed=()
for setting in ATEN_CPU_CAPABILITY=default ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2; do
    echo "[isa] $setting: ${FIDELITY_TESTS[*]}"
    if ! env "$setting" KP2D_REQUIRE_FIXTURES=1 .venv/bin/python -m pytest -q -p no:cacheprovider "${FIDELITY_TESTS[@]}"; then
        failed+=("$setting")
    fi
done
echo "[isa] ONEDNN_MAX_CPU_ISA=AVX2: test/test_engines.py"
if ! env ONEDNN_MAX_CPU_ISA=AVX2 KP2D_REQUIRE_FIXTURES=1 .venv/bin/python -m pytest -q -p no:cacheprovider test/test_engines.py; then
    failed+=("ONEDNN_MAX_CPU_ISA=AVX2 (engines)")
fi
if ((${#failed[@]})); then
    echo "[isa] FAILED with: ${failed[*]}" >&2
    exit 1
fi
echo "[isa] passed on all three kernel settings (and the engines on AVX2)"

#!/usr/bin/env bash
# Create or update .venv/ with the pinned dependencies. Idempotent: a stamp holding the hash of the
# requirement files makes the second run a no-op (about a second).
#
# torch: on a machine without an NVIDIA GPU this pins torch==2.13.0 (a CPU build that installs from
# local disk on the project's CI machines); with a GPU, pip picks the default (CUDA) build of the
# current release. Override with KP2D_TORCH="torch==X.Y.Z" (or any pip requirement).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
STAMP="$VENV/.kp2d-setup"
wanted=$(cat requirements/*.txt scripts/setup_venv.sh setup.py | sha256sum | cut -d' ' -f1)
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$wanted" ]]; then
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "[setup] creating $VENV"
    python3 -m venv "$VENV"
fi

torch_spec=${KP2D_TORCH:-}
if [[ -z "$torch_spec" ]]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        torch_spec="torch"
    else
        torch_spec="torch==2.13.0"
    fi
fi
echo "[setup] installing $torch_spec and the pinned requirements into $VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "$torch_spec"
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
    -r requirements/base.txt -r requirements/engines.txt -r requirements/dev.txt -r requirements/ros.txt
# The project itself (kp2d_model + its command-line tools), editable so tests see the working tree.
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
echo "$wanted" > "$STAMP"
echo "[setup] done"

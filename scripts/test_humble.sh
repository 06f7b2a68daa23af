#!/usr/bin/env bash
# CI step: the whole suite on Ubuntu 22.04's Python stack (ROS 2 Humble): Python 3.10, NumPy 1.21.5, OpenCV 4.5.4 and
# the other dependencies of requirements/humble.txt, in a venv of its own (.venv/humble, made once per clone).
# torch 2.13.0 there is PyPI's build for Python 3.10 (a CUDA build that runs on the CPU; ~4 GB with its libraries).
# The ROS nodes run on the Kilted wheels of requirements/ros.txt built for Python 3.10 (PyPI has no Humble rclpy),
# with kp2d_ros_msgs built against them into .venv/humble/ros/install.
# Python 3.10 comes from PATH or pyenv; a machine without one skips the step and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv/humble
NUMPY=1.21.5
OPENCV=4.5.4

python310=
for candidate in "$(command -v python3.10 || true)" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10*/bin/python3.10; do
    # a pyenv shim on PATH exists but fails unless 3.10 is selected: take the first interpreter that runs
    if [[ -x "$candidate" ]] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
        python310=$candidate
        break
    fi
done
if [[ -z "$python310" ]]; then
    echo "[humble] SKIPPED: no Python 3.10 on this machine (apt install python3.10, or pyenv install 3.10)"
    exit 0
fi

stamp=$(cat requirements/humble.txt requirements/ros.txt scripts/test_humble.sh setup.py | sha256sum | cut -d' ' -f1)
if [[ ! -f "$VENV/.complete" || "$(cat "$VENV/.complete")" != "$stamp" ]]; then
    echo "[humble] creating $VENV with $("$python310" --version) (torch 2.13.0 for Python 3.10 is a ~4 GB download)"
    rm -rf "$VENV"
    "$python310" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade "pip==25.3" "setuptools==80.9.0"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "torch==2.13.0" \
        -r requirements/humble.txt -r requirements/ros.txt
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
    echo "$stamp" > "$VENV/.complete"
fi
versions=$("$VENV/bin/python" -c 'import sys, cv2, numpy; print(sys.version_info[:2], numpy.__version__, cv2.__version__)')
if [[ "$versions" != "(3, 10) $NUMPY $OPENCV" ]]; then
    echo "[humble] FAILED: expected Python 3.10, NumPy $NUMPY, OpenCV $OPENCV; got $versions" >&2
    exit 1
fi
KP2D_VENV="$(pwd)/$VENV" KP2D_ROS_OUT="$(pwd)/$VENV/ros" bash scripts/build_ros.sh
echo "[humble] Python 3.10, NumPy $NUMPY, OpenCV $OPENCV: the suite"
selection=("$@")
if ((${#selection[@]} == 0)); then
    selection=(test)
fi
KP2D_VENV="$(pwd)/$VENV" KP2D_OVERLAY="$(pwd)/$VENV/ros/install" KP2D_REQUIRE_FIXTURES=1 \
    bash scripts/with_ros_env.sh "$VENV/bin/python" -m pytest -q -p no:cacheprovider -rfEs "${selection[@]}"

#!/usr/bin/env bash
# CI step: the tests on the Python stack ROS 2 users have, in place of the pins. Ubuntu 24.04 (Jazzy, Kilted)
# ships NumPy 1.26.4 and OpenCV 4.6.0; both are installed with `pip install --target` into an overlay folder put
# first on PYTHONPATH, so they shadow the venv's pins (NumPy 2, OpenCV 5) for this run only. Whatever else the
# venv pins (torch, rclpy, ...) stays as it is. Then the library and ROS-glue tests run in the ROS environment
# (the node processes inherit PYTHONPATH, so they run on the overlay too).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
NUMPY=${KP2D_STACK_NUMPY:-1.26.4}
OPENCV=${KP2D_STACK_OPENCV:-4.6.0.66}
OVERLAY="$VENV/stacks/numpy$NUMPY-opencv$OPENCV"

if [[ ! -f "$OVERLAY/.complete" ]]; then
    echo "[stacks] installing numpy==$NUMPY opencv-python-headless==$OPENCV into $OVERLAY"
    rm -rf "$OVERLAY"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --target "$OVERLAY" "numpy==$NUMPY" "opencv-python-headless==$OPENCV"
    touch "$OVERLAY/.complete"
fi
export PYTHONPATH="$(pwd)/$OVERLAY${PYTHONPATH:+:$PYTHONPATH}"
versions=$("$VENV/bin/python" -c 'import cv2, numpy; print(numpy.__version__, cv2.__version__)')
if [[ "$versions" != "$NUMPY ${OPENCV%.*}" ]]; then
    echo "[stacks] FAILED: the overlay is not in effect (numpy, cv2 = $versions)" >&2
    exit 1
fi
echo "[stacks] numpy $NUMPY, OpenCV ${OPENCV%.*}: library and ROS-glue tests"
# Everything but the trainer's own tests (torch-side; its image loading and augmentation are in test_data /
# test_augmentation, which run here). Arguments replace the selection, e.g. a single test file.
selection=("$@")
if ((${#selection[@]} == 0)); then
    selection=(test --ignore=test/test_training.py --ignore=test/test_distributed_training.py)
fi
KP2D_REQUIRE_FIXTURES=1 bash scripts/with_ros_env.sh "$VENV/bin/python" -m pytest -q -p no:cacheprovider -rfE \
    "${selection[@]}"

#!/usr/bin/env bash
# CI step: the whole suite on an Ubuntu release's Python stack, the one a ROS 2 user of that release has, in a venv
# of its own (.venv/<stack>, made once per clone):
#
#   humble  Ubuntu 22.04 (ROS 2 Humble):          Python 3.10, NumPy 1.21.5, OpenCV 4.5.4  requirements/humble.txt
#   jazzy   Ubuntu 24.04 (ROS 2 Jazzy, Kilted):   Python 3.12, NumPy 1.26.4, OpenCV 4.6.0  requirements/jazzy.txt
#
# torch 2.13.0 there is PyPI's build for that Python (a CUDA build that runs on the CPU; ~4 GB with its libraries).
# The ROS nodes run on the Kilted wheels of requirements/ros.txt built for that Python (PyPI has no Humble or Jazzy
# rclpy), with kp2d_ros_msgs built against them into .venv/<stack>/ros/install.
# The Python comes from PATH or pyenv; a machine without it skips the step and says so.
#
#   bash scripts/test_ubuntu_stack.sh humble|jazzy [pytest arguments, default: test]
set -euo pipefail
cd "$(dirname "$0")/.."
STACK=${1:-}
shift || true
case "$STACK" in
    humble) PYTHON_VERSION=3.10 NUMPY=1.21.5 OPENCV=4.5.4 ;;
    jazzy) PYTHON_VERSION=3.12 NUMPY=1.26.4 OPENCV=4.6.0 ;;
    *)
        echo "usage: $0 humble|jazzy [pytest arguments]" >&2
        exit 2
        ;;
esac
VENV=.venv/$STACK
REQUIREMENTS=requirements/$STACK.txt

interpreter=
for candidate in "$(command -v "python$PYTHON_VERSION" || true)" \
    "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$PYTHON_VERSION".*/bin/python"$PYTHON_VERSION"; do
    # a pyenv shim on PATH exists but fails unless that version is selected: take the first interpreter that runs
    if [[ -x "$candidate" ]] && "$candidate" -c "import sys; assert '%d.%d' % sys.version_info[:2] == '$PYTHON_VERSION'" 2>/dev/null; then
        interpreter=$candidate
        break
    fi
done
if [[ -z "$interpreter" ]]; then
    echo "[$STACK] SKIPPED: no Python $PYTHON_VERSION on this machine (apt install python$PYTHON_VERSION, or pyenv install $PYTHON_VERSION)"
    exit 0
fi

stamp=$(cat "$REQUIREMENTS" requirements/ros.txt scripts/test_ubuntu_stack.sh setup.py | sha256sum | cut -d' ' -f1)
if [[ ! -f "$VENV/.complete" || "$(cat "$VENV/.complete")" != "$stamp" ]]; then
    echo "[$STACK] creating $VENV with $("$interpreter" --version) (torch 2.13.0 for it is a ~4 GB download)"
    rm -rf "$VENV"
    "$interpreter" -m venv "$VENV"
    # setuptools: left to the next line's resolver (torch wants >= 77, colcon-core < 80: 79.0.1 today)
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade "pip==25.3"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "torch==2.13.0" \
        -r "$REQUIREMENTS" -r requirements/ros.txt
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
    echo "$stamp" > "$VENV/.complete"
fi
versions=$("$VENV/bin/python" -c 'import sys, cv2, numpy; print("%d.%d" % sys.version_info[:2], numpy.__version__, cv2.__version__)')
if [[ "$versions" != "$PYTHON_VERSION $NUMPY $OPENCV" ]]; then
    echo "[$STACK] FAILED: expected Python $PYTHON_VERSION, NumPy $NUMPY, OpenCV $OPENCV; got $versions" >&2
    exit 1
fi
KP2D_VENV="$(pwd)/$VENV" KP2D_ROS_OUT="$(pwd)/$VENV/ros" bash scripts/build_ros.sh
echo "[$STACK] Python $PYTHON_VERSION, NumPy $NUMPY, OpenCV $OPENCV: the suite"
selection=("$@")
if ((${#selection[@]} == 0)); then
    selection=(test)
fi
KP2D_VENV="$(pwd)/$VENV" KP2D_OVERLAY="$(pwd)/$VENV/ros/install" KP2D_REQUIRE_FIXTURES=1 \
    bash scripts/with_ros_env.sh "$VENV/bin/python" -m pytest -q -p no:cacheprovider -rfEs "${selection[@]}"

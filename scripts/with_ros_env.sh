#!/usr/bin/env bash
# Run a command in the environment `ros2 run` would give it: the venv's ROS 2 wheels as the underlay and the
# colcon install/ overlay (scripts/build_ros.sh) sourced on top.
#
#   AMENT_PREFIX_PATH / CMAKE_PREFIX_PATH  the venv (the wheels' prefix), then install/<pkg> (local_setup.bash)
#   LD_LIBRARY_PATH                        the venv's lib/ and ros_*.libs, then install/<pkg>/lib
#   PYTHONPATH                             install/<pkg>/lib/python3.X/site-packages (kp2d_ros_msgs, kp2d_ros)
#   RMW_IMPLEMENTATION                     rmw_fastrtps_cpp (the one the wheels provide)
#   ROS_AUTOMATIC_DISCOVERY_RANGE          LOCALHOST: nodes only discover peers on this machine (loopback)
#   ROS_DOMAIN_ID                          kept if set, else 0; the tests pick their own per run (test/ros_helpers.py)
# Variables already set by the caller win (except the paths, which are extended). KP2D_OVERLAY names another
# colcon install/ to source instead of the repository's, KP2D_CWD another working directory, KP2D_VENV another
# venv (scripts/test_ubuntu_stack.sh).
set -eo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${KP2D_VENV:-$ROOT/.venv}
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "with_ros_env: $VENV missing: run 'make setup' first" >&2
    exit 1
fi

prepend() {  # prepend VAR DIR: put DIR first in the colon-separated VAR, without duplicates
    local name=$1 dir=$2 current=${!1:-}
    current=":${current}:"
    current=${current//:$dir:/:}
    current=${current#:}
    current=${current%:}
    export "$name=$dir${current:+:$current}"
}

prepend PATH "$VENV/bin"
prepend AMENT_PREFIX_PATH "$VENV"
prepend CMAKE_PREFIX_PATH "$VENV"
for libs in "$VENV"/lib/python3*/site-packages/ros_*.libs; do
    [[ -d "$libs" ]] && prepend LD_LIBRARY_PATH "$libs"
done
prepend LD_LIBRARY_PATH "$VENV/lib"

# KP2D_OVERLAY: another colcon install/ to source instead of the repository's (scripts/test_workspace.sh).
OVERLAY=${KP2D_OVERLAY:-$ROOT/install}
if [[ -f "$OVERLAY/local_setup.bash" ]]; then
    # shellcheck disable=SC1091
    source "$OVERLAY/local_setup.bash"
else
    echo "with_ros_env: $OVERLAY/ not built (run 'make ros'); running without the overlay" >&2
fi

export RMW_IMPLEMENTATION=${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-0}
# Tells the tests they run in the full ROS environment: missing ROS pieces are then failures, not skips.
export KP2D_ROS_ENV=1
cd "${KP2D_CWD:-$ROOT}"
exec "$@"

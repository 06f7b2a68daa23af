#!/usr/bin/env bash
# Build kp2d_ros_msgs and kp2d_ros with colcon into install/ (filled in by the ROS 2 work).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "[ros] nothing to build yet"

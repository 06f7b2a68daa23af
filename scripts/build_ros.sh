#!/usr/bin/env bash
# Build the ROS 2 packages kp2d_ros_msgs (ament_cmake, rosidl) and kp2d_ros (ament_python) with colcon
# into install/, using the ROS 2 Kilted wheels of .venv/ as the underlay (docs/ros.md). KP2D_VENV names another
# venv and KP2D_ROS_OUT another folder for build/, install/ and log/ (scripts/test_ubuntu_stack.sh).
#
# Idempotent and quick the second time: a stamp in install/ holds the hash of every build input (the
# interface package, package.xml, setup.py/setup.cfg, launch/config file names and contents, the venv's
# set-up stamp, this script); when it matches, nothing is rebuilt. kp2d_ros is built with
# --symlink-install, so editing its Python modules needs no rebuild.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${KP2D_VENV:-$ROOT/.venv}
OUT=${KP2D_ROS_OUT:-$ROOT}
PYTHON="$VENV/bin/python"
if [[ ! -x "$PYTHON" ]]; then
    echo "[ros] $PYTHON missing: run 'make setup' first" >&2
    exit 1
fi

# Pitfall 1 (docs: ros2-from-pypi.md): the wheels' CMake export files name the include directories of the
# machine they were built on (/opt/python/cp3XX-cp3XX/...). Point them at the venv, whose include/python3.X
# gets the interpreter's real headers. Cheap to re-check every time (pip may reinstall a wheel).
fix_wheel_cmake_paths() {
    local include_dir py_include files
    include_dir=$("$PYTHON" -c 'import sys; print(f"include/python{sys.version_info[0]}.{sys.version_info[1]}")')
    py_include=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    mkdir -p "$VENV/$include_dir"
    if [[ ! -e "$VENV/$include_dir/Python.h" ]]; then
        if [[ ! -f "$py_include/Python.h" ]]; then
            echo "[ros] Python headers not found in $py_include (install python3-dev)" >&2
            exit 1
        fi
        for entry in "$py_include"/*; do
            [[ -e "$VENV/$include_dir/$(basename "$entry")" ]] || ln -s "$entry" "$VENV/$include_dir/"
        done
    fi
    mapfile -t files < <(grep -rlE '/opt/python/cp[0-9]+-cp[0-9]+' "$VENV/share" --include='*.cmake' 2>/dev/null || true)
    if ((${#files[@]})); then
        echo "[ros] pointing ${#files[@]} CMake export files of the ROS wheels at $VENV"
        sed -i -E "s#/opt/python/cp[0-9]+-cp[0-9]+#$VENV#g" "${files[@]}"
    fi
    # The wheels were built with NumPy 2 (headers in numpy/_core/include); NumPy 1.x keeps them in numpy/core.
    local numpy_include
    numpy_include=$("$PYTHON" -c 'import numpy; print(numpy.get_include())')
    mapfile -t files < <(grep -rlE 'site-packages/numpy/_?core/include' "$VENV/share" --include='*.cmake' 2>/dev/null || true)
    if ((${#files[@]})) && ! grep -q "$numpy_include" "${files[@]}"; then
        echo "[ros] pointing ${#files[@]} CMake export files at NumPy's headers in $numpy_include"
        sed -i -E "s#[^;\"]*site-packages/numpy/_?core/include#$numpy_include#g" "${files[@]}"
    fi
}
fix_wheel_cmake_paths

inputs_hash() {
    {
        find kp2d_ros_msgs launch config resource -type f -print0 | sort -z | xargs -0 sha256sum
        sha256sum package.xml setup.py setup.cfg scripts/build_ros.sh
        cat "$VENV/.kp2d-setup" "$VENV/.complete" 2>/dev/null || true
        echo "$ROOT"
    } | sha256sum | cut -d' ' -f1
}
STAMP=$OUT/install/.kp2d-build-stamp
wanted=$(inputs_hash)
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$wanted" && -d "$OUT/install/kp2d_ros_msgs" && -x "$OUT/install/kp2d_ros/lib/kp2d_ros/detector" ]]; then
    echo "[ros] $OUT/install/ is up to date"
    exit 0
fi

echo "[ros] colcon build: kp2d_ros_msgs, kp2d_ros -> $OUT/install/"
rm -f "$STAMP"
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export PATH="$VENV/bin:$PATH"
# Pitfall 5: colcon does not look inside a package, so the nested interface package is named explicitly.
# Pitfall 2: BUILD_TESTING=OFF (the ament linters are not installed here).
"$VENV/bin/colcon" --log-base "$OUT/log" build \
    --base-paths . kp2d_ros_msgs \
    --build-base "$OUT/build" --install-base "$OUT/install" \
    --symlink-install \
    --event-handlers console_cohesion- summary+ \
    --cmake-args -DBUILD_TESTING=OFF "-DPython3_EXECUTABLE=$PYTHON" -DCMAKE_BUILD_TYPE=Release
# kp2d-* commands installed there by an older setup.py (now only the ROS executables go to lib/kp2d_ros).
rm -f "$OUT"/install/kp2d_ros/lib/kp2d_ros/kp2d-*
# Installed entry points must run with the venv's interpreter (it holds torch, kp2d_model and rclpy).
for exe in "$OUT"/install/kp2d_ros/lib/kp2d_ros/*; do
    head -1 "$exe" | grep -q "^#!$VENV/bin/python" || { echo "[ros] $exe does not use $PYTHON" >&2; exit 1; }
done
echo "$wanted" > "$STAMP"
echo "[ros] done"

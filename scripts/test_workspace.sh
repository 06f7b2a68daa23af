#!/usr/bin/env bash
# CI step: the package as a ROS 2 user builds and tests it (docs/ros.md route (a)). A throwaway workspace gets
# the committed tree (`git archive HEAD`) in src/kp2d, then, with the venv's colcon and ROS 2 wheels as the
# underlay:
#   colcon build --base-paths src src/kp2d/kp2d_ros_msgs
#   colcon test --packages-select kp2d_ros
#   colcon test-result
# and requires at least MIN_TESTS tests, 0 errors, 0 failures (skips with a reason are fine: there is no
# ../shared beside src/kp2d, so the reference-fixture tests skip). Uncommitted changes are not in the archive.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
MIN_TESTS=${KP2D_WORKSPACE_MIN_TESTS:-200}

WS=$(mktemp -d "${TMPDIR:-/tmp}/kp2d_workspace.XXXXXX")
cleanup() { rm -rf "$WS"; }
trap cleanup EXIT
fail() {
    echo "[workspace] FAILED: $1" >&2
    exit 1
}

mkdir -p "$WS/src/kp2d"
git archive HEAD | tar -x -C "$WS/src/kp2d" || fail "git archive HEAD (not a git checkout?)"
echo "[workspace] $WS/src/kp2d from git archive $(git rev-parse --short HEAD)"

in_ws() {  # the venv underlay (scripts/with_ros_env.sh) with the workspace's install/ as the overlay, cwd = $WS
    KP2D_OVERLAY="$WS/install" KP2D_CWD="$WS" bash "$ROOT/scripts/with_ros_env.sh" "$@"
}
# Pitfall 2 (ros2-from-pypi.md): the ament linters are not installed here, so the interface package is built
# with BUILD_TESTING=OFF; Python3_EXECUTABLE is the venv's interpreter (as scripts/build_ros.sh).
in_ws "$VENV/bin/colcon" build --base-paths src src/kp2d/kp2d_ros_msgs \
    --event-handlers console_cohesion- summary+ \
    --cmake-args -DBUILD_TESTING=OFF "-DPython3_EXECUTABLE=$VENV/bin/python" >"$WS/build.log" 2>&1 \
    || { tail -50 "$WS/build.log"; fail "colcon build (log above)"; }
echo "[workspace] colcon build: $(grep -E '^Summary' "$WS/build.log" || echo done)"

in_ws "$VENV/bin/colcon" test --packages-select kp2d_ros --event-handlers console_cohesion- summary+ \
    >"$WS/test.log" 2>&1 || { tail -80 "$WS/test.log"; fail "colcon test (log above)"; }
set +e
in_ws "$VENV/bin/colcon" test-result --all --verbose >"$WS/result.log" 2>&1
result_code=$?
set -e
summary=$(grep -E '^Summary: ' "$WS/result.log" | tail -1)
echo "[workspace] colcon test-result: ${summary:-no summary}"
tests=$(sed -nE 's/^Summary: ([0-9]+) tests?.*/\1/p' <<<"$summary")
if ((result_code != 0)) || [[ -z "$tests" ]] || ((tests < MIN_TESTS)) || ! grep -qE ' 0 errors, 0 failures' <<<"$summary"; then
    cat "$WS/result.log"
    tail -80 "$WS/test.log"
    fail "colcon test-result: want >= $MIN_TESTS tests, 0 errors, 0 failures (exit $result_code)"
fi
# Why tests skipped (counts per reason), so a CI log shows that only the expected ones did.
"$VENV/bin/python" - "$WS/build/kp2d_ros/pytest.xml" <<'PY' || true
import collections, re, sys, xml.etree.ElementTree as ET
reasons = collections.Counter(
    re.sub(r"/\S*/kp2d_workspace\.\w+", "<ws>", element.get("message", ""))[:150]
    for element in ET.parse(sys.argv[1]).iter("skipped")
)
for reason, count in reasons.most_common():
    print(f"[workspace]   skipped {count:3d}: {reason}")
PY
echo "[workspace] passed"

"""``ros2 run kp2d_ros track_bench [args]``: the sequence benchmark command line ``kp2d_model.track_bench.cli``."""

from __future__ import annotations

import sys

from kp2d_ros.library_cli import run_library_cli


def main(argv: list[str] | None = None) -> int:
    """``kp2d_model.track_bench.cli.main`` on ``argv`` (default: sys.argv) without ``--ros-args ...``."""
    return run_library_cli("kp2d_model.track_bench.cli", argv)


if __name__ == "__main__":
    sys.exit(main())

"""``ros2 run kp2d_ros train [args]``: the kp2d_model training command line ``kp2d_model.training.cli``."""

from __future__ import annotations

import sys

from kp2d_ros.library_cli import run_library_cli


def main(argv: list[str] | None = None) -> int:
    """``kp2d_model.training.cli.main`` on ``argv`` (default: sys.argv) without ``--ros-args ...``."""
    return run_library_cli("kp2d_model.training.cli", argv)


if __name__ == "__main__":
    sys.exit(main())

"""``ros2 run kp2d_ros track_bench [args]``: the sequence benchmark command line ``kp2d_model.track_bench.cli``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Forward ``argv`` (default: sys.argv) to ``kp2d_model.track_bench.cli.main``, without ``--ros-args ...``."""
    from kp2d_model.track_bench.cli import main as cli_main  # imported here: torch loads only when the tool runs

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--ros-args" in argv:
        argv = argv[: argv.index("--ros-args")]
    return int(cli_main(argv) or 0)


if __name__ == "__main__":
    sys.exit(main())

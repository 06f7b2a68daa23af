"""Run a kp2d_model command line from a ROS 2 executable (``ros2 run kp2d_ros train|evaluate|track_bench``)."""

from __future__ import annotations

import importlib
import sys


def run_library_cli(module: str, argv: list[str] | None = None) -> int:
    """Forward ``argv`` (default: sys.argv) to ``<module>.main``, without ``--ros-args ...`` (which ros2 run and
    launch append). The module is imported here, so torch loads only when the tool runs."""
    cli_main = importlib.import_module(module).main
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--ros-args" in argv:
        argv = argv[: argv.index("--ros-args")]
    return int(cli_main(argv) or 0)

"""The ``main`` of a kp2d node executable (``detector``, ``stereo_detector``): start, spin, stop cleanly."""

from __future__ import annotations

from collections.abc import Callable

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from kp2d_model import CheckpointError

__all__ = ["run_node"]


def run_node(make_node: Callable[[], Node], logger_name: str, args: list[str] | None = None) -> int:
    """Build the node with ``make_node`` and spin it until Ctrl-C or shutdown: exit status 0.

    A configuration problem at start-up (no model, an invalid parameter) is one fatal log line naming it, and
    exit status 2; Ctrl-C is a normal stop, without a traceback.
    """
    rclpy.init(args=args)
    node = None
    try:
        node = make_node()
        rclpy.spin(node)
    except (CheckpointError, ValueError, ParameterException) as error:
        rclpy.logging.get_logger(logger_name).fatal(f"cannot start: {error}")
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0

"""The ``multi_detector`` executable: one ``detector`` node per camera in ONE process, sharing one model load.

rclpy has no composable-node container (component containers are rclcpp's; the rclpy composition API,
ros2/rclpy#575, is not released), so this is the Python equivalent of composing N detectors into one
container: a ``kp2d_multi_detector`` node reads the camera list (parameter ``cameras``, e.g. ``"cam0 cam1"``) and
the detector's model parameters, builds one KeypointDetector, and starts one :class:`DetectorNode` per camera in
namespace ``<namespace>/<camera>`` (topics ``<camera>/image``, ``<camera>/camera_info``; remap ``image`` /
``camera_info`` as for one detector, e.g. ``-r image:=image_raw``). Each node gets a
:class:`kp2d_ros.shared_detector.SharedDetector` (a lock around the shared network; each node keeps its own
runtime parameters), so frames of several cameras are processed one at a time by the one model (this saves the
network's memory and start-up N-1 times, not compute). A ``MultiThreadedExecutor`` serves all nodes.
Parameters given with ``-p``/``--params-file`` reach every node of the process (as each separate detector).
"""

from __future__ import annotations

import sys
import threading

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node

from kp2d_model import CheckpointError, KeypointDetector
from kp2d_ros.camera_list import parse_cameras
from kp2d_ros.detector_node import PARAMETERS, DetectorNode, build_detector
from kp2d_ros.shared_detector import MODEL_PARAMETERS, SharedDetector

__all__ = ["main", "start_detectors"]


def start_detectors(manager: Node) -> tuple[KeypointDetector, list[DetectorNode]]:
    """The shared detector and one DetectorNode per camera of ``manager``'s ``cameras`` parameter."""
    cameras = parse_cameras(manager.get_parameter("cameras").value)
    detector = build_detector({name: manager.get_parameter(name).value for name in MODEL_PARAMETERS})
    lock = threading.Lock()
    base = manager.get_namespace().rstrip("/")
    nodes: list[DetectorNode] = []
    try:
        for camera in cameras:
            nodes.append(DetectorNode(detector=SharedDetector(detector, lock), namespace=f"{base}/{camera}"))
    except Exception:
        for node in nodes:
            node.destroy_node()
        raise
    return detector, nodes


def main(args: list[str] | None = None) -> int:
    """``ros2 run kp2d_ros multi_detector --ros-args -p cameras:='cam0 cam1' [-r image:=image_raw ...]``."""
    rclpy.init(args=args)
    manager, nodes = None, []
    try:
        manager = Node("kp2d_multi_detector")
        manager.declare_parameter(
            "cameras",
            "",
            ParameterDescriptor(
                description="camera namespaces, space or comma separated (one detector node each)", read_only=True
            ),
        )
        for name in MODEL_PARAMETERS:
            default, description, extra = PARAMETERS[name]
            manager.declare_parameter(name, default, ParameterDescriptor(description=description, **extra))
        detector, nodes = start_detectors(manager)
        manager.get_logger().info(
            f"one model load shared by {len(nodes)} detectors: "
            f"{', '.join(node.get_fully_qualified_name() for node in nodes)} (device {detector.device})"
        )
        executor = MultiThreadedExecutor()
        for node in (manager, *nodes):
            executor.add_node(node)
        executor.spin()
    except (CheckpointError, ValueError, ParameterException) as error:
        rclpy.logging.get_logger("kp2d_multi_detector").fatal(f"cannot start: {error}")
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for node in nodes:
            node.destroy_node()
        if manager is not None:
            manager.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

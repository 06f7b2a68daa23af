"""launch/detector.launch.py and launch/demo.launch.py with the real ROS 2 launch system.

``launch``/``launch_ros`` (and the ``ros2`` command) come with a ROS 2 installation and have no PyPI wheels, so
on the PyPI route these tests skip with that reason; in a ROS 2 workspace they run.
"""

from __future__ import annotations

import importlib.util
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from ros_helpers import (
    DEFAULT_MODEL,
    REPO_ROOT,
    RosTestNode,
    is_stamp,
    require_ros,
    sensor_qos,
    stamp,
    unique_namespace,
)

pytestmark = pytest.mark.integration
require_ros()
REASON = "ROS 2 launch / launch_ros not installed (no PyPI wheels; they come with a ROS 2 installation)"
pytest.importorskip("launch.actions", reason=REASON)
pytest.importorskip("launch_ros.actions", reason=REASON)

from launch.actions import DeclareLaunchArgument  # noqa: E402

from launch import LaunchDescription  # noqa: E402


def load_description(name: str) -> LaunchDescription:
    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), REPO_ROOT / "launch" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


def declared(description: LaunchDescription) -> set[str]:
    return {entity.name for entity in description.entities if isinstance(entity, DeclareLaunchArgument)}


def test_detector_launch_declares_its_arguments():
    expected = {"image", "camera_info", "model", "device", "params_file", "namespace", "use_camera_info", "debug_image"}
    assert expected <= declared(load_description("detector.launch.py"))


def test_demo_launch_declares_its_arguments():
    assert {"model", "device", "source", "rate", "num_frames"} <= declared(load_description("demo.launch.py"))


def test_demo_forwards_every_detector_argument_it_sets_and_launch_files_do_not_colour_logs():
    """`--show-args` of demo.launch.py lists the included detector's arguments: each one the demo sets must be
    declared by the demo and forwarded (a value given on the command line takes effect), not silently fixed."""
    from launch.actions import IncludeLaunchDescription
    from launch_ros.actions import Node

    from launch import LaunchContext

    demo = load_description("demo.launch.py")
    include = next(entity for entity in demo.entities if isinstance(entity, IncludeLaunchDescription))
    forwarded = dict(include.launch_arguments)
    assert {"namespace", "image", "camera_info", "use_camera_info", "geometry", "image_qos"} <= set(forwarded)
    assert set(forwarded) <= declared(demo)
    context = LaunchContext()  # what `ros2 launch kp2d_ros demo.launch.py name:=value` gives the include
    context.launch_configurations.update({name: f"given {name}" for name in forwarded})
    for name, value in forwarded.items():
        assert value.perform(context) == f"given {name}", f"{name} is not forwarded from the command line"
    for description in (demo, load_description("detector.launch.py")):
        for node in (entity for entity in description.entities if isinstance(entity, Node)):
            emulate_tty = [value for key, value in vars(node).items() if key.endswith("__emulate_tty")]
            assert emulate_tty == [False], f"{node}: emulate_tty {emulate_tty} (colour codes in log files)"


@pytest.mark.skipif(shutil.which("ros2") is None, reason="the ros2 command (ros2cli) is not installed")
def test_detector_launch_runs_the_node_on_the_remapped_image_topic(reference_dir, tmp_path):
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from kp2d_ros.camera_sim import image_message
    from kp2d_ros_msgs.msg import Keypoints

    namespace = unique_namespace("launch")
    model = [] if DEFAULT_MODEL.is_file() else [f"model:={reference_dir / 'v4_reference.ckpt'}"]
    log = open(tmp_path / "launch.log", "wb")  # noqa: SIM115
    launch = subprocess.Popen(
        ["ros2", "launch", "kp2d_ros", "detector.launch.py", f"namespace:={namespace}",
         f"image:={namespace}/camera/image_raw", "device:=cpu", *model],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    ros = RosTestNode()
    try:
        keypoints = ros.subscribe(Keypoints, f"{namespace}/kp2d_detector/keypoints")
        publisher = ros.publisher(Image, f"{namespace}/camera/image_raw", sensor_qos())
        ros.wait_for_subscribers(publisher, timeout=120)
        image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
        for second in range(1, 20):
            publisher.publish(image_message(image, "bgr8", 3, Header(stamp=stamp(float(second)))))
            if keypoints.snapshot():
                break
            time.sleep(1.0)
        msg = keypoints.wait_for(lambda m: True, 60, "keypoints through the launched node")
        assert len(msg.x) > 0 and msg.header.stamp.sec >= 1 and is_stamp(msg.header.stamp, msg.header.stamp.sec)
    finally:
        ros.close()
        launch.send_signal(signal.SIGINT)
        try:
            launch.wait(20)
        except subprocess.TimeoutExpired:
            launch.kill()
        log.close()

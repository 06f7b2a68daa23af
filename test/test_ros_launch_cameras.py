"""launch/stereo.launch.py and launch/multi_camera.launch.py with the real ROS 2 launch system.

``launch``/``launch_ros`` have no PyPI wheels: on the PyPI route these tests skip with that reason; where they are
installed the launch files are parsed, and run by a real ``launch.LaunchService`` (what ``ros2 launch`` runs) on
the installed copies (found through the ament index, as ``ros2 launch kp2d_ros <file>`` finds them).
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from ros_helpers import DEFAULT_MODEL, REPO_ROOT, RosTestNode, require_ros, sensor_qos, stamp, unique_namespace

pytestmark = pytest.mark.integration
require_ros()
REASON = "ROS 2 launch / launch_ros not installed (no PyPI wheels; they come with a ROS 2 installation)"
pytest.importorskip("launch.actions", reason=REASON)
pytest.importorskip("launch_ros.actions", reason=REASON)

from launch.actions import DeclareLaunchArgument, GroupAction, OpaqueFunction  # noqa: E402
from launch_ros.actions import Node  # noqa: E402

from launch import LaunchContext, LaunchDescription  # noqa: E402

# `ros2 launch PACKAGE FILE name:=value ...` without ros2cli: include the installed file in a LaunchService.
RUN_LAUNCH = """
import sys
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription, LaunchService
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
path = get_package_share_directory("kp2d_ros") + "/launch/" + sys.argv[1]
arguments = [argument.split(":=", 1) for argument in sys.argv[2:]]
service = LaunchService()
service.include_launch_description(
    LaunchDescription([IncludeLaunchDescription(PythonLaunchDescriptionSource(path), launch_arguments=arguments)])
)
sys.exit(service.run())
"""


def load_description(name: str) -> LaunchDescription:
    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), REPO_ROOT / "launch" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


def declared(description: LaunchDescription) -> set[str]:
    return {entity.name for entity in description.entities if isinstance(entity, DeclareLaunchArgument)}


def test_stereo_and_multi_camera_launch_declare_their_arguments():
    assert {"camera", "left_image", "right_image", "model", "device", "precision"} <= declared(
        load_description("stereo.launch.py")
    )
    assert {"cameras", "shared_process", "model", "device", "precision", "image"} <= declared(
        load_description("multi_camera.launch.py")
    )


def multi_camera_nodes(**values: str) -> list[Node]:
    description = load_description("multi_camera.launch.py")
    context = LaunchContext()
    context.launch_configurations.update(
        {
            entity.name: entity.default_value[0].perform(context) if entity.default_value else ""
            for entity in description.entities
            if isinstance(entity, DeclareLaunchArgument)
        }  # fmt: skip
    )
    context.launch_configurations.update(values)
    group = next(entity for entity in description.entities if isinstance(entity, GroupAction))
    function = next(entity for entity in group.get_sub_entities() if isinstance(entity, OpaqueFunction))
    return function.execute(context)


def test_multi_camera_launch_is_one_shared_process_or_one_detector_per_camera():
    (shared,) = multi_camera_nodes(cameras="front, rear", shared_process="true")
    assert shared.node_executable == "multi_detector"
    separate = multi_camera_nodes(cameras="front rear left", shared_process="false")
    assert [node.node_executable for node in separate] == ["detector"] * 3
    namespaces = [vars(node)["_Node__node_namespace"] for node in separate]  # given, not yet expanded
    assert [ns if isinstance(ns, str) else ns[0].perform(LaunchContext()) for ns in namespaces] == [
        "/front", "/rear", "/left"]  # fmt: skip
    with pytest.raises(ValueError, match="names a camera twice"):
        multi_camera_nodes(cameras="front front")


def model_argument(request) -> list[str]:
    """``model:=`` of the reference checkpoint when the bundled default model is not there."""
    if DEFAULT_MODEL.is_file():
        return []
    return [f"model:={request.getfixturevalue('reference_dir') / 'v4_reference.ckpt'}"]


def run_launch(name: str, arguments: list[str], log_path) -> tuple[subprocess.Popen, object]:
    log = open(log_path, "wb")  # noqa: SIM115 - closed by stop_launch
    process = subprocess.Popen([sys.executable, "-c", RUN_LAUNCH, name, *arguments], stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    return process, log


def stop_launch(process: subprocess.Popen, log) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def test_multi_camera_launch_runs_two_detectors_in_one_process(tmp_path, request):
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from kp2d_ros.camera_sim import image_message
    from kp2d_ros_msgs.msg import Keypoints

    model = (
        [] if DEFAULT_MODEL.is_file() else [f"model:={request.getfixturevalue('reference_dir') / 'v4_reference.ckpt'}"]
    )
    prefix = unique_namespace("multi_launch").strip("/")
    cameras = [f"{prefix}/cam_a", f"{prefix}/cam_b"]
    arguments = [f"cameras:={' '.join(cameras)}", "device:=cpu", "precision:=fp32", *model]
    process, log = run_launch("multi_camera.launch.py", arguments, tmp_path / "launch.log")
    ros = RosTestNode()
    try:
        inboxes = [ros.subscribe(Keypoints, f"/{camera}/kp2d_detector/keypoints") for camera in cameras]
        publishers = [ros.publisher(Image, f"/{camera}/image_raw", sensor_qos()) for camera in cameras]
        for publisher in publishers:
            ros.wait_for_subscribers(publisher, timeout=120)
        image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
        for second in range(1, 30):
            for publisher in publishers:
                publisher.publish(image_message(image, "bgr8", 3, Header(stamp=stamp(float(second)))))
            if all(inbox.snapshot() for inbox in inboxes):
                break
            time.sleep(1.0)
        for inbox, camera in zip(inboxes, cameras, strict=True):
            assert len(inbox.wait_for(lambda m: True, 30, f"keypoints of {camera}").x) > 0
    finally:
        ros.close()
        stop_launch(process, log)
    text = (tmp_path / "launch.log").read_text(errors="replace")
    assert "one model load shared by 2 detectors" in text and text.count("multi_detector-") >= 1, text[-3000:]
    assert "detector-1" not in text.replace("multi_detector-1", ""), "a separate detector process was started"


def test_stereo_launch_runs_the_stereo_node_on_camera_sim(tmp_path, request):
    from ros_helpers import NodeProcess

    from kp2d_ros_msgs.msg import StereoMatches

    model = (
        [] if DEFAULT_MODEL.is_file() else [f"model:={request.getfixturevalue('reference_dir') / 'v4_reference.ckpt'}"]
    )
    camera = unique_namespace("stereo_launch")
    process, log = run_launch("stereo.launch.py", [f"camera:={camera}", "left_image:=left/image_raw",
                                                   "right_image:=right/image_raw", "device:=cpu", "precision:=fp32",
                                                   *model], tmp_path / "launch.log")  # fmt: skip
    ros = RosTestNode()
    sim = None
    try:
        inbox = ros.subscribe(StereoMatches, f"{camera}/kp2d_stereo/stereo_matches")
        ros.wait_for_publishers(f"{camera}/kp2d_stereo/stereo_matches", timeout=120)
        sim_args = ["-p", "stereo:=true", "-p", "width:=160", "-p", "height:=120", "-p", "rate:=2.0"]
        sim = NodeProcess("camera_sim", ["-r", f"__ns:={camera}", *sim_args, "-p", "num_frames:=20"], tmp_path)
        msg = inbox.wait_for(lambda m: len(m.disparity) > 0, 90, "stereo matches through the launched node")
        assert msg.baseline > 0 and msg.fx == 160
    finally:
        if sim is not None:
            sim.stop()
        ros.close()
        stop_launch(process, log)

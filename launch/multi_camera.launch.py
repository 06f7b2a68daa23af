# ruff: noqa: I001  (ruff takes `launch` for this repository's launch/ folder, not the ROS package)
"""Launch one kp2d_ros detector per camera, each in the camera's namespace.

    ros2 launch kp2d_ros multi_camera.launch.py cameras:="cam0 cam1" model:=/path/to/model.ckpt

For each camera ``c`` of ``cameras`` (space or comma separated namespaces) a detector subscribes ``/c/<image>``
and ``/c/<camera_info>`` (defaults ``image_raw``, ``camera_info``) and publishes ``/c/kp2d_detector/keypoints``,
``/c/kp2d_detector/matches``, ... With ``shared_process:=true`` (default) all detectors run in ONE process
(``multi_detector``) sharing one model load (rclpy has no composable-node container: docs/ros.md,
"Several cameras"); with ``shared_process:=false`` each camera gets its own ``detector`` process (its own model
copy; a crash or a slow frame stays in one camera). Parameters: ``params_file`` (default config/detector.yaml,
applied to every detector), then model, device, precision from here.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from kp2d_ros.camera_list import parse_cameras
from kp2d_ros.transport import subscriber_environment

ARGUMENTS = {
    "cameras": ("cam0 cam1", "camera namespaces, space or comma separated: one detector each"),
    "shared_process": ("true", "true: one multi_detector process, one model load; false: one process per camera"),
    "image": ("image_raw", "image topic under each camera namespace"),
    "camera_info": ("camera_info", "camera_info topic under each camera namespace"),
    "model": ("", "checkpoint path; empty: the bundled default model"),
    "device": ("auto", "auto, cpu, cuda or cuda:N"),
    "precision": ("auto", "network arithmetic: auto, fp32, bf16, fp16, int8"),
    "params_file": (
        PathJoinSubstitution([FindPackageShare("kp2d_ros"), "config", "detector.yaml"]),
        "YAML parameter file applied to every detector",
    ),
    "fastdds_profile": ("true", "give the detector processes the package's Fast DDS profile for large images"),
}


def _detectors(context, *args, **kwargs) -> list:
    """The detector processes for the camera list (resolved at launch time)."""
    value = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    cameras = parse_cameras(value["cameras"])
    overrides = {"model": value["model"], "device": value["device"], "precision": value["precision"]}
    remappings = [("image", value["image"]), ("camera_info", value["camera_info"])]
    common = {"package": "kp2d_ros", "remappings": remappings, "output": "screen", "emulate_tty": False}
    if value["shared_process"].lower() in ("true", "1", "yes"):
        # No name=/namespace= here: in one process they would rename every node; each detector's namespace is its
        # camera (multi_detector), the remappings apply to each node's relative topics.
        return [Node(executable="multi_detector", parameters=[value["params_file"], overrides,
                                                              {"cameras": " ".join(cameras)}], **common)]  # fmt: skip
    return [
        Node(executable="detector", namespace=f"/{camera}", parameters=[value["params_file"], overrides], **common)
        for camera in cameras
    ]


def generate_launch_description() -> LaunchDescription:
    arguments = [
        DeclareLaunchArgument(name, default_value=default, description=description)
        for name, (default, description) in ARGUMENTS.items()
    ]
    use_profile = IfCondition(LaunchConfiguration("fastdds_profile"))
    profile = [
        SetEnvironmentVariable(name, value, condition=use_profile) for name, value in subscriber_environment().items()
    ]
    # Scoped (GroupAction): the profile reaches only the detectors' processes, not other nodes of a bigger launch.
    return LaunchDescription([*arguments, GroupAction([*profile, OpaqueFunction(function=_detectors)], scoped=True)])

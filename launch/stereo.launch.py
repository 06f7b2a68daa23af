# ruff: noqa: I001  (ruff takes `launch` for this repository's launch/ folder, not the ROS package)
"""Launch the kp2d_ros stereo_detector node on a rectified stereo camera.

    ros2 launch kp2d_ros stereo.launch.py camera:=/stereo model:=/path/to/model.ckpt precision:=fp32

The node subscribes ``<camera>/left/image_rect``, ``<camera>/left/camera_info`` and the ``right/`` pair by
default (``left_image:=`` / ``right_image:=`` ... change the topic names under the camera namespace; camera_sim's
stereo mode publishes ``left/image_raw``, already rectified) and publishes under ``<camera>/<node_name>/``:
``left/keypoints``, ``right/keypoints``, ``left/matches``, ``stereo_matches``. Parameters come from
``params_file`` (default: the package's config/detector.yaml; the stereo.* ones keep their defaults unless
the file sets them), then model, device, precision and image_qos from here.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from kp2d_ros.transport import subscriber_environment

ARGUMENTS = {
    "camera": ("stereo", "namespace of the stereo camera (its left/ and right/ topics) and of the node"),
    "left_image": ("left/image_rect", "left rectified image topic, relative to the camera namespace"),
    "left_camera_info": ("left/camera_info", "left camera_info topic"),
    "right_image": ("right/image_rect", "right rectified image topic"),
    "right_camera_info": ("right/camera_info", "right camera_info topic (P[3] = -fx * baseline)"),
    "model": ("", "checkpoint path; empty: the bundled default model"),
    "device": ("auto", "auto, cpu, cuda or cuda:N"),
    "precision": ("auto", "network arithmetic: auto, fp32, bf16, fp16, int8"),
    "image_qos": ("sensor_data", "image subscription QoS: sensor_data (BEST_EFFORT) or reliable"),
    "params_file": (
        PathJoinSubstitution([FindPackageShare("kp2d_ros"), "config", "detector.yaml"]),
        "YAML parameter file (the detector's; stereo.* parameters may be added)",
    ),
    "node_name": ("kp2d_stereo", "name of the node"),
    "fastdds_profile": ("true", "give the node's process the package's Fast DDS profile for large images"),
}


def generate_launch_description() -> LaunchDescription:
    arguments = [
        DeclareLaunchArgument(name, default_value=default, description=description)
        for name, (default, description) in ARGUMENTS.items()
    ]
    overrides = {name: LaunchConfiguration(name) for name in ("model", "device", "precision", "image_qos")}
    remappings = [
        (topic, LaunchConfiguration(topic.replace("/image", "_image").replace("/camera_info", "_camera_info")))
        for topic in ("left/image", "left/camera_info", "right/image", "right/camera_info")
    ]
    stereo = Node(
        package="kp2d_ros",
        executable="stereo_detector",
        name=LaunchConfiguration("node_name"),
        namespace=LaunchConfiguration("camera"),
        parameters=[LaunchConfiguration("params_file"), overrides],
        remappings=remappings,
        output="screen",
        emulate_tty=False,
    )
    use_profile = IfCondition(LaunchConfiguration("fastdds_profile"))
    profile = [
        SetEnvironmentVariable(name, value, condition=use_profile) for name, value in subscriber_environment().items()
    ]
    return LaunchDescription([*arguments, GroupAction([*profile, stereo], scoped=True)])

# ruff: noqa: I001  (ruff takes `launch` for this repository's launch/ folder, not the ROS package)
"""Launch the kp2d_ros detector node.

    ros2 launch kp2d_ros detector.launch.py image:=/camera/image_raw camera_info:=/camera/camera_info \
        model:=/path/to/model.ckpt device:=cuda use_camera_info:=true

With ``fastdds_profile:=true`` (default) the node's process gets the package's Fast DDS profile
(``config/fastdds_subscriber.xml``: UDPv4 only with a large receive buffer, so large best-effort images from
another process arrive; see docs/ros.md "Large images over Fast DDS"), unless the environment already
configures Fast DDS (``FASTDDS_DEFAULT_PROFILES_FILE``, ``FASTDDS_BUILTIN_TRANSPORTS``).

Parameters come from ``params_file`` (default: the package's config/detector.yaml), then these launch
arguments override it: model, device, use_camera_info, debug_image, geometry (matching.geometry), image_qos —
with their defaults when not given, so those six always come from here. Set the others (e.g. input_scale) in a
copy of the YAML file passed as ``params_file:=...``.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from kp2d_ros.transport import subscriber_environment

ARGUMENTS = {
    "image": ("image", "input sensor_msgs/Image topic (its /compressed sibling is used with use_compressed)"),
    "camera_info": ("camera_info", "input sensor_msgs/CameraInfo topic"),
    "model": ("", "checkpoint path; empty: the bundled default model"),
    "device": ("auto", "auto, cpu, cuda or cuda:N"),
    "params_file": (
        PathJoinSubstitution([FindPackageShare("kp2d_ros"), "config", "detector.yaml"]),
        "YAML parameter file for the detector",
    ),
    "namespace": ("", "namespace of the node (outputs: <namespace>/kp2d_detector/...)"),
    "node_name": ("kp2d_detector", "name of the node"),
    "use_camera_info": ("false", "compute undistorted normalised coordinates from camera_info"),
    "debug_image": ("true", "publish ~/debug_image while it has subscribers"),
    "geometry": ("none", "geometric verification of matches: none, homography or fundamental"),
    "image_qos": ("sensor_data", "image subscription QoS: sensor_data (BEST_EFFORT, depth 1) or reliable (depth 1)"),
    "fastdds_profile": (
        "true",
        "give the node's process the package's Fast DDS profile for large images (UDPv4, "
        "large receive buffer; docs/ros.md); false: the middleware's defaults",
    ),
}


def generate_launch_description() -> LaunchDescription:
    arguments = [
        DeclareLaunchArgument(name, default_value=default, description=description)
        for name, (default, description) in ARGUMENTS.items()
    ]
    overrides = {
        "model": LaunchConfiguration("model"),
        "device": LaunchConfiguration("device"),
        "use_camera_info": ParameterValue(LaunchConfiguration("use_camera_info"), value_type=bool),
        "debug_image": ParameterValue(LaunchConfiguration("debug_image"), value_type=bool),
        "matching.geometry": LaunchConfiguration("geometry"),
        "image_qos": LaunchConfiguration("image_qos"),
    }
    detector = Node(
        package="kp2d_ros",
        executable="detector",
        name=LaunchConfiguration("node_name"),
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"), overrides],
        remappings=[("image", LaunchConfiguration("image")), ("camera_info", LaunchConfiguration("camera_info"))],
        output="screen",
        emulate_tty=False,  # no ANSI colour codes in log files (~/.ros/log): they stay plain text
    )
    # Scoped (GroupAction): the profile reaches only the detector's process, not other nodes of a bigger launch.
    use_profile = IfCondition(LaunchConfiguration("fastdds_profile"))
    profile = [
        SetEnvironmentVariable(name, value, condition=use_profile) for name, value in subscriber_environment().items()
    ]
    return LaunchDescription([*arguments, GroupAction([*profile, detector], scoped=True)])

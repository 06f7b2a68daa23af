# ruff: noqa: I001  (ruff takes `launch` for this repository's launch/ folder, not the ROS package)
"""Demo: camera_sim (a virtual camera moving over a photo) feeding the kp2d_ros detector.

    ros2 launch kp2d_ros demo.launch.py [model:=/path/to/model.ckpt] [num_frames:=300] [source:=/path/photo.png]

Topics: /camera/image_raw, /camera/camera_info, /camera/ground_truth; /kp2d/kp2d_detector/{keypoints,matches,
debug_image}. View the debug image with e.g. rqt_image_view /kp2d/kp2d_detector/debug_image.

The detector's launch arguments that this file sets (namespace, image, camera_info, use_camera_info, geometry,
image_qos) are declared here with the demo's values as defaults and forwarded, so `--show-args` lists them
once and `name:=value` on the command line takes effect; the detector's other arguments (params_file,
node_name, debug_image) pass through unchanged.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = {
    "model": ("", "detector checkpoint; empty: the bundled default model"),
    "device": ("auto", "auto, cpu, cuda or cuda:N"),
    "source": ("", "camera_sim source: photo, image folder or video; empty: scikit-image's astronaut photo"),
    "rate": ("10.0", "camera_sim frame rate (Hz)"),
    "num_frames": ("0", "stop the camera after this many frames (0: never)"),
    "width": ("640", "camera_sim frame width"),
    "height": ("480", "camera_sim frame height"),
    "fastdds_profile": ("true", "the detector's process gets the package's Fast DDS profile for large images"),
}
# Arguments of detector.launch.py that the demo sets: declared here (demo defaults) and forwarded.
DETECTOR_ARGUMENTS = {
    "namespace": ("kp2d", "namespace of the detector (outputs: <namespace>/kp2d_detector/...)"),
    "image": ("/camera/image_raw", "image topic of the detector (camera_sim publishes /camera/image_raw)"),
    "camera_info": ("/camera/camera_info", "camera_info topic of the detector"),
    "use_camera_info": ("true", "compute undistorted normalised coordinates from camera_info"),
    "geometry": ("homography", "match verification (the photo is planar): none, homography or fundamental"),
    "image_qos": ("reliable", "detector image QoS: reliable or sensor_data (640 x 480 best-effort often lost)"),
}


def generate_launch_description() -> LaunchDescription:
    arguments = [
        DeclareLaunchArgument(name, default_value=default, description=description)
        for name, (default, description) in {**ARGUMENTS, **DETECTOR_ARGUMENTS}.items()
    ]
    camera = Node(
        package="kp2d_ros",
        executable="camera_sim",
        namespace="camera",
        parameters=[
            {
                "source": LaunchConfiguration("source"),
                "rate": ParameterValue(LaunchConfiguration("rate"), value_type=float),
                "num_frames": ParameterValue(LaunchConfiguration("num_frames"), value_type=int),
                "width": ParameterValue(LaunchConfiguration("width"), value_type=int),
                "height": ParameterValue(LaunchConfiguration("height"), value_type=int),
                "image_qos": "reliable",  # 640 x 480 best-effort samples are often lost on Fast DDS' UDP transport
            }
        ],
        output="screen",
        emulate_tty=False,  # no ANSI colour codes in log files
    )
    detector = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            PathJoinSubstitution([FindPackageShare("kp2d_ros"), "launch", "detector.launch.py"])
        ),
        launch_arguments={
            name: LaunchConfiguration(name) for name in ("model", "device", "fastdds_profile", *DETECTOR_ARGUMENTS)
        }.items(),
    )
    return LaunchDescription([*arguments, camera, detector])

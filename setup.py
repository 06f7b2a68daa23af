"""kp2d_ros (ament_python) and the kp2d_model library it wraps.

`pip install .` gives the pure-PyTorch library `kp2d_model` and its command-line tools; colcon builds
the same file as the ROS 2 package `kp2d_ros` (nodes run with `ros2 run kp2d_ros <name>`).
"""

import sys
from glob import glob

from setuptools import find_packages, setup

package_name = "kp2d_ros"
# kp2d_model's command-line tools, for `pip install .` (into the environment's bin/).
LIBRARY_COMMANDS = [
    "kp2d-make-hpatches = kp2d_model.evaluation.synthetic:main",
    "kp2d-train = kp2d_model.training.cli:main",
    "kp2d-evaluate = kp2d_model.evaluation.cli:main",
    "kp2d-track-bench = kp2d_model.track_bench.cli:main",
    "kp2d-export = kp2d_model.export:main",
]
# ROS 2 executables (`ros2 run kp2d_ros <name>`; setup.cfg puts them in lib/kp2d_ros). train and evaluate are
# the same tools as kp2d-train / kp2d-evaluate, taking (and ignoring) --ros-args.
ROS_EXECUTABLES = [
    "detector = kp2d_ros.detector_node:main",
    "camera_sim = kp2d_ros.camera_sim:main",
    "train = kp2d_ros.train:main",
    "evaluate = kp2d_ros.evaluate:main",
    "track_bench = kp2d_ros.track_bench:main",
    "demo = kp2d_ros.demo:main",
    "extract = kp2d_ros.extract:main",
    "stereo_detector = kp2d_ros.stereo_node:main",
    "multi_detector = kp2d_ros.multi_detector:main",
]
# colcon (ament_python) runs `setup.py install` or `setup.py develop`, and every console script lands in
# lib/kp2d_ros: there only the ROS executables, so `ros2 pkg executables kp2d_ros` lists each tool once. pip
# builds wheels (PEP 517/660, never these commands) and gets both sets.
BUILT_BY_COLCON = bool({"install", "develop"} & set(sys.argv[1:]))

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=["kp2d_model", "kp2d_model.*", "kp2d_ros", "kp2d_ros.*"]),
    package_data={"kp2d_model": ["weights/*.safetensors", "weights/*.json", "weights/*.onnx"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.xml")),
        ("share/" + package_name + "/config/train", glob("config/train/*.yaml")),
    ],
    python_requires=">=3.10",
    install_requires=["setuptools"],
    extras_require={"test": ["pytest"]},
    zip_safe=False,
    maintainer="kp2d developers",
    maintainer_email="kp2d-maintainers@example.com",
    description="KeyPointNet (KP2D) keypoints, descriptors and matches for ROS 2, and the kp2d_model library",
    license="MIT",
    entry_points={"console_scripts": ROS_EXECUTABLES + ([] if BUILT_BY_COLCON else LIBRARY_COMMANDS)},
)

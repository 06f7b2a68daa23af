"""Real rosbag2 files for the extractor tests: camera_sim frames written with rosbags, messages serialised by rclpy.

:func:`write_camera_bag` renders frames of camera_sim's virtual camera (``PhotoCamera`` over the astronaut photo)
and writes them as ``sensor_msgs/Image`` (+ ``CameraInfo``) messages, byte for byte what the camera_sim node
publishes, into an MCAP or sqlite3 rosbag2; :func:`read_bag` reads any rosbag2 back into rclpy messages.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

IMAGE_TOPIC = "/camera/image_raw"
CAMERA_INFO_TOPIC = "/camera/camera_info"
FIRST_STAMP_NS = 1_700_000_000_000_000_000
FRAME_PERIOD_NS = 33_333_333
LOG_DELAY_NS = 2_000_000  # images are logged 2 ms after their header stamp (as a recorder receives them)


@dataclass
class CameraBag:
    path: Path
    images: list[Any]  # the sensor_msgs/Image messages, in order
    infos: list[Any]


def camera_frames(count: int, size: tuple[int, int] = (160, 120), step: int = 3) -> list[np.ndarray]:
    """``count`` BGR frames of camera_sim's virtual camera, ``step`` simulator frames apart."""
    from kp2d_ros.camera_sim import PhotoCamera, default_photo

    camera = PhotoCamera(cv2.imread(str(default_photo())), size, speed=2.0)
    return [camera.render(camera.reference_to_frame(step * t)) for t in range(count)]


def image_messages(frames: list[np.ndarray], encoding: str = "bgr8", first_stamp_ns: int = FIRST_STAMP_NS) -> list[Any]:
    from std_msgs.msg import Header

    from kp2d_ros.camera_sim import encode, image_message
    from kp2d_ros.messages import stamp_from_ns

    messages = []
    for index, frame in enumerate(frames):
        header = Header(stamp=stamp_from_ns(first_stamp_ns + index * FRAME_PERIOD_NS), frame_id="camera")
        pixels, bytes_per_pixel = encode(frame, encoding)
        messages.append(image_message(pixels, encoding, bytes_per_pixel, header))
    return messages


def write_bag(path: Path, storage: str, topics: dict[str, list[tuple[str, int, Any]]]) -> Path:
    """A rosbag2 at ``path`` (``storage`` "mcap" or "sqlite3"): topic -> [(message type, log time ns, message or
    raw bytes)], written in log-time order. Messages are serialised with rclpy."""
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        connections = {}
        for topic, entries in topics.items():
            msgtype = entries[0][0] if entries else "sensor_msgs/msg/Image"
            connections[topic] = writer.add_connection(topic, msgtype, typestore=store)
        rows = sorted((log_time, topic, message) for topic, entries in topics.items()
                      for _, log_time, message in entries)  # fmt: skip
        for log_time, topic, message in rows:
            raw = message if isinstance(message, bytes) else serialize_message(message)
            writer.write(connections[topic], log_time, raw)
    return path


def write_camera_bag(path: Path, storage: str, count: int = 5, size: tuple[int, int] = (160, 120),
                     encoding: str = "bgr8", camera_info: bool = True) -> CameraBag:  # fmt: skip
    """A bag of ``count`` camera_sim frames on IMAGE_TOPIC (+ its CameraInfo on CAMERA_INFO_TOPIC)."""
    from kp2d_ros.camera_sim import camera_info_message

    images = image_messages(camera_frames(count, size), encoding)
    infos = [camera_info_message(size[0], size[1], msg.header) for msg in images] if camera_info else []
    topics = {IMAGE_TOPIC: [("sensor_msgs/msg/Image", log_time(m), m) for m in images]}
    if camera_info:
        topics[CAMERA_INFO_TOPIC] = [("sensor_msgs/msg/CameraInfo", log_time(m) - 1000, m) for m in infos]
    write_bag(path, storage, topics)
    return CameraBag(path, images, infos)


def log_time(msg: Any) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec + LOG_DELAY_NS


def message_type(msgtype: str) -> type:
    """``"pkg/msg/Name"`` -> the rclpy message class (rosidl_runtime_py's get_message, which has no wheel)."""
    package, _, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


def read_bag(path: Path) -> dict[str, list[tuple[int, Any]]]:
    """topic -> [(log time ns, rclpy message)] of every message in the bag, in log-time order."""
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader

    result: dict[str, list[tuple[int, Any]]] = {}
    with Reader(path) as reader:
        for connection, timestamp, raw in reader.messages():
            message_class = message_type(connection.msgtype)
            result.setdefault(connection.topic, []).append((timestamp, deserialize_message(raw, message_class)))
    return result

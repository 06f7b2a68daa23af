"""NumPy arrays -> kp2d_ros_msgs messages, and back, through the buffer protocol (never ``.tolist()``).

rclpy stores numeric sequence fields as ``array.array``; an ``array.array`` filled from a NumPy buffer with
one memcpy is assigned without per-element checks, so a 1000 x 256 descriptor block costs well under a
millisecond. :func:`field_array` is the inverse (a zero-copy NumPy view of a received field).
"""

from __future__ import annotations

import array
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point32
from sensor_msgs.msg import ChannelFloat32, PointCloud

from kp2d_model.frame_pipeline import FrameRecord
from kp2d_ros_msgs.msg import GroundTruthHomography, Keypoints, Matches

__all__ = [
    "field_array",
    "ground_truth_message",
    "keypoints_from_record",
    "keypoints_message",
    "matches_from_record",
    "matches_message",
    "stamp_from_ns",
    "stamp_ns",
    "to_array",
    "vins_point_cloud",
]

# VINS-Fusion's estimator (rosNodeTest.cpp feature_callback) reads the channels by position, in this order.
VINS_CHANNELS = ("id", "camera_id", "u", "v", "velocity_x", "velocity_y")
# Channel values are float32: integers are exact up to 2^24. Track ids are published modulo 2^24, so an id is
# reused only 16.7 million tracks later, long after VINS' sliding window (~10 frames) has dropped the old one.
VINS_ID_MODULUS = 1 << 24

_NUMPY_TYPES = {"f": np.float32, "d": np.float64, "I": np.uint32, "Q": np.uint64, "B": np.uint8}


def to_array(typecode: str, values: np.ndarray) -> array.array:
    """``array.array(typecode)`` holding ``values`` (converted to the matching dtype), one buffer copy."""
    data = np.ascontiguousarray(values, dtype=_NUMPY_TYPES[typecode]).reshape(-1)
    result = array.array(typecode)
    result.frombytes(memoryview(data).cast("B"))
    return result


def field_array(field: Any, dtype: type) -> np.ndarray:
    """A received ``array.array`` (or NumPy) message field as a NumPy array of ``dtype``, without a copy."""
    return np.frombuffer(field, dtype=dtype) if len(field) else np.zeros(0, dtype)


def keypoints_message(
    header: Any,
    sequence: int,
    image_size: tuple[int, int],
    points: np.ndarray,
    scores: np.ndarray,
    track_ids: np.ndarray,
    track_lengths: np.ndarray,
    normalized: np.ndarray | None = None,
    descriptors: np.ndarray | None = None,
) -> Keypoints:
    """Build a Keypoints message.

    header: the source image's header. image_size: ``(W, H)`` pixels. points ``(N, 2)`` x, y pixels;
    scores ``(N,)``; track_ids ``(N,)`` uint64; track_lengths ``(N,)``; normalized ``(N, 2)`` undistorted
    normalised coordinates or None; descriptors ``(N, D)`` L2-normalised or None (not published).
    """
    msg = Keypoints()
    msg.header = header
    msg.sequence = int(sequence)
    msg.image_width, msg.image_height = int(image_size[0]), int(image_size[1])
    points = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    msg.x = to_array("f", points[:, 0])
    msg.y = to_array("f", points[:, 1])
    msg.score = to_array("f", scores)
    msg.track_id = to_array("Q", track_ids)
    msg.track_length = to_array("I", track_lengths)
    if normalized is not None:
        normalized = np.asarray(normalized, dtype=np.float32).reshape(-1, 2)
        msg.x_normalized = to_array("f", normalized[:, 0])
        msg.y_normalized = to_array("f", normalized[:, 1])
    if descriptors is not None:
        msg.descriptor_size = int(descriptors.shape[1])
        msg.descriptors = to_array("f", descriptors)
    return msg


def matches_message(
    header: Any,
    previous_stamp: Time | None,
    previous_index: np.ndarray,
    current_index: np.ndarray,
    distance: np.ndarray,
    previous_points: np.ndarray,
    current_points: np.ndarray,
    geometry_model: str = "none",
    inlier: np.ndarray | None = None,
    model: np.ndarray | None = None,
) -> Matches:
    """Build a Matches message.

    previous_index/current_index/distance: ``(M,)``; previous_points/current_points: ``(M, 2)`` pixels of the
    matched keypoints. geometry_model: "none", "homography" or "fundamental"; inlier: ``(M,)`` bool (None:
    every match is an inlier, as when no check ran); model: ``(3, 3)`` previous -> current, or None.
    """
    msg = Matches()
    msg.header = header
    if previous_stamp is not None:
        msg.previous_stamp = previous_stamp
    msg.previous_index = to_array("I", previous_index)
    msg.current_index = to_array("I", current_index)
    msg.distance = to_array("f", distance)
    previous_points = np.asarray(previous_points, dtype=np.float32).reshape(-1, 2)
    current_points = np.asarray(current_points, dtype=np.float32).reshape(-1, 2)
    msg.previous_x = to_array("f", previous_points[:, 0])
    msg.previous_y = to_array("f", previous_points[:, 1])
    msg.current_x = to_array("f", current_points[:, 0])
    msg.current_y = to_array("f", current_points[:, 1])
    msg.geometry_model = geometry_model
    if inlier is None:
        inlier = np.ones(len(msg.current_index), dtype=bool)
    msg.inlier = to_array("B", inlier)
    msg.num_inliers = int(np.count_nonzero(inlier))
    msg.model_found = model is not None
    if model is not None:
        msg.model = np.asarray(model, dtype=np.float64).reshape(9).copy()
    return msg


def stamp_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (or any object with sec, nanosec) -> nanoseconds since the epoch (exact)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def stamp_from_ns(stamp_ns: int) -> Time:
    """Nanoseconds since the epoch -> builtin_interfaces/Time (exact)."""
    seconds, nanoseconds = divmod(int(stamp_ns), 1_000_000_000)
    return Time(sec=seconds, nanosec=nanoseconds)


def keypoints_from_record(header: Any, sequence: int, record: FrameRecord, publish_descriptors: bool) -> Keypoints:
    """The Keypoints message of one ``FramePipeline.step`` record (header: the source image's)."""
    descriptors = record.descriptors.cpu().numpy() if publish_descriptors else None
    return keypoints_message(
        header, sequence, record.image_size, record.points, record.scores, record.tracks.ids, record.tracks.lengths,
        record.normalized, descriptors,
    )  # fmt: skip


def matches_from_record(header: Any, record: FrameRecord, geometry: str) -> Matches:
    """The Matches message of one record; ``geometry``: the MatchConfig.geometry the record was made with."""
    previous_stamp = stamp_from_ns(record.previous_stamp_ns) if record.previous_stamp_ns is not None else None
    return matches_message(
        header, previous_stamp, record.previous_index, record.current_index, record.distance,
        record.previous_points, record.current_points, geometry, record.inlier, record.geometry_model,
    )  # fmt: skip


def vins_point_cloud(header: Any, features: dict[str, np.ndarray]) -> PointCloud:
    """VINS-Fusion's feature_tracker output from ``kp2d_model.frame_pipeline.vins_features``: points = undistorted
    normalised ``(x, y, 1)``; channels ``id`` (track id modulo 2^24), ``camera_id``, ``u``, ``v`` (pixels),
    ``velocity_x``, ``velocity_y`` (normalised units per second), one value per point, in that order."""
    msg = PointCloud()
    msg.header = header
    points = np.asarray(features["points"], dtype=np.float32).reshape(-1, 3)
    msg.points = [Point32(x=float(x), y=float(y), z=1.0) for x, y in points[:, :2].tolist()]
    velocity = np.asarray(features["velocity"]).reshape(-1, 2)
    values = (
        np.asarray(features["ids"], dtype=np.uint64) % VINS_ID_MODULUS,
        features["camera_id"],
        features["u"],
        features["v"],
        velocity[:, 0],
        velocity[:, 1],
    )
    msg.channels = [
        ChannelFloat32(name=name, values=to_array("f", value))
        for name, value in zip(VINS_CHANNELS, values, strict=True)
    ]
    return msg


def ground_truth_message(
    header: Any,
    previous_stamp: Time | None,
    previous_to_current: np.ndarray,
    reference_to_current: np.ndarray,
    reference_path: str,
) -> GroundTruthHomography:
    """Build a GroundTruthHomography message from two ``(3, 3)`` homographies (pixels, row-major)."""
    msg = GroundTruthHomography()
    msg.header = header
    if previous_stamp is not None:
        msg.previous_stamp = previous_stamp
    msg.previous_to_current = np.asarray(previous_to_current, dtype=np.float64).reshape(9).copy()
    msg.reference_to_current = np.asarray(reference_to_current, dtype=np.float64).reshape(9).copy()
    msg.reference_path = reference_path
    return msg

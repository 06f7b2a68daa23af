"""The ``stereo_detector`` node: KeyPointNet keypoints on a RECTIFIED stereo pair, left-right matches with
disparity and depth, and temporal tracks on the left camera shared with the right one.

Subscribes ``left/image``, ``left/camera_info``, ``right/image``, ``right/camera_info`` (message_filters exact
time synchronisation: the four stamps must be equal, as a stereo driver publishes them; without message_filters,
e.g. rclpy from PyPI, an equivalent equal-stamp pairing of the four topics); publishes
``~/left/keypoints`` and ``~/right/keypoints`` (kp2d_ros_msgs/Keypoints), ``~/left/matches`` (Matches: left
frame to left frame), ``~/stereo_matches`` (kp2d_ros_msgs/StereoMatches) and ``/diagnostics``.

Track ids: the left camera carries ids from frame to frame (``kp2d_model.frame_pipeline.FramePipeline``, as the
``detector`` node); a right keypoint matched to a left keypoint gets that keypoint's id and track length, an
unmatched right keypoint a fresh id from 2^63 up (length 1; right-only keypoints are not tracked over time).
Depth ``fx * baseline / disparity`` uses the right camera_info's projection matrix (``P[3] = -fx * baseline``).
The images must be rectified (e.g. ``image_rect`` of image_proc / stereo_image_proc); camera_info distortion
is not applied. Same habits as the detector node: latest-pair worker thread (a pair that replaces an
unprocessed one is counted as dropped), bad pairs skipped with a throttled warning, the node keeps running.
All parameters are read at start-up (see ``docs/ros.md``, "Stereo").
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from kp2d_model import KeypointDetector
from kp2d_model.camera import Intrinsics
from kp2d_model.frame_pipeline import FramePipeline, MatchConfig, PipelineConfig, detect
from kp2d_model.image import ImageFormatError
from kp2d_model.stereo import StereoConfig, StereoError, match_stereo
from kp2d_model.tracks import carry_tracks
from kp2d_ros.conversions import ConvertedImage, ImageInputError, message_to_array
from kp2d_ros.detector_node import (
    GEOMETRY_MODELS,
    PARAMETERS,
    LatestFrameSlot,
    Statistics,
    ThrottledWarnings,
    _float_range,
    _int_range,
    _StatusBuilder,
    build_detector,
)
from kp2d_ros.messages import keypoints_from_record, keypoints_message, matches_from_record, stamp_ns, to_array
from kp2d_ros.node_main import run_node
from kp2d_ros.shared_detector import SharedDetector
from kp2d_ros_msgs.msg import Keypoints, Matches, StereoMatches

try:
    import message_filters
except ImportError:
    message_filters = None

__all__ = ["StereoNode", "main"]

# The detector node's parameters that mean the same here (all read at start-up in this node) ...
SHARED_PARAMETERS = (
    "model", "device", "half", "precision", "backend", "calibration", "num_threads", "input_width", "input_height",
    "input_scale", "contrast", "image_qos", "top_k", "score_threshold", "nms_radius", "matching.mutual",
    "matching.ratio", "matching.max_distance", "matching.geometry", "matching.geometry_threshold",
    "publish_descriptors", "max_image_pixels",
)  # fmt: skip
# ... and the stereo ones: name -> (default, description, extra descriptor fields).
STEREO_PARAMETERS: dict[str, tuple[Any, str, dict[str, Any]]] = {
    "stereo.row_tolerance": (1.5, "a right keypoint may match if |y_left - y_right| <= this (pixels)",
                             _float_range(0.0, 100.0)),
    "stereo.min_disparity": (0.0, "smallest disparity x_left - x_right accepted (pixels)", _float_range(0.0, 10000.0)),
    "stereo.max_disparity": (0.0, "largest disparity accepted (pixels; 0: the image width)",
                             _float_range(0.0, 10000.0)),
    "stereo.mutual": (True, "keep only mutual nearest neighbours among the row candidates", {}),
    "stereo.ratio": (0.0, "Lowe ratio test among the row candidates (0: off)", _float_range(0.0, 1.0)),
    "stereo.max_distance": (0.0, "maximum descriptor L2 distance (0: off)", _float_range(0.0, 2.0)),
    "stereo.refine_radius": (3, "sub-pixel disparity by patch comparison: half patch size (pixels; 0: off)",
                             _int_range(0, 16)),
    "sync_queue_size": (10, "exact-time synchroniser queue (stamps waiting for all four messages)", _int_range(1, 100)),
}  # fmt: skip


@dataclass
class StereoFrame:
    """One synchronised pair waiting for the worker."""

    left: Image
    right: Image
    left_info: CameraInfo
    right_info: CameraInfo
    received_ns: int


class ExactStampPairing:
    """Exact-time synchronisation of ``count`` topics for when message_filters is not installed: ``add(i, msg)``
    stores message ``i`` of its stamp; once all ``count`` messages of a stamp are in, ``callback(*messages)`` runs
    and that stamp and older ones are forgotten. At most ``queue_size`` incomplete stamps are kept (oldest go)."""

    def __init__(self, count: int, queue_size: int, callback: Any):
        self._count, self._queue_size, self._callback = count, queue_size, callback
        self._pending: dict[int, list[Any]] = {}
        self._lock = threading.Lock()

    def add(self, index: int, msg: Any) -> None:
        key = stamp_ns(msg.header.stamp)
        ready = None
        with self._lock:
            slots = self._pending.setdefault(key, [None] * self._count)
            slots[index] = msg
            if all(m is not None for m in slots):
                ready = slots
                self._pending = {k: v for k, v in self._pending.items() if k > key}
            while len(self._pending) > self._queue_size:
                del self._pending[min(self._pending)]
        if ready is not None:
            self._callback(*ready)


class StereoInputError(ValueError):
    """A pair that cannot be processed (sizes differ, camera_info not rectified pinhole); ``kind`` for throttling."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def stereo_geometry(left_info: CameraInfo, right_info: CameraInfo, size: tuple[int, int]) -> tuple[float, float]:
    """``(fx pixels, baseline metres)`` of a rectified pair from the camera_infos' projection matrices (baseline
    0.0 when the right P[3] is 0: depth unknown). StereoInputError for sizes or projections that do not fit."""
    for side, info in (("left", left_info), ("right", right_info)):
        if (info.width, info.height) != size:
            raise StereoInputError(
                "camera_info_size",
                f"{side} camera_info is for {info.width}x{info.height} but the images are {size[0]}x{size[1]}",
            )
    left_p, right_p = np.asarray(left_info.p, float), np.asarray(right_info.p, float)
    fx = float(right_p[0])
    if not (np.isfinite(left_p).all() and np.isfinite(right_p).all() and fx > 0 and left_p[0] > 0):
        raise StereoInputError("camera_info_p", "camera_info P has no positive finite fx (not calibrated?)")
    if any(abs(left_p[i] - right_p[i]) > 1e-6 * fx for i in (0, 5, 6)):
        raise StereoInputError(
            "camera_info_rectified",
            "left and right camera_info P differ in fx, fy or cy: the pair is not rectified (use image_rect)",
        )
    baseline = -float(right_p[3]) / fx
    if baseline < 0:
        raise StereoInputError(
            "camera_info_baseline", f"right camera_info P[3] = {right_p[3]} > 0: left and right swapped?"
        )
    return fx, baseline


def stereo_matches_message(header: Any, right_stamp: Any, matches: Any, track_ids: np.ndarray, fx: float,
                           baseline: float) -> StereoMatches:  # fmt: skip
    """A StereoMatches message from a :class:`kp2d_model.stereo.StereoMatches` (track_ids: the left ids, (M,))."""
    msg = StereoMatches(header=header, right_stamp=right_stamp)
    msg.left_index = to_array("I", matches.left_index)
    msg.right_index = to_array("I", matches.right_index)
    msg.disparity = to_array("f", matches.disparity)
    if matches.depth is not None:
        msg.depth = to_array("f", matches.depth)
    msg.distance = to_array("f", matches.distance)
    msg.track_id = to_array("Q", track_ids)
    msg.fx, msg.baseline = float(fx) if baseline > 0 else 0.0, float(baseline)
    return msg


class StereoNode(Node):
    """Stereo KeyPointNet node (see the module docstring). detector: an already built KeypointDetector to use
    (tests, embedding); None builds one from the parameters. detector_lock: held around each detector call
    (pass the same lock to nodes sharing one detector)."""

    def __init__(self, detector: KeypointDetector | None = None, detector_lock: Any = None, **node_kwargs: Any):
        super().__init__("kp2d_stereo", **node_kwargs)
        for name in SHARED_PARAMETERS:
            default, description, extra = PARAMETERS[name]
            extra = {k: v for k, v in extra.items() if k != "read_only"}
            self.declare_parameter(name, default, ParameterDescriptor(description=description, read_only=True, **extra))
        for name, (default, description, extra) in STEREO_PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=description, read_only=True, **extra))
        p = self._p = {name: self.get_parameter(name).value for name in (*SHARED_PARAMETERS, *STEREO_PARAMETERS)}
        if p["matching.geometry"] not in GEOMETRY_MODELS:
            raise ValueError(f"matching.geometry must be one of {', '.join(GEOMETRY_MODELS)}")
        if p["image_qos"] not in ("sensor_data", "reliable"):
            raise ValueError(f"image_qos must be sensor_data or reliable, got {p['image_qos']!r}")
        self._stereo_config = StereoConfig(
            row_tolerance=p["stereo.row_tolerance"], min_disparity=p["stereo.min_disparity"],
            max_disparity=p["stereo.max_disparity"] or None, mutual=p["stereo.mutual"],
            ratio=p["stereo.ratio"] or None, max_distance=p["stereo.max_distance"] or None,
            refine_radius=p["stereo.refine_radius"],
        )  # fmt: skip
        try:
            self._stereo_config.check()
        except StereoError as error:
            raise ValueError(f"stereo parameters: {error}") from None
        detector = detector if detector is not None else build_detector(p)
        self._detector = SharedDetector(detector, detector_lock)  # left and right calls (and other nodes) take turns
        self._pipeline_config = PipelineConfig(
            top_k=p["top_k"], score_threshold=p["score_threshold"], nms_radius=p["nms_radius"],
            match=MatchConfig(mutual=p["matching.mutual"], ratio=p["matching.ratio"] or None,
                              max_distance=p["matching.max_distance"] or None, geometry=p["matching.geometry"],
                              geometry_threshold=p["matching.geometry_threshold"]),
        )  # fmt: skip
        self._pipeline = FramePipeline(self._detector, self._pipeline_config)  # the left camera's tracks
        self._warn = ThrottledWarnings(self.get_logger()).warn  # (kind, message)
        self._slot = LatestFrameSlot()
        self._stats = Statistics()
        self._next_track_id = 1 << 63  # right-only keypoints: ids from the top half, never a left track's id
        self._sequence = 0
        self._stereo_match_count: list[int] = []

        output_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        self._left_pub = self.create_publisher(Keypoints, "~/left/keypoints", output_qos)
        self._right_pub = self.create_publisher(Keypoints, "~/right/keypoints", output_qos)
        self._matches_pub = self.create_publisher(Matches, "~/left/matches", output_qos)
        self._stereo_pub = self.create_publisher(StereoMatches, "~/stereo_matches", output_qos)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diagnostics_last = time.monotonic()
        self.create_timer(1.0, self._publish_diagnostics)

        reliability = ReliabilityPolicy.BEST_EFFORT if p["image_qos"] == "sensor_data" else ReliabilityPolicy.RELIABLE
        qos = QoSProfile(depth=2, reliability=reliability, history=HistoryPolicy.KEEP_LAST)
        topics = ((Image, "left/image"), (Image, "right/image"),
                  (CameraInfo, "left/camera_info"), (CameraInfo, "right/camera_info"))  # fmt: skip
        if message_filters is not None:
            # message_filters' Python Subscriber defaults to a RELIABLE profile: pass the QoS explicitly.
            self._subscribers = [message_filters.Subscriber(self, t, name, qos_profile=qos) for t, name in topics]
            self._sync = message_filters.TimeSynchronizer(self._subscribers, p["sync_queue_size"])
            self._sync.registerCallback(self._on_pair)
            self._sync_method = "message_filters.TimeSynchronizer"
        else:
            self._sync = ExactStampPairing(len(topics), p["sync_queue_size"], self._on_pair)
            self._subscribers = [
                self.create_subscription(t, name, lambda msg, i=i: self._sync.add(i, msg), qos)
                for i, (t, name) in enumerate(topics)
            ]
            self._sync_method = "equal-stamp pairing (message_filters not installed)"

        self._running = True
        self._worker = threading.Thread(target=self._work, name="kp2d_stereo_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"ready: device {self._detector.device}, images {self.resolve_topic_name('left/image')} + "
            f"{self.resolve_topic_name('right/image')} synchronised by {self._sync_method}, {self._stereo_config}"
        )

    # --- executor thread ---------------------------------------------------------------------------

    def _on_pair(self, left: Image, right: Image, left_info: CameraInfo, right_info: CameraInfo) -> None:
        self._stats.count_received()
        self._slot.put(StereoFrame(left, right, left_info, right_info, time.monotonic_ns()))

    # --- worker thread -----------------------------------------------------------------------------

    def _shutting_down(self) -> bool:
        return not self._running or not self.context.ok()

    def _work(self) -> None:
        while not self._shutting_down():
            frame = self._slot.take(timeout=0.2)
            if frame is None or self._shutting_down():
                continue
            try:
                self._process(frame)
            except (ImageInputError, StereoInputError) as error:
                self._stats.count("rejected")
                self._warn(f"input:{error.kind}", f"stereo pair skipped: {error}")
            except ImageFormatError as error:
                self._stats.count("rejected")
                self._warn("image:refused_by_detector", f"stereo pair skipped: {error}")
            except Exception as error:  # a failure on one pair must not stop the node
                if self._shutting_down():
                    return
                self._stats.count("failed")
                self._warn(f"failure:{type(error).__name__}", f"stereo pair skipped: processing failed: {error!r}")

    def _process(self, frame: StereoFrame) -> None:
        p = self._p
        left_image = message_to_array(frame.left, p["max_image_pixels"], self._detector)
        right_image = message_to_array(frame.right, p["max_image_pixels"], self._detector)
        size = left_image.pixels.shape[1], left_image.pixels.shape[0]
        if (right_image.pixels.shape[1], right_image.pixels.shape[0]) != size:
            raise StereoInputError("size", f"left image is {size[0]}x{size[1]} but right is "
                                           f"{right_image.pixels.shape[1]}x{right_image.pixels.shape[0]}")  # fmt: skip
        fx, baseline = stereo_geometry(frame.left_info, frame.right_info, size)
        if baseline == 0:
            self._warn("no_baseline", "right camera_info P[3] is 0 (no baseline): StereoMatches.depth left empty")
        header = frame.left.header

        # Left camera: the frame pipeline (detect, match the previous left frame, geometry, tracks). Rectified
        # images: the intrinsics are P's left 3x3 without distortion.
        intrinsics = Intrinsics(np.asarray(frame.left_info.p, float).reshape(3, 4)[:, :3].copy(), np.zeros(0), "none",
                                size)  # fmt: skip
        record = self._pipeline.step(left_image.pixels, stamp_ns(header.stamp),
                                     channel_order=left_image.channel_order, intrinsics=intrinsics)  # fmt: skip
        if record.reset:
            self._warn("stamp_backwards", "image stamp went backwards: left tracks reset")
        right_points, right_scores, right_descriptors, right_ms = detect(
            self._detector, right_image.pixels, right_image.channel_order, self._pipeline_config
        )

        # Left -> right along the rows; the right keypoints take their left partner's track id and length.
        grey = None
        if self._stereo_config.refine_radius > 0:
            grey = tuple(_grey(image) for image in (left_image, right_image))
        stereo = match_stereo(record.points, record.descriptors, right_points, right_descriptors,
                              self._stereo_config, fx=fx if baseline > 0 else None,
                              baseline=baseline if baseline > 0 else None, images=grey)  # fmt: skip
        right_tracks, self._next_track_id = carry_tracks(
            record.tracks, len(right_points), stereo.left_index, stereo.right_index, self._next_track_id
        )
        right_tracks.lengths[stereo.right_index] = record.tracks.lengths[stereo.left_index]

        self._sequence += 1
        publish_descriptors = p["publish_descriptors"]
        self._left_pub.publish(keypoints_from_record(header, self._sequence, record, publish_descriptors))
        self._right_pub.publish(
            keypoints_message(frame.right.header, self._sequence, size, right_points, right_scores, right_tracks.ids,
                              right_tracks.lengths, None,
                              right_descriptors.cpu().numpy() if publish_descriptors else None)
        )  # fmt: skip
        self._matches_pub.publish(matches_from_record(header, record, self._pipeline_config.match.geometry))
        shared_ids = record.tracks.ids[stereo.left_index]
        self._stereo_pub.publish(
            stereo_matches_message(header, frame.right.header.stamp, stereo, shared_ids, fx, baseline)
        )
        self._stereo_match_count.append(len(stereo))
        latency_ms = (time.monotonic_ns() - frame.received_ns) / 1e6
        self._stats.add_processed(latency_ms, record.inference_ms + right_ms)

    # --- diagnostics and shutdown ------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        snapshot = self._stats.take()
        dropped, self._slot.dropped = self._slot.dropped, 0
        counts, self._stereo_match_count = self._stereo_match_count, []
        now = time.monotonic()
        period, self._diagnostics_last = max(1e-3, now - self._diagnostics_last), now
        builder = _StatusBuilder(f"{self.get_fully_qualified_name()}: stereo keypoints", str(self._detector.device))
        if snapshot["received"] == 0:
            builder.summary(DiagnosticStatus.WARN, "no synchronised stereo pairs received")
        elif snapshot["rejected"] or snapshot["failed"]:
            builder.summary(DiagnosticStatus.WARN, f"{snapshot['rejected']} rejected / {snapshot['failed']} failed")
        else:
            builder.summary(DiagnosticStatus.OK, "processing")
        builder.add("input rate (pairs/s)", f"{snapshot['received'] / period:.2f}")
        builder.add("output rate (pairs/s)", f"{snapshot['processed'] / period:.2f}")
        builder.add("dropped pairs (newer pair arrived first)", dropped)
        builder.add("rejected pairs (bad input)", snapshot["rejected"])
        builder.add("failed pairs (model errors)", snapshot["failed"])
        builder.add("inference mean (ms, both images)", f"{np.mean(snapshot['inference_ms']):.1f}"
                    if snapshot["inference_ms"] else "n/a")  # fmt: skip
        builder.add("stereo matches mean", f"{np.mean(counts):.1f}" if counts else "n/a")
        array = DiagnosticArray(status=[builder.status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(array)

    def destroy_node(self) -> None:
        self._running = False
        if hasattr(self, "_slot"):
            self._slot.close()
        if hasattr(self, "_worker") and self._worker.is_alive():
            self._worker.join(timeout=10.0)
        super().destroy_node()


def _grey(image: ConvertedImage) -> np.ndarray:
    """(H, W) grey of a converted image (any channel order / depth) for the disparity refinement."""
    pixels = image.pixels
    if pixels.ndim == 3:
        code = cv2.COLOR_RGB2GRAY if image.channel_order == "rgb" else cv2.COLOR_BGR2GRAY
        pixels = cv2.cvtColor(np.ascontiguousarray(pixels[:, :, :3]), code)
    return pixels.astype(np.float32)


def main(args: list[str] | None = None) -> int:
    """``ros2 run kp2d_ros stereo_detector [--ros-args ...]``."""
    return run_node(StereoNode, "kp2d_stereo", args)


if __name__ == "__main__":
    sys.exit(main())

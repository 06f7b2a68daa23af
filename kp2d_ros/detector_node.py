"""The ``detector`` node: KeyPointNet keypoints, descriptors and frame-to-frame matches for camera images.

Subscribes ``image`` (sensor_msgs/Image), optionally ``<image>/compressed`` and ``camera_info``; publishes
``~/keypoints`` (kp2d_ros_msgs/Keypoints), ``~/matches`` (kp2d_ros_msgs/Matches), ``~/debug_image`` (only
built while subscribed) and ``/diagnostics``. Output headers are the source image's header.

Latest-frame processing: subscription callbacks only store the newest frame in a one-slot buffer (a frame
that replaces an unprocessed one is counted as dropped). Two worker threads share a frame's work
(``kp2d_model.frame_pipeline.FramePipeline.step`` split in two): the detect thread converts the message and runs
``FramePipeline.detect`` (the network, on the GPU when present); the finish thread runs ``FramePipeline.finish``
(matching against the previous processed frame on the same device, geometry, track ids, normalised
coordinates) and publishes, in frame order, while the detect thread runs the next frame's network. One
detected frame at most waits between them. The executor thread stays free for parameter services.
Bad input (any frame) gives a throttled, specific warning and the node goes on with the next frame.
Frames the camera sent that never arrive (camera_info stamps without their image, gaps in image stamps) give a
throttled "frames lost in transport" warning and a diagnostics count (``kp2d_ros.frame_loss``).
Parameters: see ``docs/ros.md`` and ``config/detector.yaml``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, Imu, PointCloud

from kp2d_model import CheckpointError, KeypointDetector
from kp2d_model.camera import Intrinsics
from kp2d_model.checkpoint import default_checkpoint_path
from kp2d_model.engines import BackendName, Precision
from kp2d_model.frame_pipeline import (
    Detected,
    FramePipeline,
    FrameRecord,
    MaskSizeError,
    MatchConfig,
    PipelineConfig,
    read_mask,
    vins_features,
)
from kp2d_model.image import CONTRASTS, ImageFormatError
from kp2d_model.motion_prediction import (
    GyroBuffer,
    GyroCoverageError,
    MotionPredictionError,
    camera_rotation,
    rotation_from_quaternion,
)
from kp2d_model.torch_compat import OutOfMemoryError
from kp2d_ros.camera_model import CameraInfoError, check_camera_info
from kp2d_ros.conversions import BACKEND, ConvertedImage, ImageInputError, message_to_array
from kp2d_ros.debug_image import draw_debug_image
from kp2d_ros.frame_loss import FrameLossMonitor
from kp2d_ros.messages import keypoints_from_record, matches_from_record, stamp_ns, to_array, vins_point_cloud
from kp2d_ros.node_main import run_node
from kp2d_ros.tracks import TrackHistory
from kp2d_ros.transport import receive_buffer_warning
from kp2d_ros_msgs.msg import Keypoints, Matches

try:
    import message_filters
except ImportError:
    message_filters = None

__all__ = [
    "DetectorNode",
    "build_detector",
    "declare_parameters",
    "main",
    "parameter_problems",
    "pipeline_config_from_settings",
    "settings_from_parameters",
]

GEOMETRY_MODELS = ("none", "homography", "fundamental")
IMAGE_QOS = ("sensor_data", "reliable")
CAMERA_INFO_SYNC = ("exact", "approximate", "latest")
PRECISIONS = tuple(p.value for p in Precision)
BACKENDS = tuple(b.value for b in BackendName)
WARN_PERIOD_S = 5.0
FRAME_LOSS_CHECK_PERIOD_S = 1.0
FRAME_LOSS_DOCS = "docs/ros.md, 'Large images over Fast DDS'"
# Where a processed frame's time beyond the detector call goes (diagnostics "overhead part mean (ms): <name>").
OVERHEAD_PARTS = {
    "wait": "receipt until the detect thread takes the frame",
    "conversion": "message to image array",
    "handoff": "network done until the finish thread takes the frame",
    "matching": "camera_info check, IMU rotation, FramePipeline.finish (matching, geometry, tracks, normalised)",
    "publishing": "messages built and published, track history, debug image",
}


def _settings_value(name: str, value: Any) -> Any:
    """A parameter value as its Settings field holds it (integer arrays as tuples of int)."""
    return tuple(int(v) for v in value) if name == "roi" else value


@dataclass(frozen=True)
class Settings:
    """The parameters that may change at runtime (one immutable snapshot per processed frame)."""

    top_k: int
    score_threshold: float
    nms_radius: int
    matching_mutual: bool
    matching_ratio: float  # 0: off
    matching_max_distance: float  # 0: off
    geometry: str
    geometry_threshold: float
    publish_descriptors: bool
    max_image_pixels: int
    debug_image: bool
    debug_tail_length: int
    roi: tuple[int, ...] = ()  # (x, y, w, h) pixels; (): off
    mask: np.ndarray | None = None  # (H, W) uint8 read from the read-only ``mask`` file at start-up; None: off
    matching_prediction_radius: float = 0.0  # px, 0: off (IMU-aided matching)


def pipeline_config_from_settings(settings: Settings) -> PipelineConfig:
    """The frame pipeline's config for the node's runtime parameters (0 = off becomes None)."""
    match = MatchConfig(
        mutual=settings.matching_mutual,
        ratio=settings.matching_ratio or None,
        max_distance=settings.matching_max_distance or None,
        geometry=settings.geometry,
        geometry_threshold=settings.geometry_threshold,
        prediction_radius=settings.matching_prediction_radius or None,
    )
    return PipelineConfig(
        top_k=settings.top_k,
        score_threshold=settings.score_threshold,
        nms_radius=settings.nms_radius,
        match=match,
        mask=settings.mask,
        roi=tuple(settings.roi) if settings.roi else None,
    )


def _int_range(low: int, high: int) -> dict[str, Any]:
    return {"integer_range": [IntegerRange(from_value=low, to_value=high, step=1)]}


def _float_range(low: float, high: float) -> dict[str, Any]:
    return {"floating_point_range": [FloatingPointRange(from_value=low, to_value=high, step=0.0)]}


# name -> (default, description, extra descriptor fields); read_only parameters need a restart.
PARAMETERS: dict[str, tuple[Any, str, dict[str, Any]]] = {
    "model": ("", "checkpoint path (.ckpt/.safetensors/.pt); empty: the bundled default model", {"read_only": True}),
    "device": ("auto", "torch device: auto (CUDA when present), cpu, cuda, cuda:N", {"read_only": True}),
    "half": (False, "fp16 autocast on CUDA (ignored on the CPU)", {"read_only": True}),
    "precision": ("auto", "network arithmetic: auto (fastest measured to keep quality here), fp32, bf16, fp16, int8",
                  {"read_only": True, "additional_constraints": f"one of: {', '.join(PRECISIONS)}"}),
    "backend": ("auto", "inference engine: auto, torch, onnxruntime, openvino, tensorrt",
                {"read_only": True, "additional_constraints": f"one of: {', '.join(BACKENDS)}"}),
    "calibration": ("", "int8 with a non-default model: a folder of training photos to calibrate on",
                    {"read_only": True}),
    "num_threads": (0, "torch CPU threads (0: torch's default)", {"read_only": True, **_int_range(0, 256)}),
    "input_width": (0, "resize images to this width before the network (0 with input_height 0: native size)",
                    {"read_only": True, **_int_range(0, 8192)}),
    "input_height": (0, "resize height (see input_width)", {"read_only": True, **_int_range(0, 8192)}),
    "input_scale": (1.0, "resize images by this factor before the network (1: native size; not with input_width); "
                    "2.5 matches best with the default model, at 6.25x the compute",
                    {"read_only": True, **_float_range(0.25, 4.0)}),
    "contrast": ("stretch", "stretch: each image's values stretched to 0..255 before the network (more repeatable "
                 "keypoints in dim, hazy or badly exposed frames); none: the image as received",
                 {"read_only": True, "additional_constraints": f"one of: {', '.join(CONTRASTS)}"}),
    "image_qos": ("sensor_data", "image subscription QoS: sensor_data (BEST_EFFORT, depth 1) or reliable (depth 1)",
                  {"read_only": True, "additional_constraints": f"one of: {', '.join(IMAGE_QOS)}"}),
    "use_compressed": (False, "also subscribe <image>/compressed (sensor_msgs/CompressedImage)", {"read_only": True}),
    "use_camera_info": (False, "use camera_info for undistorted normalised coordinates", {"read_only": True}),
    "camera_info_sync": ("exact", "exact / approximate (message_filters) or latest (newest CameraInfo)",
                         {"read_only": True, "additional_constraints": f"one of: {', '.join(CAMERA_INFO_SYNC)}"}),
    "camera_info_slop": (0.02, "approximate sync slop in seconds", {"read_only": True, **_float_range(0.0, 1.0)}),
    "top_k": (1000, "keep at most this many keypoints per image", _int_range(1, 100000)),
    "score_threshold": (0.0, "keep keypoints with score > this", _float_range(0.0, 1.0)),
    "nms_radius": (0, "cell non-maximum suppression radius in cells (0: off)", _int_range(0, 16)),
    "matching.mutual": (True, "keep only mutual nearest neighbours", {}),
    "matching.ratio": (0.0, "Lowe ratio test threshold (0: off)", _float_range(0.0, 1.0)),
    "matching.max_distance": (0.0, "maximum descriptor L2 distance (0: off)", _float_range(0.0, 2.0)),
    "matching.geometry": ("none", "geometric verification of matches",
                          {"additional_constraints": f"one of: {', '.join(GEOMETRY_MODELS)}"}),
    "matching.geometry_threshold": (3.0, "inlier threshold in pixels", _float_range(0.1, 100.0)),
    "publish_descriptors": (True, "fill Keypoints.descriptors (N x D float32)", {}),
    "max_image_pixels": (4096 * 4096, "larger images are rejected with a warning", _int_range(1, 1 << 30)),
    "debug_image": (True, "publish ~/debug_image (built only while subscribed)", {}),
    "debug_tail_length": (10, "frames of track tail drawn in the debug image", _int_range(1, 100)),
    "mask": ("", "8-bit image file of the camera's size: no keypoint where it is 0 (robot body, lens rim); empty: off",
             {"read_only": True}),
    # An empty default has no type in rclpy: declared as an integer array, then set to [] (see __init__).
    "roi": (Parameter.Type.INTEGER_ARRAY, "region of interest [x, y, w, h] pixels: no keypoint outside; []: off",
            {}),
    "publish_vins_features": (False, "publish ~/features (sensor_msgs/PointCloud, VINS-Fusion feature_tracker layout); "
                              "needs use_camera_info", {"read_only": True}),
    "vins_camera_id": (0, "the camera_id channel of ~/features", {"read_only": True, **_int_range(0, 255)}),
    # IMU-aided matching (docs/ros.md, "IMU-aided matching")
    "use_imu": (False, "subscribe imu (sensor_msgs/Imu): the gyro rotation between frames restricts matching to "
                "matching.prediction_radius around K R K^-1 of the previous keypoints (needs use_camera_info)",
                {"read_only": True}),
    "imu_to_camera": ([0.0, 0.0, 0.0, 1.0], "rotation from the IMU frame to the camera optical frame (x right, y down, "
                      "z forward) as a quaternion [x, y, z, w] (tf2: target camera optical frame, source IMU frame)",
                      {"read_only": True}),
    "matching.prediction_radius": (20.0, "IMU-aided matching: a keypoint is a candidate only within this many pixels "
                                   "of its gyro-predicted position (0: predict, do not restrict)",
                                   _float_range(0.0, 10000.0)),
}  # fmt: skip
IMU_WAIT_S = 0.05  # how long a frame waits for the IMU sample of its own instant

# Runtime parameter -> Settings field.
RUNTIME_NAMES = {
    "top_k": "top_k",
    "score_threshold": "score_threshold",
    "nms_radius": "nms_radius",
    "matching.mutual": "matching_mutual",
    "matching.ratio": "matching_ratio",
    "matching.max_distance": "matching_max_distance",
    "matching.geometry": "geometry",
    "matching.geometry_threshold": "geometry_threshold",
    "publish_descriptors": "publish_descriptors",
    "max_image_pixels": "max_image_pixels",
    "debug_image": "debug_image",
    "debug_tail_length": "debug_tail_length",
    "roi": "roi",
    "matching.prediction_radius": "matching_prediction_radius",
}


@dataclass
class Frame:
    """One received frame waiting for the worker."""

    msg: Image | CompressedImage
    camera_info: CameraInfo | None
    received_ns: int  # time.monotonic_ns() at receipt


@dataclass
class DetectedFrame:
    """A frame past the network (the detect thread), waiting for the finish thread."""

    frame: Frame
    settings: Settings  # the snapshot the frame was detected with; it is finished with the same one
    config: PipelineConfig  # the pipeline config derived from ``settings`` once, for detect and finish
    image: ConvertedImage
    detected: Detected
    taken_ns: int  # time.monotonic_ns() when the detect thread took the frame
    conversion_ms: float
    detected_ns: int  # time.monotonic_ns() when the network was done


class LatestFrameSlot:
    """One-slot buffer: ``put`` replaces an unprocessed frame (counted as dropped), ``take`` waits for one."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._frame: Frame | None = None
        self._closed = False
        self.dropped = 0

    def put(self, frame: Frame) -> None:
        with self._condition:
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._condition.notify()

    def take(self, timeout: float) -> Frame | None:
        with self._condition:
            if self._frame is None and not self._closed:
                self._condition.wait(timeout)
            frame, self._frame = self._frame, None
            return frame

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()


class FinishHandoff:
    """The detect thread hands a detected frame to the finish thread: ``put`` waits until the finish thread is
    done with the previous frame (so no detected frame ever waits behind another), ``take`` waits for a frame and
    ``done`` says it has been finished. Both waits time out (False / None) so the threads can see a shutdown."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._frame: DetectedFrame | None = None
        self._finishing = False

    def put(self, frame: DetectedFrame, timeout: float) -> bool:
        with self._condition:
            if not self._condition.wait_for(lambda: self._frame is None and not self._finishing, timeout):
                return False
            self._frame = frame
            self._condition.notify_all()
            return True

    def take(self, timeout: float) -> DetectedFrame | None:
        with self._condition:
            if not self._condition.wait_for(lambda: self._frame is not None, timeout):
                return None
            frame, self._frame, self._finishing = self._frame, None, True
            return frame

    def done(self) -> None:
        with self._condition:
            self._finishing = False
            self._condition.notify_all()


class Statistics:
    """Counters and timings since the last diagnostics report (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received = self.processed = self.rejected = self.failed = 0
        self.latency_ms: list[float] = []
        self.inference_ms: list[float] = []
        self.overhead_parts_ms: dict[str, list[float]] = {}  # OVERHEAD_PARTS name -> one value per frame
        self.last_received_ns = 0

    def count_received(self) -> None:
        with self._lock:
            self.received += 1
            self.last_received_ns = time.monotonic_ns()

    def count(self, what: str) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)

    def add_processed(self, latency_ms: float, inference_ms: float, parts_ms: dict[str, float] | None = None) -> None:
        """One processed frame: receipt-to-published latency, the detector call and (optionally) where the rest of
        the latency went (``OVERHEAD_PARTS`` name -> ms)."""
        with self._lock:
            self.processed += 1
            self.latency_ms.append(latency_ms)
            self.inference_ms.append(inference_ms)
            for name, value in (parts_ms or {}).items():
                self.overhead_parts_ms.setdefault(name, []).append(value)

    def take(self) -> dict[str, Any]:
        """Counters since the last call, then reset."""
        with self._lock:
            snapshot = {
                "received": self.received,
                "processed": self.processed,
                "rejected": self.rejected,
                "failed": self.failed,
                "latency_ms": self.latency_ms,
                "inference_ms": self.inference_ms,
                "overhead_parts_ms": self.overhead_parts_ms,
                "last_received_ns": self.last_received_ns,
            }
            self.received = self.processed = self.rejected = self.failed = 0
            self.latency_ms, self.inference_ms, self.overhead_parts_ms = [], [], {}
            return snapshot


class _StatusBuilder:
    """A DiagnosticStatus built as diagnostic_updater's DiagnosticStatusWrapper builds one (summary, key values)."""

    def __init__(self, name: str, hardware_id: str):
        self.status = DiagnosticStatus(name=name, hardware_id=hardware_id)

    def summary(self, level: bytes, message: str) -> None:
        self.status.level, self.status.message = level, message

    def add(self, key: str, value: Any) -> None:
        self.status.values.append(KeyValue(key=key, value=str(value)))


class ThrottledWarnings:
    """Log a warning at most every ``period_s`` seconds per kind, with the number of suppressed repeats."""

    def __init__(self, logger: Any, period_s: float = WARN_PERIOD_S):
        self._logger = logger
        self._period_s = period_s
        self._last: dict[str, tuple[float, int]] = {}  # kind -> (time of the last warning logged, suppressed since)

    def warn(self, kind: str, message: str) -> None:
        now = time.monotonic()
        last, suppressed = self._last.get(kind, (-1e9, 0))
        if now - last < self._period_s:
            self._last[kind] = (last, suppressed + 1)
            return
        repeats = f" ({suppressed} similar suppressed)" if suppressed else ""
        self._logger.warning(message + repeats)
        self._last[kind] = (now, 0)


class DetectorNode(Node):
    """KeyPointNet detector node (see the module docstring).

    detector: an already built :class:`KeypointDetector` (tests, embedding); None builds one from the
    ``model``/``device``/``half``/``input_*`` parameters. Raises CheckpointError / ValueError for a bad
    configuration at start-up (no model, invalid parameter combination).
    """

    def __init__(self, detector: KeypointDetector | None = None, **node_kwargs: Any):
        super().__init__("kp2d_detector", **node_kwargs)
        declare_parameters(self)
        self._settings = self._read_settings()
        self._check_startup_parameters()
        if self._param("mask"):
            self._settings = replace(self._settings, mask=read_mask(self._param("mask")))
        self._warn = ThrottledWarnings(self.get_logger()).warn  # (kind, message): bad frames must not flood the log
        self._model_name = f"given {type(detector).__name__}"
        self._detector = detector if detector is not None else self._build_detector()
        self._device = self._detector.device

        self._slot = LatestFrameSlot()
        self._stats = Statistics()
        self._pipeline = FramePipeline(self._detector, pipeline_config_from_settings(self._settings))
        self._sequence = 0
        self._history = TrackHistory(self._settings.debug_tail_length)
        self._latest_camera_info: CameraInfo | None = None
        self._debug_images_published = 0
        self._frame_loss = FrameLossMonitor()
        self._frame_loss_lock = threading.Lock()
        self._transport_lost = 0  # frames lost before the node since the last diagnostics report
        self._frame_loss_method = ""

        self.add_on_set_parameters_callback(self._on_set_parameters)
        output_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        self._keypoints_pub = self.create_publisher(Keypoints, "~/keypoints", output_qos)
        self._matches_pub = self.create_publisher(Matches, "~/matches", output_qos)
        self._debug_pub = self.create_publisher(Image, "~/debug_image", QoSProfile(depth=1))
        self._features_pub = None
        if self._param("publish_vins_features"):
            self._features_pub = self.create_publisher(PointCloud, "~/features", output_qos)
        self._setup_diagnostics()
        self._setup_subscriptions()
        self._setup_imu()
        self.create_timer(FRAME_LOSS_CHECK_PERIOD_S, self._check_frame_loss)

        buffer_warning = receive_buffer_warning()
        if buffer_warning:
            self.get_logger().warning(buffer_warning)

        self._running = True
        # Two worker threads, one frame each at most (docs/ros.md, "Frame path"): the detect thread converts and
        # runs the network; the finish thread matches, publishes and counts, in frame order, while the detect
        # thread runs the next frame's network. The detect thread hands a frame over only once the finish thread is
        # done with the previous one: no detected frame waits behind another (newer frames wait, and are dropped,
        # in _slot), so at most three frames are in the node: pending, in the network, being finished.
        self._handoff = FinishHandoff()
        self._worker = threading.Thread(target=self._detect_loop, name="kp2d_detector_detect", daemon=True)
        self._finisher = threading.Thread(target=self._finish_loop, name="kp2d_detector_finish", daemon=True)
        self._worker.start()
        self._finisher.start()
        self.get_logger().info(
            f"ready: model {self._model_name}, device {self._device}, network input {self._network_input()}, "
            f"engine {getattr(self._detector, 'engine_choice', 'given')}, "
            f"image topic {self.resolve_topic_name('image')}, conversion via {BACKEND}"
        )
        if self._settings.mask is not None:
            height, width = self._settings.mask.shape
            ignored = 100.0 * np.count_nonzero(self._settings.mask == 0) / self._settings.mask.size
            self.get_logger().info(f"mask {self._param('mask')}: {width} x {height} pixels, {ignored:.1f} % ignored")

    # --- start-up ------------------------------------------------------------------------------------

    def _network_input(self) -> str:
        """How images are sized for the network, for the start-up log: native, WxH or xS."""
        if self._param("input_width"):
            return f"{self._param('input_width')}x{self._param('input_height')}"
        scale = self._param("input_scale")
        return "native size" if scale == 1.0 else f"image size x {scale:g}"

    def _param(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _read_settings(self) -> Settings:
        return Settings(**{field: _settings_value(name, self._param(name)) for name, field in RUNTIME_NAMES.items()})

    def _check_startup_parameters(self) -> None:
        problems = parameter_problems({name: self._param(name) for name in PARAMETERS})
        if self._param("publish_vins_features") and not self._param("use_camera_info"):
            problems.append("publish_vins_features needs use_camera_info:=true (features are normalised coordinates)")
        if problems:
            raise ValueError("; ".join(problems))

    @staticmethod
    def _invalid_reason(name: str, value: Any) -> str | None:
        """Why ``value`` is not valid for parameter ``name`` beyond its type and range (None: valid)."""
        choices = {"matching.geometry": GEOMETRY_MODELS, "image_qos": IMAGE_QOS, "camera_info_sync": CAMERA_INFO_SYNC}
        choices |= {"precision": PRECISIONS, "backend": BACKENDS, "contrast": CONTRASTS}
        if name in choices and value not in choices[name]:
            return f"{name} must be one of {', '.join(choices[name])}, got {value!r}"
        if name == "roi" and len(value) and (len(value) != 4 or min(value[:2]) < 0 or min(value[2:]) <= 0):
            return f"roi must be [] (off) or [x, y, w, h] with x, y >= 0 and w, h > 0 pixels, got {list(value)}"
        return None

    def _build_detector(self) -> KeypointDetector:
        detector = build_detector({name: self._param(name) for name in PARAMETERS})
        self._model_name = self._param("model") or str(default_checkpoint_path())
        return detector

    def _setup_subscriptions(self) -> None:
        reliability = (
            ReliabilityPolicy.BEST_EFFORT if self._param("image_qos") == "sensor_data" else ReliabilityPolicy.RELIABLE
        )
        image_qos = QoSProfile(depth=1, reliability=reliability, history=HistoryPolicy.KEEP_LAST)
        info_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)
        sync = self._param("camera_info_sync")
        use_info = self._param("use_camera_info")
        if use_info and sync != "latest" and message_filters is None:
            self.get_logger().warning(
                f"camera_info_sync={sync} needs message_filters, which is not installed: using the latest CameraInfo"
            )
            sync = "latest"
        if use_info and sync != "latest":
            # message_filters' Python Subscriber defaults to a RELIABLE profile: pass the QoS explicitly.
            image_sub = message_filters.Subscriber(self, Image, "image", qos_profile=image_qos)
            info_sub = message_filters.Subscriber(self, CameraInfo, "camera_info", qos_profile=info_qos)
            image_sub.registerCallback(self._note_image)  # every image, synchronised or not (frame loss check)
            info_sub.registerCallback(self._note_camera_info)
            if sync == "exact":
                self._sync = message_filters.TimeSynchronizer([image_sub, info_sub], 10)
            else:
                slop = self._param("camera_info_slop")
                self._sync = message_filters.ApproximateTimeSynchronizer([image_sub, info_sub], 10, slop)
            self._sync.registerCallback(self._on_image_and_info)
        else:
            self.create_subscription(Image, "image", self._on_image, image_qos)
            if use_info:
                self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, info_qos)
        if self._param("use_compressed"):
            topic = self.resolve_topic_name("image") + "/compressed"
            self.create_subscription(CompressedImage, topic, self._on_image, image_qos)

    def _setup_diagnostics(self) -> None:
        """/diagnostics once a second, one status named after the node's fully qualified name. Published here
        rather than through diagnostic_updater, whose Python Updater names a status after the node's name only
        (``kp2d_detector: keypoints``), the same for every camera of a rig (4.x: unless its parameter
        ``diagnostic_updater.use_fqn``, default false, is set)."""
        self._diagnostic_name = f"{self.get_fully_qualified_name()}: keypoints"
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diagnostics_last = time.monotonic()
        self.create_timer(1.0, self._publish_diagnostics)

    # --- callbacks (executor thread: keep them short) --------------------------------------------------

    def _note_image(self, msg: Image | CompressedImage) -> None:
        with self._frame_loss_lock:
            self._frame_loss.image(stamp_ns(msg.header.stamp), time.monotonic())

    def _note_camera_info(self, msg: CameraInfo) -> None:
        with self._frame_loss_lock:
            self._frame_loss.camera_info(stamp_ns(msg.header.stamp), time.monotonic())

    def _on_image(self, msg: Image | CompressedImage) -> None:
        self._note_image(msg)
        self._stats.count_received()
        camera_info = self._latest_camera_info if self._param("use_camera_info") else None
        self._slot.put(Frame(msg, camera_info, time.monotonic_ns()))

    def _on_image_and_info(self, msg: Image, camera_info: CameraInfo) -> None:
        self._stats.count_received()
        self._slot.put(Frame(msg, camera_info, time.monotonic_ns()))

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._note_camera_info(msg)
        self._latest_camera_info = msg

    def _check_frame_loss(self) -> None:
        """Warn (throttled) when frames the camera sent did not reach the node (FrameLossMonitor)."""
        with self._frame_loss_lock:
            report = self._frame_loss.take(time.monotonic())
        if report.method:
            self._frame_loss_method = report.method
        if report.lost == 0:
            return
        self._transport_lost += report.lost
        self._warn(
            "transport_loss",
            f"frames lost in transport: {report.lost} of the last {report.expected} frames the camera sent never "
            f"reached the node (found by {report.method}); for large best-effort images see {FRAME_LOSS_DOCS}",
        )

    def _on_set_parameters(self, parameters: list[Any]) -> SetParametersResult:
        """Validate runtime changes (types, ranges and read-only are checked by rclpy) and apply them."""
        changes = {}  # parameter name (as `ros2 param set` takes it) -> new value
        for parameter in parameters:
            reason = self._invalid_reason(parameter.name, parameter.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
            if parameter.name in RUNTIME_NAMES:
                changes[parameter.name] = parameter.value
        if changes:
            settings = {RUNTIME_NAMES[name]: _settings_value(name, value) for name, value in changes.items()}
            self._settings = replace(self._settings, **settings)  # one reference swap: the worker sees all or none
            self.get_logger().info(f"parameters changed: {', '.join(f'{n}={v!r}' for n, v in changes.items())}")
        return SetParametersResult(successful=True)

    # --- worker threads ----------------------------------------------------------------------------

    def _detect_loop(self) -> None:
        """The detect thread: newest frame -> conversion -> network -> handed to the finish thread."""
        while not self._shutting_down():
            frame = self._slot.take(timeout=0.2)
            if frame is None or self._shutting_down():
                continue
            with self._frame_errors():
                detected = self._detect(frame)
                while not self._shutting_down() and not self._handoff.put(detected, timeout=0.2):
                    pass  # the finish thread still holds the previous frame

    def _finish_loop(self) -> None:
        """The finish thread: detected frames in order -> matching, tracks -> published and counted."""
        while not self._shutting_down():
            detected = self._handoff.take(timeout=0.2)
            if detected is None:
                continue
            try:
                with self._frame_errors():
                    self._finish(detected)
            finally:
                self._handoff.done()

    @contextlib.contextmanager
    def _frame_errors(self) -> Iterator[None]:
        """Around one frame's work on either thread: bad input or a model failure is counted and warned about
        (throttled), and the node goes on with the next frame."""
        try:
            yield
        except ImageInputError as error:
            self._stats.count("rejected")
            self._warn(f"image:{error.kind}", f"frame skipped: {error}")
        except MaskSizeError as error:
            self._stats.count("rejected")
            self._warn("image:mask_size", f"frame skipped: {error} (parameter 'mask')")
        except ImageFormatError as error:  # the detector refused the image (e.g. thinner than one cell)
            self._stats.count("rejected")
            self._warn("image:refused_by_detector", f"frame skipped: {error}")
        except OutOfMemoryError as error:
            self._stats.count("failed")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self._warn("oom", f"frame skipped: out of memory on {self._device} ({str(error).splitlines()[0]}); "
                       "consider input_width/input_height, top_k or half")  # fmt: skip
        except Exception as error:  # a model failure on one frame must not stop the node
            if self._shutting_down():
                return  # Ctrl-C while this frame was in flight: its publishers are gone, a normal stop
            self._stats.count("failed")
            self._warn(f"failure:{type(error).__name__}", f"frame skipped: processing failed: {error!r}")

    def _shutting_down(self) -> bool:
        """The node is being stopped, or its context was shut down (Ctrl-C: rclpy's signal handler)."""
        return not self._running or not self.context.ok()

    def _intrinsics(self, frame: Frame, image_size: tuple[int, int]) -> Intrinsics | None:
        """The frame's CameraInfo as Intrinsics, or None (with a throttled warning when it is unusable)."""
        if frame.camera_info is None:
            if self._param("use_camera_info"):
                self._warn("camera_info:none", "use_camera_info is set but no camera_info has been received yet")
            return None
        try:
            return check_camera_info(frame.camera_info, image_size)
        except CameraInfoError as error:
            self._warn(f"camera_info:{error.kind}", str(error))
            return None

    def _detect(self, frame: Frame) -> DetectedFrame:
        """Convert the message and run the network (the detect thread)."""
        taken_ns = time.monotonic_ns()
        settings = self._settings
        image = message_to_array(frame.msg, settings.max_image_pixels, self._detector)
        conversion_ms = (time.monotonic_ns() - taken_ns) / 1e6
        config = pipeline_config_from_settings(settings)
        detected = self._pipeline.detect(image.pixels, channel_order=image.channel_order, config=config)
        return DetectedFrame(frame, settings, config, image, detected, taken_ns, conversion_ms, time.monotonic_ns())

    def _finish(self, job: DetectedFrame) -> None:
        """Pipeline stages after the network -> publish (keypoints, matches, debug image) and count (the finish
        thread, in frame order)."""
        started_ns = time.monotonic_ns()
        frame, settings, image = job.frame, job.settings, job.image
        header = frame.msg.header
        width, height = job.detected.image_size
        previous_stamp_ns = self._pipeline.previous_stamp_ns
        intrinsics = self._intrinsics(frame, (width, height))
        record = self._pipeline.finish(
            job.detected,
            stamp_ns(header.stamp),
            intrinsics=intrinsics,
            config=job.config,
            rotation=self._frame_rotation(previous_stamp_ns, stamp_ns(header.stamp), intrinsics),
        )
        finished_ns = time.monotonic_ns()
        if record.reset:
            self._warn(
                "stamp_backwards",
                f"image stamp went backwards ({record.stamp_ns / 1e9:.3f} s < {previous_stamp_ns / 1e9:.3f} s): "
                "matching and tracks reset",
            )
            self._history.clear()

        self._sequence += 1
        self._keypoints_pub.publish(keypoints_from_record(header, self._sequence, record, settings.publish_descriptors))
        self._matches_pub.publish(matches_from_record(header, record, settings.geometry))
        if self._features_pub is not None:
            self._publish_vins_features(header, record)
        self._history.resize(settings.debug_tail_length)
        self._history.add(record.tracks.ids, record.points)
        if settings.debug_image and self._debug_pub.get_subscription_count() > 0:
            self._publish_debug_image(header, image, record.points, record.tracks.lengths)
        published_ns = time.monotonic_ns()
        parts_ms = {
            "wait": (job.taken_ns - frame.received_ns) / 1e6,
            "conversion": job.conversion_ms,
            "handoff": (started_ns - job.detected_ns) / 1e6,
            "matching": (finished_ns - started_ns) / 1e6,
            "publishing": (published_ns - finished_ns) / 1e6,
        }
        self._stats.add_processed((published_ns - frame.received_ns) / 1e6, record.inference_ms, parts_ms)

    def _publish_vins_features(self, header: Any, record: FrameRecord) -> None:
        """~/features for VINS-Fusion: the tracked keypoints (length >= 2); nothing when there are none (the first
        frame, after a reset: VINS-Mono's feature_tracker skips its first image too) or no normalised coordinates
        (no usable camera_info: warned about by ``_intrinsics``)."""
        if record.normalized is None:
            return
        features = vins_features(record, self._param("vins_camera_id"))
        if len(features["ids"]):
            self._features_pub.publish(vins_point_cloud(header, features))

    def _publish_debug_image(self, header: Any, image: ConvertedImage, points: np.ndarray, lengths: np.ndarray) -> None:
        canvas = draw_debug_image(image.pixels, image.channel_order, points, lengths, self._history.segments())
        msg = Image(header=header, height=canvas.shape[0], width=canvas.shape[1], encoding="bgr8")
        msg.step = canvas.shape[1] * 3
        msg.data = to_array("B", canvas)
        self._debug_pub.publish(msg)
        self._debug_images_published += 1

    # --- IMU-aided matching (use_imu) -------------------------------------------------------------

    def _setup_imu(self) -> None:
        """With use_imu: the camera-IMU rotation (start-up error when invalid), a gyro buffer and the subscription."""
        self._gyro: GyroBuffer | None = None
        self._imu_aided_frames = self._imu_unaided_frames = 0
        if not self._param("use_imu"):
            return
        try:
            self._camera_from_imu = rotation_from_quaternion(self._param("imu_to_camera"))
        except MotionPredictionError as error:
            raise ValueError(f"parameter 'imu_to_camera': {error}") from None
        if not self._param("use_camera_info"):
            self.get_logger().warning(
                "use_imu is set without use_camera_info: keypoints cannot be predicted without the camera's "
                "intrinsics, so matching stays unrestricted"
            )
        self._gyro = GyroBuffer()
        qos = QoSProfile(depth=400, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)
        self.create_subscription(Imu, "imu", self._on_imu, qos)
        self.get_logger().info(
            f"IMU-aided matching: gyro from {self.resolve_topic_name('imu')}, prediction radius "
            f"{self._settings.matching_prediction_radius:g} px"
        )

    def _on_imu(self, msg: Imu) -> None:
        if msg.angular_velocity_covariance[0] == -1.0:  # sensor_msgs/Imu: "no angular velocity in this message"
            self._warn("imu:no_angular_velocity", "imu message without angular velocity (covariance[0] = -1): ignored")
            return
        w = msg.angular_velocity
        if not self._gyro.add(stamp_ns(msg.header.stamp), (w.x, w.y, w.z)):
            self._warn("imu:refused", "imu message ignored: angular velocity not finite, or its stamp is not after "
                       "the previous imu message's")  # fmt: skip

    def _frame_rotation(self, previous_ns: int | None, stamp_ns: int, intrinsics: Intrinsics | None) -> Any:
        """The gyro's camera rotation R_cur_prev since the previous processed frame, or None (then matching is
        unrestricted; a throttled warning says why)."""
        if self._gyro is None or previous_ns is None or stamp_ns < previous_ns:
            return None
        if intrinsics is None:
            self._imu_unaided_frames += 1
            self._warn("imu:no_intrinsics", "IMU-aided matching needs camera_info (use_camera_info) to predict "
                       "keypoints: this frame is matched unrestricted")  # fmt: skip
            return None
        try:
            imu_rotation = self._gyro.rotation(previous_ns, stamp_ns, IMU_WAIT_S)
        except GyroCoverageError as error:
            self._imu_unaided_frames += 1
            self._warn(f"imu:{error.kind}", f"IMU-aided matching skipped for this frame: {error}; matched unrestricted")
            return None
        self._imu_aided_frames += 1
        return camera_rotation(imu_rotation, self._camera_from_imu)

    # --- diagnostics -------------------------------------------------------------------------------

    def _fill_diagnostics(self, stat: _StatusBuilder) -> _StatusBuilder:
        """Fill ``stat`` with rates, latency and drops since the last report."""
        now = time.monotonic()
        period, self._diagnostics_last = max(1e-3, now - self._diagnostics_last), now
        snapshot = self._stats.take()
        dropped, self._slot.dropped = self._slot.dropped, 0
        latency, inference = snapshot["latency_ms"], snapshot["inference_ms"]
        idle_s = (time.monotonic_ns() - snapshot["last_received_ns"]) / 1e9 if snapshot["last_received_ns"] else None
        if snapshot["received"] == 0:
            level, message = DiagnosticStatus.WARN, "no images received"
        elif snapshot["failed"] or snapshot["rejected"]:
            level = DiagnosticStatus.WARN
            message = f"{snapshot['rejected']} rejected / {snapshot['failed']} failed frames"
        else:
            level, message = DiagnosticStatus.OK, "processing"
        transport_lost, self._transport_lost = self._transport_lost, 0
        if transport_lost and level == DiagnosticStatus.OK:
            level, message = DiagnosticStatus.WARN, f"{transport_lost} frames lost in transport (see {FRAME_LOSS_DOCS})"
        stat.summary(level, message)
        stat.add("input rate (Hz)", f"{snapshot['received'] / period:.2f}")
        stat.add("output rate (Hz)", f"{snapshot['processed'] / period:.2f}")
        stat.add("dropped frames (newer frame arrived first)", dropped)
        stat.add("frames lost in transport (sent by the camera, never received)",
                 transport_lost if self._frame_loss_method else "n/a")  # fmt: skip
        stat.add("frame loss check", self._frame_loss_method or "n/a (no camera_info stamps, irregular stamps)")
        stat.add("rejected frames (bad input)", snapshot["rejected"])
        stat.add("failed frames (model errors)", snapshot["failed"])
        stat.add("latency mean (ms, receipt to publish)", f"{np.mean(latency):.1f}" if latency else "n/a")
        stat.add("latency max (ms)", f"{np.max(latency):.1f}" if latency else "n/a")
        stat.add("inference mean (ms)", f"{np.mean(inference):.1f}" if inference else "n/a")
        overhead = np.subtract(latency, inference)  # waiting for the worker, conversion, matching, messages
        stat.add("overhead mean (ms, latency minus inference)", f"{np.mean(overhead):.2f}" if inference else "n/a")
        parts = snapshot["overhead_parts_ms"]
        for name in OVERHEAD_PARTS:
            stat.add(f"overhead part mean (ms): {name}", f"{np.mean(parts[name]):.2f}" if parts.get(name) else "n/a")
        stat.add("processed frames", snapshot["processed"])
        stat.add("seconds since last image", f"{idle_s:.1f}" if idle_s is not None else "never")
        stat.add("debug images published", self._debug_images_published)
        if self._gyro is not None:
            stat.add("IMU-aided frames (total)", self._imu_aided_frames)
            stat.add("frames matched without the IMU (total)", self._imu_unaided_frames)
        stat.add("device", str(self._device))
        return stat

    def _publish_diagnostics(self) -> None:
        builder = _StatusBuilder(self._diagnostic_name, str(self._device))
        self._fill_diagnostics(builder)
        array = DiagnosticArray(status=[builder.status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(array)

    # --- shutdown ----------------------------------------------------------------------------------

    def destroy_node(self) -> None:
        self._running = False
        # A constructor that failed part-way (bad model) has no slot or worker yet: nothing to stop.
        if hasattr(self, "_slot"):
            self._slot.close()
        for thread in (getattr(self, "_worker", None), getattr(self, "_finisher", None)):
            if thread is not None and thread.is_alive():
                thread.join(timeout=10.0)
        super().destroy_node()


def declare_parameters(node: Node) -> None:
    """Declare the PARAMETERS table on ``node`` (the detector node; the bag extractor's parameter reader)."""
    for name, (default, description, extra) in PARAMETERS.items():
        node.declare_parameter(name, default, ParameterDescriptor(description=description, **extra))
        unset = node.get_parameter_or(name, None).type_ == Parameter.Type.NOT_SET  # typed, no value given
        if default == Parameter.Type.INTEGER_ARRAY and unset:
            node.set_parameters([Parameter(name, Parameter.Type.INTEGER_ARRAY, [])])


def settings_from_parameters(values: dict[str, Any]) -> Settings:
    """The Settings a node started with these parameter values (name -> value) would use, the ``mask`` file read
    (ValueError naming it when unusable). For the bag extractor; the node reads the same in its constructor."""
    settings = Settings(**{field: _settings_value(name, values[name]) for name, field in RUNTIME_NAMES.items()})
    return replace(settings, mask=read_mask(values["mask"])) if values["mask"] else settings


def parameter_problems(values: dict[str, Any]) -> list[str]:
    """What is wrong with a full set of the node's parameter values (name -> value) beyond the types and ranges
    rclpy checks (empty: valid). The node checks its start-up values with it, the bag extractor too."""
    problems = [DetectorNode._invalid_reason(name, values[name]) for name in PARAMETERS]
    problems = [p for p in problems if p]
    if (values["input_width"] == 0) != (values["input_height"] == 0):
        problems.append("input_width and input_height must both be 0 (native size) or both > 0")
    if values["input_width"] and values["input_scale"] != 1.0:
        problems.append("give input_width/input_height or input_scale, not both")
    return problems


def build_detector(values: dict[str, Any]) -> KeypointDetector:
    """The node's KeypointDetector for its model parameter values (``MODEL_PARAMETERS``: model, device, precision,
    input size...; top_k, thresholds and masks are passed per frame by the frame pipeline).

    Raises CheckpointError (no or missing model) / ValueError (bad combination). The bag extractor, the stereo node
    and multi_detector use it too."""
    if (values["input_width"] == 0) != (values["input_height"] == 0) or (
        values["input_width"] and values["input_scale"] != 1.0
    ):
        raise ValueError("give input_width and input_height (both > 0) or input_scale, not both")
    model = values["model"]
    if not model and not default_checkpoint_path().is_file():
        raise CheckpointError(
            f"no model: the default model {default_checkpoint_path()} is not installed; pass a checkpoint with "
            "'--ros-args -p model:=/path/to/model.ckpt' (released KP2D .ckpt, project .safetensors or trainer .pt)"
        )
    if model and not os.path.isfile(model):
        raise CheckpointError(f"model file {model!r} does not exist (parameter 'model')")
    if values["num_threads"] > 0:
        torch.set_num_threads(values["num_threads"])
    width, height = values["input_width"], values["input_height"]
    detector = KeypointDetector(
        checkpoint=model or None,
        device=values["device"],
        half=values["half"],
        input_size=(width, height) if width and height else None,
        input_scale=None if width and height else values["input_scale"],  # default 1.0: one or the other
        precision=values["precision"],
        backend=values["backend"],
        calibration=values["calibration"] or None,
        contrast=values["contrast"],
    )
    if detector.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # a camera keeps its frame size: tune cuDNN's kernels once for it
    return detector


def main(args: list[str] | None = None) -> int:
    """``ros2 run kp2d_ros detector [--ros-args ...]``."""
    return run_node(DetectorNode, "kp2d_detector", args)


if __name__ == "__main__":
    sys.exit(main())

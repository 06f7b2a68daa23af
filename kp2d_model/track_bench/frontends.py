"""Front-ends for the sequence benchmark: one frame in, keypoints + track ids + frame-to-frame matches out.

Every front-end carries track ids with ``kp2d_model.tracks.carry_tracks``, the code the detector node uses.
``kp2d`` runs the node's own frame path, ``kp2d_model.frame_pipeline.FramePipeline`` (detect -> match with the
previous frame's descriptors -> optional geometry -> carry tracks), with the node's parameters as a
``PipelineConfig``; only the bench's constant-motion guided matching (``prediction_radius`` > 0, not in the node)
runs the generic descriptor path below. The other descriptor front-ends (``orb``, ``sift``) follow the same steps:
detect -> match with the previous frame's descriptors (mutual nearest neighbour, optional ratio / max distance)
-> optional ``verify_geometry`` (the node's ``matching.geometry``; default ``none``) -> ``carry_tracks`` with
the surviving pairs. ORB's binary descriptors are matched by an OpenCV brute-force Hamming matcher with the
same mutual / ratio rules. ``klt`` is VINS-Mono/Fusion's feature_tracker (see ``KltFrontEnd``).

IMU-aided matching (``gyro_radius`` > 0, ``--gyro``): the benchmark passes each frame the synthetic gyro's camera
rotation since the previous processed frame and the sequence's K; ``kp2d`` hands them to ``FramePipeline.step``
(``rotation=``, ``MatchConfig.prediction_radius``) as the node does with its IMU, ``sift`` builds the same
candidate mask (``gyro_allowed``) for ``match_descriptors``.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from kp2d_model.camera import Intrinsics
from kp2d_model.frame_pipeline import FramePipeline, MatchConfig, PipelineConfig
from kp2d_model.matching import match_descriptors, verify_geometry
from kp2d_model.motion_prediction import allowed_near_prediction, predict_points
from kp2d_model.tracks import TrackIds, carry_tracks

METHOD_NAMES = ("kp2d", "klt", "orb", "sift")
GEOMETRY_MODELS = ("none", "homography", "fundamental")


class FrontEndError(ValueError):
    """A front-end cannot be built with the given options."""


NODE_CONTRAST = "stretch"  # the ROS node's ``contrast`` default (kp2d_ros.detector_node.PARAMETERS)


@dataclass(frozen=True)
class MatchingSettings:
    """The node's matching parameters, with the node's defaults (``kp2d_ros.detector_node.PARAMETERS``)."""

    top_k: int = 1000
    mutual: bool = True
    ratio: float = 0.0  # 0: off
    max_distance: float = 0.0  # 0: off (kp2d only: an L2 distance between unit descriptors)
    geometry: str = "none"
    geometry_threshold: float = 3.0  # px
    prediction_radius: float = 0.0  # px; > 0: guided matching around the last motion's prediction (not in the node)
    gyro_radius: float = 0.0  # px; > 0: IMU-aided matching around the gyro rotation's prediction (uses_gyro)


@dataclass
class FrameResult:
    """One processed frame: ``points (N, 2)`` float32 px, their ``tracks``, and the carried pairs
    ``previous_index[j] -> current_index[j]`` (int64, into the previous / this frame's points)."""

    points: np.ndarray
    tracks: TrackIds
    previous_index: np.ndarray
    current_index: np.ndarray


@dataclass
class _Previous:
    points: np.ndarray
    descriptors: Any
    tracks: TrackIds


class DescriptorFrontEnd:
    """Detect + describe every frame, match to the previous frame as the node does, carry track ids."""

    name = "descriptor"

    def __init__(self, settings: MatchingSettings = MatchingSettings()):
        if settings.geometry not in GEOMETRY_MODELS:
            raise FrontEndError(f"geometry must be one of {', '.join(GEOMETRY_MODELS)}, got {settings.geometry!r}")
        self.settings = settings
        self.reset()

    def reset(self) -> None:
        """Forget the previous frame, the last motion and the track ids (a new sequence)."""
        self._previous: _Previous | None = None
        self._last_motion: np.ndarray | None = None  # homography previous-but-one -> previous frame
        self._next_track_id = 1

    def detect(self, image_bgr: np.ndarray) -> tuple[np.ndarray, Any]:
        """-> points ``(N, 2)`` float32 px, descriptors ``(N, D)`` (any type ``match`` accepts)."""
        raise NotImplementedError

    def match(
        self, descriptors_a: Any, descriptors_b: Any, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """-> ``(index_a, index_b)`` int64 arrays of matched pairs (``allowed``: see ``match_descriptors``)."""
        s = self.settings
        matches = match_descriptors(
            descriptors_a,
            descriptors_b,
            mutual=s.mutual,
            ratio=s.ratio or None,
            max_distance=s.max_distance or None,
            allowed=allowed,
        )
        return _numpy_int64(matches.index_a), _numpy_int64(matches.index_b)

    @property
    def uses_gyro(self) -> bool:
        """Whether the benchmark should pass ``rotation`` / ``camera_matrix`` (IMU-aided matching is on)."""
        return self.settings.gyro_radius > 0

    def __call__(
        self, image_bgr: np.ndarray, rotation: np.ndarray | None = None, camera_matrix: np.ndarray | None = None
    ) -> FrameResult:
        """One frame; ``rotation``: the gyro's camera rotation ``R_cur_prev`` since the previous frame and
        ``camera_matrix`` K (3, 3) (no distortion): with ``gyro_radius`` > 0, matching is restricted to that
        radius around ``K R K^-1`` of the previous points (``kp2d_model.motion_prediction``)."""
        points, descriptors = self.detect(image_bgr)
        previous = self._previous
        if previous is not None:
            allowed = None
            if self.settings.gyro_radius > 0 and rotation is not None and camera_matrix is not None:
                allowed = gyro_allowed(previous.points, points, rotation, camera_matrix, self.settings.gyro_radius)
            elif self.settings.prediction_radius > 0 and self._last_motion is not None:
                predicted = _project(previous.points, self._last_motion)  # constant motion: same H again
                gap = np.linalg.norm(predicted[:, None, :] - points[None, :, :], axis=2)
                allowed = gap <= self.settings.prediction_radius
            previous_index, current_index = self.match(previous.descriptors, descriptors, allowed)
        else:
            previous_index = current_index = np.zeros(0, np.int64)
        if previous is not None and self.settings.geometry != "none":
            _, inlier = verify_geometry(
                previous.points[previous_index],
                points[current_index],
                model=self.settings.geometry,
                threshold=self.settings.geometry_threshold,
            )
            previous_index, current_index = previous_index[inlier], current_index[inlier]
        if self.settings.prediction_radius > 0:
            self._last_motion = None
            if previous is not None:
                self._last_motion, _ = verify_geometry(
                    previous.points[previous_index],
                    points[current_index],
                    "homography",
                    self.settings.geometry_threshold,
                )
        tracks, self._next_track_id = carry_tracks(
            previous.tracks if previous is not None else None,
            len(points),
            previous_index,
            current_index,
            self._next_track_id,
        )
        self._previous = _Previous(points, descriptors, tracks)
        return FrameResult(points, tracks, previous_index, current_index)


def gyro_allowed(
    previous_points: np.ndarray, points: np.ndarray, rotation: np.ndarray, camera_matrix: np.ndarray, radius: float
) -> np.ndarray:
    """``(P, N)`` candidates within ``radius`` px of the previous points moved by ``K R K^-1`` (pinhole K)."""
    k = np.asarray(camera_matrix, np.float64)
    normalized = (np.asarray(previous_points, np.float64) - k[:2, 2]) / k[[0, 1], [0, 1]]
    predicted = predict_points(normalized, rotation, PinholeCamera(k))
    return allowed_near_prediction(predicted, points, radius)


@dataclass(frozen=True)
class PinholeCamera:
    """The attributes ``predict_points`` reads, for an undistorted camera."""

    k: np.ndarray
    d: np.ndarray = field(default_factory=lambda: np.zeros(0))
    model: str = "none"


def _project(points: np.ndarray, homography: np.ndarray) -> np.ndarray:
    mapped = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ homography.T
    return mapped[:, :2] / mapped[:, 2:]


def _numpy_int64(values: Any) -> np.ndarray:
    values = values.cpu().numpy() if hasattr(values, "cpu") else values
    return np.asarray(values, dtype=np.int64)


def _detector_accepts(parameter: str) -> bool:
    from kp2d_model.detector import KeypointDetector

    return parameter in inspect.signature(KeypointDetector.__init__).parameters


class Kp2dFrontEnd(DescriptorFrontEnd):
    """The bundled (or given) KeyPointNet through ``KeypointDetector`` at the node's defaults (top_k 1000,
    score_threshold 0, nms_radius 0, contrast stretch); descriptors stay torch tensors, as in the node."""

    name = "kp2d"

    def __init__(
        self,
        settings: MatchingSettings = MatchingSettings(),
        checkpoint: str | None = None,
        device: str = "cpu",
        input_scale: float | None = None,
        precision: str | None = None,
        contrast: str = NODE_CONTRAST,
    ):
        from kp2d_model.detector import KeypointDetector

        options: dict[str, Any] = {"input_scale": input_scale, "contrast": contrast}
        if precision is not None:
            if not _detector_accepts("precision"):
                raise FrontEndError(
                    f"kp2d: precision {precision!r} asked for, but the installed KeypointDetector has no precision= "
                    "parameter (this version runs float32 only)"
                )
            options["precision"] = precision
        try:
            self.detector = KeypointDetector(checkpoint, device=device, top_k=settings.top_k, **options)
        except (ValueError, TypeError) as error:
            raise FrontEndError(f"kp2d: {error}") from error
        super().__init__(settings)
        match = MatchConfig(
            mutual=settings.mutual,
            ratio=settings.ratio or None,
            max_distance=settings.max_distance or None,
            geometry=settings.geometry,
            geometry_threshold=settings.geometry_threshold,
            prediction_radius=settings.gyro_radius or None,
        )
        self.config = PipelineConfig(top_k=settings.top_k, match=match)
        self.reset()

    def reset(self) -> None:
        """A new sequence: a fresh pipeline (track ids from 1 again, as the other front-ends)."""
        super().reset()
        if hasattr(self, "config"):
            self.pipeline = FramePipeline(self.detector, self.config)
            self._stamp_ns = 0

    def detect(self, image_bgr: np.ndarray) -> tuple[np.ndarray, Any]:
        detections = self.detector(image_bgr)
        return detections.keypoints.cpu().numpy(), detections.descriptors

    def __call__(
        self, image_bgr: np.ndarray, rotation: np.ndarray | None = None, camera_matrix: np.ndarray | None = None
    ) -> FrameResult:
        if self.settings.prediction_radius > 0:  # the bench's guided matching: the generic descriptor path
            return super().__call__(image_bgr)
        self._stamp_ns += 33_333_333  # frames in order at 30 Hz (stamps only order the frames here)
        gyro: dict[str, Any] = {}
        if self.uses_gyro and rotation is not None and camera_matrix is not None:  # IMU-aided, as the node
            height, width = image_bgr.shape[:2]
            intrinsics = Intrinsics(np.asarray(camera_matrix, np.float64), np.zeros(0), "none", (width, height))
            gyro = {"rotation": rotation, "intrinsics": intrinsics}
        record = self.pipeline.step(image_bgr, self._stamp_ns, channel_order="bgr", **gyro)
        previous_index, current_index = record.carried
        return FrameResult(record.points, record.tracks, previous_index, current_index)


class OpenCVFrontEnd(DescriptorFrontEnd):
    """An OpenCV Feature2D on the grey frame, at most ``top_k`` points (strongest response first)."""

    def __init__(self, detector: cv2.Feature2D, binary: bool, settings: MatchingSettings = MatchingSettings()):
        self.detector = detector
        self.binary = binary
        super().__init__(settings)

    def detect(self, image_bgr: np.ndarray) -> tuple[np.ndarray, Any]:
        grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
        keypoints, descriptors = self.detector.detectAndCompute(grey, None)
        if descriptors is None or not keypoints:
            width = 32 if self.binary else 128
            return np.zeros((0, 2), np.float32), np.zeros((0, width), np.uint8 if self.binary else np.float32)
        order = np.argsort([-kp.response for kp in keypoints], kind="stable")[: self.settings.top_k]
        points = np.array([keypoints[i].pt for i in order], np.float32).reshape(-1, 2)
        descriptors = descriptors[order]
        return points, descriptors if self.binary else descriptors.astype(np.float32)

    def match(
        self, descriptors_a: Any, descriptors_b: Any, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if not self.binary:
            return super().match(descriptors_a, descriptors_b, allowed)
        if allowed is not None:
            raise FrontEndError("orb: guided matching (prediction_radius) is not implemented for binary descriptors")
        return match_binary(descriptors_a, descriptors_b, self.settings.mutual, self.settings.ratio or None)


def match_binary(
    descriptors_a: np.ndarray, descriptors_b: np.ndarray, mutual: bool = True, ratio: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest neighbour in Hamming distance (OpenCV BFMatcher) with ``match_descriptors``' rules: mutual check,
    Lowe ratio ``d1 < ratio * d2``. ``(N, B)`` and ``(M, B)`` uint8 -> ``(index_a, index_b)`` int64, sorted by a."""
    empty = np.zeros(0, np.int64)
    if len(descriptors_a) == 0 or len(descriptors_b) == 0:
        return empty, empty
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    k = min(2, len(descriptors_b))
    forward = matcher.knnMatch(descriptors_a, descriptors_b, k=k)
    index_a = np.array([m[0].queryIdx for m in forward], np.int64)
    index_b = np.array([m[0].trainIdx for m in forward], np.int64)
    keep = np.ones(len(index_a), bool)
    if mutual:
        backward = matcher.match(descriptors_b, descriptors_a)
        best_a = np.full(len(descriptors_b), -1, np.int64)
        best_a[[m.queryIdx for m in backward]] = [m.trainIdx for m in backward]
        keep &= best_a[index_b] == index_a
    if ratio is not None and k == 2:
        keep &= np.array([m[0].distance < ratio * m[1].distance for m in forward])
    order = np.argsort(index_a[keep], kind="stable")
    return index_a[keep][order], index_b[keep][order]


class KltFrontEnd:
    """VINS-Mono/Fusion's ``feature_tracker``: pyramidal Lucas-Kanade tracking of Shi-Tomasi corners.

    Per frame (as ``FeatureTracker::readImage``): CLAHE (clip 3, 8x8 tiles; VINS's ``equalize: 1``) -> track the
    previous points with ``calcOpticalFlowPyrLK`` (21x21 window, 3 pyramid levels) -> back-flow check (track
    back, keep if within ``back_flow_px``) -> drop points outside the image -> fundamental-matrix RANSAC
    (``f_threshold`` px, confidence 0.99, via ``verify_geometry``) -> keep the longest tracks at least
    ``min_distance`` px apart -> top up to ``max_features`` with ``goodFeaturesToTrack`` (quality 0.01) away from
    the kept points. Track ids are carried with ``carry_tracks``.
    """

    name = "klt"

    def __init__(
        self,
        max_features: int = 150,
        min_distance: int = 30,
        window: int = 21,
        pyramid_levels: int = 3,
        back_flow_px: float = 0.5,
        f_threshold: float = 1.0,
        equalize: bool = True,
    ):
        self.max_features = max_features
        self.min_distance = min_distance
        self.lk = {"winSize": (window, window), "maxLevel": pyramid_levels}
        self.back_flow_px = back_flow_px
        self.f_threshold = f_threshold
        self.clahe = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(8, 8)) if equalize else None
        self.reset()

    def reset(self) -> None:
        self._previous: tuple[np.ndarray, np.ndarray, TrackIds] | None = None  # grey image, points, tracks
        self._next_track_id = 1

    def __call__(self, image_bgr: np.ndarray) -> FrameResult:
        grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
        if self.clahe is not None:
            grey = self.clahe.apply(grey)
        height, width = grey.shape
        kept = np.zeros(0, np.int64)
        tracked = np.zeros((0, 2), np.float32)
        if self._previous is not None and len(self._previous[1]):
            previous_grey, previous_points, previous_tracks = self._previous
            start = previous_points.reshape(-1, 1, 2)
            tracked, status, _ = cv2.calcOpticalFlowPyrLK(previous_grey, grey, start, None, **self.lk)
            back, back_status, _ = cv2.calcOpticalFlowPyrLK(
                grey, previous_grey, tracked, start.copy(), flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **self.lk
            )
            tracked, back = tracked.reshape(-1, 2), back.reshape(-1, 2)
            good = (status.ravel() == 1) & (back_status.ravel() == 1)
            good &= np.linalg.norm(back - previous_points, axis=1) <= self.back_flow_px
            good &= (tracked[:, 0] >= 1) & (tracked[:, 0] < width - 1) & (tracked[:, 1] >= 1)
            good &= tracked[:, 1] < height - 1
            kept = np.flatnonzero(good)
            if len(kept) >= 8:  # VINS rejectWithF runs from 8 points on
                _, inlier = verify_geometry(
                    previous_points[kept], tracked[kept], model="fundamental", threshold=self.f_threshold,
                    method="ransac", confidence=0.99,
                )  # fmt: skip
                kept = kept[inlier]
            kept = self._spread_longest(kept, tracked, previous_tracks.lengths, (height, width))
        points = tracked[kept].astype(np.float32)
        new = self._new_features(grey, points)
        points = np.concatenate([points, new]).astype(np.float32)
        tracks, self._next_track_id = carry_tracks(
            self._previous[2] if self._previous is not None else None,
            len(points),
            kept,
            np.arange(len(kept), dtype=np.int64),
            self._next_track_id,
        )
        self._previous = (grey, points, tracks)
        return FrameResult(points, tracks, kept, np.arange(len(kept), dtype=np.int64))

    def _spread_longest(
        self, kept: np.ndarray, points: np.ndarray, lengths: np.ndarray, shape: tuple[int, int]
    ) -> np.ndarray:
        """VINS ``setMask``: longest tracks first, drop a point within ``min_distance`` of one already kept."""
        mask = np.full(shape, 255, np.uint8)
        chosen = []
        for index in kept[np.argsort(-lengths[kept].astype(np.int64), kind="stable")]:
            x, y = int(round(float(points[index, 0]))), int(round(float(points[index, 1])))
            if mask[min(max(y, 0), shape[0] - 1), min(max(x, 0), shape[1] - 1)] == 255:
                chosen.append(index)
                cv2.circle(mask, (x, y), self.min_distance, 0, -1)
        self._mask = mask
        return np.array(chosen, np.int64)

    def _new_features(self, grey: np.ndarray, points: np.ndarray) -> np.ndarray:
        wanted = self.max_features - len(points)
        if wanted <= 0:
            return np.zeros((0, 2), np.float32)
        mask = self._mask if len(points) else None
        corners = cv2.goodFeaturesToTrack(grey, wanted, 0.01, self.min_distance, mask=mask)
        return np.zeros((0, 2), np.float32) if corners is None else corners.reshape(-1, 2)


def build_front_end(
    method: str,
    settings: MatchingSettings = MatchingSettings(),
    checkpoint: str | None = None,
    device: str = "cpu",
    input_scale: float | None = None,
    precision: str | None = None,
    contrast: str = NODE_CONTRAST,
) -> Any:
    """A fresh front-end for ``method`` (one of ``METHOD_NAMES``); ``klt`` ignores the matching settings."""
    if method == "kp2d":
        return Kp2dFrontEnd(settings, checkpoint, device, input_scale, precision, contrast)
    if method == "klt":
        return KltFrontEnd()
    if method == "orb":
        return OpenCVFrontEnd(cv2.ORB_create(nfeatures=settings.top_k), binary=True, settings=settings)
    if method == "sift":
        return OpenCVFrontEnd(cv2.SIFT_create(nfeatures=settings.top_k), binary=False, settings=settings)
    raise FrontEndError(f"unknown method {method!r}; expected one of {', '.join(METHOD_NAMES)}")


def timed(front_end: Any, image_bgr: np.ndarray, **inputs: Any) -> tuple[FrameResult, float]:
    """Run one frame (``inputs``: extra keyword arguments, e.g. the gyro's); ``(result, milliseconds)`` of wall time."""
    start = time.perf_counter()
    result = front_end(image_bgr, **inputs)
    return result, (time.perf_counter() - start) * 1e3

"""The frame pipeline: one camera frame in, keypoints + matches to the previous frame + track ids out (no ROS).

The detector node (kp2d_ros), ``kp2d-track-bench``'s kp2d front-end and the bag extractor all call
:meth:`FramePipeline.step`; they differ only in where frames come from and where the record goes.
Per frame, in this order (each stage a small function below, the class last):

1. **detect**: ``KeypointDetector`` with the config's ``top_k`` / ``score_threshold`` / ``nms_radius`` as
   per-call overrides (the detector object is never modified) and the **mask / roi** as a keep-mask, applied
   by the detector *before* the ``top_k`` truncation (up to ``top_k`` keypoints come from the allowed area).
2. **match previous**: ``match_descriptors`` against the previous frame's descriptors (same device).
3. **verify geometry**: optional homography / fundamental fit (``verify_geometry``), inlier mask.
4. **carry tracks**: matched pairs (inliers when geometry is on) keep their track id, length + 1.
5. **normalise**: undistorted normalised coordinates when intrinsics are given (``kp2d_model.camera``).
6. **velocity**: normalised-coordinate velocity per second of each carried point (VINS-Fusion's definition).

:meth:`FramePipeline.step` is :meth:`FramePipeline.detect` (stage 1, the network; no pipeline state) followed by
:meth:`FramePipeline.finish` (stages 2-6, in frame order): the detector node runs the two on two threads, so
the next frame's network runs while this one is matched and published.

A stamp earlier than the previous frame's resets the pipeline (no matching, fresh track ids continue from the
next unused id); the record says so (``reset``). ``vins_features`` selects the tracked inliers of a record in
VINS-Fusion's feature_tracker layout.

**IMU-aided matching** (``step(rotation=)`` with intrinsics and ``MatchConfig.prediction_radius``): before
stage 2 the previous frame's points are moved by the camera rotation (``K R K^-1`` on undistorted points, then
the lens distortion again: ``kp2d_model.motion_prediction``) into ``FrameRecord.predicted_points``, and a current
keypoint is a candidate for a previous one only within ``prediction_radius`` pixels of its prediction.

Against the API agreed for issue 16: ``step(rotation=...)`` / ``MatchConfig.prediction_radius`` as agreed.
Additions: :attr:`FramePipeline.previous_stamp_ns` (the stamp a backwards
frame was compared with, for the node's warning), :attr:`FrameRecord.carried` (the pairs that carried a track),
``keep_mask``, ``read_mask`` and ``MaskSizeError``. The detector must take the per-call keyword overrides ``top_k``,
``score_threshold``, ``nms_radius`` and ``mask`` (``KeypointDetector.__call__`` does; a subclass overriding
``__call__`` forwards them).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from kp2d_model.camera import Intrinsics, normalized_coordinates
from kp2d_model.detector import KeypointDetector
from kp2d_model.image import ImageFormatError
from kp2d_model.matching import match_descriptors, verify_geometry
from kp2d_model.motion_prediction import allowed_near_prediction, check_rotation, predict_points
from kp2d_model.tracks import TrackIds, carry_tracks

__all__ = [
    "GEOMETRY_MODELS",
    "Detected",
    "FramePipeline",
    "FrameRecord",
    "MaskSizeError",
    "MatchConfig",
    "PipelineConfig",
    "keep_mask",
    "read_mask",
    "vins_features",
]

GEOMETRY_MODELS = ("none", "homography", "fundamental")


class MaskSizeError(ImageFormatError):
    """The config's mask is for another image size than the frame (the frame cannot be processed)."""


@dataclass(frozen=True)
class MatchConfig:
    """Frame-to-frame matching: mutual nearest neighbours, optional Lowe ratio / max descriptor distance,
    optional geometric verification (``geometry`` one of GEOMETRY_MODELS, ``geometry_threshold`` pixels)."""

    mutual: bool = True
    ratio: float | None = None
    max_distance: float | None = None
    geometry: str = "none"
    geometry_threshold: float = 3.0
    prediction_radius: float | None = None  # pixels; used only when step() gets a rotation (IMU) and intrinsics

    def __post_init__(self) -> None:
        if self.geometry not in GEOMETRY_MODELS:
            raise ValueError(f"geometry must be one of {', '.join(GEOMETRY_MODELS)}, got {self.geometry!r}")
        radius = self.prediction_radius
        if radius is not None and not (np.isfinite(radius) and radius > 0):
            raise ValueError(f"prediction_radius must be a positive number of pixels (or None), got {radius!r}")


@dataclass(frozen=True)
class PipelineConfig:
    """Per-frame settings; pass a changed copy (``dataclasses.replace``) to ``step`` to change them at runtime.

    top_k / score_threshold / nms_radius: as ``KeypointDetector`` (per-call overrides). mask: ``(H, W)`` uint8
    of the image's size, 0 = ignore (no keypoint there). roi: ``(x, y, w, h)`` pixels, keypoints outside are
    dropped. Both: a keypoint at ``(x, y)`` is kept when the pixel ``(round(x), round(y))`` is allowed.
    """

    top_k: int = 1000
    score_threshold: float = 0.0
    nms_radius: int = 0
    match: MatchConfig = field(default_factory=MatchConfig)
    mask: np.ndarray | None = None
    roi: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.mask is not None and (self.mask.ndim != 2 or self.mask.size == 0):
            raise ValueError(f"mask must be a non-empty (H, W) array, got shape {self.mask.shape}")
        if self.roi is not None and (len(self.roi) != 4 or min(self.roi[2:]) <= 0 or min(self.roi[:2]) < 0):
            raise ValueError(f"roi must be (x, y, w, h) with x, y >= 0 and w, h > 0, got {self.roi!r}")


@dataclass
class FrameRecord:
    """Everything one ``step`` found. N keypoints in this frame, M matches to the previous frame.

    stamp_ns, image_size ``(W, H)``; points ``(N, 2)`` float32 pixels (x right, y down), scores ``(N,)`` float32,
    descriptors ``(N, D)`` torch on the detector's device, sorted by score. previous_stamp_ns: None on the first
    frame / after a reset. previous_index / current_index ``(M,)`` int64, distance ``(M,)`` float32,
    previous_points / current_points ``(M, 2)`` float32 px. geometry_model ``(3, 3)`` previous -> current or None;
    inlier ``(M,)`` bool, None when geometry is "none". tracks: ids ``(N,)`` uint64, lengths ``(N,)`` uint32.
    normalized ``(N, 2)`` float64 undistorted (x, y) of the ray (x, y, 1), None without intrinsics. velocity
    ``(N, 2)`` float64 normalised units per second since the previous frame (0 for new tracks), None without
    intrinsics or previous frame. reset: the stamp went backwards. inference_ms: the detector call.
    predicted_points ``(P, 2)`` float64 px: the previous frame's points moved by ``step``'s rotation (NaN for
    points turned out of view), None when no rotation was used.
    """

    stamp_ns: int
    image_size: tuple[int, int]
    points: np.ndarray
    scores: np.ndarray
    descriptors: torch.Tensor
    previous_stamp_ns: int | None
    previous_index: np.ndarray
    current_index: np.ndarray
    distance: np.ndarray
    previous_points: np.ndarray
    current_points: np.ndarray
    geometry_model: np.ndarray | None
    inlier: np.ndarray | None
    tracks: TrackIds
    normalized: np.ndarray | None
    velocity: np.ndarray | None
    reset: bool
    inference_ms: float
    predicted_points: np.ndarray | None = None

    @property
    def carried(self) -> tuple[np.ndarray, np.ndarray]:
        """``(previous_index, current_index)`` of the pairs that carried a track (the inliers when checked)."""
        return carried_pairs(self.previous_index, self.current_index, self.inlier)


@dataclass
class _Previous:
    """What the next frame is matched against."""

    stamp_ns: int
    points: np.ndarray  # (N, 2) float32 px
    descriptors: torch.Tensor  # (N, D)
    tracks: TrackIds
    normalized: np.ndarray | None  # (N, 2) float64, None without intrinsics


@dataclass(frozen=True)
class Detected:
    """One frame after stage 1 alone (:meth:`FramePipeline.detect`), waiting for :meth:`FramePipeline.finish`.

    image_size ``(W, H)``; points ``(N, 2)`` float32 px, scores ``(N,)`` float32, descriptors ``(N, D)`` torch on
    the detector's device; inference_ms: the detector call."""

    image_size: tuple[int, int]
    points: np.ndarray
    scores: np.ndarray
    descriptors: torch.Tensor
    inference_ms: float


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """An 8-bit mask image file (PNG, ...) -> ``(H, W)`` uint8, 0 = ignore. A colour image counts a pixel as 0
    when all its colour channels are 0 (alpha ignored). ValueError naming the file when it is missing,
    unreadable, not 8-bit or empty."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"mask file {path!r} does not exist")
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"mask file {path!r} is not an image OpenCV can read")
    if image.dtype != np.uint8:
        raise ValueError(f"mask file {path!r} is {image.dtype}, expected an 8-bit image (0 = ignore)")
    if image.ndim == 3:
        image = image[:, :, :3].max(axis=2)
    if image.size == 0 or not image.any():
        raise ValueError(f"mask file {path!r} is empty or all 0 (no keypoint could ever be published)")
    return np.ascontiguousarray(image)


# --- stages (pure functions, in the order step() runs them) ------------------------------------------------


def keep_mask(image_size: tuple[int, int], config: PipelineConfig) -> np.ndarray | None:
    """``(H, W)`` bool: where keypoints may be (the mask's non-zero pixels inside the roi); None: everywhere.

    Raises MaskSizeError when the mask is not ``image_size`` ``(W, H)``."""
    width, height = image_size
    allowed = None
    if config.mask is not None:
        if config.mask.shape != (height, width):
            raise MaskSizeError(
                f"mask is {config.mask.shape[1]} x {config.mask.shape[0]} pixels but the image is {width} x {height}"
            )
        allowed = config.mask != 0
    if config.roi is not None:
        x, y, w, h = (int(v) for v in config.roi)
        inside = np.zeros((height, width), bool)
        inside[y : y + h, x : x + w] = True
        allowed = inside if allowed is None else allowed & inside
    return allowed


def detect(
    detector: KeypointDetector, image: np.ndarray, channel_order: str, config: PipelineConfig
) -> tuple[np.ndarray, np.ndarray, torch.Tensor, float]:
    """-> points ``(N, 2)`` float32 px, scores ``(N,)`` float32, descriptors ``(N, D)`` torch, milliseconds."""
    height, width = image.shape[:2]
    allowed = keep_mask((width, height), config)
    start = time.perf_counter()
    detections = detector(
        image,
        channel_order=channel_order,
        top_k=config.top_k,
        score_threshold=config.score_threshold,
        nms_radius=config.nms_radius,
        mask=allowed,
    )
    inference_ms = (time.perf_counter() - start) * 1e3
    return detections.keypoints.cpu().numpy(), detections.scores.cpu().numpy(), detections.descriptors, inference_ms


def previous_normalized(previous: _Previous | None, intrinsics: Intrinsics | None) -> np.ndarray | None:
    """The previous frame's undistorted normalised points ``(P, 2)`` float64, or None (no previous frame or no
    intrinsics): kept from its own step, or computed now when the intrinsics arrived with this frame."""
    if previous is None or intrinsics is None:
        return None
    if previous.normalized is not None:
        return previous.normalized
    return normalized_coordinates(previous.points, intrinsics)


def predict_previous(
    previous_normalized: np.ndarray | None, rotation: np.ndarray | None, intrinsics: Intrinsics | None
) -> np.ndarray | None:
    """The previous frame's points (normalised) moved by the camera rotation ``R_cur_prev`` -> ``(P, 2)`` float64
    px, or None (no previous frame, no rotation or no intrinsics)."""
    if previous_normalized is None or rotation is None or intrinsics is None:
        return None
    return predict_points(previous_normalized, rotation, intrinsics)


def match_previous(
    previous: _Previous | None,
    descriptors: torch.Tensor,
    config: MatchConfig,
    predicted: np.ndarray | None = None,
    points: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> previous_index, current_index ``(M,)`` int64 and distance ``(M,)`` float32 (empty without previous).

    With ``predicted`` (``(P, 2)`` px) and ``config.prediction_radius``, current ``points`` farther than the radius
    from a previous point's prediction are not its candidates."""
    if previous is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    allowed = None
    if predicted is not None and config.prediction_radius is not None and points is not None:
        allowed = allowed_near_prediction(predicted, points, config.prediction_radius)
    matches = match_descriptors(
        previous.descriptors,
        descriptors,
        mutual=config.mutual,
        ratio=config.ratio,
        max_distance=config.max_distance,
        allowed=allowed,
    )
    return matches.index_a.cpu().numpy(), matches.index_b.cpu().numpy(), matches.distance.cpu().numpy()


def verify(
    previous_points: np.ndarray, current_points: np.ndarray, config: MatchConfig
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """-> ``(model (3, 3) or None, inlier (M,) bool)``; ``(None, None)`` when geometry is "none"."""
    if config.geometry == "none":
        return None, None
    return verify_geometry(previous_points, current_points, model=config.geometry, threshold=config.geometry_threshold)


def carried_pairs(
    previous_index: np.ndarray, current_index: np.ndarray, inlier: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The matches that carry a track: all of them, or the geometry inliers when ``inlier`` ``(M,)`` is given."""
    if inlier is None:
        return previous_index, current_index
    return previous_index[inlier], current_index[inlier]


def track_velocity(
    normalized: np.ndarray, previous_normalized: np.ndarray, carried: tuple[np.ndarray, np.ndarray], dt_s: float
) -> np.ndarray:
    """``(N, 2)`` normalised units per second: (this - previous position) / dt for carried points, 0 otherwise
    (and 0 everywhere when ``dt_s <= 0``), as VINS-Fusion's ``FeatureTracker::ptsVelocity``."""
    velocity = np.zeros_like(normalized)
    previous_index, current_index = carried
    if dt_s > 0 and len(current_index):
        velocity[current_index] = (normalized[current_index] - previous_normalized[previous_index]) / dt_s
    return velocity


class FramePipeline:
    """Keypoints, matches to the previous frame, track ids and VO outputs for a stream of frames.

    Owns the previous frame, the next unused track id and the reset rule (a stamp earlier than the previous
    frame's restarts matching and tracks). Not thread-safe: one caller steps it.

    Args:
        detector: a built :class:`KeypointDetector` (shared freely: the pipeline never changes its attributes).
        config: the default :class:`PipelineConfig` (``step(config=...)`` overrides it for one frame).

    ``step(image (H, W, C) or (H, W) uint8, stamp_ns, channel_order="rgb" | "bgr", intrinsics=None, config=None)``
    -> :class:`FrameRecord`. Raises ``ImageFormatError`` (``MaskSizeError``) for an image the detector or the mask
    refuses; the pipeline's state is unchanged then.

    Example:
        >>> import numpy as np
        >>> from kp2d_model import KeypointDetector
        >>> from kp2d_model.frame_pipeline import FramePipeline, PipelineConfig
        >>> pipeline = FramePipeline(KeypointDetector(device="cpu"), PipelineConfig(top_k=200))
        >>> image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
        >>> first = pipeline.step(image, stamp_ns=0, channel_order="bgr")
        >>> second = pipeline.step(image, stamp_ns=33_000_000, channel_order="bgr")
        >>> second.previous_stamp_ns, bool((second.tracks.lengths[second.current_index] == 2).all())
        (0, True)
    """

    def __init__(self, detector: KeypointDetector, config: PipelineConfig = PipelineConfig()):
        self.detector = detector
        self.config = config
        self._previous: _Previous | None = None
        self._next_track_id = 1

    def reset(self) -> None:
        """Forget the previous frame; track ids keep counting (an id is never reused)."""
        self._previous = None

    @property
    def previous_stamp_ns(self) -> int | None:
        """The stamp of the frame the next one is matched against (None: none)."""
        return self._previous.stamp_ns if self._previous is not None else None

    def step(
        self,
        image: np.ndarray,
        stamp_ns: int,
        *,
        channel_order: str = "rgb",
        intrinsics: Intrinsics | None = None,
        config: PipelineConfig | None = None,
        rotation: np.ndarray | None = None,
    ) -> FrameRecord:
        """One frame (see the class docstring). rotation: ``(3, 3)`` camera rotation ``R_cur_prev`` since the
        previous frame (a previous-frame ray r is ``R @ r`` now; e.g. ``motion_prediction.integrate_gyro`` +
        ``camera_rotation``); used with ``intrinsics`` (ignored without them: no prediction, unrestricted
        matching) to predict the previous points and, with ``config.match.prediction_radius``, restrict matching
        to that radius around the predictions. Raises ``MotionPredictionError`` for a rotation that is not one."""
        if rotation is not None:
            check_rotation(rotation)  # before detecting: a bad rotation costs no network run
        detected = self.detect(image, channel_order=channel_order, config=config)
        return self.finish(detected, stamp_ns, intrinsics=intrinsics, config=config, rotation=rotation)

    def detect(
        self, image: np.ndarray, *, channel_order: str = "rgb", config: PipelineConfig | None = None
    ) -> Detected:
        """Stage 1 alone (the detector: the network): reads no pipeline state and changes none, so it may run on
        one thread while the previous frame is in :meth:`finish` on another. Raises ``ImageFormatError`` /
        ``MaskSizeError`` as ``step``."""
        config = config or self.config
        height, width = image.shape[:2]
        points, scores, descriptors, inference_ms = detect(self.detector, image, channel_order, config)
        return Detected((width, height), points, scores, descriptors, inference_ms)

    def finish(
        self,
        detected: Detected,
        stamp_ns: int,
        *,
        intrinsics: Intrinsics | None = None,
        config: PipelineConfig | None = None,
        rotation: np.ndarray | None = None,
    ) -> FrameRecord:
        """Stages 2-6 for a :meth:`detect` result (call in frame order; ``step`` = ``detect`` then ``finish``):
        matching against the previous finished frame, geometry, tracks, normalisation, velocity; then this
        frame becomes the previous one. Arguments as ``step``; ``config`` should be the one given to ``detect``."""
        config = config or self.config
        previous = self._previous
        reset = previous is not None and stamp_ns < previous.stamp_ns
        if reset:
            previous = None
        if rotation is not None:
            rotation = check_rotation(rotation)
        points, scores, descriptors = detected.points, detected.scores, detected.descriptors
        previous_normalized_points = previous_normalized(previous, intrinsics)
        predicted = predict_previous(previous_normalized_points, rotation, intrinsics)
        previous_index, current_index, distance = match_previous(previous, descriptors, config.match, predicted, points)
        previous_points = previous.points[previous_index] if previous is not None else np.zeros((0, 2), np.float32)
        current_points = points[current_index]
        model, inlier = verify(previous_points, current_points, config.match)
        carried = carried_pairs(previous_index, current_index, inlier)
        tracks, self._next_track_id = carry_tracks(
            previous.tracks if previous is not None else None, len(points), *carried, self._next_track_id
        )

        normalized = velocity = None
        if intrinsics is not None:
            normalized = normalized_coordinates(points, intrinsics)
            if previous is not None:
                dt_s = (stamp_ns - previous.stamp_ns) / 1e9
                velocity = track_velocity(normalized, previous_normalized_points, carried, dt_s)

        self._previous = _Previous(stamp_ns, points, descriptors, tracks, normalized)
        return FrameRecord(
            stamp_ns=stamp_ns,
            image_size=detected.image_size,
            points=points,
            scores=scores,
            descriptors=descriptors,
            previous_stamp_ns=previous.stamp_ns if previous is not None else None,
            previous_index=previous_index,
            current_index=current_index,
            distance=distance,
            previous_points=previous_points,
            current_points=current_points,
            geometry_model=model,
            inlier=inlier,
            tracks=tracks,
            normalized=normalized,
            velocity=velocity,
            reset=reset,
            inference_ms=detected.inference_ms,
            predicted_points=predicted,
        )


# --- outputs ------------------------------------------------------------------------------------------------


def vins_features(record: FrameRecord, camera_id: int = 0) -> dict[str, np.ndarray]:
    """The record's tracked keypoints in VINS-Fusion's feature_tracker layout (K of them).

    Tracked: track length >= 2, i.e. carried from the previous frame (only geometry inliers carry a track when
    geometry is on). Returns ``ids (K,)`` uint64 track ids, ``camera_id (K,)`` int, ``points (K, 3)`` float64
    undistorted normalised ``(x, y, 1)``, ``u``, ``v`` ``(K,)`` float32 pixels, ``velocity (K, 2)`` float64
    normalised units per second. Needs a record made with intrinsics (ValueError otherwise).
    """
    if record.normalized is None:
        raise ValueError("vins_features needs normalised coordinates: step() was called without intrinsics")
    tracked = np.flatnonzero(record.tracks.lengths >= 2)
    normalized = record.normalized[tracked]
    velocity = record.velocity[tracked] if record.velocity is not None else np.zeros_like(normalized)
    return {
        "ids": record.tracks.ids[tracked],
        "camera_id": np.full(len(tracked), camera_id, np.int64),
        "points": np.concatenate([normalized, np.ones((len(tracked), 1))], axis=1),
        "u": record.points[tracked, 0],
        "v": record.points[tracked, 1],
        "velocity": velocity,
    }

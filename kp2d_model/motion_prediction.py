"""IMU-aided matching: gyro rotation between two frames -> predicted keypoint positions -> candidate mask.

No ROS. Conventions (all rotations are 3x3 float64 matrices):

- ``integrate_gyro`` returns ``R_end_start``: a vector expressed in the IMU frame at the first stamp, expressed
  in the IMU frame at the second stamp, is ``R_end_start @ v``. The gyro measures the body angular velocity
  ``w`` (rad/s, IMU axes); the body orientation evolves as ``dR_world_body/dt = R_world_body [w]_x``, so
  ``R_start_end = prod_k exp([w_k dt_k]_x)`` (in time order) and ``R_end_start`` is its transpose. Between two
  samples ``w`` is taken as linear in time (the segment's rotation is ``exp`` of the mean rate times its length,
  exact for a constant rate); the frame stamps are interpolated the same way, so samples need not fall on them.
- ``camera_rotation`` turns that into the camera frame with ``R_camera_imu`` (maps IMU-frame vectors to the
  camera's optical frame: x right, y down, z forward; what ``tf2`` gives for target = camera optical frame,
  source = IMU frame): ``R_cam = R_camera_imu R_imu R_camera_imu^T``.
- The camera rotation ``R_cur_prev`` maps a previous-frame viewing ray ``r`` to ``R_cur_prev @ r`` in the current
  frame (``kp2d_model.frame_pipeline.FramePipeline.step(rotation=)``). Under a pure rotation every point moves by
  the infinite homography ``K R K^-1`` (after undistortion), whatever its depth; translation adds parallax that
  the prediction radius must absorb.

Prediction is made **in pixels** (the rotated ray is re-distorted with the camera's own model): the radius is a
pixel distance (keypoint localisation error and the residual of unmodelled translation are pixel-sized, and the
current keypoints are pixels), and a fixed radius in normalised coordinates would be a different pixel radius at
the centre and at the rim of a distorted (fisheye) image.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import cv2
import numpy as np

__all__ = [
    "GyroBuffer",
    "GyroCoverageError",
    "MotionPredictionError",
    "allowed_near_prediction",
    "camera_rotation",
    "check_rotation",
    "integrate_gyro",
    "predict_points",
    "project_normalized",
    "rotation_from_quaternion",
    "rotation_from_vector",
    "rotate_normalized",
]

MIN_DEPTH = 1e-6  # a rotated ray with z below this points sideways / backwards: no prediction (NaN)


class MotionPredictionError(ValueError):
    """Inputs to motion prediction with the wrong shape or values."""


class GyroCoverageError(MotionPredictionError):
    """The gyro samples do not cover the frame interval (``kind`` "not_covered") or leave a gap in it longer than
    allowed (``kind`` "gap")."""

    def __init__(self, message: str, kind: str = "not_covered"):
        super().__init__(message)
        self.kind = kind


def rotation_from_vector(rotation_vector: Any) -> np.ndarray:
    """Axis-angle ``(3,)`` (radians) -> ``(3, 3)`` rotation (Rodrigues, ``exp([v]_x)``)."""
    v = np.asarray(rotation_vector, np.float64).reshape(3)
    angle = float(np.linalg.norm(v))
    if angle < 1e-12:
        return np.eye(3)
    x, y, z = v / angle
    cross = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + np.sin(angle) * cross + (1.0 - np.cos(angle)) * (cross @ cross)


def rotation_from_quaternion(quaternion: Any) -> np.ndarray:
    """Quaternion ``(x, y, z, w)`` (ROS / tf2 order; normalised here, must not be zero) -> ``(3, 3)`` rotation."""
    q = np.asarray(quaternion, np.float64).reshape(-1)
    if q.shape != (4,) or not np.isfinite(q).all():
        raise MotionPredictionError(f"a quaternion needs 4 finite numbers (x, y, z, w), got {q.tolist()}")
    norm = float(np.linalg.norm(q))
    if norm < 1e-9:
        raise MotionPredictionError("quaternion (x, y, z, w) is zero: not a rotation")
    x, y, z, w = q / norm
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def check_rotation(rotation: Any, name: str = "rotation") -> np.ndarray:
    """``(3, 3)`` float64 rotation matrix, or MotionPredictionError naming ``name`` (shape, NaN, not orthonormal)."""
    r = np.asarray(rotation, np.float64)
    if r.shape != (3, 3) or not np.isfinite(r).all():
        raise MotionPredictionError(f"{name}: expected a finite (3, 3) rotation matrix, got shape {r.shape}")
    if not np.allclose(r @ r.T, np.eye(3), atol=1e-4) or np.linalg.det(r) < 0:
        raise MotionPredictionError(f"{name}: not a rotation matrix (R R^T != I or det < 0)")
    return r


def integrate_gyro(
    stamps_ns: Any, angular_velocity: Any, start_ns: int, end_ns: int, max_gap_ns: int | None = 100_000_000
) -> np.ndarray:
    """Rotation ``R_end_start`` (3, 3) of the IMU frame between ``start_ns`` and ``end_ns`` (see module docstring).

    stamps_ns: ``(S,)`` int sample stamps (ns, increasing); angular_velocity: ``(S, 3)`` rad/s in IMU axes.
    The samples must cover ``[start_ns, end_ns]`` (one at or before the start, one at or after the end) with no
    gap longer than ``max_gap_ns`` inside it (None: any gap), else GyroCoverageError. ``end_ns == start_ns``
    gives the identity.
    """
    stamps = np.asarray(stamps_ns, np.int64).reshape(-1)
    rates = np.asarray(angular_velocity, np.float64)
    if rates.shape != (stamps.size, 3):
        raise MotionPredictionError(f"angular_velocity: expected shape ({stamps.size}, 3), got {rates.shape}")
    if not np.isfinite(rates).all():
        raise MotionPredictionError("angular_velocity contains NaN or infinite values")
    if end_ns < start_ns:
        raise MotionPredictionError(f"end stamp {end_ns} ns is before the start stamp {start_ns} ns")
    if stamps.size and np.any(np.diff(stamps) <= 0):
        raise MotionPredictionError("gyro stamps must be strictly increasing")
    if stamps.size == 0 or stamps[0] > start_ns or stamps[-1] < end_ns:
        covered = "no samples" if stamps.size == 0 else f"samples cover {stamps[0]} .. {stamps[-1]} ns"
        raise GyroCoverageError(f"gyro does not cover the frame interval {start_ns} .. {end_ns} ns ({covered})")
    if end_ns == start_ns:
        return np.eye(3)
    inside = stamps[(stamps > start_ns) & (stamps < end_ns)]
    knots = np.concatenate([[start_ns], inside, [end_ns]]).astype(np.int64)
    if max_gap_ns is not None:
        # The sample spacing around the interval: the last sample at/before the start to the first at/after the end.
        first = int(np.searchsorted(stamps, start_ns, side="right")) - 1
        last = int(np.searchsorted(stamps, end_ns, side="left"))
        gaps = np.diff(stamps[first : last + 1])
        if gaps.size and int(gaps.max()) > max_gap_ns:
            raise GyroCoverageError(
                f"gyro has a gap of {int(gaps.max()) / 1e6:.1f} ms inside the frame interval {start_ns} .. {end_ns} "
                f"ns (at most {max_gap_ns / 1e6:.1f} ms allowed)",
                kind="gap",
            )
    times = (stamps - stamps[0]).astype(np.float64)
    knot_times = (knots - stamps[0]).astype(np.float64)
    knot_rates = np.stack([np.interp(knot_times, times, rates[:, axis]) for axis in range(3)], axis=1)
    start_end = np.eye(3)
    for k in range(len(knots) - 1):
        dt = (knots[k + 1] - knots[k]) * 1e-9
        start_end = start_end @ rotation_from_vector(0.5 * (knot_rates[k] + knot_rates[k + 1]) * dt)
    return start_end.T


def camera_rotation(imu_rotation: Any, camera_from_imu: Any) -> np.ndarray:
    """IMU-frame rotation ``R_end_start`` -> the same rotation in the camera frame:
    ``R_camera_imu @ R @ R_camera_imu^T`` (both (3, 3))."""
    r = check_rotation(imu_rotation, "imu_rotation")
    c = check_rotation(camera_from_imu, "camera_from_imu")
    return c @ r @ c.T


def rotate_normalized(normalized: Any, rotation: Any) -> np.ndarray:
    """Undistorted normalised coordinates ``(P, 2)`` of the previous frame -> ``(P, 2)`` float64 in the current
    frame under ``R_cur_prev`` (3, 3); rays that end up facing sideways or backwards (z <= 0) give NaN."""
    points = np.asarray(normalized, np.float64).reshape(-1, 2)
    r = check_rotation(rotation, "rotation")
    rays = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ r.T
    with np.errstate(divide="ignore", invalid="ignore"):
        out = rays[:, :2] / rays[:, 2:]
    out[rays[:, 2] <= MIN_DEPTH] = np.nan
    return out


def project_normalized(normalized: Any, intrinsics: Any) -> np.ndarray:
    """Normalised coordinates ``(P, 2)`` -> ``(P, 2)`` float64 pixels with the camera's distortion (the inverse of
    ``kp2d_model.camera.normalized_coordinates``). ``intrinsics``: ``k`` (3, 3), ``d`` (n,), ``model``
    ("plumb_bob" | "rational_polynomial" | "equidistant" | "none"). NaN rows stay NaN."""
    points = np.asarray(normalized, np.float64).reshape(-1, 2)
    k = np.asarray(intrinsics.k, np.float64).reshape(3, 3)
    d = np.asarray(intrinsics.d, np.float64).reshape(-1)
    out = np.full(points.shape, np.nan)
    valid = np.isfinite(points).all(axis=1)
    if not valid.any():
        return out
    rays = np.concatenate([points[valid], np.ones((int(valid.sum()), 1))], axis=1).reshape(-1, 1, 3)
    zero = np.zeros(3)
    if intrinsics.model == "equidistant":
        pixels, _ = cv2.fisheye.projectPoints(rays, zero.reshape(1, 1, 3), zero.reshape(1, 1, 3), k, d)
    elif d.size and np.any(d):
        pixels, _ = cv2.projectPoints(rays, zero, zero, k, d)
    else:
        mapped = rays.reshape(-1, 3) @ k.T  # the pinhole model only
        pixels = mapped[:, :2] / mapped[:, 2:]
    out[valid] = np.asarray(pixels, np.float64).reshape(-1, 2)
    return out


def predict_points(previous_normalized: Any, rotation: Any, intrinsics: Any) -> np.ndarray:
    """Where the previous frame's points land in the current frame under a pure camera rotation ``R_cur_prev``:
    undistorted normalised ``(P, 2)`` -> ``(P, 2)`` float64 pixels (``K R K^-1`` in undistorted pixels, then the
    lens distortion); NaN for points that rotate out of the forward hemisphere."""
    return project_normalized(rotate_normalized(previous_normalized, rotation), intrinsics)


def allowed_near_prediction(predicted: Any, points: Any, radius: float) -> np.ndarray:
    """``(P, N)`` bool for ``match_descriptors(allowed=)``: current point n is a candidate for previous point p
    when it lies within ``radius`` px of p's prediction. predicted: ``(P, 2)`` px (NaN rows: no candidates);
    points: ``(N, 2)`` px."""
    if not (np.isfinite(radius) and radius > 0):
        raise MotionPredictionError(f"prediction radius must be a positive number of pixels, got {radius}")
    a = np.asarray(predicted, np.float64).reshape(-1, 2)
    b = np.asarray(points, np.float64).reshape(-1, 2)
    squared = ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2)
    with np.errstate(invalid="ignore"):
        return squared <= radius * radius  # NaN compares False


class GyroBuffer:
    """The last ``max_samples`` gyro samples, filled by one thread (a subscription) and read by another.

    ``add`` keeps samples in stamp order: an older or equal stamp than the newest is refused (returns False),
    except a jump back of more than ``restart_ns`` (a replayed bag looping), which clears the buffer first.
    ``rotation(start_ns, end_ns, timeout_s)`` waits up to ``timeout_s`` for a sample at or after ``end_ns`` (the
    IMU message of the frame's instant may arrive after the image), then integrates (``integrate_gyro``).
    """

    def __init__(self, max_samples: int = 4000, max_gap_ns: int = 100_000_000, restart_ns: int = 1_000_000_000):
        self._samples: deque[tuple[int, np.ndarray]] = deque(maxlen=max_samples)
        self._condition = threading.Condition()
        self.max_gap_ns = max_gap_ns
        self.restart_ns = restart_ns

    def add(self, stamp_ns: int, angular_velocity: Any) -> bool:
        """One sample (ns, (3,) rad/s in IMU axes); False when refused (out of order or not finite)."""
        rate = np.asarray(angular_velocity, np.float64).reshape(3)
        if not np.isfinite(rate).all():
            return False
        with self._condition:
            if self._samples and stamp_ns <= self._samples[-1][0]:
                if self._samples[-1][0] - stamp_ns <= self.restart_ns:
                    return False
                self._samples.clear()
            self._samples.append((int(stamp_ns), rate))
            self._condition.notify_all()
        return True

    @property
    def latest_ns(self) -> int | None:
        with self._condition:
            return self._samples[-1][0] if self._samples else None

    def rotation(self, start_ns: int, end_ns: int, timeout_s: float = 0.0) -> np.ndarray:
        """``R_end_start`` (3, 3) in IMU axes between the two stamps; GyroCoverageError when not covered."""
        with self._condition:
            self._condition.wait_for(lambda: bool(self._samples) and self._samples[-1][0] >= end_ns, timeout_s)
            samples = list(self._samples)
        stamps = np.array([stamp for stamp, _ in samples], np.int64)
        rates = np.array([rate for _, rate in samples], np.float64).reshape(-1, 3)
        return integrate_gyro(stamps, rates, start_ns, end_ns, self.max_gap_ns)

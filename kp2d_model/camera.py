"""Camera intrinsics and undistorted normalised coordinates of pixel keypoints (OpenCV; no ROS).

Normalised coordinates are ``((u - cx) / fx, (v - cy) / fy)`` after removing lens distortion, i.e. the
x, y of the viewing ray (x, y, 1) in the camera's optical frame (x right, y down, z forward).

Works on OpenCV 4.5 (Ubuntu 22.04, Humble), 4.6 (Ubuntu 24.04, Jazzy/Kilted) and 5: OpenCV 4 takes the
termination criteria through ``cv2.undistortPointsIter`` (``cv2.undistortPoints`` has no criteria argument
there), OpenCV 5 through ``cv2.undistortPoints`` (``undistortPointsIter`` is gone); ``cv2.fisheye.undistortPoints``
takes criteria from OpenCV 4.6 on, and 4.5 runs its own fixed Newton iterations.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["DISTORTION_MODELS", "Intrinsics", "normalized_coordinates"]

# distortion model -> number of coefficients OpenCV expects (ROS CameraInfo names; "none": a pinhole camera).
DISTORTION_MODELS = {"plumb_bob": 5, "rational_polynomial": 8, "equidistant": 4, "none": 0}
# OpenCV's default of 5 fixed-point iterations leaves ~0.3 px at the corners of strongly distorted lenses.
UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 1e-10)


@dataclass(frozen=True)
class Intrinsics:
    """A calibrated camera: ``k`` (3, 3) float64 camera matrix in pixels, ``d`` (n,) float64 distortion
    coefficients in OpenCV order (n as ``DISTORTION_MODELS[model]``), ``model`` one of ``DISTORTION_MODELS``,
    ``size`` (width, height) pixels the calibration is for.

    Unpacks as ``k, d, model`` (what ``kp2d_ros.camera_model.check_camera_info`` returned before this record).
    """

    k: np.ndarray
    d: np.ndarray
    model: str
    size: tuple[int, int]

    def __iter__(self) -> Iterator:
        return iter((self.k, self.d, self.model))


def _fisheye_takes_criteria() -> bool:
    """Whether this OpenCV's ``cv2.fisheye.undistortPoints`` accepts ``criteria`` (4.6 and later)."""
    try:
        cv2.fisheye.undistortPoints(np.zeros((1, 1, 2)), np.eye(3), np.zeros(4), criteria=UNDISTORT_CRITERIA)
    except cv2.error:  # "'criteria' is an invalid keyword argument"
        return False
    return True


FISHEYE_TAKES_CRITERIA = _fisheye_takes_criteria()


def _undistort_pinhole(points: np.ndarray, k: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``(N, 1, 2)`` float64 pixels -> normalised coordinates, plumb_bob / rational_polynomial (OpenCV 4 and 5)."""
    if hasattr(cv2, "undistortPointsIter"):  # OpenCV 4.x: undistortPoints has no criteria argument
        return cv2.undistortPointsIter(points, k, d, None, None, UNDISTORT_CRITERIA)
    return cv2.undistortPoints(points, k, d, None, None, None, UNDISTORT_CRITERIA)  # OpenCV 5


def normalized_coordinates(points: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
    """``(N, 2)`` pixels -> ``(N, 2)`` float64 undistorted normalised coordinates (see the module docstring)."""
    k, d, model = intrinsics.k, intrinsics.d, intrinsics.model
    points = np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 1, 2)
    if points.shape[0] == 0:
        return np.zeros((0, 2), np.float64)
    if model == "equidistant":
        if FISHEYE_TAKES_CRITERIA:
            result = cv2.fisheye.undistortPoints(points, k, d, criteria=UNDISTORT_CRITERIA)
        else:  # OpenCV 4.5
            result = cv2.fisheye.undistortPoints(points, k, d)
    elif d.size and np.any(d):
        result = _undistort_pinhole(points, k, d)
    else:  # no distortion: the pinhole model only
        result = (points - k[[0, 1], [2, 2]]) / k[[0, 1], [0, 1]]
    return result.reshape(-1, 2).astype(np.float64)

"""sensor_msgs/CameraInfo -> undistorted normalised camera coordinates of pixel keypoints (OpenCV).

Normalised coordinates are ``((u - cx) / fx, (v - cy) / fy)`` after removing lens distortion, i.e. the
x, y of the viewing ray (x, y, 1) in the camera's optical frame (x right, y down, z forward).

Works on OpenCV 4.5 (Ubuntu 22.04, Humble), 4.6 (Ubuntu 24.04, Jazzy/Kilted) and 5: OpenCV 4 takes the
termination criteria through ``cv2.undistortPointsIter`` (``cv2.undistortPoints`` has no criteria argument
there), OpenCV 5 through ``cv2.undistortPoints`` (``undistortPointsIter`` is gone); ``cv2.fisheye.undistortPoints``
takes criteria from OpenCV 4.6 on, and 4.5 runs its own fixed Newton iterations.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

__all__ = ["CameraInfoError", "normalized_coordinates", "check_camera_info"]

# distortion_model -> number of coefficients OpenCV expects (fewer are zero-padded, more are an error).
DISTORTION_MODELS = {"plumb_bob": 5, "rational_polynomial": 8, "equidistant": 4, "": 0, "none": 0}
# OpenCV's default of 5 fixed-point iterations leaves ~0.3 px at the corners of strongly distorted lenses.
UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 1e-10)


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


class CameraInfoError(ValueError):
    """A CameraInfo that cannot give normalised coordinates; ``kind`` keys throttled warnings."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def check_camera_info(info: Any, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, str]:
    """Validate ``info`` for an image of ``(W, H)`` pixels -> (K (3, 3), D (n,), distortion model).

    Raises CameraInfoError for NaN/inf in K or D, an uncalibrated CameraInfo (K[0] == 0), a size that differs
    from the image, an unknown distortion model or too many coefficients.
    """
    k = np.asarray(info.k, dtype=np.float64).reshape(3, 3)
    d = np.asarray(info.d, dtype=np.float64).reshape(-1)
    if not (np.isfinite(k).all() and np.isfinite(d).all()):
        raise CameraInfoError(
            "non_finite", "camera_info has NaN or infinite values in K or D: no normalised coordinates"
        )
    if k[0, 0] == 0.0 or k[1, 1] == 0.0:
        raise CameraInfoError("uncalibrated", "camera_info is uncalibrated (K[0] == 0): no normalised coordinates")
    if (info.width, info.height) != (0, 0) and (int(info.width), int(info.height)) != tuple(image_size):
        raise CameraInfoError(
            "size",
            f"camera_info is for {info.width} x {info.height} but the image is {image_size[0]} x {image_size[1]}: "
            "no normalised coordinates",
        )
    model = info.distortion_model
    if model not in DISTORTION_MODELS:
        raise CameraInfoError(
            "distortion_model",
            f"distortion model {model!r} is not supported ({', '.join(m for m in DISTORTION_MODELS if m)})",
        )
    expected = DISTORTION_MODELS[model]
    if d.size > expected:
        if np.any(d[expected:]):
            raise CameraInfoError("distortion_model", f"{model!r} takes {expected} coefficients, got {d.size}")
        d = d[:expected]
    if d.size < expected:
        d = np.concatenate([d, np.zeros(expected - d.size)])
    return k, d, model


def normalized_coordinates(points: np.ndarray, k: np.ndarray, d: np.ndarray, model: str) -> np.ndarray:
    """``(N, 2)`` pixels -> ``(N, 2)`` float32 undistorted normalised coordinates (see module docstring)."""
    points = np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 1, 2)
    if points.shape[0] == 0:
        return np.zeros((0, 2), np.float32)
    if model == "equidistant":
        if FISHEYE_TAKES_CRITERIA:
            result = cv2.fisheye.undistortPoints(points, k, d, criteria=UNDISTORT_CRITERIA)
        else:  # OpenCV 4.5
            result = cv2.fisheye.undistortPoints(points, k, d)
    elif d.size and np.any(d):
        result = _undistort_pinhole(points, k, d)
    else:  # no distortion: the pinhole model only
        result = (points - k[[0, 1], [2, 2]]) / k[[0, 1], [0, 1]]
    return result.reshape(-1, 2).astype(np.float32)

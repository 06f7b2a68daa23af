"""sensor_msgs/CameraInfo -> :class:`kp2d_model.camera.Intrinsics` (validated), for undistorted normalised
coordinates of pixel keypoints. The undistortion itself lives in ``kp2d_model.camera`` (no ROS there);
``normalized_coordinates`` is re-exported here with its old ``(points, k, d, model)`` form too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kp2d_model import camera
from kp2d_model.camera import Intrinsics

__all__ = ["CameraInfoError", "Intrinsics", "normalized_coordinates", "check_camera_info"]

# CameraInfo.distortion_model -> number of coefficients OpenCV expects (fewer are zero-padded, more an error).
DISTORTION_MODELS = {**camera.DISTORTION_MODELS, "": 0}


class CameraInfoError(ValueError):
    """A CameraInfo that cannot give normalised coordinates; ``kind`` keys throttled warnings."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def check_camera_info(info: Any, image_size: tuple[int, int]) -> Intrinsics:
    """Validate ``info`` for an image of ``(W, H)`` pixels -> Intrinsics (K (3, 3), D (n,), model, size).

    Raises CameraInfoError for NaN/inf in K or D, an uncalibrated CameraInfo (K[0] == 0), a size that differs
    from the image, an unknown distortion model or too many coefficients. An empty model reads as "none".
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
    return Intrinsics(k, d, model or "none", (int(image_size[0]), int(image_size[1])))


def normalized_coordinates(
    points: np.ndarray, k: np.ndarray | Intrinsics, d: np.ndarray | None = None, model: str | None = None
) -> np.ndarray:
    """``(N, 2)`` pixels -> ``(N, 2)`` float32 undistorted normalised coordinates; ``k`` an Intrinsics, or
    ``k, d, model`` as check_camera_info unpacks (the old form)."""
    intrinsics = k if isinstance(k, Intrinsics) else Intrinsics(np.asarray(k), np.asarray(d), model or "none", (0, 0))
    return camera.normalized_coordinates(points, intrinsics).astype(np.float32)

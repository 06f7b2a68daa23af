"""Descriptor matching (nearest neighbour, mutual check, ratio test) and geometric verification (OpenCV).

``match_descriptors`` works on torch tensors (any device; results on the same device) or NumPy arrays
(results as NumPy). ``verify_geometry`` fits a homography or fundamental matrix with OpenCV's USAC or
RANSAC and returns the inlier mask; too few points or a failed fit give ``(None, all-False mask)``.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Matches", "MatchingError", "match_descriptors", "verify_geometry"]

MIN_POINTS = {"homography": 4, "fundamental": 8}
METHODS = {"usac": cv2.USAC_DEFAULT, "ransac": cv2.RANSAC}
_X86 = platform.machine().lower() in ("x86_64", "amd64")  # where rows_product goes through oneDNN


class MatchingError(ValueError):
    """Inputs to matching / geometric verification with the wrong type, shape or values."""


@dataclass
class Matches:
    """Matched pairs ``desc_a[index_a[i]] <-> desc_b[index_b[i]]``, sorted by ``index_a``.

    index_a, index_b: ``(M,)`` int64; distance: ``(M,)`` float32 L2 distance between the descriptors.
    Torch tensors on the inputs' device, or NumPy arrays when NumPy was given.
    """

    index_a: Any
    index_b: Any
    distance: Any

    def __len__(self) -> int:
        return int(self.index_a.shape[0])


def _as_descriptor_tensor(desc: Any, name: str) -> torch.Tensor:
    if isinstance(desc, np.ndarray):
        desc = torch.from_numpy(np.ascontiguousarray(desc))
    if not isinstance(desc, torch.Tensor):
        raise MatchingError(f"{name}: expected a torch tensor or NumPy array, got {type(desc).__name__}")
    if desc.ndim != 2:
        raise MatchingError(f"{name}: expected shape (N, D), got {tuple(desc.shape)}")
    if not desc.is_floating_point():
        raise MatchingError(f"{name}: expected floating-point descriptors, got {desc.dtype}")
    return desc


def rows_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a (N, K) @ b (M, K).T -> (N, M)``; float32 on the CPU through oneDNN, as a 1x1 convolution.

    PyTorch's CPU matmul calls MKL, which runs its AVX2 kernels on AMD CPUs; its convolutions call oneDNN, which
    uses AVX-512 on every x86 CPU that has it (1000 x 1000 x 272 on 2 threads of an AMD EPYC with AVX-512: 2.4 ms
    as a matmul, 1.1 ms as this conv; docs/inference.md, "Matching"). a's rows are the pixels of a 1 x N image
    with K channels stored channels last (a's own memory), b's rows are M 1x1 filters; the output, channels
    last, is the product in row-major order. The same float32 sums, in another order. Other devices, dtypes or
    CPUs than x86 with oneDNN, or an empty side: ``a @ b.T``."""
    onednn = _X86 and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
    onednn = onednn and a.device.type == "cpu"
    if not onednn or a.dtype != torch.float32 or b.dtype != torch.float32 or 0 in (*a.shape, *b.shape):
        return a @ b.T
    rows, depth = a.shape
    image = a.contiguous().reshape(1, 1, rows, depth).permute(0, 3, 1, 2)  # (1, K, 1, N), channels last
    filters = b.contiguous().reshape(b.shape[0], depth, 1, 1)
    return F.conv2d(image, filters).permute(0, 2, 3, 1).reshape(rows, b.shape[0])


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(N, M)`` float32 squared L2 distances ``|a_i|^2 + |b_j|^2 - 2 a_i . b_j`` of ``a (N, D)``, ``b (M, D)``.

    One matrix product of augmented rows ``[a_i, |a_i|^2, 1, 0...] . [-2 b_j, 1, |b_j|^2, 0...]`` (width padded
    to a multiple of 16 floats for the GEMM kernels): the norms ride in the product instead of two more passes
    over the N x M result (1000 x 1000 x 256 on 2 CPU threads: about half the time of the three-term sum).
    The same float32 quantity as the sum, rounded in another order (error ``<= (D + 2) u (|a|^2 + |b|^2 +
    2 |a| |b|)`` either way, u = 2^-24)."""
    dim = a.shape[1]
    width = -(-(dim + 2) // 16) * 16
    a_rows = a.new_zeros((a.shape[0], width))
    a_rows[:, :dim] = a
    a_rows[:, dim] = (a * a).sum(1)
    a_rows[:, dim + 1] = 1.0
    b_rows = b.new_zeros((b.shape[0], width))
    torch.mul(b, -2.0, out=b_rows[:, :dim])
    b_rows[:, dim] = 1.0
    b_rows[:, dim + 1] = (b * b).sum(1)
    return rows_product(a_rows, b_rows)


def pair_distances(a: torch.Tensor, b: torch.Tensor, index_a: torch.Tensor, index_b: torch.Tensor) -> torch.Tensor:
    """``(K,)`` L2 distances ``|a[index_a[k]] - b[index_b[k]]|`` computed directly (no cancellation near 0)."""
    return torch.linalg.vector_norm(a[index_a] - b[index_b], dim=1)


def match_descriptors(
    desc_a: Any,
    desc_b: Any,
    mutual: bool = True,
    ratio: float | None = None,
    max_distance: float | None = None,
    allowed: Any = None,
) -> Matches:
    """Match ``desc_a (N, D)`` to ``desc_b (M, D)`` by nearest neighbour in L2 distance.

    mutual: keep a pair only if each is the other's nearest neighbour (cross-check).
    ratio: Lowe's ratio test, keep if ``d1 < ratio * d2`` (d2: second-nearest in ``desc_b``; a match with
        no second candidate passes). max_distance: keep if ``d1 <= max_distance``.
    allowed: optional ``(N, M)`` bool (torch or NumPy): only these pairs are candidates (e.g. guided matching:
        ``b`` near where ``a`` is predicted); nearest neighbours, mutual check and ratio test are taken among
        the allowed pairs, and a row or column without any is left unmatched.
    """
    numpy_in = isinstance(desc_a, np.ndarray)
    if numpy_in != isinstance(desc_b, np.ndarray):
        raise MatchingError("desc_a and desc_b must both be NumPy arrays or both torch tensors")
    a = _as_descriptor_tensor(desc_a, "desc_a")
    b = _as_descriptor_tensor(desc_b, "desc_b")
    if a.shape[1] != b.shape[1]:
        raise MatchingError(f"descriptor sizes differ: desc_a has D={a.shape[1]}, desc_b has D={b.shape[1]}")
    if a.device != b.device:
        raise MatchingError(f"desc_a is on {a.device} but desc_b on {b.device}")
    if ratio is not None and not 0 < ratio <= 1:
        raise MatchingError(f"ratio must be in (0, 1], got {ratio}")

    with torch.inference_mode():
        if a.shape[0] == 0 or b.shape[0] == 0:
            index_a = torch.zeros(0, dtype=torch.int64, device=a.device)
            index_b, distance = index_a.clone(), torch.zeros(0, dtype=torch.float32, device=a.device)
        else:
            a, b = a.float(), b.float()
            squared = squared_distances(a, b)
            if allowed is not None:
                allowed = torch.as_tensor(allowed, dtype=torch.bool, device=a.device)
                if allowed.shape != squared.shape:
                    raise MatchingError(f"allowed: expected shape {tuple(squared.shape)}, got {tuple(allowed.shape)}")
                squared = squared.masked_fill(~allowed, float("inf"))
            use_ratio = ratio is not None and b.shape[0] > 1
            if use_ratio:  # the second nearest too (topk costs ~1.6x a plain minimum)
                nearest = torch.topk(squared, k=2, dim=1, largest=False, sorted=True)
                nearest_squared, index_b = nearest.values[:, 0], nearest.indices[:, 0]
                second_squared, second = nearest.values[:, 1], nearest.indices[:, 1]
            else:
                nearest_squared, index_b = squared.min(dim=1)  # the first minimum on ties (documented)
            index_a = torch.arange(a.shape[0], device=a.device)
            keep = torch.isfinite(nearest_squared)  # False only for a row without any allowed candidate
            if mutual:  # min(dim=0) gives the indices faster than argmin(dim=0) on the CPU
                keep &= squared.min(dim=0).indices[index_b] == index_a
            index_a, index_b = index_a[keep], index_b[keep]
            distance = pair_distances(a, b, index_a, index_b)
            keep = torch.ones_like(distance, dtype=torch.bool)
            if use_ratio:  # without a second allowed candidate (inf) the test passes, as with a single candidate
                second_distance = pair_distances(a, b, index_a, second[index_a])
                second_distance = second_distance.masked_fill(~torch.isfinite(second_squared[index_a]), float("inf"))
                keep &= distance < ratio * second_distance
            if max_distance is not None:
                keep &= distance <= max_distance
            index_a, index_b, distance = index_a[keep], index_b[keep], distance[keep]
    if numpy_in:
        return Matches(index_a.numpy(), index_b.numpy(), distance.numpy())
    return Matches(index_a.clone(), index_b.clone(), distance.clone())


def _as_points(points: Any, name: str, error: type[ValueError] = MatchingError) -> np.ndarray:
    """``(N, 2)`` finite pixel coordinates (torch or NumPy) as float64 NumPy; ``error`` naming ``name`` otherwise."""
    array = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    if array.ndim != 2 or array.shape[1] != 2:
        raise error(f"{name}: expected shape (N, 2) pixel coordinates, got {tuple(array.shape)}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise error(f"{name}: contains NaN or infinite coordinates")
    return array


def verify_geometry(
    points_a: Any,
    points_b: Any,
    model: str = "homography",
    threshold: float = 3.0,
    method: str = "usac",
    confidence: float = 0.999,
    max_iters: int = 5000,
) -> tuple[Any, Any]:
    """Fit ``model`` ("homography" or "fundamental") to ``points_a (N, 2) -> points_b (N, 2)`` pixels.

    threshold: inlier reprojection / epipolar distance in pixels. method: ``"usac"`` (OpenCV USAC_DEFAULT)
    or ``"ransac"``. Returns ``(matrix (3, 3) float64 or None, inlier mask (N,) bool)``; torch tensors in
    give torch tensors out (on the points' device), else NumPy. Fewer than 4 (homography) / 8
    (fundamental) points, or no model found (OpenCV errors on degenerate sets included): ``(None, all-False
    mask)``; never raises for finite points.
    """
    if model not in MIN_POINTS:
        raise MatchingError(f"model must be one of {sorted(MIN_POINTS)}, got {model!r}")
    if method not in METHODS:
        raise MatchingError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    a, b = _as_points(points_a, "points_a"), _as_points(points_b, "points_b")
    if a.shape[0] != b.shape[0]:
        raise MatchingError(f"points_a has {a.shape[0]} points but points_b has {b.shape[0]}")

    matrix: np.ndarray | None = None
    mask = np.zeros(a.shape[0], dtype=bool)
    if a.shape[0] >= MIN_POINTS[model]:
        try:
            if model == "homography":
                found, inliers = cv2.findHomography(
                    a, b, METHODS[method], threshold, maxIters=max_iters, confidence=confidence
                )
            else:
                found, inliers = cv2.findFundamentalMat(a, b, METHODS[method], threshold, confidence, max_iters)
        except cv2.error:  # e.g. USAC's "!model.empty()" on degenerate (near-collinear) sets: no model found
            found, inliers = None, None
        if found is not None and found.shape == (3, 3) and inliers is not None:
            matrix, mask = found, inliers.reshape(-1).astype(bool)

    if isinstance(points_a, torch.Tensor):
        device = points_a.device
        return (
            None if matrix is None else torch.from_numpy(matrix).to(device),
            torch.from_numpy(mask).to(device),
        )
    return matrix, mask

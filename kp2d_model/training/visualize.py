"""Training images for TensorBoard: keypoints drawn on the input and the score map as a heatmap."""

from __future__ import annotations

import cv2
import numpy as np
import torch

__all__ = ["keypoint_overlay", "score_heatmap"]


def _to_uint8_rgb(image: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` float in [0, 1] -> ``(H, W, 3)`` uint8 (contiguous, for OpenCV drawing)."""
    array = image.detach().float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).cpu()
    return np.ascontiguousarray(array.permute(1, 2, 0).numpy())


def keypoint_overlay(image: torch.Tensor, score: torch.Tensor, coord: torch.Tensor, top_k: int = 300) -> np.ndarray:
    """The ``top_k`` highest-scoring keypoints as circles on the image, colour from blue (low) to red (high).

    image ``(3, H, W)`` RGB in [0, 1]; score ``(1, Hc, Wc)``; coord ``(2, Hc, Wc)`` pixels (x, y).
    Returns ``(H, W, 3)`` uint8 RGB.
    """
    canvas = _to_uint8_rgb(image)
    scores = score.detach().float().flatten().cpu()
    points = coord.detach().float().flatten(1).t().cpu()  # (N, 2)
    keep = scores.argsort(descending=True)[: min(top_k, scores.numel())]
    keep = keep[scores[keep] > 0]
    for index in keep.tolist():
        strength = float(scores[index])
        color = (int(255 * strength), 0, int(255 * (1.0 - strength)))  # RGB
        x, y = (round(v) for v in points[index].tolist())
        cv2.circle(canvas, (x, y), 2, color, thickness=-1, lineType=cv2.LINE_AA)
    return canvas


def score_heatmap(score: torch.Tensor, height: int, width: int) -> np.ndarray:
    """Score map ``(1, Hc, Wc)`` in [0, 1] -> ``(height, width, 3)`` uint8 RGB (inferno colour map, nearest)."""
    cells = score.detach().float().squeeze(0).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).cpu().numpy()
    large = cv2.resize(cells, (width, height), interpolation=cv2.INTER_NEAREST)
    return cv2.cvtColor(cv2.applyColorMap(large, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)

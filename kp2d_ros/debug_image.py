"""The debug image: the source frame with keypoints (colour by track length) and track tails drawn."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["draw_debug_image"]

TAIL_COLOUR = (0, 255, 255)  # BGR yellow


def _colour(length: int) -> tuple[int, int, int]:
    """BGR colour by track length: new points red, long tracks green."""
    t = min(1.0, (length - 1) / 5.0)
    return 0, int(255 * t), int(255 * (1 - t))


def draw_debug_image(
    pixels: np.ndarray,
    channel_order: str,
    points: np.ndarray,
    track_lengths: np.ndarray,
    segments: list[np.ndarray],
) -> np.ndarray:
    """``pixels`` (H x W grey, or H x W x 3/4 in ``channel_order``) -> H x W x 3 uint8 BGR with drawings.

    points ``(N, 2)`` pixels; track_lengths ``(N,)``; segments: ``(2, 2)`` int32 tail segments (pixels).
    """
    if pixels.ndim == 2:
        canvas = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    elif pixels.shape[2] == 4:
        canvas = cv2.cvtColor(pixels, cv2.COLOR_RGBA2BGR if channel_order == "rgb" else cv2.COLOR_BGRA2BGR)
    elif channel_order == "rgb":
        canvas = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    else:
        canvas = pixels.copy()
    if segments:
        cv2.polylines(canvas, [s.reshape(-1, 1, 2) for s in segments], False, TAIL_COLOUR, 1, cv2.LINE_AA)
    centres = np.round(np.asarray(points)).astype(np.int32).reshape(-1, 2)
    for (x, y), length in zip(centres, np.asarray(track_lengths), strict=True):
        cv2.circle(canvas, (int(x), int(y)), 2, _colour(int(length)), -1, cv2.LINE_AA)
    return canvas

"""Track ids carried through frame-to-frame matches, and the short position history the debug image draws.

No ROS here: the detector node (kp2d_ros) and the sequence benchmark (kp2d_model.track_bench) share this code.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

__all__ = ["TrackHistory", "TrackIds", "carry_tracks"]


@dataclass
class TrackIds:
    """Per-keypoint track ids ``(N,)`` uint64 and track lengths ``(N,)`` uint32 of one frame."""

    ids: np.ndarray
    lengths: np.ndarray


def carry_tracks(
    previous: TrackIds | None,
    num_current: int,
    previous_index: np.ndarray,
    current_index: np.ndarray,
    next_id: int,
) -> tuple[TrackIds, int]:
    """Ids for ``num_current`` keypoints: matched ones (``current_index[j]`` <-> ``previous_index[j]``) keep the
    previous keypoint's id and length + 1; the others get fresh ids from ``next_id`` on, length 1.

    Returns the frame's TrackIds and the next unused id (ids are never reused).
    """
    ids = np.zeros(num_current, dtype=np.uint64)
    lengths = np.ones(num_current, dtype=np.uint32)
    fresh = np.ones(num_current, dtype=bool)
    if previous is not None and len(current_index):
        ids[current_index] = previous.ids[previous_index]
        lengths[current_index] = previous.lengths[previous_index] + 1
        fresh[current_index] = False
    ids[fresh] = np.arange(next_id, next_id + int(fresh.sum()), dtype=np.uint64)
    return TrackIds(ids, lengths), next_id + int(fresh.sum())


class TrackHistory:
    """Positions of the last ``length`` frames' keypoints by track id (for drawing track tails)."""

    def __init__(self, length: int):
        self.frames: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=max(1, length))

    def resize(self, length: int) -> None:
        if self.frames.maxlen != max(1, length):
            self.frames = deque(self.frames, maxlen=max(1, length))

    def clear(self) -> None:
        self.frames.clear()

    def add(self, ids: np.ndarray, points: np.ndarray) -> None:
        """One frame: ids ``(N,)``, points ``(N, 2)`` pixels."""
        self.frames.append((ids, points))

    def segments(self) -> list[np.ndarray]:
        """Line segments ``(2, 2)`` int32 joining the positions of tracks alive in the newest frame."""
        if len(self.frames) < 2:
            return []
        alive = self.frames[-1][0]
        segments = []
        for (ids_a, points_a), (ids_b, points_b) in zip(list(self.frames)[:-1], list(self.frames)[1:], strict=True):
            common, index_a, index_b = np.intersect1d(ids_a, ids_b, assume_unique=True, return_indices=True)
            keep = np.isin(common, alive, assume_unique=True)
            pairs = np.stack([points_a[index_a[keep]], points_b[index_b[keep]]], axis=1)
            segments.extend(np.round(pairs).astype(np.int32))
        return segments

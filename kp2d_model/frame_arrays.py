"""Frame records of a whole sequence as flat NumPy arrays in one ``.npz`` file (no ROS needed to read it).

The bag extractor (``ros2 run kp2d_ros extract ... --npz OUT.npz``) writes one; ``numpy.load`` reads it.
Per-frame data is ragged (N keypoints, M matches per frame), so keypoints and matches of all frames are
concatenated and each frame owns a slice given by an offsets array (CSR layout): frame ``i`` has keypoint rows
``keypoint_offsets[i]:keypoint_offsets[i + 1]`` and match rows ``match_offsets[i]:match_offsets[i + 1]``.
F frames, K keypoints and M matches in all, D descriptor length:

| array | shape, dtype | meaning |
|---|---|---|
| ``format`` | () str | ``"kp2d-frames-v1"`` |
| ``stamp_ns`` | (F,) int64 | the image's header stamp, nanoseconds |
| ``image_size`` | (F, 2) int32 | (width, height) pixels |
| ``previous_stamp_ns`` | (F,) int64 | stamp of the frame matched against; -1 on the first frame / after a reset |
| ``reset`` | (F,) bool | the stamp went backwards: matching and tracks restarted at this frame |
| ``geometry_model`` | (F, 3, 3) float64 | homography / fundamental matrix previous -> current; NaN when none |
| ``keypoint_offsets`` | (F + 1,) int64 | frame i's keypoints: rows ``keypoint_offsets[i]:keypoint_offsets[i+1]`` |
| ``points`` | (K, 2) float32 | x right, y down, source-image pixels (pixel centres at integers) |
| ``scores`` | (K,) float32 | detector confidence in [0, 1], descending within a frame |
| ``track_ids`` | (K,) uint64 | track id (same id = same physical point across frames) |
| ``track_lengths`` | (K,) uint32 | frames the track has been seen in, this one included |
| ``normalized`` | (K, 2) float64 | undistorted normalised (x, y) with camera_info; NaN rows without (only if any) |
| ``descriptors`` | (K, D) float32 | L2-normalised descriptors (only when descriptors were kept) |
| ``match_offsets`` | (F + 1,) int64 | frame i's matches: rows ``match_offsets[i]:match_offsets[i+1]`` |
| ``match_previous_index`` | (M,) int64 | index into the *previous frame's* keypoints (0-based within that frame) |
| ``match_current_index`` | (M,) int64 | index into this frame's keypoints (0-based within the frame) |
| ``match_distance`` | (M,) float32 | descriptor L2 distance in [0, 2] |
| ``match_inlier`` | (M,) bool | consistent with ``geometry_model`` (all true when geometry is "none") |

``FrameArrays(path).frame(i)`` returns one frame as a dict of those slices (indices stay frame-local).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from kp2d_model.frame_pipeline import FrameRecord

__all__ = ["FORMAT", "FrameArrays", "FrameArraysWriter"]

FORMAT = "kp2d-frames-v1"


class FrameArraysWriter:
    """Collects :class:`~kp2d_model.frame_pipeline.FrameRecord` s and saves them in the layout above.

    descriptors: keep the ``(N, D)`` descriptors (about ``4 * D`` bytes per keypoint). Only what :meth:`save`
    needs is kept per frame (NumPy copies on the CPU), not the records themselves.
    """

    def __init__(self, descriptors: bool = True):
        self.descriptors = descriptors
        self._frames: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self._frames)

    def add(self, record: FrameRecord) -> None:
        """Append one frame (the record's arrays are copied)."""
        n = len(record.points)
        inlier = record.inlier if record.inlier is not None else np.ones(len(record.current_index), bool)
        frame = {
            "stamp_ns": int(record.stamp_ns),
            "image_size": tuple(int(v) for v in record.image_size),
            "previous_stamp_ns": -1 if record.previous_stamp_ns is None else int(record.previous_stamp_ns),
            "reset": bool(record.reset),
            "geometry_model": None if record.geometry_model is None else np.asarray(record.geometry_model, np.float64),
            "points": np.asarray(record.points, np.float32).reshape(n, 2),
            "scores": np.asarray(record.scores, np.float32).reshape(n),
            "track_ids": np.asarray(record.tracks.ids, np.uint64).reshape(n),
            "track_lengths": np.asarray(record.tracks.lengths, np.uint32).reshape(n),
            "normalized": None if record.normalized is None else np.asarray(record.normalized, np.float64),
            "descriptors": record.descriptors.detach().float().cpu().numpy() if self.descriptors else None,
            "match_previous_index": np.asarray(record.previous_index, np.int64),
            "match_current_index": np.asarray(record.current_index, np.int64),
            "match_distance": np.asarray(record.distance, np.float32),
            "match_inlier": np.asarray(inlier, bool),
        }
        self._frames.append(frame)

    def arrays(self) -> dict[str, np.ndarray]:
        """The collected frames in the documented layout."""
        frames = self._frames
        counts = [len(f["points"]) for f in frames]
        match_counts = [len(f["match_current_index"]) for f in frames]
        nan33 = np.full((3, 3), np.nan)
        result = {
            "format": np.array(FORMAT),
            "stamp_ns": np.array([f["stamp_ns"] for f in frames], np.int64),
            "image_size": np.array([f["image_size"] for f in frames], np.int32).reshape(-1, 2),
            "previous_stamp_ns": np.array([f["previous_stamp_ns"] for f in frames], np.int64),
            "reset": np.array([f["reset"] for f in frames], bool),
            "geometry_model": np.array([nan33 if f["geometry_model"] is None else f["geometry_model"] for f in frames],
                                       np.float64).reshape(-1, 3, 3),
            "keypoint_offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            "points": _concatenate([f["points"] for f in frames], (0, 2), np.float32),
            "scores": _concatenate([f["scores"] for f in frames], (0,), np.float32),
            "track_ids": _concatenate([f["track_ids"] for f in frames], (0,), np.uint64),
            "track_lengths": _concatenate([f["track_lengths"] for f in frames], (0,), np.uint32),
            "match_offsets": np.concatenate([[0], np.cumsum(match_counts)]).astype(np.int64),
            "match_previous_index": _concatenate([f["match_previous_index"] for f in frames], (0,), np.int64),
            "match_current_index": _concatenate([f["match_current_index"] for f in frames], (0,), np.int64),
            "match_distance": _concatenate([f["match_distance"] for f in frames], (0,), np.float32),
            "match_inlier": _concatenate([f["match_inlier"] for f in frames], (0,), bool),
        }  # fmt: skip
        if any(f["normalized"] is not None for f in frames):
            normalized = [np.full((n, 2), np.nan) if f["normalized"] is None else f["normalized"]
                          for f, n in zip(frames, counts, strict=True)]  # fmt: skip
            result["normalized"] = _concatenate(normalized, (0, 2), np.float64)
        if self.descriptors:
            size = frames[0]["descriptors"].shape[1] if frames else 0
            result["descriptors"] = _concatenate([f["descriptors"] for f in frames], (0, size), np.float32)
        return result

    def save(self, path: str | os.PathLike) -> None:
        """Write the ``.npz`` (uncompressed: descriptors hardly compress)."""
        with open(path, "wb") as file:  # a file object: np.savez would append ".npz" to a name without it
            np.savez(file, **self.arrays())


def _concatenate(parts: list[np.ndarray], empty_shape: tuple[int, ...], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(empty_shape, dtype)


class FrameArrays:
    """A saved ``.npz`` opened for reading: ``len()``, per-frame slices with :meth:`frame`, arrays by name."""

    def __init__(self, path: str | os.PathLike):
        with np.load(Path(path), allow_pickle=False) as data:
            self.arrays = {name: data[name] for name in data.files}
        found = str(self.arrays.get("format", ""))
        if found != FORMAT:
            raise ValueError(f"{path} is not a kp2d frames file (format {found!r}, expected {FORMAT!r})")

    def __len__(self) -> int:
        return len(self.arrays["stamp_ns"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def frame(self, index: int) -> dict[str, Any]:
        """Frame ``index``: its per-frame values and its slices of the keypoint and match arrays."""
        a = self.arrays
        k0, k1 = a["keypoint_offsets"][index : index + 2]
        m0, m1 = a["match_offsets"][index : index + 2]
        frame: dict[str, Any] = {
            name: a[name][index] for name in ("stamp_ns", "image_size", "previous_stamp_ns", "reset", "geometry_model")
        }
        for name in ("points", "scores", "track_ids", "track_lengths", "normalized", "descriptors"):
            if name in a:
                frame[name] = a[name][k0:k1]
        for name in ("match_previous_index", "match_current_index", "match_distance", "match_inlier"):
            frame[name] = a[name][m0:m1]
        return frame

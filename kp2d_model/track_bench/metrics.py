"""Sequence-benchmark metrics: correct matches under the true homography, track lengths, the real-rate schedule.

A match (a carried pair ``previous point -> current point``) is correct when the previous point mapped by the
true frame-to-frame homography lands within ``CORRECT_PX`` of the current point. A *correct track* is a run of
consecutive correct links of one track id; its length is counted in processed frames (the node's
``track_lengths``), so a run of k correct links is a track of k + 1 frames. A wrong link ends the run (the id
lives on in the node, but from there on it follows another point).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

CORRECT_PX = 2.0
MIN_CORRECT_PER_FRAME = 50


def project(points: np.ndarray, homography: np.ndarray) -> np.ndarray:
    """``(N, 2)`` px mapped by a 3x3 homography -> ``(N, 2)`` float64."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    mapped = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ np.asarray(homography, np.float64).T
    return mapped[:, :2] / mapped[:, 2:]


def correct_links(
    previous_points: np.ndarray, current_points: np.ndarray, homography: np.ndarray, threshold: float = CORRECT_PX
) -> np.ndarray:
    """``(M,)`` bool: pair j is correct when ``|H p_prev[j] - p_cur[j]| <= threshold`` px."""
    if len(previous_points) == 0:
        return np.zeros(0, bool)
    error = np.linalg.norm(project(previous_points, homography) - np.asarray(current_points, np.float64), axis=1)
    return error <= threshold


class TrackRuns:
    """Lengths (frames) of the runs of consecutive correct links per track id, fed one frame at a time."""

    def __init__(self) -> None:
        self._open: dict[int, int] = {}  # track id -> correct links so far in its current run
        self.lengths: list[int] = []

    def add_frame(self, track_ids: np.ndarray, correct: np.ndarray) -> None:
        """The frame's carried links: ``track_ids (M,)`` of the current points, ``correct (M,)`` bool."""
        still_open: dict[int, int] = {}
        for track_id, ok in zip(np.asarray(track_ids).tolist(), np.asarray(correct).tolist(), strict=True):
            run = self._open.pop(track_id, 0)
            if ok:
                still_open[track_id] = run + 1
            elif run:
                self.lengths.append(run + 1)
        self.lengths.extend(run + 1 for run in self._open.values())  # tracks that were not carried: ended
        self._open = still_open

    def close(self) -> list[int]:
        """End every open run (end of sequence); returns all run lengths."""
        self.lengths.extend(run + 1 for run in self._open.values())
        self._open = {}
        return self.lengths


def real_rate_schedule(num_frames: int, fps: float, process: Callable[[int], float]) -> list[int]:
    """Frames a busy worker processes, as the detector node does: frame i arrives at ``i / fps`` s into a
    one-frame slot; a newer arrival replaces an unprocessed one (dropped). When the worker finishes a frame it
    takes the newest frame waiting in the slot, or waits for the next arrival.

    ``process(i)`` processes frame i and returns its duration in ms. Returns the processed frame indices.
    """
    processed: list[int] = []
    clock = 0.0  # s, when the worker is free
    index = 0
    while index < num_frames:
        start = max(clock, index / fps)
        clock = start + process(index) / 1e3
        processed.append(index)
        newest = min(num_frames - 1, math.floor(clock * fps + 1e-9))  # the latest frame that has arrived
        index = newest if newest > index else index + 1
    return processed


@dataclass
class FrameRecord:
    """One processed frame of one sequence."""

    sequence: str
    frame: int
    matches: int
    correct: int
    ms: float
    has_previous: bool


@dataclass
class RunResult:
    """Every processed frame of one method over all sequences, and the correct-track lengths."""

    frames: list[FrameRecord] = field(default_factory=list)
    track_lengths: list[int] = field(default_factory=list)
    track_lengths_by_sequence: dict[str, list[int]] = field(default_factory=dict)
    frames_total: dict[str, int] = field(default_factory=dict)  # camera frames per sequence


def summarize(records: Sequence[FrameRecord], track_lengths: Sequence[int], frames_total: int) -> dict:
    """Summary of processed frames: means over the frames that have a previous frame to match with.

    correct_matches_per_frame: mean correct matches; precision: correct / all matches (pooled);
    median_track_length: median correct-track length (frames); frames_with_50_correct: share of those frames
    with >= 50 correct matches; ms_per_frame: median processing time; processed_share: processed / camera frames.
    """
    linked = [r for r in records if r.has_previous]
    matches = sum(r.matches for r in linked)
    correct = sum(r.correct for r in linked)
    return {
        "correct_matches_per_frame": correct / len(linked) if linked else 0.0,
        "precision": correct / matches if matches else 0.0,
        "median_track_length": float(np.median(track_lengths)) if len(track_lengths) else 0.0,
        "frames_with_50_correct": (
            sum(r.correct >= MIN_CORRECT_PER_FRAME for r in linked) / len(linked) if linked else 0.0
        ),
        "ms_per_frame": float(np.median([r.ms for r in records])) if records else 0.0,
        "processed_share": len(records) / frames_total if frames_total else 0.0,
    }

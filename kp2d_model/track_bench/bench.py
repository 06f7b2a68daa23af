"""Run front-ends over the benchmark's sequences, at every frame and at their real rate."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kp2d_model.motion_prediction import GyroCoverageError, integrate_gyro
from kp2d_model.track_bench.frontends import timed
from kp2d_model.track_bench.metrics import FrameRecord, RunResult, TrackRuns, correct_links, real_rate_schedule
from kp2d_model.track_bench.sequences import Sequence as FrameSequence

RATES = ("every_frame", "real_rate")


def stride_of(rate: str) -> int | None:
    """``"every_N_frames"`` (N >= 2: frames 0, N, 2N, ... processed, a slow detector's gaps without the machine's
    timing) -> N; the two ``RATES`` -> None; anything else: ValueError."""
    if rate in RATES:
        return None
    parts = rate.split("_")
    if len(parts) == 3 and parts[0] == "every" and parts[2] == "frames" and parts[1].isdigit() and int(parts[1]) >= 2:
        return int(parts[1])
    raise ValueError(f"rate must be one of {RATES} or every_N_frames (N >= 2), got {rate!r}")


@dataclass
class TrackPicture:
    """What one run saw on one sequence, for the track picture: per processed frame (index, points, track ids,
    carried current indices, their correctness)."""

    sequence: str
    frames: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    image: np.ndarray | None = None  # the last frame (H, W, 3) uint8 BGR


def run_sequence(
    front_end: Any, sequence: FrameSequence, rate: str, result: RunResult, picture: TrackPicture | None = None
) -> list[int]:
    """Run ``front_end`` (reset first) over ``sequence`` at ``rate`` ("every_frame", "real_rate" or
    "every_N_frames"), adding frame records and correct-track lengths to ``result``; returns the processed frame
    indices. A front-end with ``uses_gyro`` also gets ``rotation`` (the sequence's gyro integrated since the
    previous processed frame, None on the first) and ``camera_matrix``."""
    stride = stride_of(rate)
    key = f"{sequence.name}/{sequence.photo}"
    front_end.reset()
    runs = TrackRuns()
    last: list[int] = []  # the previous processed frame index

    def process(index: int) -> float:
        gyro = {}
        if getattr(front_end, "uses_gyro", False):
            gyro = {"rotation": gyro_rotation(sequence, last[0], index) if last else None}
            gyro["camera_matrix"] = sequence.camera_matrix
        frame_result, ms = timed(front_end, sequence.frames[index], **gyro)
        has_previous = bool(last)
        if has_previous:
            homography = sequence.homography(last[0], index)
            previous_points = previous[0][frame_result.previous_index]
            correct = correct_links(previous_points, frame_result.points[frame_result.current_index], homography)
            runs.add_frame(frame_result.tracks.ids[frame_result.current_index], correct)
        else:
            correct = np.zeros(0, bool)
        result.frames.append(
            FrameRecord(key, index, len(frame_result.current_index), int(correct.sum()), ms, has_previous)
        )
        if picture is not None:
            picture.frames.append(
                (index, frame_result.points, frame_result.tracks.ids, frame_result.current_index, correct)
            )
        previous[0] = frame_result.points
        last[:] = [index]
        return ms

    previous: list[np.ndarray] = [np.zeros((0, 2), np.float32)]
    if rate == "every_frame" or stride is not None:
        processed = list(range(0, len(sequence), stride or 1))
        for index in processed:
            process(index)
    else:
        processed = real_rate_schedule(len(sequence), sequence.fps, process)
    if picture is not None:
        picture.image = sequence.frames[processed[-1]].copy()
    lengths = runs.close()
    result.track_lengths.extend(lengths)
    result.track_lengths_by_sequence.setdefault(sequence.name, []).extend(lengths)
    result.frames_total[key] = len(sequence)
    return processed


def gyro_rotation(sequence: FrameSequence, from_index: int, to_index: int) -> np.ndarray | None:
    """The sequence's synthetic gyro integrated from frame ``from_index`` to ``to_index`` (frame t at t / fps):
    camera rotation ``R_cur_prev`` (3, 3) (the gyro is in camera axes), or None without gyro / coverage."""
    if sequence.gyro_stamps_ns is None or sequence.gyro_rates is None:
        return None
    start, end = (round(i * 1e9 / sequence.fps) for i in (from_index, to_index))
    try:
        return integrate_gyro(sequence.gyro_stamps_ns, sequence.gyro_rates, start, end)
    except GyroCoverageError:
        return None


def warm_up(front_end: Any, image: np.ndarray, repeats: int = 2) -> None:
    """First calls (library initialisation, allocator warm-up) are not timed."""
    for _ in range(repeats):
        front_end.reset()
        front_end(image)
    front_end.reset()


def photos_for(sequence_index: int, num_photos: int, per_sequence: int, seed: int) -> list[int]:
    """Indices of the photos the ``sequence_index``-th sequence runs on: ``per_sequence`` distinct ones (all, if
    fewer), consecutive sequences taking the next photos of a seeded shuffle, so the sequences share no photo
    until all photos are used."""
    order = np.random.default_rng([seed, zlib.crc32(b"photos")]).permutation(num_photos)
    count = min(per_sequence, num_photos)
    return [int(order[(sequence_index * count + j) % num_photos]) for j in range(count)]


def run_benchmark(
    front_ends: dict[str, Any],
    sequences: Sequence[FrameSequence] | Callable[[], Any],
    rates: Sequence[str] = RATES,
    on_sequence: Callable[[FrameSequence], None] | None = None,
    picture_sequence: str | None = None,
) -> tuple[dict[tuple[str, str], RunResult], dict[str, TrackPicture]]:
    """Every front-end (label -> front-end) on every sequence at every rate, methods in turn per sequence
    (round-robin, so a change of machine load hits all methods alike). ``sequences`` may be an iterable that
    renders them one at a time. Returns results by (label, rate) and, for ``picture_sequence`` (its first
    occurrence), each label's every-frame TrackPicture."""
    results = {(label, rate): RunResult() for label in front_ends for rate in rates}
    pictures: dict[str, TrackPicture] = {}
    warmed = False
    for sequence in sequences() if callable(sequences) else sequences:
        if not warmed:
            for front_end in front_ends.values():
                warm_up(front_end, sequence.frames[0])
            warmed = True
        take_picture = picture_sequence == sequence.name and not pictures
        for rate in rates:
            for label, front_end in front_ends.items():
                picture = None
                if take_picture and rate == "every_frame":
                    picture = TrackPicture(f"{sequence.name}/{sequence.photo}")
                run_sequence(front_end, sequence, rate, results[(label, rate)], picture)
                if picture is not None:
                    pictures[label] = picture
        if on_sequence is not None:
            on_sequence(sequence)
    return results, pictures

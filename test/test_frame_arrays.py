"""kp2d_model.frame_arrays: FrameRecords -> one .npz (CSR layout) -> per-frame slices, without ROS."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kp2d_model.frame_arrays import FORMAT, FrameArrays, FrameArraysWriter
from kp2d_model.frame_pipeline import FrameRecord
from kp2d_model.tracks import TrackIds


def record(stamp_ns: int, n: int, previous: FrameRecord | None, m: int, geometry: bool, normalized: bool,
           seed: int) -> FrameRecord:  # fmt: skip
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, 100, (n, 2)).astype(np.float32)
    previous_index = rng.choice(len(previous.points), m, replace=False) if previous is not None else np.zeros(0, int)
    current_index = rng.choice(n, m, replace=False) if previous is not None else np.zeros(0, int)
    inlier = rng.random(len(current_index)) < 0.7 if geometry else None
    return FrameRecord(
        stamp_ns=stamp_ns, image_size=(128, 96), points=points, scores=np.sort(rng.random(n).astype(np.float32))[::-1],
        descriptors=torch.nn.functional.normalize(torch.randn(n, 8), dim=1),
        previous_stamp_ns=previous.stamp_ns if previous is not None else None,
        previous_index=previous_index.astype(np.int64), current_index=current_index.astype(np.int64),
        distance=rng.random(len(current_index)).astype(np.float32),
        previous_points=previous.points[previous_index] if previous is not None else np.zeros((0, 2), np.float32),
        current_points=points[current_index], geometry_model=np.eye(3) * seed if geometry else None, inlier=inlier,
        tracks=TrackIds(np.arange(seed * 100, seed * 100 + n, dtype=np.uint64), np.ones(n, np.uint32)),
        normalized=points.astype(np.float64) / 100 if normalized else None, velocity=None, reset=False,
        inference_ms=1.0,
    )  # fmt: skip


def test_round_trip_keeps_every_frame_and_its_frame_local_indices(tmp_path):
    first = record(1_000, 5, None, 0, geometry=True, normalized=False, seed=1)
    second = record(2_000, 7, first, 4, geometry=True, normalized=True, seed=2)
    empty = record(3_000, 0, None, 0, geometry=False, normalized=False, seed=3)
    writer = FrameArraysWriter(descriptors=True)
    for r in (first, second, empty):
        writer.add(r)
    writer.save(tmp_path / "frames")  # no .npz suffix added
    arrays = FrameArrays(tmp_path / "frames")
    assert len(arrays) == 3 and str(arrays["format"]) == FORMAT
    np.testing.assert_array_equal(arrays["keypoint_offsets"], [0, 5, 12, 12])
    np.testing.assert_array_equal(arrays["match_offsets"], [0, 0, 4, 4])
    np.testing.assert_array_equal(arrays["previous_stamp_ns"], [-1, 1_000, -1])
    for index, original in enumerate((first, second, empty)):
        frame = arrays.frame(index)
        assert frame["stamp_ns"] == original.stamp_ns and tuple(frame["image_size"]) == (128, 96)
        np.testing.assert_array_equal(frame["points"], original.points)
        np.testing.assert_array_equal(frame["scores"], original.scores)
        np.testing.assert_array_equal(frame["track_ids"], original.tracks.ids)
        np.testing.assert_array_equal(frame["descriptors"], original.descriptors.numpy())
        np.testing.assert_array_equal(frame["match_previous_index"], original.previous_index)
        np.testing.assert_array_equal(frame["match_current_index"], original.current_index)
        np.testing.assert_array_equal(frame["match_distance"], original.distance)
        expected_inlier = original.inlier if original.inlier is not None else np.ones(len(original.current_index))
        np.testing.assert_array_equal(frame["match_inlier"], expected_inlier.astype(bool))
        if original.geometry_model is None:
            assert np.isnan(frame["geometry_model"]).all()
        else:
            np.testing.assert_array_equal(frame["geometry_model"], original.geometry_model)
        if original.normalized is None:
            assert np.isnan(frame["normalized"]).all()
        else:
            np.testing.assert_array_equal(frame["normalized"], original.normalized)
    # Indices are frame-local: the matched previous keypoints are found in the previous frame's slice.
    frame, previous = arrays.frame(1), arrays.frame(0)
    np.testing.assert_array_equal(previous["points"][frame["match_previous_index"]], second.previous_points)


def test_without_descriptors_or_intrinsics_those_arrays_are_absent(tmp_path):
    writer = FrameArraysWriter(descriptors=False)
    writer.add(record(1, 3, None, 0, geometry=False, normalized=False, seed=1))
    writer.save(tmp_path / "f.npz")
    with np.load(tmp_path / "f.npz") as data:
        assert "descriptors" not in data.files and "normalized" not in data.files


def test_an_empty_sequence_saves_and_loads(tmp_path):
    FrameArraysWriter().save(tmp_path / "e.npz")
    arrays = FrameArrays(tmp_path / "e.npz")
    assert len(arrays) == 0 and arrays["points"].shape == (0, 2) and arrays["descriptors"].shape == (0, 0)


def test_another_npz_is_refused_with_its_name(tmp_path):
    np.savez(tmp_path / "other.npz", points=np.zeros((1, 2)))
    with pytest.raises(ValueError, match="other.npz"):
        FrameArrays(tmp_path / "other.npz")

"""FramePipeline (kp2d_model.frame_pipeline) with the real bundled detector on rendered sequences with a known
motion (kp2d-track-bench's sequences: every frame's homography to every other is known)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from kp2d_model import KeypointDetector
from kp2d_model.camera import Intrinsics, normalized_coordinates
from kp2d_model.evaluation.synthetic import held_out_photos, read_photo
from kp2d_model.frame_pipeline import (
    FramePipeline,
    MaskSizeError,
    MatchConfig,
    PipelineConfig,
    keep_mask,
    vins_features,
)
from kp2d_model.track_bench.metrics import correct_links
from kp2d_model.track_bench.sequences import make_sequence

SIZE = (320, 240)  # (W, H)
FRAME_NS = 33_333_333
K = np.array([[300.0, 0, 159.5], [0, 300.0, 119.5], [0, 0, 1]])
PINHOLE = Intrinsics(K, np.zeros(5), "plumb_bob", SIZE)


@pytest.fixture(scope="module")
def detector() -> KeypointDetector:
    return KeypointDetector(device="cpu", top_k=300)


@pytest.fixture(scope="module")
def pan():
    return make_sequence(read_photo(held_out_photos()[0].path), "pan", 4, SIZE)


def test_matched_keypoints_keep_their_track_ids_and_lengths_grow(detector, pan):
    pipeline = FramePipeline(detector, PipelineConfig(top_k=300))
    first = pipeline.step(pan.frames[0], 0, channel_order="bgr")
    second = pipeline.step(pan.frames[1], FRAME_NS, channel_order="bgr")
    third = pipeline.step(pan.frames[2], 2 * FRAME_NS, channel_order="bgr")

    assert first.previous_stamp_ns is None and len(first.current_index) == 0 and (first.tracks.lengths == 1).all()
    assert second.previous_stamp_ns == 0 and third.previous_stamp_ns == FRAME_NS
    np.testing.assert_array_equal(second.tracks.ids[second.current_index], first.tracks.ids[second.previous_index])
    assert (second.tracks.lengths[second.current_index] == 2).all()
    assert (third.tracks.lengths[third.current_index] == second.tracks.lengths[third.previous_index] + 1).all()
    assert (third.tracks.lengths == 3).sum() > 100  # most of a slow pan is tracked through three frames
    # Unmatched keypoints get fresh ids, never one used before.
    fresh = np.setdiff1d(np.arange(len(second.points)), second.current_index)
    assert (second.tracks.ids[fresh] > first.tracks.ids.max()).all()
    # The matches are the motion's: most pairs agree with the rendered homography.
    correct = correct_links(second.previous_points, second.current_points, pan.homography(0, 1))
    assert correct.mean() > 0.8, correct.mean()
    np.testing.assert_array_equal(second.previous_points, first.points[second.previous_index])
    np.testing.assert_array_equal(second.current_points, second.points[second.current_index])


def test_a_stamp_going_backwards_resets_matching_and_tracks(detector, pan):
    pipeline = FramePipeline(detector)
    first = pipeline.step(pan.frames[0], 10 * FRAME_NS, channel_order="bgr")
    back = pipeline.step(pan.frames[1], 5 * FRAME_NS, channel_order="bgr")
    assert back.reset and back.previous_stamp_ns is None and len(back.current_index) == 0
    assert (back.tracks.lengths == 1).all() and back.tracks.ids.min() > first.tracks.ids.max()
    after = pipeline.step(pan.frames[2], 6 * FRAME_NS, channel_order="bgr")
    assert not after.reset and after.previous_stamp_ns == 5 * FRAME_NS and len(after.current_index) > 100
    # An equal stamp is not "backwards": it is matched (velocity 0: no time passed).
    same = pipeline.step(pan.frames[2], 6 * FRAME_NS, channel_order="bgr", intrinsics=PINHOLE)
    assert not same.reset and len(same.current_index) > 100


def test_config_given_to_step_applies_to_that_frame_only_and_leaves_the_detector_alone(detector, pan):
    pipeline = FramePipeline(detector, PipelineConfig(top_k=300))
    few = pipeline.step(pan.frames[0], 0, channel_order="bgr", config=PipelineConfig(top_k=40, nms_radius=1))
    assert len(few.points) == 40
    assert (detector.top_k, detector.score_threshold, detector.nms_radius) == (300, 0.0, 0)
    default = pipeline.step(pan.frames[0], FRAME_NS, channel_order="bgr")
    assert len(default.points) == 300
    # A stricter score threshold for one frame only.
    strict = pipeline.step(pan.frames[0], 2 * FRAME_NS, channel_order="bgr", config=PipelineConfig(score_threshold=0.9))
    assert len(strict.points) and (strict.scores > 0.9).all()
    assert len(strict.points) < len(default.points)


def test_homography_verification_gives_the_motion_and_its_inliers(detector, pan):
    config = PipelineConfig(top_k=300, match=MatchConfig(geometry="homography", geometry_threshold=2.0))
    pipeline = FramePipeline(detector, config)
    pipeline.step(pan.frames[0], 0, channel_order="bgr")
    record = pipeline.step(pan.frames[1], FRAME_NS, channel_order="bgr")
    assert record.inlier is not None and record.inlier.dtype == bool and len(record.inlier) == len(record.current_index)
    assert record.inlier.sum() > 100
    # The fitted model maps frame 0 onto frame 1 as the rendered homography does (within a pixel, inside the image).
    grid = np.stack(np.meshgrid(np.linspace(20, 300, 8), np.linspace(20, 220, 6)), -1).reshape(-1, 2)
    fitted = correct_links(grid, grid, np.linalg.inv(pan.homography(0, 1)) @ record.geometry_model, threshold=1.0)
    assert fitted.all()
    # Inliers are the correct pairs; only inliers carry a track.
    correct = correct_links(record.previous_points, record.current_points, pan.homography(0, 1))
    assert correct[record.inlier].mean() > 0.95
    carried_previous, carried_current = record.carried
    assert (record.tracks.lengths == 2).sum() == record.inlier.sum() == len(carried_current)
    assert (record.tracks.lengths[record.current_index[~record.inlier]] == 1).all()


def test_mask_and_roi_keep_keypoints_out_and_top_k_comes_from_the_allowed_area(detector, pan):
    width, height = SIZE
    mask = np.full((height, width), 255, np.uint8)
    mask[:, : width // 2] = 0  # the left half is the robot's body
    pipeline = FramePipeline(detector, PipelineConfig(top_k=100, mask=mask))
    record = pipeline.step(pan.frames[0], 0, channel_order="bgr")
    assert len(record.points) == 100  # filtered before top-k: still top_k points, all in the right half
    assert (np.round(record.points[:, 0]) >= width // 2).all()

    roi = (40, 30, 120, 100)
    record = pipeline.step(pan.frames[1], FRAME_NS, channel_order="bgr", config=PipelineConfig(top_k=100, roi=roi))
    x, y = np.round(record.points).T
    assert len(record.points) == 100
    assert ((x >= 40) & (x < 160) & (y >= 30) & (y < 130)).all()

    both = keep_mask(SIZE, PipelineConfig(mask=mask, roi=(100, 30, 120, 100)))  # x 100..219, y 30..129
    assert both.sum() == (220 - width // 2) * 100 and both[30:130, width // 2 : 220].all()  # the roi's unmasked part


def test_a_mask_of_another_size_refuses_the_frame_and_keeps_the_state(detector, pan):
    pipeline = FramePipeline(detector)
    pipeline.step(pan.frames[0], 0, channel_order="bgr")
    with pytest.raises(MaskSizeError, match=r"mask is 100 x 50 pixels but the image is 320 x 240"):
        pipeline.step(pan.frames[1], FRAME_NS, channel_order="bgr",
                      config=PipelineConfig(mask=np.ones((50, 100), np.uint8)))  # fmt: skip
    assert pipeline.previous_stamp_ns == 0
    with pytest.raises(ValueError, match="roi must be"):
        PipelineConfig(roi=(0, 0, 0, 10))


def test_normalised_coordinates_and_velocity_per_second(detector, pan):
    pipeline = FramePipeline(detector)
    first = pipeline.step(pan.frames[0], 0, channel_order="bgr", intrinsics=PINHOLE)
    assert first.velocity is None and first.normalized.dtype == np.float64
    np.testing.assert_allclose(first.normalized, (first.points - K[:2, 2]) / 300.0, rtol=0, atol=1e-9)
    dt = 0.05
    second = pipeline.step(pan.frames[1], int(dt * 1e9), channel_order="bgr", intrinsics=PINHOLE)
    previous_index, current_index = second.carried
    expected = (second.normalized[current_index] - first.normalized[previous_index]) / dt
    np.testing.assert_allclose(second.velocity[current_index], expected, rtol=1e-12)
    new = np.setdiff1d(np.arange(len(second.points)), current_index)
    assert (second.velocity[new] == 0).all()
    # The pan's true motion, in normalised units per second, at the carried points.
    moved = correct_links(second.previous_points, second.current_points, pan.homography(0, 1))
    truth_px = _project(second.previous_points, pan.homography(0, 1)) - second.previous_points
    velocity = second.velocity[second.current_index[moved]]
    np.testing.assert_allclose(velocity, truth_px[moved] / 300.0 / dt, atol=2 / 300 / dt)  # CORRECT_PX = 2 px

    features = vins_features(second, camera_id=1)
    tracked = second.tracks.lengths >= 2
    assert len(features["ids"]) == tracked.sum() and (features["camera_id"] == 1).all()
    np.testing.assert_array_equal(features["points"][:, 2], 1.0)
    np.testing.assert_allclose(normalized_coordinates(np.stack([features["u"], features["v"]], 1), PINHOLE),
                               features["points"][:, :2])  # fmt: skip
    with pytest.raises(ValueError, match="intrinsics"):
        vins_features(replace(second, normalized=None))


def _project(points: np.ndarray, homography: np.ndarray) -> np.ndarray:
    mapped = np.concatenate([points, np.ones((len(points), 1))], 1) @ homography.T
    return mapped[:, :2] / mapped[:, 2:]


def test_the_mask_applies_in_image_pixels_when_the_network_runs_at_another_scale(pan):
    """With input_scale the candidates are in network pixels: the mask is looked up at their image position."""
    width, height = SIZE
    mask = np.zeros((height, width), np.uint8)
    mask[height // 2 :, :] = 1  # only the bottom half
    scaled = KeypointDetector(device="cpu", top_k=60, input_scale=0.5)
    record = FramePipeline(scaled, PipelineConfig(top_k=60, mask=mask)).step(pan.frames[0], 0, channel_order="bgr")
    assert len(record.points) == 60 and (np.round(record.points[:, 1]) >= height // 2).all()


def test_detector_keyword_overrides_equal_the_same_settings_given_at_construction(detector, pan):
    """detector(image, top_k=..., nms_radius=...) gives what a detector built with those settings gives."""
    built = KeypointDetector(device="cpu", top_k=80, nms_radius=1)
    expected = built(pan.frames[0])
    given = detector(pan.frames[0], top_k=80, nms_radius=1)
    np.testing.assert_array_equal(given.keypoints.numpy(), expected.keypoints.numpy())
    np.testing.assert_array_equal(given.descriptors.numpy(), expected.descriptors.numpy())
    assert detector.top_k == 300 and detector.nms_radius == 0
    from kp2d_model.image import ImageFormatError

    with pytest.raises(ImageFormatError, match=r"mask is 10 x 10 pixels but images\[0\] is 320 x 240"):
        detector(pan.frames[0], mask=np.ones((10, 10), np.uint8))


def test_detecting_the_next_frame_before_finishing_this_one_gives_the_records_of_step(detector, pan):
    """The detector node's overlap: detect(n + 1) runs while frame n is in finish(); the records equal step()'s."""
    stepped = FramePipeline(detector, PipelineConfig(top_k=300))
    expected = [stepped.step(frame, k * FRAME_NS, channel_order="bgr", intrinsics=PINHOLE)
                for k, frame in enumerate(pan.frames[:3])]  # fmt: skip

    split = FramePipeline(detector, PipelineConfig(top_k=300))
    detected = split.detect(pan.frames[0], channel_order="bgr")
    records = []
    for k in range(3):
        following = split.detect(pan.frames[k + 1], channel_order="bgr") if k < 2 else None
        assert split.previous_stamp_ns == (None if k == 0 else (k - 1) * FRAME_NS)  # detect left the state alone
        records.append(split.finish(detected, k * FRAME_NS, intrinsics=PINHOLE))
        detected = following

    for got, want in zip(records, expected, strict=True):
        assert got.stamp_ns == want.stamp_ns and got.previous_stamp_ns == want.previous_stamp_ns
        assert got.image_size == want.image_size == SIZE
        for name in ("points", "scores", "previous_index", "current_index", "distance", "normalized"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
        np.testing.assert_array_equal(got.tracks.ids, want.tracks.ids)
        np.testing.assert_array_equal(got.tracks.lengths, want.tracks.lengths)
    assert len(records[2].current_index) > 100

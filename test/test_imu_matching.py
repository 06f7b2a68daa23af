"""IMU-aided matching end to end in the library: FramePipeline.step(rotation=) on the benchmark's pure-rotation
sequences (exact K R K^-1 homographies, synthetic gyro) and kp2d-track-bench's --gyro rows."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from kp2d_model import KeypointDetector
from kp2d_model.camera import Intrinsics
from kp2d_model.evaluation.synthetic import read_photo
from kp2d_model.frame_pipeline import FramePipeline, MatchConfig, PipelineConfig
from kp2d_model.motion_prediction import MotionPredictionError
from kp2d_model.photos import SKIMAGE_DATA_DIR
from kp2d_model.track_bench.bench import gyro_rotation, run_sequence
from kp2d_model.track_bench.cli import main
from kp2d_model.track_bench.frontends import MatchingSettings, build_front_end
from kp2d_model.track_bench.metrics import RunResult, correct_links, project, summarize
from kp2d_model.track_bench.sequences import GYRO_SEQUENCE_NAMES, SEQUENCE_NAMES, make_sequence

SIZE = (320, 240)
FRAME_NS = 33_333_333


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return read_photo(SKIMAGE_DATA_DIR / "astronaut.png")


@pytest.fixture(scope="module")
def roll(photo):
    """13 frames of the fast roll (up to ~14 deg/frame) at 320x240 with every image effect and a noisy gyro."""
    return make_sequence(photo, "gyro_roll", 13, SIZE, photo_name="astronaut")


@pytest.fixture(scope="module")
def detector() -> KeypointDetector:
    return KeypointDetector(device="cpu", top_k=400)


def test_gyro_sequences_are_pure_rotations_and_the_gyro_predicts_them(photo):
    assert not set(GYRO_SEQUENCE_NAMES) & set(SEQUENCE_NAMES)  # not in the bench's default set
    for name in GYRO_SEQUENCE_NAMES:
        sequence = make_sequence(photo, name, 9, SIZE, photo_name="astronaut")
        k = sequence.camera_matrix
        corners = np.array([[0, 0], [319, 0], [319, 239], [0, 239], [160, 120]], float)
        for a, b in ((0, 1), (3, 4), (0, 8)):
            truth = project(corners, sequence.homography(a, b))
            # The exact homography is K R K^-1 of a rotation (H normalised to det 1 is orthogonal in K's frame).
            r = np.linalg.inv(k) @ sequence.homography(a, b) @ k
            r /= np.cbrt(np.linalg.det(r))
            np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-9)
            # The noisy, biased 200 Hz gyro integrated between the frames predicts within a pixel.
            predicted = project(corners, k @ gyro_rotation(sequence, a, b) @ np.linalg.inv(k))
            assert np.abs(predicted - truth).max() < 1.0, (name, a, b)
        assert np.abs(project(corners, sequence.homography(0, 8)) - corners).max() > 40  # it does move fast


def test_pipeline_predicts_with_the_rotation_and_matches_only_near_the_prediction(detector, roll):
    intrinsics = Intrinsics(roll.camera_matrix, np.zeros(5), "plumb_bob", SIZE)
    config = PipelineConfig(top_k=400, match=MatchConfig(prediction_radius=6.0))
    pipeline = FramePipeline(detector, config)
    first = pipeline.step(roll.frames[0], 0, channel_order="bgr", intrinsics=intrinsics, rotation=np.eye(3))
    assert first.predicted_points is None  # nothing to predict on the first frame
    rotation = gyro_rotation(roll, 0, 2)
    second = pipeline.step(roll.frames[2], 2 * FRAME_NS, channel_order="bgr", intrinsics=intrinsics, rotation=rotation)
    predicted = second.predicted_points
    assert predicted.shape == (len(first.points), 2)
    np.testing.assert_allclose(predicted, project(first.points, roll.homography(0, 2)), atol=1.0)
    gap = np.linalg.norm(predicted[second.previous_index] - second.current_points, axis=1)
    assert len(gap) > 50 and gap.max() <= 6.0
    assert correct_links(second.previous_points, second.current_points, roll.homography(0, 2)).mean() > 0.5

    # Without intrinsics the rotation cannot be used: plain matching, no prediction.
    plain = FramePipeline(detector, config)
    plain.step(roll.frames[0], 0, channel_order="bgr")
    unaided = plain.step(roll.frames[2], 2 * FRAME_NS, channel_order="bgr", rotation=rotation)
    assert unaided.predicted_points is None
    # A rotation that is not one is refused before anything changes.
    with pytest.raises(MotionPredictionError, match="rotation"):
        plain.step(roll.frames[3], 3 * FRAME_NS, channel_order="bgr", rotation=2 * np.eye(3))
    assert plain.previous_stamp_ns == 2 * FRAME_NS
    with pytest.raises(ValueError, match="prediction_radius"):
        replace(config.match, prediction_radius=-1.0)


def test_imu_aided_matching_raises_correct_matches_on_a_fast_rotation(roll):
    """kp2d-track-bench's kp2d front-end on the fast roll, every 4th frame (~0.13 s gaps, as a slow detector):
    where plain matching loses the rotation (the big roll steps: under 30 correct), the gyro's prediction (20 px)
    recovers matches; overall more correct matches at a higher precision."""
    frames, summaries = {}, {}
    for radius in (0.0, 20.0):
        front_end = build_front_end("kp2d", MatchingSettings(top_k=400, gyro_radius=radius))
        result = RunResult()
        run_sequence(front_end, roll, "every_4_frames", result)
        frames[radius] = [record.correct for record in result.frames if record.has_previous]
        summaries[radius] = summarize(result.frames, result.track_lengths, len(roll))
    plain, aided = np.array(frames[0.0]), np.array(frames[20.0])
    lost = plain < 30
    assert lost.any(), plain  # the sequence is fast enough to defeat plain matching somewhere
    assert (aided[lost] >= plain[lost] + 10).all(), (plain, aided)
    assert aided.sum() >= plain.sum() + 25, (plain, aided)
    assert summaries[20.0]["precision"] > summaries[0.0]["precision"], summaries


def test_cli_gyro_rows_and_stride_rate(tmp_path, capsys):
    out = tmp_path / "gyro.json"
    status = main(
        ["--sequence", "gyro_pan", "--frames", "5", "--resolution", "160x120", "--method", "sift", "--gyro",
         "--rate", "every_2_frames", "--json", str(out), "--quiet"]
    )  # fmt: skip
    assert status == 0
    import json

    runs = {(run["method"], run["rate"]) for run in json.loads(out.read_text())["runs"]}
    assert runs == {("sift", "every_2_frames"), ("sift_gyro", "every_2_frames")}
    assert "Every 2 frames, per sequence" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--rate", "every_1_frames"])
    assert "every_N_frames" in capsys.readouterr().err

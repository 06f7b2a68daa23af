"""The sequence benchmark (kp2d-track-bench): generator geometry, front-end adapters, metrics, CLI errors."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from kp2d_model.evaluation.synthetic import read_photo
from kp2d_model.photos import SKIMAGE_DATA_DIR
from kp2d_model.track_bench.bench import run_sequence
from kp2d_model.track_bench.cli import main
from kp2d_model.track_bench.frontends import (
    FrontEndError,
    KltFrontEnd,
    MatchingSettings,
    build_front_end,
    match_binary,
)
from kp2d_model.track_bench.metrics import (
    FrameRecord,
    RunResult,
    TrackRuns,
    correct_links,
    real_rate_schedule,
    summarize,
)
from kp2d_model.track_bench.sequences import SEQUENCE_NAMES, SequenceError, make_sequence

SMALL = (160, 120)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return read_photo(SKIMAGE_DATA_DIR / "astronaut.png")


@pytest.fixture(scope="module")
def pan_sequence(photo):
    """8 frames of the pan at 320x240 with every image effect (noise included)."""
    return make_sequence(photo, "pan", 8, (320, 240), fps=30.0, seed=0, photo_name="astronaut")


# ------------------------------------------------------------------------------------------ generator


@pytest.mark.parametrize("name", SEQUENCE_NAMES)
def test_frame_warped_by_the_stated_homography_reproduces_the_next_frame(photo, name):
    # Fast-moving frames (every 6th frame at 30 fps) so that a wrong homography cannot pass for a right one.
    sequence = make_sequence(photo, name, 13, SMALL, fps=30.0, effects=False, photo_name="astronaut")
    for a, b in ((0, 6), (6, 12), (3, 4)):
        h = sequence.homography(a, b)
        warped = cv2.warpPerspective(sequence.frames[a], h, SMALL, flags=cv2.INTER_LINEAR)
        valid = cv2.warpPerspective(np.full(SMALL[::-1], 255, np.uint8), h, SMALL, flags=cv2.INTER_NEAREST)
        valid = cv2.erode(valid, np.ones((5, 5), np.uint8)) > 0
        assert valid.mean() > 0.3, f"{name}: frames {a} and {b} barely overlap"
        error = np.abs(warped.astype(np.float64) - sequence.frames[b])[valid].mean()
        assert error < 6.0, f"{name} {a}->{b}: mean abs difference {error:.2f} grey levels"  # interpolation twice
        if a + 1 != b:  # the frames differ: the identity (no motion) must be clearly worse
            still = np.abs(sequence.frames[a].astype(np.float64) - sequence.frames[b])[valid].mean()
            assert still > 2 * error, f"{name} {a}->{b}: identity {still:.2f} vs stated H {error:.2f}"


def test_homographies_compose_through_the_photo(photo):
    sequence = make_sequence(photo, "zoom_tilt", 5, SMALL, effects=False)
    direct = sequence.homography(0, 4)
    chained = sequence.homography(3, 4) @ sequence.homography(1, 3) @ sequence.homography(0, 1)
    np.testing.assert_allclose(chained / chained[2, 2], direct, rtol=1e-9, atol=1e-9)


def test_motion_blur_follows_the_motion_and_exposure_steps_change_the_brightness(photo):
    plain = make_sequence(photo, "blur", 10, SMALL, effects=False)
    blurred = make_sequence(photo, "blur", 10, SMALL, noise_sigma=0.0)

    def sharpness(image):
        return cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var()

    # frame 0: fastest pan of the "blur" trajectory; the blurred frame stays centred on the stated view
    assert sharpness(blurred.frames[0]) < 0.7 * sharpness(plain.frames[0])
    np.testing.assert_array_equal(blurred.photo_to_frame, plain.photo_to_frame)
    assert np.abs(blurred.frames[0].astype(float) - plain.frames[0]).mean() < 12

    exposure = make_sequence(photo, "exposure", 20, SMALL, noise_sigma=0.0)
    before, bright, dark = exposure.frames[5].mean(), exposure.frames[10].mean(), exposure.frames[19].mean()
    assert bright > 1.4 * before and dark < 0.7 * before  # x2 from 0.25 s (saturating), x0.5 from 0.5 s


def test_sequence_errors(photo):
    with pytest.raises(SequenceError, match="unknown sequence"):
        make_sequence(photo, "spin", 4, SMALL)
    with pytest.raises(SequenceError, match="at least 2 frames"):
        make_sequence(photo, "pan", 1, SMALL)


# ------------------------------------------------------------------------------------------- metrics


def test_correct_links_under_the_true_homography():
    h = np.array([[1.0, 0.0, 5.0], [0.0, 1.0, -2.0], [0.0, 0.0, 1.0]])
    previous = np.array([[10.0, 10.0], [20.0, 30.0], [0.0, 0.0], [7.0, 7.0]])
    current = np.array([[15.0, 8.0], [26.9, 28.0], [5.0, 1.9], [7.0, 7.0]])  # 0, 1.9, 3.9 and 5.4 px off
    np.testing.assert_array_equal(correct_links(previous, current, h), [True, True, False, False])
    assert correct_links(np.zeros((0, 2)), np.zeros((0, 2)), h).shape == (0,)


def test_track_runs_are_cut_at_wrong_links_and_at_track_ends():
    runs = TrackRuns()
    runs.add_frame(np.array([1, 2, 3]), np.array([True, True, False]))  # frame 1
    runs.add_frame(np.array([1, 2, 3]), np.array([True, False, True]))  # frame 2: 2 breaks (run of 2 frames)
    runs.add_frame(np.array([1, 3]), np.array([True, True]))  # frame 3: 2 not carried any more
    runs.add_frame(np.array([3]), np.array([True]))  # frame 4: track 1 ended (4 frames: 3 correct links)
    assert sorted(runs.close()) == [2, 4, 4]  # track 2: 2 frames; track 1: 4 frames; track 3: frames 1..4


def test_real_rate_schedule_takes_the_newest_frame_when_done():
    # 10 fps (100 ms period), 250 ms per frame: done at 0.25 s -> frame 2 (0.2 s); done at 0.5 s -> frame 5
    # (arrived at 0.5 s); done at 0.75 s -> 7; done at 1.0 s -> the last frame, 9.
    assert real_rate_schedule(10, 10.0, lambda index: 250.0) == [0, 2, 5, 7, 9]
    # faster than the camera: every frame, waiting for each arrival
    assert real_rate_schedule(5, 10.0, lambda index: 30.0) == [0, 1, 2, 3, 4]
    # exactly one period: the next frame has just arrived
    assert real_rate_schedule(4, 10.0, lambda index: 100.0) == [0, 1, 2, 3]
    # uneven: slow frame 1 (350 ms from 0.1 s -> 0.45 s: frames 2, 3 replaced by 4)
    times = {0: 50.0, 1: 350.0, 4: 50.0, 5: 50.0}
    assert real_rate_schedule(6, 10.0, lambda index: times[index]) == [0, 1, 4, 5]


def test_summary_on_hand_made_frames():
    records = [
        FrameRecord("pan/a", 0, 0, 0, 10.0, False),
        FrameRecord("pan/a", 1, 100, 60, 20.0, True),
        FrameRecord("pan/a", 3, 40, 20, 30.0, True),
    ]
    summary = summarize(records, [2, 3, 5], frames_total=4)
    assert summary["correct_matches_per_frame"] == pytest.approx(40.0)
    assert summary["precision"] == pytest.approx(80 / 140)
    assert summary["median_track_length"] == 3
    assert summary["frames_with_50_correct"] == pytest.approx(0.5)
    assert summary["ms_per_frame"] == pytest.approx(20.0)
    assert summary["processed_share"] == pytest.approx(0.75)


# ---------------------------------------------------------------------------------------- front-ends


def test_match_binary_is_a_mutual_nearest_neighbour_in_hamming_distance():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (5, 32), dtype=np.uint8)
    b = a[[3, 0, 4]].copy()
    b[0, 0] ^= 1  # still nearest to a[3]
    index_a, index_b = match_binary(a, b)
    np.testing.assert_array_equal(index_a, [0, 3, 4])
    np.testing.assert_array_equal(index_b, [1, 0, 2])
    assert match_binary(a[:0], b)[0].shape == (0,)


@pytest.mark.parametrize("method", ["kp2d", "klt", "orb", "sift"])
def test_front_end_tracks_a_pan_with_correct_matches(pan_sequence, method):
    front_end = build_front_end(method, MatchingSettings())
    result = RunResult()
    processed = run_sequence(front_end, pan_sequence, "every_frame", result)
    assert processed == list(range(len(pan_sequence)))
    summary = summarize(result.frames, result.track_lengths, len(pan_sequence))
    assert summary["correct_matches_per_frame"] >= 30, summary
    assert summary["precision"] >= 0.7, summary  # no geometric check (the node default): kp2d 0.8 here
    assert summary["median_track_length"] >= 2, summary
    # carried ids: a track seen in every frame has length = frames
    front_end.reset()
    for frame in pan_sequence.frames:
        last = front_end(frame)
    assert last.tracks.lengths.max() == len(pan_sequence)
    assert len(np.unique(last.tracks.ids)) == len(last.points)


def test_klt_is_configured_as_vins(pan_sequence):
    klt = KltFrontEnd()
    first = klt(pan_sequence.frames[0])
    assert 0 < len(first.points) <= 150
    distances = np.linalg.norm(first.points[:, None] - first.points[None], axis=2) + 1e9 * np.eye(len(first.points))
    assert distances.min() >= 30 - 1e-3  # goodFeaturesToTrack minDistance
    second = klt(pan_sequence.frames[1])
    assert len(second.points) <= 150 and len(second.current_index) > 0.5 * len(first.points)


def test_guided_matching_only_pairs_allowed_candidates():
    from kp2d_model.matching import MatchingError, match_descriptors

    desc = np.eye(4, dtype=np.float32)
    allowed = np.ones((4, 4), bool)
    allowed[1, 1] = False  # a's 1 may not take its identical twin: its next best is at distance sqrt(2)
    allowed[3, :] = False  # a's 3 has no candidate at all
    matches = match_descriptors(desc, desc, mutual=False, allowed=allowed)
    np.testing.assert_array_equal(matches.index_a, [0, 1, 2])
    np.testing.assert_array_equal(matches.index_b[[0, 2]], [0, 2])
    assert matches.index_b[1] != 1 and matches.distance[1] == pytest.approx(np.sqrt(2))
    mutual = match_descriptors(desc, desc, mutual=True, allowed=allowed)
    np.testing.assert_array_equal(mutual.index_a, [0, 2])  # b's 1 prefers nobody allowed; b's 3 has only a's 3
    with pytest.raises(MatchingError, match="allowed"):
        match_descriptors(desc, desc, allowed=np.ones((3, 4), bool))


def test_prediction_from_the_last_motion_keeps_the_tracks(pan_sequence):
    plain, guided = RunResult(), RunResult()
    run_sequence(build_front_end("sift"), pan_sequence, "every_frame", plain)
    front_end = build_front_end("sift", MatchingSettings(prediction_radius=20.0))
    run_sequence(front_end, pan_sequence, "every_frame", guided)
    assert front_end._last_motion is not None  # predictions were used from the third frame on
    plain_summary = summarize(plain.frames, plain.track_lengths, len(pan_sequence))
    guided_summary = summarize(guided.frames, guided.track_lengths, len(pan_sequence))
    assert guided_summary["precision"] >= plain_summary["precision"] - 0.01
    assert guided_summary["correct_matches_per_frame"] >= 0.9 * plain_summary["correct_matches_per_frame"]


def test_kp2d_precision_option_is_checked():
    with pytest.raises(FrontEndError, match="precision"):
        build_front_end("kp2d", precision="fp7")


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_writes_the_json_summary(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(SKIMAGE_DATA_DIR / "astronaut.png", photos / "astronaut.png")
    out = tmp_path / "bench.json"
    status = main(
        ["--photos", str(photos), "--frames", "4", "--sequence", "pan", "--sequence", "blur", "--resolution",
         "160x120", "--method", "klt", "--method", "orb", "--json", str(out), "--plots", str(tmp_path / "plots"),
         "--quiet"]
    )  # fmt: skip
    assert status == 0
    document = json.loads(out.read_text())
    runs = {(run["method"], run["rate"]): run for run in document["runs"]}
    assert set(runs) == {(m, r) for m in ("klt", "orb") for r in ("every_frame", "real_rate")}
    for run in runs.values():
        assert set(run["summary"]) >= {
            "correct_matches_per_frame", "precision", "median_track_length", "frames_with_50_correct", "ms_per_frame"
        }  # fmt: skip
        assert set(run["sequences"]) == {"pan", "blur"}
    assert "| klt | every frame |" in capsys.readouterr().out
    assert (tmp_path / "plots" / "correct_per_frame_every_frame.png").is_file()
    assert (tmp_path / "plots" / "tracks_klt.png").is_file()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--photos", "/nonexistent/photos"], "does not exist"),
        (["--method", "kp2d", "--precision", "fp7"], "precision"),
        (["--ratio", "1.5", "--method", "orb"], "--ratio"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(arguments, message, capsys):
    assert main(arguments) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error and error.startswith("kp2d-track-bench: error:")


def test_cli_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--frames", "1"])
    assert exit_info.value.code == 2
    assert "at least 2 frames" in capsys.readouterr().err

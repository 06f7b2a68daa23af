"""IMU-aided matching: gyro integration, infinite-homography prediction, candidate masks (exact synthetic cases)."""

from __future__ import annotations

import numpy as np
import pytest

from kp2d_model.camera import Intrinsics, normalized_coordinates
from kp2d_model.matching import match_descriptors
from kp2d_model.motion_prediction import (
    GyroBuffer,
    GyroCoverageError,
    MotionPredictionError,
    allowed_near_prediction,
    camera_rotation,
    integrate_gyro,
    predict_points,
    project_normalized,
    rotation_from_quaternion,
    rotation_from_vector,
)

K = np.array([[500.0, 0.0, 319.5], [0.0, 505.0, 239.5], [0.0, 0.0, 1.0]])


def Camera(k: np.ndarray, d: np.ndarray, model: str) -> Intrinsics:  # noqa: N802
    return Intrinsics(k, d, model, (640, 480))


PINHOLE = Camera(K, np.zeros(0), "none")


def grid(count: int = 7) -> np.ndarray:
    u, v = np.meshgrid(np.linspace(40, 600, count), np.linspace(30, 450, count))
    return np.stack([u.ravel(), v.ravel()], axis=1)


def test_constant_rate_integrates_to_the_exact_rotation_whatever_the_sample_times():
    rate = np.array([0.3, -1.2, 2.0])  # rad/s
    stamps = np.arange(-7, 60) * 2_500_000 + 1_234_567  # 400 Hz, not aligned with the frame stamps
    start, end = 10_000_000, 43_333_333
    r = integrate_gyro(stamps, np.tile(rate, (len(stamps), 1)), start, end)
    np.testing.assert_allclose(r, rotation_from_vector(-rate * (end - start) * 1e-9), atol=1e-12)


def test_rate_ramp_about_one_axis_gives_the_integral_of_the_rate():
    stamps = np.arange(0, 41) * 1_000_000  # 1 kHz
    rates = np.zeros((41, 3))
    rates[:, 2] = 1.0 + 50.0 * stamps * 1e-9  # linear in time: the interpolation is exact
    start, end = 2_500_000, 37_250_000
    t0, t1 = start * 1e-9, end * 1e-9
    angle = (t1 - t0) + 25.0 * (t1**2 - t0**2)
    expected = rotation_from_vector([0, 0, -angle])
    np.testing.assert_allclose(integrate_gyro(stamps, rates, start, end), expected, atol=1e-12)


def test_integrated_rotation_maps_previous_rays_to_current_rays():
    """A camera turning at w (body axes): a fixed world direction seen at t0 is seen at R @ ray at t1."""
    rate = np.array([0.4, 1.5, -0.7])
    t0, t1 = 0.1, 0.2
    orientation = [rotation_from_vector(rate * t) for t in (t0, t1)]  # camera -> world
    world = np.array([0.2, -0.1, 1.0])
    ray0, ray1 = orientation[0].T @ world, orientation[1].T @ world
    stamps = np.arange(0, 31) * 10_000_000
    r = integrate_gyro(stamps, np.tile(rate, (31, 1)), int(t0 * 1e9), int(t1 * 1e9))
    np.testing.assert_allclose(r @ ray0, ray1, atol=1e-12)


def test_camera_rotation_uses_the_imu_to_camera_rotation():
    camera_from_imu = rotation_from_quaternion([0.5, -0.5, 0.5, -0.5])  # an IMU x-forward/z-up body frame
    imu_rate = np.array([0.0, 0.0, 1.0])  # yaw about the IMU's z axis
    camera_rate = camera_from_imu @ imu_rate
    stamps = np.arange(0, 11) * 10_000_000
    imu = integrate_gyro(stamps, np.tile(imu_rate, (11, 1)), 0, 100_000_000)
    camera = integrate_gyro(stamps, np.tile(camera_rate, (11, 1)), 0, 100_000_000)
    np.testing.assert_allclose(camera_rotation(imu, camera_from_imu), camera, atol=1e-12)


def test_quaternion_matches_the_rotation_vector():
    axis, angle = np.array([1.0, 2.0, -2.0]) / 3.0, 0.7
    quaternion = [*(np.sin(angle / 2) * axis), np.cos(angle / 2)]
    np.testing.assert_allclose(rotation_from_quaternion(quaternion), rotation_from_vector(angle * axis), atol=1e-12)
    with pytest.raises(MotionPredictionError, match="zero"):
        rotation_from_quaternion([0, 0, 0, 0])


@pytest.mark.parametrize(
    ("stamps", "rates", "start", "end", "error", "message"),
    [
        (np.arange(5, 20) * 10_000_000, None, 0, 100_000_000, GyroCoverageError, "does not cover"),
        (np.arange(0, 8) * 10_000_000, None, 0, 100_000_000, GyroCoverageError, "does not cover"),
        (np.array([0, 10, 300, 310]) * 1_000_000, None, 20_000_000, 100_000_000, GyroCoverageError, "gap of 290.0 ms"),
        (np.zeros(0, np.int64), None, 0, 1, GyroCoverageError, "no samples"),
        (np.arange(0, 5) * 10_000_000, np.full((5, 3), np.nan), 0, 10, MotionPredictionError, "NaN"),
        (np.array([0, 20, 10]), None, 0, 10, MotionPredictionError, "increasing"),
        (np.arange(0, 5), None, 4, 1, MotionPredictionError, "before the start"),
    ],
)
def test_uncovered_or_bad_gyro_is_a_clear_error(stamps, rates, start, end, error, message):
    rates = np.zeros((len(stamps), 3)) if rates is None else rates
    with pytest.raises(error, match=message):
        integrate_gyro(stamps, rates, start, end)


def test_pure_rotation_prediction_is_the_infinite_homography():
    rotation = rotation_from_vector([0.05, -0.12, 0.3])
    previous = grid()
    normalized = (previous - K[:2, 2]) / K[[0, 1], [0, 1]]
    homography = K @ rotation @ np.linalg.inv(K)
    mapped = np.concatenate([previous, np.ones((len(previous), 1))], axis=1) @ homography.T
    np.testing.assert_allclose(predict_points(normalized, rotation, PINHOLE), mapped[:, :2] / mapped[:, 2:], atol=1e-9)


@pytest.mark.parametrize(
    "camera",
    [
        Camera(K, np.array([-0.28, 0.07, 1e-3, -5e-4, 0.0]), "plumb_bob"),
        Camera(K, np.array([0.1, -0.05, 0.01, -0.002]), "equidistant"),
    ],
)
def test_pure_rotation_prediction_through_lens_distortion(camera):
    """Distorted pixels of world directions seen before and after a rotation: predicted from the undistorted
    previous points, within the float32 rounding of the undistorted coordinates."""
    rotation = rotation_from_vector([0.02, 0.08, -0.15])
    rays = np.concatenate([grid() - K[:2, 2], np.full((49, 1), 400.0)], axis=1) / 400.0  # directions in front
    previous_normalized = rays[:, :2] / rays[:, 2:]
    current = rays @ rotation.T
    expected = project_normalized(current[:, :2] / current[:, 2:], camera)
    previous_pixels = project_normalized(previous_normalized, camera).reshape(-1, 1, 2)
    undistorted = normalized_coordinates(previous_pixels.reshape(-1, 2), camera)
    predicted = predict_points(undistorted, rotation, camera)
    np.testing.assert_allclose(predicted, expected, atol=1e-3)  # float32 normalised coordinates: ~1e-4 px


def test_points_rotated_behind_the_camera_have_no_prediction_and_no_candidates():
    rotation = rotation_from_vector([0.0, np.pi / 2 + 0.3, 0.0])  # a quarter turn and more about y
    normalized = np.array([[0.0, 0.0], [-0.9, 0.0], [0.8, 0.1]])
    predicted = predict_points(normalized, rotation, PINHOLE)
    assert np.isnan(predicted[0]).all() and np.isnan(predicted[2]).all() and np.isfinite(predicted[1]).all()
    allowed = allowed_near_prediction(predicted, grid(), 1e6)
    assert allowed.shape == (3, 49) and not allowed[0].any() and not allowed[2].any() and allowed[1].all()


def test_allowed_mask_is_the_radius_around_each_prediction():
    predicted = np.array([[100.0, 100.0], [300.0, 200.0]])
    points = np.array([[103.0, 104.0], [105.0, 104.0], [300.0, 210.0], [500.0, 20.0]])
    np.testing.assert_array_equal(
        allowed_near_prediction(predicted, points, 5.0), [[True, False, False, False], [False, False, False, False]]
    )
    assert allowed_near_prediction(predicted, points, 10.0)[1, 2]
    assert allowed_near_prediction(predicted, np.zeros((0, 2)), 5.0).shape == (2, 0)
    with pytest.raises(MotionPredictionError, match="radius"):
        allowed_near_prediction(predicted, points, 0.0)


def test_prediction_mask_resolves_a_repeated_texture_that_plain_matching_confuses():
    """Two copies of each descriptor 200 px apart (repeated texture): plain mutual matching cannot tell the copies
    apart; restricted to 8 px around the rotation's prediction every previous point finds its own copy."""
    rng = np.random.default_rng(3)
    previous = grid(5)
    normalized = (previous - K[:2, 2]) / K[[0, 1], [0, 1]]
    rotation = rotation_from_vector([0.01, -0.04, 0.05])
    truth = predict_points(normalized, rotation, PINHOLE) + rng.normal(scale=1.0, size=(25, 2))
    decoy = truth + [200.0, 0.0]
    descriptors = rng.normal(size=(25, 32)).astype(np.float32)
    current_descriptors = np.concatenate([descriptors + rng.normal(scale=0.2, size=(25, 32)), descriptors])
    current_descriptors = current_descriptors.astype(np.float32)
    current = np.concatenate([truth, decoy])
    plain = match_descriptors(descriptors, current_descriptors)
    guided = match_descriptors(
        descriptors,
        current_descriptors,
        allowed=allowed_near_prediction(predict_points(normalized, rotation, PINHOLE), current, 8.0),
    )
    assert (plain.index_b >= 25).sum() >= 20  # the cleaner decoys win
    np.testing.assert_array_equal(guided.index_a, np.arange(25))
    np.testing.assert_array_equal(guided.index_b, np.arange(25))


def test_gyro_buffer_integrates_what_it_holds_and_waits_for_the_end_sample():
    import threading

    buffer = GyroBuffer(max_samples=100)
    rate = np.array([0.0, 0.5, 0.0])
    for stamp in range(0, 50_000_001, 5_000_000):
        assert buffer.add(stamp, rate)
    assert not buffer.add(20_000_000, rate)  # out of order: refused
    assert not buffer.add(60_000_000, [np.nan, 0, 0])
    np.testing.assert_allclose(buffer.rotation(0, 50_000_000), rotation_from_vector(-rate * 0.05), atol=1e-12)
    with pytest.raises(GyroCoverageError, match="does not cover"):
        buffer.rotation(0, 70_000_000, timeout_s=0.05)
    late = threading.Timer(0.05, lambda: buffer.add(75_000_000, rate))
    late.start()
    np.testing.assert_allclose(buffer.rotation(0, 70_000_000, timeout_s=5.0), rotation_from_vector(-rate * 0.07))
    late.join()
    assert buffer.add(0, rate) is False  # 75 ms back: out of order
    assert buffer.add(75_000_000 - 2_000_000_000, rate) and buffer.latest_ns == 75_000_000 - 2_000_000_000  # restart

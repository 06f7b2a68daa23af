"""Rectified stereo matching (kp2d_model.stereo): row/disparity candidates, disparity, depth, sub-pixel refinement."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from kp2d_model import KeypointDetector
from kp2d_model.stereo import (
    StereoConfig,
    StereoError,
    depth_from_disparity,
    epipolar_candidates,
    match_stereo,
    refine_disparity,
)


def unit(rng: np.random.Generator, count: int, dim: int = 16) -> np.ndarray:
    desc = rng.normal(size=(count, dim)).astype(np.float32)
    return desc / np.linalg.norm(desc, axis=1, keepdims=True)


def test_candidates_are_same_row_within_tolerance_and_disparity_range():
    left = np.array([[100.0, 50.0], [100.0, 50.0], [30.0, 10.0]])
    right = np.array([[90.0, 50.8], [90.0, 51.2], [110.0, 50.0], [40.0, 10.0], [25.0, 10.0], [20.0, 10.0]])
    allowed = epipolar_candidates(left, right, StereoConfig(row_tolerance=1.0, min_disparity=0.0, max_disparity=8.0))
    expected = np.zeros((3, 6), bool)
    expected[2, 4] = True  # disparity 5 on the row; (90, 50.8) and (20, 10) have disparity 10 > 8
    assert (allowed == expected).all()
    wide = epipolar_candidates(left, right, StereoConfig(row_tolerance=1.0, max_disparity=None))
    assert wide[0].tolist() == [True, False, False, False, False, False]  # 51.2 is off the row, 110 is negative
    assert wide[2].tolist() == [False, False, False, False, True, True]


def test_match_stereo_takes_the_nearest_descriptor_on_the_row_and_gives_disparity_and_depth():
    rng = np.random.default_rng(3)
    left_desc = unit(rng, 3)
    left = np.array([[200.0, 40.0], [300.5, 80.0], [50.0, 120.0]], np.float32)
    # right 0: a perfect descriptor copy of left 0 but 5 rows away (must not match); right 1: a noisy copy on the
    # row at disparity 12.25; right 2: left 1 at disparity 30.5; right 3: left 2 with a negative disparity.
    noisy = left_desc[0] + 0.3 * unit(rng, 1)[0]
    right_desc = np.stack([left_desc[0], noisy / np.linalg.norm(noisy), left_desc[1], left_desc[2]])
    right = np.array([[190.0, 45.0], [187.75, 40.2], [270.0, 80.0], [60.0, 120.0]], np.float32)
    matches = match_stereo(left, left_desc, right, right_desc, StereoConfig(row_tolerance=0.5), fx=500.0, baseline=0.1)
    assert matches.left_index.tolist() == [0, 1] and matches.right_index.tolist() == [1, 2]
    np.testing.assert_allclose(matches.disparity, [12.25, 30.5])
    np.testing.assert_allclose(matches.depth, [500 * 0.1 / 12.25, 500 * 0.1 / 30.5], rtol=1e-6)
    assert matches.disparity.dtype == np.float32 and matches.distance.dtype == np.float32
    assert matches.refined is None and len(matches) == 2
    # Without depth inputs there is no depth; the same with torch descriptors.
    torch_matches = match_stereo(torch.from_numpy(left), torch.from_numpy(left_desc), torch.from_numpy(right),
                                 torch.from_numpy(right_desc), StereoConfig(row_tolerance=0.5))  # fmt: skip
    assert torch_matches.depth is None and torch_matches.right_index.tolist() == [1, 2]


def test_empty_sides_and_bad_inputs():
    right_desc = unit(np.random.default_rng(0), 3, 8)
    empty = match_stereo(np.zeros((0, 2)), np.zeros((0, 8), np.float32), np.ones((3, 2)), right_desc)
    assert len(empty) == 0 and empty.disparity.shape == (0,)
    with pytest.raises(StereoError, match="row_tolerance"):
        epipolar_candidates(np.zeros((1, 2)), np.zeros((1, 2)), StereoConfig(row_tolerance=-1))
    with pytest.raises(StereoError, match="max_disparity"):
        StereoConfig(min_disparity=10, max_disparity=5).check()
    with pytest.raises(StereoError, match=r"left_points: expected shape \(N, 2\)"):
        epipolar_candidates(np.zeros((3, 3)), np.zeros((1, 2)))
    with pytest.raises(StereoError, match="NaN"):
        epipolar_candidates(np.array([[np.nan, 1.0]]), np.zeros((1, 2)))
    with pytest.raises(StereoError, match="descriptors for"):
        match_stereo(np.zeros((2, 2)), np.zeros((3, 8), np.float32), np.zeros((1, 2)), np.zeros((1, 8), np.float32))
    with pytest.raises(StereoError, match="both fx and baseline"):
        match_stereo(np.zeros((1, 2)), np.ones((1, 8), np.float32), np.zeros((1, 2)), np.ones((1, 8), np.float32),
                     fx=500.0)  # fmt: skip


def test_depth_from_disparity():
    np.testing.assert_allclose(depth_from_disparity([10.0, 20.0, 0.0], fx=400.0, baseline=0.05), [2.0, 1.0, np.inf])
    with pytest.raises(StereoError, match="fx"):
        depth_from_disparity([1.0], fx=0.0, baseline=0.1)
    with pytest.raises(StereoError, match="baseline"):
        depth_from_disparity([1.0], fx=100.0, baseline=-0.1)
    with pytest.raises(StereoError, match=">= 0"):
        depth_from_disparity([-1.0], fx=100.0, baseline=0.1)


def shifted_pair(shift: float, size=(160, 120), seed=5) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random texture and the same texture moved left by ``shift`` pixels (bilinear), grey float32."""
    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (size[1], size[0] + 64)).astype(np.float32), (0, 0), 1.5)
    left = texture[:, 32 : 32 + size[0]].copy()
    move = np.array([[1, 0, -shift], [0, 1, 0]], np.float64)
    right = cv2.warpAffine(texture, move, (texture.shape[1], texture.shape[0]), flags=cv2.INTER_LINEAR)
    return left, right[:, 32 : 32 + size[0]].copy()


@pytest.mark.parametrize("shift", [7.0, 9.25, 12.6])
def test_refine_disparity_recovers_a_known_sub_pixel_shift(shift):
    left, right = shifted_pair(shift)
    rng = np.random.default_rng(1)
    points = np.stack([rng.uniform(30, 150, 40), rng.uniform(10, 110, 40)], 1)
    start = np.full(40, round(shift) + rng.choice([-1.0, 0.0, 1.0], 40))  # descriptor matches off by <= 1 px
    disparity, refined = refine_disparity(left, right, points, start, radius=3, search=2)
    assert refined.all()
    # A parabola through SSD costs is biased towards whole pixels by up to ~0.1 px ("pixel locking").
    np.testing.assert_allclose(disparity, shift, atol=0.15)
    assert abs(np.median(disparity) - shift) < 0.05
    # Patches that leave the image keep their disparity.
    edge, edge_refined = refine_disparity(left, right, np.array([[1.0, 60.0]]), np.array([3.0]))
    assert not edge_refined.any() and edge.tolist() == [3.0]
    with pytest.raises(StereoError, match="differ in size"):
        refine_disparity(left, right[:, :-1], points, start)


@pytest.fixture(scope="module")
def detector() -> KeypointDetector:
    return KeypointDetector(device="cpu", top_k=600)


@pytest.mark.parametrize("disparity", [16.0, 20.5])
def test_rendered_pair_disparities_match_the_known_shift(detector, disparity):
    """A photo on a fronto-parallel plane: the right view is the left moved by d = fx B / Z; KP2D keypoints matched
    along rows give d within 0.5 px (median and >= 90 %); with the images, refinement does it for almost all."""
    import skimage

    photo = skimage.io.imread(skimage.data.data_dir + "/astronaut.png")[:, :, :3]
    base = np.array([[1.2, 0, -50], [0, 1.2, -60], [0, 0, 1]], np.float64)
    move = np.array([[1, 0, -disparity], [0, 1, 0], [0, 0, 1]], np.float64)
    left = cv2.warpPerspective(photo, base, (320, 240), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    right = cv2.warpPerspective(photo, move @ base, (320, 240), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    found_left, found_right = detector(left, channel_order="rgb"), detector(right, channel_order="rgb")
    config = StereoConfig(row_tolerance=2.0, max_disparity=64.0)
    args = (found_left.keypoints, found_left.descriptors, found_right.keypoints, found_right.descriptors, config)
    plain = match_stereo(*args)
    assert len(plain) > 100
    assert abs(np.median(plain.disparity) - disparity) < 0.5
    grey = [cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) for image in (left, right)]
    refined = match_stereo(*args, fx=320.0, baseline=0.1, images=grey)
    error = np.abs(refined.disparity - disparity)
    assert np.median(error) < 0.5 and np.mean(error < 0.5) >= 0.9, (np.median(error), np.mean(error < 0.5))
    assert refined.refined.mean() > 0.9
    np.testing.assert_allclose(np.median(refined.depth), 320.0 * 0.1 / disparity, rtol=0.02)

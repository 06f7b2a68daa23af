"""The homography sampler keeps the original's ranges, and H maps image_aug coordinates onto image coordinates."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kp2d_model.homography import (
    homography_from_corners,
    sample_homography,
    sample_patch,
    warp_image,
    warp_points,
)

UNIT_CORNERS = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]], dtype=torch.float64)

sampler_settings = st.fixed_dictionaries(
    {
        "patch_ratio": st.floats(0.3, 0.8),
        "perspective_amplitude": st.floats(0.0, 0.1),
        "scaling_amplitude": st.floats(0.0, 0.1),
        "max_angle": st.floats(0.0, math.pi / 2),
    }
)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), options=sampler_settings, height=st.sampled_from([120, 240, 480]))
def test_patch_stays_inside_and_respects_the_ranges(seed, options, height):
    generator = torch.Generator().manual_seed(seed)
    patch = sample_patch(64, image_shape=(height, 320), generator=generator, **options)
    assert patch.corners.shape == (64, 4, 2)
    assert (patch.corners >= -1.0).all() and (patch.corners < 1.0).all()
    amplitude = options["scaling_amplitude"]
    assert (patch.scale >= 1.0 - amplitude - 1e-12).all() and (patch.scale <= 1.0 + amplitude + 1e-12).all()
    assert (patch.angle.abs() <= options["max_angle"] + 1e-12).all()
    homography = homography_from_corners(patch.corners)
    mapped = warp_points(UNIT_CORNERS.expand(64, 4, 2), homography)
    torch.testing.assert_close(mapped, patch.corners, rtol=0, atol=1e-9)


def test_default_sampler_covers_the_original_ranges():
    """Defaults as in the original: scale over [0.9, 1.1], angles over +-pi/4, translations both ways."""
    patch = sample_patch(4000, generator=torch.Generator().manual_seed(0))
    assert patch.scale.min() < 0.92 and patch.scale.max() > 1.08
    assert patch.scale.min() >= 0.9 and patch.scale.max() <= 1.1
    assert patch.angle.min() < -0.7 and patch.angle.max() > 0.7
    assert patch.angle.abs().max() <= math.pi / 4 + 1e-12
    centres = patch.corners.mean(dim=1)
    assert centres[:, 0].min() < -0.15 and centres[:, 0].max() > 0.15
    assert centres[:, 1].min() < -0.15 and centres[:, 1].max() > 0.15
    # Patch width (top edge) about 0.7 of the image, perturbed by perspective and scale.
    widths = (patch.corners[:, 2] - patch.corners[:, 0]).norm(dim=1) / 2
    assert 0.62 < widths.median() < 0.78 and widths.std() > 0.03


def test_rotations_that_leave_the_photo_are_drawn_only_without_rotation_fits():
    """At the original's zoom (patch 0.7) the fitting rule keeps most angles small; without it they are uniform."""
    options = {"patch_ratio": 0.7, "max_angle": math.radians(60)}
    fitting = sample_patch(4000, generator=torch.Generator().manual_seed(3), **options)
    free = sample_patch(4000, rotation_fits=False, generator=torch.Generator().manual_seed(3), **options)
    assert (fitting.corners >= -1.0).all() and (fitting.corners < 1.0).all()
    assert (free.corners.abs() >= 1.0).any(dim=2).any(dim=1).float().mean() > 0.5  # most patches leave the photo
    assert fitting.angle.abs().quantile(0.9) < math.radians(20)
    free_degrees = free.angle.abs().rad2deg()
    assert 50 < free_degrees.quantile(0.9) <= 60 + 1e-9 and 25 < free_degrees.median() < 35
    # Same draws up to the rotation: the translated, scaled patch before it is shared.
    torch.testing.assert_close(free.scale, fitting.scale)
    torch.testing.assert_close(free.translation, fitting.translation)


def test_without_perspective_scale_and_rotation_the_patch_is_a_translated_square():
    homography = sample_homography(
        32,
        perspective_amplitude=0.0,
        scaling_amplitude=0.0,
        max_angle=0.0,
        generator=torch.Generator().manual_seed(1),
    )
    assert homography.dtype == torch.float32 and homography.shape == (32, 3, 3)
    torch.testing.assert_close(homography[:, 0, 0], torch.full((32,), 0.7))
    torch.testing.assert_close(homography[:, 1, 1], torch.full((32,), 0.7))
    off_diagonal = homography[:, [0, 1, 2, 2], [1, 0, 0, 1]]
    torch.testing.assert_close(off_diagonal, torch.zeros(32, 4), rtol=0, atol=1e-6)
    assert (homography[:, :2, 2].abs() <= 0.3 + 1e-6).all() and homography[:, :2, 2].abs().max() > 0.1


def test_same_seed_same_homographies_and_different_seed_different():
    first = sample_homography(4, generator=torch.Generator().manual_seed(7))
    again = sample_homography(4, generator=torch.Generator().manual_seed(7))
    other = sample_homography(4, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, other)


def _blob(height: int, width: int, centre_x: float, centre_y: float, sigma: float = 1.5) -> torch.Tensor:
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    return torch.exp(-((xs - centre_x) ** 2 + (ys - centre_y) ** 2) / (2 * sigma**2))


def _weighted_peak(image: torch.Tensor, radius: int = 6) -> tuple[float, float]:
    """Intensity-weighted centroid (x, y) pixels of the window around the brightest pixel of ``image`` (H, W)."""
    row, col = divmod(int(image.argmax()), image.shape[1])
    window = image[row - radius : row + radius + 1, col - radius : col + radius + 1]
    ys, xs = torch.meshgrid(
        torch.arange(row - radius, row + radius + 1, dtype=torch.float32),
        torch.arange(col - radius, col + radius + 1, dtype=torch.float32),
        indexing="ij",
    )
    return float((window * xs).sum() / window.sum()), float((window * ys).sum() / window.sum())


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), u=st.floats(-0.8, 0.8), v=st.floats(-0.8, 0.8))
def test_homography_maps_a_dot_found_in_image_aug_onto_the_dot_in_image(seed, u, v):
    height, width = 120, 160
    homography = sample_homography(1, image_shape=(height, width), generator=torch.Generator().manual_seed(seed))
    # Put a dot in `image` where H sends the normalised point (u, v) of image_aug.
    target = warp_points(torch.tensor([[[u, v]]]), homography)[0, 0]
    dot_x, dot_y = float((target[0] + 1) * (width - 1) / 2), float((target[1] + 1) * (height - 1) / 2)
    image = _blob(height, width, dot_x, dot_y).expand(1, 3, height, width)

    image_aug = warp_image(image, homography)
    found_x, found_y = _weighted_peak(image_aug[0, 0])
    found = torch.tensor([[[found_x / ((width - 1) / 2) - 1, found_y / ((height - 1) / 2) - 1]]])
    mapped = warp_points(found, homography)[0, 0]
    mapped_x, mapped_y = float((mapped[0] + 1) * (width - 1) / 2), float((mapped[1] + 1) * (height - 1) / 2)
    assert math.hypot(mapped_x - dot_x, mapped_y - dot_y) < 0.3


def test_identity_homography_leaves_the_image_unchanged():
    image = torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(warp_image(image, torch.eye(3).expand(2, 3, 3)), image, rtol=0, atol=1e-5)


def test_sampler_and_warp_refuse_bad_arguments():
    with pytest.raises(ValueError, match="fits"):
        sample_homography(2, patch_ratio=0.95, perspective_amplitude=0.2)
    with pytest.raises(ValueError, match="batch_size"):
        sample_homography(0)
    with pytest.raises(ValueError, match="image_shape"):
        sample_homography(1, image_shape=(240,))
    with pytest.raises(ValueError, match=r"\(B, 3, 3\)"):
        warp_points(torch.zeros(1, 5, 2), torch.eye(3))
    with pytest.raises(ValueError, match="homography"):
        warp_image(torch.zeros(2, 3, 8, 8), torch.eye(3).expand(1, 3, 3))
    with pytest.raises(ValueError, match=r"\(B, 4, 2\)"):
        homography_from_corners(torch.zeros(2, 3, 2))

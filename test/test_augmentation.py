"""make_training_batch: the warp and the original's photometric steps, reproducible, extras off by default."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch

from kp2d_model.augmentation import AugmentationOptions, make_training_batch, photometric_augment_pair
from kp2d_model.homography import warp_image

NOTHING = AugmentationOptions(
    channel_shuffle_probability=0.0,
    grayscale_probability=0.0,
    noise_probability=0.0,
    blur_kernel_sizes=(0,),
    quantize_uint8=False,
)


def _photos(batch: int = 4, height: int = 64, width: int = 96, seed: int = 0) -> torch.Tensor:
    """Smooth random colour images in [0, 1] (B, 3, H, W)."""
    low = torch.rand(batch, 3, height // 8, width // 8, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_batch_has_the_pair_and_its_homography():
    images = _photos()
    batch = make_training_batch(images, AugmentationOptions(), _generator(0))
    assert set(batch) == {"image", "image_aug", "homography"}
    assert batch["image"].shape == batch["image_aug"].shape == images.shape
    assert batch["homography"].shape == (4, 3, 3) and batch["homography"].dtype == torch.float32
    for key in ("image", "image_aug"):
        assert batch[key].min() >= 0.0 and batch[key].max() <= 1.0


def test_without_photometric_steps_image_aug_is_the_warped_image():
    images = _photos()
    batch = make_training_batch(images, NOTHING, _generator(1))
    torch.testing.assert_close(batch["image"], images, rtol=0, atol=0)
    torch.testing.assert_close(batch["image_aug"], warp_image(images, batch["homography"]), rtol=0, atol=0)
    assert not torch.allclose(batch["image_aug"], images, atol=1e-2)


def test_same_seed_reproduces_the_batch_and_another_seed_does_not():
    images = _photos()
    options = AugmentationOptions(color_jitter=0.5)
    first = make_training_batch(images, options, _generator(5))
    again = make_training_batch(images, options, _generator(5))
    other = make_training_batch(images, options, _generator(6))
    for key in first:
        torch.testing.assert_close(first[key], again[key], rtol=0, atol=0)
    assert not torch.equal(first["image"], other["image"])


def test_extras_are_off_by_default():
    assert AugmentationOptions().color_jitter == 0.0
    images = _photos()
    default = make_training_batch(images, AugmentationOptions(), _generator(2))
    wide_ranges = AugmentationOptions(jitter_brightness=0.9, jitter_contrast=0.9, jitter_saturation=0.9, jitter_hue=0.4)
    with_ranges_only = make_training_batch(images, wide_ranges, _generator(2))
    for key in default:
        torch.testing.assert_close(default[key], with_ranges_only[key], rtol=0, atol=0)


def test_color_jitter_changes_colours_when_enabled():
    images = _photos(batch=8)
    plain = dataclasses.replace(NOTHING, color_jitter=0.0)
    jittered = dataclasses.replace(NOTHING, color_jitter=1.0)
    before = make_training_batch(images, plain, _generator(3))
    after = make_training_batch(images, jittered, _generator(3))
    torch.testing.assert_close(before["homography"], after["homography"])
    per_image_change = (after["image"] - before["image"]).abs().mean(dim=(1, 2, 3))
    assert (per_image_change > 0.01).all()


def test_channel_shuffle_is_shared_by_the_pair():
    batch_size = 32
    colours = torch.tensor([0.2, 0.5, 0.8])
    images = colours[None, :, None, None].expand(batch_size, 3, 32, 48).contiguous()
    options = dataclasses.replace(NOTHING, channel_shuffle_probability=1.0)
    batch = make_training_batch(images, options, _generator(4))
    image_order = batch["image"][:, :, 16, 24]
    aug_order = batch["image_aug"][:, :, 16, 24]
    torch.testing.assert_close(image_order, aug_order)
    orders = {tuple(row.tolist()) for row in image_order}
    assert len(orders) >= 4 and all(sorted(order) == pytest.approx(colours.tolist()) for order in orders)


def test_grey_is_shared_by_the_pair_and_uses_opencv_weights():
    images = _photos(batch=6)
    options = dataclasses.replace(NOTHING, grayscale_probability=1.0, quantize_uint8=True)
    image, image_aug = photometric_augment_pair(images, images.flip(0), options, _generator(5))
    for result in (image, image_aug):
        torch.testing.assert_close(result[:, 0], result[:, 1], rtol=0, atol=0)
        torch.testing.assert_close(result[:, 0], result[:, 2], rtol=0, atol=0)
    as_uint8 = (images[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)  # the original's truncating cast
    expected = cv2.cvtColor(as_uint8, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
    np.testing.assert_allclose(image[0, 0].numpy(), expected, rtol=0, atol=1.01 / 255)


def test_blur_matches_opencv_gaussian_blur():
    images = torch.rand(2, 3, 40, 56, generator=_generator(9))  # sharp, so a wrong kernel shows
    options = dataclasses.replace(NOTHING, blur_kernel_sizes=(5,), quantize_uint8=True)
    image, _ = photometric_augment_pair(images, images, options, _generator(6))
    as_uint8 = (images[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    expected = cv2.GaussianBlur(as_uint8, (5, 5), sigmaX=0).astype(np.float32) / 255
    np.testing.assert_allclose(image[0].permute(1, 2, 0).numpy(), expected, rtol=0, atol=1.01 / 255)


def test_noise_is_drawn_per_image_with_the_original_sigma():
    images = torch.full((2, 3, 64, 64), 0.5)
    options = dataclasses.replace(NOTHING, noise_probability=1.0)
    image, image_aug = photometric_augment_pair(images, images.clone(), options, _generator(7))
    noise = image - images
    assert noise.std().item() == pytest.approx(0.05, rel=0.05)
    assert not torch.allclose(image, image_aug)


def test_batch_of_one_and_bad_inputs():
    batch = make_training_batch(_photos(batch=1), AugmentationOptions(), _generator(8))
    assert batch["image"].shape[0] == 1 and batch["homography"].shape == (1, 3, 3)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        make_training_batch(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="float"):
        make_training_batch(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="noise_probability"):
        AugmentationOptions(noise_probability=1.5)
    with pytest.raises(ValueError, match="blur_kernel_sizes"):
        AugmentationOptions(blur_kernel_sizes=(2,))

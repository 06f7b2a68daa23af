"""Training pairs for KP2D: homography warp plus photometric augmentation, batched on the images' device.

:func:`make_training_batch` turns a batch of images into the loss's input ``{"image", "image_aug",
"homography"}`` the way the original KP2D ``ha_augment_sample`` does for one image:

1. ``homography`` from :func:`kp2d_model.homography.sample_homography`; ``image_aug = warp(image)``, so
   ``homography`` maps normalised coordinates of ``image_aug`` to those of ``image``.
2. Photometric steps, in the original's order, on both images of a pair:
   uint8 quantisation (the original went through PIL) -> channel shuffle (shared by the pair, p 0.5) ->
   Gaussian noise (each image, p 0.5, sigma 0.05 of full range, clipped) -> Gaussian blur (each image,
   OpenCV kernel size drawn from {none, 1, 3, 5}, reflect-101 border) -> to grey and back to 3 channels
   (shared by the pair, p 0.5; BT.601 weights on the shuffled channels).
3. Extras, OFF by default: a working colour jitter (``color_jitter`` = probability per image; the original
   configured one but applied a default, i.e. no-op, ``ColorJitter()``).

Not here: the original's dataset-level spatial augmentation (resize, random flips, RandomAffine) which runs
before the homography on each image; that belongs to the data pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import kornia
import torch

from kp2d_model.homography import sample_homography, warp_image

__all__ = ["AugmentationOptions", "make_training_batch", "photometric_augment_pair"]


@dataclass(frozen=True)
class AugmentationOptions:
    """Switches and ranges of the training augmentation; the defaults reproduce the original KP2D.

    Homography (see :mod:`kp2d_model.homography`): ``patch_ratio``, ``perspective_amplitude``,
    ``scaling_amplitude``, ``max_angle`` (radians), ``rotation_fits`` (False: any angle in range, not only those
    that keep the patch inside the photo; not in the original).
    Photometric (original): probabilities of a channel shuffle and of grey (shared by the pair), of noise
    (per image), the noise sigma (fraction of the full range), the blur kernel sizes drawn uniformly per image
    (0 = no blur; OpenCV's ``getGaussianKernel(k, 0)``), and ``quantize_uint8`` (round-trip through 8-bit
    levels where the original used uint8 images).
    Extra (off by default): ``color_jitter`` = probability per image of a torchvision-style colour jitter with
    factors drawn from [1 - b, 1 + b] (brightness), [1 - c, 1 + c] (contrast), [1 - s, 1 + s] (saturation) and
    a hue shift in [-h, h] turns, applied in that order; the ranges default to the original's configured
    jitter (0.5, 0.5, 0.2, 0.05).
    """

    patch_ratio: float = 0.7
    perspective_amplitude: float = 0.2
    scaling_amplitude: float = 0.1
    max_angle: float = math.pi / 4
    rotation_fits: bool = True

    channel_shuffle_probability: float = 0.5
    grayscale_probability: float = 0.5
    noise_probability: float = 0.5
    noise_sigma: float = 0.05
    blur_kernel_sizes: tuple[int, ...] = (0, 1, 3, 5)
    quantize_uint8: bool = True

    color_jitter: float = 0.0
    jitter_brightness: float = 0.5
    jitter_contrast: float = 0.5
    jitter_saturation: float = 0.2
    jitter_hue: float = 0.05

    def __post_init__(self) -> None:
        for name in ("channel_shuffle_probability", "grayscale_probability", "noise_probability", "color_jitter"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"AugmentationOptions.{name} is a probability in [0, 1], got {value}")
        for name in ("noise_sigma", "jitter_brightness", "jitter_contrast", "jitter_saturation"):
            if getattr(self, name) < 0.0:
                raise ValueError(f"AugmentationOptions.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.jitter_hue <= 0.5:
            raise ValueError(f"AugmentationOptions.jitter_hue must be in [0, 0.5] turns, got {self.jitter_hue}")
        sizes = tuple(self.blur_kernel_sizes)
        if not sizes or any(k < 0 or (k > 0 and k % 2 == 0) for k in sizes):
            raise ValueError(f"AugmentationOptions.blur_kernel_sizes must be 0 or odd sizes, got {sizes}")


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) draws made on the generator's device (reproducible), returned on ``device``."""
    draw_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=draw_device).to(device)


def _normal(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    draw_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_device).to(device)


def _to_uint8_levels(images: torch.Tensor, rounding: str) -> torch.Tensor:
    """Snap [0, 1] images to k/255 levels, by ``"floor"`` (a uint8 cast) or ``"round"`` (OpenCV's 8-bit output)."""
    scaled = images.clamp(0.0, 1.0) * 255.0
    scaled = scaled.floor() if rounding == "floor" else scaled.round()
    return scaled / 255.0


def _blur_kernels(kernel_sizes: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(K, S)`` 1-D Gaussian kernels (OpenCV's, sigma from the size), zero-padded and centred to one odd size S."""
    width = max(max(kernel_sizes), 1)
    kernels = torch.zeros(len(kernel_sizes), width, dtype=torch.float64)
    for row, size in enumerate(kernel_sizes):
        taps = cv2.getGaussianKernel(size, 0).ravel() if size > 0 else [1.0]
        start = (width - len(taps)) // 2
        kernels[row, start : start + len(taps)] = torch.as_tensor(taps, dtype=torch.float64)
    return kernels.to(dtype=dtype, device=device)


def _color_jitter(
    images: torch.Tensor, options: AugmentationOptions, generator: torch.Generator | None
) -> torch.Tensor:
    """torchvision-style brightness, contrast, saturation, hue jitter, each image with probability ``color_jitter``."""
    n, device = images.shape[0], images.device
    apply = _uniform((n,), generator, device) < options.color_jitter
    draws = _uniform((n, 4), generator, device) * 2.0 - 1.0  # in [-1, 1)
    identity = torch.tensor([1.0, 1.0, 1.0, 0.0], device=device)
    amplitude = torch.tensor(
        [options.jitter_brightness, options.jitter_contrast, options.jitter_saturation, options.jitter_hue],
        device=device,
    )
    factors = torch.where(apply[:, None], identity + draws * amplitude, identity).to(images.dtype)
    factors[:, :3] = factors[:, :3].clamp(min=0.0)
    images = kornia.enhance.adjust_brightness_accumulative(images, factors[:, 0])
    images = kornia.enhance.adjust_contrast_with_mean_subtraction(images, factors[:, 1])
    images = kornia.enhance.adjust_saturation_with_gray_subtraction(images, factors[:, 2])
    return kornia.enhance.adjust_hue(images, factors[:, 3] * (2.0 * math.pi))


def photometric_augment_pair(
    image: torch.Tensor,
    image_aug: torch.Tensor,
    options: AugmentationOptions,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the photometric pipeline (module docstring) to both images of each pair.

    image, image_aug: ``(B, 3, H, W)`` RGB in [0, 1]. Returns the augmented ``(image, image_aug)``, same shapes.
    The channel shuffle and grey conversion are shared by a pair; noise, blur and jitter are drawn per image.
    """
    batch, device = image.shape[0], image.device
    pair = torch.cat([image, image_aug], dim=0)  # (2B, 3, H, W): image first, then image_aug
    if options.quantize_uint8:
        pair = _to_uint8_levels(pair, "floor")

    # Channel shuffle shared by the pair (the shuffle may be the identity, as random.shuffle can be).
    shuffle = _uniform((batch,), generator, device) < options.channel_shuffle_probability
    order = torch.argsort(_uniform((batch, 3), generator, device), dim=1)
    order = torch.where(shuffle[:, None], order, torch.arange(3, device=device))
    order = order.repeat(2, 1)[:, :, None, None].expand_as(pair)
    pair = pair.gather(1, order)

    # Gaussian noise per image.
    noisy = _uniform((2 * batch,), generator, device) < options.noise_probability
    noise = _normal(tuple(pair.shape), generator, device) * options.noise_sigma
    pair = torch.where(noisy[:, None, None, None], (pair + noise).clamp(0.0, 1.0), pair)
    if options.quantize_uint8:
        pair = _to_uint8_levels(pair, "floor")

    # Gaussian blur per image, kernel size drawn from options.blur_kernel_sizes.
    kernels = _blur_kernels(tuple(options.blur_kernel_sizes), pair.dtype, device)
    pick = torch.randint(
        0,
        len(options.blur_kernel_sizes),
        (2 * batch,),
        generator=generator,
        device=generator.device if generator is not None else device,
    ).to(device)
    if kernels.shape[1] > 1:
        per_image = kernels[pick]
        pair = kornia.filters.filter2d_separable(pair, per_image, per_image, border_type="reflect")
        if options.quantize_uint8:
            pair = _to_uint8_levels(pair, "round")

    # Grey shared by the pair.
    grey = (_uniform((batch,), generator, device) < options.grayscale_probability).repeat(2)
    grey_image = kornia.color.rgb_to_grayscale(pair).expand_as(pair)
    if options.quantize_uint8:
        grey_image = _to_uint8_levels(grey_image, "round")
    pair = torch.where(grey[:, None, None, None], grey_image, pair)

    if options.color_jitter > 0.0:
        pair = _color_jitter(pair, options, generator)
        if options.quantize_uint8:
            pair = _to_uint8_levels(pair, "floor")
    return pair[:batch], pair[batch:]


def make_training_batch(
    images: torch.Tensor,
    options: AugmentationOptions | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Make a self-supervised training batch from ``images`` ``(B, 3, H, W)`` RGB floats in [0, 1].

    Returns ``{"image", "image_aug"}`` ``(B, 3, H, W)`` in [0, 1] and ``"homography"`` ``(B, 3, 3)`` float32
    mapping normalised coordinates of ``image_aug`` to ``image``; all on ``images.device``.
    Random draws come from ``generator`` (on its device; put it on ``images.device`` for speed).
    """
    options = options if options is not None else AugmentationOptions()
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype}")
    batch, _, height, width = images.shape
    homography = sample_homography(
        batch,
        patch_ratio=options.patch_ratio,
        perspective_amplitude=options.perspective_amplitude,
        scaling_amplitude=options.scaling_amplitude,
        max_angle=options.max_angle,
        rotation_fits=options.rotation_fits,
        image_shape=(height, width),
        generator=generator,
        device=images.device,
    )
    image_aug = warp_image(images, homography)
    image, image_aug = photometric_augment_pair(images, image_aug, options, generator)
    return {"image": image, "image_aug": image_aug, "homography": homography}

"""Image arrays -> normalised network input tensors, and channel-order helpers.

The network expects ``(B, 3, H, W)`` float tensors made from [0, 1] images as ``(x - 0.5) * 0.225``
(a multiplication, as in the original KP2D code; the released weights depend on it).
The original evaluation reads images with OpenCV, so the network saw **BGR**; BGR is our default.
``stretch_contrast`` is an optional step before all that (not in the original; the node's default).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

__all__ = [
    "CONTRASTS",
    "IMAGE_FILE_SUFFIXES",
    "ImageFormatError",
    "check_contrast",
    "image_files_in",
    "image_to_tensor",
    "normalize_image",
    "stretch_contrast",
    "to_bgr",
]

# The photo files that every folder reader of the project takes (training data, calibration, benchmark photos,
# the camera simulator), by lower-case suffix; all of them are formats OpenCV and Pillow both read.
IMAGE_FILE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pnm", ".tif", ".tiff", ".webp")
CHANNEL_ORDERS = ("bgr", "rgb")
CONTRASTS = ("none", "stretch")  # the detector's ``contrast`` settings
STRETCH_PERCENT = 1.0  # stretch_contrast's default tails: the darkest and the brightest 1 % of values


def image_files_in(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (by ``IMAGE_FILE_SUFFIXES``; not recursive), sorted by path."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_FILE_SUFFIXES)


class ImageFormatError(ValueError):
    """An image array that the detector cannot interpret (dtype, shape, channel count, order)."""


def normalize_image(images: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` float images in [0, 1] -> network input ``(x - 0.5) * 0.225`` (same shape)."""
    if not images.is_floating_point():
        raise ImageFormatError(f"normalize_image expects a float tensor in [0, 1], got dtype {images.dtype}")
    return (images - 0.5) * 0.225


def to_bgr(image: np.ndarray, channel_order: str = "bgr", name: str = "image") -> np.ndarray:
    """Return an ``H x W x 3`` uint8 BGR view/copy of ``image``.

    Accepts ``H x W`` (grey), ``H x W x 1``, ``H x W x 3`` (``channel_order`` "bgr" or "rgb") and
    ``H x W x 4`` (BGRA / RGBA; alpha dropped). Raises :class:`ImageFormatError` naming ``name`` otherwise.
    """
    if channel_order not in CHANNEL_ORDERS:
        raise ImageFormatError(f"channel_order must be one of {CHANNEL_ORDERS}, got {channel_order!r}")
    if not isinstance(image, np.ndarray):
        raise ImageFormatError(f"{name}: expected a NumPy uint8 array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ImageFormatError(f"{name}: expected dtype uint8 (0..255), got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ImageFormatError(f"{name}: expected shape H x W (grey), H x W x 3 or H x W x 4, got {tuple(image.shape)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageFormatError(f"{name}: empty image of shape {tuple(image.shape)}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    bgr = image[:, :, :3]
    if channel_order == "rgb":
        bgr = bgr[:, :, ::-1]
    return np.ascontiguousarray(bgr)


def check_contrast(contrast: str, name: str = "contrast") -> str:
    """``contrast`` if it is one of :data:`CONTRASTS`, else a ValueError naming ``name`` and the choices."""
    if contrast not in CONTRASTS:
        raise ValueError(f"{name} must be one of {', '.join(CONTRASTS)}, got {contrast!r}")
    return contrast


def _stretch_table(counts: np.ndarray, percent: float) -> np.ndarray | None:
    """The 256-entry uint8 map for one channel's value histogram, or None where it would change nothing."""
    cumulative = np.cumsum(counts)
    low = int(np.searchsorted(cumulative, cumulative[-1] * percent / 100.0, side="right"))
    high = int(np.searchsorted(cumulative, cumulative[-1] * (100.0 - percent) / 100.0, side="left"))
    if high <= low or (low == 0 and high == 255):
        return None
    return np.clip(np.rint((np.arange(256) - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)


def stretch_contrast(image: np.ndarray, percent: float = STRETCH_PERCENT) -> np.ndarray:
    """A uint8 grey ``(H, W)`` or colour ``(H, W, 3)`` image with each channel linearly stretched to 0..255.

    Per channel, the value below which ``percent`` % of the pixels lie becomes 0, the one below which
    ``100 - percent`` % lie becomes 255, values beyond are clipped (auto-levels). Per channel, so that a colour
    cast neither hides a low contrast (a red retina photo, sodium light: one channel spans the range, the
    others are dim) nor saturates the dominant channel. A channel already spanning 0..255, or flat, is left
    as it is (the map never compresses). Why: KeyPointNet's scores and descriptors follow absolute contrast,
    so a dim, low-contrast or badly exposed frame (auto-exposure steps, dusk, haze) gives fewer repeatable
    keypoints; stretched, it looks like the photos the network was trained on, which were colour-jittered
    (docs/track_bench.md, "Contrast stretch"). Noise is stretched too: a nearly flat frame (lens cap) becomes
    stretched noise."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ImageFormatError(f"stretch_contrast expects a uint8 image, got {getattr(image, 'dtype', type(image))}")
    if image.ndim != 2 and (image.ndim != 3 or image.shape[2] != 3):
        raise ImageFormatError(f"stretch_contrast expects H x W (grey) or H x W x 3 (colour), got {tuple(image.shape)}")
    if not 0 <= percent < 50:
        raise ValueError(f"percent must be in [0, 50), got {percent}")
    if image.size == 0:
        return image
    channels = 1 if image.ndim == 2 else 3
    identity = np.arange(256, dtype=np.uint8)
    histograms = [cv2.calcHist([image], [channel], None, [256], [0, 256]).ravel() for channel in range(channels)]
    tables = [_stretch_table(counts, percent) for counts in histograms]
    if all(table is None for table in tables):
        return image
    lut = np.stack([identity if table is None else table for table in tables], axis=-1).reshape(256, 1, channels)
    return cv2.LUT(image, lut)


def image_to_tensor(image_bgr: np.ndarray) -> torch.Tensor:
    """``H x W x 3`` uint8 BGR -> ``(1, 3, H, W)`` float32 normalised network input (channels stay BGR)."""
    tensor = torch.from_numpy(np.ascontiguousarray(image_bgr)).permute(2, 0, 1).unsqueeze(0).float() / 255.0
    return normalize_image(tensor)

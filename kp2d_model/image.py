"""Image arrays -> normalised network input tensors, and channel-order helpers.

The network expects ``(B, 3, H, W)`` float tensors made from [0, 1] images as ``(x - 0.5) * 0.225``
(a multiplication, as in the original KP2D code; the released weights depend on it).
The original evaluation reads images with OpenCV, so the network saw **BGR**; BGR is our default.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["ImageFormatError", "normalize_image", "to_bgr", "image_to_tensor"]

CHANNEL_ORDERS = ("bgr", "rgb")


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


def image_to_tensor(image_bgr: np.ndarray) -> torch.Tensor:
    """``H x W x 3`` uint8 BGR -> ``(1, 3, H, W)`` float32 normalised network input (channels stay BGR)."""
    tensor = torch.from_numpy(np.ascontiguousarray(image_bgr)).permute(2, 0, 1).unsqueeze(0).float() / 255.0
    return normalize_image(tensor)

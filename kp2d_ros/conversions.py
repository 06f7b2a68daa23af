"""sensor_msgs Image / CompressedImage -> NumPy image array for the detector, with input validation.

Every check that can fail on bad input raises :class:`ImageInputError` with a specific reason, so the
node can warn and go on with the next frame. The pixel conversion itself uses ``cv_bridge`` when it is
importable (a ROS 2 installation), else ``rosbags-image`` (pure Python, PyPI); rows padded beyond
``width * bytes_per_pixel`` (``step`` larger than needed) are cropped here first, as rosbags ignores step, and
big-endian frames (``is_bigendian``) are converted here too (cv_bridge fails on them with NumPy 2).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image as PILImage

try:  # a ROS 2 installation's cv_bridge (not on PyPI)
    from cv_bridge import CvBridge

    _BRIDGE: Any = CvBridge()
    BACKEND = "cv_bridge"
except ImportError:  # the PyPI route
    from rosbags.image import image_to_cvimage

    _BRIDGE = None
    BACKEND = "rosbags-image"

__all__ = [
    "BACKEND",
    "ENCODINGS",
    "ConvertedImage",
    "ImageInputError",
    "compressed_image_size",
    "compressed_to_array",
    "image_to_array",
    "message_to_array",
]

# (W, H) of an image -> pixels the consumer will process (e.g. KeypointDetector.network_pixels: after scaling
# and padding to the network's stride); the default counts the image's own pixels.
PixelCount = Callable[[int, int], int]

# Compressed formats whose header Pillow reads for the size check (all decoded by OpenCV too); others are refused.
HEADER_FORMATS = ("JPEG", "PNG", "TIFF", "WEBP", "BMP", "PPM", "JPEG2000")


class ImageInputError(ValueError):
    """An input image that cannot be processed; ``kind`` is a short key for throttled warnings."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class _Encoding:
    channels: int
    dtype: type
    channel_order: str  # what the detector is told: "bgr" or "rgb" ("bgr" for grey)


ENCODINGS: dict[str, _Encoding] = {
    "mono8": _Encoding(1, np.uint8, "bgr"),
    "8UC1": _Encoding(1, np.uint8, "bgr"),
    "mono16": _Encoding(1, np.uint16, "bgr"),
    "16UC1": _Encoding(1, np.uint16, "bgr"),
    "bgr8": _Encoding(3, np.uint8, "bgr"),
    "8UC3": _Encoding(3, np.uint8, "bgr"),  # no colour order in the encoding: taken as BGR (OpenCV's order)
    "rgb8": _Encoding(3, np.uint8, "rgb"),
    "bgra8": _Encoding(4, np.uint8, "bgr"),
    "rgba8": _Encoding(4, np.uint8, "rgb"),
}


@dataclass
class ConvertedImage:
    """``pixels``: ``H x W`` (grey) or ``H x W x C`` uint8; ``channel_order``: ``"bgr"`` or ``"rgb"``."""

    pixels: np.ndarray
    channel_order: str


def _check_size(width: int, height: int, max_pixels: int, pixel_count: PixelCount | None = None) -> None:
    """Refuse an empty image or one whose processed pixel count (``pixel_count(W, H)``) exceeds ``max_pixels``."""
    if width <= 0 or height <= 0:
        raise ImageInputError("empty", f"zero-size image ({width} x {height})")
    if width * height > max_pixels:
        raise ImageInputError(
            "too_large", f"image of {width} x {height} = {width * height} pixels exceeds max_image_pixels={max_pixels}"
        )
    processed = pixel_count(width, height) if pixel_count is not None else width * height
    if processed > max_pixels:
        raise ImageInputError(
            "too_large",
            f"image of {width} x {height} pixels becomes {processed} pixels for the network (scaled and padded to "
            f"its stride), exceeding max_image_pixels={max_pixels}",
        )


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """16-bit grey -> 8 bits by a per-frame linear stretch of [min, max] to [0, 255] (10/12/16-bit sensors)."""
    if pixels.dtype == np.uint8:
        return pixels
    low, high = int(pixels.min()), int(pixels.max())
    if high <= low:
        return np.zeros(pixels.shape, np.uint8)
    return cv2.convertScaleAbs(pixels, alpha=255.0 / (high - low), beta=-255.0 * low / (high - low))


def image_to_array(msg: Any, max_pixels: int = 4096 * 4096, pixel_count: PixelCount | None = None) -> ConvertedImage:
    """Validate a ``sensor_msgs/Image`` and convert it (no copy where the layout allows).

    Supported encodings: mono8, mono16, 8UC1, 16UC1, rgb8, bgr8, rgba8, bgra8, 8UC3 (as BGR). mono16 is
    stretched to 8 bits per frame. Raises ImageInputError (unsupported encoding, zero size, more than
    ``max_pixels`` image pixels or ``pixel_count(W, H)`` processed pixels, ``step`` smaller than a row,
    ``data`` shorter than ``step * height``).
    """
    encoding = ENCODINGS.get(msg.encoding)
    if encoding is None:
        raise ImageInputError(
            "encoding", f"unsupported encoding {msg.encoding!r} (supported: {', '.join(sorted(ENCODINGS))})"
        )
    width, height, step = int(msg.width), int(msg.height), int(msg.step)
    _check_size(width, height, max_pixels, pixel_count)
    item_size = np.dtype(encoding.dtype).itemsize
    row_bytes = width * encoding.channels * item_size
    if step < row_bytes:
        raise ImageInputError(
            "step", f"step {step} is smaller than width x bytes per pixel = {row_bytes} ({msg.encoding}, width {width})"
        )
    if step % item_size:
        raise ImageInputError("step", f"step {step} is not a multiple of the {item_size}-byte sample size")
    if len(msg.data) < step * height:
        raise ImageInputError(
            "data_size",
            f"data has {len(msg.data)} bytes, fewer than step x height = {step} x {height} = {step * height}",
        )

    if step != row_bytes or len(msg.data) != step * height or msg.is_bigendian:
        # Big-endian frames too: cv_bridge byte-swaps them with ndarray.newbyteorder(), gone in NumPy 2.
        pixels = _strided_view(msg, encoding, width, height, step)
    elif _BRIDGE is not None:
        pixels = _BRIDGE.imgmsg_to_cv2(msg, desired_encoding="passthrough")
    else:
        pixels = image_to_cvimage(msg)
    return ConvertedImage(_to_uint8(np.asarray(pixels)), encoding.channel_order)


def _strided_view(msg: Any, encoding: _Encoding, width: int, height: int, step: int) -> np.ndarray:
    """Rows padded to ``step`` bytes: view the first ``width`` pixels of each row (honours is_bigendian)."""
    dtype = np.dtype(encoding.dtype).newbyteorder(">" if msg.is_bigendian else "<")
    rows = np.frombuffer(msg.data, np.uint8, count=step * height).reshape(height, step)
    pixels = rows[:, : width * encoding.channels * dtype.itemsize].view(dtype)
    pixels = pixels.reshape((height, width) if encoding.channels == 1 else (height, width, encoding.channels))
    return pixels.astype(encoding.dtype) if dtype.itemsize > 1 else pixels  # multi-byte: to native byte order


def compressed_image_size(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """``(W, H)`` from a compressed image's header (JPEG, PNG, TIFF, WebP, BMP, ...), without decoding pixels.

    Pillow parses only the header here, so a "decompression bomb" (a few hundred bytes claiming 32767 x 32767)
    costs nothing. Raises ImageInputError when no header can be read.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own DecompressionBombWarning: we check the size ourselves
            with PILImage.open(io.BytesIO(bytes(data)), formats=HEADER_FORMATS) as header:
                width, height = header.size
    except PILImage.DecompressionBombError as error:
        raise ImageInputError("too_large", f"compressed image refused from its header: {error}") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageInputError(
            "compressed", f"could not decode compressed image: no readable size in its header ({error})"
        ) from None
    return int(width), int(height)


def message_to_array(msg: Any, max_pixels: int, detector: Any = None) -> ConvertedImage:
    """A ``sensor_msgs/Image`` or ``CompressedImage`` (it has ``format``, an Image has not) -> ConvertedImage.

    ``max_pixels`` bounds both the image's pixels and the pixels ``detector`` will process (its
    ``network_pixels``: after input_scale and padding to the stride; a detector without it, or None, counts the
    image's own), checked from the message / compressed header before any pixel memory is allocated.
    """
    pixel_count = getattr(detector, "network_pixels", None)
    if hasattr(msg, "format"):
        return compressed_to_array(msg, max_pixels, pixel_count)
    return image_to_array(msg, max_pixels, pixel_count)


def compressed_to_array(
    msg: Any, max_pixels: int = 4096 * 4096, pixel_count: PixelCount | None = None
) -> ConvertedImage:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG, PNG, ...) to BGR or grey uint8.

    Raises ImageInputError for empty data, an unreadable header, more than ``max_pixels`` image pixels or
    ``pixel_count(W, H)`` processed pixels (both checked from the header *before* decoding, so a small file
    claiming a huge size is refused before any pixel memory is allocated) and undecodable data. 16-bit images
    are reduced to 8 bits.
    """
    if len(msg.data) == 0:
        raise ImageInputError("compressed", "compressed image with no data")
    _check_size(*compressed_image_size(msg.data), max_pixels, pixel_count)
    buffer = np.frombuffer(msg.data, np.uint8)
    pixels = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ImageInputError("compressed", f"could not decode compressed image (format {msg.format!r})")
    _check_size(pixels.shape[1], pixels.shape[0], max_pixels, pixel_count)
    if pixels.ndim == 3 and pixels.shape[2] not in (3, 4):
        raise ImageInputError("compressed", f"decoded image has {pixels.shape[2]} channels")
    if pixels.dtype != np.uint8:
        pixels = _to_uint8(pixels) if pixels.ndim == 2 else (pixels // 257).astype(np.uint8)
    return ConvertedImage(pixels, "bgr")

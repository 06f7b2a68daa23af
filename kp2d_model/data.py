"""Training images: an image-folder dataset that survives bad files.

:class:`ImageFolderDataset` reads every image under a folder (recursively, so COCO's flat ``train2017/``
and a robot's ``run_*/cam0/*.png`` both work) or the images named in a list file (one path per line,
relative to the list file; ``#`` comments). Files that are not images, cannot be opened, or are smaller
than ``min_image_side`` are skipped with one warning each and counted in :attr:`ImageFolderDataset.skipped`;
an image whose header reads but whose pixels do not decode (a truncated JPEG) is skipped when first loaded
and the next image is used instead (counted in the sample's ``skipped``). Grey, palette, 16-bit and
alpha images are converted to 8-bit RGB (alpha dropped).

Each sample is prepared as the original KP2D ``COCOLoader`` + transforms do: resize to ``image_shape``
(PIL LANCZOS), random vertical and horizontal flips (p 0.5 each), a random affine (rotation U(-15, 15) deg,
translation up to 10 % of W / H, scale U(0.9, 1.1), nearest neighbour, black fill), as a ``(3, H, W)``
uint8 RGB tensor (the trainer divides by 255). With ``random_crop`` a random window of the photo (zoom
drawn log-uniformly from ``crop_zoom``; 1 = the largest window of the output's aspect ratio) is resized
instead of the whole image, so a few large photos give many different training views.

Randomness comes from ``numpy.random.default_rng((seed, epoch, index))``: a sample does not depend on the
DataLoader worker that makes it, so runs and resumed runs see the same images. Items are keyed by index
(using :meth:`ImageFolderDataset.set_epoch`'s epoch) or by an ``(epoch, index)`` pair, which is what
:class:`EpochSampler` yields, so persistent DataLoader workers need no epoch update.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, DistributedSampler, Sampler

from kp2d_model.image import IMAGE_FILE_SUFFIXES

__all__ = [
    "DataError",
    "EpochSampler",
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "SkippedImage",
    "find_image_files",
    "load_rgb",
]

LOGGER = logging.getLogger(__name__)

IMAGE_EXTENSIONS = IMAGE_FILE_SUFFIXES

AFFINE_MAX_DEGREES = 15.0
AFFINE_MAX_TRANSLATION = 0.1  # fraction of the image size
AFFINE_SCALE_RANGE = (0.9, 1.1)
FLIP_PROBABILITY = 0.5

# Pillow raises these for files that are not (complete, supported) images.
_UNREADABLE = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class DataError(ValueError):
    """The training data cannot be used: missing folder, no images, every image unreadable."""


@dataclass(frozen=True)
class SkippedImage:
    """A file left out of training and why (``reason`` is one line, e.g. ``"too small: 4x4 px"``)."""

    path: Path
    reason: str


def find_image_files(source: str | os.PathLike) -> list[Path]:
    """Image paths (sorted) under a folder, recursively by extension, or listed in a text file.

    A list file holds one path per line, relative to the list file's folder or absolute; blank lines and
    lines starting with ``#`` are ignored. Listed files are returned even if missing (the dataset skips them).
    """
    source = Path(source)
    if not str(source):
        raise DataError("no training data given: set data.path (or --data) to an image folder or a list file")
    if source.is_dir():
        return sorted(
            Path(root) / name
            for root, _, names in os.walk(source, followlinks=True)
            for name in names
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")
        )
    if source.is_file():
        try:
            lines = source.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"{source}: cannot read the image list file ({error})") from None
        entries = [line.strip() for line in lines]
        return [source.parent / entry for entry in entries if entry and not entry.startswith("#")]
    raise DataError(f"training data not found: {source} is neither a folder nor a list file")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB: grey/palette/CMYK converted, alpha dropped, 16-bit/float scaled to 0..255."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float32)
        peak = float(values.max()) if values.size else 0.0
        scaled = values * (255.0 / peak) if peak > 255.0 else values
        image = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` fully into an RGB Pillow image; raises Pillow's error for unreadable files."""
    with Image.open(path) as image:
        image.load()
        return _to_rgb(image)


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    with Image.open(path) as image:
        return image.size


class ImageFolderDataset(Dataset):
    """Training images from a folder or list file (module docstring). Item ``i`` is a dict:

    ``image``: ``(3, H, W)`` uint8 RGB tensor of ``image_shape``; ``index``: ``i``; ``skipped``: how many
    unreadable files were passed over to produce it (normally 0).
    """

    def __init__(
        self,
        source: str | os.PathLike,
        image_shape: tuple[int, int] | list[int] = (240, 320),
        *,
        spatial_augment: bool = True,
        random_crop: bool = False,
        crop_zoom: tuple[float, float] | list[float] = (1.0, 3.0),
        limit: int = 0,
        repeat: int = 1,
        min_image_side: int = 32,
        seed: int = 42,
        progress: bool = False,
    ) -> None:
        height, width = (int(s) for s in image_shape)
        if height <= 0 or width <= 0:
            raise ValueError(f"image_shape must be positive (H, W), got {tuple(image_shape)}")
        if repeat < 1 or limit < 0:
            raise ValueError(f"repeat must be >= 1 and limit >= 0, got repeat={repeat}, limit={limit}")
        zoom_min, zoom_max = (float(z) for z in crop_zoom)
        if not 1.0 <= zoom_min <= zoom_max:
            raise ValueError(f"crop_zoom must be (min, max) with 1 <= min <= max, got {tuple(crop_zoom)}")
        self.source = Path(source)
        self.image_shape = (height, width)
        self.spatial_augment = spatial_augment
        self.random_crop = random_crop
        self.crop_zoom = (zoom_min, zoom_max)
        self.repeat = repeat
        self.min_image_side = min_image_side
        self.seed = seed
        self.epoch = 0
        self._warned: set[Path] = set()

        candidates = find_image_files(self.source)
        if not candidates:
            raise DataError(
                f"no images found in {self.source} (searched recursively for {', '.join(IMAGE_EXTENSIONS)})"
            )
        self.files: list[Path] = []
        self.skipped: list[SkippedImage] = []
        for path in _progress(candidates, progress, f"checking {len(candidates)} images"):
            reason = self._check(path)
            if reason is None:
                self.files.append(path)
                if limit and len(self.files) >= limit:
                    break
            else:
                self._skip(path, reason)
        if not self.files:
            raise DataError(
                f"no usable images in {self.source}: all {len(self.skipped)} candidates were skipped "
                f"(first: {self.skipped[0].path}: {self.skipped[0].reason})"
            )

    # --- scanning ---------------------------------------------------------------------------------

    def _check(self, path: Path) -> str | None:
        """Why ``path`` cannot be used (from its header), or None."""
        if not path.is_file():
            return "file not found"
        try:
            width, height = _header_size(path)
        except _UNREADABLE as error:
            return f"not a readable image ({type(error).__name__}: {error})"
        if min(width, height) < self.min_image_side:
            return f"too small: {width}x{height} px (data.min_image_side is {self.min_image_side})"
        return None

    def _skip(self, path: Path, reason: str) -> None:
        self.skipped.append(SkippedImage(path, reason))
        if path not in self._warned:
            self._warned.add(path)
            LOGGER.warning("skipping training image %s: %s", path, reason)

    # --- Dataset ----------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's random augmentation for integer keys (the trainer passes ``(epoch, index)`` keys)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.files) * self.repeat

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor | int]:
        """``key``: a sample index (augmented for :attr:`epoch`) or an ``(epoch, index)`` pair."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        rng = np.random.default_rng((self.seed, epoch, index))
        skipped = 0
        count = len(self.files)
        for attempt in range(count):
            path = self.files[(index + attempt) % count]
            try:
                image = load_rgb(path)
            except _UNREADABLE as error:
                skipped += 1
                if path not in self._warned:
                    self._warned.add(path)
                    LOGGER.warning("skipping training image %s: pixels do not decode (%s)", path, error)
                continue
            array = self.prepare(image, rng)
            return {"image": torch.from_numpy(array).permute(2, 0, 1).contiguous(), "index": index, "skipped": skipped}
        raise DataError(f"none of the {count} images in {self.source} decodes")

    # --- preparation ------------------------------------------------------------------------------

    def prepare(self, image: Image.Image, rng: np.random.Generator) -> np.ndarray:
        """RGB Pillow image -> ``(H, W, 3)`` uint8 array: resize (or random crop), then spatial augmentation."""
        height, width = self.image_shape
        box = self._crop_box(image.size, rng) if self.random_crop else None
        resized = image.resize((width, height), Image.Resampling.LANCZOS, box=box)
        array = np.array(resized, dtype=np.uint8)  # a writable copy
        if self.spatial_augment:
            array = _spatial_augment(array, rng)
        return np.ascontiguousarray(array)

    def _crop_box(self, size: tuple[int, int], rng: np.random.Generator) -> tuple[float, float, float, float]:
        """A random window (left, top, right, bottom) of the output's aspect ratio, zoomed by U_log(crop_zoom)."""
        image_w, image_h = size
        height, width = self.image_shape
        aspect = width / height
        full_w, full_h = (image_h * aspect, image_h) if image_w / image_h > aspect else (image_w, image_w / aspect)
        # Never zoom past the photo's own resolution (that would only upsample).
        zoom_max = max(self.crop_zoom[0], min(self.crop_zoom[1], full_w / width))
        zoom = math.exp(rng.uniform(math.log(self.crop_zoom[0]), math.log(zoom_max)))
        crop_w, crop_h = full_w / zoom, full_h / zoom
        left = rng.uniform(0.0, image_w - crop_w)
        top = rng.uniform(0.0, image_h - crop_h)
        return (left, top, left + crop_w, top + crop_h)

    def describe(self) -> str:
        """One line: how many images are used and skipped."""
        text = f"{len(self.files)} images from {self.source}"
        if self.repeat > 1:
            text += f" x {self.repeat} repeats"
        if self.skipped:
            text += f" ({len(self.skipped)} skipped as unreadable or too small)"
        return text


def _spatial_augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The original's flips + RandomAffine(15 deg, translate 0.1, scale 0.9-1.1) on an ``(H, W, 3)`` uint8 array."""
    height, width = image.shape[:2]
    if rng.random() < FLIP_PROBABILITY:
        image = image[::-1]
    if rng.random() < FLIP_PROBABILITY:
        image = image[:, ::-1]
    angle = rng.uniform(-AFFINE_MAX_DEGREES, AFFINE_MAX_DEGREES)
    shift_x = round(rng.uniform(-AFFINE_MAX_TRANSLATION, AFFINE_MAX_TRANSLATION) * width)
    shift_y = round(rng.uniform(-AFFINE_MAX_TRANSLATION, AFFINE_MAX_TRANSLATION) * height)
    scale = rng.uniform(*AFFINE_SCALE_RANGE)
    matrix = cv2.getRotationMatrix2D((width * 0.5, height * 0.5), angle, scale)
    matrix[:, 2] += (shift_x, shift_y)
    return cv2.warpAffine(
        np.ascontiguousarray(image),
        matrix,
        (width, height),
        flags=cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def _progress(items: list[Path], enabled: bool, description: str):
    if not enabled or len(items) < 2000:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=description, unit="img")


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` keys: a :class:`~torch.utils.data.DistributedSampler`'s shard of a seeded
    shuffle for the epoch (one process: the whole shuffled set), starting ``start`` samples in (to resume).

    Set the epoch and start with :meth:`set_epoch` before each pass.
    """

    def __init__(self, size: int, *, num_replicas: int = 1, rank: int = 0, seed: int = 42, shuffle: bool = True):
        self._sampler = DistributedSampler(
            range(size), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False
        )
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)
        self._sampler.set_epoch(self.epoch)

    def __len__(self) -> int:
        return max(0, len(self._sampler) - self.start)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(self._sampler)[self.start :]
        return iter([(self.epoch, index) for index in indices])

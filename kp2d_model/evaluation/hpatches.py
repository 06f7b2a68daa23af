"""HPatches sequences loader (``hpatches-sequences-release`` layout), as the original KP2D evaluation reads it.

Layout: ``ROOT/<sequence>/1.ppm ... 6.ppm`` and ``H_1_2 ... H_1_6`` (3 x 3 text matrices mapping image-1 pixels to
image-k pixels); ``i_*`` sequences change illumination, ``v_*`` sequences change viewpoint. Each sequence gives
the five pairs (1, k), k = 2..6.

Like the original: images are read with OpenCV (**BGR**, what the network sees), resized with ``cv2.resize``'s
default (bilinear) interpolation to the evaluation resolution ``(W, H)``, and each homography is rescaled to
it: ``H' = S_k @ H @ S_1^-1`` with ``S = diag(new_W / old_W, new_H / old_H, 1)`` from each image's own size.
Sequences are listed in name order (the original used the file system's order; means do not depend on it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "HPatchesError",
    "HPatchesSequence",
    "LoadedSequence",
    "PAIR_INDICES",
    "SUBSETS",
    "find_sequences",
    "load_sequence",
    "read_homography",
    "read_image",
    "scale_homography",
]

SUBSETS = ("i", "v", "all")
PAIR_INDICES = (2, 3, 4, 5, 6)  # image k of the pairs (1, k)
SEQUENCE_PREFIXES = {"i": "i_", "v": "v_"}


class HPatchesError(ValueError):
    """A missing, unreadable or malformed HPatches file or folder (the message names the path)."""


@dataclass(frozen=True)
class HPatchesSequence:
    """One sequence folder. ``homographies[k]``: ``(3, 3)`` float64 ``H_1_k`` at the images' own resolution."""

    name: str
    folder: Path
    homographies: dict[int, np.ndarray]

    @property
    def subset(self) -> str:
        """``"i"`` (illumination) or ``"v"`` (viewpoint)."""
        return self.name[0]

    def image_path(self, index: int) -> Path:
        """Path of image ``index`` (1..6)."""
        return self.folder / f"{index}.ppm"


@dataclass(frozen=True)
class LoadedSequence:
    """A sequence's six images at the evaluation resolution and its five rescaled homographies.

    ``images[0]`` is image 1, ``images[k - 1]`` image k: ``H x W x 3`` uint8 BGR. ``homographies[k]``: ``(3, 3)``
    float64 mapping image-1 pixels to image-k pixels at that resolution.
    """

    sequence: HPatchesSequence
    images: list[np.ndarray]
    homographies: dict[int, np.ndarray]


def read_homography(path: str | os.PathLike) -> np.ndarray:
    """Read a ``H_1_k`` file: 3 lines of 3 numbers -> ``(3, 3)`` float64; HPatchesError naming the path otherwise."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError as error:
        raise HPatchesError(f"{path}: homography file not found") from error
    except (OSError, UnicodeDecodeError) as error:
        raise HPatchesError(f"{path}: cannot read homography file ({error})") from error
    rows = [line.split() for line in text.splitlines() if line.strip()]
    if len(rows) != 3 or any(len(row) != 3 for row in rows):
        raise HPatchesError(
            f"{path}: malformed homography: expected 3 lines of 3 numbers, found {len(rows)} non-empty line(s) with "
            f"{[len(row) for row in rows]} value(s)"
        )
    try:
        homography = np.array([[float(value) for value in row] for row in rows], dtype=np.float64)
    except ValueError as error:
        raise HPatchesError(f"{path}: malformed homography: {error}") from error
    if not np.all(np.isfinite(homography)):
        raise HPatchesError(f"{path}: malformed homography: contains inf or nan")
    if np.linalg.det(homography) == 0:
        raise HPatchesError(f"{path}: malformed homography: the matrix is singular (not invertible)")
    return homography


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image with OpenCV -> ``H x W x 3`` uint8 BGR; HPatchesError naming the path if it cannot."""
    path = Path(path)
    if not path.is_file():
        raise HPatchesError(f"{path}: image file not found")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise HPatchesError(f"{path}: cannot read image (empty, truncated or not an image format OpenCV decodes)")
    return image


def scale_homography(
    homography: np.ndarray, size_1: tuple[int, int], size_k: tuple[int, int], resolution: tuple[int, int]
) -> np.ndarray:
    """Rescale ``homography`` (image 1 -> image k, own pixel sizes ``(W, H)``) to both images resized to
    ``resolution`` ``(W, H)``: ``S_k @ H @ S_1^-1`` (the original's order of operations, for identical rounding).
    """
    scales_1 = np.divide(resolution, size_1)
    scales_k = np.divide(resolution, size_k)
    homography = homography @ np.diag(np.append(1.0 / scales_1, 1.0))
    return np.diag(np.append(scales_k, 1.0)) @ homography


def _check_subset(subset: str) -> None:
    if subset not in SUBSETS:
        raise HPatchesError(f"unknown HPatches subset {subset!r}; expected one of {', '.join(SUBSETS)}")


def find_sequences(root: str | os.PathLike, subset: str = "all") -> list[HPatchesSequence]:
    """List the ``i_*`` / ``v_*`` sequences under ``root`` (``subset``: "i", "v" or "all"), in name order.

    Checks that every image file exists and reads every homography now, so a broken dataset fails before any
    network runs. Raises HPatchesError naming the path for a missing root, a root without sequences, a missing
    image or homography file, or a malformed homography.
    """
    _check_subset(subset)
    root = Path(root)
    if not root.is_dir():
        raise HPatchesError(f"{root}: HPatches folder not found (expected hpatches-sequences-release)")
    prefixes = tuple(SEQUENCE_PREFIXES.values()) if subset == "all" else (SEQUENCE_PREFIXES[subset],)
    folders = sorted(path for path in root.iterdir() if path.is_dir() and path.name.startswith(prefixes))
    if not folders:
        wanted = " or ".join(f"{prefix}*" for prefix in prefixes)
        raise HPatchesError(f"{root}: no HPatches sequence folders ({wanted}) found")
    sequences = []
    for folder in folders:
        for index in (1, *PAIR_INDICES):
            image_path = folder / f"{index}.ppm"
            if not image_path.is_file():
                raise HPatchesError(f"{image_path}: image file not found (sequence {folder.name} needs 1.ppm..6.ppm)")
        homographies = {k: read_homography(folder / f"H_1_{k}") for k in PAIR_INDICES}
        sequences.append(HPatchesSequence(folder.name, folder, homographies))
    return sequences


def load_sequence(sequence: HPatchesSequence, resolution: tuple[int, int]) -> LoadedSequence:
    """Read the six images of ``sequence``, resize them to ``resolution`` ``(W, H)`` and rescale the homographies."""
    width, height = resolution
    if int(width) != width or int(height) != height or width < 1 or height < 1:
        raise ValueError(f"resolution must be (width, height) in pixels, got {resolution!r}")
    resolution = (int(width), int(height))
    images, sizes = [], []
    for index in (1, *PAIR_INDICES):
        image = read_image(sequence.image_path(index))
        sizes.append((image.shape[1], image.shape[0]))
        images.append(cv2.resize(image, resolution))
    homographies = {
        k: scale_homography(sequence.homographies[k], sizes[0], sizes[k - 1], resolution) for k in PAIR_INDICES
    }
    return LoadedSequence(sequence, images, homographies)

"""The public photos this project uses, and its fixed train / held-out split.

No machine here reaches COCO or HPatches, so the project works with photos that install from the package
registries (licences in ``docs/benchmark_data.md``):

- ``held_out``: scikit-image's bundled natural photos (PyPI ``scikit-image``, ``skimage/data``). They are
  never used for training: the synthetic HPatches-style benchmark (``kp2d-make-hpatches``) and the demos use them.
- ``train``: Debian ``opencv-doc`` example photos (the list in ``scripts/stage_training_photos.sh``) and the
  Debian ``lomiri-wallpapers-16.04`` photos, found where Debian installs them or in a folder staged by
  that script (files named ``opencv_<name>`` / ``lomiri_<name>``).

The split is by source and fixed file names, so it is the same on every machine. Photos that are neither
(synthetic drawings, tiny crops, the second view of a training stereo pair such as ``aloeR.jpg``) are
deliberately left out of both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import skimage

SPLITS = ("held_out", "train")

SKIMAGE_DATA_DIR = Path(skimage.__file__).resolve().parent / "data"
OPENCV_DOC_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
LOMIRI_DPKG_LIST = Path("/var/lib/dpkg/info/lomiri-wallpapers-16.04.list")

# scikit-image photos of real scenes, at least 300 px on each side. Left out: synthetic images (chessboard,
# color, logo, horse, phantom), tiny or text images (microaneurysms, page, text), the motion-blurred clock
# and motorcycle_right (the other view of motorcycle_left).
SKIMAGE_HELD_OUT = (
    "astronaut.png",  # NASA, public domain
    "brick.png",  # CC0 Textures, CC0
    "camera.png",  # Lav Varshney, CC0
    "cell.png",  # microscopy, CC0
    "chelsea.png",  # Stefan van der Walt, CC0
    "coffee.png",  # Rachel Michetti, CC0
    "coins.png",  # Walters Art Museum, no known copyright restrictions
    "grass.png",  # CC0 Textures, CC0
    "gravel.png",  # CC0 Textures, CC0
    "hubble_deep_field.jpg",  # NASA, public domain
    "ihc.png",  # CMMI, no known copyright restrictions
    "moon.png",  # scikit-image test image
    "motorcycle_left.png",  # Middlebury 2014 stereo data set
    "retina.jpg",  # Häggström, CC0
    "rocket.jpg",  # SpaceX, public domain
)

# Debian opencv-doc examples used for training; the same list as scripts/stage_training_photos.sh.
OPENCV_DOC_TRAIN = (
    "aero1.jpg", "aero3.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "basketball1.png", "board.jpg",
    "box_in_scene.png", "building.jpg", "butterfly.jpg", "cards.png", "chicky_512.png", "ela_original.jpg",
    "fruits.jpg", "graf1.png", "home.jpg", "left01.jpg", "left.jpg", "leuvenA.jpg", "licenseplate_motion.jpg",
    "messi5.jpg", "orange.jpg", "pca_test1.jpg", "rubberwhale1.png", "smarties.png", "squirrel_cls.jpg",
    "starry_night.jpg", "stuff.jpg", "sudoku.png", "text_defocus.jpg", "Blender_Suzanne1.jpg",
)  # fmt: skip


@dataclass(frozen=True)
class Photo:
    """One photo file: ``name`` is unique across sources (``<source prefix>_<file stem>``)."""

    name: str
    path: Path
    source: str  # "scikit-image", "opencv-doc" or "lomiri-wallpapers"
    split: str  # "held_out" or "train"


def held_out_photos(skimage_dir: Path = SKIMAGE_DATA_DIR) -> list[Photo]:
    """scikit-image's natural photos (the benchmark / demo split), sorted by name.

    Raises FileNotFoundError naming the first missing file: they ship inside the scikit-image wheel, so a
    missing one means a broken or different scikit-image install.
    """
    photos = []
    for file_name in SKIMAGE_HELD_OUT:
        path = Path(skimage_dir) / file_name
        if not path.is_file():
            raise FileNotFoundError(f"held-out photo {file_name!r} not found in {skimage_dir} (scikit-image install)")
        photos.append(Photo(f"skimage_{path.stem}", path, "scikit-image", "held_out"))
    return sorted(photos, key=lambda photo: photo.name)


def train_photos(
    staged_dir: Path | None = None,
    opencv_doc_dir: Path = OPENCV_DOC_DIR,
    lomiri_dpkg_list: Path = LOMIRI_DPKG_LIST,
) -> list[Photo]:
    """The training photos that are present on this machine, sorted by name (possibly an empty list).

    Looks in ``staged_dir`` (the output of ``scripts/stage_training_photos.sh``) when given, else where the
    Debian packages install them (``opencv-doc`` examples, the files ``lomiri-wallpapers-16.04`` lists).
    """
    photos: list[Photo] = []
    if staged_dir is not None:
        staged_dir = Path(staged_dir)
        if not staged_dir.is_dir():
            raise FileNotFoundError(f"staged training photo folder {staged_dir} does not exist")
        for file_name in OPENCV_DOC_TRAIN:
            path = staged_dir / f"opencv_{file_name}"
            if path.is_file():
                photos.append(Photo(path.stem, path, "opencv-doc", "train"))
        for path in sorted(staged_dir.glob("lomiri_*.jpg")):
            photos.append(Photo(path.stem, path, "lomiri-wallpapers", "train"))
        return sorted(photos, key=lambda photo: photo.name)

    for file_name in OPENCV_DOC_TRAIN:
        path = Path(opencv_doc_dir) / file_name
        if path.is_file():
            photos.append(Photo(f"opencv_{path.stem}", path, "opencv-doc", "train"))
    if Path(lomiri_dpkg_list).is_file():
        for line in Path(lomiri_dpkg_list).read_text().splitlines():
            path = Path(line.strip())
            if path.suffix.lower() == ".jpg" and path.is_file():
                photos.append(Photo(f"lomiri_{path.stem}", path, "lomiri-wallpapers", "train"))
    return sorted(photos, key=lambda photo: photo.name)


def list_photos(split: str, staged_dir: Path | None = None) -> list[Photo]:
    """Photos of one split, ``"held_out"`` or ``"train"``; see the module docstring."""
    if split == "held_out":
        return held_out_photos()
    if split == "train":
        return train_photos(staged_dir)
    raise ValueError(f"unknown photo split {split!r}; expected one of {SPLITS}")

"""An offline HPatches-style benchmark from any folder of photos (CLI ``kp2d-make-hpatches``).

HPatches cannot be downloaded here, so this writes the same layout from photos:

    OUT/v_<photo>/1.ppm .. 6.ppm, H_1_2 .. H_1_6    viewpoint: random homographies of growing strength
    OUT/i_<photo>/1.ppm .. 6.ppm, H_1_2 .. H_1_6    illumination: identity H, photometric changes of growing strength
    OUT/generation.json                             seed, sizes, source photos (sha256) and package versions

``H_1_k`` is a plain-text 3x3 matrix (rows on lines, like HPatches) that maps image-1 pixel coordinates to
image-k pixel coordinates (x right, y down, pixel centres at integers). Image 1 is a centre crop of the photo
scaled to the output size; image k is rendered by warping the FULL photo with ``H_1_k`` composed with that
crop, and every homography is sampled so that image k only sees photo content: there are no black borders.

Strength grows with k: each sequence draws one random direction of change (a "camera path" or a
"lighting change") and image k applies it with strength (k - 1) / 5. Everything is drawn from a NumPy
generator seeded by ``(seed, photo name)``, so the files are identical byte for byte for the same seed,
photos and library versions, whatever other photos are in the folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from kp2d_model.image import IMAGE_FILE_SUFFIXES, image_files_in

NUM_IMAGES = 6  # per sequence, like HPatches
MIN_PHOTO_SIDE = 64  # px
MAX_OUTPUT_SIDE = 8192  # px per side of the written images

# Change at full strength (image 6). Viewpoint amplitudes shrink per sequence until the path fits the photo.
MAX_ROTATION_DEG = 30.0
MAX_ZOOM = 1.4  # image 6 shows between 1/1.4x and 1.4x the width of image 1
MAX_KEYSTONE = 0.3  # relative shortening of one side of the quadrilateral (out-of-plane tilt)
MAX_GAMMA = 2.0  # gamma in [1/2, 2]
MAX_CONTRAST = 1.6  # contrast factor in [1/1.6, 1.6]
MAX_BRIGHTNESS = 50.0  # grey levels
MAX_COLOUR_GAIN = 0.15  # per-channel gain in [0.85, 1.15]
MAX_SHADOW = 0.7  # darkest shadow keeps 30 % of the light
MAX_NOISE_SIGMA = 6.0  # grey levels
STRONG_STRENGTH = 1.6  # ``--strength`` of the "strong viewpoint" draws reported in the docs


class BenchmarkInputError(ValueError):
    """The photos given to the generator cannot be used (missing, unreadable, too small, name clash)."""


@dataclass(frozen=True)
class SourcePhoto:
    """A photo to turn into sequences: ``name`` becomes the sequence suffix (``v_<name>``, ``i_<name>``)."""

    name: str
    path: Path


@dataclass(frozen=True)
class Sequence6:
    """Six images (H x W x 3 uint8 BGR) and the five homographies ``H_1_k`` (3x3 float64), k = 2..6."""

    images: list[np.ndarray]
    homographies: list[np.ndarray]
    amplitude: float  # fraction of the full-strength change kept (viewpoint: < 1 when shrunk to fit)


# ----------------------------------------------------------------------------------------------- photos


def sequence_name(file_stem: str) -> str:
    """A file stem as a sequence suffix: lower case, runs of other characters than [a-z0-9] replaced by ``_``."""
    name = re.sub(r"[^a-z0-9]+", "_", file_stem.lower()).strip("_")
    if not name:
        raise BenchmarkInputError(f"cannot make a sequence name from file name {file_stem!r}")
    return name


def photos_in_folder(folder: Path) -> list[SourcePhoto]:
    """The image files directly inside ``folder`` (by suffix, sorted); other files are ignored.

    Raises BenchmarkInputError if the folder is missing, holds no image file, or two files give the same
    sequence name.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchmarkInputError(f"photo folder {folder} does not exist or is not a folder")
    paths = image_files_in(folder)
    if not paths:
        raise BenchmarkInputError(f"no image files ({', '.join(IMAGE_FILE_SUFFIXES)}) in photo folder {folder}")
    return _unique_names([SourcePhoto(sequence_name(p.stem), p) for p in paths])


def held_out_photos() -> list[SourcePhoto]:
    """The project's held-out public photos (scikit-image's bundled photos, see ``kp2d_model.photos``)."""
    from kp2d_model.photos import held_out_photos as held_out

    return _unique_names([SourcePhoto(sequence_name(p.path.stem), p.path) for p in held_out()])


def _unique_names(photos: list[SourcePhoto]) -> list[SourcePhoto]:
    seen: dict[str, Path] = {}
    for photo in photos:
        if photo.name in seen:
            raise BenchmarkInputError(
                f"photos {seen[photo.name]} and {photo.path} would both be sequence {photo.name!r}; rename one"
            )
        seen[photo.name] = photo.path
    return photos


def read_photo(path: Path) -> np.ndarray:
    """Read a photo as H x W x 3 uint8 BGR (grey and alpha images are converted); BenchmarkInputError if not."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkInputError(f"photo {path} does not exist")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise BenchmarkInputError(f"photo {path} could not be decoded as an image (corrupt or unsupported format)")
    if min(image.shape[:2]) < MIN_PHOTO_SIDE:
        raise BenchmarkInputError(
            f"photo {path} is {image.shape[1]}x{image.shape[0]} px; at least {MIN_PHOTO_SIDE} px per side is needed"
        )
    return image


# ------------------------------------------------------------------------------------------- geometry


def crop_transform(photo_size: tuple[int, int], out_size: tuple[int, int], crop_fraction: float) -> np.ndarray:
    """3x3 matrix mapping photo pixels to image-1 pixels: a centred crop with the output's aspect ratio.

    The crop is ``crop_fraction`` of the largest centred rectangle of the output's aspect ratio that fits in
    the photo, scaled to ``out_size``. Sizes are (width, height) in px.
    """
    photo_w, photo_h = photo_size
    out_w, out_h = out_size
    fit_w = min(photo_w, photo_h * out_w / out_h)
    scale = out_w / (crop_fraction * fit_w)
    return np.array(
        [
            [scale, 0.0, (out_w - 1) / 2 - scale * (photo_w - 1) / 2],
            [0.0, scale, (out_h - 1) / 2 - scale * (photo_h - 1) / 2],
            [0.0, 0.0, 1.0],
        ]
    )


def prepare_photo(photo: np.ndarray, out_size: tuple[int, int], crop_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Shrink a large photo (INTER_AREA, against aliasing) so image 1 samples it at about 1 px per px.

    Returns the (possibly resized) photo and its crop transform (photo px -> image-1 px).
    """
    photo_h, photo_w = photo.shape[:2]
    scale = crop_transform((photo_w, photo_h), out_size, crop_fraction)[0, 0]
    if scale < 1.0:
        size = (max(1, round(photo_w * scale)), max(1, round(photo_h * scale)))
        photo = cv2.resize(photo, size, interpolation=cv2.INTER_AREA)
    return photo, crop_transform((photo.shape[1], photo.shape[0]), out_size, crop_fraction)


def view_quadrilateral(
    out_size: tuple[int, int], rotation: float, log_zoom: float, keystone_x: float, keystone_y: float
) -> np.ndarray:
    """(4, 2) corners (TL, TR, BR, BL) of image k's view in image-1 px, centred on the origin.

    ``rotation`` in radians; ``log_zoom`` > 0 zooms in (a smaller quadrilateral); ``keystone_x`` shortens the
    right edge and lengthens the left one (tilt about the vertical axis), ``keystone_y`` likewise for the
    bottom and top edges.
    """
    half_w, half_h = (out_size[0] - 1) / 2, (out_size[1] - 1) / 2
    corners = np.array(
        [
            [-half_w * (1 + keystone_y), -half_h * (1 + keystone_x)],
            [half_w * (1 + keystone_y), -half_h * (1 - keystone_x)],
            [half_w * (1 - keystone_y), half_h * (1 - keystone_x)],
            [-half_w * (1 - keystone_y), half_h * (1 + keystone_x)],
        ]
    )
    cos, sin = np.cos(rotation), np.sin(rotation)
    rotate = np.array([[cos, -sin], [sin, cos]])
    return (corners @ rotate.T) * np.exp(-log_zoom)


def _viewpoint_homographies(
    rng: np.random.Generator,
    out_size: tuple[int, int],
    allowed: tuple[float, float, float, float],
    strength: float = 1.0,
) -> tuple[list[np.ndarray], float]:
    """H_1_k for k = 2..6 whose views of image k stay inside ``allowed`` (x0, y0, x1, y1, image-1 px).

    ``strength`` multiplies the full-strength in-plane rotation and keystones (tilts); the zoom range is kept.
    """
    direction = rng.uniform(0.5, 1.0, 4) * rng.choice([-1.0, 1.0], 4)  # rotation, zoom, keystone x, keystone y
    shift = rng.uniform(-1.0, 1.0, 2)  # where the view drifts inside its feasible range
    full = np.array([np.deg2rad(MAX_ROTATION_DEG), np.log(MAX_ZOOM), MAX_KEYSTONE, MAX_KEYSTONE])
    if strength != 1.0:  # the ordinary draw is left untouched (byte-identical files)
        full = full * np.array([strength, 1.0, strength, strength])
    centre = np.array([(out_size[0] - 1) / 2, (out_size[1] - 1) / 2])
    low, high = np.array(allowed[:2]), np.array(allowed[2:])
    target = np.array([[0, 0], [out_size[0] - 1, 0], [out_size[0] - 1, out_size[1] - 1], [0, out_size[1] - 1]])
    amplitude = 1.0
    for _ in range(60):
        homographies = []
        for k in range(2, NUM_IMAGES + 1):
            strength = (k - 1) / (NUM_IMAGES - 1)
            quad = view_quadrilateral(out_size, *(amplitude * strength * direction * full))
            shift_low = low - centre - quad.min(axis=0)
            shift_high = high - centre - quad.max(axis=0)
            if np.any(shift_low > shift_high):
                break
            offset = (shift_low + shift_high) / 2 + strength * shift * (shift_high - shift_low) / 2
            source = (quad + centre + offset).astype(np.float32)
            homographies.append(cv2.getPerspectiveTransform(source, target.astype(np.float32)).astype(np.float64))
        if len(homographies) == NUM_IMAGES - 1:
            return homographies, amplitude
        amplitude *= 0.85
    raise BenchmarkInputError("no viewpoint change fits inside the photo; lower --crop-fraction")


def make_viewpoint_sequence(
    photo: np.ndarray,
    rng: np.random.Generator,
    out_size: tuple[int, int],
    crop_fraction: float,
    strength: float = 1.0,
) -> Sequence6:
    """Image 1 = centre crop; image k = the full photo warped by H_1_k composed with the crop (``strength``:
    see ``_viewpoint_homographies``)."""
    photo, crop = prepare_photo(photo, out_size, crop_fraction)
    photo_h, photo_w = photo.shape[:2]
    inset = 1.0  # photo px kept away from the edge so that bilinear sampling never reads the border fill
    corners = crop @ np.array([[inset, inset, 1.0], [photo_w - 1 - inset, photo_h - 1 - inset, 1.0]]).T
    allowed = (corners[0, 0], corners[1, 0], corners[0, 1], corners[1, 1])
    homographies, amplitude = _viewpoint_homographies(rng, out_size, allowed, strength)
    images = [_warp(photo, crop, out_size)] + [_warp(photo, h @ crop, out_size) for h in homographies]
    return Sequence6(images, homographies, amplitude)


def _warp(photo: np.ndarray, photo_to_image: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    return cv2.warpPerspective(photo, photo_to_image, out_size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


# --------------------------------------------------------------------------------------- illumination


def make_illumination_sequence(
    photo: np.ndarray, rng: np.random.Generator, out_size: tuple[int, int], crop_fraction: float
) -> Sequence6:
    """Image 1 = centre crop; image k = image 1 with gamma, contrast, brightness, colour, shadow and noise
    changes of strength (k - 1) / 5 in one random direction; H_1_k = identity."""
    photo, crop = prepare_photo(photo, out_size, crop_fraction)
    first = _warp(photo, crop, out_size)
    sign = rng.choice([-1.0, 1.0], 3)
    gamma_dir, contrast_dir, brightness_dir = sign * rng.uniform(0.5, 1.0, 3)
    colour_dir = rng.uniform(-1.0, 1.0, 3)
    shadow_depth = rng.uniform(0.4, 1.0) * MAX_SHADOW
    shadow_mask = _soft_shadow_mask(rng, out_size)

    base = first.astype(np.float64) / 255.0
    images = [first]
    for k in range(2, NUM_IMAGES + 1):
        strength = (k - 1) / (NUM_IMAGES - 1)
        x = base ** np.exp(gamma_dir * strength * np.log(MAX_GAMMA))
        x = (x - 0.5) * np.exp(contrast_dir * strength * np.log(MAX_CONTRAST)) + 0.5
        x = x * (1.0 + colour_dir * strength * MAX_COLOUR_GAIN)
        x = x * (1.0 - shadow_depth * strength * shadow_mask)[..., None]
        x = x + brightness_dir * strength * MAX_BRIGHTNESS / 255.0
        x = x + rng.normal(0.0, strength * MAX_NOISE_SIGMA / 255.0, x.shape)
        images.append(np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8))
    return Sequence6(images, [np.eye(3) for _ in range(NUM_IMAGES - 1)], 1.0)


def _soft_shadow_mask(rng: np.random.Generator, out_size: tuple[int, int]) -> np.ndarray:
    """H x W values in [0, 1]: 1 in the shadow, a soft edge along a random straight line."""
    width, height = out_size
    angle = rng.uniform(0.0, 2 * np.pi)
    half_diagonal = np.hypot(width, height) / 2
    offset = rng.uniform(-0.5, 0.5) * half_diagonal
    softness = rng.uniform(0.05, 0.3) * half_diagonal
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    distance = (xs - width / 2) * np.cos(angle) + (ys - height / 2) * np.sin(angle) - offset
    return 1.0 / (1.0 + np.exp(-distance / softness))


# ---------------------------------------------------------------------------------------------- output


def format_homography(h: np.ndarray) -> str:
    """A 3x3 matrix as HPatches writes it: three lines of three space-separated numbers."""
    return "".join(" ".join(f"{value:.10g}" for value in row) + "\n" for row in np.asarray(h, dtype=np.float64))


def write_sequence(folder: Path, sequence: Sequence6) -> None:
    """Write ``1.ppm .. 6.ppm`` and ``H_1_2 .. H_1_6`` into ``folder`` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(sequence.images, start=1):
        if not cv2.imwrite(str(folder / f"{index}.ppm"), image):
            raise OSError(f"could not write {folder / f'{index}.ppm'}")
    for index, h in enumerate(sequence.homographies, start=2):
        (folder / f"H_1_{index}").write_text(format_homography(h))


def generate_benchmark(
    photos: Sequence[SourcePhoto],
    out_dir: Path,
    seed: int = 0,
    out_size: tuple[int, int] = (640, 480),
    crop_fraction: float = 0.7,
    kinds: str = "vi",
    overwrite: bool = False,
    strength: float = 1.0,
) -> list[Path]:
    """Write one ``v_`` and/or one ``i_`` sequence per photo into ``out_dir``; returns the sequence folders.

    ``out_size`` is (width, height) px; ``kinds`` holds ``v`` and/or ``i``. Refuses a non-empty ``out_dir``
    unless ``overwrite`` (then sequence folders of the same names are replaced, others are left alone).
    All or nothing: the sequences are written to a staging folder inside ``out_dir`` and moved into place only
    when every photo was read and every file written, so a corrupt photo (BenchmarkInputError naming it) or a
    full disk leaves ``out_dir`` as it was. A sequence name that exists as a symbolic link or a file is refused.
    ``strength`` (> 0) multiplies the viewpoint sequences' full-strength in-plane rotation (30 deg) and tilts
    (keystone 0.3); 1 is the ordinary draw (byte-identical to a run without it), 1.6 the "strong" one. A range
    that does not fit in the photo is shrunk per sequence as usual (``amplitude`` in generation.json).
    """
    out_dir = Path(out_dir)
    if not photos:
        raise BenchmarkInputError("no photos given")
    if not kinds or set(kinds) - {"v", "i"}:
        raise BenchmarkInputError(f"kinds must be made of 'v' (viewpoint) and 'i' (illumination), got {kinds!r}")
    if not 0.1 <= crop_fraction < 1.0:
        raise BenchmarkInputError(f"crop_fraction must be in [0.1, 1), got {crop_fraction}")
    if not (np.isfinite(strength) and 0.0 < strength <= 3.0):
        raise BenchmarkInputError(f"strength must be in (0, 3], got {strength}")
    if min(out_size) < 32 or max(out_size) > MAX_OUTPUT_SIDE:
        raise BenchmarkInputError(
            f"output size must be between 32x32 and {MAX_OUTPUT_SIDE}x{MAX_OUTPUT_SIDE} px, "
            f"got {out_size[0]}x{out_size[1]}"
        )
    if seed < 0:
        raise BenchmarkInputError(f"seed must be >= 0, got {seed}")
    if out_dir.exists() and not out_dir.is_dir():
        raise BenchmarkInputError(f"output folder {out_dir} exists and is not a folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise BenchmarkInputError(f"output folder {out_dir} is not empty; pass overwrite (--overwrite) to replace")
    _unique_names(list(photos))
    for source in photos:
        for kind in set(kinds):
            target = out_dir / f"{kind}_{source.name}"
            if target.is_symlink() or (target.exists() and not target.is_dir()):
                raise BenchmarkInputError(
                    f"{target} is a symbolic link or a file, not a sequence folder; refusing to replace it"
                )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".kp2d-make-hpatches-", dir=out_dir))
    except OSError as error:
        raise BenchmarkInputError(f"cannot write the output folder {out_dir}: {error.strerror or error}") from None
    try:
        written = _generate_into(photos, out_dir, staging, seed, out_size, crop_fraction, kinds, strength)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def _generate_into(
    photos: Sequence[SourcePhoto],
    out_dir: Path,
    staging: Path,
    seed: int,
    out_size: tuple[int, int],
    crop_fraction: float,
    kinds: str,
    strength: float,
) -> list[Path]:
    """:func:`generate_benchmark`'s work: every sequence into ``staging``, then all moved to ``out_dir``."""

    written: list[Path] = []
    manifest: list[dict] = []
    for source in photos:
        photo = read_photo(source.path)
        for kind in sorted(set(kinds), key="vi".index):
            rng = np.random.default_rng([seed, zlib.crc32(f"{kind}_{source.name}".encode())])
            if kind == "v":
                sequence = make_viewpoint_sequence(photo, rng, out_size, crop_fraction, strength)
            else:
                sequence = make_illumination_sequence(photo, rng, out_size, crop_fraction)
            folder = out_dir / f"{kind}_{source.name}"
            try:
                write_sequence(staging / folder.name, sequence)
            except OSError as error:
                raise BenchmarkInputError(f"cannot write {folder}: {error.strerror or error}") from None
            written.append(folder)
            manifest.append(
                {
                    "sequence": folder.name,
                    "photo": source.path.name,
                    "photo_sha256": hashlib.sha256(source.path.read_bytes()).hexdigest(),
                    "amplitude": round(sequence.amplitude, 6),
                }
            )
    info = {
        "generator": "kp2d-make-hpatches (kp2d_model.evaluation.synthetic)",
        "seed": seed,
        "width": out_size[0],
        "height": out_size[1],
        "crop_fraction": crop_fraction,
        **({"strength": strength} if strength != 1.0 else {}),
        "versions": {"numpy": np.__version__, "opencv": cv2.__version__},
        "sequences": manifest,
    }
    try:
        (staging / "generation.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        for folder in written:  # everything is written: replace the old sequences of the same names
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(staging / folder.name, folder)
        os.replace(staging / "generation.json", out_dir / "generation.json")
    except OSError as error:
        raise BenchmarkInputError(f"cannot write {out_dir}: {error.strerror or error}") from None
    return written


# ------------------------------------------------------------------------------------------------- CLI


def _parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)[xX](\d+)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"size must look like 640x480 (width x height), got {text!r}")
    width, height = int(match.group(1)), int(match.group(2))
    if not (32 <= width <= MAX_OUTPUT_SIDE and 32 <= height <= MAX_OUTPUT_SIDE):
        raise argparse.ArgumentTypeError(f"size sides must be in [32, {MAX_OUTPUT_SIDE}] px, got {text!r}")
    return width, height


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """``kp2d-make-hpatches --images DIR --out DIR [--seed N] [--size WxH] ...``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="kp2d-make-hpatches",
        description="Write an HPatches-style benchmark (v_*/i_* sequences, 1..6.ppm, H_1_k) from photos.",
    )
    parser.add_argument("--images", type=Path, help="folder of photos (default: the project's held-out public photos)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (HPatches layout)")
    parser.add_argument("--seed", type=_non_negative_int, default=0, help="random seed >= 0 (default 0)")
    parser.add_argument("--size", type=_parse_size, default=(640, 480), help="image size WxH (default 640x480)")
    parser.add_argument("--crop-fraction", type=float, default=0.7, help="image 1's share of the photo (default 0.7)")
    parser.add_argument("--kinds", default="vi", help="'v' viewpoint, 'i' illumination or 'vi' (default)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    parser.add_argument(
        "--strength",
        type=float,
        default=1.0,
        help=f"viewpoint: multiply the in-plane rotation and tilt ranges (default 1; {STRONG_STRENGTH} = strong draw)",
    )
    args = parser.parse_args(argv)
    try:
        photos = photos_in_folder(args.images) if args.images is not None else held_out_photos()
        written = generate_benchmark(
            photos, args.out, args.seed, args.size, args.crop_fraction, args.kinds, args.overwrite, args.strength
        )
    except BenchmarkInputError as error:
        print(f"kp2d-make-hpatches: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} sequences from {len(photos)} photos to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

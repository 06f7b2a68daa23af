"""HPatches loader: layout, subsets, resizing and homography rescaling, and its error messages."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from kp2d_model.evaluation.hpatches import (
    HPatchesError,
    find_sequences,
    load_sequence,
    read_homography,
    scale_homography,
)

SMALL_SIZE = (64, 48)  # (W, H) of the generated test images


def write_sequence(folder: Path, seed: int = 0) -> Path:
    """A small HPatches-style sequence: six random images and five homographies (translations)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for index in range(1, 7):
        image = rng.integers(0, 256, (SMALL_SIZE[1], SMALL_SIZE[0], 3), dtype=np.uint8)
        assert cv2.imwrite(str(folder / f"{index}.ppm"), image)
    for k in range(2, 7):
        np.savetxt(folder / f"H_1_{k}", np.array([[1.0, 0, k], [0, 1.0, -k], [0, 0, 1.0]]))
    return folder


@pytest.fixture()
def small_hpatches(tmp_path: Path) -> Path:
    root = tmp_path / "hpatches"
    write_sequence(root / "i_small", seed=1)
    write_sequence(root / "v_small", seed=2)
    return root


def test_subsets_select_illumination_viewpoint_or_all_sequences_in_name_order(reference_dir: Path) -> None:
    root = reference_dir / "mini_hpatches"
    assert [s.name for s in find_sequences(root, "all")] == ["i_rocket", "v_motorcycle_left"]
    assert [s.name for s in find_sequences(root, "i")] == ["i_rocket"]
    assert [s.name for s in find_sequences(root, "v")] == ["v_motorcycle_left"]


def test_images_are_read_as_bgr_and_resized_with_cv2_default_interpolation(reference_dir: Path) -> None:
    sequence = find_sequences(reference_dir / "mini_hpatches", "v")[0]
    loaded = load_sequence(sequence, (320, 240))
    assert len(loaded.images) == 6
    for index, image in enumerate(loaded.images, start=1):
        assert image.shape == (240, 320, 3) and image.dtype == np.uint8
        expected = cv2.resize(cv2.imread(str(sequence.folder / f"{index}.ppm"), cv2.IMREAD_COLOR), (320, 240))
        np.testing.assert_array_equal(image, expected)


def test_rescaled_homography_maps_resized_image_one_to_resized_image_k(reference_dir: Path) -> None:
    sequence = find_sequences(reference_dir / "mini_hpatches", "v")[0]
    loaded = load_sequence(sequence, (320, 240))
    height, width = cv2.imread(str(sequence.folder / "1.ppm")).shape[:2]
    scale = np.diag([320 / width, 240 / height, 1.0])
    for k in range(2, 7):
        point = np.array([0.3 * width, 0.6 * height, 1.0])
        target = sequence.homographies[k] @ point
        resized_target = loaded.homographies[k] @ (scale @ point)
        np.testing.assert_allclose(resized_target[:2] / resized_target[2], (scale @ (target / target[2]))[:2])


def test_scale_homography_uses_each_images_own_size() -> None:
    homography = np.array([[1.0, 0.1, 5.0], [0.0, 1.2, -3.0], [1e-4, 0.0, 1.0]])
    scaled = scale_homography(homography, size_1=(200, 100), size_k=(100, 50), resolution=(400, 200))
    expected = np.diag([4.0, 4.0, 1.0]) @ homography @ np.linalg.inv(np.diag([2.0, 2.0, 1.0]))
    np.testing.assert_allclose(scaled, expected)


def test_homography_file_is_read_as_three_by_three(reference_dir: Path) -> None:
    path = reference_dir / "mini_hpatches" / "v_motorcycle_left" / "H_1_2"
    np.testing.assert_array_equal(read_homography(path), np.loadtxt(path))


def test_missing_image_is_an_error_naming_the_file(small_hpatches: Path) -> None:
    missing = small_hpatches / "v_small" / "4.ppm"
    missing.unlink()
    with pytest.raises(HPatchesError, match=re.escape(f"{missing}: image file not found")):
        find_sequences(small_hpatches)


def test_unreadable_image_is_an_error_naming_the_file(small_hpatches: Path) -> None:
    broken = small_hpatches / "i_small" / "3.ppm"
    broken.write_bytes(b"P6 this is not an image")
    sequence = find_sequences(small_hpatches, "i")[0]
    with pytest.raises(HPatchesError, match=re.escape(f"{broken}: cannot read image")):
        load_sequence(sequence, (32, 24))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("1 0 0\n0 1 0\n", "expected 3 lines of 3 numbers"),
        ("1 0 0\n0 1\n0 0 1\n", "expected 3 lines of 3 numbers"),
        ("1 0 0\n0 one 0\n0 0 1\n", "malformed homography"),
        ("1 0 0\n0 nan 0\n0 0 1\n", "inf or nan"),
        ("1 0 0\n2 0 0\n0 0 1\n", "singular"),
        ("", "expected 3 lines of 3 numbers"),
    ],
)
def test_malformed_homography_is_an_error_naming_the_file(small_hpatches: Path, content: str, problem: str) -> None:
    path = small_hpatches / "v_small" / "H_1_5"
    path.write_text(content)
    with pytest.raises(HPatchesError, match=re.escape(str(path))) as error:
        find_sequences(small_hpatches)
    assert problem in str(error.value)


def test_missing_homography_is_an_error_naming_the_file(small_hpatches: Path) -> None:
    path = small_hpatches / "i_small" / "H_1_6"
    path.unlink()
    with pytest.raises(HPatchesError, match=re.escape(f"{path}: homography file not found")):
        find_sequences(small_hpatches)


def test_folder_without_sequences_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "not_a_sequence").mkdir()
    with pytest.raises(HPatchesError, match=re.escape(f"{tmp_path}: no HPatches sequence folders")):
        find_sequences(tmp_path)


def test_subset_without_sequences_is_an_error(small_hpatches: Path) -> None:
    shutil.rmtree(small_hpatches / "v_small")
    with pytest.raises(HPatchesError, match="v_\\*"):
        find_sequences(small_hpatches, "v")


def test_missing_root_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(HPatchesError, match=re.escape(f"{tmp_path / 'nowhere'}: HPatches folder not found")):
        find_sequences(tmp_path / "nowhere")


def test_unknown_subset_is_an_error_listing_the_choices(small_hpatches: Path) -> None:
    with pytest.raises(HPatchesError, match="unknown HPatches subset 'x'; expected one of i, v, all"):
        find_sequences(small_hpatches, "x")

"""The public-photo helper: the held-out split is present and disjoint from the training split."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from kp2d_model.photos import OPENCV_DOC_TRAIN, held_out_photos, list_photos, train_photos


def test_held_out_photos_are_scikit_image_photos_that_read_as_colour_images() -> None:
    photos = held_out_photos()
    assert len(photos) >= 10
    assert len({photo.name for photo in photos}) == len(photos)
    for photo in photos:
        assert photo.source == "scikit-image" and photo.split == "held_out"
        image = cv2.imread(str(photo.path), cv2.IMREAD_COLOR)
        assert image is not None and min(image.shape[:2]) >= 300, photo.path


def test_train_photos_are_found_in_a_staged_folder_and_never_overlap_the_held_out_ones(tmp_path: Path) -> None:
    for name in ("opencv_baboon.jpg", "opencv_graf1.png", "lomiri_Wine_by_Jakkub_Mede.jpg", "opencv_aloeR.jpg"):
        cv2.imwrite(str(tmp_path / name), np.zeros((8, 8, 3), np.uint8))
    photos = list_photos("train", staged_dir=tmp_path)
    assert [photo.name for photo in photos] == ["lomiri_Wine_by_Jakkub_Mede", "opencv_baboon", "opencv_graf1"]
    assert {photo.source for photo in photos} == {"opencv-doc", "lomiri-wallpapers"}
    held_out_files = {photo.path.name for photo in held_out_photos()}
    assert not held_out_files & set(OPENCV_DOC_TRAIN)


def test_train_photos_are_empty_when_the_debian_packages_are_absent(tmp_path: Path) -> None:
    assert train_photos(opencv_doc_dir=tmp_path / "none", lomiri_dpkg_list=tmp_path / "none.list") == []


def test_unknown_split_or_missing_staged_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown photo split 'test'"):
        list_photos("test")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_photos(staged_dir=tmp_path / "missing")

"""ImageFolderDataset: bad files are skipped and counted, odd formats converted, samples reproducible."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from kp2d_model.data import DataError, EpochSampler, ImageFolderDataset, find_image_files, load_rgb


def _textured(height: int, width: int, seed: int) -> np.ndarray:
    """An RGB uint8 image of random rectangles and circles (something for keypoints to find)."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 127, np.uint8)
    for _ in range(30):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = (int(v) for v in rng.integers(0, min(height, width), 2))
        cv2.circle(image, (x, y), int(rng.integers(3, 25)), color, -1)
    return image


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


@pytest.fixture()
def messy_folder(tmp_path: Path) -> dict[str, Path]:
    """Good images (one nested), a greyscale and an RGBA png, and five kinds of bad file."""
    root = tmp_path / "train2017"
    files = {
        "good_a": _save(root / "a.jpg", _textured(120, 160, 1)),
        "good_b": _save(root / "b.png", _textured(100, 140, 2)),
        "nested": _save(root / "robot" / "cam0" / "c.png", _textured(90, 120, 3)),
        "grey": _save(root / "grey.png", _textured(80, 100, 4)[:, :, 0], mode="L"),
        "rgba": _save(root / "rgba.png", np.dstack([_textured(80, 100, 5), np.full((80, 100), 50, np.uint8)])),
        "tiny": _save(root / "tiny.png", _textured(4, 4, 6)),
    }
    one_byte = root / "one_byte.jpg"
    one_byte.write_bytes(b"\xff")
    text = root / "notes.jpg"
    text.write_text("this is not an image\n")
    full = root / "truncated_source.jpg"
    _save(full, _textured(200, 260, 7))
    truncated = root / "truncated.jpg"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    full.unlink()
    (root / "readme.txt").write_text("ignored: not an image extension")
    files.update({"one_byte": one_byte, "text": text, "truncated": truncated, "root": root})
    return files


def test_unreadable_tiny_and_fake_images_are_skipped_with_one_warning_each(messy_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="kp2d_model.data"):
        dataset = ImageFolderDataset(messy_folder["root"], (64, 96))
    skipped = {entry.path.name: entry.reason for entry in dataset.skipped}
    assert set(skipped) == {"one_byte.jpg", "notes.jpg", "tiny.png"}
    assert "too small: 4x4" in skipped["tiny.png"]
    assert "not a readable image" in skipped["notes.jpg"]
    for name in skipped:
        assert sum(name in record.getMessage() for record in caplog.records) == 1
    # The truncated JPEG has a valid header: it is only found out when its pixels are decoded.
    assert {path.name for path in dataset.files} == {"a.jpg", "b.png", "c.png", "grey.png", "rgba.png", "truncated.jpg"}
    assert "3 skipped" in dataset.describe()


def test_a_truncated_image_is_replaced_by_the_next_and_counted(messy_folder, caplog):
    dataset = ImageFolderDataset(messy_folder["root"], (64, 96), spatial_augment=False)
    position = [path.name for path in dataset.files].index("truncated.jpg")
    with caplog.at_level(logging.WARNING, logger="kp2d_model.data"):
        samples = [dataset[i] for i in range(len(dataset))]
        dataset[position]  # a second time: no second warning
    assert [s["skipped"] for s in samples].count(1) == 1
    assert samples[position]["skipped"] == 1
    replacement = (position + 1) % len(dataset)
    assert torch.equal(samples[position]["image"], samples[replacement]["image"])
    assert sum("truncated.jpg" in record.getMessage() for record in caplog.records) == 1
    for sample in samples:
        assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 64, 96)


def test_grey_and_rgba_images_are_converted_to_rgb(messy_folder):
    grey = np.asarray(load_rgb(messy_folder["grey"]))
    assert grey.shape == (80, 100, 3)
    assert np.array_equal(grey[:, :, 0], grey[:, :, 1]) and np.array_equal(grey[:, :, 1], grey[:, :, 2])
    assert np.array_equal(grey[:, :, 0], _textured(80, 100, 4)[:, :, 0])
    rgba = np.asarray(load_rgb(messy_folder["rgba"]))
    assert rgba.shape == (80, 100, 3)
    assert np.array_equal(rgba, _textured(80, 100, 5))  # alpha dropped, colours kept


def test_sixteen_bit_images_are_scaled_to_eight_bit(tmp_path):
    values = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    path = tmp_path / "depth16.png"
    cv2.imwrite(str(path), values)
    rgb = np.asarray(load_rgb(path))
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert rgb.max() == 255 and rgb[0, 0, 0] == 0


def test_without_augmentation_the_image_is_resized_with_lanczos(messy_folder):
    dataset = ImageFolderDataset(messy_folder["good_a"].parent, (64, 96), spatial_augment=False)
    index = [path.name for path in dataset.files].index("a.jpg")
    expected = np.asarray(Image.open(messy_folder["good_a"]).convert("RGB").resize((96, 64), Image.LANCZOS))
    assert np.array_equal(dataset[index]["image"].permute(1, 2, 0).numpy(), expected)


def test_spatial_augmentation_is_reproducible_per_epoch_and_index(messy_folder):
    dataset = ImageFolderDataset(messy_folder["root"], (64, 96))
    first, again = dataset[(0, 1)]["image"], dataset[(0, 1)]["image"]
    assert torch.equal(first, again)
    dataset.set_epoch(0)
    assert torch.equal(dataset[1]["image"], first)
    other_epochs = [dataset[(epoch, 1)]["image"] for epoch in range(1, 4)]
    assert any(not torch.equal(first, image) for image in other_epochs)
    plain = ImageFolderDataset(messy_folder["root"], (64, 96), spatial_augment=False)[1]["image"]
    assert not torch.equal(first, plain)


def test_random_crops_give_different_views_of_one_large_photo(tmp_path):
    _save(tmp_path / "photo.png", _textured(600, 800, 11))
    dataset = ImageFolderDataset(
        tmp_path, (64, 96), random_crop=True, crop_zoom=(1.0, 4.0), spatial_augment=False, repeat=8
    )
    assert len(dataset) == 8
    views = [dataset[i]["image"] for i in range(8)]
    assert all(view.shape == (3, 64, 96) for view in views)
    distinct = {view.numpy().tobytes() for view in views}
    assert len(distinct) == 8
    rng = np.random.default_rng(0)
    for _ in range(50):
        left, top, right, bottom = dataset._crop_box((800, 600), rng)
        assert 0 <= left < right <= 800 and 0 <= top < bottom <= 600
        assert right - left == pytest.approx((bottom - top) * 96 / 64)


def test_list_file_paths_are_relative_to_the_list_and_missing_entries_are_skipped(messy_folder, tmp_path):
    listing = messy_folder["root"] / "train.txt"
    listing.write_text("# my selection\na.jpg\n\nrobot/cam0/c.png\ngone.png\n")
    dataset = ImageFolderDataset(listing, (64, 96))
    assert [path.name for path in dataset.files] == ["a.jpg", "c.png"]
    assert [(entry.path.name, entry.reason) for entry in dataset.skipped] == [("gone.png", "file not found")]


def test_limit_keeps_the_first_images_and_repeat_lengthens_the_epoch(messy_folder):
    dataset = ImageFolderDataset(messy_folder["root"], (64, 96), limit=2, repeat=3)
    assert len(dataset.files) == 2 and len(dataset) == 6
    assert dataset.files == sorted(find_image_files(messy_folder["root"]))[:2]


def test_missing_and_empty_data_folders_raise_clear_errors(tmp_path):
    with pytest.raises(DataError, match="neither a folder nor a list file"):
        ImageFolderDataset(tmp_path / "nope", (64, 96))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found in .*empty"):
        ImageFolderDataset(tmp_path / "empty", (64, 96))
    bad_only = tmp_path / "bad_only"
    bad_only.mkdir()
    (bad_only / "x.jpg").write_bytes(b"\x00")
    with pytest.raises(DataError, match="no usable images .* all 1 candidates were skipped"):
        ImageFolderDataset(bad_only, (64, 96))


def test_epoch_sampler_shards_are_disjoint_per_rank_and_resume_skips_what_was_seen():
    shards = []
    for rank in range(2):
        sampler = EpochSampler(10, num_replicas=2, rank=rank, seed=42)
        sampler.set_epoch(3)
        keys = list(sampler)
        assert all(epoch == 3 for epoch, _ in keys)
        shards.append([index for _, index in keys])
    assert len(shards[0]) == len(shards[1]) == 5
    assert set(shards[0]).isdisjoint(shards[1]) and set(shards[0]) | set(shards[1]) == set(range(10))
    sampler = EpochSampler(10, seed=42)
    sampler.set_epoch(3)
    full = list(sampler)
    sampler.set_epoch(3, start=4)
    assert list(sampler) == full[4:] and len(sampler) == 6
    sampler.set_epoch(4)
    assert [i for _, i in sampler] != [i for _, i in full]

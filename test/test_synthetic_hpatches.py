"""The offline HPatches-style generator (kp2d-make-hpatches): layout, geometry, photometry, determinism, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from kp2d_model.evaluation.synthetic import (
    BenchmarkInputError,
    generate_benchmark,
    main,
    photos_in_folder,
    read_photo,
)
from kp2d_model.photos import SKIMAGE_DATA_DIR

SIZE = (640, 480)


def copy_photos(folder: Path, *file_names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for file_name in file_names:
        shutil.copy(SKIMAGE_DATA_DIR / file_name, folder / file_name)
    return folder


def read_sequence(folder: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images = [cv2.imread(str(folder / f"{k}.ppm"), cv2.IMREAD_COLOR) for k in range(1, 7)]
    homographies = [np.loadtxt(folder / f"H_1_{k}") for k in range(2, 7)]
    return images, homographies


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two photos -> v_/i_ sequences at 640x480, seed 7."""
    photos = copy_photos(tmp_path_factory.mktemp("photos"), "coffee.png", "astronaut.png")
    out = tmp_path_factory.mktemp("hpatches")
    generate_benchmark(photos_in_folder(photos), out, seed=7, out_size=SIZE)
    return out


def test_writes_the_hpatches_layout(benchmark: Path) -> None:
    assert sorted(p.name for p in benchmark.iterdir() if p.is_dir()) == [
        "i_astronaut", "i_coffee", "v_astronaut", "v_coffee",
    ]  # fmt: skip
    for folder in benchmark.iterdir():
        if not folder.is_dir():
            continue
        names = sorted(p.name for p in folder.iterdir())
        assert names == sorted([f"{k}.ppm" for k in range(1, 7)] + [f"H_1_{k}" for k in range(2, 7)])
        images, homographies = read_sequence(folder)
        assert all(image.shape == (SIZE[1], SIZE[0], 3) for image in images)
        assert all(h.shape == (3, 3) and np.isfinite(h).all() for h in homographies)
        assert (folder / "H_1_2").read_text().count("\n") == 3
    assert (benchmark / "generation.json").is_file()


@pytest.mark.parametrize("sequence", ["v_coffee", "v_astronaut"])
def test_viewpoint_homography_warps_image_1_onto_image_k(benchmark: Path, sequence: str) -> None:
    images, homographies = read_sequence(benchmark / sequence)
    for k, h in enumerate(homographies, start=2):
        warped = cv2.warpPerspective(images[0], h, SIZE, flags=cv2.INTER_LINEAR)
        defined = cv2.warpPerspective(np.ones(SIZE[::-1], np.uint8), h, SIZE, flags=cv2.INTER_NEAREST)
        interior = cv2.erode(defined, np.ones((7, 7), np.uint8)) > 0
        assert interior.mean() > 0.3, f"{sequence} image {k} shares too little with image 1"
        difference = np.abs(warped.astype(int) - images[k - 1].astype(int)).mean(axis=2)[interior]
        assert np.median(difference) < 2.0, f"{sequence} image {k}"
        assert np.percentile(difference, 95) < 8.0, f"{sequence} image {k}"
        # and a wrong homography does not fit: the check above can fail
        shifted = cv2.warpPerspective(images[0], np.array([[1, 0, 6], [0, 1, 0], [0, 0, 1.0]]) @ h, SIZE)
        assert np.median(np.abs(shifted.astype(int) - images[k - 1].astype(int)).mean(axis=2)[interior]) > 2.0


def test_viewpoint_change_grows_along_the_sequence(benchmark: Path) -> None:
    corners = np.array([[0, 0, 1], [639, 0, 1], [639, 479, 1], [0, 479, 1.0]]).T
    for sequence in ("v_coffee", "v_astronaut"):
        _, homographies = read_sequence(benchmark / sequence)
        displacement = []
        for h in homographies:
            moved = h @ corners
            displacement.append(np.linalg.norm(moved[:2] / moved[2] - corners[:2], axis=0).mean())
        assert displacement[0] > 5.0
        assert all(b > a for a, b in zip(displacement, displacement[1:], strict=False)), displacement


def test_viewpoint_images_have_no_black_borders(benchmark: Path, tmp_path: Path) -> None:
    photo = read_photo(SKIMAGE_DATA_DIR / "coffee.png")
    photo_dark = (photo.max(axis=2) < 10).mean()
    images, _ = read_sequence(benchmark / "v_coffee")
    for k, image in enumerate(images, start=1):
        grey = image.max(axis=2)
        assert (grey.max(axis=1) > 0).all() and (grey.max(axis=0) > 0).all(), f"all-zero row/column in image {k}"
        assert (grey < 10).mean() <= photo_dark + 0.01, f"image {k} has more near-black pixels than the photo"
    # A photo with no dark pixel at all: any near-black pixel in the output would be border fill.
    rng = np.random.default_rng(0)
    bright = cv2.GaussianBlur(rng.integers(60, 256, (300, 400, 3)).astype(np.uint8), (5, 5), 0)
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "bright.png"), bright)
    generate_benchmark(photos_in_folder(photos), tmp_path / "out", seed=1, out_size=SIZE, kinds="v")
    images, _ = read_sequence(tmp_path / "out" / "v_bright")
    assert min(int(image.min()) for image in images) >= 40


def test_illumination_sequences_have_identity_homographies_and_growing_change(benchmark: Path) -> None:
    for sequence in ("i_coffee", "i_astronaut"):
        images, homographies = read_sequence(benchmark / sequence)
        assert all(np.array_equal(h, np.eye(3)) for h in homographies)
        change = [np.abs(image.astype(int) - images[0].astype(int)).mean() for image in images[1:]]
        assert change[0] > 1.0
        assert all(b > a for a, b in zip(change, change[1:], strict=False)), change
    # image 1 of both kinds is the same centre crop
    assert np.array_equal(read_sequence(benchmark / "i_coffee")[0][0], read_sequence(benchmark / "v_coffee")[0][0])


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path: Path) -> None:
    photos = photos_in_folder(copy_photos(tmp_path / "photos", "chelsea.png"))
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_benchmark(photos, tmp_path / name, seed=seed, out_size=(320, 240))
        runs[name] = {
            p.relative_to(tmp_path / name): p.read_bytes() for p in (tmp_path / name).rglob("*") if p.is_file()
        }
    assert len(runs["a"]) == 2 * 11 + 1
    assert runs["a"] == runs["b"]
    assert runs["a"][Path("v_chelsea/H_1_6")] != runs["c"][Path("v_chelsea/H_1_6")]
    assert runs["a"][Path("i_chelsea/6.ppm")] != runs["c"][Path("i_chelsea/6.ppm")]


def test_a_sequence_does_not_depend_on_the_other_photos(tmp_path: Path) -> None:
    alone = photos_in_folder(copy_photos(tmp_path / "one", "rocket.jpg"))
    together = photos_in_folder(copy_photos(tmp_path / "two", "rocket.jpg", "camera.png"))
    generate_benchmark(alone, tmp_path / "a", seed=0, out_size=(320, 240), kinds="v")
    generate_benchmark(together, tmp_path / "b", seed=0, out_size=(320, 240), kinds="v")
    for name in ("6.ppm", "H_1_6"):
        assert (tmp_path / "a" / "v_rocket" / name).read_bytes() == (tmp_path / "b" / "v_rocket" / name).read_bytes()


def test_empty_or_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a photo")
    with pytest.raises(BenchmarkInputError, match="no image files.*empty"):
        photos_in_folder(tmp_path / "empty")
    with pytest.raises(BenchmarkInputError, match="does not exist"):
        photos_in_folder(tmp_path / "missing")


def test_unreadable_or_tiny_photo_is_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    photos = copy_photos(tmp_path / "photos", "coffee.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(BenchmarkInputError, match="broken.jpg.*could not be decoded"):
        generate_benchmark(photos_in_folder(photos), tmp_path / "out")
    (photos / "broken.jpg").unlink()
    cv2.imwrite(str(photos / "tiny.png"), np.full((20, 30, 3), 128, np.uint8))
    with pytest.raises(BenchmarkInputError, match="tiny.png is 30x20 px"):
        generate_benchmark(photos_in_folder(photos), tmp_path / "out2")


def test_name_clash_and_non_empty_output_are_refused(tmp_path: Path) -> None:
    photos = copy_photos(tmp_path / "photos", "coffee.png")
    cv2.imwrite(str(photos / "Coffee.jpg"), read_photo(photos / "coffee.png"))
    with pytest.raises(BenchmarkInputError, match="both be sequence 'coffee'"):
        photos_in_folder(photos)
    (photos / "Coffee.jpg").unlink()
    out = tmp_path / "out"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(BenchmarkInputError, match="not empty"):
        generate_benchmark(photos_in_folder(photos), out)
    generate_benchmark(photos_in_folder(photos), out, out_size=(320, 240), overwrite=True)
    assert (out / "v_coffee" / "6.ppm").is_file() and (out / "something").is_file()


def test_cli_writes_a_benchmark_and_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos = copy_photos(tmp_path / "photos", "coffee.png")
    assert main(["--images", str(photos), "--out", str(tmp_path / "out"), "--seed", "2", "--size", "320x240"]) == 0
    images, _ = read_sequence(tmp_path / "out" / "v_coffee")
    assert images[0].shape == (240, 320, 3)
    (tmp_path / "empty").mkdir()
    assert main(["--images", str(tmp_path / "empty"), "--out", str(tmp_path / "out2")]) == 2
    assert "kp2d-make-hpatches: error: no image files" in capsys.readouterr().err


def test_cli_defaults_to_the_held_out_photos(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path / "out"), "--size", "96x64", "--kinds", "i"]) == 0
    sequences = sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir())
    assert "i_astronaut" in sequences and "i_rocket" in sequences
    assert all(name.startswith("i_") for name in sequences)


@pytest.mark.integration
def test_installed_console_script_runs(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "kp2d-make-hpatches"
    if not script.is_file():
        pytest.skip(f"{script} is not installed (pip install --no-deps --no-build-isolation -e .)")
    photos = copy_photos(tmp_path / "photos", "coffee.png")
    command = [str(script), "--images", str(photos), "--out", str(tmp_path / "out"), "--size", "160x120"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "wrote 2 sequences from 1 photos" in done.stdout
    assert (tmp_path / "out" / "i_coffee" / "H_1_6").read_text() == "1 0 0\n0 1 0\n0 0 1\n"


def _rotation_deg(h: np.ndarray) -> float:
    """In-plane rotation of a homography near its image centre (from the affine part at the centre)."""
    return float(np.degrees(np.arctan2(h[1, 0] - h[2, 0] * h[1, 2], h[0, 0] - h[2, 0] * h[0, 2])))


def test_strength_widens_rotation_and_tilt_and_1_is_the_ordinary_draw(tmp_path: Path) -> None:
    photos = photos_in_folder(copy_photos(tmp_path / "photos", "astronaut.png"))
    size = (160, 120)
    options = {"seed": 3, "out_size": size, "kinds": "v", "crop_fraction": 0.4}  # room: nothing shrunk
    ordinary = generate_benchmark(photos, tmp_path / "plain", **options)[0]
    explicit = generate_benchmark(photos, tmp_path / "one", strength=1.0, **options)[0]
    strong = generate_benchmark(photos, tmp_path / "strong", strength=1.6, **options)[0]
    for name in [f"{k}.ppm" for k in range(1, 7)] + [f"H_1_{k}" for k in range(2, 7)]:
        assert (ordinary / name).read_bytes() == (explicit / name).read_bytes()
    assert "strength" not in (tmp_path / "plain" / "generation.json").read_text()
    assert '"strength": 1.6' in (tmp_path / "strong" / "generation.json").read_text()
    # same draw of directions: the strong sequence's image 6 rotates 1.6x as far (keystones perturb the estimate)
    for out in ("plain", "strong"):
        assert json.loads((tmp_path / out / "generation.json").read_text())["sequences"][0]["amplitude"] == 1.0
    plain_angle = _rotation_deg(np.loadtxt(ordinary / "H_1_6"))
    strong_angle = _rotation_deg(np.loadtxt(strong / "H_1_6"))
    assert abs(plain_angle) > 10
    assert strong_angle / plain_angle == pytest.approx(1.6, rel=0.15)
    with pytest.raises(BenchmarkInputError, match="strength"):
        generate_benchmark(photos, tmp_path / "bad", strength=0.0)

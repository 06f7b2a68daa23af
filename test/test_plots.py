"""Evaluation figures: per-sequence bar chart and match pictures, written to real files and read back."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from kp2d_model.evaluation.baselines import OrbMethod
from kp2d_model.evaluation.evaluate import evaluate_method
from kp2d_model.evaluation.hpatches import find_sequences
from kp2d_model.evaluation.plots import (
    draw_matches,
    per_sequence_means,
    plot_matches,
    plot_per_sequence,
)
from kp2d_model.evaluation.synthetic import generate_benchmark, photos_in_folder
from kp2d_model.photos import SKIMAGE_DATA_DIR

RESULTS = {
    "orb": [
        {"sequence": "v_coffee", "pair": 2, "mscore": 0.4},
        {"sequence": "v_coffee", "pair": 3, "mscore": 0.2},
        {"sequence": "i_coffee", "pair": 2, "mscore": 0.6},
    ],
    "sift": [
        {"sequence": "v_coffee", "pair": 2, "mscore": 0.5},
        {"sequence": "i_coffee", "pair": 2, "mscore": math.nan},
        {"sequence": "i_coffee", "pair": 3, "mscore": None},
    ],
}


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v_coffee and i_coffee at 320x240."""
    photos = tmp_path_factory.mktemp("photos")
    shutil.copy(SKIMAGE_DATA_DIR / "coffee.png", photos / "coffee.png")
    out = tmp_path_factory.mktemp("hpatches")
    generate_benchmark(photos_in_folder(photos), out, seed=0, out_size=(320, 240))
    return out


def test_per_sequence_means_average_the_pairs_and_skip_missing_values() -> None:
    assert per_sequence_means(RESULTS["orb"], "mscore") == pytest.approx({"v_coffee": 0.3, "i_coffee": 0.6})
    means = per_sequence_means(RESULTS["sift"], "mscore")
    assert means["v_coffee"] == pytest.approx(0.5) and math.isnan(means["i_coffee"])


def test_plot_per_sequence_writes_a_readable_png(tmp_path: Path) -> None:
    path = plot_per_sequence(RESULTS, tmp_path / "plots" / "mscore.png", metric="mscore")
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 300
    assert image.std() > 10  # bars, axes and labels were drawn on the white background


def test_plot_per_sequence_rejects_missing_metric_or_empty_results(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="method 'orb', pair row 0: needs keys 'sequence' and 'c1'"):
        plot_per_sequence(RESULTS, tmp_path / "c1.png", metric="c1")
    with pytest.raises(ValueError, match="results is empty"):
        plot_per_sequence({}, tmp_path / "x.png")


def test_draw_matches_puts_images_side_by_side_with_green_inliers_and_red_outliers() -> None:
    image_a = np.full((100, 120, 3), 90, np.uint8)
    image_b = np.full((80, 100, 3), 160, np.uint8)
    points_a = np.array([[20.0, 60.0], [60.0, 90.0]])
    points_b = np.array([[30.0, 60.0], [50.0, 10.0]])
    picture = draw_matches(image_a, image_b, points_a, points_b, np.array([True, False]))
    assert picture.shape == (100, 220, 3)
    assert (picture[95, 5] == 90).all() and (picture[50, 215] == 160).all() and (picture[95, 215] == 0).all()
    green = (picture[:, :, 1] > 150) & (picture[:, :, 2] < 80) & (picture[:, :, 0] < 80)
    red = (picture[:, :, 2] > 200) & (picture[:, :, 1] < 80) & (picture[:, :, 0] < 80)
    assert green[60, 40:140].any() and not red[60, 40:140].any()  # the inlier runs along row 60
    assert red.sum() > 50
    all_inliers = draw_matches(image_a, image_b, points_a, points_b, np.array([True, True]))
    assert not ((all_inliers[:, :, 2] > 200) & (all_inliers[:, :, 1] < 80)).any()


def test_plot_matches_writes_the_picture_and_checks_shapes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 64, 3)).astype(np.uint8)
    points = rng.uniform(0, 47, (700, 2))
    path = plot_matches(image, image, points, points, rng.random(700) < 0.5, tmp_path / "m" / "pair.png")
    assert cv2.imread(str(path)).shape == (48, 128, 3)
    with pytest.raises(ValueError, match="same M matches"):
        plot_matches(image, image, points, points[:5], np.ones(700, bool), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="image_a must be an H x W"):
        plot_matches(image.astype(np.float32), image, points, points, np.ones(700, bool), tmp_path / "bad.png")


def test_plot_per_sequence_draws_the_evaluation_driver_runs(benchmark: Path, tmp_path: Path) -> None:
    run = evaluate_method(OrbMethod(), find_sequences(benchmark), (320, 240), 300)
    results = {run.method: [pair.as_dict() for pair in run.pairs]}
    assert len(results["orb"]) == 10
    means = per_sequence_means(results["orb"], "repeatability")
    assert set(means) == {"i_coffee", "v_coffee"} and all(0.0 < value <= 1.0 for value in means.values())
    for metric in ("repeatability", "localization_error", "c3", "mscore"):
        assert cv2.imread(str(plot_per_sequence(results, tmp_path / f"{metric}.png", metric))) is not None

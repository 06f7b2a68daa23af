"""The metric functions against the original's results on the fixture's detections (``metrics_inputs.npz``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import check_correctness

from kp2d_model.evaluation.metrics import (
    PairMetrics,
    homography_correctness,
    matching_score,
    mean_metrics,
    pair_metrics,
    points_inside,
    repeatability,
    top_k_indices,
    warp_points,
)

TOLERANCE = 1e-6  # the fixture README's tolerance for metrics; C1/C3/C5 are compared exactly


@pytest.fixture(scope="module")
def metric_inputs(reference_dir: Path) -> tuple[dict[str, np.ndarray], list[dict], tuple[int, int]]:
    expected = json.loads((reference_dir / "expected.json").read_text())
    with np.load(reference_dir / "metrics_inputs.npz") as arrays:
        inputs = {name: arrays[name] for name in arrays.files}
    width, height = expected["metric_functions_image_shape"]
    return inputs, expected["metric_functions"], (width, height)


def _pair(inputs: dict[str, np.ndarray], index: int) -> tuple[np.ndarray, ...]:
    prefix = f"pair{index}_"
    return tuple(inputs[prefix + key] for key in ("prob", "desc", "warped_prob", "warped_desc", "homography"))


def _assert_metrics_match(result: PairMetrics, expected: dict, label: str, exact_correctness: bool = True) -> None:
    for name in ("repeatability", "mscore"):
        assert getattr(result, name) == pytest.approx(expected[name], abs=TOLERANCE), f"{label} {name}"
    if math.isnan(expected["localization_error"]):
        assert math.isnan(result.localization_error), f"{label} localization_error should be NaN"
    else:
        assert result.localization_error == pytest.approx(expected["localization_error"], abs=TOLERANCE), label
    check_correctness(result.as_dict(), expected, exact_correctness, label)


def _top_k_boundary_is_tied(scores: np.ndarray, top_k: int) -> bool:
    """The ``top_k`` highest of ``scores`` depend on how a sort orders equal scores (a tie straddles the cut)."""
    if scores.shape[0] <= top_k:
        return False
    ordered = np.sort(scores)
    return bool(ordered[-top_k] == ordered[-top_k - 1])


def _selection_is_tie_dependent(points_1, points_2, homography, image_size, top_k) -> bool:
    """Any top-k selection of the metrics (all points for MScore, the shared view for the others) cut in a tie."""
    shared_1 = points_1[points_inside(warp_points(points_1[:, :2], homography), image_size)]
    shared_2 = points_2[points_inside(warp_points(points_2[:, :2], np.linalg.inv(homography)), image_size)]
    return any(_top_k_boundary_is_tied(p[:, 2], top_k) for p in (points_1, points_2, shared_1, shared_2))


# np.argsort (the original's top-k) orders equal scores as its sort implementation does; the fixtures reproduce
# with NumPy 1.26 and 2.x (x86-simd-sort on these CPUs), not with NumPy 1.21's (Ubuntu 22.04, Humble).
TIE_ORDER_AS_FIXTURES = np.lib.NumpyVersion(np.__version__) >= "1.26.0"


@pytest.mark.parametrize("top_k", [300, 1000], ids=lambda k: f"k{k}")
@pytest.mark.parametrize("pair", range(10), ids=lambda i: f"pair{i}")
def test_pair_metrics_match_the_original(metric_inputs, pair: int, top_k: int, ransac_as_fixtures) -> None:
    inputs, expected_pairs, image_size = metric_inputs
    assert sorted(expected["pair"] for expected in expected_pairs) == list(range(10))
    expected = next(expected for expected in expected_pairs if expected["pair"] == pair)
    points_1, descriptors_1, points_2, descriptors_2, homography = _pair(inputs, pair)
    if not TIE_ORDER_AS_FIXTURES and _selection_is_tie_dependent(points_1, points_2, homography, image_size, top_k):
        pytest.skip(f"NumPy {np.__version__}: top-{top_k} is cut inside tied scores, which this sort orders otherwise")
    result = pair_metrics(points_1, descriptors_1, points_2, descriptors_2, homography, image_size, top_k)
    _assert_metrics_match(result, expected[f"k{top_k}"], f"pair {pair} k={top_k}", ransac_as_fixtures)


def test_a_tie_at_the_top_k_cut_is_detected() -> None:
    assert _top_k_boundary_is_tied(np.array([0.1, 0.5, 0.5, 0.9]), 2)
    assert not _top_k_boundary_is_tied(np.array([0.1, 0.5, 0.5, 0.9]), 3)
    assert not _top_k_boundary_is_tied(np.array([0.5, 0.5]), 2)


def test_pair_without_repeatable_point_scores_zero_and_has_no_localization_error(metric_inputs) -> None:
    inputs, _, image_size = metric_inputs
    points_1, descriptors_1, points_2, descriptors_2, homography = _pair(inputs, 9)
    assert points_1.shape[0] == 3  # the fixture's degenerate pair
    rep, loc = repeatability(points_1, points_2, homography, image_size, top_k=300)
    assert rep == 0.0 and math.isnan(loc)
    assert homography_correctness(points_1, descriptors_1, points_2, descriptors_2, homography, image_size, 300) == (
        0.0,
        0.0,
        0.0,
    )


def test_mean_skips_pairs_without_localization_error(metric_inputs) -> None:
    inputs, expected_pairs, image_size = metric_inputs
    results = [pair_metrics(*_pair(inputs, pair["pair"]), image_size, 300) for pair in expected_pairs]
    means = mean_metrics(results)
    finite_errors = [pair["k300"]["localization_error"] for pair in expected_pairs[:9]]
    assert means["localization_error"] == pytest.approx(np.mean(finite_errors), abs=TOLERANCE)
    assert means["repeatability"] == pytest.approx(np.mean([p["k300"]["repeatability"] for p in expected_pairs]))


def test_no_shared_point_gives_zero_instead_of_an_exception(metric_inputs) -> None:
    inputs, _, image_size = metric_inputs
    points_1, descriptors_1, points_2, descriptors_2, _ = _pair(inputs, 0)
    far_away = np.array([[1.0, 0.0, 10000.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # everything leaves the image
    args = (points_1, descriptors_1, points_2, descriptors_2, far_away, image_size, 300)
    assert homography_correctness(*args) == (0.0, 0.0, 0.0)
    rep, loc = repeatability(points_1, points_2, far_away, image_size, 300)
    assert rep == 0.0 and math.isnan(loc)
    empty = np.zeros((0, 3)), np.zeros((0, descriptors_2.shape[1]), np.float32)
    assert matching_score(points_1, descriptors_1, *empty, far_away, image_size, 300) == 0.0


def test_top_k_keeps_the_highest_scores_in_ascending_order() -> None:
    scores = np.array([0.5, 0.1, 0.9, 0.3])
    assert top_k_indices(scores, 2).tolist() == [0, 2]
    assert top_k_indices(scores, 10).tolist() == [1, 3, 0, 2]


def test_warp_points_applies_the_homography_with_perspective_division() -> None:
    homography = np.array([[2.0, 0.0, 1.0], [0.0, 1.0, -1.0], [0.0, 0.0, 2.0]])
    warped = warp_points(np.array([[1.0, 2.0], [3.0, 4.0]]), homography)
    np.testing.assert_allclose(warped, [[1.5, 0.5], [3.5, 1.5]])

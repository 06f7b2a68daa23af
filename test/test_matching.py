"""Descriptor matching against a brute-force NumPy reference, and geometric verification with OpenCV."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kp2d_model.matching import Matches, MatchingError, match_descriptors, rows_product, verify_geometry


def unit_descriptors(rng: np.random.Generator, count: int, dim: int = 32) -> np.ndarray:
    desc = rng.normal(size=(count, dim)).astype(np.float32)
    return desc / np.linalg.norm(desc, axis=1, keepdims=True)


@pytest.fixture
def descriptor_pair():
    """desc_b = noisy copies of 150 of desc_a's 200 descriptors, shuffled, plus 60 unrelated ones."""
    rng = np.random.default_rng(7)
    desc_a = unit_descriptors(rng, 200)
    noisy = desc_a[:150] + rng.normal(scale=0.15, size=(150, 32)).astype(np.float32)
    desc_b = np.concatenate([noisy / np.linalg.norm(noisy, axis=1, keepdims=True), unit_descriptors(rng, 60)])
    return desc_a, desc_b[rng.permutation(len(desc_b))]


def brute_force(desc_a, desc_b, mutual, ratio=None, max_distance=None):
    """Reference: loops over a full NumPy distance matrix."""
    distances = np.sqrt(((desc_a[:, None, :].astype(np.float64) - desc_b[None, :, :]) ** 2).sum(-1))
    pairs = []
    for i in range(len(desc_a)):
        order = np.argsort(distances[i])
        j, best = order[0], distances[i, order[0]]
        if mutual and np.argmin(distances[:, j]) != i:
            continue
        if ratio is not None and len(order) > 1 and not best < ratio * distances[i, order[1]]:
            continue
        if max_distance is not None and best > max_distance:
            continue
        pairs.append((i, j, best))
    return pairs


def as_pairs(matches: Matches) -> list[tuple[int, int]]:
    return list(zip(np.asarray(matches.index_a).tolist(), np.asarray(matches.index_b).tolist(), strict=True))


@pytest.mark.parametrize("mutual", [True, False])
def test_nearest_neighbour_matches_equal_brute_force(descriptor_pair, mutual):
    desc_a, desc_b = descriptor_pair
    matches = match_descriptors(desc_a, desc_b, mutual=mutual)
    expected = brute_force(desc_a, desc_b, mutual)
    assert as_pairs(matches) == [(i, j) for i, j, _ in expected]
    np.testing.assert_allclose(matches.distance, [d for _, _, d in expected], atol=1e-4)
    assert len(matches) == (len(expected) if mutual else len(desc_a))


def test_mutual_check_removes_one_sided_matches(descriptor_pair):
    desc_a, desc_b = descriptor_pair
    assert len(match_descriptors(desc_a, desc_b, mutual=True)) < len(match_descriptors(desc_a, desc_b, mutual=False))


@pytest.mark.parametrize(("ratio", "max_distance"), [(0.8, None), (None, 0.5), (0.9, 0.6)])
def test_ratio_and_distance_filters_equal_brute_force(descriptor_pair, ratio, max_distance):
    desc_a, desc_b = descriptor_pair
    matches = match_descriptors(desc_a, desc_b, mutual=False, ratio=ratio, max_distance=max_distance)
    expected = brute_force(desc_a, desc_b, False, ratio, max_distance)
    assert as_pairs(matches) == [(i, j) for i, j, _ in expected]
    assert 0 < len(matches) < len(desc_a)


def test_torch_in_gives_torch_out_and_numpy_in_gives_numpy_out(descriptor_pair):
    desc_a, desc_b = descriptor_pair
    from_numpy = match_descriptors(desc_a, desc_b)
    from_torch = match_descriptors(torch.from_numpy(desc_a), torch.from_numpy(desc_b))
    assert isinstance(from_numpy.index_a, np.ndarray) and from_numpy.index_a.dtype == np.int64
    assert from_numpy.distance.dtype == np.float32
    assert isinstance(from_torch.index_b, torch.Tensor) and from_torch.index_b.device.type == "cpu"
    assert from_torch.distance.dtype == torch.float32
    np.testing.assert_array_equal(from_torch.index_b.numpy(), from_numpy.index_b)


@pytest.mark.parametrize(("count_a", "count_b"), [(0, 5), (5, 0), (0, 0)])
def test_empty_inputs_give_empty_matches(count_a, count_b):
    rng = np.random.default_rng(0)
    matches = match_descriptors(unit_descriptors(rng, count_a), unit_descriptors(rng, count_b), ratio=0.8)
    assert len(matches) == 0 and matches.index_a.shape == (0,) and matches.distance.dtype == np.float32
    as_torch = match_descriptors(torch.zeros(count_a, 8), torch.zeros(count_b, 8))
    assert isinstance(as_torch.index_a, torch.Tensor) and len(as_torch) == 0


def test_single_candidate_passes_the_ratio_test():
    rng = np.random.default_rng(1)
    desc = unit_descriptors(rng, 3)
    matches = match_descriptors(desc, desc[1:2], mutual=True, ratio=0.5)
    assert as_pairs(matches) == [(1, 0)]


@pytest.mark.parametrize(
    ("desc_a", "desc_b", "message"),
    [
        (np.zeros((4, 8), np.float32), np.zeros((4, 16), np.float32), "D=8.*D=16"),
        (np.zeros(8, np.float32), np.zeros((4, 8), np.float32), "desc_a.*\\(N, D\\)"),
        (np.zeros((4, 8), np.float32), torch.zeros(4, 8), "both"),
        (np.zeros((4, 8), np.int32), np.zeros((4, 8), np.int32), "floating-point"),
    ],
)
def test_bad_descriptor_inputs_raise_clear_errors(desc_a, desc_b, message):
    with pytest.raises(MatchingError, match=message):
        match_descriptors(desc_a, desc_b)


def synthetic_correspondences(rng, count=200, outliers=60):
    """Points in a 640x480 image, mapped by a known homography; the last ``outliers`` targets are random."""
    true_h = np.array([[0.9, 0.08, 30.0], [-0.05, 1.1, -12.0], [1e-4, -5e-5, 1.0]])
    points_a = rng.uniform([0, 0], [640, 480], size=(count, 2))
    mapped = np.c_[points_a, np.ones(count)] @ true_h.T
    points_b = mapped[:, :2] / mapped[:, 2:] + rng.normal(scale=0.3, size=(count, 2))
    points_b[count - outliers :] = rng.uniform([0, 0], [640, 480], size=(outliers, 2))
    return true_h, points_a, points_b


@pytest.mark.parametrize("method", ["usac", "ransac"])
def test_verify_geometry_recovers_a_known_homography_and_its_inliers(method):
    rng = np.random.default_rng(3)
    true_h, points_a, points_b = synthetic_correspondences(rng)
    matrix, inliers = verify_geometry(points_a, points_b, "homography", threshold=3.0, method=method)
    assert matrix is not None and inliers.dtype == bool and inliers.shape == (200,)
    np.testing.assert_allclose(matrix / matrix[2, 2], true_h, rtol=0.05, atol=0.5)
    assert inliers[:140].mean() > 0.97 and inliers[140:].mean() < 0.1
    corners = np.array([[0, 0, 1], [639, 0, 1], [639, 479, 1], [0, 479, 1]], dtype=np.float64)
    estimated, expected = corners @ matrix.T, corners @ true_h.T
    corner_error = np.linalg.norm(estimated[:, :2] / estimated[:, 2:] - expected[:, :2] / expected[:, 2:], axis=1)
    assert corner_error.max() < 2.0


def test_verify_geometry_fundamental_flags_outliers():
    rng = np.random.default_rng(4)
    points_3d = rng.uniform([-2, -2, 4], [2, 2, 8], size=(150, 3))
    camera = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    angle = 0.1
    rotation = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    view_a = points_3d @ camera.T
    view_b = (points_3d @ rotation.T + [0.5, 0.1, 0.0]) @ camera.T
    points_a, points_b = view_a[:, :2] / view_a[:, 2:], view_b[:, :2] / view_b[:, 2:]
    points_b[120:] = rng.uniform([0, 0], [640, 480], size=(30, 2))
    matrix, inliers = verify_geometry(points_a, points_b, "fundamental", threshold=1.0)
    assert matrix.shape == (3, 3)
    assert inliers[:120].mean() > 0.95 and inliers[120:].mean() < 0.3


@pytest.mark.parametrize(("model", "count"), [("homography", 3), ("fundamental", 7), ("homography", 0)])
def test_too_few_points_give_no_model_and_an_all_false_mask(model, count):
    points = np.random.default_rng(5).uniform(0, 100, size=(count, 2))
    matrix, inliers = verify_geometry(points, points + 1, model)
    assert matrix is None and inliers.shape == (count,) and not inliers.any()


def test_degenerate_points_give_no_model_without_raising():
    collinear = np.stack([np.arange(10.0), np.arange(10.0)], axis=1)
    matrix, inliers = verify_geometry(collinear, collinear * 2, "homography")
    assert matrix is None and not inliers.any()


def test_verify_geometry_torch_in_gives_torch_out():
    _, points_a, points_b = synthetic_correspondences(np.random.default_rng(6))
    matrix, inliers = verify_geometry(torch.from_numpy(points_a).float(), torch.from_numpy(points_b).float())
    assert isinstance(matrix, torch.Tensor) and matrix.shape == (3, 3)
    assert isinstance(inliers, torch.Tensor) and inliers.dtype == torch.bool and int(inliers.sum()) > 130


@pytest.mark.parametrize(
    ("points_a", "points_b", "message"),
    [
        (np.zeros((5, 3)), np.zeros((5, 3)), "points_a.*\\(N, 2\\)"),
        (np.zeros((5, 2)), np.zeros((6, 2)), "5 points.*6"),
        (np.full((5, 2), np.nan), np.zeros((5, 2)), "NaN"),
    ],
)
def test_bad_point_inputs_raise_clear_errors(points_a, points_b, message):
    with pytest.raises(MatchingError, match=message):
        verify_geometry(points_a, points_b)


def test_unknown_model_is_rejected():
    with pytest.raises(MatchingError, match="affine"):
        verify_geometry(np.zeros((5, 2)), np.zeros((5, 2)), model="affine")


# --- float32 matching decides as exact arithmetic wherever float32 rounding cannot flip the decision -------------

UNIT_ROUNDING = 2.0**-24  # float32


def gamma(n: int) -> float:
    """Higham's gamma_n = n u / (1 - n u): bound on the relative error of an n-term float32 sum of products, in
    any summation order (blocked GEMM kernels, FMA, pairwise reductions alike)."""
    return n * UNIT_ROUNDING / (1 - n * UNIT_ROUNDING)


def exact_decisions(desc_a: np.ndarray, desc_b: np.ndarray, ratio: float | None, max_distance: float | None):
    """Float64 brute force of ``match_descriptors`` (mutual check on) -> (pairs {i: (j, distance)} expected, rows
    whose every decision float32 rounding of the function cannot flip).

    The function's squared distances are float32 sums of D + 2 products (``squared_distances``: ``[a, |a|^2, 1]
    . [-2 b, 1, |b|^2]``, norms rounded as D-term sums), so ``|S32 - S| <= E = gamma_{D+2} (|a|^2 + |b|^2 +
    2 sum |a_k b_k|) + gamma_D (|a|^2 + |b|^2)``; a nearest neighbour is decided when the gap to the second
    exceeds twice the largest E of its row (column). Distances of kept pairs are computed directly
    (``|a - b|``, relative error <= gamma_{D+4}), so a ratio / max_distance test is decided when its two sides
    differ by more than twice that."""
    a, b = desc_a.astype(np.float64), desc_b.astype(np.float64)
    dim = a.shape[1]
    norms_a, norms_b = (a * a).sum(1), (b * b).sum(1)
    squared = norms_a[:, None] + norms_b[None, :] - 2.0 * a @ b.T
    bound = gamma(dim + 2) * (norms_a[:, None] + norms_b[None, :] + 2.0 * np.abs(a) @ np.abs(b).T)
    bound += gamma(dim) * (norms_a[:, None] + norms_b[None, :])
    rows, columns = np.sort(squared, axis=1), np.sort(squared, axis=0)
    row_decided = rows[:, 1] - rows[:, 0] > 2 * bound.max(1)
    column_decided = columns[1] - columns[0] > 2 * bound.max(0)
    nearest_b, nearest_a = squared.argmin(1), squared.argmin(0)
    distance = np.sqrt(np.maximum(squared, 0.0))
    relative = 2 * gamma(dim + 4)
    expected, decided = {}, []
    for i, j in enumerate(nearest_b):
        known = row_decided[i] and column_decided[j]
        keep = nearest_a[j] == i
        d1 = distance[i, j]
        if ratio is not None:
            d2 = np.sqrt(max(rows[i, 1], 0.0))
            known &= rows[i, 2] - rows[i, 1] > 2 * bound[i].max()  # the second nearest is decided too
            known &= abs(d1 - ratio * d2) > relative * (d1 + ratio * d2)
            keep &= d1 < ratio * d2
        if max_distance is not None:
            known &= abs(d1 - max_distance) > relative * d1
            keep &= d1 <= max_distance
        if known:
            decided.append(i)
            if keep:
                expected[i] = (int(j), d1)
    return expected, np.array(decided)


@pytest.fixture(scope="module")
def detector_descriptors():
    """Descriptors of two 640 x 480 frames of a panning camera (the bundled model, fp32, top 1000 each)."""
    from kp2d_model import KeypointDetector
    from kp2d_model.evaluation.synthetic import held_out_photos, read_photo
    from kp2d_model.track_bench.sequences import make_sequence

    sequence = make_sequence(read_photo(held_out_photos()[0].path), "pan", 2, (640, 480))
    detector = KeypointDetector(device="cpu", top_k=1000, precision="fp32")
    first, second = (detector(frame).descriptors.numpy() for frame in sequence.frames[:2])
    return first, second


def random_descriptor_pair(rng: np.random.Generator, count: int = 1000, dim: int = 256):
    """``count`` random unit descriptors; noisy copies of 70 % of them among fresh ones, shuffled, with norms from
    0.8 to 1.25 (the norms must count, not only the dot products)."""
    desc_a = unit_descriptors(rng, count, dim)
    copies = int(0.7 * count)
    noisy = desc_a[:copies] + rng.normal(scale=0.05, size=(copies, dim)).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    desc_b = np.concatenate([noisy, unit_descriptors(rng, count - copies, dim)])
    desc_b *= rng.uniform(0.8, 1.25, size=(count, 1)).astype(np.float32)
    return desc_a, desc_b[rng.permutation(count)]


@pytest.mark.parametrize("source", ["detector", "random"])
@pytest.mark.parametrize(("ratio", "max_distance"), [(None, None), (0.9, None), (None, 0.8), (0.8, 1.0)])
def test_fast_matching_equals_the_float64_brute_force_wherever_float32_can_decide(
    request, source, ratio, max_distance
):
    if source == "detector":
        desc_a, desc_b = request.getfixturevalue("detector_descriptors")
    else:
        desc_a, desc_b = random_descriptor_pair(np.random.default_rng(11))
    matches = match_descriptors(torch.from_numpy(desc_a), torch.from_numpy(desc_b), ratio=ratio,
                                max_distance=max_distance)  # fmt: skip
    expected, decided = exact_decisions(desc_a, desc_b, ratio, max_distance)
    assert len(decided) > 0.9 * len(desc_a)  # the comparison covers nearly every row
    found = {int(i): (int(j), float(d)) for i, j, d in zip(matches.index_a, matches.index_b, matches.distance,
                                                           strict=True)}  # fmt: skip
    found_decided = {i: found[i] for i in decided if i in found}
    assert sorted(found_decided) == sorted(expected)
    assert all(found_decided[i][0] == expected[i][0] for i in expected)
    distances = np.array([[found_decided[i][1], expected[i][1]] for i in expected]).reshape(-1, 2)
    np.testing.assert_allclose(distances[:, 0], distances[:, 1], rtol=2 * gamma(desc_a.shape[1] + 4), atol=0)
    assert len(expected) > 100  # matches exist in this setting


def test_exact_duplicates_match_at_distance_zero_and_ties_go_to_the_first_index():
    rng = np.random.default_rng(12)
    desc_a = unit_descriptors(rng, 50, 256)
    desc_b = np.concatenate([desc_a[:1], desc_a])  # b0 and b1 are both a0
    matches = match_descriptors(desc_a, desc_b, mutual=False)
    assert matches.index_b[0] == 0 and matches.distance[0] == 0.0
    np.testing.assert_array_equal(matches.index_b[1:], np.arange(2, 51))
    assert (matches.distance == 0).all()


@pytest.mark.parametrize("shape_a, shape_b", [((1000, 272), (900, 272)), ((1, 16), (3, 16)), ((5, 7), (1, 7))])
def test_rows_product_is_the_float32_matrix_product(shape_a, shape_b):
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(*shape_a, generator=generator), torch.randn(*shape_b, generator=generator)
    product = rows_product(a, b)
    assert product.shape == (a.shape[0], b.shape[0]) and product.dtype == torch.float32
    exact = a.double() @ b.double().T
    # Any float32 summation order: |error| <= gamma_K * sum_k |a_ik b_jk| (Higham).
    bound = gamma(a.shape[1]) * (a.double().abs() @ b.double().abs().T)
    assert bool(((product.double() - exact).abs() <= bound).all())


def test_rows_product_without_onednn_is_the_same_product(monkeypatch):
    a, b = torch.randn(50, 24), torch.randn(30, 24)
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    assert torch.allclose(rows_product(a, b), a @ b.T, atol=1e-5)


def test_rows_product_takes_non_contiguous_and_empty_inputs():
    a = torch.randn(64, 40)[:, :32]  # rows strided
    b = torch.randn(32, 20).T  # (20, 32) transposed view
    assert torch.allclose(rows_product(a, b), a @ b.T, atol=1e-5)
    assert rows_product(torch.zeros(0, 8), torch.zeros(4, 8)).shape == (0, 4)
    assert rows_product(torch.zeros(3, 8), torch.zeros(0, 8)).shape == (3, 0)

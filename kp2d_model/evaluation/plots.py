"""Figures for the evaluation (``kp2d-evaluate --plots DIR``): per-sequence bar charts and match pictures.

Bar charts use matplotlib's object-oriented API with the Agg canvas (no pyplot, no display, no global
backend switch); match pictures are drawn with OpenCV at the images' own resolution.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

INLIER_BGR = (0, 200, 0)  # green
OUTLIER_BGR = (0, 0, 255)  # red


def per_sequence_means(rows: Sequence[Mapping[str, object]], metric: str, method: str = "?") -> dict[str, float]:
    """Mean of ``metric`` over each sequence's pairs; None and non-finite values are skipped (NaN if none is left).

    ``rows``: per-pair dicts with at least ``"sequence"`` (str) and ``metric`` (a number, or None for "no value"
    as ``PairResult.as_dict()`` writes a missing localization error).
    """
    values: dict[str, list[float]] = {}
    for index, row in enumerate(rows):
        if "sequence" not in row or metric not in row:
            raise ValueError(
                f"method {method!r}, pair row {index}: needs keys 'sequence' and {metric!r}, has {sorted(row)}"
            )
        value = row[metric]
        values.setdefault(str(row["sequence"]), []).append(math.nan if value is None else float(value))  # type: ignore[arg-type]
    means = {}
    for sequence, sequence_values in values.items():
        finite = [value for value in sequence_values if math.isfinite(value)]
        means[sequence] = float(np.mean(finite)) if finite else math.nan
    return means


def plot_per_sequence(
    results: Mapping[str, Sequence[Mapping[str, object]]], path: Path, metric: str = "mscore", title: str | None = None
) -> Path:
    """Grouped bar chart of ``metric`` per sequence (x) and method (one colour each); returns ``path``.

    ``results``: method name -> per-pair rows, each a dict with ``"sequence"`` (e.g. ``"v_graffiti"``) and a
    numeric value under ``metric`` (other keys are ignored), e.g.
    ``{"orb": [{"sequence": "v_boat", "pair": 2, "mscore": 0.41, ...}, ...], "kp2d": [...]}``, i.e.
    ``{run.method: [pair.as_dict() for pair in run.pairs]}`` for the evaluation driver's runs of one setting.
    Metric names: ``repeatability``, ``localization_error``, ``c1``, ``c3``, ``c5``, ``mscore``.
    Each bar is the mean over that sequence's pairs; the legend gives each method's mean over sequences.
    The file type follows the suffix of ``path`` (``.png``, ``.svg``, ``.pdf``); parent folders are created.
    """
    if not results:
        raise ValueError("plot_per_sequence: results is empty (expected method name -> per-pair rows)")
    means = {method: per_sequence_means(rows, metric, method) for method, rows in results.items()}
    sequences = sorted({sequence for method_means in means.values() for sequence in method_means})
    if not sequences:
        raise ValueError("plot_per_sequence: no pair rows in results")

    methods = list(means)
    bar_width = 0.8 / len(methods)
    figure = Figure(figsize=(max(6.0, 0.22 * len(sequences) * len(methods) + 1.5), 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = np.arange(len(sequences))
    for offset, method in enumerate(methods):
        heights = [means[method].get(sequence, math.nan) for sequence in sequences]
        finite = [height for height in heights if math.isfinite(height)]
        label = f"{method} (mean {np.mean(finite):.3f})" if finite else f"{method} (no values)"
        axes.bar(positions + (offset - (len(methods) - 1) / 2) * bar_width, heights, bar_width, label=label)
    axes.set_xticks(positions, sequences, rotation=90, fontsize=7)
    axes.set_xlim(-0.6, len(sequences) - 0.4)
    axes.set_ylabel(metric)
    axes.set_title(title or f"{metric} per sequence")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def _as_bgr(image: np.ndarray, name: str) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"plot_matches: {name} must be an H x W (x 3) uint8 array")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] != 3:
        raise ValueError(f"plot_matches: {name} must have 3 channels (BGR), has {image.shape[2]}")
    return image


def draw_matches(
    image_a: np.ndarray,
    image_b: np.ndarray,
    points_a: np.ndarray,
    points_b: np.ndarray,
    inlier_mask: np.ndarray,
    max_drawn: int = 150,
) -> np.ndarray:
    """Side-by-side BGR picture (max height x (W_a + W_b) x 3) with match lines: inliers green, outliers red.

    ``points_a``/``points_b``: (M, 2+) matched pixel coordinates (x, y first), row i of one matches row i of
    the other; ``inlier_mask``: (M,) bool. Images are H x W x 3 uint8 BGR (or grey). At most ``max_drawn``
    matches are drawn (an evenly spaced subset, inliers on top); the counts printed are of all matches.
    """
    image_a, image_b = _as_bgr(image_a, "image_a"), _as_bgr(image_b, "image_b")
    points_a = np.asarray(points_a, dtype=np.float64).reshape(len(points_a), -1)
    points_b = np.asarray(points_b, dtype=np.float64).reshape(len(points_b), -1)
    inliers = np.asarray(inlier_mask, dtype=bool).reshape(-1)
    if not (len(points_a) == len(points_b) == len(inliers)) or (
        len(points_a) and min(points_a.shape[1], points_b.shape[1]) < 2
    ):
        raise ValueError(
            f"plot_matches: points_a {points_a.shape}, points_b {points_b.shape} and inlier_mask {inliers.shape} "
            "must describe the same M matches, with (x, y) in the first two columns"
        )
    height = max(image_a.shape[0], image_b.shape[0])
    width_a = image_a.shape[1]
    canvas = np.zeros((height, width_a + image_b.shape[1], 3), np.uint8)
    canvas[: image_a.shape[0], :width_a] = image_a
    canvas[: image_b.shape[0], width_a:] = image_b

    drawn = np.arange(len(inliers))
    if len(drawn) > max_drawn:
        drawn = drawn[np.linspace(0, len(drawn) - 1, max_drawn).round().astype(int)]
    drawn = np.concatenate([drawn[~inliers[drawn]], drawn[inliers[drawn]]])  # outliers first, inliers on top
    for index in drawn:
        colour = INLIER_BGR if inliers[index] else OUTLIER_BGR
        start = (round(points_a[index, 0]), round(points_a[index, 1]))
        end = (round(points_b[index, 0]) + width_a, round(points_b[index, 1]))
        cv2.line(canvas, start, end, colour, 1, cv2.LINE_AA)
        cv2.circle(canvas, start, 2, colour, -1, cv2.LINE_AA)
        cv2.circle(canvas, end, 2, colour, -1, cv2.LINE_AA)

    text = f"{int(inliers.sum())} inliers / {len(inliers)} matches"
    cv2.rectangle(canvas, (0, 0), (12 + 9 * len(text), 24), (0, 0, 0), -1)
    cv2.putText(canvas, text, (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def plot_matches(
    image_a: np.ndarray,
    image_b: np.ndarray,
    points_a: np.ndarray,
    points_b: np.ndarray,
    inlier_mask: np.ndarray,
    path: Path,
    max_drawn: int = 150,
) -> Path:
    """Write ``draw_matches(...)`` to ``path`` (any format OpenCV writes, e.g. ``.png``); returns ``path``."""
    picture = draw_matches(image_a, image_b, points_a, points_b, inlier_mask, max_drawn)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), picture):
        raise OSError(f"plot_matches: could not write {path}")
    return path

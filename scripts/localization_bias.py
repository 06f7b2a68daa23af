"""Is a method's localization error random noise, a coordinate-convention offset, or a per-image bias?

For every viewpoint pair of an HPatches-style folder, at one resolution, this takes the evaluation's own
cross-checked matches (top-k, as the C-metrics) and keeps the correct ones (true-homography error < 3 px).
Their residuals ``r = H(x1) - x2`` (px) are summarised three ways:

* median |r|: the localization noise;
* mean over pairs of |mean r of the pair|: a bias shared by the matches of one pair, which RANSAC cannot
  average away and which moves the estimated homography's corners (C1/C3);
* rms |r| before and after fitting one constant offset ``d`` added to every keypoint of every image
  (``r ~ (J - I) d``, J the homography's Jacobian at x1): if the fit removes the bias, the method's
  coordinates are shifted (a pixel-convention bug); if not, the bias depends on the image content.

    .venv/bin/python scripts/localization_bias.py --hpatches data/hpatches_synthetic \
        --method kp2d --method sift [--checkpoint CKPT] [--resolution 320x240]
"""

from __future__ import annotations

import argparse

import numpy as np

from kp2d_model.checkpoint import CheckpointError, default_checkpoint_path
from kp2d_model.evaluation import metrics
from kp2d_model.evaluation.cli import parse_resolution, positive_int
from kp2d_model.evaluation.hpatches import HPatchesError, find_sequences, load_sequence
from kp2d_model.evaluation.methods import METHOD_NAMES, get_method

CORRECT_PX = 3.0
JACOBIAN_STEP_PX = 1e-3


def jacobian(homography: np.ndarray, point: np.ndarray) -> np.ndarray:
    """(2, 2) derivative of the homography at ``point`` (x, y), by central differences."""
    columns = []
    for step in np.eye(2) * JACOBIAN_STEP_PX:
        ahead, behind = metrics.warp_points(np.stack([point + step, point - step]), homography)
        columns.append((ahead - behind) / (2 * JACOBIAN_STEP_PX))
    return np.stack(columns, axis=1)


def residual_summary(method, root: str, resolution: tuple[int, int], top_k: int) -> dict[str, float]:
    """Residual statistics of ``method``'s correct matches over all viewpoint pairs of ``root``."""
    pair_biases, design, residuals = [], [], []
    for sequence in find_sequences(root, "v"):
        loaded = load_sequence(sequence, resolution)
        points_1, descriptors_1 = method(loaded.images[0])
        for k, homography in loaded.homographies.items():
            points_k, descriptors_k = method(loaded.images[k - 1])
            matches = metrics.homography_matches(
                points_1, descriptors_1, points_k, descriptors_k, homography, resolution, top_k, method.norm
            )
            residual = metrics.warp_points(matches.xy_1, homography) - matches.xy_2
            correct = np.linalg.norm(residual, axis=1) < CORRECT_PX
            if not correct.any():
                continue
            pair_biases.append(np.linalg.norm(residual[correct].mean(axis=0)))
            residuals.append(residual[correct])
            design += [jacobian(homography, point) - np.eye(2) for point in matches.xy_1[correct]]
    if not residuals:
        raise ValueError(f"{root}: no viewpoint pair (v_*) with a correct match at {resolution[0]}x{resolution[1]}")
    stacked = np.concatenate(residuals)
    design_matrix = np.concatenate(design)  # (2M, 2): rows (J - I) of every correct match
    offset, *_ = np.linalg.lstsq(design_matrix, stacked.reshape(-1), rcond=None)
    remaining = stacked.reshape(-1) - design_matrix @ offset
    return {
        "correct_matches": len(stacked),
        "median_error_px": float(np.median(np.linalg.norm(stacked, axis=1))),
        "mean_pair_bias_px": float(np.mean(pair_biases)),
        "max_pair_bias_px": float(np.max(pair_biases)),
        "rms_px": float(np.sqrt(np.mean(stacked**2))),
        "rms_after_constant_offset_px": float(np.sqrt(np.mean(remaining**2))),
        "constant_offset_px": [round(float(value), 3) for value in offset],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hpatches", required=True, help="HPatches-style folder (its v_* sequences are used)")
    parser.add_argument("--method", action="append", choices=METHOD_NAMES, required=True)
    parser.add_argument("--checkpoint", help="kp2d checkpoint (default: the bundled model)")
    parser.add_argument(
        "--resolution", type=parse_resolution, default=(320, 240), help="WIDTHxHEIGHT (default 320x240)"
    )
    parser.add_argument("--top-k", type=positive_int, default=300)
    args = parser.parse_args()
    for name in args.method:
        options = {}
        if name == "kp2d":
            options = {"device": "cpu", "checkpoint": args.checkpoint or default_checkpoint_path()}
        try:  # the same input errors as kp2d-evaluate, reported without a traceback
            summary = residual_summary(get_method(name, **options), args.hpatches, args.resolution, args.top_k)
        except (HPatchesError, CheckpointError, ValueError, RuntimeError, OSError) as error:
            parser.exit(1, f"{parser.prog}: error: {error}\n")
        figures = (
            f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}" for key, value in summary.items()
        )
        print(name, " ".join(figures))


if __name__ == "__main__":
    main()

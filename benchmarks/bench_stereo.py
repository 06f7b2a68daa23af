"""Stereo disparity accuracy and cost: KP2D keypoints matched along rows on rendered rectified pairs.

Pairs as camera_sim's stereo mode renders them: the astronaut photo seen through a view homography (several
views), and the same view moved left by the disparity ``d`` (a fronto-parallel plane at depth ``fx B / d``).
For each ``d``: matches, median |disparity - d|, share within 0.5 px, with and without the sub-pixel patch
refinement (``kp2d_model.stereo.refine_disparity``); and the time of ``match_stereo`` with / without refinement
relative to one detector call (round-robin, median of repeats, so machine load hits all alike).

    .venv/bin/python benchmarks/bench_stereo.py --out benchmarks/results/stereo.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import skimage
import torch

from kp2d_model import KeypointDetector
from kp2d_model.stereo import StereoConfig, match_stereo

VIEWS = [np.array([[s, 0, -x], [0, s, -y], [0, 0, 1]], float) for s, x, y in ((1.2, 50, 60), (1.0, 120, 40),
                                                                             (1.4, 200, 220))]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disparities", type=float, nargs="+", default=[5.3, 12.8, 16.0, 25.6, 40.1])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--top-k", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    photo = cv2.imread(str(Path(skimage.data.data_dir) / "astronaut.png"))
    detector = KeypointDetector(device="cpu", top_k=args.top_k)
    size = (args.width, args.height)
    config = StereoConfig(row_tolerance=1.5, max_disparity=128.0)

    def render(homography: np.ndarray) -> np.ndarray:
        return cv2.warpPerspective(photo, homography, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

    accuracy = []
    timing_case = None
    for d in args.disparities:
        row = {"disparity_px": d, "plain": [], "refined": []}
        for view in VIEWS:
            left = render(view)
            right = render(np.array([[1, 0, -d], [0, 1, 0], [0, 0, 1]], float) @ view)
            found_left, found_right = detector(left, channel_order="bgr"), detector(right, channel_order="bgr")
            grey = (cv2.cvtColor(left, cv2.COLOR_BGR2GRAY), cv2.cvtColor(right, cv2.COLOR_BGR2GRAY))
            inputs = (found_left.keypoints, found_left.descriptors, found_right.keypoints, found_right.descriptors)
            for key, images in (("plain", None), ("refined", grey)):
                matches = match_stereo(*inputs, config, images=images)
                error = np.abs(matches.disparity - d)
                row[key].append((len(matches), float(np.median(error)), float(np.mean(error < 0.5))))
            timing_case = (left, inputs, grey)
        for key in ("plain", "refined"):
            values = np.array(row[key])
            row[key] = {"matches_mean": float(values[:, 0].mean()), "median_error_px": float(values[:, 1].mean()),
                        "share_within_0.5px": float(values[:, 2].mean())}  # fmt: skip
        accuracy.append(row)
        print(json.dumps(row))

    left, inputs, grey = timing_case
    timings: dict[str, list[float]] = {"detector_call": [], "match_stereo": [], "match_stereo_refined": []}
    for _ in range(args.repeats):  # round-robin
        for name, run in (("detector_call", lambda: detector(left, channel_order="bgr")),
                          ("match_stereo", lambda: match_stereo(*inputs, config)),
                          ("match_stereo_refined", lambda: match_stereo(*inputs, config, images=grey))):  # fmt: skip
            start = time.perf_counter()
            run()
            timings[name].append((time.perf_counter() - start) * 1e3)
    medians = {name: statistics.median(values) for name, values in timings.items()}
    result = {
        "size": size, "top_k": args.top_k, "views": len(VIEWS), "accuracy": accuracy,
        "median_ms": medians,
        "ratio_to_detector_call": {name: medians[name] / medians["detector_call"] for name in medians},
        "load": os.getloadavg(), "torch_threads": torch.get_num_threads(), "machine": platform.processor(),
    }  # fmt: skip
    print(json.dumps({k: result[k] for k in ("median_ms", "ratio_to_detector_call", "load")}))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

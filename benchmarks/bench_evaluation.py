"""HPatches evaluation throughput: pairs per second, model forward included (median of round-robin repeats).

Variants, all on the same sequences, resolution and top-k, each a full pass (read, resize, network, metrics):

* ``original_loop``: the original's loop, re-implemented: per pair (1, k) read and resize both images, two
  batch-1 forwards of the plain eval-mode network (unfused BatchNorm, the original's computation), then the
  metrics, all sequential (the original's own code needs CUDA and cannot run here);
* ``driver_reference_forward``: ``evaluate_method`` (image 1 described once per sequence, the six images as one
  batch, sequences in parallel worker threads) with the plain network (``fuse_batchnorm=False``);
* ``driver``: ``evaluate_method`` with the default ``KeyPointNetMethod`` (BatchNorm folded, channels-last, last
  descriptor convolution at the keypoints only) -- what ``kp2d-evaluate`` runs.

One pass of each variant per round, so load from other processes on a shared machine hits all alike. Reports
wall-clock pairs/s (median, min, max) and process CPU seconds per pair (all threads; less sensitive to load).

    .venv/bin/python benchmarks/bench_evaluation.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from kp2d_model.evaluation.evaluate import evaluate_method
from kp2d_model.evaluation.hpatches import PAIR_INDICES, HPatchesSequence, find_sequences, read_image, scale_homography
from kp2d_model.evaluation.methods import KeyPointNetMethod
from kp2d_model.evaluation.metrics import pair_metrics

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT.parent / "shared" / "fixtures" / "kp2d_reference"
ORIGINAL_PAIRS_PER_SECOND = 4.6  # the original's loop at 320x240 on this machine (docs/kp2d-reference.md)


def original_loop(
    method: KeyPointNetMethod, sequences: Sequence[HPatchesSequence], resolution: tuple[int, int], top_k: int
) -> int:
    """The original evaluation's structure: every pair on its own, both images through the network, sequential."""
    pairs = 0
    for sequence in sequences:
        for k in PAIR_INDICES:
            image_1, image_k = read_image(sequence.image_path(1)), read_image(sequence.image_path(k))
            homography = scale_homography(
                sequence.homographies[k], image_1.shape[1::-1], image_k.shape[1::-1], resolution
            )
            points_1, descriptors_1 = method(cv2.resize(image_1, resolution))
            points_k, descriptors_k = method(cv2.resize(image_k, resolution))
            pair_metrics(points_1, descriptors_1, points_k, descriptors_k, homography, resolution, top_k)
            pairs += 1
    return pairs


def measure(function: Callable[[], int]) -> tuple[float, float]:
    """Run ``function`` (returns the number of pairs) -> (wall pairs/s, process CPU seconds per pair)."""
    wall, cpu = time.perf_counter(), time.process_time()
    pairs = function()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return pairs / wall, cpu / pairs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hpatches", type=Path, default=FIXTURES / "mini_hpatches")
    parser.add_argument("--checkpoint", type=Path, default=FIXTURES / "v4_reference.ckpt")
    parser.add_argument("--resolution", default="320x240")
    parser.add_argument("--top-k", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "evaluation.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    resolution = tuple(int(value) for value in args.resolution.split("x"))
    sequences = find_sequences(args.hpatches)
    plain = KeyPointNetMethod(args.checkpoint, device="cpu", fuse_batchnorm=False)
    fast = KeyPointNetMethod(args.checkpoint, device="cpu")
    variants: dict[str, Callable[[], int]] = {
        "original_loop": lambda: original_loop(plain, sequences, resolution, args.top_k),
        "driver_reference_forward": lambda: len(evaluate_method(plain, sequences, resolution, args.top_k).pairs),
        "driver": lambda: len(evaluate_method(fast, sequences, resolution, args.top_k).pairs),
    }
    load_before = os.getloadavg()
    for function in variants.values():  # warm-up: oneDNN primitives, OpenCV, page cache
        function()
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, function in variants.items():
            samples[name].append(measure(function))
    load_after = os.getloadavg()

    results: dict[str, object] = {}
    for name, runs in samples.items():
        rates, cpu = [rate for rate, _ in runs], [seconds for _, seconds in runs]
        results[name] = {
            "pairs_per_second_median": statistics.median(rates),
            "pairs_per_second_min": min(rates),
            "pairs_per_second_max": max(rates),
            "cpu_seconds_per_pair_median": statistics.median(cpu),
            "runs": len(runs),
        }
    driver = results["driver"]["pairs_per_second_median"]  # type: ignore[index]
    baseline = results["original_loop"]["pairs_per_second_median"]  # type: ignore[index]
    report = {
        "hpatches": str(args.hpatches),
        "pairs": 5 * len(sequences),
        "checkpoint": str(args.checkpoint),
        "resolution": list(resolution),
        "top_k": args.top_k,
        "results": results,
        "driver_over_original_loop": driver / baseline,
        "driver_over_original_4_6_pairs_per_second": driver / ORIGINAL_PAIRS_PER_SECOND,
        "environment": {
            "torch": torch.__version__,
            "opencv": cv2.__version__,
            "numpy": np.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "load_average_before": load_before,
            "load_average_after": load_after,
            "repeats": args.repeats,
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")

    print(
        f"| variant ({resolution[0]}x{resolution[1]}, top-{args.top_k}) | pairs/s (median) | min | max | CPU s/pair |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, values in results.items():
        print(
            f"| {name} | {values['pairs_per_second_median']:.2f} | {values['pairs_per_second_min']:.2f} | "  # type: ignore[index]
            f"{values['pairs_per_second_max']:.2f} | {values['cpu_seconds_per_pair_median']:.3f} |"  # type: ignore[index]
        )
    print(f"driver / original loop: {driver / baseline:.2f}x; load average {load_before} -> {load_after}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

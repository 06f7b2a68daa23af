"""Inference benchmark: network forward, full detector and descriptor matching (ms per call, median).

Measures, at 320x240 and 640x480 on a real photo (skimage's astronaut, BGR):

* ``forward_plain``: the original-equivalent eval forward (``load_keypoint_net`` network, unfused BN,
  descriptors sampled at every cell) on a prepared normalised tensor;
* ``forward_inference``: the detector's network (BatchNorm folded, channels-last, dense descriptor map);
* ``detector``: ``KeypointDetector(top_k=1000)`` from the uint8 image to sorted keypoints + descriptors;
* ``detector_x2.5``: the same with ``input_scale=2.5`` (the network on the image resized x2.5);
* ``matching``: ``match_descriptors`` on 1,000 x 1,000 256-dim descriptors (mutual check).

The variants run round-robin (one call of each per round) so that load from other processes on a
shared machine affects all of them alike. Writes JSON (default ``benchmarks/results/inference.json``)
and prints a Markdown table.

    .venv/bin/python benchmarks/bench_inference.py --checkpoint ../shared/fixtures/kp2d_reference/v4_reference.ckpt
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import skimage.data
import torch

from kp2d_model.checkpoint import load_keypoint_net
from kp2d_model.detector import KeypointDetector
from kp2d_model.image import image_to_tensor
from kp2d_model.matching import match_descriptors

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO_ROOT.parent / "shared" / "fixtures" / "kp2d_reference" / "v4_reference.ckpt"
RESOLUTIONS = ((320, 240), (640, 480))


def round_robin(functions: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Call each function ``warmup`` times, then ``repeats`` rounds of one call each; times in ms."""
    for _ in range(warmup):
        for function in functions.values():
            function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append((time.perf_counter() - start) * 1000.0)
    return times


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "median_ms": statistics.median(samples),
        "min_ms": min(samples),
        "max_ms": max(samples),
        "runs": len(samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "inference.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    network = load_keypoint_net(args.checkpoint)
    detector = KeypointDetector(network, device="cpu", top_k=1000)
    detector_scaled = KeypointDetector(network, device="cpu", top_k=1000, input_scale=2.5)
    photo = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    results: dict[str, dict] = {}
    rows = []
    for width, height in RESOLUTIONS:
        image = cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA)
        tensor = image_to_tensor(image)
        batch = image[None]

        def forward_plain(tensor=tensor):
            with torch.inference_mode():
                return network(tensor)

        times = round_robin(
            {
                "forward_plain": forward_plain,
                "forward_inference": lambda batch=batch: detector.run_dense(batch),
                "detector": lambda image=image: detector(image),
                "detector_x2.5": lambda image=image: detector_scaled(image),
            },
            args.warmup,
            args.repeats,
        )
        key = f"{width}x{height}"
        results[key] = {name: summary(samples) for name, samples in times.items()}
        results[key]["keypoints"] = len(detector(image))
        ratio = results[key]["detector"]["median_ms"] / results[key]["forward_plain"]["median_ms"]
        results[key]["detector_over_forward_plain"] = ratio
        ratio_x2 = results[key]["detector_x2.5"]["median_ms"] / results[key]["detector"]["median_ms"]
        results[key]["detector_x2.5_over_detector"] = ratio_x2
        rows.append(
            f"| {key} | {results[key]['forward_plain']['median_ms']:.1f} | "
            f"{results[key]['forward_inference']['median_ms']:.1f} | {results[key]['detector']['median_ms']:.1f} | "
            f"{ratio:.2f} | {results[key]['detector_x2.5']['median_ms']:.1f} | {ratio_x2:.2f} |"
        )

    rng = np.random.default_rng(0)
    desc_a, desc_b = (
        torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(1000, 256))).float()) for _ in "ab"
    )
    times = round_robin({"matching": lambda: match_descriptors(desc_a, desc_b)}, args.warmup, args.repeats)
    results["matching_1000x1000"] = summary(times["matching"])

    results["environment"] = {
        "torch": torch.__version__,
        "opencv": cv2.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "checkpoint": str(args.checkpoint),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average_1min_at_end": os.getloadavg()[0],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")

    print(
        f"threads {torch.get_num_threads()}, median of {args.repeats} runs after {args.warmup} warm-up rounds, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n"
    )
    print(
        "| resolution | forward, plain (ms) | forward, inference path (ms) | detector, top_k 1000 (ms) "
        "| detector / plain | detector, input_scale 2.5 (ms) | x2.5 / detector |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nmatching 1,000 x 1,000 (mutual NN, 256-dim): {results['matching_1000x1000']['median_ms']:.1f} ms")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

"""Inference benchmark: the detector on every engine x precision, at 320x240 / 640x480, input_scale 1 / 2.5.

For each setting (resolution x input_scale) all engines run round-robin in this one process (one call of
each per round, median of the rounds), so load from other processes affects them alike; the figures that
mean something on a shared machine are the ratios to ``torch fp32`` of the same setting. Each call is the
full ``KeypointDetector`` (uint8 BGR image in -> top-k sorted keypoints + L2-normalised descriptors out;
top_k 300 at 320x240, 1000 at 640x480, as the evaluation). Also per engine: the share of its keypoints
within 1 px of fp32's (on the same held-out photo, skimage's astronaut) and the median cosine of their
descriptors, and the original-equivalent forward at x1 for reference.

Engines not installed are skipped; INT8 uses the bundled default model's INT8 graph (calibrated on its
training photos). Writes JSON (default ``benchmarks/results/inference.json``) and prints a Markdown table.

    .venv/bin/python benchmarks/bench_inference.py                 # ~5 minutes on 2 busy cores
    .venv/bin/python benchmarks/bench_inference.py --repeats 5 --settings 640x480x1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import skimage.data
import torch

from kp2d_model import engines
from kp2d_model.detector import KeypointDetector

REPO_ROOT = Path(__file__).resolve().parents[1]
ENGINES = (  # (backend, precision)
    ("torch", "fp32"),
    ("torch", "bf16"),
    ("onnxruntime", "fp32"),
    ("onnxruntime", "int8"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("openvino", "int8"),
)
SETTINGS = ("320x240x1", "640x480x1", "320x240x2.5", "640x480x2.5")
TOP_K = {(320, 240): 300, (640, 480): 1000}


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


def agreement(found, reference) -> dict[str, float]:
    """Share of ``found``'s keypoints within 1 px of a ``reference`` keypoint; median descriptor cosine."""
    distance = torch.cdist(found.keypoints.double(), reference.keypoints.double())
    nearest = distance.argmin(dim=1)
    cosine = (found.descriptors * reference.descriptors[nearest]).sum(dim=1)
    return {
        "within_1px": float((distance.min(dim=1).values <= 1.0).double().mean()),
        "descriptor_cosine_median": float(cosine.median()),
    }


def available(backend: str) -> bool:
    return backend == "torch" or engines._installed(backend)  # noqa: SLF001


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="default: the bundled default model")
    parser.add_argument("--calibration", default=None, help="int8 with --checkpoint: folder of training photos")
    parser.add_argument("--repeats", type=int, default=10, help="rounds per setting (x2.5 at 640x480: half)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--settings", action="append", help=f"WxHxSCALE, repeatable (default: {', '.join(SETTINGS)})")
    parser.add_argument(
        "--engine", action="append", help="only these engines, e.g. --engine auto (torch fp32 always runs: the base)"
    )
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "inference.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    photo = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    results: dict[str, dict] = {}
    rows = []
    for setting in args.settings or SETTINGS:
        width, height, scale = setting.split("x")
        size, scale = (int(width), int(height)), float(scale)
        image = cv2.resize(photo, size, interpolation=cv2.INTER_AREA)

        def calibration(precision: str) -> str | None:
            return args.calibration if precision == "int8" else None

        common = {"device": "cpu", "top_k": TOP_K.get(size, 1000), "input_scale": scale}
        detectors = {
            f"{backend} {precision}": KeypointDetector(
                args.checkpoint, precision=precision, backend=backend, calibration=calibration(precision), **common
            )
            for backend, precision in ENGINES
            if available(backend) and (not args.engine or f"{backend} {precision}" in [*args.engine, "torch fp32"])
        }
        auto = KeypointDetector(args.checkpoint, precision="auto", **common)
        if not args.engine or "auto" in args.engine:
            detectors["auto"] = auto  # the comparison: precision="auto" against fp32, same rounds
        repeats = max(3, args.repeats // 2) if size[0] * scale > 1000 else args.repeats
        calls = {name: lambda d=d, image=image: d(image) for name, d in detectors.items()}
        times = round_robin(calls, args.warmup, repeats)
        reference = detectors["torch fp32"](image)
        base = statistics.median(times["torch fp32"])
        results[setting] = {"auto": str(auto.engine_choice), "repeats": repeats}
        for name, samples in times.items():
            median = statistics.median(samples)
            results[setting][name] = {
                "median_ms": median,
                "min_ms": min(samples),
                "max_ms": max(samples),
                "speedup_vs_torch_fp32": base / median,
                **agreement(detectors[name](image), reference),
            }
            entry = results[setting][name]
            rows.append(
                f"| {size[0]}x{size[1]} | x{scale:g} | {name} | {median:.1f} | {entry['speedup_vs_torch_fp32']:.2f} | "
                f"{entry['within_1px']:.3f} | {entry['descriptor_cosine_median']:.4f} |"
            )
        print(f"{setting}: load average {os.getloadavg()[0]:.1f}", flush=True)

    results["environment"] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_flags": sorted(engines.cpu_capabilities()),  # after ONEDNN_MAX_CPU_ISA, as "auto" sees them
        "onednn_max_cpu_isa": engines.onednn_isa_cap(),
        "checkpoint": args.checkpoint or "bundled default model",
        "warmup": args.warmup,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average_1min_at_end": os.getloadavg()[0],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"\nthreads {torch.get_num_threads()}, median of the rounds after {args.warmup} warm-up rounds, load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, CPU flags {'+'.join(sorted(engines.cpu_capabilities()))}\n"
    )
    print("| image | scale | engine | detector (ms) | speed-up vs torch fp32 | kp within 1 px of fp32 | desc cos |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()

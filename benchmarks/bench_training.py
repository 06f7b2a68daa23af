"""Seconds per KP2D training step (augmentation + forward + loss + backward + Adam step) with the trainer's own
:meth:`kp2d_model.training.trainer.Trainer.train_step`, for several batch sizes / resolutions and variants.

    .venv/bin/python benchmarks/bench_training.py                      # CPU, batch 8 @ 240x320 and 4 @ 120x160
    .venv/bin/python benchmarks/bench_training.py --variants fp32 bf16 --out benchmarks/results/training.json
    .venv/bin/python benchmarks/bench_training.py --profile --sizes 4x120x160   # where the time goes

Variants: ``fp32`` (float32, NCHW: the original's numerics), ``channels_last`` (NHWC convolutions), ``bf16``
(bfloat16 autocast for the networks; pays on CPUs with AVX512_BF16 / AMX), ``bf16_channels_last`` (the trainer's
default on such CPUs and on GPUs). Every variant starts from the same seed, weights and images, so the first
step's loss terms are directly comparable (reported relative to fp32). The steps of the variants are interleaved
(A, B, A, B, ...) so load from other processes falls on all alike; the median and minimum of ``--repeats``
timed steps after ``--warmup`` untimed ones are reported, with the process CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from kp2d_model.training.config import load_config
from kp2d_model.training.trainer import Trainer

VARIANTS = {
    "fp32": ["train.amp=off", "train.channels_last=false"],
    "channels_last": ["train.amp=off", "train.channels_last=true"],
    "bf16": ["train.amp=bf16", "train.channels_last=false"],
    "bf16_channels_last": ["train.amp=bf16", "train.channels_last=true"],
    "fp16": ["train.amp=fp16", "train.channels_last=false"],  # CUDA (benchmarks/gpu_check.sh)
}
ORIGINAL_SECONDS = {"8x240x320": (12.6, 15.0), "4x120x160": (1.0, 1.0)}  # kp2d-reference.md, 2 CPU threads


def cpu_description() -> dict[str, object]:
    flags: list[str] = []
    model = platform.processor()
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in text.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("Flags:"):
                flags = line.split(":", 1)[1].split()
    except (OSError, subprocess.CalledProcessError):
        pass
    return {
        "model": model,
        "bf16_flags": sorted(f for f in flags if "bf16" in f or f.startswith("amx")),
        "avx512": "avx512f" in flags,
    }


def write_images(folder: Path, count: int = 8) -> None:
    rng = np.random.default_rng(0)
    for index in range(count):
        image = np.full((480, 640, 3), 127, np.uint8)
        for _ in range(80):
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            cv2.circle(image, tuple(int(v) for v in rng.integers(0, 480, 2)), int(rng.integers(4, 60)), color, -1)
        cv2.imwrite(str(folder / f"img{index}.png"), image)


def make_trainer(
    data: Path,
    out: Path,
    version: str,
    batch: int,
    height: int,
    width: int,
    overrides: list[str],
    device: str,
    threads: int,
) -> Trainer:
    config = load_config(
        version,
        [
            f"data.path={data}",
            f"data.image_shape=[{height},{width}]",
            f"data.batch_size={batch}",
            "data.num_workers=0",
            f"train.device={device}",
            f"train.num_threads={threads}",
            "log.progress=false",
            *overrides,
        ],
    )
    return Trainer(config, out)


def timed_step(trainer: Trainer, images: torch.Tensor) -> tuple[float, float, dict[str, float]]:
    """(wall seconds, process CPU seconds, loss terms) of one Trainer.train_step."""
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    terms = trainer.train_step(images)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu, terms


def measure_size(data: Path, args: argparse.Namespace, batch: int, height: int, width: int) -> list[dict[str, object]]:
    """All variants of one size, their steps interleaved (variant A step 1, B step 1, A step 2, ...) so that
    load from other processes on the machine falls on every variant alike."""
    with tempfile.TemporaryDirectory() as out:
        trainers = {
            variant: make_trainer(
                data,
                Path(out) / variant,
                args.version,
                batch,
                height,
                width,
                VARIANTS[variant],
                args.device,
                args.threads,
            )  # fmt: skip
            for variant in args.variants
        }
        dataset = next(iter(trainers.values())).dataset
        images = torch.stack([dataset[(0, i % len(dataset))]["image"] for i in range(batch)])
        rows = {variant: {"seconds": [], "cpu_seconds": [], "first_step_loss": None} for variant in args.variants}
        for index in range(args.warmup + args.repeats):
            for variant, trainer in trainers.items():
                wall, cpu, terms = timed_step(trainer, images)
                row = rows[variant]
                row["first_step_loss"] = row["first_step_loss"] or terms
                if index >= args.warmup:
                    row["seconds"].append(wall)
                    row["cpu_seconds"].append(cpu)
                print(f"  {variant:>20} step {index + 1}: {wall:7.3f} s (cpu {cpu:7.3f} s) loss {terms['total']:.5f}")
        if args.profile:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as torch_profile

            for variant, trainer in trainers.items():
                with torch_profile(activities=[ProfilerActivity.CPU]) as profiler:
                    trainer.train_step(images)
                print(f"profile of one step, {variant}:")
                print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    results = []
    for variant, row in rows.items():
        results.append(
            {
                "size": f"{batch}x{height}x{width}",
                "variant": variant,
                "median_seconds": statistics.median(row["seconds"]),
                "min_seconds": min(row["seconds"]),
                "seconds": row["seconds"],
                "median_cpu_seconds": statistics.median(row["cpu_seconds"]),
                "first_step_loss": row["first_step_loss"],
            }
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["8x240x320", "4x120x160"], help="BATCHxHxW")
    parser.add_argument("--variants", nargs="+", default=["fp32", "bf16"], choices=sorted(VARIANTS))
    parser.add_argument("--version", default="v4")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", type=Path, help="write the results as JSON here: {'runs': [this run]}")
    parser.add_argument("--append", action="store_true", help="add this run to the runs already in --out")
    args = parser.parse_args()

    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    results = []
    with tempfile.TemporaryDirectory() as data:
        write_images(Path(data))
        for size in args.sizes:
            batch, height, width = (int(v) for v in size.split("x"))
            print(f"{size}: {', '.join(args.variants)} on {args.device}, {args.threads} threads", flush=True)
            rows = measure_size(Path(data), args, batch, height, width)
            baseline = next((row for row in rows if row["variant"] == "fp32"), None)
            for row in rows:
                if baseline is not None:
                    row["loss_relative_difference_vs_fp32"] = {
                        name: abs(row["first_step_loss"][name] - value) / max(abs(value), 1e-12)
                        for name, value in baseline["first_step_loss"].items()
                    }
                original = ORIGINAL_SECONDS.get(size)
                if original and args.device == "cpu":
                    row["speedup_vs_original"] = [
                        original[0] / row["median_seconds"],
                        original[1] / row["median_seconds"],
                    ]
                print(f"  {row['variant']:>20}: median {row['median_seconds']:.3f} s, min {row['min_seconds']:.3f} s")
            results.extend(rows)

    report = {
        "what": "seconds per training step (augmentation + forward + loss + backward + Adam), Trainer.train_step",
        "command": "benchmarks/bench_training.py "
        + " ".join(
            [
                "--sizes",
                *args.sizes,
                "--variants",
                *args.variants,
                "--version",
                args.version,
                "--device",
                args.device,
                "--threads",
                str(args.threads),
                "--warmup",
                str(args.warmup),
                "--repeats",
                str(args.repeats),
            ]
        ),  # fmt: skip
        "started": started,
        "load_average_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "torch": torch.__version__,
        "device": args.device if args.device != "cuda" else torch.cuda.get_device_name(),
        "cpu": cpu_description(),
        "threads": args.threads,
        "original_seconds_per_step": ORIGINAL_SECONDS,
        "results": results,
    }
    if args.out:
        runs = []
        if args.append and args.out.is_file():
            runs = json.loads(args.out.read_text()).get("runs", [])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"runs": [*runs, report]}, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

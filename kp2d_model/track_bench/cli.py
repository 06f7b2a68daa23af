"""``kp2d-track-bench``: VO front-ends (kp2d, VINS-style KLT, ORB, SIFT) on virtual camera sequences.

Prints one table row per method and rate (every frame / real rate), a per-sequence table, and optionally
writes JSON and plots. Usage errors: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from kp2d_model.evaluation.cli import input_scale, positive_int
from kp2d_model.evaluation.synthetic import BenchmarkInputError, held_out_photos, photos_in_folder, read_photo
from kp2d_model.image import CONTRASTS
from kp2d_model.track_bench.bench import RATES, photos_for, run_benchmark, stride_of
from kp2d_model.track_bench.frontends import (
    GEOMETRY_MODELS,
    METHOD_NAMES,
    NODE_CONTRAST,
    FrontEndError,
    MatchingSettings,
    build_front_end,
)
from kp2d_model.track_bench.metrics import summarize
from kp2d_model.track_bench.sequences import ALL_SEQUENCE_NAMES, SEQUENCE_NAMES, SequenceError, make_sequence

PROGRAM = "kp2d-track-bench"
GYRO_RADIUS = 20.0  # px, --gyro's prediction radius
SUMMARY_COLUMNS = (
    ("correct_matches_per_frame", "correct / frame", "{:.1f}"),
    ("precision", "precision", "{:.3f}"),
    ("median_track_length", "median track (frames)", "{:.0f}"),
    ("frames_with_50_correct", "frames >= 50 correct", "{:.2f}"),
    ("ms_per_frame", "ms / frame", "{:.1f}"),
    ("processed_share", "frames processed", "{:.2f}"),
)


def _frames(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"a sequence needs at least 2 frames, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _rate(text: str) -> str:
    try:
        stride_of(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _resolution(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        width, height = (int(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution must look like 640x480 (WIDTHxHEIGHT), got {text!r}") from None
    if min(width, height) < 64:
        raise argparse.ArgumentTypeError(f"resolution {text!r} is too small (64 px minimum per side)")
    return width, height


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="VO front-end benchmark: keypoint tracking on virtual camera sequences over photos (exact "
        "frame-to-frame homographies; blur, exposure, noise, low texture), kp2d vs VINS-style KLT, ORB and SIFT, "
        "at every frame and at each method's real rate.",
    )
    parser.add_argument("--photos", type=Path, help="folder of photos (default: the project's held-out photos)")
    parser.add_argument("--seed", type=int, default=0, help="photo choice and sensor noise seed (default 0)")
    parser.add_argument("--frames", type=_frames, default=45, help="frames per sequence (default 45: 1.5 s at 30 fps)")
    parser.add_argument("--fps", type=_positive_float, default=30.0, help="camera frame rate (default 30)")
    parser.add_argument(
        "--sequence",
        action="append",
        choices=ALL_SEQUENCE_NAMES,
        help="repeatable (default: all but the gyro_* ones, which carry a synthetic gyro for --gyro)",
    )
    parser.add_argument(
        "--photos-per-sequence", type=positive_int, default=1, help="each sequence runs on this many photos (1)"
    )
    parser.add_argument("--resolution", type=_resolution, default=(640, 480), help="frame size (default 640x480)")
    parser.add_argument(
        "--method", action="append", choices=METHOD_NAMES, help="repeatable (default: kp2d, klt, orb, sift)"
    )
    parser.add_argument(
        "--precision",
        action="append",
        help="kp2d: KeypointDetector precision (needs a KeypointDetector with precision=); repeatable, one kp2d "
        "row each (default: the detector's own default, float32)",
    )
    parser.add_argument(
        "--input-scale", type=input_scale, action="append", help="kp2d: input_scale; repeatable, one row each"
    )
    parser.add_argument(
        "--contrast",
        choices=CONTRASTS,
        action="append",
        help=f"kp2d: KeypointDetector contrast (default {NODE_CONTRAST}, the node's; none: the frame as rendered, "
        "row label +_contrast_none); repeatable, one row each",
    )
    parser.add_argument("--checkpoint", type=Path, help="kp2d checkpoint (default: the bundled default model)")
    parser.add_argument("--device", default="cpu", help="kp2d device (default cpu)")
    parser.add_argument("--top-k", type=positive_int, default=1000, help="kp2d/orb/sift points per frame (1000)")
    parser.add_argument(
        "--ratio", type=float, default=0.0, help="Lowe ratio test for kp2d/orb/sift (node's matching.ratio; 0: off)"
    )
    parser.add_argument(
        "--geometry",
        choices=GEOMETRY_MODELS,
        default="none",
        help="geometric verification for kp2d/orb/sift (node's matching.geometry; default none)",
    )
    parser.add_argument(
        "--geometry-threshold", type=_positive_float, default=3.0, help="inlier threshold px (default 3)"
    )
    parser.add_argument(
        "--gyro",
        action="store_true",
        help="kp2d/sift: also run each with IMU-aided matching (row label +_gyro): candidates within --gyro-radius "
        "of the synthetic gyro's prediction K R K^-1 (gyro_* sequences; others run unrestricted)",
    )
    parser.add_argument(
        "--gyro-radius", type=_positive_float, default=GYRO_RADIUS, help=f"px (default {GYRO_RADIUS:g})"
    )
    parser.add_argument(
        "--rate",
        type=_rate,
        action="append",
        help="every_frame, real_rate, or every_N_frames (frames 0, N, 2N, ...: a slow detector's gaps, independent "
        "of the machine's speed); repeatable (default: every_frame and real_rate)",
    )
    parser.add_argument("--json", type=Path, help="write the summaries (and per-sequence ones) to this JSON file")
    parser.add_argument("--plots", type=Path, help="write per-frame curves and a track picture to this folder")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def _kp2d_variants(args: argparse.Namespace) -> list[tuple[str, dict]]:
    """(label, options) per kp2d row: every --precision x every --input-scale x every --contrast."""
    variants = []
    for precision in args.precision or [None]:
        for scale in args.input_scale or [None]:
            for contrast in dict.fromkeys(args.contrast or [NODE_CONTRAST]):
                label = "kp2d"
                if scale not in (None, 1.0):
                    label += f"_x{scale:g}"
                if precision is not None:
                    label += f"_{precision}"
                if contrast != NODE_CONTRAST:
                    label += f"_contrast_{contrast}"
                variants.append((label, {"precision": precision, "input_scale": scale, "contrast": contrast}))
    return variants


def build_front_ends(args: argparse.Namespace) -> dict:
    if not 0.0 <= args.ratio <= 1.0:
        raise FrontEndError(f"--ratio must be in [0, 1] (0: off), got {args.ratio}")
    settings = MatchingSettings(
        top_k=args.top_k, ratio=args.ratio, geometry=args.geometry, geometry_threshold=args.geometry_threshold
    )
    gyro_settings = replace(settings, gyro_radius=args.gyro_radius)
    front_ends = {}
    for method in args.method or list(METHOD_NAMES):
        if method == "kp2d":
            checkpoint = None if args.checkpoint is None else str(args.checkpoint)
            for label, options in _kp2d_variants(args):
                front_ends[label] = build_front_end("kp2d", settings, checkpoint, args.device, **options)
                if args.gyro:
                    front_ends[label + "_gyro"] = build_front_end(
                        "kp2d", gyro_settings, checkpoint, args.device, **options
                    )
        else:
            front_ends[method] = build_front_end(method, settings)
            if args.gyro and method == "sift":
                front_ends[method + "_gyro"] = build_front_end(method, gyro_settings)
    return front_ends


def _sequences(args: argparse.Namespace, photos: list, progress: bool):
    names = args.sequence or list(SEQUENCE_NAMES)
    for name in names:
        for index in photos_for(ALL_SEQUENCE_NAMES.index(name), len(photos), args.photos_per_sequence, args.seed):
            photo = photos[index]
            sequence = make_sequence(
                read_photo(photo.path), name, args.frames, args.resolution, args.fps, args.seed, photo.name
            )
            if progress:
                print(f"{name} on {photo.name} (amplitude {sequence.amplitude:.2f})", file=sys.stderr, flush=True)
            yield sequence


def format_tables(summaries: list[dict]) -> str:
    """Markdown: the summary table (method x rate) and correct / frame and precision per sequence (every frame)."""
    lines = ["| method | rate | " + " | ".join(title for _, title, _ in SUMMARY_COLUMNS) + " |"]
    lines.append("|" + "---|" * (2 + len(SUMMARY_COLUMNS)))
    for run in summaries:
        values = [fmt.format(run["summary"][key]) for key, _, fmt in SUMMARY_COLUMNS]
        lines.append(f"| {run['method']} | {run['rate'].replace('_', ' ')} | " + " | ".join(values) + " |")
    per_sequence_rates = ["every_frame"] + [r for r in dict.fromkeys(run["rate"] for run in summaries) if stride_of(r)]
    for rate in per_sequence_rates:
        every = [run for run in summaries if run["rate"] == rate]
        if not every:
            continue
        names = list(every[0]["sequences"])
        title = rate.replace("_", " ").capitalize()
        lines += ["", f"{title}, per sequence: correct matches / frame (precision)", ""]
        lines.append("| method | " + " | ".join(names) + " |")
        lines.append("|" + "---|" * (1 + len(names)))
        for run in every:
            cells = [
                f"{run['sequences'][n]['correct_matches_per_frame']:.1f} ({run['sequences'][n]['precision']:.2f})"
                for n in names
            ]
            lines.append(f"| {run['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summaries_from(results: dict) -> list[dict]:
    summaries = []
    for (label, rate), result in results.items():
        by_sequence: dict[str, dict] = {}
        for name in dict.fromkeys(key.split("/")[0] for key in result.frames_total):
            records = [r for r in result.frames if r.sequence.split("/")[0] == name]
            total = sum(n for key, n in result.frames_total.items() if key.split("/")[0] == name)
            by_sequence[name] = summarize(records, result.track_lengths_by_sequence.get(name, []), total)
        summary = summarize(result.frames, result.track_lengths, sum(result.frames_total.values()))
        summaries.append({"method": label, "rate": rate, "summary": summary, "sequences": by_sequence})
    return summaries


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kp2d-track-bench`` (and ``ros2 run kp2d_ros track_bench``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)

    def fail(message: str) -> int:
        print(f"{PROGRAM}: error: {message}", file=sys.stderr)
        return 2

    try:
        photos = photos_in_folder(args.photos) if args.photos is not None else held_out_photos()
        front_ends = build_front_ends(args)
    except (BenchmarkInputError, FrontEndError, FileNotFoundError) as error:
        return fail(str(error))
    except Exception as error:  # e.g. CheckpointError: a model that cannot be loaded
        return fail(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    if args.plots is not None and args.plots.exists() and not args.plots.is_dir():
        return fail(f"--plots {args.plots} exists and is not a folder")

    load_before = os.getloadavg()
    try:
        results, pictures = run_benchmark(
            front_ends,
            lambda: _sequences(args, photos, not args.quiet),
            args.rate or list(RATES),
            picture_sequence=(args.sequence or list(SEQUENCE_NAMES))[0],
        )
    except (BenchmarkInputError, SequenceError) as error:
        return fail(str(error))
    summaries = summaries_from(results)
    table = format_tables(summaries)
    load = {"before": [round(v, 2) for v in load_before], "after": [round(v, 2) for v in os.getloadavg()]}
    print(table)
    print(f"\nload average (1, 5, 15 min) before {load['before']}, after {load['after']}; {os.cpu_count()} CPUs")
    if args.json is not None:
        document = {
            "program": PROGRAM,
            "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "load": load,
            "machine": {"cpus": os.cpu_count(), "processor": platform.processor(), "opencv": cv2.__version__},
            "runs": summaries,
            "table": table,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    if args.plots is not None:
        from kp2d_model.track_bench.plots import write_plots

        write_plots(args.plots, results, pictures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

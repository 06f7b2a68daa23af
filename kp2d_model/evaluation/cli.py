"""``kp2d-evaluate``: HPatches evaluation of KeyPointNet checkpoints and baselines, the paper's protocol.

Example::

    kp2d-evaluate --hpatches hpatches-sequences-release --json results.json     # the bundled default model
    kp2d-evaluate --checkpoint v4.ckpt --hpatches hpatches-sequences-release --json results.json
    kp2d-evaluate --checkpoint v4.ckpt --hpatches DIR --method kp2d --method orb --method sift --resolution 320x240
    kp2d-evaluate --hpatches DIR --input-scale 1 --input-scale 2.5     # kp2d at the native size and at 2.5x

Defaults: 320x240 with top-k 300 and 640x480 with top-k 1000, as the paper; ``--top-k`` applies to every
resolution given. Prints a Markdown table (i / v / all rows per method and setting) on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from kp2d_model.checkpoint import CheckpointError, default_checkpoint_path
from kp2d_model.detector import check_input_scale
from kp2d_model.engines import BackendName, EngineError, Precision, parse_choice
from kp2d_model.evaluation.evaluate import DEFAULT_SETTINGS, EvaluationRun, evaluate_method, format_table
from kp2d_model.evaluation.hpatches import SUBSETS, HPatchesError, HPatchesSequence, find_sequences, load_sequence
from kp2d_model.evaluation.methods import METHOD_NAMES, FeatureMethod, describe_images, get_method
from kp2d_model.evaluation.metrics import homography_matches
from kp2d_model.image import CONTRASTS

PROGRAM = "kp2d-evaluate"
MAX_RESOLUTION_SIDE = 4096  # px; memory grows with the network's pixels (~300 bytes each for KeyPointNet)
MATCH_PLOT_PAIRS = (2, 6)  # pairs (1, k) drawn with --plots: the easiest and the hardest of a sequence


def parse_resolution(text: str) -> tuple[int, int]:
    """``"320x240"`` -> ``(320, 240)`` (width, height)."""
    try:
        width, height = (int(value) for value in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution must look like 320x240 (WIDTHxHEIGHT), got {text!r}") from None
    if width < 8 or height < 8:
        raise argparse.ArgumentTypeError(f"resolution {text!r} is too small")
    if max(width, height) > MAX_RESOLUTION_SIDE:
        raise argparse.ArgumentTypeError(f"resolution {text!r} is too large (at most {MAX_RESOLUTION_SIDE} px a side)")
    return width, height


def device_argument(text: str) -> str:
    """``--device``: auto, cpu, cuda or cuda:N, refused here when CUDA is asked for but not available."""
    import torch

    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available here; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return text


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _choice(enum: type, what: str):  # noqa: ANN202
    def parse(text: str) -> str:
        try:
            return parse_choice(enum, text, what).value
        except EngineError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def input_scale(text: str) -> float:
    try:
        return check_input_scale(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 8], got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Evaluate keypoints and descriptors on HPatches (repeatability, localization error, "
        "C1/C3/C5 homography correctness, matching score), as the KP2D paper.",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="KeyPointNet checkpoint (.ckpt, .safetensors, .pt) for kp2d; default: the bundled default model",
    )
    parser.add_argument("--hpatches", type=Path, required=True, help="hpatches-sequences-release folder")
    parser.add_argument(
        "--resolution",
        type=parse_resolution,
        action="append",
        help="WIDTHxHEIGHT, repeatable (default: 320x240 with top-k 300 and 640x480 with top-k 1000)",
    )
    parser.add_argument("--top-k", type=positive_int, help="points kept per image for every resolution")
    parser.add_argument("--subset", choices=SUBSETS, default="all", help="i (illumination), v (viewpoint) or all")
    parser.add_argument(
        "--method", action="append", choices=METHOD_NAMES, help="repeatable for a comparison table (default: kp2d)"
    )
    parser.add_argument(
        "--input-scale",
        type=input_scale,
        action="append",
        help="kp2d: resize each image by this factor before the network, points mapped back (not in the original "
        "protocol; 2.5 = the default model's recommended setting); repeatable, one kp2d row each (kp2d_x2, ...)",
    )
    parser.add_argument(
        "--contrast",
        choices=CONTRASTS,
        action="append",
        help="kp2d: none (default: the original protocol) or stretch (each image's channels stretched to the full "
        "0..255 range first, as the ROS node's default; row kp2d_stretch); repeatable, one row each",
    )
    parser.add_argument(
        "--device", type=device_argument, default="auto", help="kp2d network device: auto, cpu, cuda:0, ..."
    )
    parser.add_argument(
        "--reference-forward",
        action="store_true",
        help="kp2d: run the plain eval-mode network (the original's computation, bit for bit) instead of the "
        "faster fused one (equal to ~1e-6)",
    )
    parser.add_argument(
        "--precision",
        type=_choice(Precision, "precision"),
        action="append",
        help="kp2d network arithmetic: fp32 (default: the original protocol), bf16, fp16, int8, auto; repeatable, "
        "one row each (rows keep the method name and record precision and backend)",
    )
    parser.add_argument("--backend", type=_choice(BackendName, "backend"), default="auto", help="kp2d engine: "
                        + ", ".join(b.value for b in BackendName) + " (default auto)")  # fmt: skip
    parser.add_argument(
        "--calibration", type=Path, help="kp2d int8: folder of TRAINING photos to calibrate on (never benchmark photos)"
    )
    parser.add_argument("--json", type=Path, help="write summaries and per-pair values to this JSON file")
    parser.add_argument("--plots", type=Path, help="write per-sequence bar charts and match pictures to this folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def settings_from(args: argparse.Namespace) -> list[tuple[tuple[int, int], int]]:
    """(resolution, top_k) pairs: the paper's defaults, or the given resolutions with --top-k (or the default k)."""
    if not args.resolution:
        return [(resolution, args.top_k or top_k) for resolution, top_k in DEFAULT_SETTINGS]
    default_top_k = dict(DEFAULT_SETTINGS)
    return [(resolution, args.top_k or default_top_k.get(resolution, 1000)) for resolution in args.resolution]


def _json_ready(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(item) for item in value]
    return value


def write_json(path: Path, args: argparse.Namespace, runs: Sequence[EvaluationRun], table: str) -> None:
    report = {
        "program": PROGRAM,
        "hpatches": str(args.hpatches),
        "subset": args.subset,
        "checkpoint": None if args.checkpoint is None else str(args.checkpoint),
        "runs": [run.as_dict() for run in runs],
        "table": table,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_ready(report), indent=1, allow_nan=False) + "\n")


def write_plots(
    folder: Path,
    runs: Sequence[EvaluationRun],
    methods: dict[str, FeatureMethod],
    sequences: Sequence[HPatchesSequence],
) -> list[Path]:
    """Per-sequence bar charts (matching score, repeatability) per setting, and match pictures of a few pairs."""
    try:
        from kp2d_model.evaluation import plots  # matplotlib is only needed here
    except ImportError as error:
        raise RuntimeError(f"--plots needs kp2d_model.evaluation.plots and matplotlib: {error}") from error

    written = []
    settings = list(dict.fromkeys((run.resolution, run.top_k) for run in runs))
    for resolution, top_k in settings:
        rows = {
            run.method: [pair.as_dict() for pair in run.pairs]
            for run in runs
            if (run.resolution, run.top_k) == (resolution, top_k)
        }
        tag = f"{resolution[0]}x{resolution[1]}_top{top_k}"
        for metric in ("mscore", "repeatability"):
            title = f"HPatches {metric} per sequence, {resolution[0]}x{resolution[1]}, top-k {top_k}"
            written.append(plots.plot_per_sequence(rows, folder / f"per_sequence_{metric}_{tag}.png", metric, title))
    resolution, top_k = settings[0]
    first_of_subset = {}
    for sequence in sequences:
        first_of_subset.setdefault(sequence.subset, sequence)
    for sequence in first_of_subset.values():
        loaded = load_sequence(sequence, resolution)
        for name, method in methods.items():
            features = describe_images(method, [loaded.images[0]] + [loaded.images[k - 1] for k in MATCH_PLOT_PAIRS])
            for k, (points_k, descriptors_k) in zip(MATCH_PLOT_PAIRS, features[1:], strict=True):
                matches = homography_matches(
                    *features[0], points_k, descriptors_k, loaded.homographies[k], resolution, top_k, method.norm
                )
                path = folder / f"matches_{name}_{sequence.name}_1-{k}_{resolution[0]}x{resolution[1]}.png"
                written.append(
                    plots.plot_matches(
                        loaded.images[0], loaded.images[k - 1], matches.xy_1, matches.xy_2, matches.inliers, path
                    )
                )
    return written


def _method_key(method: FeatureMethod) -> str:
    """A method's row label: its name, plus precision/backend when not the float32 torch reference."""
    precision, backend = getattr(method, "precision", "fp32"), getattr(method, "backend", "torch")
    return method.name if (precision, backend) == ("fp32", "torch") else f"{method.name} {precision}/{backend}"


def run_evaluation(
    args: argparse.Namespace,
) -> tuple[list[EvaluationRun], dict[str, FeatureMethod], list[HPatchesSequence]]:
    """Build the methods, list the sequences and evaluate every (setting, method); progress on stderr."""
    from tqdm import tqdm

    sequences = find_sequences(args.hpatches, args.subset)
    methods: dict[str, FeatureMethod] = {}
    for name in dict.fromkeys(args.method or ["kp2d"]):
        if name != "kp2d":
            methods[name] = get_method(name)
            continue
        for scale, contrast in itertools.product(
            dict.fromkeys(args.input_scale or [1.0]), dict.fromkeys(args.contrast or ["none"])
        ):
            for precision in dict.fromkeys(args.precision or ["fp32"]):
                method = get_method(
                    name,
                    checkpoint=args.checkpoint,
                    device=args.device,
                    fuse_batchnorm=not args.reference_forward,
                    input_scale=scale,
                    precision=precision,
                    backend=args.backend if precision != "fp32" else "torch",
                    calibration=args.calibration,
                    contrast=contrast,
                )
                methods[_method_key(method)] = method
    runs = []
    for resolution, top_k in settings_from(args):
        for name, method in methods.items():
            label = f"{name} {resolution[0]}x{resolution[1]} top-{top_k}"
            with tqdm(total=5 * len(sequences), desc=label, unit="pair", disable=args.quiet, file=sys.stderr) as bar:
                run = evaluate_method(method, sequences, resolution, top_k, on_sequence_done=bar.update)
            run.precision = getattr(method, "precision", None)
            run.backend = getattr(method, "backend", None)
            runs.append(run)
            if not args.quiet:
                print(f"{label}: {len(run.pairs)} pairs, {run.pairs_per_second:.1f} pairs/s", file=sys.stderr)
    return runs, methods, sequences


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kp2d-evaluate`` (and ``ros2 run kp2d_ros evaluate``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.input_scale and "kp2d" not in (args.method or ["kp2d"]):
        parser.error("--input-scale applies to the kp2d method; add --method kp2d")
    if args.precision and "kp2d" not in (args.method or ["kp2d"]):
        parser.error("--precision applies to the kp2d method; add --method kp2d")
    if args.contrast and "kp2d" not in (args.method or ["kp2d"]):
        parser.error("--contrast applies to the kp2d method; add --method kp2d")
    if args.calibration is not None and not args.calibration.is_dir():
        parser.error(f"--calibration {args.calibration} is not a folder")
    if "kp2d" in (args.method or ["kp2d"]) and args.checkpoint is None:
        args.checkpoint = default_checkpoint_path()
        if not args.checkpoint.is_file():
            parser.error(f"no --checkpoint given and the bundled default model is missing at {args.checkpoint}")
    try:
        runs, methods, sequences = run_evaluation(args)
        table = format_table(runs)
        print(table, flush=True)
        if args.json is not None:
            write_json(args.json, args, runs, table)
        if args.plots is not None:
            for path in write_plots(args.plots, runs, methods, sequences):
                if not args.quiet:
                    print(f"wrote {path}", file=sys.stderr)
    except EngineError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return 2
    except (HPatchesError, CheckpointError, ValueError, RuntimeError, OSError) as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``kp2d-export``: a KeyPointNet checkpoint as an ONNX graph, an OpenVINO IR or a TensorRT engine.

Example::

    kp2d-export --format onnx --out kp2d.onnx                                   # the bundled default model, fp32
    kp2d-export --checkpoint v4.ckpt --format onnx --precision int8 --calibration data/train_photos --out v4_int8.onnx
    kp2d-export --format openvino --out kp2d.xml                                # + kp2d.bin
    kp2d-export --format tensorrt --precision fp16 --out kp2d.fp16.engine      # on the GPU that will run it

The graph: input ``image`` uint8 ``(B, H, W, C)`` BGR (grey for 1-channel networks), B/H/W dynamic, H and W
multiples of the stride; outputs ``score`` ``(B, 1, H/8, W/8)`` (sigmoid; zero the border cells yourself),
``center_shift`` ``(B, 2, H/8, W/8)`` (tanh; pixel x = col*8 + 3.5 + shift*cross_ratio*3.5, likewise y) and
``features`` (the dense descriptor map, bilinear-sample and L2-normalise it). The metadata (stride, cell,
cross_ratio, channels, descriptor_dim, precision, the checkpoint's sha256) is stored in the file and read back
by ``KeypointDetector("file.onnx")``. Usage errors: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from kp2d_model import engines
from kp2d_model.checkpoint import CheckpointError, default_checkpoint_path
from kp2d_model.engines import EngineError, Precision

PROGRAM = "kp2d-export"
FORMATS = {"onnx": (".onnx",), "openvino": (".xml",), "tensorrt": (".engine", ".plan")}
PRECISIONS = {"onnx": ("fp32", "int8"), "openvino": ("fp32", "int8"), "tensorrt": ("fp32", "fp16")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--checkpoint", type=Path, help="checkpoint (.ckpt, .safetensors, .pt); default: bundled model")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS), help="what to write")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"), help="default fp32")
    parser.add_argument(
        "--calibration", type=Path, help="int8: a folder of TRAINING photos (never benchmark photos) to calibrate on"
    )
    parser.add_argument("--out", type=Path, required=True, help="output file (.onnx, .xml or .engine)")
    return parser


def export(checkpoint: Path, format_name: str, precision: Precision, out: Path, calibration: Path | None) -> Path:
    """Write the export; returns its path. Raises EngineError / CheckpointError / OSError with a one-line message."""
    from kp2d_model.detector import KeypointDetector

    detector = KeypointDetector(checkpoint, device="cpu", precision="fp32", backend="torch")
    metadata = detector.export_metadata(Precision.FP32, descriptor_conv="included")
    metadata["weights_sha256"] = engines.file_sha256(checkpoint)
    metadata["checkpoint"] = checkpoint.name
    # The photos are read before anything is written: a folder without photos leaves no output folder behind.
    batches = []
    if precision is Precision.INT8:
        batches = [image[None] for image in detector.calibration_batches(calibration)]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kp2d-export-") as workdir:
        fp32_path = Path(workdir) / "kp2d.onnx"
        heads = detector.dense_heads(with_descriptor_conv=True)
        engines.export_onnx(heads, fp32_path, metadata, channels=1 if detector.grey_input else 3)
        graph = fp32_path
        if precision is Precision.INT8:
            graph = engines.quantize_onnx_int8(fp32_path, Path(workdir) / "kp2d_int8.onnx", batches)
        if format_name == "onnx":
            return Path(shutil.copyfile(graph, out))
        if format_name == "openvino":
            return engines.save_openvino(graph, out)
        return engines.build_tensorrt_engine(graph, out, precision)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kp2d-export``; returns the exit status (2: bad usage or input, 1: the export failed)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    checkpoint = args.checkpoint or default_checkpoint_path()
    if not checkpoint.is_file():
        parser.error(f"checkpoint {checkpoint} does not exist")
    if args.out.suffix.lower() not in FORMATS[args.format]:
        parser.error(f"--format {args.format} writes {' or '.join(FORMATS[args.format])} files; got --out {args.out}")
    if args.precision not in PRECISIONS[args.format]:
        parser.error(f"--format {args.format} takes --precision {' or '.join(PRECISIONS[args.format])}")
    if (args.precision == "int8") != (args.calibration is not None):
        parser.error("--precision int8 needs --calibration DIR (training photos), and --calibration needs int8")
    if args.calibration is not None and not args.calibration.is_dir():
        parser.error(f"--calibration {args.calibration} is not a folder")
    if args.format == "tensorrt":
        import torch

        if not torch.cuda.is_available():
            parser.error("--format tensorrt builds on the GPU that will run the engine; no CUDA device here")
        if not engines._installed("tensorrt"):  # noqa: SLF001
            parser.error("--format tensorrt needs the tensorrt Python package (on Jetson: JetPack's python3-tensorrt)")
    try:
        path = export(checkpoint, args.format, Precision(args.precision), args.out, args.calibration)
    except (EngineError, CheckpointError) as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

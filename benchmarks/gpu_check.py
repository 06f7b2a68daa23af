"""GPU check (run by ``benchmarks/gpu_check.sh`` on a machine with CUDA): speed and agreement of every CUDA engine.

For each engine (torch fp32 / fp16 / bf16, ``auto``, TensorRT fp16 / fp32 where ``tensorrt`` is installed) and
each setting (640x480 top-1000 at x1 and x2.5, 320x240 top-300):

- ``network_fps``: the engine's forward alone (uint8 batch in, dense head outputs on the GPU);
- ``detector_fps``: ``KeypointDetector.__call__`` (network, keypoints, descriptors; results left on the GPU);
- ``within_1px_of_cpu_fp32``: share of its keypoints within 1 px of the CPU fp32 reference's.

At 640x480 top-1000 also the node's frame path without ROS (``FramePipeline``: detect, match 1000 x 1000 on the
GPU, tracks) on a camera sliding over a photo, serial and on the node's two threads (``frame_path_fps``), and the
raw head outputs of fp32 with and without TF32 against the CPU's (why fp32 runs without TF32 on CUDA).
FPS: the median call of about ``--seconds`` seconds after a warm-up, CUDA synchronised, with cuDNN's kernel
autotuning on as the node sets it (``build_s`` includes the first call's tuning). Writes JSON.

Goals from issue 14: >= 300 FPS for the network, >= 60 FPS through the node.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import queue
import statistics
import threading
import time
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import skimage.data
import torch

from kp2d_model import engines
from kp2d_model.detector import KeypointDetector
from kp2d_model.frame_pipeline import FramePipeline, PipelineConfig

SETTINGS = {"640x480x1": (640, 480, 1.0, 1000), "640x480x2.5": (640, 480, 2.5, 1000), "320x240x1": (320, 240, 1.0, 300)}


def synchronize() -> None:
    """Wait for the GPU's queued work (nothing on a CPU dry run)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def fps(call, warmup: int, seconds: float) -> float:
    """Calls per second of ``call`` (CUDA synchronised): 1 / the median call over about ``seconds``."""
    for _ in range(warmup):
        call()
    synchronize()
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        call()
        synchronize()
        times.append(time.perf_counter() - start)
    return 1.0 / statistics.median(times)


def within(found: np.ndarray, reference: np.ndarray, pixels: float) -> float:
    """Share of ``found``'s (N, 2) keypoints with a ``reference`` keypoint within ``pixels``."""
    distance = torch.cdist(torch.from_numpy(found).double(), torch.from_numpy(reference).double())
    return float((distance.min(dim=1).values <= pixels).double().mean())


def camera_frames(width: int, height: int, count: int) -> list[np.ndarray]:
    """``count`` BGR views of a photo, the window sliding 3 px right and 1 px down per frame (a panning camera)."""
    photo = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    photo = cv2.resize(photo, (width + 3 * count, height + count), interpolation=cv2.INTER_AREA)
    return [np.ascontiguousarray(photo[k : k + height, 3 * k : 3 * k + width]) for k in range(count)]


def frame_path_fps(detector: KeypointDetector, frames: list[np.ndarray], overlapped: bool) -> float:
    """Frames per second through ``FramePipeline`` (the node's per-frame work without ROS transport), serial or
    as the node runs it: a detect thread handing each frame to a finish thread (one frame between them)."""
    pipeline = FramePipeline(detector, PipelineConfig(top_k=1000))
    for k in range(10):  # warm-up, then a fresh start for the timed frames
        pipeline.step(frames[k], k * 33_000_000, channel_order="bgr")
    pipeline.reset()
    first = 10**12
    start = time.perf_counter()
    if not overlapped:
        for k, frame in enumerate(frames):
            pipeline.step(frame, first + k * 33_000_000, channel_order="bgr")
    else:
        handoff: queue.Queue = queue.Queue(maxsize=1)

        def finish() -> None:
            while (item := handoff.get()) is not None:
                pipeline.finish(item[1], first + item[0] * 33_000_000)

        finisher = threading.Thread(target=finish)
        finisher.start()
        for k, frame in enumerate(frames):
            handoff.put((k, pipeline.detect(frame, channel_order="bgr")))
        handoff.put(None)
        finisher.join()
    synchronize()
    return len(frames) / (time.perf_counter() - start)


def tf32_effect(detector: KeypointDetector, cpu: KeypointDetector, image: np.ndarray) -> dict[str, float]:
    """Largest difference of the raw head outputs (score, center shift in cells, features) from the CPU fp32 ones,
    for the CUDA fp32 engine (IEEE fp32) and for the same engine with PyTorch's default cuDNN settings (TF32
    convolutions), i.e. without ``engines.cudnn_settings``."""
    batch = detector._prepare(image).padded[None]  # noqa: SLF001
    reference = cpu.engine.forward(batch)
    ieee = detector.engine.forward(batch)
    with mock.patch.object(engines, "cudnn_settings", lambda *_: contextlib.nullcontext()):
        tf32 = detector.engine.forward(batch)
    result = {}
    for name, outputs in (("ieee", ieee), ("tf32", tf32)):
        for field in dataclasses.fields(reference):
            difference = (getattr(outputs, field.name).cpu() - getattr(reference, field.name)).abs().max()
            result[f"{name}_{field.name}_max_abs"] = float(difference)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/gpu_check.json"))
    parser.add_argument("--seconds", type=float, default=1.5, help="timed seconds per FPS figure")
    parser.add_argument("--frames", type=int, default=120, help="frames per frame-path run")
    parser.add_argument("--dry-run-on-cpu", action="store_true", help="check this script on a machine without CUDA")
    args = parser.parse_args()
    device = "cpu" if args.dry_run_on_cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (torch.cuda.is_available() is False)")
    os.environ.setdefault("KP2D_ENGINE_CACHE", str(args.output.parent / "engine_cache"))
    torch.backends.cudnn.benchmark = True  # as the ROS node sets it on CUDA (one frame size per stream)
    photo = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    images = {name: cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA) for name, (w, h, _, _) in SETTINGS.items()}
    configs = {"torch fp32": ("torch", "fp32"), "torch fp16": ("torch", "fp16"), "torch bf16": ("torch", "bf16")}
    configs["auto"] = ("auto", "auto")
    if device == "cpu":
        del configs["torch fp16"]
    if engines._installed("tensorrt"):  # noqa: SLF001
        if engines.tensorrt_major_version() <= engines.TENSORRT_LAST_FP16_FLAG:  # TensorRT 11 has no fp16 flag
            configs["tensorrt fp16"] = ("tensorrt", "fp16")
        configs["tensorrt fp32"] = ("tensorrt", "fp32")
    result: dict[str, object] = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (dry run)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "tensorrt_installed": engines._installed("tensorrt"),  # noqa: SLF001
        "cpu_threads": torch.get_num_threads(),
        "settings": {
            name: {"width": w, "height": h, "input_scale": s, "top_k": k} for name, (w, h, s, k) in SETTINGS.items()
        },  # fmt: skip
        "runs": {},
    }
    cpu_reference = {}
    for name, (_, _, scale, top_k) in SETTINGS.items():
        cpu = KeypointDetector(device="cpu", top_k=top_k, input_scale=scale, precision="fp32")
        cpu_reference[name] = cpu(images[name]).numpy()
    frames = camera_frames(640, 480, args.frames + 10)
    for config, (backend, precision) in configs.items():
        runs: dict[str, object] = {}
        result["runs"][config] = runs
        for name, (_, _, scale, top_k) in SETTINGS.items():
            started = time.perf_counter()
            try:
                detector = KeypointDetector(
                    device=device, top_k=top_k, input_scale=scale, precision=precision, backend=backend
                )
                image = images[name]
                batch = detector._prepare(image).padded[None]  # noqa: SLF001
                detections = detector(image).numpy()
                row = {"engine": str(detector.engine_choice), "build_s": time.perf_counter() - started}
                row["network_fps"] = fps(lambda d=detector, b=batch: d.engine.forward(b), 10, args.seconds)
                row["detector_fps"] = fps(lambda d=detector, i=image: d(i), 10, args.seconds)
                row["within_1px_of_cpu_fp32"] = within(detections.keypoints, cpu_reference[name].keypoints, 1.0)
                row["keypoints"] = len(detections.keypoints)
                if name == "640x480x1":
                    row["frame_path_fps_serial"] = frame_path_fps(detector, frames, overlapped=False)
                    row["frame_path_fps_overlapped"] = frame_path_fps(detector, frames, overlapped=True)
                    if config == "torch fp32":
                        cpu = KeypointDetector(device="cpu", top_k=top_k, precision="fp32")
                        row["fp32_head_outputs_vs_cpu"] = tf32_effect(detector, cpu, image)
            except Exception as error:  # noqa: BLE001 - report and go on with the other engines
                row = {"error": f"{type(error).__name__}: {error}"}
            runs[name] = row
            print(config, name, json.dumps(row), flush=True)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(result, indent=2) + "\n")  # after every row: a timeout keeps them
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

"""GPU check (run by ``benchmarks/gpu_check.sh`` on a machine with CUDA): network and detector FPS at 640x480 for
torch fp32, torch fp16 and TensorRT fp16, and the exported engine's agreement with fp32. Writes JSON.

Goals from issue 14: >= 300 FPS for the network, >= 60 FPS through the node (bench_node.py --device cuda).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import cv2
import skimage.data
import torch

from kp2d_model import engines
from kp2d_model.detector import KeypointDetector


def fps(call, warmup: int = 10, seconds: float = 5.0) -> float:
    """Calls per second of ``call`` (CUDA synchronised), over about ``seconds``."""
    for _ in range(warmup):
        call()
    torch.cuda.synchronize()
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        call()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1.0 / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/gpu_check.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (torch.cuda.is_available() is False)")
    os.environ.setdefault("KP2D_ENGINE_CACHE", str(args.output.parent / "engine_cache"))
    image = cv2.resize(cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR), (640, 480))
    configs = {"torch fp32": ("torch", "fp32"), "torch fp16": ("torch", "fp16")}
    if engines._installed("tensorrt"):  # noqa: SLF001
        configs["tensorrt fp16"] = ("tensorrt", "fp16")
        configs["tensorrt fp32"] = ("tensorrt", "fp32")
    result: dict[str, object] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "runs": {}}
    reference = None
    for name, (backend, precision) in configs.items():
        started = time.perf_counter()
        try:
            detector = KeypointDetector(device="cuda", top_k=1000, precision=precision, backend=backend)
        except Exception as error:  # noqa: BLE001 - report and go on with the other engines
            result["runs"][name] = {"error": f"{type(error).__name__}: {error}"}
            continue
        build_s = time.perf_counter() - started
        batch = detector._prepare(image).padded[None]  # noqa: SLF001
        detections = detector(image).numpy()
        if reference is None:
            reference = detections
        distance = torch.cdist(torch.from_numpy(detections.keypoints), torch.from_numpy(reference.keypoints))
        result["runs"][name] = {
            "build_s": build_s,
            "network_fps": fps(lambda detector=detector, batch=batch: detector.engine.forward(batch)),
            "detector_fps": fps(lambda detector=detector: detector(image)),
            "within_1px_of_torch_fp32": float((distance.min(dim=1).values <= 1.0).double().mean()),
        }
        print(name, result["runs"][name], flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

"""Per-layer arithmetic rates of KeyPointNet on this CPU: float32 (PyTorch/oneDNN) against INT8 (OpenVINO).

Why: the detector's ``precision="auto"`` is compared with ``"fp32"``. On a CPU without AMX, INT8 runs on
AVX512-VNNI, whose ``VPDPBUSD`` does 64 8-bit multiply-adds per 512-bit instruction against 16 float32 ones
for ``VFMADD``, issued at the same rate: 4x is then the ceiling of the network's speed-up, reached only if both
run at their peaks, before the work around the network (resize, selection, descriptor sampling) that both
precisions share. This measures how close each convolution comes: multiply-adds (MAC), median time in
float32 (forward hooks on the detector's folded network, the ``precision="fp32"`` path) and in the INT8 graph
(OpenVINO's per-node profiling of the ``precision="auto"`` engine, same threads), the GMAC/s of each and their
ratio; and the whole network's time in each.

    .venv/bin/python benchmarks/bench_layer_rates.py            # ~1 minute; quiet machine
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
import skimage.data
import torch
from torch import nn

from kp2d_model import engines
from kp2d_model.detector import KeypointDetector

REPO_ROOT = Path(__file__).resolve().parents[1]


def torch_conv_times(detector: KeypointDetector, batch: np.ndarray, repeats: int) -> dict[str, dict[str, float]]:
    """Each Conv2d of the fp32 detector's network: MAC count and median wall time (ms) over ``repeats`` forwards."""
    network = detector.engine.heads.trunk
    starts: dict[str, float] = {}
    samples: dict[str, list[float]] = {}
    macs: dict[str, int] = {}

    def before(name: str):
        def hook(module: nn.Module, inputs: tuple) -> None:
            starts[name] = time.perf_counter()

        return hook

    def after(name: str):
        def hook(module: nn.Conv2d, inputs: tuple, output: torch.Tensor) -> None:
            samples.setdefault(name, []).append((time.perf_counter() - starts[name]) * 1000.0)
            kernel = module.kernel_size[0] * module.kernel_size[1]
            macs[name] = output.numel() * module.in_channels * kernel // module.groups

        return hook

    handles = []
    for name, module in network.named_modules():
        if isinstance(module, nn.Conv2d):
            handles += [module.register_forward_pre_hook(before(name)), module.register_forward_hook(after(name))]
    try:
        detector.engine.forward(batch)  # warm-up
        samples.clear()
        for _ in range(repeats):
            detector.engine.forward(batch)
    finally:
        for handle in handles:
            handle.remove()
    return {name: {"mac": macs[name], "ms": statistics.median(times)} for name, times in samples.items()}


def openvino_node_times(detector: KeypointDetector, batch: np.ndarray, repeats: int) -> tuple[dict, float]:
    """The INT8 engine's graph compiled as the engine does, plus per-node profiling: {node: (type, exec type,
    median ms)} and the median whole-inference time (ms)."""
    engine = detector.engine
    model = engine.model.clone()
    model.reshape({"image": list(batch.shape)})
    compiled = engine.core.compile_model(model, "CPU", {**engine.config, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    request.infer({0: batch})
    nodes: dict[str, list] = {}
    totals = []
    for _ in range(repeats):
        start = time.perf_counter()
        request.infer({0: batch})
        totals.append((time.perf_counter() - start) * 1000.0)
        for info in request.get_profiling_info():
            entry = nodes.setdefault(info.node_name, [info.node_type, info.exec_type, []])
            entry[2].append(info.real_time.total_seconds() * 1000.0)
    return {name: (kind, exec_type, statistics.median(times)) for name, (kind, exec_type, times) in nodes.items()}, (
        statistics.median(totals)
    )


def layer_of(node_name: str, layers: list[str]) -> str | None:
    """The torch conv whose module path (``convFaa.0`` -> ``convFaa``) names this OpenVINO node."""
    for layer in sorted(layers, key=len, reverse=True):
        if f"/{layer.split('.')[0]}/" in node_name or node_name.startswith(f"{layer.split('.')[0]}"):
            return layer
    return None


def median_ms(function, repeats: int) -> float:
    """Median wall time (ms) of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="640x480", help="WxH (default 640x480)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "layer_rates.json")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    photo = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    batch = cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA)[None]

    fp32 = KeypointDetector(device="cpu", precision="fp32")
    auto = KeypointDetector(device="cpu", precision="auto")
    if auto.engine_choice.backend is not engines.BackendName.OPENVINO:
        raise SystemExit(f"precision='auto' chose {auto.engine_choice}; this benchmark profiles the OpenVINO engine")

    torch_layers = torch_conv_times(fp32, batch, args.repeats)
    nodes, int8_total = openvino_node_times(auto, batch, args.repeats)
    fp32_total = median_ms(lambda: fp32.engine.forward(batch), args.repeats)
    int8_by_layer: dict[str, dict] = {}
    other_ms = 0.0
    for name, (kind, exec_type, ms) in nodes.items():
        layer = layer_of(name, list(torch_layers)) if kind == "Convolution" else None
        if layer is None:
            other_ms += ms
            continue
        entry = int8_by_layer.setdefault(layer, {"ms": 0.0, "exec": []})
        entry["ms"] += ms
        entry["exec"].append(exec_type)

    rows = []
    for layer, entry in torch_layers.items():
        int8 = int8_by_layer.get(layer)
        row = {"layer": layer, "gmac": entry["mac"] / 1e9, "fp32_ms": entry["ms"]}
        row["fp32_gmac_per_s"] = entry["mac"] / entry["ms"] / 1e6
        if int8 is not None:
            row |= {"int8_ms": int8["ms"], "int8_exec": sorted(set(int8["exec"]))}
            row["int8_gmac_per_s"] = entry["mac"] / int8["ms"] / 1e6 if int8["ms"] > 0 else None
            row["fp32_over_int8"] = entry["ms"] / int8["ms"] if int8["ms"] > 0 else None
        rows.append(row)
    flags = sorted(engines.cpu_capabilities())
    result = {
        "size": [width, height],
        "threads": torch.get_num_threads(),
        "cpu_flags": flags,
        "processor": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average_1min_at_end": os.getloadavg()[0],
        "network_fp32_ms": fp32_total,
        "network_int8_ms": int8_total,
        "int8_other_nodes_ms": other_ms,
        "layers": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"network fp32 {fp32_total:.1f} ms, int8 {int8_total:.1f} ms "
          f"({fp32_total / int8_total:.2f}x); int8 non-conv nodes {other_ms:.1f} ms")  # fmt: skip
    print("| layer | GMAC | fp32 ms | fp32 GMAC/s | int8 ms | int8 GMAC/s | fp32/int8 | int8 kernel |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['layer']} | {row['gmac']:.2f} | {row['fp32_ms']:.2f} | {row['fp32_gmac_per_s']:.0f} | "
            f"{row.get('int8_ms', float('nan')):.2f} | {row.get('int8_gmac_per_s') or float('nan'):.0f} | "
            f"{row.get('fp32_over_int8') or float('nan'):.2f} | {','.join(row.get('int8_exec', []))} |"
        )


if __name__ == "__main__":
    main()

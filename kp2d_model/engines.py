"""Inference engines behind :class:`kp2d_model.detector.KeypointDetector`: one contract, several back ends.

Every engine runs the same graph, :class:`DenseHeads`: a uint8 ``(B, H, W, C)`` BGR (or grey) batch ->
the network's raw head outputs (:class:`DenseOutputs`). Everything that needs pixel precision stays in
float32 PyTorch in the detector, whatever the engine: the border mask, the keypoint coordinates
(``cell_keypoints``), selection, descriptor sampling and L2 normalisation.

| backend | precisions | device | needs | graph it runs |
|---|---|---|---|---|
| ``torch`` | fp32 (exact reference), bf16 (autocast, network only), fp16 (CUDA) | CPU, CUDA | - | folded network |
| ``onnxruntime`` | fp32, int8 (static QDQ, calibrated) | CPU | ``onnxruntime`` | ``.onnx`` export |
| ``openvino`` | fp32, bf16 (CPU bf16 hint), int8 (the same QDQ graph) | CPU | ``openvino`` | ``.onnx`` export |
| ``tensorrt`` | fp32, fp16 (the builder flag; TensorRT <= 10) | CUDA | ``tensorrt`` | engine built from the ``.onnx`` |

Engines are imported lazily (inside their class), so the base library needs none of them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from kp2d_model.image import normalize_image

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendName",
    "DenseHeads",
    "DenseOutputs",
    "EngineError",
    "FeatureQuantization",
    "Precision",
    "cpu_capabilities",
    "cut_before_last_conv",
    "export_onnx",
    "parse_choice",
    "quantize_onnx_int8",
    "read_onnx_metadata",
    "resolve_engine",
]

LOG = logging.getLogger("kp2d_model.engines")
ONNX_FORMAT = "kp2d-dense-heads-v1"  # metadata "format" of an exported graph
ONNX_OPSET = 17
BUNDLED_INT8_NAME = "kp2d_default_int8.onnx"


class StrEnum(str, Enum):
    """A str-valued enum that prints as its value (``enum.StrEnum`` is Python 3.11+; ROS 2 Humble runs 3.10)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class EngineError(ValueError):
    """A precision/backend choice that cannot run here, or an engine file that does not fit."""


class Precision(StrEnum):
    """Arithmetic the network runs in (coordinates, scores and descriptor normalisation stay float32)."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    INT8 = "int8"
    AUTO = "auto"


class BackendName(StrEnum):
    """The engine that runs the network."""

    AUTO = "auto"
    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"
    TENSORRT = "tensorrt"


# What each engine can run, and where (checked at construction).
SUPPORTED_PRECISIONS = {
    BackendName.TORCH: (Precision.FP32, Precision.BF16, Precision.FP16),
    BackendName.ONNXRUNTIME: (Precision.FP32, Precision.INT8),
    BackendName.OPENVINO: (Precision.FP32, Precision.BF16, Precision.INT8),
    BackendName.TENSORRT: (Precision.FP32, Precision.FP16),
}
CPU_ONLY = (BackendName.ONNXRUNTIME, BackendName.OPENVINO)
# The Python packages each engine needs: the ONNX engines run a graph this library exports or cuts with `onnx`.
ENGINE_MODULES = {
    BackendName.AUTO: (),
    BackendName.TORCH: (),
    BackendName.ONNXRUNTIME: ("onnxruntime", "onnx"),
    BackendName.OPENVINO: ("openvino", "onnx"),
    BackendName.TENSORRT: ("tensorrt", "onnx"),
}


def parse_choice(enum: type[StrEnum], value: object, what: str) -> Any:
    """``value`` as a member of ``enum`` or EngineError listing the valid names."""
    try:
        return enum(str(value).lower()) if isinstance(value, str) else enum(value)
    except ValueError:
        names = ", ".join(member.value for member in enum)
        raise EngineError(f"{what} must be one of {names}; got {value!r}") from None


@dataclass
class DenseOutputs:
    """The network's raw head outputs, float32 torch tensors on the detector's device.

    score: ``(B, 1, Hc, Wc)`` sigmoid in [0, 1], border cells not yet zeroed; center_shift: ``(B, 2, Hc, Wc)``
    tanh in [-1, 1] (x, y); features: the dense descriptor map ``(B, D, h, w)``, or, from an engine built with
    ``channels_last=True`` on a graph without KeyPointNet's last descriptor conv, that conv's input map
    ``(B, h, w, C)`` (float32, or UINT8 from a cut INT8 graph: :class:`FeatureQuantization`), which the detector
    convolves at the keypoints only.
    """

    score: torch.Tensor
    center_shift: torch.Tensor
    features: torch.Tensor


@dataclass(frozen=True)
class FeatureQuantization:
    """An INT8 graph cut before KeyPointNet's last descriptor conv (:func:`cut_before_last_conv`) returns that
    conv's input as the UINT8 tensor INT8 already holds: real value ``scale * (q - zero_point)``."""

    scale: float
    zero_point: int


class DenseHeads(nn.Module):
    """uint8 ``(B, H, W, C)`` image batch -> ``(score, center_shift, features)``: the graph every engine runs.

    ``trunk``: a network with a ``heads(x)`` method (KeypointNet / KeypointResnet, usually BatchNorm-folded).
    H and W must be multiples of the network's stride.
    """

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = trunk

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = normalize_image(image.permute(0, 3, 1, 2).float() / 255.0)
        return self.trunk.heads(x.contiguous(memory_format=torch.channels_last))


# --- capabilities -------------------------------------------------------------------------------------


# What oneDNN may use under ``ONEDNN_MAX_CPU_ISA`` (oneDNN's documented cap, also read by OpenVINO's CPU
# plugin and torch): the flags of ``cpu_capabilities`` each level allows. Unknown or uncapped values: all.
_ONEDNN_ISA_FLAGS = {
    "SSE41": frozenset(),
    "AVX": frozenset(),
    "AVX2": frozenset(),
    "AVX2_VNNI": frozenset({"avx_vnni"}),
    "AVX2_VNNI_2": frozenset({"avx_vnni"}),
    "AVX512_CORE": frozenset({"avx512f"}),
    "AVX512_CORE_VNNI": frozenset({"avx512f", "avx512_vnni", "avx_vnni"}),
    "AVX512_CORE_BF16": frozenset({"avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16"}),
    "AVX512_CORE_FP16": frozenset({"avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16"}),
}


@functools.cache
def cpu_capabilities() -> frozenset[str]:
    """This CPU's flags that matter for reduced precision: a subset of ``avx512_bf16``, ``amx_bf16``,
    ``amx_int8``, ``avx512_vnni``, ``avx_vnni``, ``avx512f`` (read from /proc/cpuinfo on Linux, plus what
    torch's dispatcher reports; empty elsewhere), less what ``ONEDNN_MAX_CPU_ISA`` (or the older
    ``DNNL_MAX_CPU_ISA``) forbids: with ``ONEDNN_MAX_CPU_ISA=AVX2`` the CPU counts as AVX2-only, as oneDNN
    then treats it, so ``"auto"`` picks no bf16 or INT8 engine that the cap would break."""
    wanted = {"avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni", "avx_vnni", "avx512f"}
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    with_torch = getattr(torch._C._cpu, "_is_amx_tile_supported", lambda: False)()  # noqa: SLF001
    if with_torch:
        flags.update({"amx_bf16", "amx_int8"})
    allowed = _ONEDNN_ISA_FLAGS.get((onednn_isa_cap() or "").strip().upper(), frozenset(wanted))
    return frozenset(flags & wanted & allowed)


def onednn_isa_cap() -> str | None:
    """oneDNN's instruction-set cap from the environment: ``ONEDNN_MAX_CPU_ISA`` (or the older ``DNNL_MAX_CPU_ISA``)."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or None


BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # the CPU computes bf16 dot products itself


def native_bf16() -> bool:
    """The CPU computes bf16 dot products itself (AVX512-BF16 or AMX-BF16, as ``cpu_capabilities`` counts)."""
    return bool(cpu_capabilities() & BF16_FLAGS)


def error_reason(error: BaseException) -> str:
    """The last non-empty line of an engine library's error: OpenVINO prints a stack of ``Exception from
    <file>:<line>`` lines before the reason."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _engine_installed(backend: BackendName) -> bool:
    """All the Python packages ``backend`` needs are importable (``ENGINE_MODULES``)."""
    return all(_installed(module) for module in ENGINE_MODULES[backend])


def _require(module: str, needed_for: str) -> Any:
    """``import module``, or EngineError naming the missing package and what needs it (not an ImportError from
    inside an export or a calibration)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise EngineError(f"{needed_for} needs the Python package {package!r} (pip install {package})") from None


# Set to 1 to let OpenVINO send its usage telemetry (off by default: see import_openvino).
OPENVINO_TELEMETRY_ENV = "KP2D_OPENVINO_TELEMETRY"
_OPENVINO_IMPORT_LOCK = threading.Lock()


def import_openvino() -> Any:
    """``import openvino`` without its usage telemetry, unless ``KP2D_OPENVINO_TELEMETRY=1``.

    On import (and on every ``convert_model``) OpenVINO sends a Google Analytics event unless the user opted out
    with its ``opt_in_out`` tool: it forks a process from the caller's, which in a ROS node already runs DDS and
    executor threads (Python 3.12 warns that such a fork may deadlock), tries the network from a robot, and writes
    a client id under ``~/intel``. A detector should do none of that. With ``openvino_telemetry`` not importable
    while OpenVINO loads, OpenVINO uses its own no-op stub; the block is lifted right after, so other code that
    imports ``openvino_telemetry`` itself is unaffected. If ``openvino`` was already imported, it is returned as is.
    """
    import importlib
    import sys

    with _OPENVINO_IMPORT_LOCK:  # engines built in two threads at once must not undo each other's sys.modules entries
        if "openvino" in sys.modules or os.environ.get(OPENVINO_TELEMETRY_ENV) == "1":
            return importlib.import_module("openvino")
        loaded = {name: sys.modules.pop(name) for name in list(sys.modules) if name.startswith("openvino_telemetry")}
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # -> ImportError -> OpenVINO's stub
        try:
            return importlib.import_module("openvino")
        finally:
            del sys.modules["openvino_telemetry"]
            sys.modules.update(loaded)


@dataclass(frozen=True)
class EngineChoice:
    """What runs the network: backend, precision and the reason (one log line)."""

    backend: BackendName
    precision: Precision
    reason: str

    def __str__(self) -> str:
        return f"backend={self.backend.value} precision={self.precision.value} ({self.reason})"


def resolve_engine(
    precision: str | Precision,
    backend: str | BackendName,
    device: torch.device,
    int8_ready: bool = False,
) -> EngineChoice:
    """Validate a precision/backend pair for ``device`` and settle ``"auto"`` from what this machine has.

    ``int8_ready``: an INT8 calibration (photos or a calibrated graph) was given. Raises EngineError for
    an unknown name or a pair that cannot run here (explicit choices never fall back).
    """
    precision = parse_choice(Precision, precision, "precision")
    backend = parse_choice(BackendName, backend, "backend")
    cuda = device.type == "cuda"
    if precision is Precision.AUTO:
        return _auto(backend, cuda, int8_ready)
    if backend is BackendName.AUTO:
        backend = _auto_backend_for(precision, cuda)
    _check_pair(backend, precision, cuda, int8_ready)
    return EngineChoice(backend, precision, "as requested")


def _check_pair(backend: BackendName, precision: Precision, cuda: bool, int8_ready: bool) -> None:
    if precision not in SUPPORTED_PRECISIONS[backend]:
        valid = ", ".join(p.value for p in SUPPORTED_PRECISIONS[backend])
        raise EngineError(f"backend {backend.value} runs precision {valid}; got precision {precision.value}")
    if backend is BackendName.TENSORRT and not cuda:
        raise EngineError("backend tensorrt needs a CUDA device (device='cuda'); this detector's device is the CPU")
    if backend in CPU_ONLY and cuda:
        raise EngineError(f"backend {backend.value} runs on the CPU here; use device='cpu' or backend torch/tensorrt")
    if backend is BackendName.TORCH and precision is Precision.FP16 and not cuda:
        raise EngineError("precision fp16 with backend torch needs CUDA; on the CPU use bf16 or int8")
    if backend is BackendName.OPENVINO and precision is Precision.BF16 and not native_bf16():
        raise EngineError(
            "precision bf16 with backend openvino needs a CPU that computes bf16 (AVX512-BF16 or AMX-BF16; this "
            f"one: {_flags(cpu_capabilities(), 'bf16', 'vnni', 'amx')}, after ONEDNN_MAX_CPU_ISA); use backend "
            "torch (bf16 emulated, slow), precision int8 or fp32"
        )
    if precision is Precision.INT8 and not int8_ready:
        raise EngineError(
            "precision int8 needs calibration photos (calibration=<folder of training photos>) or an INT8 "
            "graph exported by kp2d-export --precision int8; never calibrate on benchmark photos"
        )
    missing = [module for module in ENGINE_MODULES[backend] if not _installed(module)]
    if missing:
        names = " and ".join(repr(module) for module in missing)
        raise EngineError(
            f"backend {backend.value} needs the Python package{'s' if len(missing) > 1 else ''} {names} "
            f"(pip install {' '.join(missing)}; requirements/engines.txt, or requirements/humble.txt on Humble)"
        )
    if backend is BackendName.TENSORRT:
        tensorrt_build_options(tensorrt_major_version(), precision)  # raises for fp16 on TensorRT 11+


def _auto_backend_for(precision: Precision, cuda: bool) -> BackendName:
    if precision is Precision.FP32 or precision is Precision.FP16:
        return BackendName.TORCH
    if precision is Precision.BF16:
        openvino = not cuda and native_bf16() and _engine_installed(BackendName.OPENVINO)
        return BackendName.OPENVINO if openvino else BackendName.TORCH
    return BackendName.OPENVINO if _engine_installed(BackendName.OPENVINO) else BackendName.ONNXRUNTIME  # int8


def _auto(backend: BackendName, cuda: bool, int8_ready: bool) -> EngineChoice:
    """The fastest setting measured to keep quality on this machine (docs/inference.md, "Engines")."""
    if cuda:
        tensorrt = _engine_installed(BackendName.TENSORRT) and backend in (BackendName.AUTO, BackendName.TENSORRT)
        major = tensorrt_major_version() if tensorrt else None
        if major is not None and major <= TENSORRT_LAST_FP16_FLAG:
            return EngineChoice(BackendName.TENSORRT, Precision.FP16, f"CUDA device, TensorRT {major} installed")
        if backend is BackendName.TENSORRT:  # TensorRT 11+: fp32 only from our fp32 graph
            _check_pair(backend, Precision.FP32, cuda, int8_ready)  # raises when tensorrt is not installed
            return EngineChoice(BackendName.TENSORRT, Precision.FP32, f"CUDA device, TensorRT {major}: no fp16 flag")
        if backend in (BackendName.AUTO, BackendName.TORCH):
            reason = "CUDA device" if major is None else f"CUDA device; TensorRT {major} has no fp16 builder flag"
            return EngineChoice(BackendName.TORCH, Precision.FP16, reason)
        raise EngineError(f"backend {backend.value} does not run on CUDA here; use backend torch or tensorrt")
    caps = cpu_capabilities()
    openvino = _engine_installed(BackendName.OPENVINO) and backend in (BackendName.AUTO, BackendName.OPENVINO)
    vnni = bool(caps & {"avx512_vnni", "avx_vnni", "amx_int8"})
    onnxruntime = backend is BackendName.ONNXRUNTIME and _engine_installed(BackendName.ONNXRUNTIME)
    if int8_ready and vnni and (openvino or onnxruntime):
        chosen = BackendName.OPENVINO if openvino else BackendName.ONNXRUNTIME
        float_convs = ", float convs bf16" if openvino and openvino_float_hint(Precision.INT8, caps) == "bf16" else ""
        return EngineChoice(
            chosen,
            Precision.INT8,
            f"CPU has {_flags(caps, 'vnni', 'amx_int8')}, INT8 graph available{float_convs}",
        )
    if openvino and caps & BF16_FLAGS:
        return EngineChoice(BackendName.OPENVINO, Precision.BF16, f"CPU has {_flags(caps, 'bf16')}")
    if backend in (BackendName.AUTO, BackendName.TORCH) and "amx_bf16" in caps:
        return EngineChoice(BackendName.TORCH, Precision.BF16, "CPU has amx_bf16, openvino not installed")
    if backend is BackendName.AUTO or backend is BackendName.TORCH:
        return EngineChoice(
            BackendName.TORCH, Precision.FP32, f"no faster setting on this CPU ({_flags(caps, 'bf16', 'vnni', 'amx')})"
        )
    _check_pair(backend, Precision.FP32, cuda, int8_ready)  # e.g. tensorrt on the CPU: refused here, by name
    return EngineChoice(backend, Precision.FP32, "no reduced precision on this CPU for this backend")


def _flags(caps: frozenset[str], *parts: str) -> str:
    found = sorted(flag for flag in caps if any(part in flag for part in parts))
    return "+".join(found) if found else "no bf16/vnni/amx flags"


# --- ONNX export and INT8 quantisation ------------------------------------------------------------------


def export_onnx(heads: DenseHeads, path: str | Path, metadata: dict[str, Any], channels: int = 3) -> Path:
    """Write ``heads`` as an ONNX graph (opset 17): input ``image`` uint8 ``(B, H, W, C)`` with dynamic B, H, W;
    outputs ``score``, ``center_shift``, ``features`` float32. ``metadata`` (JSON-able values) is stored in
    the model's metadata_props, with ``format`` = ``kp2d-dense-heads-v1``."""
    onnx = _require("onnx", "exporting an ONNX graph")  # lazily: only the engines need it
    path = Path(path)
    stride = int(metadata["stride"])
    example = torch.zeros(1, 2 * stride, 2 * stride, channels, dtype=torch.uint8)
    was_training = heads.training
    heads = heads.cpu().eval()  # heads() has no train/eval-dependent layer; restored below
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the TorchScript exporter: no onnxscript needed
        torch.onnx.export(
            heads,
            (example,),
            str(path),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["image"],
            output_names=["score", "center_shift", "features"],
            dynamic_axes={
                "image": {0: "batch", 1: "height", 2: "width"},
                "score": {0: "batch", 2: "cells_h", 3: "cells_w"},
                "center_shift": {0: "batch", 2: "cells_h", 3: "cells_w"},
                "features": {0: "batch", 2: "map_h", 3: "map_w"},
            },
        )
    heads.train(was_training)
    model = onnx.load(str(path))
    _set_metadata(model, {"format": ONNX_FORMAT, **metadata})
    onnx.save(model, str(path))
    return path


def _set_metadata(model: Any, metadata: dict[str, Any]) -> None:
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The kp2d metadata of an exported ``.onnx`` (or OpenVINO ``.xml`` next to it), or EngineError naming the file."""
    onnx = _require("onnx", "reading an exported graph")
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - protobuf raises several types for a bad file
        raise EngineError(f"{path}: not an ONNX model ({error.__class__.__name__})") from None
    metadata = {entry.key: json.loads(entry.value) for entry in model.metadata_props}
    if metadata.get("format") != ONNX_FORMAT:
        raise EngineError(f"{path}: not a kp2d export (metadata format {metadata.get('format')!r}, want {ONNX_FORMAT})")
    return metadata


def quantize_onnx_int8(fp32_path: str | Path, int8_path: str | Path, calibration_batches: Sequence[np.ndarray]) -> Path:
    """Static post-training quantisation of an exported graph into QDQ INT8 (ONNX Runtime's quantiser).

    Convolutions get INT8 weights (per output channel) and UINT8 activations whose ranges come from
    ``calibration_batches`` (uint8 ``(B, H, W, C)`` arrays: training photos, never benchmark photos). The
    score and location heads' last convolutions and the location head's first one stay float32.
    """
    onnx = _require("onnx", "INT8 calibration")
    quantization = _require("onnxruntime.quantization", "INT8 calibration")
    CalibrationDataReader, QuantFormat, QuantType = (  # noqa: N806 - onnxruntime's class names
        quantization.CalibrationDataReader,
        quantization.QuantFormat,
        quantization.QuantType,
    )
    if not calibration_batches:
        raise EngineError("INT8 calibration needs at least one image")
    model = onnx.load(str(fp32_path))
    metadata = {entry.key: json.loads(entry.value) for entry in model.metadata_props}
    keep_float = _head_output_convs(model)

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration_batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"image": np.ascontiguousarray(batch, dtype=np.uint8)}

    fp32_path, int8_path = Path(fp32_path).resolve(), Path(int8_path).resolve()
    # ONNX Runtime before 1.13 (Humble's NumPy 1.21 allows up to 1.12) writes its calibration graph,
    # augmented_model.onnx, into the working directory: there it runs from a temporary one (paths are absolute;
    # the working directory is the process's, so only where needed).
    runtime_version = _require("onnxruntime", "INT8 calibration").__version__  # also onnxruntime-gpu's
    old_runtime = tuple(int(part) for part in runtime_version.split(".")[:2]) < (1, 13)
    with tempfile.TemporaryDirectory(prefix="kp2d-quantise-") as scratch:
        with _working_directory(scratch) if old_runtime else contextlib.nullcontext():
            quantization.quantize_static(
                str(fp32_path),
                str(int8_path),
                Batches(),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["Conv"],
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=keep_float,
            )
    quantized = onnx.load(str(int8_path))
    _float_graph_outputs(quantized)
    _set_metadata(
        quantized,
        {
            **metadata,
            "precision": "int8",
            "calibration_images": int(sum(batch.shape[0] for batch in calibration_batches)),
        },
    )
    onnx.save(quantized, str(int8_path))
    return Path(int8_path)


@contextlib.contextmanager
def _working_directory(path: str | Path) -> Iterator[None]:
    """The process's working directory is ``path`` inside the block (``contextlib.chdir`` is Python 3.11+)."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _float_graph_outputs(model: Any) -> None:
    """Remove the QuantizeLinear -> DequantizeLinear pair the quantiser puts on a graph output (the dense
    descriptor map): nothing INT8 consumes it, and rounding it to 256 levels only cost descriptor accuracy
    (docs/inference.md, "INT8"). The producing convolution then writes float32 directly."""
    nodes = list(model.graph.node)
    by_output = {output: node for node in nodes for output in node.output}
    for graph_output in model.graph.output:
        dequantize = by_output.get(graph_output.name)
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            continue
        quantize = by_output.get(dequantize.input[0])
        if quantize is None or quantize.op_type != "QuantizeLinear":
            continue
        producer = by_output.get(quantize.input[0])
        readers = [node for node in nodes if quantize.input[0] in node.input]
        if producer is None or readers != [quantize]:
            continue  # the float value feeds something else too: leave the graph as it is
        producer.output[list(producer.output).index(quantize.input[0])] = graph_output.name
        model.graph.node.remove(quantize)
        model.graph.node.remove(dequantize)
    _remove_unused_initializers(model)  # the pair's scale and zero point


def _remove_unused_initializers(model: Any) -> None:
    """Drop the initializers no node reads any more (ONNX Runtime warns about orphans)."""
    used = {name for node in model.graph.node for name in node.input}
    for initializer in [tensor for tensor in model.graph.initializer if tensor.name not in used]:
        model.graph.initializer.remove(initializer)


def cached_int8_graph(fp32_path: str | Path, calibration_batches: Sequence[np.ndarray]) -> Path:
    """The INT8 graph of ``fp32_path`` calibrated on ``calibration_batches``, from the cache
    (``$KP2D_ENGINE_CACHE``, default ``~/.cache/kp2d``, keyed by the graph's and the photos' bytes) or made now."""
    digest = hashlib.sha256(Path(fp32_path).read_bytes())
    for batch in calibration_batches:
        digest.update(np.ascontiguousarray(batch).tobytes())
    path = cache_dir() / f"dense_heads_int8_{digest.hexdigest()[:16]}.onnx"
    if not path.is_file():
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        quantize_onnx_int8(fp32_path, partial, calibration_batches)
        partial.replace(path)
    return path


def cut_before_last_conv(int8_path: str | Path, out_path: str | Path) -> FeatureQuantization:
    """The INT8 graph of a KeyPointNet without its last descriptor conv: the third output is that conv's UINT8
    input (the QuantizeLinear before it, renamed ``features``) instead of the dense descriptor map.

    The dense conv is 11.3 of the network's 52.7 GMAC at 640x480 (12-13 ms of ~65 ms in OpenVINO INT8 on an
    AVX512-VNNI CPU); at 1,000 keypoints the detector's sampled conv costs a fraction of that (docs/inference.md,
    "Precision and engines"). Written to ``out_path`` (~50 ms; the detector cuts into a temporary folder, so
    nothing is cached). EngineError when the graph's ``features`` output is not a Conv reading a
    DequantizeLinear of a QuantizeLinear (not a KeyPointNet QDQ graph).
    """
    onnx = _require("onnx", "cutting the INT8 graph")
    numpy_helper = onnx.numpy_helper
    model = onnx.load(str(int8_path))
    producers = {output: node for node in model.graph.node for output in node.output}
    conv = producers.get("features")
    dequantize = producers.get(conv.input[0]) if conv is not None and conv.op_type == "Conv" else None
    if dequantize is not None and dequantize.op_type != "DequantizeLinear":
        dequantize = None
    quantize = producers.get(dequantize.input[0]) if dequantize is not None else None
    if quantize is None or quantize.op_type != "QuantizeLinear":
        raise EngineError(f"{int8_path}: 'features' is not a Conv on a quantised input; cannot cut its last conv")
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    scale, zero_point = (initializers.get(name) for name in dequantize.input[1:3])
    if scale is None or zero_point is None or scale.size != 1 or zero_point.dtype != np.uint8:
        raise EngineError(f"{int8_path}: the last conv's input is not per-tensor UINT8; cannot cut it")
    readers = [node for node in model.graph.node if set(node.input) & {quantize.output[0], dequantize.output[0]}]
    if readers != [dequantize, conv] and readers != [conv, dequantize]:
        raise EngineError(f"{int8_path}: the last conv's quantised input feeds other nodes too; cannot cut it")
    model.graph.node.remove(conv)
    model.graph.node.remove(dequantize)
    quantize.output[0] = "features"
    kept = {id(node) for node in _ancestors(model, ["score", "center_shift", "features"])}
    for node in [node for node in model.graph.node if id(node) not in kept]:
        model.graph.node.remove(node)
    _remove_unused_initializers(model)
    features = next(output for output in model.graph.output if output.name == "features")
    features.type.tensor_type.elem_type = onnx.TensorProto.UINT8
    features.type.tensor_type.ClearField("shape")  # the conv's input channels: left to shape inference
    onnx.save(model, str(out_path))
    return FeatureQuantization(float(scale), int(zero_point))


def _ancestors(model: Any, outputs: list[str]) -> list[Any]:
    """The nodes of ``model`` that the named tensors depend on."""
    producers = {output: node for node in model.graph.node for output in node.output}
    needed, stack, seen = [], list(outputs), set()
    while stack:
        node = producers.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        needed.append(node)
        stack.extend(node.input)
    return needed


def cache_dir() -> Path:
    """Where built engines are kept: ``$KP2D_ENGINE_CACHE``, default ``~/.cache/kp2d`` (created).

    A cache is an optimisation: where that folder cannot be made or written (a service user without a home, a
    read-only file system in a container), built engines go to a temporary folder of this process instead, with
    one warning naming the folder and the reason (they are then rebuilt at every start), rather than a failure.
    """
    try:
        path = Path(os.environ.get("KP2D_ENGINE_CACHE") or Path.home() / ".cache" / "kp2d")
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK | os.X_OK):
            return path
        problem = f"{path} is not writable"
    except (OSError, RuntimeError) as error:  # RuntimeError: Path.home() without HOME and without a passwd entry
        problem = str(error)
    fallback = _temporary_cache_dir()
    _warn_once(
        f"engine cache unavailable ({problem}); built engines go to {fallback} for this process and are rebuilt at "
        "every start: set KP2D_ENGINE_CACHE to a writable folder to keep them"
    )
    return fallback


@functools.cache
def _temporary_cache_dir() -> Path:
    """One temporary folder per process for built engines, removed at exit."""
    import atexit
    import shutil

    path = Path(tempfile.mkdtemp(prefix="kp2d-engine-cache-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def _warn_once(message: str) -> None:
    LOG.warning(message)


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def bundled_int8_graph(checkpoint: str | os.PathLike | None) -> Path | None:
    """The bundled INT8 graph (``kp2d_model/weights/kp2d_default_int8.onnx``) when ``checkpoint`` (None: the
    default model) is the model it was made from (its metadata ``weights_sha256``), else None."""
    from kp2d_model.checkpoint import default_checkpoint_path

    weights = default_checkpoint_path() if checkpoint is None else Path(checkpoint)
    graph = default_checkpoint_path().with_name(BUNDLED_INT8_NAME)
    if not (graph.is_file() and weights.is_file() and _installed("onnx")):
        return None
    try:
        return graph if read_onnx_metadata(graph).get("weights_sha256") == file_sha256(weights) else None
    except EngineError:
        return None


def _head_output_convs(model: Any) -> list[str]:
    """Names of the Conv nodes that stay float32: the last conv of the score and location heads (the Convs feeding
    the graph's Sigmoid/Tanh) and the location head's first conv too (the Conv before its activation).

    They set the keypoint positions and scores. Measured on the benchmark (docs/inference.md, "INT8"): with only
    the last convs float, C3 at 320x240 fell 0.047 (7 of 150 pairs); with the location head float it stays within
    2 pairs at every setting, for ~15 % of the INT8 speed-up; the score head's first conv float as well cost
    another ~10 % without improving C3."""
    producers = {output: node for node in model.graph.node for output in node.output}
    names = []
    for node in model.graph.node:
        if node.op_type not in ("Sigmoid", "Tanh"):
            continue
        last = producers.get(node.input[0])
        if last is None or last.op_type != "Conv":
            continue
        names.append(last.name)
        activation = producers.get(last.input[0])
        if node.op_type == "Tanh" and activation is not None and activation.op_type in ("LeakyRelu", "Relu"):
            first = producers.get(activation.input[0])
            if first is not None and first.op_type == "Conv":
                names.append(first.name)
    return names


# --- back ends --------------------------------------------------------------------------------------------


class Backend(Protocol):
    """One engine: ``forward(uint8 (B, H, W, C)) -> DenseOutputs`` (float32 torch tensors on ``device``)."""

    name: BackendName
    precision: Precision
    device: torch.device

    def forward(self, batch: np.ndarray) -> DenseOutputs: ...


class TorchBackend:
    """The folded network in PyTorch; bf16/fp16 by autocast around the network only."""

    name = BackendName.TORCH

    def __init__(
        self, heads: DenseHeads, device: torch.device, precision: Precision, channels_last: bool = False, **_: Any
    ):
        self.heads, self.device, self.precision, self.channels_last = heads, device, precision, channels_last
        self.dtype = {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}.get(precision)

    def forward(self, batch: np.ndarray) -> DenseOutputs:
        # The same operations as DenseHeads.forward, with the uint8 -> float conversion on the device.
        tensor = torch.from_numpy(batch).to(self.device, non_blocking=True)
        tensor = tensor.permute(0, 3, 1, 2).float().div_(255.0)
        tensor = normalize_image(tensor).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), cudnn_settings(self.device, self.precision):
            if self.dtype is None:
                outputs = self.heads.trunk.heads(tensor)
            else:
                with torch.autocast(device_type=self.device.type, dtype=self.dtype):
                    outputs = self.heads.trunk.heads(tensor)
        score, center_shift, features = (output.float() for output in outputs)
        if self.channels_last:  # the network runs channels last: (B, h, w, C) is a view of the same memory
            features = features.permute(0, 2, 3, 1)
        return DenseOutputs(score, center_shift, features)


def cudnn_settings(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """cuDNN's settings for one network call on CUDA (nothing elsewhere), restored afterwards: fp32 without TF32.

    PyTorch lets cuDNN convolutions round fp32 inputs to TF32 (10-bit mantissa) by default, which would make
    ``precision="fp32"`` on CUDA differ from the CPU reference by up to ~0.1 px; fp32 stays IEEE float32
    (``test_cuda_fp32_detector_equals_the_cpu_reference``). bf16 / fp16 run under autocast, where TF32 plays no
    part. cuDNN's kernel autotuning (``torch.backends.cudnn.benchmark``) is left as the caller set it: it pays for
    a stream of one frame size (the ROS node turns it on), not for images of many sizes (seconds per new size).
    """
    if device.type != "cuda" or precision is not Precision.FP32:
        return contextlib.nullcontext()
    cudnn = torch.backends.cudnn
    flags: dict[str, Any] = {"enabled": cudnn.enabled, "benchmark": cudnn.benchmark}
    flags.update(deterministic=cudnn.deterministic, allow_tf32=False)
    if _cudnn_flags_take_fp32_precision():
        flags["fp32_precision"] = "ieee"  # PyTorch >= 2.9: the new setting must say so too (checked)
    return cudnn.flags(**flags)


@functools.cache
def _cudnn_flags_take_fp32_precision() -> bool:
    """Whether this PyTorch's ``torch.backends.cudnn.flags`` has the ``fp32_precision`` setting (2.9 and later)."""
    return "fp32_precision" in inspect.signature(torch.backends.cudnn.flags).parameters


class OnnxRuntimeBackend:
    """An exported graph (fp32 or QDQ INT8) in ONNX Runtime's CPU execution provider."""

    name = BackendName.ONNXRUNTIME

    def __init__(
        self,
        onnx_path: Path,
        device: torch.device,
        precision: Precision,
        threads: int,
        channels_last: bool = False,
        **_: Any,
    ):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.device, self.precision, self.channels_last = device, precision, channels_last

    def forward(self, batch: np.ndarray) -> DenseOutputs:
        score, center_shift, features = self.session.run(None, {"image": np.ascontiguousarray(batch)})
        if self.channels_last:
            features = np.ascontiguousarray(features.transpose(0, 2, 3, 1))
        return DenseOutputs(*(torch.from_numpy(output) for output in (score, center_shift, features)))


def openvino_float_hint(precision: Precision, caps: frozenset[str] | None = None) -> str:
    """OpenVINO's ``INFERENCE_PRECISION_HINT`` for the layers a graph runs in floating point.

    bf16 for ``precision="bf16"``; for ``"int8"`` too when the CPU computes bf16 natively (AVX512-BF16 or
    AMX-BF16): the INT8 graph's float convolutions (the location head and the heads' last convs) then run as
    bf16 dot products with float32 accumulation, ~6 ms less at 640x480 on an AVX512-BF16 CPU, with the same
    agreement with fp32 (docs/inference.md, "INT8"). The graph's outputs stay float32 and the coordinates are
    computed from them in float32 afterwards. Otherwise f32."""
    caps = cpu_capabilities() if caps is None else caps
    if precision is Precision.BF16:
        return "bf16"
    if precision is Precision.INT8 and caps & BF16_FLAGS:
        return "bf16"
    return "f32"


class OpenVinoBackend:
    """An exported graph in OpenVINO's CPU plugin, compiled once per input shape (fp32, bf16 hint, or the
    QDQ INT8 graph, which OpenVINO runs with INT8 kernels)."""

    name = BackendName.OPENVINO
    max_compiled_shapes = 4

    def __init__(
        self,
        onnx_path: Path,
        device: torch.device,
        precision: Precision,
        threads: int,
        channels_last: bool = False,
        **_: Any,
    ):
        openvino = import_openvino()
        self.core = openvino.Core()
        self.model = self.core.read_model(str(onnx_path))
        if channels_last:  # written out in that layout by the plugin (its INT8 convolutions use it inside)
            from openvino.preprocess import PrePostProcessor

            steps = PrePostProcessor(self.model)
            steps.output("features").model().set_layout(openvino.Layout("NCHW"))
            steps.output("features").tensor().set_layout(openvino.Layout("NHWC"))
            self.model = steps.build()
        self.device, self.precision = device, precision
        self.config = {"INFERENCE_PRECISION_HINT": openvino_float_hint(precision), "INFERENCE_NUM_THREADS": threads}
        self.config["PERFORMANCE_HINT"] = "LATENCY"
        self.compiled: dict[tuple[int, ...], Callable] = {}

    def _compiled(self, shape: tuple[int, ...]) -> Callable:
        if shape not in self.compiled:
            if len(self.compiled) >= self.max_compiled_shapes:
                self.compiled.pop(next(iter(self.compiled)))
            model = self.model.clone()
            model.reshape({"image": list(shape)})
            try:
                self.compiled[shape] = self.core.compile_model(model, "CPU", self.config)
            except RuntimeError as error:
                raise EngineError(
                    f"OpenVINO could not compile the {self.precision.value} graph for input {list(shape)} on this "
                    f"CPU (float layers {self.config['INFERENCE_PRECISION_HINT']}): {error_reason(error)}"
                ) from error
        return self.compiled[shape]

    def forward(self, batch: np.ndarray) -> DenseOutputs:
        compiled = self._compiled(tuple(batch.shape))
        results = compiled(np.ascontiguousarray(batch))
        # share_outputs=False (the default): the arrays are fresh copies this call owns, wrapped without a copy.
        return DenseOutputs(*(torch.from_numpy(results[output]) for output in compiled.outputs))


TENSORRT_LAST_FP16_FLAG = 10  # TensorRT 11 removed BuilderFlag.FP16 with the rest of "weak typing"


def tensorrt_major_version() -> int:
    """The installed TensorRT's major version (JetPack 6.0: 8, JetPack 6.1/6.2: 10, PyPI in 2026: 11)."""
    import tensorrt

    return int(str(tensorrt.__version__).split(".")[0])


@dataclass(frozen=True)
class TensorRtBuildOptions:
    """How to build for one TensorRT major version and precision (``tensorrt_build_options``)."""

    explicit_batch_flag: bool  # TensorRT < 10 needs it for ONNX graphs; 10 deprecated it, 11 has only explicit batch
    fp16_flag: bool  # BuilderFlag.FP16: fp16 kernels allowed in an fp32 graph (TensorRT <= 10)
    clear_tf32: bool  # fp32 stays IEEE float32, as the torch engine on CUDA (TensorRT allows TF32 by default)


def tensorrt_build_options(major: int, precision: Precision) -> TensorRtBuildOptions:
    """Build options for TensorRT ``major`` and ``precision`` (fp32 or fp16); raises EngineError for fp16 on
    TensorRT 11 and later, which dropped the fp16 builder flag (a network's precision comes from its graph there,
    and the exported graph is fp32)."""
    if precision is Precision.FP16 and major > TENSORRT_LAST_FP16_FLAG:
        raise EngineError(
            f"backend tensorrt precision fp16 needs TensorRT {TENSORRT_LAST_FP16_FLAG} or older (JetPack 6.x has it); "
            f"TensorRT {major} removed the fp16 builder flag. Use precision='fp32' with backend tensorrt, or "
            "backend='torch' with precision='fp16' (what precision='auto' chooses here)"
        )
    return TensorRtBuildOptions(major < 10, precision is Precision.FP16, precision is Precision.FP32)


class TensorRtBackend:
    """A TensorRT engine built from the exported graph (fp16 by the builder flag up to TensorRT 10), on CUDA.

    The engine is built once per graph, precision, TensorRT version and GPU and cached next to the graph
    (``*.fp16.trt10.3.0.30.sm87.engine``), with an optimisation profile for batch 1-4 and H, W from 64 to 1088
    (Jetson users: build on the Jetson itself; engines are not portable across GPUs or TensorRT versions).
    """

    name = BackendName.TENSORRT

    def __init__(self, onnx_path: Path, device: torch.device, precision: Precision, **_: Any):
        if device.type != "cuda" or not torch.cuda.is_available():
            raise EngineError("backend tensorrt needs a CUDA device; none is available here")
        import tensorrt

        self.trt, self.device, self.precision = tensorrt, device, precision
        # An engine is tied to the TensorRT version and the GPU: both are in the cached file's name.
        major, minor = torch.cuda.get_device_capability(device)
        engine_path = Path(onnx_path).with_suffix(
            f".{precision.value}.trt{tensorrt.__version__}.sm{major}{minor}.engine"
        )
        runtime = tensorrt.Runtime(tensorrt.Logger(tensorrt.Logger.WARNING))
        self.engine = _load_tensorrt_engine(runtime, engine_path) if engine_path.is_file() else None
        if self.engine is None:  # not built yet, or an unreadable file (an interrupted build): build it
            build_tensorrt_engine(onnx_path, engine_path, precision)
            self.engine = _load_tensorrt_engine(runtime, engine_path)
        if self.engine is None:
            raise EngineError(f"{engine_path}: TensorRT could not load the engine it built (see the TensorRT log)")
        self.context = self.engine.create_execution_context()

    def forward(self, batch: np.ndarray) -> DenseOutputs:
        image = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        self.context.set_input_shape("image", tuple(image.shape))
        self.context.set_tensor_address("image", image.data_ptr())
        outputs = []
        for name in ("score", "center_shift", "features"):
            output = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=torch.float32, device=self.device)
            self.context.set_tensor_address(name, output.data_ptr())
            outputs.append(output)
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise EngineError("TensorRT execution failed")
        stream.synchronize()
        return DenseOutputs(*outputs)


def _load_tensorrt_engine(runtime: Any, path: Path) -> Any:
    """The deserialised engine in ``path``, or None where TensorRT cannot read it (it logs why)."""
    try:
        return runtime.deserialize_cuda_engine(path.read_bytes())
    except (RuntimeError, TypeError):  # some versions raise instead of returning None
        return None


def save_openvino(onnx_path: str | Path, xml_path: str | Path) -> Path:
    """Convert an exported graph into OpenVINO IR (``.xml`` + ``.bin``), the kp2d metadata under rt_info ``kp2d``."""
    openvino = import_openvino()

    metadata = read_onnx_metadata(onnx_path)
    model = openvino.convert_model(str(onnx_path))
    for key, value in metadata.items():
        model.set_rt_info(json.dumps(value), ["kp2d", key])
    openvino.save_model(model, str(xml_path), compress_to_fp16=False)
    return Path(xml_path)


def build_tensorrt_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    precision: Precision = Precision.FP16,
    max_batch: int = 4,
    min_side: int = 64,
    max_side: int = 1088,
    opt_shape: tuple[int, int] = (480, 640),
) -> Path:
    """Build and serialise a TensorRT engine from an exported ``.onnx`` (dynamic shapes via one optimisation
    profile: batch 1..max_batch, H and W in [min_side, max_side], tuned for ``opt_shape`` (H, W))."""
    import tensorrt as trt

    options = tensorrt_build_options(tensorrt_major_version(), precision)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    explicit_batch = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if options.explicit_batch_flag else 0
    network = builder.create_network(explicit_batch)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"{onnx_path}: TensorRT could not parse the graph: {errors}")
    config = builder.create_builder_config()
    if options.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    if options.clear_tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    channels = network.get_input(0).shape[3]
    profile = builder.create_optimization_profile()
    profile.set_shape(
        "image",
        (1, min_side, min_side, channels),
        (1, opt_shape[0], opt_shape[1], channels),
        (max_batch, max_side, max_side, channels),
    )
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"{onnx_path}: TensorRT engine build failed (see the TensorRT log above)")
    Path(engine_path).write_bytes(bytes(serialized))
    return Path(engine_path)


BACKENDS: dict[BackendName, type] = {
    BackendName.TORCH: TorchBackend,
    BackendName.ONNXRUNTIME: OnnxRuntimeBackend,
    BackendName.OPENVINO: OpenVinoBackend,
    BackendName.TENSORRT: TensorRtBackend,
}

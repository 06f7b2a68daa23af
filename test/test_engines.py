"""Inference engines: precision/backend choices, ONNX export round trip, OpenVINO/INT8 agreement, kp2d-export."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from kp2d_model import engines
from kp2d_model.checkpoint import default_checkpoint_path
from kp2d_model.detector import KeypointDetector
from kp2d_model.engines import EngineError, Precision
from kp2d_model.evaluation.cli import main as evaluate_main
from kp2d_model.export import main as export_main
from kp2d_model.networks import sample_descriptors

onnxruntime = pytest.importorskip("onnxruntime")
HAS_OPENVINO = engines._installed("openvino")  # noqa: SLF001


@pytest.fixture(scope="module")
def checkpoint_path(reference_dir):
    return reference_dir / "v4_reference.ckpt"


@pytest.fixture(scope="module")
def photo_bgr():
    """A held-out photo (skimage's astronaut) at 320x240, BGR: agreement checks only, never calibration."""
    rgb = cv2.resize(skimage.data.astronaut(), (320, 240), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb[:, :, ::-1])


@pytest.fixture(scope="module")
def reference(checkpoint_path):
    return KeypointDetector(checkpoint_path, device="cpu", top_k=300)


def synthetic_images(count: int, size=(240, 320), seed: int = 0) -> list[np.ndarray]:
    """Drawn shapes on smooth noise: INT8 calibration input for mechanics tests (no benchmark photo)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        image = cv2.GaussianBlur(rng.integers(0, 256, (*size, 3), dtype=np.uint8), (0, 0), 3)
        for _ in range(12):
            center = (int(rng.integers(0, size[1])), int(rng.integers(0, size[0])))
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            cv2.circle(image, center, int(rng.integers(5, 40)), color, -1)
            cv2.rectangle(image, center, (center[0] + 30, center[1] + 20), color[::-1], 2)
        images.append(image)
    return images


def fraction_within(found, reference, pixels: float) -> float:
    """Share of ``found``'s keypoints with a ``reference`` keypoint within ``pixels``."""
    distance = torch.cdist(torch.as_tensor(found.keypoints).double(), torch.as_tensor(reference.keypoints).double())
    return float((distance.min(dim=1).values <= pixels).double().mean())


# --- choices ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precision": "fp8"}, "precision must be one of fp32, bf16, fp16, int8, auto; got 'fp8'"),
        ({"backend": "tflite"}, "backend must be one of auto, torch, onnxruntime, openvino, tensorrt; got 'tflite'"),
        ({"precision": "fp16", "backend": "torch"}, "precision fp16 with backend torch needs CUDA"),
        (
            {"precision": "int8", "backend": "torch"},
            "backend torch runs precision fp32, bf16, fp16; got precision int8",
        ),
        ({"backend": "tensorrt"}, "backend tensorrt needs a CUDA device"),
        ({"precision": "int8", "backend": "onnxruntime"}, "precision int8 needs calibration photos"),
    ],
)
def test_unknown_names_and_invalid_pairs_are_refused_at_construction(checkpoint_path, kwargs, message) -> None:
    with pytest.raises(EngineError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        KeypointDetector(checkpoint_path, device="cpu", **kwargs)


def test_fp32_is_the_torch_reference_and_auto_logs_one_line_saying_what_it_chose(checkpoint_path, caplog) -> None:
    assert str(KeypointDetector(checkpoint_path, device="cpu").engine_choice).startswith("backend=torch precision=fp32")
    with caplog.at_level(logging.INFO, logger="kp2d_model.detector"):
        detector = KeypointDetector(checkpoint_path, device="cpu", precision="auto")
    lines = [record.getMessage() for record in caplog.records if record.name == "kp2d_model.detector"]
    assert len(lines) == 1
    assert f"backend={detector.backend.value} precision={detector.precision.value} (" in lines[0]
    if detector.precision is not Precision.FP32:  # the start-up agreement check ran and passed
        assert "of check keypoints within 1 px of fp32)" in lines[0]
    caps = engines.cpu_capabilities()
    if HAS_OPENVINO and caps & {"avx512_bf16", "amx_bf16"}:  # the fixture has no INT8 graph: bf16 is the best
        assert (detector.backend.value, detector.precision.value) == ("openvino", "bf16")
    assert detector.precision is not Precision.INT8  # no calibration given for the fixture network


def test_bundled_int8_graph_belongs_to_the_bundled_default_model() -> None:
    graph = default_checkpoint_path().with_name(engines.BUNDLED_INT8_NAME)
    metadata = engines.read_onnx_metadata(graph)
    assert metadata["weights_sha256"] == engines.file_sha256(default_checkpoint_path())
    assert (metadata["precision"], metadata["stride"], metadata["descriptor_dim"]) == ("int8", 8, 256)
    assert metadata["calibration_images"] == 46  # the 46 training photos of docs/default_model.md
    assert engines.bundled_int8_graph(None) == graph


# --- ONNX round trip ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(240, 320), (96, 128)])
def test_onnx_export_equals_the_network_within_float32_rounding(checkpoint_path, tmp_path, size) -> None:
    """Dynamic H/W: one export, two sizes. Tolerance from float32 rounding: the ONNX Runtime outputs are as
    close to a float64 evaluation of the same network as PyTorch's own float32 outputs are (x4, + 1e-6)."""
    detector = KeypointDetector(checkpoint_path, device="cpu")
    heads = detector.dense_heads(with_descriptor_conv=True)
    path = engines.export_onnx(heads, tmp_path / "heads.onnx", detector.export_metadata(descriptor_conv="included"))
    image = synthetic_images(1, size)[0][None]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    exported = session.run(None, {"image": image})
    with torch.inference_mode():
        float32 = [t.numpy() for t in heads(torch.from_numpy(image))]
        double = [t.numpy() for t in DoubleHeads(heads)(torch.from_numpy(image))]
    for name, onnx_out, torch_out, exact in zip(
        ("score", "center_shift", "features"), exported, float32, double, strict=True
    ):
        assert onnx_out.shape == exact.shape
        torch_error = float(np.abs(torch_out - exact).max())
        onnx_error = float(np.abs(onnx_out - exact).max())
        assert onnx_error <= 4 * torch_error + 1e-6, (name, onnx_error, torch_error)
    assert engines.read_onnx_metadata(path)["stride"] == 8


class DoubleHeads(torch.nn.Module):
    """The same graph evaluated in float64 (the rounding-free reference)."""

    def __init__(self, heads):
        super().__init__()
        import copy

        self.trunk = copy.deepcopy(heads.trunk).double()

    def forward(self, image):
        x = (image.permute(0, 3, 1, 2).double() / 255.0 - 0.5) * 0.225
        return self.trunk.heads(x)


def test_onnxruntime_fp32_detector_finds_the_same_keypoints(checkpoint_path, reference, photo_bgr) -> None:
    detector = KeypointDetector(checkpoint_path, device="cpu", top_k=300, precision="fp32", backend="onnxruntime")
    found, expected = detector(photo_bgr), reference(photo_bgr)
    assert len(found) == len(expected) == 300
    assert fraction_within(found, expected, 1e-3) >= 0.99
    cosine = (found.descriptors[:250] * expected.descriptors[:250]).sum(dim=1)
    assert float(cosine.min()) > 0.999
    # the exported graph stops before the descriptor head's last conv: its input map comes back channels last
    batch = detector._prepare(photo_bgr).padded[None]  # noqa: SLF001
    features = detector.engine.forward(batch).features
    channels = detector._descriptor_conv.in_channels  # noqa: SLF001
    assert features.shape == (1, batch.shape[1] // 4, batch.shape[2] // 4, channels)


def test_exported_file_carries_its_metadata_and_runs_in_the_detector(checkpoint_path, reference, photo_bgr, tmp_path):
    out = tmp_path / "kp2d.onnx"
    assert export_main(["--checkpoint", str(checkpoint_path), "--format", "onnx", "--out", str(out)]) == 0
    metadata = engines.read_onnx_metadata(out)
    assert metadata["precision"] == "fp32" and metadata["descriptor_conv"] == "included"
    assert metadata["weights_sha256"] == engines.file_sha256(checkpoint_path)
    detector = KeypointDetector(str(out), device="cpu", top_k=300, backend="onnxruntime")
    assert (detector.stride, detector.descriptor_dim, detector.precision.value) == (8, 256, "fp32")
    assert fraction_within(detector(photo_bgr), reference(photo_bgr), 1e-3) >= 0.99


# --- reduced precision: agreement with fp32 -------------------------------------------------------------------


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino not installed")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_openvino_keypoints_lie_within_one_pixel_of_fp32(checkpoint_path, reference, photo_bgr, precision) -> None:
    if precision == "bf16" and not engines.native_bf16():  # e.g. under ONEDNN_MAX_CPU_ISA=AVX2 (make test-isa)
        with pytest.raises(EngineError, match="needs a CPU that computes bf16"):
            KeypointDetector(checkpoint_path, device="cpu", precision=precision, backend="openvino")
        return
    detector = KeypointDetector(checkpoint_path, device="cpu", top_k=300, precision=precision, backend="openvino")
    found = detector(photo_bgr)
    assert len(found) == 300
    expected = reference(photo_bgr)
    assert fraction_within(found, expected, 1.0) >= 0.9
    assert float(torch.linalg.vector_norm(found.descriptors, dim=1).sub(1).abs().max()) < 1e-5  # fp32 normalisation
    nearest = torch.cdist(found.keypoints, expected.keypoints).min(dim=1)
    cosine = (found.descriptors * expected.descriptors[nearest.indices]).sum(dim=1)[nearest.values < 0.1]
    assert float(cosine.median()) > 0.99


def test_torch_bf16_keeps_coordinates_in_float32(checkpoint_path, reference, photo_bgr) -> None:
    detector = KeypointDetector(checkpoint_path, device="cpu", top_k=300, precision="bf16", backend="torch")
    found = detector(photo_bgr)
    assert found.keypoints.dtype == torch.float32
    assert fraction_within(found, reference(photo_bgr), 1.0) >= 0.9


def test_int8_calibration_quantises_the_convolutions_and_is_cached(checkpoint_path, photo_bgr, tmp_path, monkeypatch):
    monkeypatch.setenv("KP2D_ENGINE_CACHE", str(tmp_path / "cache"))
    working = tmp_path / "working"
    working.mkdir()
    monkeypatch.chdir(working)  # ONNX Runtime < 1.13 wrote its calibration graph here (Humble's NumPy allows 1.12)
    calibration = synthetic_images(2)
    detector = KeypointDetector(
        checkpoint_path, device="cpu", top_k=300, precision="int8", backend="onnxruntime", calibration=calibration
    )
    assert list(working.iterdir()) == []
    (graph,) = (tmp_path / "cache").glob("dense_heads_int8_*.onnx")
    import onnx

    model = onnx.load(str(graph))
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("QuantizeLinear") >= 10 and "Conv" in ops
    producers = {output: node for node in model.graph.node for output in node.output}
    head_convs = [node for node in model.graph.node if node.name in engines._head_output_convs(model)]  # noqa: SLF001
    assert len(head_convs) == 3  # both heads' last convolutions + the location head's first: float32 weights
    initializers = {tensor.name for tensor in model.graph.initializer}
    assert all(conv.input[1] in initializers and conv.input[1] not in producers for conv in head_convs)
    # the outputs stay float32 straight from their convolutions: the descriptor map is not rounded to 256 levels
    assert {producers[output.name].op_type for output in model.graph.output} == {"Conv", "Sigmoid", "Tanh"}
    read = {name for node in model.graph.node for name in node.input}
    assert initializers <= read  # no orphaned scale / zero point left (ONNX Runtime warns about them)
    metadata = engines.read_onnx_metadata(graph)
    assert (metadata["precision"], metadata["calibration_images"]) == ("int8", 2)
    found = detector(photo_bgr)
    assert len(found) == 300 and found.keypoints.dtype == torch.float32
    mtime = graph.stat().st_mtime_ns
    KeypointDetector(checkpoint_path, device="cpu", precision="int8", backend="onnxruntime", calibration=calibration)
    assert graph.stat().st_mtime_ns == mtime  # reused, not quantised again


def test_an_unusable_engine_cache_falls_back_to_a_temporary_folder_with_one_warning(
    checkpoint_path, tmp_path, monkeypatch, caplog
) -> None:
    # a service user without a writable home, a read-only container: the cache is an optimisation, not a need
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("KP2D_ENGINE_CACHE", str(blocker / "kp2d"))
    with caplog.at_level(logging.WARNING, logger="kp2d_model.engines"):
        detector = KeypointDetector(
            checkpoint_path,
            device="cpu",
            top_k=300,
            precision="int8",
            backend="onnxruntime",
            calibration=synthetic_images(2),
        )
        assert engines.cache_dir() == engines.cache_dir()
    assert len(detector(synthetic_images(1)[0])) == 300
    messages = [record.getMessage() for record in caplog.records if "engine cache unavailable" in record.getMessage()]
    assert len(messages) == 1 and str(blocker / "kp2d") in messages[0] and "KP2D_ENGINE_CACHE" in messages[0]
    fallback = engines.cache_dir()
    assert fallback.is_dir() and list(fallback.glob("dense_heads_int8_*.onnx"))


def test_int8_engines_stop_before_the_last_descriptor_conv_and_the_detector_runs_it_at_the_keypoints(
    checkpoint_path, photo_bgr, tmp_path, monkeypatch
):
    """The cut INT8 graph's third output is the last conv's UINT8 input (channels last from the engine); the
    descriptors the detector computes from it equal those of the dense INT8 graph's float conv of the same input."""
    monkeypatch.setenv("KP2D_ENGINE_CACHE", str(tmp_path / "cache"))
    calibration = synthetic_images(2)
    detector = KeypointDetector(
        checkpoint_path, device="cpu", top_k=300, precision="int8", backend="onnxruntime", calibration=calibration
    )
    (int8_graph,) = (tmp_path / "cache").glob("dense_heads_int8_*.onnx")
    cut_path = tmp_path / "cut.onnx"
    quantization = engines.cut_before_last_conv(int8_graph, cut_path)
    assert 0 < quantization.scale and 0 <= quantization.zero_point <= 255
    assert list((tmp_path / "cache").iterdir()) == [int8_graph]  # the cut is not cached
    import onnx

    cut = onnx.load(str(cut_path))
    assert [output.name for output in cut.graph.output] == ["score", "center_shift", "features"]
    producers = {output: node for node in cut.graph.node for output in node.output}
    assert producers["features"].op_type == "QuantizeLinear"
    batch = detector._prepare(photo_bgr).padded[None]  # noqa: SLF001
    dense = detector.engine.forward(batch)
    assert dense.features.dtype == torch.uint8 and detector._last_conv.pad_value == quantization.zero_point  # noqa: SLF001
    channels = detector._descriptor_conv.in_channels  # noqa: SLF001
    assert dense.features.shape[1:] == (batch.shape[1] // 4, batch.shape[2] // 4, channels)
    # the uncut graph's dense conv, in float from the same UINT8 input: the same descriptors at the keypoints
    whole = engines.OnnxRuntimeBackend(int8_graph, torch.device("cpu"), engines.Precision.INT8, threads=1)
    found = detector(photo_bgr)
    dense_map = whole.forward(batch).features  # float32 (1, D, h, w), the conv run by ONNX Runtime
    height, width = batch.shape[1:3]
    grid = found.keypoints.T.reshape(1, 2, 1, -1)  # the photo is not resized: network pixels = image pixels
    expected = sample_descriptors(dense_map, grid, height, width, True)[0, :, 0].T
    cosine = (found.descriptors * expected).sum(dim=1)
    assert float(cosine.min()) > 0.999
    with pytest.raises(EngineError, match="not a Conv on a quantised input"):
        engines.cut_before_last_conv(cut_path, tmp_path / "again.onnx")


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino not installed")
def test_default_model_auto_and_int8_agree_with_fp32(photo_bgr) -> None:
    """The bundled INT8 graph (calibrated on training photos) against fp32 on a held-out photo."""
    reference = KeypointDetector(device="cpu", top_k=300)
    detector = KeypointDetector(device="cpu", top_k=300, precision="int8", backend="openvino")
    found, expected = detector(photo_bgr), reference(photo_bgr)
    assert fraction_within(found, expected, 1.0) >= 0.9
    nearest = torch.cdist(found.keypoints, expected.keypoints).argmin(dim=1)
    cosine = (found.descriptors * expected.descriptors[nearest]).sum(dim=1)
    assert float(cosine.median()) > 0.98


def test_openvino_runs_the_int8_graphs_float_layers_in_bf16_only_where_the_cpu_computes_bf16() -> None:
    int8, bf16, fp32 = engines.Precision.INT8, engines.Precision.BF16, engines.Precision.FP32
    assert engines.openvino_float_hint(int8, frozenset({"avx512_vnni", "avx512_bf16"})) == "bf16"
    assert engines.openvino_float_hint(int8, frozenset({"amx_int8", "amx_bf16"})) == "bf16"
    assert engines.openvino_float_hint(int8, frozenset({"avx512_vnni"})) == "f32"  # VNNI alone: float32
    assert engines.openvino_float_hint(fp32, frozenset({"avx512_bf16"})) == "f32"  # fp32 stays fp32
    assert engines.openvino_float_hint(bf16, frozenset()) == "bf16"


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino not installed")
def test_openvino_int8_detector_uses_this_cpus_float_hint() -> None:
    detector = KeypointDetector(device="cpu", top_k=300, precision="int8", backend="openvino")
    expected = engines.openvino_float_hint(engines.Precision.INT8)
    assert detector.engine.config["INFERENCE_PRECISION_HINT"] == expected


# --- TensorRT (needs a GPU) ------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="TensorRT needs a CUDA GPU; none on this machine")
def test_tensorrt_engine_agrees_with_fp32(checkpoint_path, reference, photo_bgr, tmp_path, monkeypatch) -> None:
    pytest.importorskip("tensorrt")
    monkeypatch.setenv("KP2D_ENGINE_CACHE", str(tmp_path))
    precision = "fp16" if engines.tensorrt_major_version() <= engines.TENSORRT_LAST_FP16_FLAG else "fp32"
    detector = KeypointDetector(checkpoint_path, device="cuda", top_k=300, precision=precision, backend="tensorrt")
    assert fraction_within(detector(photo_bgr).numpy(), reference(photo_bgr).numpy(), 1.0) >= 0.9


@pytest.mark.parametrize(
    ("major", "precision", "explicit_batch", "fp16_flag", "clear_tf32"),
    [
        (8, Precision.FP16, True, True, False),  # JetPack 6.0: an ONNX graph needs the explicit-batch flag
        (8, Precision.FP32, True, False, True),
        (10, Precision.FP16, False, True, False),  # JetPack 6.1/6.2
        (11, Precision.FP32, False, False, True),  # fp32 without TF32, as torch fp32 on CUDA
    ],
)
def test_tensorrt_build_options_follow_the_tensorrt_version(major, precision, explicit_batch, fp16_flag, clear_tf32):
    options = engines.tensorrt_build_options(major, precision)
    assert options.explicit_batch_flag is explicit_batch
    assert (options.fp16_flag, options.clear_tf32) == (fp16_flag, clear_tf32)


def test_tensorrt_11_fp16_is_refused_with_what_to_use_instead() -> None:
    with pytest.raises(EngineError, match=r"TensorRT 11 removed the fp16 builder flag.*backend='torch'"):
        engines.tensorrt_build_options(11, Precision.FP16)


@pytest.mark.parametrize(
    ("major", "backend", "expected"),
    [
        (None, "auto", ("torch", "fp16")),  # TensorRT not installed
        (10, "auto", ("tensorrt", "fp16")),
        (11, "auto", ("torch", "fp16")),
        (11, "tensorrt", ("tensorrt", "fp32")),
    ],
)
def test_auto_on_cuda_takes_tensorrt_fp16_only_where_the_builder_has_it(monkeypatch, major, backend, expected) -> None:
    # The TensorRT probe is replaced (no TensorRT here); what is under test is the choice made from its answer.
    installed = {"tensorrt", "onnx"} if major is not None else set()
    monkeypatch.setattr(engines, "_installed", lambda module: module in installed)
    monkeypatch.setattr(engines, "tensorrt_major_version", lambda: major)
    choice = engines.resolve_engine("auto", backend, torch.device("cuda"))
    assert (choice.backend.value, choice.precision.value) == expected
    if major is not None:
        assert f"TensorRT {major}" in choice.reason


def test_auto_with_backend_tensorrt_but_no_tensorrt_names_the_missing_package(monkeypatch) -> None:
    monkeypatch.setattr(engines, "_installed", lambda module: module != "tensorrt")
    with pytest.raises(EngineError, match="backend tensorrt needs the Python package 'tensorrt'"):
        engines.resolve_engine("auto", "tensorrt", torch.device("cuda"))


def test_openvino_without_onnx_is_not_chosen_by_auto_and_is_named_when_asked_for(monkeypatch) -> None:
    # Ubuntu 22.04 (Humble): openvino installs beside NumPy 1.21 but a current onnx does not. The engines run a
    # graph exported or cut with `onnx`, so without it auto must stay on torch and an explicit choice must say so.
    monkeypatch.setattr(engines, "_installed", lambda module: module in ("openvino", "onnxruntime"))
    monkeypatch.setattr(engines, "cpu_capabilities", lambda: frozenset({"avx512_vnni", "avx512_bf16", "avx512f"}))
    choice = engines.resolve_engine("auto", "auto", torch.device("cpu"), int8_ready=True)
    assert choice.backend is engines.BackendName.TORCH
    for backend in ("openvino", "onnxruntime"):
        with pytest.raises(EngineError, match=f"backend {backend} needs the Python package 'onnx' .*humble"):
            engines.resolve_engine("fp32", backend, torch.device("cpu"))


# --- command lines ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--format", "tflite", "--out", "x.tflite"], "invalid choice: 'tflite'"),
        (["--format", "onnx", "--out", "x.xml"], "--format onnx writes .onnx files; got --out x.xml"),
        (["--format", "onnx", "--precision", "int8", "--out", "x.onnx"], "--precision int8 needs --calibration"),
        (
            ["--format", "onnx", "--precision", "fp16", "--out", "x.onnx"],
            "--format onnx takes --precision fp32 or int8",
        ),
        (["--checkpoint", "missing.ckpt", "--format", "onnx", "--out", "x.onnx"], "checkpoint missing.ckpt does not"),
    ],
)
def test_export_usage_errors_are_one_line_and_exit_2(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        export_main(argv)
    assert exit_info.value.code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in last_line


def test_export_without_onnx_names_the_package_in_one_line(checkpoint_path, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` fails as it does where onnx is not installed
    heads = KeypointDetector(checkpoint_path, device="cpu").dense_heads()
    with pytest.raises(EngineError, match="exporting an ONNX graph needs the Python package 'onnx'"):
        engines.export_onnx(heads, tmp_path / "x.onnx", {"stride": 8})
    with pytest.raises(EngineError, match="reading an exported graph needs the Python package 'onnx'"):
        engines.read_onnx_metadata(tmp_path / "x.onnx")
    code = export_main(["--checkpoint", str(checkpoint_path), "--format", "onnx", "--out", str(tmp_path / "x.onnx")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "kp2d-export: error: exporting an ONNX graph needs the Python package 'onnx' (pip install onnx)"
    assert not any("Traceback" in line for line in err)


def test_export_int8_without_readable_calibration_photos_names_the_folder_and_writes_nothing(
    checkpoint_path, tmp_path, capsys
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "truncated.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (photos / "notes.txt").write_text("not a photo")
    out = tmp_path / "new_folder" / "kp2d_int8.onnx"
    argv = ["--checkpoint", str(checkpoint_path), "--format", "onnx", "--precision", "int8"]
    assert export_main([*argv, "--calibration", str(photos), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("kp2d-export: error: no readable calibration photos (.jpg, .jpeg, .png")
    assert f"in folder {photos} (1 file(s) with those suffixes could not be read)" in err[-1]
    assert not out.parent.exists()  # refused before anything was written
    with pytest.raises(EngineError, match="the list of calibration images is empty"):
        KeypointDetector(checkpoint_path, device="cpu").calibration_batches([])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_export_tensorrt_without_cuda_says_so(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--format", "tensorrt", "--precision", "fp16", "--out", "x.engine"])
    assert exit_info.value.code == 2
    assert "no CUDA device here" in capsys.readouterr().err


def test_evaluate_rows_keep_the_method_and_record_precision_and_backend(reference_dir, tmp_path, capsys) -> None:
    report = tmp_path / "eval.json"
    argv = [
        "--checkpoint",
        str(reference_dir / "v4_reference.ckpt"),
        "--hpatches",
        str(reference_dir / "mini_hpatches"),
    ]
    argv += ["--resolution", "320x240", "--precision", "fp32", "--precision", "bf16", "--backend", "torch"]
    assert evaluate_main([*argv, "--quiet", "--json", str(report)]) == 0
    runs = json.loads(report.read_text())["runs"]
    assert [(run["method"], run["precision"], run["backend"]) for run in runs] == [
        ("kp2d", "fp32", "torch"),
        ("kp2d", "bf16", "torch"),
    ]
    fp32, bf16 = (run["summary"]["all"] for run in runs)
    assert abs(fp32["c3"] - bf16["c3"]) <= 0.2 and "kp2d bf16/torch" in capsys.readouterr().out


def test_evaluate_bad_precision_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main(["--hpatches", "x", "--precision", "fp8"])
    assert exit_info.value.code == 2
    assert "precision must be one of fp32, bf16, fp16, int8, auto" in capsys.readouterr().err


def test_export_writes_openvino_ir_with_metadata(checkpoint_path, tmp_path) -> None:
    if not HAS_OPENVINO:
        pytest.skip("openvino not installed")
    out = tmp_path / "kp2d.xml"
    assert export_main(["--checkpoint", str(checkpoint_path), "--format", "openvino", "--out", str(out)]) == 0
    import openvino

    model = openvino.Core().read_model(str(out))
    assert json.loads(model.get_rt_info(["kp2d", "stride"]).astype(str)) == 8
    assert Path(out.with_suffix(".bin")).is_file()


OPENVINO_IMPORT_PROBE = """
import os, sys, time
forks = []
os.register_at_fork(before=lambda: forks.append(1))
from kp2d_model import engines
openvino = engines.import_openvino()
from openvino.tools.ovc import telemetry_utils
time.sleep(0.5)  # the telemetry backend sends from a thread pool
print(telemetry_utils.tm.__name__, len(forks))
"""


def _import_openvino_in_fresh_process(tmp_path: Path, **env: str) -> tuple[str, int]:
    import os
    import subprocess

    environment = {key: value for key, value in os.environ.items() if key not in ("CI", "KP2D_OPENVINO_TELEMETRY")}
    environment.update(HOME=str(tmp_path), **env)  # whatever OpenVINO writes lands here, not in the user's home
    result = subprocess.run(
        [sys.executable, "-c", OPENVINO_IMPORT_PROBE], env=environment, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    module, forks = result.stdout.split()
    return module, int(forks)


def test_openvino_is_imported_without_its_usage_telemetry(tmp_path) -> None:
    # OpenVINO sends a Google Analytics event on import from a forked process unless the user opted out; the
    # detector (the node's default engine) must not fork from a process running DDS threads nor call home.
    if not HAS_OPENVINO:
        pytest.skip("openvino not installed")
    module, forks = _import_openvino_in_fresh_process(tmp_path)
    assert module == "openvino.tools.ovc.telemetry_stub"
    assert forks == 0
    assert not (tmp_path / "intel").exists()


def test_openvino_telemetry_can_be_left_on(tmp_path) -> None:
    if not HAS_OPENVINO or not engines._installed("openvino_telemetry"):  # noqa: SLF001
        pytest.skip("openvino / openvino_telemetry not installed")
    # CI=true: OpenVINO's own switch keeps this check from sending anything
    module, _ = _import_openvino_in_fresh_process(tmp_path, KP2D_OPENVINO_TELEMETRY="1", CI="true")
    assert module == "openvino_telemetry"


# --- oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cap", "forbidden"),
    [("AVX2", {"avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"}),
     ("avx512_core_vnni", {"avx512_bf16", "amx_bf16", "amx_int8"})],
)  # fmt: skip
def test_cpu_capabilities_leave_out_what_onednn_max_cpu_isa_forbids(monkeypatch, cap, forbidden) -> None:
    try:
        for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
            monkeypatch.delenv(name, raising=False)
        engines.cpu_capabilities.cache_clear()
        uncapped = engines.cpu_capabilities()
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        engines.cpu_capabilities.cache_clear()
        capped = engines.cpu_capabilities()
    finally:
        monkeypatch.undo()  # this process's own cap (make test-isa sets one) and flags, as before the test
        engines.cpu_capabilities.cache_clear()
    assert capped <= uncapped and not capped & forbidden
    if cap == "avx512_core_vnni":
        assert capped == uncapped - forbidden


LATE_ISA_CAP_PROBE = """
import logging, os, sys
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
from kp2d_model import KeypointDetector, engines
engines.cpu_capabilities()  # read with the CPU's own flags ...
os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"  # ... then capped before OpenVINO loads: its bf16 graph cannot compile
try:
    KeypointDetector(sys.argv[1], device="cpu", precision="auto", backend=sys.argv[2])
except engines.EngineError as error:
    print("EngineError:", error)
"""


@pytest.mark.parametrize("backend", ["auto", "openvino"])
def test_auto_falls_back_to_fp32_with_the_reason_when_the_chosen_engine_cannot_run(checkpoint_path, backend) -> None:
    # A real engine failure, not a stand-in: OpenVINO's CPU plugin fails to compile the bf16 graph when oneDNN is
    # capped below what the CPU reports. "auto" must log why and run fp32 instead of raising from inside OpenVINO;
    # with backend="openvino" asked for by name, the same failure is an EngineError (explicit choices never fall back).
    import os
    import subprocess

    if not HAS_OPENVINO or not engines.native_bf16():
        pytest.skip("needs openvino and a CPU with AVX512-BF16 or AMX-BF16 (what auto picks bf16 for)")
    caps = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
    environment = {key: value for key, value in os.environ.items() if key not in caps}
    result = subprocess.run(
        [sys.executable, "-c", LATE_ISA_CAP_PROBE, str(checkpoint_path), backend],
        env=environment, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    compile_failure = "OpenVINO could not compile the bf16 graph for input [1, 192, 256, 3]"
    if backend == "openvino":
        assert f"EngineError: {compile_failure}" in result.stdout
        assert "KeypointDetector: " not in result.stdout
        return
    line = next(line for line in result.stdout.splitlines() if line.startswith("KeypointDetector: "))
    assert line.startswith("KeypointDetector: backend=torch precision=fp32 (openvino bf16 could not run on this")
    assert compile_failure in line

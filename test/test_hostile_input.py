"""Fuzz/fault suite: hostile checkpoints, image bombs, non-finite values, interrupted writes, bad CLI input.

Each numbered item of issue 17 has a test here (the node-level ones are in test_ros_hostile_input.py). Memory
bombs run in a fresh Python with a capped address space (:func:`hostile_files.peak_memory_growth`).
"""

from __future__ import annotations

import io
import json
import logging
import math
import zipfile
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from hostile_files import (
    RELEASED_CONFIG,
    declared_storage_checkpoint,
    global_op,
    jpeg_bomb,
    legacy_torch_file,
    nested_lists_pickle,
    peak_memory_growth,
    set_attributes_op,
    torch_zip_from_pickle,
    torch_zip_with_pickle_ops,
    unicode_op,
    zip_bomb_checkpoint,
)
from safetensors.torch import save_file

from kp2d_model.checkpoint import PROJECT_FORMAT, CheckpointError, load_keypoint_net, read_checkpoint
from kp2d_model.detector import KeypointDetector
from kp2d_model.image import ImageFormatError
from kp2d_model.matching import verify_geometry
from kp2d_model.networks import KeypointNet

MEMORY_BUDGET_MB = 400


@pytest.fixture(scope="module")
def state_dict(reference_dir):
    return read_checkpoint(reference_dir / "v4_reference.ckpt").state_dict


@pytest.fixture
def torch_functions_restored():
    """Undo what a checkpoint might do to torch's rebuild functions, so one failure cannot poison other tests."""
    saved = {
        f: (f.__name__, f.__qualname__) for f in (torch._utils._rebuild_parameter, torch._utils._rebuild_tensor_v2)
    }
    yield
    for function, (name, qualname) in saved.items():
        function.__name__, function.__qualname__ = name, qualname
        function.__dict__.pop("dump_patches", None)


def _torch_save_works() -> bool:
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "parameter": torch.nn.Parameter(torch.ones(1))}, buffer)
    return len(buffer.getvalue()) > 0


# --- 1. checkpoints that act while loading ----------------------------------------------------------


def test_legacy_checkpoint_cannot_write_a_patch_file(tmp_path, state_dict, torch_functions_restored):
    """BUILD renames torch's _rebuild_parameter to a path; a 'module' persistent id then makes torch's legacy
    loader write '<path>.patch'. Refused, nothing written, torch untouched."""
    target = tmp_path / "written_by_checkpoint"
    ops = (
        b"(" + unicode_op("module") + global_op("torch._utils", "_rebuild_parameter")
        + set_attributes_op({"__name__": str(target), "dump_patches": True})
        + unicode_op("evil.py") + unicode_op("attacker's lines\n") + b"tQ0"
    )  # fmt: skip
    path = tmp_path / "legacy_patch.ckpt"
    path.write_bytes(legacy_torch_file({"state_dict": state_dict, "config": RELEASED_CONFIG}, ops))
    assert not zipfile.is_zipfile(path)
    with pytest.raises(CheckpointError) as error:
        load_keypoint_net(path)
    assert str(path) in str(error.value) and "refused" in str(error.value).lower()
    assert not list(tmp_path.glob("written_by_checkpoint*")), "the checkpoint wrote a file"
    assert torch._utils._rebuild_parameter.__name__ == "_rebuild_parameter"
    assert _torch_save_works()


def test_zip_checkpoint_cannot_rename_torch_functions(tmp_path, state_dict, torch_functions_restored):
    """BUILD renames torch's _rebuild_tensor_v2: every later torch.save would raise PicklingError. Refused."""
    ops = global_op("torch._utils", "_rebuild_tensor_v2")
    ops += set_attributes_op({"__name__": "renamed_by_checkpoint", "__qualname__": "renamed_by_checkpoint"}) + b"0"
    path = tmp_path / "rename.ckpt"
    path.write_bytes(torch_zip_with_pickle_ops({"state_dict": state_dict, "config": RELEASED_CONFIG}, ops))
    with pytest.raises(CheckpointError, match="BUILD refused") as error:
        load_keypoint_net(path)
    assert str(path) in str(error.value)
    assert torch._utils._rebuild_tensor_v2.__name__ == "_rebuild_tensor_v2"
    assert _torch_save_works()


@pytest.mark.parametrize(
    ("ops", "reason"),
    [
        (b"(" + unicode_op("module") + unicode_op("x") + unicode_op("y") + unicode_op("z") + b"tQ0", "persistent id"),
        (global_op("collections", "OrderedDict") + b")\x81" + b"N}" + unicode_op("a") + unicode_op("b") + b"s\x86b0",
         "BUILD refused"),
        (global_op("builtins", "set") + b"N}" + unicode_op("a") + unicode_op("b") + b"s\x86b0", "BUILD refused"),
        (global_op("torch._utils", "_rebuild_parameter") + b"(K\x01\x89NtR0", "parameter must wrap a tensor"),
        (global_op("builtins", "getattr") + b"0", "allow-list"),
        (b"(" + global_op("collections", "OrderedDict") + b"o0", "opcode refused"),
    ],
    ids=["module-persistent-id", "build-state-tuple", "build-on-type", "bad-rebuild-args", "getattr", "OBJ"],
)  # fmt: skip
def test_pickle_grammar_refuses_everything_outside_it(tmp_path, ops, reason, torch_functions_restored):
    path = tmp_path / "grammar.ckpt"
    path.write_bytes(torch_zip_with_pickle_ops({"state_dict": {}, "config": RELEASED_CONFIG}, ops))
    with pytest.raises(CheckpointError, match=reason) as error:
        read_checkpoint(path)
    assert str(path) in str(error.value)


def test_the_reference_checkpoints_still_load_exactly(reference_dir):
    from kp2d_model.torch_file import read_torch_file

    v4 = read_checkpoint(reference_dir / "v4_reference.ckpt")
    io_net = read_torch_file((reference_dir / "io_net_reference.pt").read_bytes())
    reference = torch.load(reference_dir / "io_net_reference.pt", weights_only=True)
    assert list(io_net) == list(reference)
    assert all(torch.equal(io_net[k], reference[k]) and io_net[k].dtype == reference[k].dtype for k in reference)
    assert v4.format == "kp2d-released" and len(v4.state_dict) == len(KeypointNet().state_dict())
    assert v4.config["model"]["params"]["keypoint_net_type"] == "KeypointNet"


# --- 4. zip bomb checkpoint -------------------------------------------------------------------------


def test_zip_bomb_checkpoint_is_refused_before_inflating(tmp_path):
    path = tmp_path / "bomb.ckpt"
    path.write_bytes(zip_bomb_checkpoint(1 << 30))  # ~1 MB on disk, 1 GiB declared
    assert path.stat().st_size < 4 << 20
    result = peak_memory_growth(
        "from kp2d_model.checkpoint import load_keypoint_net", f"load_keypoint_net({str(path)!r})"
    )
    assert result["outcome"].startswith("CheckpointError") and "compressed" in result["outcome"], result
    assert result["growth_mb"] < MEMORY_BUDGET_MB, result


def test_declared_sizes_are_checked_before_allocating(tmp_path):
    from kp2d_model.torch_file import MAX_FILE_BYTES, MAX_STORAGE_BYTES

    cases = [
        (1000, 40, "holds 40"),  # the pickle declares more elements than the entry holds
        (MAX_STORAGE_BYTES // 4 + 1, 40, "bound"),  # more than any tensor of the networks
        (10, 40, None),  # consistent: read
    ]
    for numel, entry_bytes, reason in cases:
        path = tmp_path / f"declared_{numel}.ckpt"
        path.write_bytes(declared_storage_checkpoint(numel, entry_bytes))
        if reason is None:
            assert read_checkpoint(path).state_dict["weight"].shape == (10,)
            continue
        with pytest.raises(CheckpointError, match=reason):
            read_checkpoint(path)
    huge = tmp_path / "huge.ckpt"
    with huge.open("wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(CheckpointError, match="larger than any checkpoint"):
        read_checkpoint(huge)


# --- 10. malformed checkpoints: always CheckpointError -----------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(lambda: torch_zip_from_pickle(nested_lists_pickle(200_000)), id="nested-200000-deep"),
        pytest.param(lambda: _saved({"state_dict": [1, 2], "config": RELEASED_CONFIG}), id="state-dict-list"),
        pytest.param(lambda: _saved({"state_dict": {}, "config": {"model": {"params": [1]}}}), id="params-list"),
        pytest.param(lambda: _saved({"state_dict": {"w": "x"}, "config": RELEASED_CONFIG}), id="weight-str"),
        pytest.param(lambda: _saved({"state_dict": {}, "config": {"model": 3}}), id="model-int"),
        pytest.param(lambda: _saved({"format": "kp2d-train-v1", "keypoint_net": 5, "model_config": {}}), id="trainer"),
        pytest.param(lambda: _saved({"format": "kp2d-train-v1", "keypoint_net": {}, "model_config": [1]}), id="mc"),
        pytest.param(lambda: b"\x80\x02" + b"(" * 100 + b".", id="legacy-garbage"),
        pytest.param(lambda: b"PK\x03\x04" + bytes(100), id="zip-garbage"),
    ],
)
def test_malformed_checkpoints_raise_checkpoint_error(tmp_path, content):
    path = tmp_path / "malformed.ckpt"
    path.write_bytes(content())
    with pytest.raises(CheckpointError) as error:
        load_keypoint_net(path)
    assert str(path) in str(error.value)


def _saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_random_corruption_of_a_checkpoint_only_ever_raises_checkpoint_error(tmp_path, torch_functions_restored):
    """Seeded fuzz: byte flips, truncations and splices of a small checkpoint in both torch formats."""
    rng = np.random.default_rng(17)
    small = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(3)}, "config": RELEASED_CONFIG}
    originals = [_saved(small), legacy_torch_file(small)]
    path = tmp_path / "fuzz.ckpt"
    outcomes = {"ok": 0, "refused": 0}
    for case in range(300):
        data = bytearray(originals[case % 2])
        if case % 3 == 0:
            data = data[: int(rng.integers(1, len(data)))]
        for _ in range(int(rng.integers(1, 8))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        path.write_bytes(bytes(data))
        try:
            read_checkpoint(path)
            outcomes["ok"] += 1
        except CheckpointError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100, outcomes
    assert _torch_save_works()


# --- 1. weights: floating, finite, the right dtype ---------------------------------------------------


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda t: t > 0, "dtype torch.bool"),
        (lambda t: t.to(torch.int64), "dtype torch.int64"),
        (lambda t: torch.full_like(t, float("nan")), "NaN or infinite"),
        (lambda t: torch.full_like(t, float("inf")), "NaN or infinite"),
    ],
    ids=["bool", "int64", "all-nan", "inf"],
)
def test_safetensors_with_non_float_or_non_finite_weights_is_refused(tmp_path, state_dict, change, reason):
    tensors = dict(state_dict)
    tensors["convDa.0.weight"] = change(tensors["convDa.0.weight"]).contiguous()
    path = tmp_path / "weights.safetensors"
    metadata = {"format": PROJECT_FORMAT, "model_config": json.dumps({"type": "KeypointNet"})}
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match=reason) as error:
        load_keypoint_net(path)
    assert "convDa.0.weight" in str(error.value) and str(path) in str(error.value)


# --- 2-3. image bombs: refused from the header / the network's pixel count ---------------------------


@pytest.mark.parametrize("side", [16384, 8000])
def test_jpeg_decompression_bomb_is_refused_from_its_header(side):
    """629 bytes claiming 16384 x 16384 took the node from 365 MB to 1.9 GB before it was refused."""
    bomb = jpeg_bomb(side, side)
    assert len(bomb) < 1000
    result = peak_memory_growth(
        f"""
        from types import SimpleNamespace
        from kp2d_ros.conversions import compressed_to_array
        msg = SimpleNamespace(data={bomb!r}, format="jpeg")
        """,
        "compressed_to_array(msg, 4096 * 4096)",
    )
    assert result["outcome"].startswith("ImageInputError") and "exceeds" in result["outcome"], result
    assert result["growth_mb"] < MEMORY_BUDGET_MB, result


@pytest.mark.parametrize(("width", "max_pixels"), [(1_048_576, 2_000_000), (16_777_216, 4096 * 4096)])
def test_thin_image_is_refused_by_the_pixels_the_network_processes(width, max_pixels):
    """1 x W mono8: the network pads the height to 8 (8x the pixels); at 1 x 1M that peaked at 2.6 GB."""
    result = peak_memory_growth(
        f"""
        import numpy as np
        from types import SimpleNamespace
        from kp2d_model import KeypointDetector
        from kp2d_ros.conversions import image_to_array
        detector = KeypointDetector(device="cpu", top_k=100)
        detector(np.zeros((64, 64), np.uint8))  # warm-up: the model's own memory is not counted
        msg = SimpleNamespace(encoding="mono8", width={width}, height=1, step={width}, is_bigendian=0,
                              data=bytes({width}))
        """,
        f"detector(image_to_array(msg, {max_pixels}, detector.network_pixels).pixels)",
    )
    assert result["outcome"].startswith("ImageInputError") and "for the network" in result["outcome"], result
    assert result["growth_mb"] < MEMORY_BUDGET_MB, result


def test_thin_image_is_refused_at_default_settings_before_padding():
    """1 x 1,048,576 mono8 at the default max_image_pixels: 8.4 M network pixels are under the limit, but the
    frame is under one 8-pixel cell high, so the detector refuses it before padding (was 2.6 GB)."""
    result = peak_memory_growth(
        """
        import numpy as np
        from types import SimpleNamespace
        from kp2d_model import KeypointDetector
        from kp2d_ros.conversions import image_to_array
        detector = KeypointDetector(device="cpu", top_k=100)
        detector(np.zeros((64, 64), np.uint8))  # warm-up: the model's own memory is not counted
        msg = SimpleNamespace(encoding="mono8", width=1_048_576, height=1, step=1_048_576, is_bigendian=0,
                              data=bytes(1_048_576))
        """,
        "detector(image_to_array(msg, 4096 * 4096, detector.network_pixels).pixels)",
    )
    assert result["outcome"].startswith("ImageFormatError") and "under one 8-pixel cell high" in result["outcome"]
    assert result["growth_mb"] < MEMORY_BUDGET_MB, result


@pytest.mark.parametrize(
    ("shape", "input_scale", "refused"),
    [((7, 640), None, True), ((8, 640), None, False), ((640, 7), None, True), ((28, 640), 0.25, True)],
)
def test_detector_refuses_images_thinner_than_one_cell(reference_dir, shape, input_scale, refused):
    detector = KeypointDetector(reference_dir / "v4_reference.ckpt", device="cpu", input_scale=input_scale)
    image = np.zeros(shape, np.uint8)
    if refused:
        with pytest.raises(ImageFormatError, match="under one 8-pixel cell"):
            detector(image)
    else:
        assert len(detector(image)) == 0  # a blank strip: accepted, no keypoints


def test_network_pixel_count_includes_scaling_and_padding(reference_dir):
    from kp2d_model.detector import network_input_size

    assert network_input_size(1, 1_048_576, 8) == (8, 1_048_576)
    assert network_input_size(641, 480, 8, input_scale=2.5) == (1608, 1200)
    assert network_input_size(50, 50, 32, input_size=(320, 240)) == (320, 256)
    detector = KeypointDetector(reference_dir / "v4_reference.ckpt", device="cpu", input_scale=2.0)
    assert detector.network_pixels(641, 480) == 1288 * 960
    detector.max_network_pixels = 1288 * 960 - 1
    with pytest.raises(ImageFormatError, match="max_network_pixels"):
        detector(np.zeros((480, 641), np.uint8))
    detector.max_network_pixels = 1288 * 960
    assert len(detector(np.zeros((480, 641), np.uint8)).keypoints) >= 0


def test_compressed_header_size_is_read_without_decoding():
    from kp2d_ros.conversions import ImageInputError, compressed_image_size, compressed_to_array

    for extension in (".jpg", ".png", ".webp", ".tiff", ".bmp"):
        ok, encoded = cv2.imencode(extension, np.zeros((30, 40, 3), np.uint8))
        assert compressed_image_size(encoded.tobytes()) == (40, 30), extension
    with pytest.raises(ImageInputError, match="header"):
        compressed_to_array(SimpleNamespace(data=b"\x00" * 64, format="jpeg"))
    small = compressed_to_array(SimpleNamespace(data=cv2.imencode(".png", np.zeros((8, 9), np.uint8))[1].tobytes()))
    assert small.pixels.shape == (8, 9)


# --- 5. verify_geometry never raises -----------------------------------------------------------------


def test_verify_geometry_never_raises_on_degenerate_fundamental_sets():
    """Near-collinear point sets make OpenCV's USAC assert (!model.empty()); no model is the answer."""
    for seed in range(400):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(8, 40))
        a = rng.uniform(0, 640, (n, 2))
        a[:, 1] = a[:, 0] * 0.5 + 3
        b = np.round(a + rng.normal(0, 2, (n, 2)))
        a = np.round(a)
        for threshold in (0.1, 0.3, 1.0):
            model, inliers = verify_geometry(a, b, model="fundamental", threshold=threshold)
            assert inliers.shape == (n,) and inliers.dtype == bool
            if model is None:
                assert not inliers.any()
            else:
                assert model.shape == (3, 3)


# --- 6. CameraInfo with NaN / inf --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "d"),
    [
        ([math.nan, 0, 320, 0, 500, 240, 0, 0, 1], [0.0] * 5),
        ([500, 0, 320, 0, math.inf, 240, 0, 0, 1], [0.0] * 5),
        ([500, 0, 320, 0, 500, 240, 0, 0, 1], [0.1, math.nan, 0, 0, 0]),
        ([500, 0, 320, 0, 500, 240, 0, 0, 1], [-math.inf, 0, 0, 0, 0]),
    ],
)
def test_camera_info_with_non_finite_values_is_rejected(k, d):
    from kp2d_ros.camera_model import CameraInfoError, check_camera_info

    info = SimpleNamespace(k=k, d=d, width=640, height=480, distortion_model="plumb_bob")
    with pytest.raises(CameraInfoError, match="NaN or infinite") as error:
        check_camera_info(info, (640, 480))
    assert error.value.kind == "non_finite"


# --- 7-9. training: non-finite values, torn metrics, epoch checkpoints -------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.learning_rate=.inf", "optimizer.learning_rate must be a finite number"),
        ("optimizer.learning_rate=.nan", "optimizer.learning_rate must be a finite number"),
        ("loss.margin=-.inf", "loss.margin must be a finite number"),
        ("data.crop_zoom=[1.0, .inf]", "data.crop_zoom must be a finite number"),
        ("optimizer.weight_decay=-1", "weight_decay must be >= 0"),
        ("optimizer.lr_decay=0", "lr_decay must be in"),
        ("train.seed=-1", "train.seed"),
        ("data.image_shape=[80000,80000]", "<= 4096"),
    ],
)
def test_non_finite_and_out_of_range_hyperparameters_are_refused_at_load(override, message):
    from kp2d_model.training.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config("v4", [override])


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for index in range(4):
        rng = np.random.default_rng(index)
        image = cv2.GaussianBlur(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), (5, 5), 0)
        cv2.imwrite(str(folder / f"photo{index}.png"), image)
    return folder


def _small_run(photo_folder, *overrides):
    from kp2d_model.training.config import load_config

    base = [
        f"data.path={photo_folder}", "data.image_shape=[64,96]", "data.batch_size=2", "data.num_workers=0",
        "train.num_threads=1", "train.device=cpu", "train.checkpoint_every=0", "log.progress=false",
        "log.image_every=0", "train.amp=off",
    ]  # fmt: skip
    return load_config("v0", [*base, *overrides])


def test_a_non_finite_parameter_after_a_step_stops_the_run_and_keeps_the_last_good_checkpoint(photo_folder, tmp_path):
    from kp2d_model.training.trainer import Trainer, TrainingError

    first = Trainer(_small_run(photo_folder, "train.max_steps=1"), tmp_path / "run").fit()
    good = first.checkpoint.read_bytes()
    exported = (tmp_path / "run" / "keypoint_net.safetensors").read_bytes()
    trainer = Trainer(_small_run(photo_folder, "train.max_steps=3"), tmp_path / "run", resume=first.checkpoint)
    weight = next(trainer.keypoint_net.parameters())
    weight.register_hook(lambda grad: grad * math.nan)  # a gradient fault: the loss itself stays finite
    with pytest.raises(TrainingError, match="NaN or infinite") as error:
        trainer.fit()
    assert "last good checkpoint" in str(error.value)
    assert first.checkpoint.read_bytes() == good
    assert (tmp_path / "run" / "keypoint_net.safetensors").read_bytes() == exported


def test_resume_tolerates_a_torn_last_metrics_line(photo_folder, tmp_path, caplog):
    from kp2d_model.training.trainer import Trainer

    first = Trainer(_small_run(photo_folder, "train.max_steps=2"), tmp_path / "run").fit()
    metrics = tmp_path / "run" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text(lines[0] + "\n" + lines[1] + "\n" + '{"step": 3, "epoch": 2, "loc')  # killed mid-write
    with caplog.at_level(logging.WARNING):
        result = Trainer(_small_run(photo_folder, "train.max_steps=3"), tmp_path / "run", resume=first.checkpoint).fit()
    assert result.steps == 3
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert "line 3 is incomplete" in caplog.text


class _Killed(BaseException):
    """Stands for kill -9 right after a write completed."""


def test_a_kill_between_the_epoch_writes_never_loses_the_epoch_checkpoint(photo_folder, tmp_path, monkeypatch):
    from kp2d_model.training import trainer as trainer_module
    from kp2d_model.training.checkpointing import read_training_checkpoint

    real_save = trainer_module.atomic_save

    def save_then_die_after_the_epoch_moves_last_pt(obj, path):
        written = real_save(obj, path)
        if written.name == "last.pt" and obj["epoch"] == 1:
            raise _Killed
        return written

    monkeypatch.setattr(trainer_module, "atomic_save", save_then_die_after_the_epoch_moves_last_pt)
    config = _small_run(photo_folder, "train.epochs=2", "train.keep_epoch_checkpoints=true")
    with pytest.raises(_Killed):
        trainer_module.Trainer(config, tmp_path / "run").fit()
    checkpoints = tmp_path / "run" / "checkpoints"
    assert read_training_checkpoint(checkpoints / "last.pt")["epoch"] == 1
    assert read_training_checkpoint(checkpoints / "epoch_001.pt")["epoch"] == 1


# --- 11. CLIs: one-line errors, exit 2 ---------------------------------------------------------------


def _one_line_error(capsys, program: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count(f"{program}: error:") == 1, err
    return err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "/dev/null/x"], "cannot write the output folder"),
        (["--seed", "-1"], "--seed"),
        (["--size", "100000x100000"], "--size"),
    ],
)
def test_make_hpatches_bad_arguments_are_one_line_errors(photo_folder, tmp_path, capsys, args, message):
    from kp2d_model.evaluation import synthetic

    full = ["--images", str(photo_folder), "--out", str(tmp_path / "out"), *args]
    try:
        code = synthetic.main(full)
    except SystemExit as error:  # argparse usage errors
        code = error.code
    assert code == 2
    assert message in _one_line_error(capsys, "kp2d-make-hpatches")


def test_make_hpatches_refuses_a_corrupt_photo_before_writing_anything(photo_folder, tmp_path, capsys):
    from kp2d_model.evaluation import synthetic

    photos = tmp_path / "photos"
    photos.mkdir()
    for source in sorted(photo_folder.iterdir()):
        (photos / source.name).write_bytes(source.read_bytes())
    (photos / "photo2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))  # corrupt, after good ones
    out = tmp_path / "out"
    assert synthetic.main(["--images", str(photos), "--out", str(out), "--size", "64x48"]) == 2
    assert "photo2.png" in _one_line_error(capsys, "kp2d-make-hpatches")
    assert not out.exists() or not list(out.iterdir()), "no partial sequences left"


def test_make_hpatches_overwrite_refuses_a_symlinked_sequence(photo_folder, tmp_path, capsys):
    from kp2d_model.evaluation import synthetic

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / "v_photo0").symlink_to(elsewhere)
    assert synthetic.main(["--images", str(photo_folder), "--out", str(out), "--overwrite", "--size", "64x48"]) == 2
    assert "symbolic link" in _one_line_error(capsys, "kp2d-make-hpatches")
    assert (elsewhere / "precious").read_text() == "keep" and (out / "v_photo0").is_symlink()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--resolution", "100000x100000"], "too large"),
        pytest.param(
            ["--device", "cuda"], "CUDA is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here"),
        ),
        (["--device", "tpu"], "expected auto, cpu, cuda"),
    ],
)  # fmt: skip
def test_evaluate_bad_arguments_are_one_line_errors(reference_dir, capsys, args, message):
    from kp2d_model.evaluation import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--hpatches", str(reference_dir / "mini_hpatches"), "--quiet", *args])
    assert exit_info.value.code == 2
    assert message in _one_line_error(capsys, "kp2d-evaluate")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "/dev/null/run"], "cannot write the run folder"),
        (["train.seed=-1"], "train.seed"),
        (["optimizer.weight_decay=-1"], "weight_decay"),
        (["optimizer.learning_rate=.inf"], "finite"),
        (["data.image_shape=[80000,80000]"], "image_shape"),
        pytest.param(
            ["train.device=cuda"], "CUDA is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here"),
        ),
    ],
)  # fmt: skip
def test_train_bad_arguments_are_one_line_errors(photo_folder, tmp_path, capsys, args, message):
    from kp2d_model.training import cli

    out = [] if "--out" in args else ["--out", str(tmp_path / "run")]
    code = cli.main(["v0", "--data", str(photo_folder), *out, "train.max_steps=1", "--quiet", *args])
    assert code == 2
    assert message in _one_line_error(capsys, "kp2d-train")

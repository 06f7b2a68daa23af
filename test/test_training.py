"""Training: configuration, atomic checkpoints, real short training runs, resume, CLI errors and Ctrl-C.

Runs are tiny (64x96 images, batch 2, one CPU thread) so each takes seconds; the loss is the real
kp2d_loss and the data the real ImageFolderDataset.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hostile_files import MAPPED_BYTES

from kp2d_model.augmentation import make_training_batch
from kp2d_model.checkpoint import CheckpointError, default_checkpoint_path, load_keypoint_net, read_checkpoint
from kp2d_model.training import cli
from kp2d_model.training.checkpointing import atomic_save, read_training_checkpoint, remove_stale_temporaries
from kp2d_model.training.config import (
    ConfigError,
    TrainConfig,
    load_config,
    resolve_config_path,
    valid_keys,
)
from kp2d_model.training.trainer import Trainer, TrainingError, augmentation_options, cpu_has_native_bf16

REPO_ROOT = Path(__file__).resolve().parents[1]

SMALL_RUN = [
    "data.image_shape=[64,96]",
    "data.batch_size=2",
    "data.num_workers=0",
    "train.num_threads=1",
    "train.device=cpu",
    "train.checkpoint_every=0",
    "log.progress=false",
    "log.every=1",
    "log.image_every=1",
]


def _textured(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 127, np.uint8)
    for _ in range(40):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = (int(v) for v in rng.integers(0, min(height, width), 2))
        if rng.random() < 0.5:
            cv2.circle(image, (x, y), int(rng.integers(3, 25)), color, -1)
        else:
            cv2.rectangle(image, (x, y), (x + int(rng.integers(5, 40)), y + int(rng.integers(5, 40))), color, -1)
    return image


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Six textured 180x240 images."""
    folder = tmp_path_factory.mktemp("images")
    for index in range(6):
        cv2.imwrite(str(folder / f"img{index}.png"), _textured(180, 240, index))
    return folder


def _config(image_folder: Path, *overrides: str, name: str = "v4") -> TrainConfig:
    return load_config(name, [f"data.path={image_folder}", *SMALL_RUN, *overrides])


# --- configuration -------------------------------------------------------------------------------------

VERSION_FLAGS = {  # with_io, do_upsample, do_cross, descriptor_loss (kp2d-reference.md)
    "v0": (False, False, False, True),
    "v1": (False, False, True, True),
    "v2": (False, True, True, True),
    "v3": (True, True, True, False),
    "v4": (True, True, True, True),
}


@pytest.mark.parametrize("version", sorted(VERSION_FLAGS))
def test_packaged_configs_have_the_original_version_flags_and_schedule(version):
    config = load_config(version)
    model = config.model
    assert (model.with_io, model.do_upsample, model.do_cross, model.descriptor_loss) == VERSION_FLAGS[version]
    assert model.type == "KeypointNet" and model.use_color
    assert config.optimizer.learning_rate == 1e-3
    assert (config.optimizer.lr_decay, config.optimizer.lr_decay_epochs) == (0.5, 40)
    assert (config.train.epochs, config.data.batch_size, config.train.seed) == (50, 8, 42)
    assert config.data.image_shape == [240, 320] and not config.data.random_crop


def test_default_model_recipe_is_v4_without_dropout_on_random_crops():
    v4, recipe = load_config("v4"), load_config("default_model")
    assert recipe.model.with_drop is False and v4.model.with_drop is True
    assert recipe.loss == v4.loss and recipe.optimizer == v4.optimizer
    assert recipe.model.with_io and recipe.model.do_upsample and recipe.model.do_cross
    assert recipe.data.random_crop and recipe.data.image_shape == [120, 160]


def test_resnet_config_uses_keypoint_resnet_at_256x320():
    config = load_config("v2_resnet")
    assert config.model.type == "KeypointResnet" and config.data.image_shape == [256, 320]
    assert not config.model.with_io


def test_an_unknown_override_key_is_an_error_listing_the_valid_keys():
    with pytest.raises(ConfigError) as error:
        load_config("v4", ["data.batch_sise=4"])
    message = str(error.value)
    assert "unknown key 'data.batch_sise'" in message
    assert all(key in message for key in valid_keys())
    with pytest.raises(ConfigError, match="unknown key 'nosection.x'"):
        load_config("v4", ["nosection.x=1"])


def test_an_override_of_the_wrong_type_is_an_error_naming_key_and_value():
    with pytest.raises(ConfigError, match=r"data.batch_size must be int, got 'four'"):
        load_config("v4", ["data.batch_size=four"])
    with pytest.raises(ConfigError, match=r"model.with_io must be bool"):
        load_config("v4", ["model.with_io=1"])
    with pytest.raises(ConfigError, match=r"multiples of 8"):
        load_config("v4", ["data.image_shape=[100,160]"])
    with pytest.raises(ConfigError, match=r"train.amp must be one of"):
        load_config("v4", ["train.amp=fp8"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config("v4", ["=3"])


def test_overrides_are_parsed_as_yaml_values():
    config = load_config("v0", ["data.image_shape=[120, 160]", "model.with_io=true", "optimizer.learning_rate=1"])
    assert config.data.image_shape == [120, 160]
    assert config.model.with_io is True
    assert config.optimizer.learning_rate == 1.0 and isinstance(config.optimizer.learning_rate, float)
    assert load_config("v0", ["train.amp=off"]).train.amp == "off"  # YAML 1.2 booleans: "off" stays a string
    # Exponents without a dot (YAML 1.1 reads 5e-4 as a string) are floats; other strings are still refused.
    assert load_config("v0", ["optimizer.learning_rate=5e-4"]).optimizer.learning_rate == pytest.approx(5e-4)
    with pytest.raises(ConfigError, match=r"optimizer.learning_rate must be float, got 'fast'"):
        load_config("v0", ["optimizer.learning_rate=fast"])


def test_homography_ranges_that_cannot_fit_the_image_are_errors_naming_the_keys():
    with pytest.raises(ConfigError, match=r"augmentation.patch_ratio \+ augmentation.perspective_amplitude.*1.100"):
        load_config("v4", ["augmentation.perspective_amplitude=0.3"])
    with pytest.raises(ConfigError, match=r"augmentation.scaling_amplitude must be in \[0, 1\), got 1.5"):
        load_config("v4", ["augmentation.scaling_amplitude=1.5"])
    with pytest.raises(ConfigError, match=r"augmentation.max_angle_deg must be in \[0, 180\], got -5"):
        load_config("v4", ["augmentation.max_angle_deg=-5.0"])
    with pytest.raises(ConfigError, match=r"augmentation.patch_ratio must be in \(0, 1\], got 0.0"):
        load_config("v4", ["augmentation.patch_ratio=0.0"])


def _corner_scale_ratio(homography: torch.Tensor) -> torch.Tensor:
    """Per homography (B, 3, 3), largest / smallest local area scale over the unit square's corners."""
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)
    points = torch.cat([corners, torch.ones(4, 1, dtype=torch.float64)], dim=1).T  # (3, 4)
    h = homography.double()
    w = (h[:, 2:3] @ points)[:, 0]  # (B, 4): local area scale of a homography is det(H) / w^3
    scale = torch.linalg.det(h)[:, None].abs() / w.abs() ** 3
    return scale.max(dim=1).values / scale.min(dim=1).values


def test_homography_ranges_from_the_config_reach_the_training_warps(image_folder):
    original = augmentation_options(_config(image_folder))
    wider = augmentation_options(
        _config(image_folder, "augmentation.patch_ratio=0.6", "augmentation.perspective_amplitude=0.3")
    )
    assert (wider.patch_ratio, wider.perspective_amplitude) == (0.6, 0.3)
    assert original.max_angle == pytest.approx(math.pi / 4)
    images = torch.rand(64, 3, 64, 96)
    ratios = [
        _corner_scale_ratio(make_training_batch(images, options, torch.Generator().manual_seed(0))["homography"])
        for options in (original, wider)
    ]
    assert ratios[1].median() > 1.5 * ratios[0].median()  # stronger out-of-plane tilt


def test_rotation_fits_false_from_the_config_reaches_the_training_warps(image_folder):
    """``augmentation.rotation_fits=false``: wide rotations at the original zoom, black where the photo ends."""
    overrides = ("augmentation.max_angle_deg=60",)
    fitting = augmentation_options(_config(image_folder, *overrides))
    free = augmentation_options(_config(image_folder, *overrides, "augmentation.rotation_fits=false"))
    assert fitting.rotation_fits and not free.rotation_fits
    images = torch.ones(64, 3, 60, 80)
    batches = [make_training_batch(images, options, torch.Generator().manual_seed(0)) for options in (fitting, free)]
    homographies = [b["homography"] for b in batches]
    angles = [torch.atan2(h[:, 1, 0] - h[:, 0, 1], h[:, 0, 0] + h[:, 1, 1]) for h in homographies]  # about, radians
    assert angles[1].abs().median() > 2 * angles[0].abs().median()
    black_pixels = [(b["image_aug"].amax(dim=1) == 0).float().mean() for b in batches]
    assert black_pixels[0] == 0 < black_pixels[1]


def test_config_files_are_checked_and_names_resolved(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  with_oi: true\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'model.with_oi'"):
        load_config(bad)
    assert resolve_config_path("v3") == REPO_ROOT / "config" / "train" / "v3.yaml"
    available = "available: default_model, v0, v1, v2, v2_resnet, v3, v4"
    with pytest.raises(ConfigError, match=rf"no training config named 'v9'.*{available}"):
        resolve_config_path("v9")
    with pytest.raises(ConfigError, match="not found"):
        resolve_config_path(tmp_path / "missing.yaml")


# --- checkpoints ---------------------------------------------------------------------------------------


def test_a_failing_serialisation_keeps_the_previous_checkpoint_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"step": 1, "weights": torch.arange(5.0)}, path)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        atomic_save({"step": 2, "weights": torch.zeros(5), "not_serialisable": lambda: None}, path)
    state = torch.load(path, weights_only=True)
    assert state["step"] == 1 and torch.equal(state["weights"], torch.arange(5.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


WRITER = textwrap.dedent(
    """
    import sys, torch
    from kp2d_model.training.checkpointing import atomic_save
    version = 0
    while True:
        version += 1
        atomic_save({"version": version, "payload": torch.full((4_000_000,), float(version))}, sys.argv[1])
    """
)


def test_a_checkpoint_write_killed_midway_never_replaces_the_last_good_one(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"version": 0, "payload": torch.zeros(4_000_000)}, path)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
    try:
        deadline = time.monotonic() + 60
        temporary = None
        while time.monotonic() < deadline and temporary is None:
            candidates = [p for p in tmp_path.glob(".last.pt.tmp-*") if p.stat().st_size > 0]
            temporary = candidates[0] if candidates else None
        assert temporary is not None, "the writer never started a temporary file"
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    state = torch.load(path, weights_only=True)  # a complete file: either the original or one full rewrite
    assert torch.all(state["payload"] == float(state["version"]))
    assert state["payload"].numel() == 4_000_000
    remove_stale_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_file_that_is_not_a_trainer_checkpoint_is_refused_for_resume(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable trainer checkpoint"):
        read_training_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="not a trainer checkpoint"):
        read_training_checkpoint(other)


# --- training runs -------------------------------------------------------------------------------------


def test_batch_size_one_trains_every_version_flag_set(image_folder, tmp_path):
    exact = ["train.amp=off", "train.channels_last=false"]  # the plain float32 path (the default may use bf16)
    for version in ("v0", "v3", "v4"):
        overrides = ["data.batch_size=1", "train.max_steps=1", "log.image_every=0", *exact]
        config = _config(image_folder, *overrides, name=version)
        result = Trainer(config, tmp_path / version).fit()
        assert result.steps == 1 and len(result.history) == 1
        assert all(np.isfinite(value) for value in result.history[0].values())


def test_training_lowers_the_loss_on_a_fixed_batch_and_writes_loadable_models(image_folder, tmp_path):
    config = _config(image_folder, "data.batch_size=4", "train.max_steps=12", "log.image_every=6")
    trainer = Trainer(config, tmp_path / "run")
    images = torch.stack([trainer.dataset[(0, i)]["image"] for i in range(4)]).float() / 255.0
    fixed = make_training_batch(images, trainer.augmentation, torch.Generator().manual_seed(123))

    def fixed_batch_loss() -> dict[str, float]:
        torch.manual_seed(7)  # the same dropout masks before and after
        with torch.no_grad():
            return {name: float(value) for name, value in trainer.loss_module(fixed).items()}

    before = fixed_batch_loss()
    result = trainer.fit()
    expected = {name: value.detach().clone() for name, value in trainer.keypoint_net.state_dict().items()}
    after = fixed_batch_loss()  # (train mode: this updates BatchNorm statistics, hence `expected` first)
    assert result.steps == 12 and not result.interrupted
    assert after["total"] < 0.95 * before["total"], (before, after)
    assert after["descriptor"] < before["descriptor"], (before, after)

    out = tmp_path / "run"
    assert (out / "config.yaml").is_file() and list((out / "tensorboard").glob("events.out.tfevents.*"))
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 13))
    for path in (result.checkpoint, result.exported_model):
        network = load_keypoint_net(path)
        assert not network.training
        for name, value in network.state_dict().items():
            assert torch.equal(value, expected[name]), (path, name)
    assert read_checkpoint(result.exported_model).provenance["step"] == 12


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bfloat16 (AVX512_BF16 / AMX)")
def test_bf16_mixed_precision_on_the_cpu_gives_nearly_the_float32_loss(image_folder, tmp_path):
    images = None
    losses = {}
    for amp in ("off", "bf16"):
        trainer = Trainer(_config(image_folder, f"train.amp={amp}", "data.batch_size=4"), tmp_path / amp)
        assert trainer.amp_dtype == (torch.bfloat16 if amp == "bf16" else None)
        if images is None:
            images = torch.stack([trainer.dataset[(0, i)]["image"] for i in range(4)])
        losses[amp] = trainer.train_step(images)
        score, coord, desc = trainer.loss_module.keypoint_net(torch.zeros(1, 3, 64, 96))
        assert score.dtype == coord.dtype == desc.dtype == torch.float32
    for name in ("total", "location", "descriptor", "io"):
        assert losses["bf16"][name] == pytest.approx(losses["off"][name], rel=2e-2, abs=1e-3), name


def test_resume_gives_the_same_next_step_losses_as_an_uninterrupted_run(image_folder, tmp_path):
    # 6 images, batch 2: 3 steps per epoch, so step 4 runs in epoch 2 with a fresh shuffle.
    straight = Trainer(_config(image_folder, "train.max_steps=4", "log.image_every=0"), tmp_path / "straight").fit()
    first_half = Trainer(_config(image_folder, "train.max_steps=2", "log.image_every=0"), tmp_path / "split").fit()
    assert first_half.checkpoint == tmp_path / "split" / "checkpoints" / "last.pt"
    resumed_trainer = Trainer(
        _config(image_folder, "train.max_steps=4", "log.image_every=0"),
        tmp_path / "split",
        resume=first_half.checkpoint,
    )
    assert (resumed_trainer.step, resumed_trainer.epoch) == (2, 0)
    resumed = resumed_trainer.fit()
    assert [h["total"] for h in first_half.history] == pytest.approx([h["total"] for h in straight.history[:2]], abs=0)
    for expected, got in zip(straight.history[2:], resumed.history, strict=True):
        for name in expected:
            assert got[name] == pytest.approx(expected[name], abs=1e-5), name
    final_straight = read_training_checkpoint(straight.checkpoint)
    final_resumed = read_training_checkpoint(resumed.checkpoint)
    assert (final_resumed["step"], final_resumed["epoch"]) == (4, 1)
    for name, value in final_straight["keypoint_net"].items():
        assert torch.allclose(final_resumed["keypoint_net"][name].float(), value.float(), atol=1e-5), name


def test_max_steps_on_the_last_batch_of_an_epoch_closes_that_epoch(image_folder, tmp_path):
    # 6 images, batch 2: step 3 is the epoch's last batch. The run that trained it closes the epoch (decay,
    # epoch count, epoch checkpoint, evaluation); the resumed run starts epoch 2, without PyTorch's warning
    # about the scheduler stepping before the optimizer.
    first = Trainer(_config(image_folder, "train.max_steps=3", "log.image_every=0"), tmp_path / "run").fit()
    assert first.epochs_completed == 1
    assert (read_training_checkpoint(first.checkpoint)["epoch"]) == 1
    resumed = Trainer(_config(image_folder, "train.max_steps=4", "log.image_every=0"), tmp_path / "run",
                      resume=first.checkpoint)  # fmt: skip
    assert (resumed.step, resumed.epoch, resumed.samples_in_epoch) == (3, 1, 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = resumed.fit()
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]
    assert result.steps == 4
    assert read_training_checkpoint(result.checkpoint)["epoch"] == 1


def test_a_new_run_refuses_to_overwrite_an_existing_run_folder(image_folder, tmp_path):
    Trainer(_config(image_folder, "train.max_steps=1", "log.image_every=0", name="v0"), tmp_path / "run").fit()
    with pytest.raises(TrainingError, match="already holds a training run.*--resume"):
        Trainer(_config(image_folder, "train.max_steps=1", name="v0"), tmp_path / "run")


def test_an_epoch_logs_hpatches_metrics_and_images_to_tensorboard(image_folder, reference_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    hpatches = reference_dir / "mini_hpatches"
    config = _config(image_folder, "train.epochs=1", "data.limit=2", f"eval.hpatches_path={hpatches}")
    result = Trainer(config, tmp_path / "run").fit()
    assert result.epochs_completed == 1
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"loss/total", "loss/location", "loss/descriptor", "loss/score", "loss/io", "train/recall"} <= scalars
    assert {"hpatches/repeatability", "hpatches/c1", "hpatches/mscore"} <= scalars
    assert 0.0 <= events.Scalars("hpatches/repeatability")[0].value <= 1.0
    assert {"keypoints", "score_heatmap"} <= set(events.Tags()["images"])


def test_the_learning_rate_halves_every_lr_decay_epochs(image_folder, tmp_path):
    config = _config(image_folder, "optimizer.lr_decay_epochs=1", "train.epochs=2", "data.limit=2", "log.image_every=0")
    result = Trainer(config, tmp_path / "run").fit()
    assert result.epochs_completed == 2 and result.steps == 2
    state = read_training_checkpoint(result.checkpoint)
    assert [group["lr"] for group in state["optimizer"]["param_groups"]] == pytest.approx([2.5e-4, 2.5e-4])


def test_optimizer_settings_given_on_resume_take_effect(image_folder, tmp_path):
    # 6 images, batch 2: 3 steps per epoch; the first run completes one epoch at lr 1e-3 (decay every 40).
    first = Trainer(_config(image_folder, "train.max_steps=4", "log.image_every=0"), tmp_path / "run").fit()
    overrides = ("optimizer.learning_rate=4e-4", "optimizer.lr_decay_epochs=1", "train.max_steps=5")
    resumed = Trainer(_config(image_folder, *overrides, "log.image_every=0"), tmp_path / "run", resume=first.checkpoint)
    # The new schedule after 1 completed epoch: 4e-4 * 0.5 ** (1 // 1).
    assert [group["lr"] for group in resumed.optimizer.param_groups] == pytest.approx([2e-4, 2e-4])
    resumed.fit()
    state = read_training_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert [group["lr"] for group in state["optimizer"]["param_groups"]] == pytest.approx([2e-4, 2e-4])
    assert state["config"]["optimizer"]["learning_rate"] == pytest.approx(4e-4)


def test_resuming_with_a_different_network_is_refused(image_folder, tmp_path):
    result = Trainer(_config(image_folder, "train.max_steps=1", "log.image_every=0", name="v0"), tmp_path / "a").fit()
    with pytest.raises(CheckpointError, match="differs from the configuration"):
        Trainer(_config(image_folder, "train.max_steps=2", name="v4"), tmp_path / "b", resume=result.checkpoint)


def test_init_starts_a_new_run_from_a_models_weights(image_folder, tmp_path):
    bundled = default_checkpoint_path()
    config = _config(image_folder, "log.image_every=0", name="default_model")
    trainer = Trainer(config, tmp_path / "fine_tune", init=bundled)
    expected = read_checkpoint(bundled).state_dict
    for name, value in trainer.keypoint_net.state_dict().items():
        assert torch.equal(value.cpu(), expected[name]), name
    assert trainer.step == 0 and not trainer.optimizer.state  # a fresh run: no optimizer moments yet

    # Trained weights fit the self-supervised task better than the same network from its random start (the
    # keypoint network's terms; the IO-Net starts fresh in both, and its term is 0 when scratch finds no pairs).
    scratch = Trainer(config, tmp_path / "scratch")
    images = torch.stack([trainer.dataset[(0, i)]["image"] for i in range(2)]).float() / 255.0
    batch = make_training_batch(images, trainer.augmentation, torch.Generator().manual_seed(5))
    with torch.no_grad():
        fine_tune, random_start = ({k: float(v) for k, v in t.loss_module(batch).items()} for t in (trainer, scratch))
    assert fine_tune["descriptor"] < 0.6 * random_start["descriptor"], (fine_tune, random_start)
    assert fine_tune["location"] < random_start["location"], (fine_tune, random_start)
    assert fine_tune["recall"] > random_start["recall"] + 0.1, (fine_tune, random_start)


def test_cli_init_default_fine_tunes_the_bundled_model(image_folder, tmp_path, caplog):
    argv = ["default_model", "--data", str(image_folder), "--init", "default", "--out", str(tmp_path / "run")]
    with caplog.at_level(logging.INFO):
        assert cli.main([*argv, *SMALL_RUN, "train.max_steps=2", "log.image_every=0"]) == 0
    assert any("starting from the weights of" in record.getMessage() for record in caplog.records)
    tuned = read_checkpoint(tmp_path / "run" / "keypoint_net.safetensors").state_dict
    bundled = read_checkpoint(default_checkpoint_path()).state_dict
    assert tuned.keys() == bundled.keys()  # the same network ...
    assert not torch.equal(tuned["conv1a.0.weight"], bundled["conv1a.0.weight"])  # ... moved by two optimizer steps


def test_init_from_a_model_of_another_network_is_refused(image_folder, tmp_path):
    with pytest.raises(ConfigError, match=r"--init .* differs from the configuration's"):
        Trainer(_config(image_folder, name="v0"), tmp_path / "run", init=default_checkpoint_path())
    not_a_model = tmp_path / "photo.ckpt"
    not_a_model.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(ConfigError, match=r"^--init: .*photo.ckpt"):
        Trainer(_config(image_folder), tmp_path / "run2", init=not_a_model)
    argv = ["v0", "--data", str(image_folder), "--init", "default", "--out", str(tmp_path / "run3"), *SMALL_RUN]
    assert cli.main(argv) == 2  # a usage error, as a wrong --resume


def test_init_and_resume_together_are_refused(image_folder, tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        Trainer(_config(image_folder), tmp_path / "run", resume=tmp_path / "a.pt", init=tmp_path / "b.ckpt")


# --- command line --------------------------------------------------------------------------------------


def test_cli_reports_bad_input_in_one_line_without_a_traceback(image_folder, tmp_path, capsys):
    assert cli.main(["v4", "--data", str(tmp_path / "missing")]) == 2
    assert "kp2d-train: error: training data not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["v4", "--data", str(empty)]) == 2
    assert "no images found" in capsys.readouterr().err
    assert cli.main(["v4", "--data", str(image_folder), "data.batch_sise=2"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'data.batch_sise'" in err and "data.batch_size" in err and "Traceback" not in err
    assert cli.main(["v4"]) == 2
    assert "no training images" in capsys.readouterr().err
    assert cli.main(["--resume", str(tmp_path / "nothing.pt")]) == 2
    assert cli.main(["default_model", "--data", str(image_folder), "--init", str(tmp_path / "missing.ckpt")]) == 2
    init_and_resume = ["--init", "default", "--resume", str(tmp_path / "x.pt")]
    assert cli.main(["default_model", "--data", str(image_folder), *init_and_resume]) == 2
    assert "not found" in capsys.readouterr().err


def test_a_run_refused_for_its_input_leaves_no_empty_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default run folder is runs/NAME-TIME in the working directory
    assert cli.main(["v4", "--data", str(tmp_path / "missing")]) == 2
    assert not (tmp_path / "runs").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    kept = tmp_path / "kept"
    kept.mkdir()
    assert cli.main(["v4", "--data", str(empty), "--out", str(kept / "a" / "b")]) == 2
    assert kept.is_dir() and not any(kept.iterdir())  # the folders it made are gone, the caller's stays


def test_cli_print_config_shows_overrides(capsys):
    assert cli.main(["v3", "--data", "/some/where", "data.batch_size=3", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "batch_size: 3" in printed and "path: /some/where" in printed and "descriptor_loss: false" in printed


def test_ctrl_c_saves_a_checkpoint_exits_cleanly_and_the_run_resumes(image_folder, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "kp2d_model.training.cli", "v4", "--data", str(image_folder), "--out", str(out)]
    command += [*SMALL_RUN, "log.image_every=0", "train.max_steps=1000"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        metrics = out / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (metrics.is_file() and metrics.read_text().strip()):
            time.sleep(0.2)
        assert metrics.is_file(), "the run never completed a step"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "--resume" in stderr
    state = read_training_checkpoint(out / "checkpoints" / "last.pt")
    steps_done = len(metrics.read_text().splitlines())
    assert state["step"] == steps_done >= 1
    assert not list((out / "checkpoints").glob(".*tmp*"))

    resume = ["--resume", str(out / "checkpoints" / "last.pt"), f"train.max_steps={steps_done + 1}", "--quiet"]
    assert cli.main(resume) == 0
    assert read_training_checkpoint(out / "checkpoints" / "last.pt")["step"] == steps_done + 1
    assert (out / "keypoint_net.safetensors").is_file()


def test_sigterm_to_the_whole_process_group_with_loader_workers_saves_and_exits_cleanly(image_folder, tmp_path):
    """As `timeout`, `docker stop` or a scheduler do: every process of the group, DataLoader workers included."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "kp2d_model.training.cli", "v4", "--data", str(image_folder), "--out", str(out)]
    command += [*SMALL_RUN, "data.num_workers=2", "log.image_every=0", "train.max_steps=1000"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    process = subprocess.Popen(command, **pipes, text=True, start_new_session=True)
    try:
        metrics = out / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (metrics.is_file() and metrics.read_text().strip()):
            time.sleep(0.2)
        assert metrics.is_file(), "the run never completed a step"
        os.killpg(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "DataLoader worker" not in stderr and "--resume" in stderr
    state = read_training_checkpoint(out / "checkpoints" / "last.pt")
    assert state["step"] == len(metrics.read_text().splitlines()) >= 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is how the test makes memory run out")
def test_out_of_memory_is_reported_with_a_smaller_batch_suggestion(image_folder, tmp_path):
    # The trainer's address space is capped at what it maps on import plus 2 GiB: a 16 x 480 x 640 batch does not
    # fit. Relative to the mapped size, as a CUDA build of torch maps ~2.4 GB more at import than the CPU build.
    capped_trainer = (
        "import resource, sys\n"
        "from kp2d_model.training import cli\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({MAPPED_BYTES} + 2 * 1024**3,) * 2)\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    command = [sys.executable, "-c", capped_trainer, "v4", "--data", str(image_folder)]
    command += ["--out", str(tmp_path / "run"), *SMALL_RUN, "data.image_shape=[480,640]", "data.batch_size=16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "out of memory" in done.stderr and "data.batch_size=8" in done.stderr
    assert "Traceback" not in done.stderr

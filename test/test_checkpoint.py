"""Checkpoint reading and writing: safe unpickling, clear errors, and the three formats."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest
import torch

from kp2d_model.checkpoint import (
    PROJECT_FORMAT,
    TRAINER_FORMAT,
    CheckpointError,
    build_keypoint_net,
    load_keypoint_net,
    read_checkpoint,
    save_keypoint_net,
)
from kp2d_model.networks import InlierNet, KeypointNet, KeypointResnet


@pytest.fixture(scope="module")
def v4_path(reference_dir):
    return reference_dir / "v4_reference.ckpt"


@pytest.fixture(scope="module")
def sample_input():
    generator = torch.Generator().manual_seed(0)
    return (torch.rand(1, 3, 64, 96, generator=generator) - 0.5) * 0.225


def outputs(net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.inference_mode():
        return net(x)


class _RunsShellCommand:
    """Pickles as a call to os.system: what a malicious checkpoint would contain."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _RunsPythonCode:
    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


@pytest.mark.parametrize("payload", ["shell", "exec"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, v4_path, payload):
    marker = tmp_path / "pwned"
    if payload == "shell":
        evil = _RunsShellCommand(f"touch {marker}")
        refused = "system"
    else:
        evil = _RunsPythonCode(f"open({str(marker)!r}, 'w').close()")
        refused = "exec"
    state_dict = read_checkpoint(v4_path).state_dict
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": state_dict, "config": evil}, path)
    assert zipfile.is_zipfile(path)  # a structurally valid torch checkpoint
    with pytest.raises(CheckpointError, match=refused) as error:
        load_keypoint_net(path)
    assert "allow-list" in str(error.value) and str(path) in str(error.value)
    assert not marker.exists()


def test_released_checkpoint_is_read_without_yacs(v4_path):
    import importlib.util

    assert importlib.util.find_spec("yacs") is None
    checkpoint = read_checkpoint(v4_path)
    assert checkpoint.format == "kp2d-released"
    params = checkpoint.config["model"]["params"]
    assert isinstance(params, dict) and params["with_io"] is True
    assert checkpoint.model_config == {
        "type": "KeypointNet",
        "use_color": True,
        "do_upsample": True,
        "do_cross": True,
        "with_drop": True,
    }


def test_keypoint_net_type_key_selects_type_by_value_not_presence(v4_path):
    # The original eval script builds a ResNet whenever the key exists; v4's params say "KeypointNet".
    assert read_checkpoint(v4_path).config["model"]["params"]["keypoint_net_type"] == "KeypointNet"
    assert type(load_keypoint_net(v4_path)) is KeypointNet


def test_released_layout_with_resnet_type_builds_keypoint_resnet(tmp_path, sample_input):
    resnet = KeypointResnet().eval()
    config = {"model": {"params": {"keypoint_net_type": "KeypointResnet", "use_color": True}}}
    path = tmp_path / "resnet.ckpt"
    torch.save({"state_dict": resnet.state_dict(), "config": config}, path)
    loaded = load_keypoint_net(path)
    assert type(loaded) is KeypointResnet
    x = torch.zeros(1, 3, 64, 96)
    for expected, actual in zip(outputs(resnet, x), outputs(loaded, x), strict=True):
        assert torch.equal(expected, actual)


def test_missing_file_is_a_clear_error(tmp_path):
    path = tmp_path / "nope.ckpt"
    with pytest.raises(CheckpointError, match="not found") as error:
        load_keypoint_net(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("fraction", [0.5, 0.999])
def test_truncated_torch_file_is_a_clear_error(tmp_path, v4_path, fraction):
    data = v4_path.read_bytes()
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as error:
        load_keypoint_net(path)
    assert str(path) in str(error.value)


def test_truncated_safetensors_file_is_a_clear_error(tmp_path, v4_path):
    full = tmp_path / "model.safetensors"
    save_keypoint_net(full, load_keypoint_net(v4_path), {"type": "KeypointNet"}, {})
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(full.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_keypoint_net(path)


def test_random_bytes_are_a_clear_error(tmp_path):
    path = tmp_path / "noise.ckpt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_keypoint_net(path)


def test_wrong_shape_state_dict_names_the_offending_key(tmp_path, v4_path):
    state_dict = dict(read_checkpoint(v4_path).state_dict)
    state_dict["convDa.0.weight"] = torch.zeros(256, 128, 3, 3)
    path = tmp_path / "wrong.ckpt"
    config = {"model": {"params": {"use_color": True, "do_upsample": True, "do_cross": True}}}
    torch.save({"state_dict": state_dict, "config": config}, path)
    with pytest.raises(CheckpointError, match=r"convDa\.0\.weight.*\(256, 128, 3, 3\).*\(256, 256, 3, 3\)"):
        load_keypoint_net(path)


def test_missing_and_unexpected_keys_are_named(tmp_path, v4_path):
    state_dict = dict(read_checkpoint(v4_path).state_dict)
    del state_dict["convFbb.bias"]
    state_dict["extra.weight"] = torch.zeros(1)
    path = tmp_path / "keys.ckpt"
    torch.save({"state_dict": state_dict, "config": {"model": {"params": {}}}}, path)
    expected = r"missing keys: \['convFbb\.bias'\].*unexpected keys: \['extra\.weight'\]"
    with pytest.raises(CheckpointError, match=expected):
        load_keypoint_net(path)


def test_project_format_round_trip_preserves_outputs_and_metadata(tmp_path, v4_path, sample_input):
    original = load_keypoint_net(v4_path)
    provenance = {"trained_on": "fixture", "steps": 3, "source": str(v4_path)}
    path = tmp_path / "model.safetensors"
    save_keypoint_net(path, original, original.kp2d_model_config, provenance)
    checkpoint = read_checkpoint(path)
    assert checkpoint.format == PROJECT_FORMAT
    assert checkpoint.provenance == provenance
    assert checkpoint.model_config == original.kp2d_model_config
    loaded = load_keypoint_net(path)
    assert not loaded.training
    for expected, actual in zip(outputs(original, sample_input), outputs(loaded, sample_input), strict=True):
        assert torch.equal(expected, actual)


def test_project_format_contains_no_pickle(tmp_path, v4_path):
    path = tmp_path / "model.safetensors"
    save_keypoint_net(path, load_keypoint_net(v4_path), {"type": "KeypointNet"}, {"note": "x"})
    assert not zipfile.is_zipfile(path)
    assert b"\x80\x02" not in path.read_bytes()[:16]


def test_save_refuses_a_config_that_does_not_match_the_network(tmp_path, v4_path):
    with pytest.raises(CheckpointError, match="KeypointResnet"):
        save_keypoint_net(tmp_path / "m.safetensors", load_keypoint_net(v4_path), {"type": "KeypointResnet"}, {})


def test_trainer_format_loads_and_keeps_the_extra_state(tmp_path, reference_dir, sample_input):
    v0 = load_keypoint_net(reference_dir / "v0_reference.ckpt")
    io_net = InlierNet()
    optimizer = torch.optim.Adam(list(v0.parameters()) + list(io_net.parameters()), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=40, gamma=0.5)
    model_config = {"type": "KeypointNet", "use_color": True, "do_upsample": False, "do_cross": False}
    path = tmp_path / "step_000010.pt"
    torch.save(
        {
            "format": TRAINER_FORMAT,
            "keypoint_net": v0.state_dict(),
            "io_net": io_net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": 10,
            "epoch": 1,
            "config": {"train": {"batch_size": 8}},
            "model_config": model_config,
        },
        path,
    )
    torch.load(path, weights_only=True)  # the trainer format's contract: plain containers only
    checkpoint = read_checkpoint(path)
    assert checkpoint.format == TRAINER_FORMAT
    assert checkpoint.config == {"train": {"batch_size": 8}}
    assert checkpoint.extra["step"] == 10 and set(checkpoint.extra["io_net"]) == set(io_net.state_dict())
    loaded = load_keypoint_net(path)
    assert (loaded.do_upsample, loaded.do_cross) == (False, False)
    for expected, actual in zip(outputs(v0, sample_input), outputs(loaded, sample_input), strict=True):
        assert torch.equal(expected, actual)


def test_unrecognised_layout_is_a_clear_error(tmp_path):
    path = tmp_path / "bare_state_dict.pt"
    torch.save(KeypointNet().state_dict(), path)
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        load_keypoint_net(path)


@pytest.mark.parametrize(
    ("model_config", "message"),
    [
        ({"type": "SuperPoint"}, "type"),
        ({"use_colour": True}, "use_colour"),
        ({"do_cross": "yes"}, "do_cross"),
        ({"type": "KeypointResnet", "use_color": False}, "use_color"),
    ],
)
def test_build_rejects_bad_model_config(model_config, message):
    with pytest.raises(CheckpointError, match=message):
        build_keypoint_net(model_config)


def test_build_applies_model_config():
    net = build_keypoint_net({"type": "KeypointNet", "use_color": False, "do_upsample": False, "do_cross": False})
    assert net.conv1a[0].in_channels == 1 and net.cross_ratio == 1.0 and not net.do_upsample
    assert type(build_keypoint_net({"type": "KeypointResnet"})) is KeypointResnet


def test_legacy_torch_serialization_with_yacs_config_loads(tmp_path, monkeypatch, v4_path, sample_input):
    """Checkpoints written by torch < 1.6 (non-zip) also go through the restricted unpickler."""
    import sys
    import types

    class CfgNode(dict):  # pickled under yacs' name, like the released checkpoints' config
        pass

    fake_yacs = types.ModuleType("yacs.config")
    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    fake_yacs.CfgNode = CfgNode
    monkeypatch.setitem(sys.modules, "yacs", types.ModuleType("yacs"))
    monkeypatch.setitem(sys.modules, "yacs.config", fake_yacs)
    params = CfgNode(use_color=True, do_upsample=True, do_cross=True)
    config = CfgNode(model=CfgNode(params=params))
    path = tmp_path / "legacy.ckpt"
    state_dict = read_checkpoint(v4_path).state_dict
    torch.save({"state_dict": state_dict, "config": config}, path, _use_new_zipfile_serialization=False)
    monkeypatch.delitem(sys.modules, "yacs.config")
    monkeypatch.delitem(sys.modules, "yacs")
    assert not zipfile.is_zipfile(path)
    loaded = load_keypoint_net(path)
    for expected, actual in zip(
        outputs(load_keypoint_net(v4_path), sample_input), outputs(loaded, sample_input), strict=True
    ):
        assert torch.equal(expected, actual)

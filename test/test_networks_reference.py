"""The networks loaded through load_keypoint_net reproduce the original KP2D code's outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kp2d_model.checkpoint import load_keypoint_net
from kp2d_model.detector import fuse_batchnorm
from kp2d_model.image import image_to_tensor
from kp2d_model.networks import InlierNet, KeypointNet, KeypointResnet

TOLERANCE = 1e-4
CASES = [(version, size) for version in ("v0", "v4") for size in ("320x240", "640x480")]


@pytest.fixture(scope="module")
def reference_outputs(reference_dir):
    return dict(np.load(reference_dir / "inference_reference.npz"))


@pytest.fixture(scope="module")
def loaded_nets(reference_dir):
    return {version: load_keypoint_net(reference_dir / f"{version}_reference.ckpt") for version in ("v0", "v4")}


def max_abs_difference(actual: torch.Tensor, expected: np.ndarray) -> float:
    assert tuple(actual.shape) == expected.shape
    return float(np.abs(actual.numpy().astype(np.float64) - expected).max())


@pytest.mark.parametrize(("version", "size"), CASES)
def test_loaded_checkpoint_reproduces_reference_outputs(loaded_nets, reference_outputs, version, size):
    prefix = f"{version}_{size}"
    net = loaded_nets[version]
    assert not net.training
    with torch.inference_mode():
        score, coord, desc = net(torch.from_numpy(reference_outputs[f"{prefix}_input"]))
    for name, actual in (("score", score), ("coord", coord), ("desc", desc)):
        assert max_abs_difference(actual, reference_outputs[f"{prefix}_{name}"]) < TOLERANCE, name


@pytest.mark.parametrize(("version", "size"), CASES)
def test_batchnorm_folded_inference_net_reproduces_reference_outputs(loaded_nets, reference_outputs, version, size):
    prefix = f"{version}_{size}"
    fused = fuse_batchnorm(loaded_nets[version])
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in fused.modules())
    x = torch.from_numpy(reference_outputs[f"{prefix}_input"]).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        score, coord, desc = fused.to(memory_format=torch.channels_last)(x)
    for name, actual in (("score", score), ("coord", coord), ("desc", desc)):
        assert max_abs_difference(actual, reference_outputs[f"{prefix}_{name}"]) < TOLERANCE, name


def test_batchnorm_folding_handles_keypoint_resnet():
    torch.manual_seed(0)
    net = KeypointResnet()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # non-trivial running statistics
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    net.eval()
    x = torch.randn(1, 3, 64, 96) * 0.1
    with torch.inference_mode():
        expected, actual = net(x), fuse_batchnorm(net)(x)
    for name, e, a in zip(("score", "coord", "desc"), expected, actual, strict=True):
        assert float((e - a).abs().max()) < TOLERANCE, name


@pytest.mark.parametrize(("version", "size"), CASES)
def test_image_to_tensor_matches_reference_input(reference_outputs, version, size):
    prefix = f"{version}_{size}"
    tensor = image_to_tensor(reference_outputs[f"{prefix}_image_bgr"])
    assert max_abs_difference(tensor, reference_outputs[f"{prefix}_input"]) < 1e-6


def test_released_configs_select_the_right_variant(loaded_nets):
    v0, v4 = loaded_nets["v0"], loaded_nets["v4"]
    assert isinstance(v0, KeypointNet) and isinstance(v4, KeypointNet)
    assert (v0.do_upsample, v0.do_cross) == (False, False)
    assert (v4.do_upsample, v4.do_cross) == (True, True)


def test_keypoint_net_state_dict_size_matches_original():
    net = KeypointNet()
    assert len(net.state_dict()) == 84
    assert sum(p.numel() for p in net.parameters()) == 5_312_227


def test_keypoint_resnet_state_dict_layout_matches_original():
    net = KeypointResnet()
    keys = list(net.state_dict())
    assert sum(p.numel() for p in net.parameters()) == 17_451_243
    assert {"encoderK.rn.fc.weight", "encoderK.rn.fc.bias", "encoderK.rn.conv1.weight"} <= set(keys)
    assert all(key.startswith(("encoderK.rn.", "decoderK.")) for key in keys)
    assert tuple(net.state_dict()["encoderK.rn.fc.weight"].shape) == (1000, 512)
    for head in ("scoreconv", "locconv", "featconv"):
        assert {f"decoderK.{head}.0.weight", f"decoderK.{head}.1.running_var", f"decoderK.{head}.4.weight"} <= set(keys)


def test_keypoint_resnet_eval_forward_gives_64_dim_descriptors():
    net = KeypointResnet().eval()
    with torch.inference_mode():
        score, coord, desc = net(torch.zeros(1, 3, 256, 320))
    assert tuple(score.shape) == (1, 1, 32, 40)
    assert tuple(coord.shape) == (1, 2, 32, 40)
    assert tuple(desc.shape) == (1, 64, 32, 40)
    assert torch.allclose(torch.linalg.vector_norm(desc, dim=1), torch.ones(1, 32, 40), atol=1e-5)


def test_inlier_net_state_dict_matches_reference_keys_and_shapes(reference_dir):
    reference = torch.load(reference_dir / "io_net_reference.pt", weights_only=True)
    ours = InlierNet().state_dict()
    assert list(ours) == list(reference)
    assert {key: tuple(value.shape) for key, value in ours.items()} == {
        key: tuple(value.shape) for key, value in reference.items()
    }
    assert sum(p.numel() for p in InlierNet().parameters()) == 135_169

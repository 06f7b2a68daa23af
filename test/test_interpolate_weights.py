"""scripts/interpolate_weights.py: blends a fine-tune with its base model, refuses two different networks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from kp2d_model.checkpoint import (
    build_keypoint_net,
    default_checkpoint_path,
    load_keypoint_net,
    read_checkpoint,
    save_keypoint_net,
)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "interpolate_weights.py"


def load_script():
    spec = importlib.util.spec_from_file_location("interpolate_weights", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def base_and_tuned(tmp_path_factory) -> tuple[Path, Path]:
    """The bundled model and a "fine-tune" of it: every float tensor moved by a seeded random step."""
    base_path = default_checkpoint_path()
    net = load_keypoint_net(base_path)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for value in net.state_dict().values():
            if value.is_floating_point():
                value.add_(0.01 * torch.randn(value.shape, generator=generator))
            else:
                value.add_(7)  # BatchNorm step counters: tells which file an integer tensor came from
    tuned_path = tmp_path_factory.mktemp("tuned") / "tuned.safetensors"
    save_keypoint_net(tuned_path, net, net.kp2d_model_config, {"what": "test fine-tune"})
    return base_path, tuned_path


def test_the_blend_is_the_stated_mix_of_the_two_weights(base_and_tuned, tmp_path):
    script = load_script()
    base_path, tuned_path = base_and_tuned
    out = tmp_path / "blend.safetensors"
    assert script.main([str(tuned_path), "--alpha", "0.25", "--out", str(out)]) == 0

    base, tuned, blend = (read_checkpoint(path).state_dict for path in (base_path, tuned_path, out))
    assert blend.keys() == base.keys()
    for key, value in blend.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.75 * base[key] + 0.25 * tuned[key], rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(value, base[key]), key  # integer tensors from the larger share: the base
    provenance = read_checkpoint(out).provenance["interpolated"]
    assert provenance["alpha"] == 0.25 and provenance["tuned"] == str(tuned_path)
    assert provenance["tuned_provenance"] == {"what": "test fine-tune"}
    assert provenance["tuned_config"] == {} and provenance["tuned_step"] is None  # not a trainer checkpoint


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_the_ends_of_the_range_reproduce_each_input_exactly(base_and_tuned, tmp_path, alpha):
    script = load_script()
    base_path, tuned_path = base_and_tuned
    out = tmp_path / "blend.safetensors"
    assert script.main([str(tuned_path), "--base", str(base_path), "--alpha", str(alpha), "--out", str(out)]) == 0
    expected = read_checkpoint(tuned_path if alpha == 1.0 else base_path).state_dict
    blend = read_checkpoint(out).state_dict
    assert all(torch.equal(blend[key], expected[key]) for key in expected)


def test_two_different_networks_are_refused_naming_the_file(base_and_tuned, tmp_path, capsys):
    script = load_script()
    base_path, _ = base_and_tuned
    config = dict(read_checkpoint(base_path).model_config, use_color=False)
    other_path = tmp_path / "grey.safetensors"
    save_keypoint_net(other_path, build_keypoint_net(config), config, {})
    out = tmp_path / "blend.safetensors"
    assert script.main([str(other_path), "--alpha", "0.5", "--out", str(out)]) == 2
    assert f"{other_path} holds another network" in capsys.readouterr().err
    assert not out.exists()


def test_an_alpha_outside_zero_to_one_is_refused(base_and_tuned, tmp_path, capsys):
    script = load_script()
    _, tuned_path = base_and_tuned
    assert script.main([str(tuned_path), "--alpha", "1.5", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "--alpha must be in [0, 1]" in capsys.readouterr().err


def test_an_unwritable_output_is_one_line_naming_it(base_and_tuned, tmp_path, capsys):
    script = load_script()
    _, tuned_path = base_and_tuned
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the output's folder should be")
    out = blocker / "blend.safetensors"
    assert script.main([str(tuned_path), "--alpha", "0.5", "--out", str(out)]) == 1
    assert f"cannot write {out}" in capsys.readouterr().err

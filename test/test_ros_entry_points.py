"""The installed ``ros2 run kp2d_ros <name>`` executables exist, use the venv's Python and start."""

from __future__ import annotations

import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest
from ros_helpers import INSTALL_BIN, REPO_ROOT, require_ros

pytestmark = pytest.mark.integration
require_ros()


@pytest.mark.parametrize(
    "name", ["detector", "camera_sim", "train", "evaluate", "track_bench", "stereo_detector", "multi_detector"]
)
def test_executable_is_installed_for_ros2_run_with_the_venv_python(name):
    path = INSTALL_BIN / name
    assert path.is_file(), f"{path} missing (colcon build of kp2d_ros)"
    shebang = path.read_text().splitlines()[0]
    assert Path(shebang[2:]).resolve() == Path(sys.executable).resolve() or shebang.startswith(
        f"#!{REPO_ROOT / '.venv' / 'bin' / 'python'}"
    ), shebang


def test_ros2_run_sees_each_tool_once():
    """lib/kp2d_ros holds the ROS executables only (the kp2d-* commands are pip's, in the environment's bin/)."""
    names = sorted(path.name for path in INSTALL_BIN.iterdir())
    expected = ["camera_sim", "demo", "detector", "evaluate", "extract", "multi_detector", "stereo_detector"]
    assert names == [*expected, "track_bench", "train"], names


@pytest.mark.parametrize(("name", "usage"), [("train", "usage:"), ("evaluate", "usage:"), ("track_bench", "usage:")])
def test_train_and_evaluate_forward_to_the_model_library(name, usage):
    result = subprocess.run(
        [str(INSTALL_BIN / name), "--help", "--ros-args", "-r", "__ns:=/x"],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert usage in result.stdout.lower()
    module = {
        "train": "kp2d_model.training.cli",
        "evaluate": "kp2d_model.evaluation.cli",
        "track_bench": "kp2d_model.track_bench.cli",
    }[name]
    parser = import_module(module).build_parser()
    options = [option for action in parser._actions for option in action.option_strings]
    assert options and all(option in result.stdout for option in options), "the library's own --help"


def test_track_bench_runs_kp2d_at_the_node_defaults():
    """The benchmark's kp2d front-end claims the node's defaults: contrast and matching parameters."""
    from kp2d_model.track_bench.frontends import NODE_CONTRAST, MatchingSettings
    from kp2d_ros.detector_node import PARAMETERS

    assert NODE_CONTRAST == PARAMETERS["contrast"][0]
    settings = MatchingSettings()
    assert settings.top_k == PARAMETERS["top_k"][0]
    assert settings.mutual == PARAMETERS["matching.mutual"][0]
    assert settings.geometry == PARAMETERS["matching.geometry"][0]
    assert settings.geometry_threshold == PARAMETERS["matching.geometry_threshold"][0]
    assert settings.ratio == PARAMETERS["matching.ratio"][0]
    assert settings.max_distance == PARAMETERS["matching.max_distance"][0]

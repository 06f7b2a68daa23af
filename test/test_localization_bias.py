"""scripts/localization_bias.py: tells a coordinate offset (a convention bug) from localization noise."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from kp2d_model.evaluation.methods import get_method
from kp2d_model.evaluation.synthetic import generate_benchmark, photos_in_folder
from kp2d_model.photos import SKIMAGE_DATA_DIR

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "localization_bias.py"
OFFSET_PX = np.array([1.0, -0.5])


def load_script():
    spec = importlib.util.spec_from_file_location("localization_bias", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ShiftedMethod:
    """A real method whose keypoints are all moved by ``OFFSET_PX``: what a pixel-convention bug looks like."""

    def __init__(self, method) -> None:
        self.method, self.norm, self.name = method, method.norm, f"{method.name}+offset"

    def __call__(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        points, descriptors = self.method(image_bgr)
        points = points.copy()
        points[:, :2] += OFFSET_PX
        return points, descriptors


@pytest.fixture(scope="module")
def viewpoint_benchmark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    photos = tmp_path_factory.mktemp("photos")
    shutil.copy(SKIMAGE_DATA_DIR / "astronaut.png", photos / "astronaut.png")
    out = tmp_path_factory.mktemp("hpatches")
    generate_benchmark(photos_in_folder(photos), out, seed=3, out_size=(640, 480), kinds="v")
    return out


def test_a_constant_keypoint_offset_is_found_and_explains_the_extra_error(viewpoint_benchmark: Path) -> None:
    script = load_script()
    sift = get_method("sift")
    plain = script.residual_summary(sift, str(viewpoint_benchmark), (320, 240), 300)
    shifted = script.residual_summary(ShiftedMethod(sift), str(viewpoint_benchmark), (320, 240), 300)

    # SIFT's own fitted offset is small (the evaluation's corner-convention rescaling of H is worth ~0.1 px here);
    # the injected offset comes on top of it.
    assert np.allclose(plain["constant_offset_px"], 0.0, atol=0.2)
    found = np.subtract(shifted["constant_offset_px"], plain["constant_offset_px"])
    assert np.allclose(found, OFFSET_PX, atol=0.1), found
    assert shifted["mean_pair_bias_px"] > plain["mean_pair_bias_px"] + 0.1
    assert shifted["rms_after_constant_offset_px"] == pytest.approx(plain["rms_px"], abs=0.05)

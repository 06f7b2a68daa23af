"""The detector on CUDA: fp32 equals the CPU reference, fp16 keeps its keypoints, auto says what it chose.

The GPU tests skip on machines without CUDA (CI); ``benchmarks/gpu_check.sh`` runs them on a lent GPU. They use
the bundled default model, so they need no reference fixtures there.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from kp2d_model.detector import KeypointDetector
from kp2d_model.engines import Precision, cudnn_settings

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none on this machine")


@pytest.fixture(scope="module")
def photo_bgr() -> np.ndarray:
    """A held-out photo (skimage's astronaut) at 640x480, BGR."""
    rgb = cv2.resize(skimage.data.astronaut(), (640, 480), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb[:, :, ::-1])


@pytest.fixture(scope="module")
def cpu_fp32(photo_bgr):
    return KeypointDetector(device="cpu", top_k=1000, precision="fp32")(photo_bgr).numpy()


def nearest(found: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``found``'s (N, 2) points: the distance (pixels) to, and index of, the nearest reference point."""
    distance = torch.cdist(torch.from_numpy(found).double(), torch.from_numpy(reference).double())
    values, indices = distance.min(dim=1)
    return values.numpy(), indices.numpy()


def test_cudnn_settings_keep_fp32_ieee_and_restore_the_flags() -> None:
    before = torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark
    with cudnn_settings(torch.device("cuda"), Precision.FP32):
        assert torch.backends.cudnn.allow_tf32 is False
        assert torch.backends.cudnn.benchmark is before[1]  # the caller's choice (the node turns it on)
        if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision"):
            assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark) == before
    with cudnn_settings(torch.device("cpu"), Precision.FP32):
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark) == before


@needs_cuda
def test_cuda_fp32_detector_equals_the_cpu_reference(photo_bgr, cpu_fp32) -> None:
    found = KeypointDetector(device="cuda", top_k=1000, precision="fp32", backend="torch")(photo_bgr).numpy()
    distance, index = nearest(found.keypoints, cpu_fp32.keypoints)
    close = distance <= 2e-3  # pixels: float32 rounding, not TF32's ~1e-2
    assert close.mean() >= 0.99, f"only {close.mean():.3f} of the CUDA keypoints within 2e-3 px of the CPU's"
    np.testing.assert_allclose(found.scores[close], cpu_fp32.scores[index[close]], atol=1e-4)
    cosine = (found.descriptors[close] * cpu_fp32.descriptors[index[close]]).sum(axis=1)
    assert cosine.min() >= 0.9999


@needs_cuda
def test_cuda_fp16_keeps_nine_in_ten_keypoints_within_one_pixel(photo_bgr, cpu_fp32) -> None:
    found = KeypointDetector(device="cuda", top_k=1000, precision="fp16", backend="torch")(photo_bgr).numpy()
    distance, _ = nearest(found.keypoints, cpu_fp32.keypoints)
    assert (distance <= 1.0).mean() >= 0.9
    assert found.keypoints.dtype == np.float32 and found.descriptors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(found.descriptors, axis=1), 1.0, atol=1e-5)


@needs_cuda
def test_cuda_auto_says_what_it_chose(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="kp2d_model"):
        detector = KeypointDetector(device="cuda", top_k=1000, precision="auto")
    assert detector.engine.precision in (Precision.FP16, Precision.FP32)
    assert any("cuda" in record.getMessage().lower() for record in caplog.records)

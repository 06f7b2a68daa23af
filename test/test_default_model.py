"""The bundled default model: it loads, its provenance is complete, and its matches are geometrically right."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from kp2d_model import KeypointDetector, match_descriptors
from kp2d_model.checkpoint import default_checkpoint_path, read_checkpoint

# Measured at this pair (docs/default_model.md): 0.97 of 293 mutual matches for the shipped model (8903 CPU
# training steps; 0.30 for an early 600-step model), 0.24 for the random weights of the reference fixture,
# whose keypoints sit near cell centres and match by chance. The bound leaves room for retraining noise.
MIN_MUTUAL_MATCH_PRECISION = 0.85
MATCH_TOLERANCE_PX = 3.0


@pytest.fixture(scope="module")
def detector() -> KeypointDetector:
    return KeypointDetector(device="cpu", top_k=500)


def test_default_model_file_is_shipped_and_small() -> None:
    path = default_checkpoint_path()
    assert path.is_file(), f"the default model is missing at {path}"
    assert path.stat().st_size <= 25 * 1024 * 1024


def test_default_model_metadata_names_config_data_steps_and_commit() -> None:
    loaded = read_checkpoint(default_checkpoint_path())
    assert loaded.format == "kp2d-keypoint-net-v1"
    assert loaded.model_config["type"] == "KeypointNet"
    provenance = loaded.provenance
    for key in ("trained_with", "command", "code_commit", "step", "config", "data", "final_loss"):
        assert provenance.get(key) not in (None, "", {}), f"provenance lacks {key!r}"
    assert provenance["step"] > 0
    assert len(provenance["data"]["photos"]) > 10
    assert all(len(photo["sha256"]) == 64 for photo in provenance["data"]["photos"])
    assert np.isfinite(provenance["final_loss"]["total"])


def _warped_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A held-out photo (never trained on) and its view through a known homography (image a -> image b)."""
    image_a = cv2.cvtColor(skimage.data.coffee(), cv2.COLOR_RGB2BGR)
    height, width = image_a.shape[:2]
    corners = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    moved = corners + np.float32([[25, 10], [-20, 18], [-12, -22], [15, -8]])
    homography = cv2.getPerspectiveTransform(corners, moved)
    image_b = cv2.warpPerspective(image_a, homography, (width, height), flags=cv2.INTER_LINEAR)
    return image_a, image_b, homography


def test_default_model_mutual_matches_agree_with_known_homography(detector: KeypointDetector) -> None:
    image_a, image_b, homography = _warped_pair()
    det_a, det_b = (d.numpy() for d in detector([image_a, image_b]))
    matches = match_descriptors(det_a.descriptors, det_b.descriptors, mutual=True)
    assert len(matches.index_a) >= 50
    points_a = det_a.keypoints[matches.index_a].reshape(-1, 1, 2).astype(np.float64)
    projected = cv2.perspectiveTransform(points_a, homography).reshape(-1, 2)
    errors = np.linalg.norm(projected - det_b.keypoints[matches.index_b], axis=1)
    # Only matches whose point is visible in image b can be right.
    height, width = image_b.shape[:2]
    visible = (projected[:, 0] >= 0) & (projected[:, 0] < width) & (projected[:, 1] >= 0) & (projected[:, 1] < height)
    precision = float(np.mean(errors[visible] <= MATCH_TOLERANCE_PX))
    assert precision >= MIN_MUTUAL_MATCH_PRECISION, f"mutual-match precision {precision:.2f}"

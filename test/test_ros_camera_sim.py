"""camera_sim as a process: a bounded number of frames with consistent ground truth, and folder playback."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from ros_helpers import NodeProcess, RosTestNode, require_ros, stamp_seconds, unique_namespace

pytestmark = pytest.mark.integration
require_ros()

from rclpy.qos import DurabilityPolicy, QoSProfile  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from kp2d_ros.conversions import image_to_array  # noqa: E402
from kp2d_ros_msgs.msg import GroundTruthHomography  # noqa: E402


@pytest.fixture
def ros():
    node = RosTestNode()
    yield node
    node.close()


def run_sim(ros: RosTestNode, tmp_path, params: list[str], wait_images: int):
    namespace = unique_namespace("sim")
    images = ros.subscribe(Image, f"{namespace}/image_raw", QoSProfile(depth=50))
    infos = ros.subscribe(CameraInfo, f"{namespace}/camera_info", QoSProfile(depth=50))
    truths = ros.subscribe(
        GroundTruthHomography, f"{namespace}/ground_truth",
        QoSProfile(depth=50, durability=DurabilityPolicy.TRANSIENT_LOCAL),
    )  # fmt: skip
    args = ["-r", f"__ns:={namespace}", "-p", "image_qos:=reliable", "-p", "wait_for_subscribers:=1", *params]
    sim = NodeProcess("camera_sim", args, tmp_path)
    try:
        assert sim.wait(timeout=60) == 0, sim.log()
    finally:
        sim.stop()
    images.wait_count(wait_images, 10.0, "images")
    return images.snapshot(), infos.snapshot(), truths.snapshot(), sim.log()


def test_camera_sim_publishes_num_frames_with_ground_truth_then_exits(ros, tmp_path):
    params = ["-p", "num_frames:=5", "-p", "rate:=20.0", "-p", "width:=160", "-p", "height:=120",
              "-p", "encoding:=rgb8", "-p", "speed:=5.0"]  # fmt: skip
    images, infos, truths, log = run_sim(ros, tmp_path, params, 5)
    assert len(images) == 5 and "published 5 frames" in log
    assert all((m.width, m.height, m.encoding) == (160, 120, "rgb8") for m in images)
    assert [m.header.stamp for m in infos] == [m.header.stamp for m in images]
    assert [m.header.stamp for m in truths] == [m.header.stamp for m in images]
    assert stamp_seconds(truths[0].previous_stamp) == 0.0
    np.testing.assert_allclose(np.reshape(truths[0].previous_to_current, (3, 3)), np.eye(3))
    frames = [cv2.cvtColor(image_to_array(m).pixels, cv2.COLOR_RGB2BGR) for m in images]
    inner = (slice(15, -15), slice(15, -15))
    for i in range(1, 5):
        assert truths[i].previous_stamp == truths[i - 1].header.stamp
        homography = np.reshape(truths[i].previous_to_current, (3, 3))
        composed = np.reshape(truths[i].reference_to_current, (3, 3)) @ np.linalg.inv(
            np.reshape(truths[i - 1].reference_to_current, (3, 3))
        )
        np.testing.assert_allclose(homography, composed / composed[2, 2], atol=1e-9)
        warped = cv2.warpPerspective(frames[i - 1], homography, (160, 120))
        error = np.abs(warped[inner].astype(float) - frames[i][inner]).mean()
        moved = np.abs(frames[i - 1][inner].astype(float) - frames[i][inner]).mean()
        assert error < 5.0 and moved > 2 * error, f"frame {i}: {error=:.2f} {moved=:.2f}"


def test_camera_sim_plays_a_folder_of_images_without_ground_truth(ros, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(1)
    written = [rng.integers(0, 256, (30, 40, 3), dtype=np.uint8) for _ in range(3)]
    for i, image in enumerate(written):
        cv2.imwrite(str(folder / f"{i:03d}.png"), image)
    params = ["-p", f"source:={folder}", "-p", "loop:=false", "-p", "rate:=20.0"]
    images, _, truths, log = run_sim(ros, tmp_path, params, 3)
    assert len(images) == 3 and not truths and "end of" in log
    for message, image in zip(images, written, strict=True):
        np.testing.assert_array_equal(image_to_array(message).pixels, image)

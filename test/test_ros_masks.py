"""The detector node's ``mask`` and ``roi`` parameters: a real detector process, camera_sim frames over real DDS.
No published keypoint lies where the mask is 0 or outside the roi; the node still fills up to top_k from the
allowed area; a frame of another size than the mask is refused with a warning; a bad mask file stops start-up."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from ros_helpers import NodeProcess, require_ros, sensor_qos, unique_namespace

pytestmark = pytest.mark.integration
require_ros()

from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from kp2d_ros.camera_sim import image_message  # noqa: E402
from kp2d_ros.messages import field_array  # noqa: E402
from kp2d_ros_msgs.msg import Keypoints  # noqa: E402

WIDTH, HEIGHT = 320, 240
TOP_K = 150
ROI = (150, 40, 120, 100)  # x, y, w, h
PROCESS_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def mask(tmp_path_factory) -> tuple[np.ndarray, str]:
    """The left third (the robot's body) and a bottom-right block (a lens-rim corner) are ignored."""
    pixels = np.full((HEIGHT, WIDTH), 255, np.uint8)
    pixels[:, :100] = 0
    pixels[180:, 220:] = 0
    path = tmp_path_factory.mktemp("mask") / "mask.png"
    cv2.imwrite(str(path), pixels)
    return pixels, str(path)


@pytest.fixture(scope="module")
def detector(model_args, mask, ros, tmp_path_factory):
    namespace = unique_namespace("mask")
    process = NodeProcess(
        "detector",
        ["-r", f"__ns:={namespace}", *model_args, "-p", "device:=cpu", "-p", f"top_k:={TOP_K}",
         "-p", f"mask:={mask[1]}", "-p", "publish_descriptors:=false", "-p", "debug_image:=false"],
        tmp_path_factory.mktemp("detector"),
    )  # fmt: skip
    try:
        ros.wait_for_publishers(f"{namespace}/kp2d_detector/keypoints", timeout=120.0)
        keypoints = ros.subscribe(Keypoints, f"{namespace}/kp2d_detector/keypoints")
        yield namespace, process, keypoints
    finally:
        assert process.stop() == 0, process.log()[-3000:]


def allowed_at(points: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Whether each keypoint's pixel (rounded, as the pipeline looks it up) is allowed."""
    x = np.clip(np.round(points[:, 0]).astype(int), 0, allowed.shape[1] - 1)
    y = np.clip(np.round(points[:, 1]).astype(int), 0, allowed.shape[0] - 1)
    return allowed[y, x]


def points_of(msg: Keypoints) -> np.ndarray:
    return np.stack([field_array(msg.x, np.float32), field_array(msg.y, np.float32)], axis=1)


def run_camera_sim(namespace: str, log_dir, frames: int = 4) -> None:
    sim = NodeProcess(
        "camera_sim",
        ["-r", f"__ns:={namespace}", "-r", "image_raw:=image", "-p", f"width:={WIDTH}", "-p", f"height:={HEIGHT}",
         "-p", "rate:=2.0", "-p", f"num_frames:={frames}", "-p", "speed:=5.0", "-p", "wait_for_subscribers:=1"],
        log_dir,
    )  # fmt: skip
    try:
        assert sim.wait(timeout=120.0) == 0, sim.log()
    finally:
        sim.stop()


def test_no_keypoint_is_published_where_the_mask_is_zero(detector, mask, tmp_path):
    namespace, process, keypoints = detector
    start = len(keypoints.snapshot())
    run_camera_sim(namespace, tmp_path)
    messages = keypoints.wait_count(start + 2, PROCESS_TIMEOUT, "keypoints of camera_sim frames")[start:]
    allowed = mask[0] != 0
    for msg in messages:
        points = points_of(msg)
        # Filtered before the top-k truncation: still TOP_K keypoints, all in the allowed area.
        assert len(points) == TOP_K
        assert allowed_at(points, allowed).all(), f"{np.count_nonzero(~allowed_at(points, allowed))} masked points"
    assert "mask " in process.log() and "ignored" in process.log()


def test_a_runtime_roi_keeps_keypoints_inside_it_and_an_empty_roi_turns_it_off(detector, mask, ros, tmp_path):
    namespace, process, keypoints = detector
    name = f"{namespace}/kp2d_detector"
    [result] = ros.set_parameters(name, {"roi": list(ROI)})
    assert result.successful, result.reason
    try:
        start = len(keypoints.snapshot())
        run_camera_sim(namespace, tmp_path)
        messages = keypoints.wait_count(start + 2, PROCESS_TIMEOUT, "keypoints with a roi")[start:]
        x, y, w, h = ROI
        inside = np.zeros((HEIGHT, WIDTH), bool)
        inside[y : y + h, x : x + w] = True
        for msg in messages:
            points = points_of(msg)
            assert 0 < len(points) <= TOP_K
            assert allowed_at(points, inside & (mask[0] != 0)).all()

        [result] = ros.set_parameters(name, {"roi": [10, 10, 0, 5]})
        assert not result.successful and "roi must be" in result.reason
    finally:
        # An empty integer array needs its type spelled out (an untyped [] is a byte array in ROS 2).
        empty = Parameter("roi", Parameter.Type.INTEGER_ARRAY, []).to_parameter_msg()
        request = SetParameters.Request(parameters=[empty])
        [result] = ros.call(SetParameters, f"{name}/set_parameters", request).results
        assert result.successful, result.reason
    assert ros.get_parameters(name, ["roi"]) == [[]]


def test_a_frame_of_another_size_than_the_mask_is_refused_with_a_warning(detector, ros):
    namespace, process, keypoints = detector
    publisher = ros.publisher(Image, f"{namespace}/image", sensor_qos())
    ros.wait_for_subscribers(publisher)
    small = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    for second in range(1, 6):
        header = Header(frame_id="cam")
        header.stamp.sec = 2_000_000_000 + second  # after camera_sim's wall-clock stamps
        publisher.publish(image_message(small, "bgr8", 3, header))
        try:
            process.wait_for_log("mask is 320 x 240 pixels but the image is 160 x 120", timeout=10.0)
            break
        except AssertionError:
            continue
    log = process.wait_for_log("frame skipped: mask is 320 x 240 pixels but the image is 160 x 120", timeout=1.0)
    assert "(parameter 'mask')" in log
    assert not any(m.image_width == 160 for m in keypoints.snapshot()), "no keypoints for the refused frame"


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), (b"not a png", "not an image OpenCV can read"), ("zeros", "all 0")],
)
def test_an_unusable_mask_file_stops_start_up_with_a_clear_error(model_args, tmp_path, content, message):
    path = tmp_path / "mask.png"
    if content == "zeros":
        cv2.imwrite(str(path), np.zeros((HEIGHT, WIDTH), np.uint8))
    elif content is not None:
        path.write_bytes(content)
    process = NodeProcess(
        "detector", ["-r", f"__ns:={unique_namespace('badmask')}", *model_args, "-p", f"mask:={path}"], tmp_path
    )
    try:
        assert process.wait(timeout=120.0) == 2
    finally:
        process.stop()
    assert f"cannot start: mask file '{path}' " in process.log() and message in process.log()
    assert "Traceback" not in process.log()

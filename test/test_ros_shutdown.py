"""Ctrl-C while the detector is busy: the node stops quietly (no 'frame skipped' warning about a publisher whose
context is gone, no 'Failed to publish log message to rosout') and exits 0. Real node process, real DDS."""

from __future__ import annotations

import time

import numpy as np
import pytest
from ros_helpers import NodeProcess, RosTestNode, require_ros, sensor_qos, stamp, unique_namespace

pytestmark = pytest.mark.integration
require_ros()

from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from kp2d_ros.camera_sim import image_message  # noqa: E402
from kp2d_ros_msgs.msg import Keypoints  # noqa: E402


def test_ctrl_c_while_frames_are_processed_stops_quietly_with_exit_0(model_args, tmp_path):
    namespace = unique_namespace("sigint")
    process = NodeProcess("detector", ["-r", f"__ns:={namespace}", *model_args, "-p", "device:=cpu"], tmp_path)
    ros = RosTestNode()
    try:
        keypoints = ros.subscribe(Keypoints, f"{namespace}/kp2d_detector/keypoints")
        publisher = ros.publisher(Image, f"{namespace}/image", sensor_qos())
        ros.wait_for_subscribers(publisher, timeout=120)
        image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
        deadline = time.monotonic() + 120
        served_before = 0
        # Frames keep coming, so the worker is mid-frame most of the time; Ctrl-C right after the second output,
        # while the next frame (already waiting) is being processed.
        while time.monotonic() < deadline:
            seconds = time.monotonic()
            publisher.publish(image_message(image, "bgr8", 3, Header(stamp=stamp(seconds), frame_id="cam")))
            served = len(keypoints.snapshot())
            if served >= 2 and served > served_before:
                break
            served_before = served
            time.sleep(0.05)
        assert len(keypoints.snapshot()) >= 2, f"no output from the detector:\n{process.log()[-3000:]}"
        code = process.stop()
    finally:
        process.stop()
        ros.close()
    log = process.log()
    assert code == 0, log[-3000:]
    for noise in ("frame skipped", "Failed to publish", "context is invalid", "Traceback"):
        assert noise not in log, f"{noise!r} in the output after Ctrl-C:\n{log[-3000:]}"

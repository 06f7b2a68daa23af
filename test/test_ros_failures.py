"""The detector survives failures: a model error on one frame (in-process node, real rclpy and DDS, with a
real detector that fails on its first frames) and refuses a bad start-up configuration with a clear reason."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from ros_helpers import (
    DEFAULT_MODEL,
    NodeProcess,
    RosTestNode,
    require_ros,
    sensor_qos,
    stamp,
    unique_namespace,
)

pytestmark = pytest.mark.integration
require_ros()

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from kp2d_model import KeypointDetector  # noqa: E402
from kp2d_ros.camera_sim import image_message  # noqa: E402
from kp2d_ros.detector_node import DetectorNode  # noqa: E402
from kp2d_ros_msgs.msg import Keypoints  # noqa: E402


class FailingFirstDetector(KeypointDetector):
    """A real KeypointDetector whose first calls raise the given errors (a CUDA OOM, a library error)."""

    def __init__(self, failures: list[Exception], **kwargs):
        super().__init__(**kwargs)
        self.failures = list(failures)

    def __call__(self, images, channel_order="bgr", **overrides):
        if self.failures:
            raise self.failures.pop(0)
        return super().__call__(images, channel_order, **overrides)


def test_a_model_failure_on_one_frame_is_logged_and_later_frames_are_served(reference_dir, capfd):
    failures = [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB"), RuntimeError("cuDNN boom")]
    detector = FailingFirstDetector(failures, checkpoint=reference_dir / "v4_reference.ckpt", device="cpu", top_k=100)
    namespace = unique_namespace("fail")
    ros = RosTestNode()
    node = DetectorNode(detector=detector, context=ros.context, namespace=namespace)
    executor = SingleThreadedExecutor(context=ros.context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        keypoints = ros.subscribe(Keypoints, f"{namespace}/kp2d_detector/keypoints")
        diagnostics = ros.subscribe(DiagnosticArray, "/diagnostics")
        publisher = ros.publisher(Image, f"{namespace}/image", sensor_qos())
        ros.wait_for_subscribers(publisher)
        image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
        served = None
        for second in range(1, 30):  # the first two processed frames fail; some may also be replaced (dropped)
            header = Header(stamp=stamp(float(second)), frame_id="cam")
            publisher.publish(image_message(image, "bgr8", 3, header))
            time.sleep(0.3)
            served = next((m for m in keypoints.snapshot() if m.header.stamp.sec > 0), None)
            if served is not None and not detector.failures:
                break
        assert served is not None and not detector.failures, "frames after the failures were served"
        assert len(served.x) > 0 and served.sequence >= 1

        def failed_count() -> int:
            return sum(
                int(v.value) for m in diagnostics.snapshot() for s in m.status if s.name.startswith(namespace)
                for v in s.values if v.key == "failed frames (model errors)"
            )  # fmt: skip

        deadline = time.monotonic() + 10
        while failed_count() < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert failed_count() == 2, "both failures counted in /diagnostics"
    finally:
        executor.shutdown(timeout_sec=2)
        node.destroy_node()
        ros.close()
    log = capfd.readouterr().err
    assert "out of memory on cpu" in log and "consider input_width/input_height" in log
    assert "processing failed: RuntimeError('cuDNN boom')" in log


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["-p", "model:=/nonexistent/model.ckpt"], "model file '/nonexistent/model.ckpt' does not exist"),
        (["-p", "matching.geometry:=affine"], "matching.geometry must be one of none, homography, fundamental"),
        (["-p", "top_k:=0"], "top_k"),
        (["-p", "precision:=fp8"], "precision must be one of fp32, bf16, fp16, int8, auto, got 'fp8'"),
        (["-p", "contrast:=equalize"], "contrast must be one of none, stretch, got 'equalize'"),
        (["-p", "device:=cpu", "-p", "backend:=tensorrt"], "backend tensorrt needs a CUDA device"),
        (["-p", "input_width:=320"], "input_width and input_height must both be 0"),
        (
            ["-p", "input_width:=320", "-p", "input_height:=240", "-p", "input_scale:=2.0"],
            "give input_width/input_height or input_scale, not both",
        ),
    ],
)
def test_bad_start_up_configuration_exits_with_the_reason(args, reason, tmp_path):
    process = NodeProcess("detector", args, tmp_path)
    try:
        assert process.wait(timeout=120) == 2, process.log()
    finally:
        process.stop()
    assert "cannot start" in process.log() and reason in process.log(), process.log()


@pytest.mark.skipif(DEFAULT_MODEL.is_file(), reason="the default model exists, so the node starts without a model")
def test_without_a_model_the_node_says_how_to_pass_one(tmp_path):
    process = NodeProcess("detector", [], tmp_path)
    try:
        assert process.wait(timeout=120) == 2, process.log()
    finally:
        process.stop()
    assert "-p model:=/path/to/model.ckpt" in process.log(), process.log()


def test_input_width_and_height_start_the_node_at_that_network_size(tmp_path):
    """input_width/input_height without input_scale (default 1.0) is a valid start-up, not 'not both'."""
    process = NodeProcess("detector", ["-p", "input_width:=320", "-p", "input_height:=240"], tmp_path)
    try:
        log = process.wait_for_log("ready:", timeout=120)
    finally:
        process.stop()
    assert "network input 320x240" in log and "not both" not in log, log

"""Large best-effort images from another process, and the node's frame-loss warning, over real DDS.

The camera is a separate process (``benchmarks/bench_transport.py publish``: best effort, depth 1, 640 x 480
bgr8, one CameraInfo per frame, stock middleware settings); the detector gets the environment the launch files
give it (:func:`kp2d_ros.transport.subscriber_environment`). Its network input is 160 x 120 (input_scale 0.25)
so that it keeps up with the camera's rate on a loaded 2-core machine: what is measured is the transport.

Transport loss is made deterministic by the camera process: it publishes the CameraInfo of every frame but
skips some images, which is what a frame lost on the way looks like to the node.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from ros_helpers import REPO_ROOT, NodeProcess, RosTestNode, require_ros, unique_namespace, wait_until

pytestmark = pytest.mark.integration
require_ros()

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402

from kp2d_ros.transport import SYSTEM_VARIABLES, subscriber_environment  # noqa: E402
from kp2d_ros_msgs.msg import Keypoints  # noqa: E402

BENCH = REPO_ROOT / "benchmarks" / "bench_transport.py"
WARNING = "frames lost in transport"
LOST_KEY = "frames lost in transport (sent by the camera, never received)"
STOCK_ENV = {k: v for k, v in os.environ.items() if k not in SYSTEM_VARIABLES}  # the camera: middleware defaults


class Detector:
    """The detector process with the shipped middleware configuration, its Keypoints and its diagnostics."""

    def __init__(self, ros: RosTestNode, model_args: list[str], use_camera_info: bool, log_dir, monkeypatch):
        self.namespace = unique_namespace("transport")
        self.use_camera_info = use_camera_info
        with monkeypatch.context() as env:  # only the node's process gets it (Fast DDS reads it at start-up)
            for name in SYSTEM_VARIABLES:
                env.delenv(name, raising=False)
            for name, value in subscriber_environment(environ={"ROS_DISTRO": os.environ.get("ROS_DISTRO", "")}).items():
                env.setenv(name, value)
            self.process = NodeProcess(
                "detector",
                ["-r", f"__ns:={self.namespace}", *model_args, "-p", "device:=cpu",
                 "-p", "input_scale:=0.25", "-p", "top_k:=100",
                 "-p", "publish_descriptors:=false", "-p", "debug_image:=false",
                 "-p", f"use_camera_info:={str(use_camera_info).lower()}", "-p", "camera_info_sync:=latest"],
                log_dir,
            )  # fmt: skip
        self.keypoints = ros.subscribe(Keypoints, f"{self.namespace}/kp2d_detector/keypoints")
        self.diagnostics = ros.subscribe(DiagnosticArray, "/diagnostics")
        ros.wait_for_publishers(f"{self.namespace}/kp2d_detector/keypoints", timeout=120.0)

    def camera(self, frames: int, rate: float, stamp0: float, skip: tuple[int, ...] = ()) -> None:
        """Run the camera process to the end: ``frames`` 640 x 480 bgr8 frames at ``rate`` Hz from ``stamp0`` s."""
        result = subprocess.run(
            [sys.executable, str(BENCH), "publish", "--namespace", self.namespace, "--size", "640x480",
             "--encoding", "bgr8", "--rate", str(rate), "--frames", str(frames), "--stamp0", str(stamp0),
             "--skip", ",".join(map(str, skip)), "--wait", "60",
             "--info-subscribers", "1" if self.use_camera_info else "0", "--linger", "2"],
            env=STOCK_ENV, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert result.returncode == 0, f"camera process failed:\n{result.stdout}\n{result.stderr[-2000:]}"

    def answered(self, stamp0: float, frames: int, rate: float) -> int:
        sent = {round((stamp0 + i / rate) * 1e3) for i in range(frames)}
        got = {round(m.header.stamp.sec * 1e3 + m.header.stamp.nanosec / 1e6) for m in self.keypoints.snapshot()}
        return len(sent & got)

    def statuses(self) -> list[dict[str, str]]:
        statuses = [status for msg in self.diagnostics.snapshot() for status in msg.status]
        return [{v.key: v.value for v in status.values} for status in statuses if self.namespace in status.name]

    def lost_reported(self) -> int:
        return sum(int(s[LOST_KEY]) for s in self.statuses() if s.get(LOST_KEY, "n/a") != "n/a")

    def settle(self) -> None:
        """Wait until the last CameraInfo is checked (1 s grace) and reported (diagnostics every 1 s)."""
        count = len(self.diagnostics.snapshot())
        time.sleep(2.5)
        wait_until(lambda: len(self.diagnostics.snapshot()) >= count + 3, 20, "three more diagnostics reports")

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture()
def detector_factory(ros, model_args, tmp_path, monkeypatch):
    started: list[Detector] = []

    def start(use_camera_info: bool) -> Detector:
        started.append(Detector(ros, model_args, use_camera_info, tmp_path, monkeypatch))
        return started[-1]

    yield start
    for detector in started:
        detector.stop()


def test_shipped_configuration_delivers_best_effort_640x480_from_another_process_and_reports_loss(detector_factory):
    detector = detector_factory(use_camera_info=True)
    # 1. Every frame sent: at least 80 % answered (measured 20 of 20 with the profile; without it, Fast DDS'
    #    default shared-memory path lost most 921 KB frames here: docs/ros.md), and no loss warning.
    frames, rate = 20, 2.0
    detector.camera(frames, rate, stamp0=1000.0)
    detector.settle()
    answered = detector.answered(1000.0, frames, rate)
    assert answered >= 0.8 * frames, f"{answered} of {frames} frames answered:\n{detector.process.log()[-3000:]}"
    assert WARNING not in detector.process.log()
    assert detector.lost_reported() == 0
    assert any(s.get("frame loss check") == "camera_info" for s in detector.statuses())

    # 2. The camera's CameraInfo for every frame, but 4 images not sent: warned, counted exactly.
    skip = (4, 5, 11, 16)
    detector.camera(20, 5.0, stamp0=2000.0, skip=skip)
    detector.settle()
    log = detector.process.log()
    assert WARNING in log and "docs/ros.md" in log and "camera_info" in log
    assert detector.lost_reported() == len(skip)


def test_loss_from_stamp_spacing_without_camera_info(detector_factory):
    detector = detector_factory(use_camera_info=False)
    detector.camera(30, 5.0, stamp0=1000.0)  # a complete stream: silent
    detector.settle()
    assert WARNING not in detector.process.log()
    assert detector.lost_reported() == 0
    assert any(s.get("frame loss check") == "stamp spacing" for s in detector.statuses())

    skip = (10, 11, 20)
    detector.camera(30, 5.0, stamp0=2000.0, skip=skip)  # the pause between the two streams is not loss
    detector.settle()
    log = detector.process.log()
    assert WARNING in log and "stamp spacing" in log
    assert detector.lost_reported() == len(skip)

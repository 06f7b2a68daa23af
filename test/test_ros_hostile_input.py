"""The detector node against hostile input over real DDS: image bombs refused before they cost memory (peak RSS
of the node process), and malformed or side-effect checkpoints refused at start with exit 2 and one reason."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from hostile_files import (
    RELEASED_CONFIG,
    global_op,
    jpeg_bomb,
    legacy_torch_file,
    nested_lists_pickle,
    set_attributes_op,
    torch_zip_from_pickle,
    unicode_op,
)
from ros_helpers import NodeProcess, RosTestNode, require_ros, sensor_qos, stamp, unique_namespace

pytestmark = pytest.mark.integration
require_ros()

from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from kp2d_model.checkpoint import read_checkpoint  # noqa: E402
from kp2d_ros.camera_sim import image_message  # noqa: E402
from kp2d_ros_msgs.msg import Keypoints  # noqa: E402

MEMORY_BUDGET_MB = 400


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def test_image_bombs_are_refused_before_they_cost_memory_and_the_node_goes_on(tmp_path):
    namespace = unique_namespace("bomb")
    process = NodeProcess(
        "detector",
        ["-r", f"__ns:={namespace}", "-p", "device:=cpu", "-p", "top_k:=100", "-p", "use_compressed:=true",
         "-p", "image_qos:=reliable", "-p", "max_image_pixels:=2000000", "-p", "debug_image:=false",
         "-p", "use_camera_info:=true", "-p", "camera_info_sync:=latest"],
        tmp_path,
    )  # fmt: skip
    ros = RosTestNode()
    try:
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        keypoints = ros.subscribe(Keypoints, f"{namespace}/kp2d_detector/keypoints")
        image_pub = ros.publisher(Image, f"{namespace}/image", qos)
        compressed_pub = ros.publisher(CompressedImage, f"{namespace}/image/compressed", qos)
        ros.wait_for_subscribers(image_pub, timeout=120)
        ros.wait_for_subscribers(compressed_pub, timeout=120)
        frame = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
        seconds = iter(range(1, 10_000))

        def publish_until(make, done, what: str) -> None:
            deadline = time.monotonic() + 60
            while not done():
                assert time.monotonic() < deadline, f"{what}:\n{process.log()[-3000:]}"
                make(Header(stamp=stamp(float(next(seconds))), frame_id="cam"))
                time.sleep(0.5)

        def served() -> int:
            return len(keypoints.snapshot())

        publish_until(lambda h: image_pub.publish(image_message(frame, "bgr8", 3, h)), served, "warm-up frame served")
        before = peak_rss_mb(process.process.pid)

        bomb = jpeg_bomb(16384, 16384)  # 629 bytes; decoding would take 805 MB
        publish_until(
            lambda h: compressed_pub.publish(CompressedImage(header=h, format="jpeg", data=bomb)),
            lambda: "exceeds" in process.log(), "JPEG bomb warning",
        )  # fmt: skip
        thin = Image(encoding="mono8", width=1_048_576, height=1, step=1_048_576, data=bytes(1_048_576))
        publish_until(
            lambda h: image_pub.publish(Image(header=h, encoding=thin.encoding, width=thin.width, height=1,
                                              step=thin.step, data=thin.data)),
            lambda: "for the network" in process.log(), "thin-image warning",
        )  # fmt: skip
        growth = peak_rss_mb(process.process.pid) - before
        assert growth < MEMORY_BUDGET_MB, f"peak RSS grew {growth:.0f} MB"

        count = served()
        publish_until(lambda h: image_pub.publish(image_message(frame, "bgr8", 3, h)), lambda: served() > count,
                      "a normal frame served after the bombs")  # fmt: skip

        # CameraInfo with NaN in K: a throttled warning, keypoints still published (no normalised coordinates).
        info_pub = ros.publisher(CameraInfo, f"{namespace}/camera_info", sensor_qos())
        ros.wait_for_subscribers(info_pub, timeout=60)
        info = CameraInfo(width=320, height=240, distortion_model="plumb_bob", d=[0.0] * 5,
                          k=[math.nan, 0.0, 160.0, 0.0, 300.0, 120.0, 0.0, 0.0, 1.0])  # fmt: skip
        warning = "camera_info has NaN or infinite values"

        def publish_frame_with_info(header: Header) -> None:
            info.header = header
            info_pub.publish(info)
            time.sleep(0.1)
            image_pub.publish(image_message(frame, "bgr8", 3, header))

        count = served()
        publish_until(publish_frame_with_info, lambda: warning in process.log() and served() > count + 2,
                      "NaN CameraInfo warning and frames served")  # fmt: skip
        assert process.log().count(warning) <= 2, "the warning is throttled"
        latest = keypoints.snapshot()[-1]
        assert len(latest.x) > 0 and len(latest.x_normalized) == 0
    finally:
        code = process.stop()
        ros.close()
    assert code == 0, process.log()[-3000:]
    assert "Traceback" not in process.log()


def _patch_writing_checkpoint(state_dict, target: Path) -> bytes:
    ops = (
        b"(" + unicode_op("module") + global_op("torch._utils", "_rebuild_parameter")
        + set_attributes_op({"__name__": str(target), "dump_patches": True})
        + unicode_op("evil.py") + unicode_op("lines\n") + b"tQ0"
    )  # fmt: skip
    return legacy_torch_file({"state_dict": state_dict, "config": RELEASED_CONFIG}, ops)


@pytest.mark.parametrize("kind", ["patch-writer", "nested-lists"])
def test_a_hostile_or_malformed_model_stops_the_node_with_exit_2_and_the_reason(kind, reference_dir, tmp_path):
    target = tmp_path / "written_by_checkpoint"
    model = tmp_path / "model.ckpt"
    if kind == "patch-writer":
        state_dict = read_checkpoint(reference_dir / "v4_reference.ckpt").state_dict
        model.write_bytes(_patch_writing_checkpoint(state_dict, target))
    else:
        model.write_bytes(torch_zip_from_pickle(nested_lists_pickle(200_000)))
    process = NodeProcess("detector", ["-p", f"model:={model}", "-p", "device:=cpu"], tmp_path)
    try:
        assert process.wait(timeout=120) == 2, process.log()
    finally:
        process.stop()
    log = process.log()
    assert "cannot start" in log and str(model) in log, log
    assert "Traceback" not in log, log
    assert not list(tmp_path.glob("written_by_checkpoint*"))

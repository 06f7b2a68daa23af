"""Image + camera_info synchronisation with message_filters (exact and approximate), in a real node.

message_filters comes with a ROS 2 installation and has no PyPI wheel: here the test skips with that reason
(the node then uses the newest CameraInfo, tested in test_ros_detector.py); in a ROS 2 workspace it runs.
"""

from __future__ import annotations

import numpy as np
import pytest
from ros_helpers import (
    DEFAULT_MODEL,
    NodeProcess,
    RosTestNode,
    is_stamp,
    require_ros,
    sensor_qos,
    stamp,
    unique_namespace,
)

pytestmark = pytest.mark.integration
require_ros()
pytest.importorskip("message_filters", reason="message_filters not installed (no PyPI wheel; comes with ROS 2)")

from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from kp2d_ros.camera_sim import camera_info_message, image_message  # noqa: E402
from kp2d_ros_msgs.msg import Keypoints  # noqa: E402


@pytest.mark.parametrize(("sync", "info_offset"), [("exact", 0.0), ("approximate", 0.005)])
def test_synchronised_camera_info_gives_normalized_coordinates(sync, info_offset, reference_dir, tmp_path):
    namespace = unique_namespace("sync")
    model = [] if DEFAULT_MODEL.is_file() else ["-p", f"model:={reference_dir / 'v4_reference.ckpt'}"]
    args = ["-r", f"__ns:={namespace}", *model, "-p", "device:=cpu", "-p", "use_camera_info:=true",
            "-p", f"camera_info_sync:={sync}", "-p", "camera_info_slop:=0.02"]  # fmt: skip
    detector = NodeProcess("detector", args, tmp_path)
    ros = RosTestNode()
    try:
        keypoints = ros.subscribe(Keypoints, f"{namespace}/kp2d_detector/keypoints")
        image_pub = ros.publisher(Image, f"{namespace}/image", sensor_qos())
        info_pub = ros.publisher(CameraInfo, f"{namespace}/camera_info", sensor_qos())
        ros.wait_for_subscribers(image_pub, timeout=120)
        ros.wait_for_subscribers(info_pub, timeout=30)
        pixels = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
        msg = None
        for second in range(1, 30):  # best effort: repeat until a synchronised pair gets through
            at = float(second)
            info_pub.publish(camera_info_message(160, 120, Header(stamp=stamp(at + info_offset))))
            image_pub.publish(image_message(pixels, "bgr8", 3, Header(stamp=stamp(at))))
            try:
                msg = keypoints.wait_for(lambda m: len(m.x_normalized) > 0, 2.0, "keypoints with normalised points")
                break
            except AssertionError:
                continue
        assert msg is not None, f"no keypoints with normalised coordinates ({sync} sync):\n{detector.log()[-2000:]}"
        assert msg.header.stamp.sec >= 1 and is_stamp(msg.header.stamp, float(msg.header.stamp.sec))
        x = np.frombuffer(msg.x, np.float32)
        np.testing.assert_allclose(np.frombuffer(msg.x_normalized, np.float32), (x - 79.5) / 160.0, atol=1e-5)
    finally:
        ros.close()
        detector.stop()

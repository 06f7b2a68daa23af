"""IMU-aided matching in the real ``detector`` node (subprocess, real rclpy + DDS): a pure-rotation sequence
(kp2d-track-bench's gyro_roll, exact K R K^-1 homographies) with its synthetic gyro published as sensor_msgs/Imu
in an IMU frame rotated against the camera (the node's ``imu_to_camera``), camera_info with the sequence's K.
"""

from __future__ import annotations

import time

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

from sensor_msgs.msg import CameraInfo, Image, Imu  # noqa: E402

from kp2d_model.evaluation.synthetic import read_photo  # noqa: E402
from kp2d_model.motion_prediction import rotation_from_quaternion  # noqa: E402
from kp2d_model.track_bench.bench import gyro_rotation  # noqa: E402
from kp2d_model.track_bench.metrics import correct_links, project  # noqa: E402
from kp2d_model.track_bench.sequences import make_sequence  # noqa: E402
from kp2d_ros.camera_sim import default_photo, image_message  # noqa: E402
from kp2d_ros.messages import field_array  # noqa: E402
from kp2d_ros_msgs.msg import Matches  # noqa: E402

SIZE = (320, 240)
RADIUS = 6.0
IMU_TO_CAMERA = [0.5, -0.5, 0.5, -0.5]  # an x-forward / z-up IMU body frame -> camera optical frame
PROCESS_TIMEOUT = 60.0

if not DEFAULT_MODEL.is_file():
    pytest.skip("IMU-aided matching is checked with the bundled default model", allow_module_level=True)


@pytest.fixture(scope="module")
def sequence():
    """Every 2nd frame of 13 of the fast roll (up to ~28 deg between the frames used)."""
    return make_sequence(read_photo(default_photo()), "gyro_roll", 13, SIZE, photo_name="astronaut")


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    ros = RosTestNode()
    namespace = unique_namespace("imu")
    process = NodeProcess(
        "detector",
        ["-r", f"__ns:={namespace}", "-p", "top_k:=300", "-p", "device:=cpu", "-p", "use_camera_info:=true",
         "-p", "camera_info_sync:=latest", "-p", "use_imu:=true", "-p", f"matching.prediction_radius:={RADIUS}",
         "-p", f"imu_to_camera:={IMU_TO_CAMERA}"],
        tmp_path_factory.mktemp("imu"),
    )  # fmt: skip
    try:
        ros.wait_for_publishers(f"{namespace}/kp2d_detector/matches", timeout=120.0)
        yield Handle(process, namespace, ros)
    finally:
        code = process.stop()
        ros.close()
        assert code == 0, f"detector did not shut down cleanly ({code}):\n{process.log()[-3000:]}"


class Handle:
    def __init__(self, process: NodeProcess, namespace: str, ros: RosTestNode):
        self.process, self.ros = process, ros
        self.matches = ros.subscribe(Matches, f"{namespace}/kp2d_detector/matches")
        self.image_pub = ros.publisher(Image, f"{namespace}/image", sensor_qos())
        self.info_pub = ros.publisher(CameraInfo, f"{namespace}/camera_info", sensor_qos())
        self.imu_pub = ros.publisher(Imu, f"{namespace}/imu", 500)
        for publisher in (self.image_pub, self.info_pub, self.imu_pub):
            ros.wait_for_subscribers(publisher)
        self.base = float(int(time.time()) + 1)  # each run() starts a later second
        self.imu_sent_ns = -(2**62)

    def run(self, sequence, indices, gyro_scale: float | None = 1.0, imu_until: int | None = None) -> list:
        """Publish camera_info, the gyro (IMU frame, ``gyro_scale`` x the truth; None: no gyro) up to each frame and
        the frame; returns ``(index, Matches)`` per frame after the first."""
        self.base += 10.0
        camera_from_imu = rotation_from_quaternion(IMU_TO_CAMERA)
        imu_rates = sequence.gyro_rates @ camera_from_imu  # rows: R_ci^T w_camera
        results = []
        for index in indices:
            at = self.base + index / sequence.fps
            header = Image().header
            header.stamp, header.frame_id = stamp(at), "camera"
            info = CameraInfo(header=header, width=SIZE[0], height=SIZE[1], distortion_model="plumb_bob")
            info.k, info.d = sequence.camera_matrix.reshape(9).tolist(), [0.0] * 5
            self.info_pub.publish(info)
            if gyro_scale is not None:
                limit = round(index / sequence.fps * 1e9) + 15_000_000
                for t_ns, rate in zip(sequence.gyro_stamps_ns, imu_rates, strict=True):
                    if t_ns > limit or (imu_until is not None and t_ns > imu_until / sequence.fps * 1e9):
                        break
                    absolute = round(self.base * 1e9) + int(t_ns)
                    if absolute <= self.imu_sent_ns:
                        continue
                    msg = Imu()
                    msg.header.stamp, msg.header.frame_id = stamp(absolute / 1e9), "imu"
                    w = msg.angular_velocity
                    w.x, w.y, w.z = (gyro_scale * rate).tolist()
                    self.imu_pub.publish(msg)
                    self.imu_sent_ns = absolute
            time.sleep(0.05)
            self.image_pub.publish(image_message(sequence.frames[index], "bgr8", 3, header))
            message = self.matches.wait_for(lambda m, at=at: is_stamp(m.header.stamp, at), PROCESS_TIMEOUT, f"{at}")
            if index != indices[0]:
                results.append((index, message))
        return results


def pairs(message: Matches) -> tuple[np.ndarray, np.ndarray]:
    previous = np.stack([field_array(message.previous_x, np.float32), field_array(message.previous_y, np.float32)], 1)
    current = np.stack([field_array(message.current_x, np.float32), field_array(message.current_y, np.float32)], 1)
    return previous.astype(np.float64), current.astype(np.float64)


def test_gyro_consistent_with_the_motion_restricts_matches_to_the_prediction(node, sequence):
    indices = list(range(0, 13, 2))
    results = node.run(sequence, indices)
    for (index, message), previous_index in zip(results, indices, strict=False):
        previous, current = pairs(message)
        assert len(current) > 30, (index, len(current))
        k = sequence.camera_matrix
        predicted = project(previous, k @ gyro_rotation(sequence, previous_index, index) @ np.linalg.inv(k))
        # Every match lies within the radius of the gyro's prediction (float32 transport: + 0.01 px).
        assert np.linalg.norm(predicted - current, axis=1).max() <= RADIUS + 0.01, index
        correct = correct_links(previous, current, sequence.homography(previous_index, index))
        assert correct.mean() > 0.6, (index, correct.mean())  # measured 0.76 on the first 28 deg step
    assert "IMU-aided matching: gyro from" in node.process.log()
    assert "IMU-aided matching skipped" not in node.process.log()


def test_without_gyro_the_node_warns_and_matches_unrestricted(node, sequence):
    """The IMU stops after frame 2: later frames warn (samples do not cover the interval), fall back to plain
    matching (matches farther than the radius from any prediction appear) and keep being published."""
    results = node.run(sequence, [0, 2, 4, 6], imu_until=2)
    log = node.process.wait_for_log("IMU-aided matching skipped for this frame: gyro does not cover", 10.0)
    assert "matched unrestricted" in log
    counts = [len(message.current_index) for _, message in results]
    assert all(count > 30 for count in counts), counts
    k = sequence.camera_matrix
    farthest = []
    for index, message in results[1:]:  # frames 4 and 6: no gyro
        previous, current = pairs(message)
        predicted = project(previous, k @ gyro_rotation(sequence, index - 2, index) @ np.linalg.inv(k))
        farthest.append(np.linalg.norm(predicted - current, axis=1).max())
    assert max(farthest) > RADIUS, farthest  # unrestricted: some (wrong) matches lie outside the radius
    assert node.process.process.poll() is None


def test_wrong_gyro_loses_matches_and_bad_imu_messages_are_ignored_with_a_warning(node, sequence):
    """A gyro reading the opposite rotation predicts far from where points go: (almost) nothing matches within
    the radius, the node keeps running; an Imu message marked "no angular velocity" is ignored with a warning."""
    wrong = node.run(sequence, [0, 2, 4], gyro_scale=-1.0)
    right = node.run(sequence, [0, 2, 4])
    assert sum(len(m.current_index) for _, m in wrong) < 0.2 * sum(len(m.current_index) for _, m in right)
    msg = Imu()
    msg.header.stamp = stamp(node.base + 100.0)
    msg.angular_velocity_covariance[0] = -1.0
    node.imu_pub.publish(msg)
    node.process.wait_for_log("imu message without angular velocity", 20.0)
    assert node.process.process.poll() is None


def test_invalid_imu_to_camera_is_a_start_up_error(tmp_path):
    process = NodeProcess(
        "detector", ["-p", "device:=cpu", "-p", "use_imu:=true", "-p", "imu_to_camera:=[0.0, 0.0, 0.0, 0.0]"], tmp_path
    )
    try:
        assert process.wait(60.0) == 2, process.log()[-2000:]
    finally:
        process.stop()
    assert "parameter 'imu_to_camera': quaternion (x, y, z, w) is zero" in process.log()

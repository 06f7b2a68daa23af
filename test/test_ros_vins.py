"""``~/features`` (publish_vins_features): VINS-Fusion's feature_tracker layout, checked against camera_sim's
ground truth over real DDS. Points are the undistorted normalised (x, y, 1) that reproject through K (and the
distortion) to the u, v channels; velocity_x/y are normalised units per second with the sign and scale of the
camera's known motion; ids are the Keypoints' track ids of the tracked (length >= 2) keypoints."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from ros_helpers import (
    NodeProcess,
    require_ros,
    sensor_qos,
    stamp,
    stamp_seconds,
    unique_namespace,
)

pytestmark = pytest.mark.integration
require_ros()

from rclpy.qos import DurabilityPolicy, QoSProfile  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from kp2d_ros.camera_sim import PhotoCamera, camera_info_message, default_photo, image_message  # noqa: E402
from kp2d_ros.messages import VINS_CHANNELS, VINS_ID_MODULUS, field_array, to_array  # noqa: E402
from kp2d_ros_msgs.msg import GroundTruthHomography, Keypoints, Matches  # noqa: E402

WIDTH, HEIGHT = 320, 240
PROCESS_TIMEOUT = 60.0
# camera_sim's CameraInfo (camera_info_message): fx = fy = width, principal point at the image centre.
K = np.array([[WIDTH, 0, 0.5 * (WIDTH - 1)], [0, WIDTH, 0.5 * (HEIGHT - 1)], [0, 0, 1]], np.float64)
# Float32 channels: u, v up to 320 px hold ~3e-5 px; x, y ~|0.5| times f = 320 px: ~2e-5 px. 1e-3 px leaves room.
REPROJECTION_PX = 1e-3
# A matched keypoint sits within ~1 px of where the true motion puts it (the bundled model); in velocity units
# that is 1 px / f / dt. Allow 3 px (the node tests' agreement bound) for 90 % of the tracked features.
AGREEMENT_PX = 3.0


@pytest.fixture(scope="module")
def detector(model_args, ros, tmp_path_factory):
    namespace = unique_namespace("vins")
    process = NodeProcess(
        "detector",
        ["-r", f"__ns:={namespace}", *model_args, "-p", "device:=cpu", "-p", "top_k:=300",
         "-p", "use_camera_info:=true", "-p", "camera_info_sync:=latest", "-p", "publish_vins_features:=true",
         "-p", "matching.geometry:=homography", "-p", "vins_camera_id:=2",
         "-p", "publish_descriptors:=false", "-p", "debug_image:=false"],
        tmp_path_factory.mktemp("detector"),
    )  # fmt: skip
    try:
        name = f"{namespace}/kp2d_detector"
        ros.wait_for_publishers(f"{name}/features", timeout=120.0)
        inboxes = {
            "features": ros.subscribe(PointCloud, f"{name}/features"),
            "keypoints": ros.subscribe(Keypoints, f"{name}/keypoints"),
            "matches": ros.subscribe(Matches, f"{name}/matches"),
        }
        ros.wait_for_publishers(f"{name}/keypoints")
        yield namespace, process, inboxes
    finally:
        assert process.stop() == 0, process.log()[-3000:]


def channels_of(cloud: PointCloud) -> dict[str, np.ndarray]:
    return {channel.name: field_array(channel.values, np.float32).astype(np.float64) for channel in cloud.channels}


def points_of(cloud: PointCloud) -> np.ndarray:
    return np.array([[p.x, p.y, p.z] for p in cloud.points], np.float64).reshape(-1, 3)


def normalised(pixels: np.ndarray) -> np.ndarray:
    return (pixels - K[:2, 2]) / K[0, 0]


def test_features_follow_camera_sims_motion_in_vins_fusions_layout(detector, ros, tmp_path):
    namespace, process, inbox = detector
    truth_qos = QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    truth = ros.subscribe(GroundTruthHomography, f"{namespace}/ground_truth", truth_qos)
    sim = NodeProcess(
        "camera_sim",
        ["-r", f"__ns:={namespace}", "-r", "image_raw:=image", "-p", f"width:={WIDTH}", "-p", f"height:={HEIGHT}",
         "-p", "rate:=2.0", "-p", "num_frames:=8", "-p", "speed:=5.0", "-p", "wait_for_subscribers:=1"],
        tmp_path,
    )  # fmt: skip
    try:
        assert sim.wait(timeout=120.0) == 0, sim.log()
        truths = truth.wait_count(8, 10.0, "ground truth")
        last = truths[-1].header.stamp
        inbox["keypoints"].wait_for(lambda m: m.header.stamp == last, PROCESS_TIMEOUT, "keypoints of the last frame")
    finally:
        sim.stop()
    reference_to_current = {stamp_seconds(t.header.stamp): np.reshape(t.reference_to_current, (3, 3)) for t in truths}
    keypoints = {stamp_seconds(m.header.stamp): m for m in inbox["keypoints"].snapshot()}
    matches = {stamp_seconds(m.header.stamp): m for m in inbox["matches"].snapshot()}
    clouds = [c for c in inbox["features"].snapshot() if stamp_seconds(c.header.stamp) in reference_to_current]
    assert len(clouds) >= 2, f"features for at least two camera_sim frames ({len(clouds)})"
    # The node's first frame has no tracked keypoint: no cloud for it (VINS-Mono skips its first image too).
    first = inbox["keypoints"].snapshot()[0]
    assert (field_array(first.track_length, np.uint32) == 1).all()
    assert not any(c.header.stamp == first.header.stamp for c in inbox["features"].snapshot())

    velocity_errors, speeds, true_speeds, checked = [], [], [], 0
    for cloud in clouds:
        at = stamp_seconds(cloud.header.stamp)
        assert tuple(c.name for c in cloud.channels) == VINS_CHANNELS
        assert cloud.header.frame_id == keypoints[at].header.frame_id == "camera"
        channels, points = channels_of(cloud), points_of(cloud)
        assert all(len(values) == len(points) > 0 for values in channels.values())
        assert (points[:, 2] == 1.0).all() and (channels["camera_id"] == 2).all()
        # Normalised coordinates reproject through K to u, v.
        pixels = points[:, :2] * K[0, 0] + K[:2, 2]
        np.testing.assert_allclose(pixels, np.stack([channels["u"], channels["v"]], 1), rtol=0, atol=REPROJECTION_PX)
        # Exactly the tracked keypoints of the same frame, with their track ids.
        msg = keypoints[at]
        lengths = field_array(msg.track_length, np.uint32)
        tracked_ids = field_array(msg.track_id, np.uint64)[lengths >= 2] % VINS_ID_MODULUS
        np.testing.assert_array_equal(channels["id"], tracked_ids.astype(np.float64))
        np.testing.assert_array_equal(channels["u"], field_array(msg.x, np.float32)[lengths >= 2])

        # Velocity: where the true motion moved each feature from since the previous processed frame, per second.
        previous_at = stamp_seconds(matches[at].previous_stamp)
        if previous_at not in reference_to_current:
            continue  # the previous processed frame was one of the tests' own (not camera_sim's)
        dt = at - previous_at
        current_to_previous = reference_to_current[previous_at] @ np.linalg.inv(reference_to_current[at])
        current = np.stack([channels["u"], channels["v"]], 1)
        previous = cv2.perspectiveTransform(current.reshape(-1, 1, 2), current_to_previous).reshape(-1, 2)
        true_velocity = (normalised(current) - normalised(previous)) / dt
        velocity = np.stack([channels["velocity_x"], channels["velocity_y"]], 1)
        velocity_errors.extend(np.linalg.norm(velocity - true_velocity, axis=1) * K[0, 0] * dt)  # in pixels
        speeds.extend(np.linalg.norm(velocity, axis=1))
        true_speeds.extend(np.linalg.norm(true_velocity, axis=1))
        # Sign: each feature moves the way the camera image moves.
        agreeing = np.sum(velocity * true_velocity, axis=1) > 0
        assert agreeing.mean() > 0.9, f"{agreeing.mean():.2f} of velocities point along the true motion"
        checked += 1
    assert checked >= 1, "at least one pair of consecutive camera_sim frames was processed (overloaded machine?)"
    within = np.mean(np.array(velocity_errors) < AGREEMENT_PX)
    assert within > 0.9, f"{within:.2f} of velocities within {AGREEMENT_PX} px / dt of the truth"
    # Scale: normalised units per second (not pixels, not per frame): the median speeds agree to 10 %.
    ratio = np.median(speeds) / np.median(true_speeds)
    assert 0.9 < ratio < 1.1 and np.median(true_speeds) > 0.01, (ratio, np.median(true_speeds))


def test_features_reproject_through_the_lens_distortion(detector, ros):
    """A plumb_bob CameraInfo: the published (x, y, 1) go back to u, v through OpenCV's forward model."""
    namespace, process, inbox = detector
    d = np.array([-0.25, 0.08, 0.001, -0.002, 0.0])
    info_pub = ros.publisher(CameraInfo, f"{namespace}/camera_info", sensor_qos())
    image_pub = ros.publisher(Image, f"{namespace}/image", sensor_qos())
    ros.wait_for_subscribers(info_pub)
    ros.wait_for_subscribers(image_pub)
    camera = PhotoCamera(cv2.imread(str(default_photo())), (WIDTH, HEIGHT), speed=2.0)
    start = time.time() + 1000.0  # later than camera_sim's wall-clock stamps
    # The node keeps the latest CameraInfo, an earlier test's pinhole one until a distorted one arrives: send it
    # for a second before the first image (best effort: one message can be lost or beat discovery under load).
    for _ in range(10):
        info = camera_info_message(WIDTH, HEIGHT, Header(stamp=stamp(start - 1.0), frame_id="distorted"))
        info.d = to_array("d", d)
        info_pub.publish(info)
        time.sleep(0.1)
    cloud = None
    for index in range(8):  # two consecutive processed frames give a cloud (frames can be dropped)
        header = Header(stamp=stamp(start + index), frame_id="distorted")
        info = camera_info_message(WIDTH, HEIGHT, header)
        info.d = to_array("d", d)
        info_pub.publish(info)
        time.sleep(0.2)  # the latest CameraInfo is taken when the image arrives
        image_pub.publish(image_message(camera.render(camera.reference_to_frame(index)), "bgr8", 3, header))
        try:
            cloud = inbox["features"].wait_for(lambda c: c.header.frame_id == "distorted", 15.0, "distorted features")
            break
        except AssertionError:
            continue
    assert cloud is not None
    channels, points = channels_of(cloud), points_of(cloud)
    assert np.any(d)
    pixels, _ = cv2.projectPoints(points, np.zeros(3), np.zeros(3), K, d)
    np.testing.assert_allclose(pixels.reshape(-1, 2), np.stack([channels["u"], channels["v"]], 1), rtol=0, atol=0.01)
    # The distortion matters here: the pinhole model alone puts the corners' points pixels away.
    pinhole = points[:, :2] * K[0, 0] + K[:2, 2]
    assert np.abs(pinhole - np.stack([channels["u"], channels["v"]], 1)).max() > 2.0


def test_vins_features_without_camera_info_stop_start_up(model_args, tmp_path):
    process = NodeProcess(
        "detector", ["-r", f"__ns:={unique_namespace('vins_bad')}", *model_args, "-p", "publish_vins_features:=true"],
        tmp_path,
    )  # fmt: skip
    try:
        assert process.wait(timeout=120.0) == 2
    finally:
        process.stop()
    assert "cannot start: publish_vins_features needs use_camera_info:=true" in process.log()

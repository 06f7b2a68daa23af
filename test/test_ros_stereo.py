"""Stereo and multi-camera with real processes and DDS: camera_sim's stereo mode, the stereo_detector node on it
(disparities against camera_sim's known fx * baseline / depth, shared track ids), bad pairs, and multi_detector
(two cameras, one process, one model load)."""

from __future__ import annotations

import importlib.util
import time

import cv2
import numpy as np
import pytest
from ros_helpers import (
    NodeProcess,
    RosTestNode,
    require_ros,
    sensor_qos,
    stamp,
    unique_namespace,
    wait_until,
)

pytestmark = pytest.mark.integration
require_ros()

from rclpy.qos import QoSProfile  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from kp2d_ros.camera_sim import camera_info_message, image_message  # noqa: E402
from kp2d_ros.conversions import image_to_array  # noqa: E402
from kp2d_ros.messages import field_array  # noqa: E402
from kp2d_ros_msgs.msg import Keypoints, Matches, StereoMatches  # noqa: E402

WIDTH, HEIGHT, BASELINE, DEPTH = 320, 240, 0.12, 3.0
DISPARITY = WIDTH * BASELINE / DEPTH  # camera_sim: fx = width -> 12.8 px, not a multiple of the 8 px network cell
SIM = ["-p", "stereo:=true", "-p", f"width:={WIDTH}", "-p", f"height:={HEIGHT}", "-p", f"baseline:={BASELINE}",
       "-p", f"depth:={DEPTH}", "-p", "image_qos:=reliable"]  # fmt: skip
MESSAGE_FILTERS = importlib.util.find_spec("message_filters") is not None


@pytest.fixture
def ros():
    node = RosTestNode()
    yield node
    node.close()


def wait_until_or_false(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def test_camera_sim_stereo_publishes_a_rectified_pair_with_equal_stamps(ros, tmp_path):
    namespace = unique_namespace("stereo_sim")
    topics = [(f"{side}/{what}", kind) for side in ("left", "right")
              for what, kind in (("image_raw", Image), ("camera_info", CameraInfo))]  # fmt: skip
    inboxes = {topic: ros.subscribe(kind, f"{namespace}/{topic}", QoSProfile(depth=50)) for topic, kind in topics}
    sim = NodeProcess("camera_sim", ["-r", f"__ns:={namespace}", "-p", "num_frames:=3", "-p", "rate:=10.0",
                                     "-p", "wait_for_subscribers:=1", *SIM], tmp_path)  # fmt: skip
    try:
        assert sim.wait(timeout=60) == 0, sim.log()
    finally:
        sim.stop()
    for inbox in inboxes.values():
        inbox.wait_count(3, 10.0, "stereo messages")
    stamps = {name: [m.header.stamp for m in inbox.snapshot()] for name, inbox in inboxes.items()}
    assert len({tuple((s.sec, s.nanosec) for s in v) for v in stamps.values()}) == 1, stamps
    left_info, right_info = inboxes["left/camera_info"].snapshot()[0], inboxes["right/camera_info"].snapshot()[0]
    fx = left_info.p[0]
    assert fx == WIDTH and list(left_info.p) == list(right_info.p[:3]) + [0.0] + list(right_info.p[4:])
    assert right_info.p[3] == pytest.approx(-fx * BASELINE) and left_info.p[3] == 0.0
    assert right_info.header.frame_id != left_info.header.frame_id
    # The right view is the left one moved left by fx * baseline / depth pixels (interior, bilinear rendering).
    for left_msg, right_msg in zip(inboxes["left/image_raw"].snapshot(), inboxes["right/image_raw"].snapshot(),
                                   strict=True):  # fmt: skip
        left = image_to_array(left_msg).pixels.astype(np.float32)
        right = image_to_array(right_msg).pixels.astype(np.float32)
        moved = cv2.warpAffine(left, np.array([[1, 0, -DISPARITY], [0, 1, 0]]), (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR)
        inner = (slice(10, -10), slice(10, -30))
        error = np.abs(moved[inner] - right[inner]).mean()
        unmoved = np.abs(left[inner] - right[inner]).mean()
        assert error < 4.0 and unmoved > 3 * error, (error, unmoved)


def test_stereo_detector_disparities_match_camera_sim_and_ids_are_shared(ros, tmp_path, model_args):
    namespace = unique_namespace("stereo")
    node = f"{namespace}/kp2d_stereo"
    stereo = ros.subscribe(StereoMatches, f"{node}/stereo_matches")
    left = ros.subscribe(Keypoints, f"{node}/left/keypoints")
    right = ros.subscribe(Keypoints, f"{node}/right/keypoints")
    temporal = ros.subscribe(Matches, f"{node}/left/matches")
    detector = NodeProcess("stereo_detector", [
        "-r", f"__ns:={namespace}", "-r", "left/image:=left/image_raw", "-r", "right/image:=right/image_raw",
        "-p", "image_qos:=reliable", "-p", "precision:=fp32", "-p", "device:=cpu", "-p", "top_k:=500",
        *model_args,
    ], tmp_path)  # fmt: skip
    sim = None
    try:
        log = detector.wait_for_log("ready:", timeout=120)
        assert ("message_filters.TimeSynchronizer" in log) == MESSAGE_FILTERS, log
        # The outputs are volatile: see the node's four publishers before the first pair is sent.
        for topic in ("stereo_matches", "left/keypoints", "right/keypoints", "left/matches"):
            ros.wait_for_publishers(f"{node}/{topic}", timeout=60)
        sim = NodeProcess("camera_sim", ["-r", f"__ns:={namespace}", "-p", "num_frames:=6", "-p", "rate:=2.0",
                                         "-p", "wait_for_subscribers:=1", *SIM], tmp_path)  # fmt: skip
        stereo.wait_count(4, 90.0, "stereo matches")

        def stamps(inbox):
            return {(m.header.stamp.sec, m.header.stamp.nanosec) for m in inbox.snapshot()}

        wait_until(lambda: len(stamps(stereo) & stamps(left) & stamps(right)) >= 3 and len(temporal.snapshot()) >= 4,
                   30.0, "stereo matches with both keypoint messages, temporal matches")  # fmt: skip
    finally:
        if sim is not None:
            sim.stop()
        detector.stop()
    lefts = {(m.header.stamp.sec, m.header.stamp.nanosec): m for m in left.snapshot()}
    rights = {(m.header.stamp.sec, m.header.stamp.nanosec): m for m in right.snapshot()}
    checked = 0
    for msg in stereo.snapshot():
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        assert msg.right_stamp == msg.header.stamp
        if key not in lefts or key not in rights:
            continue
        disparity = field_array(msg.disparity, np.float32)
        error = np.abs(disparity - DISPARITY)
        assert len(disparity) > 50
        assert np.median(error) < 0.5 and np.mean(error < 0.5) >= 0.9, (np.median(error), np.mean(error < 0.5))
        assert msg.fx == WIDTH and msg.baseline == pytest.approx(BASELINE)
        assert np.median(field_array(msg.depth, np.float32)) == pytest.approx(DEPTH, rel=0.02)
        left_ids = field_array(lefts[key].track_id, np.uint64)
        right_ids = field_array(rights[key].track_id, np.uint64)
        left_index = field_array(msg.left_index, np.uint32)
        right_index = field_array(msg.right_index, np.uint32)
        shared = field_array(msg.track_id, np.uint64)
        assert (left_ids[left_index] == shared).all() and (right_ids[right_index] == shared).all()
        unmatched = np.setdiff1d(np.arange(len(right_ids)), right_index)
        assert not np.isin(right_ids[unmatched], left_ids).any()  # right-only keypoints never take a left id
        # Row constraint: matched keypoints lie on the same row (camera_sim's pair is exactly rectified).
        dy = field_array(lefts[key].y, np.float32)[left_index] - field_array(rights[key].y, np.float32)[right_index]
        assert np.abs(dy).max() <= 1.5
        checked += 1
    assert checked >= 3
    # Left temporal tracking: later frames carry ids from the previous one, and the right side shares them.
    later = [m for m in temporal.snapshot() if len(m.current_index) > 0]
    assert later and all(m.previous_stamp.sec or m.previous_stamp.nanosec for m in later)
    last_left = max(lefts.items())[1]
    assert (field_array(last_left.track_length, np.uint32) > 1).mean() > 0.3


def test_stereo_detector_skips_a_bad_pair_and_keeps_going(ros, tmp_path, model_args):
    namespace = unique_namespace("stereo_bad")
    stereo = ros.subscribe(StereoMatches, f"{namespace}/kp2d_stereo/stereo_matches")
    detector = NodeProcess("stereo_detector", ["-r", f"__ns:={namespace}", "-p", "precision:=fp32", "-p", "device:=cpu",
                                               *model_args], tmp_path)  # fmt: skip
    try:
        publishers = {topic: ros.publisher(kind, f"{namespace}/{topic}", sensor_qos()) for topic, kind in (
            ("left/image", Image), ("right/image", Image), ("left/camera_info", CameraInfo),
            ("right/camera_info", CameraInfo))}  # fmt: skip
        for publisher in publishers.values():
            ros.wait_for_subscribers(publisher, timeout=120)
        detector.wait_for_log("ready:", timeout=120)
        rng = np.random.default_rng(0)
        image = cv2.GaussianBlur(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), (0, 0), 1.0)

        def send(at: float, right_width: int, right_baseline: float) -> None:
            header = Header(stamp=stamp(at), frame_id="cam")
            right_image = np.ascontiguousarray(image[:, :right_width])
            publishers["left/camera_info"].publish(camera_info_message(128, 96, header))
            publishers["right/camera_info"].publish(camera_info_message(right_width, 96, header, right_baseline))
            publishers["left/image"].publish(image_message(image, "bgr8", 3, header))
            publishers["right/image"].publish(image_message(right_image, "bgr8", 3, header))

        clock = iter(range(1, 1000))

        def send_until(done, right_width: int, right_baseline: float, what: str) -> float:
            """Best effort: send pairs (new stamps) until ``done()``; the stamp of the last pair sent."""
            for _ in range(30):
                at = float(next(clock))
                send(at, right_width, right_baseline)
                if wait_until_or_false(done, 1.0):
                    return at
            raise AssertionError(f"no {what} after 30 pairs:\n{detector.log()[-3000:]}")

        def logged(text: str):
            return lambda: text in detector.log()

        send_until(logged("stereo pair skipped: left image is 128x96 but right is 120x96"), 120, 0.1, "size warning")
        swapped_at = send_until(logged("left and right swapped?"), 128, -0.1, "swapped warning")
        first_good = send_until(lambda: stereo.snapshot(), 128, 0.1, "stereo matches")
        msg = stereo.wait_for(lambda m: True, 30.0, "stereo matches after bad pairs")
        assert swapped_at < msg.header.stamp.sec <= first_good and detector.process.poll() is None
        assert len(msg.disparity) > 0 and msg.baseline == pytest.approx(0.1)
    finally:
        detector.stop()


def test_multi_detector_publishes_two_cameras_from_one_process_with_one_model_load(ros, tmp_path, model_args):
    prefix = unique_namespace("multi").strip("/")
    cameras = [f"{prefix}/cam_a", f"{prefix}/cam_b"]
    inboxes = [ros.subscribe(Keypoints, f"/{camera}/kp2d_detector/keypoints") for camera in cameras]
    multi = NodeProcess("multi_detector", ["-p", f"cameras:={' '.join(cameras)}", "-r", "image:=image_raw",
                                           "-p", "precision:=fp32", "-p", "device:=cpu", "-p", "image_qos:=reliable",
                                           *model_args], tmp_path)  # fmt: skip
    sims = []
    try:
        log = multi.wait_for_log("one model load shared by 2 detectors", timeout=120)
        assert all(f"/{camera}/kp2d_detector" in log for camera in cameras), log
        for camera in cameras:
            sims.append(NodeProcess("camera_sim", ["-r", f"__ns:=/{camera}", "-p", "num_frames:=4", "-p", "rate:=2.0",
                                                   "-p", "width:=160", "-p", "height:=120", "-p", "image_qos:=reliable",
                                                   "-p", "wait_for_subscribers:=1"], tmp_path))  # fmt: skip
        for inbox, camera in zip(inboxes, cameras, strict=True):
            inbox.wait_count(2, 90.0, f"keypoints of {camera}")
    finally:
        for sim in sims:
            sim.stop()
        multi.stop()
    for inbox in inboxes:
        assert all(len(m.x) > 0 and (m.image_width, m.image_height) == (160, 120) for m in inbox.snapshot())
    # One process (this one NodeProcess) and one network: each detector node says it was given the shared one.
    assert multi.log().count("ready: model given SharedDetector") == 2, multi.log()


def test_equal_stamp_pairing_delivers_complete_sets_and_forgets_old_ones():
    from kp2d_ros.stereo_node import ExactStampPairing

    delivered = []
    pairing = ExactStampPairing(3, 2, lambda *messages: delivered.append([m.header.frame_id for m in messages]))

    def msg(at: float, name: str) -> Image:
        return Image(header=Header(stamp=stamp(at), frame_id=name))

    pairing.add(0, msg(1.0, "a1"))
    pairing.add(1, msg(2.0, "b2"))
    pairing.add(0, msg(2.0, "a2"))
    pairing.add(2, msg(2.0, "c2"))  # stamp 2 complete: delivered in topic order; stamp 1 (older) forgotten
    pairing.add(1, msg(1.0, "b1"))
    pairing.add(2, msg(1.0, "c1"))  # stamp 1 again from scratch: incomplete
    for at in (3.0, 4.0, 5.0):  # queue of 2 incomplete stamps: 1.0 and 3.0 drop out
        pairing.add(0, msg(at, f"a{at:.0f}"))
    pairing.add(1, msg(3.0, "b3"))
    pairing.add(2, msg(3.0, "c3"))
    pairing.add(1, msg(5.0, "b5"))
    pairing.add(2, msg(5.0, "c5"))
    assert delivered == [["a2", "b2", "c2"], ["a5", "b5", "c5"]]


def test_stereo_geometry_reads_fx_and_baseline_and_refuses_unrectified_pairs():
    from kp2d_ros.stereo_node import StereoInputError, stereo_geometry

    header = Header(stamp=stamp(1.0))
    left, right = camera_info_message(320, 240, header), camera_info_message(320, 240, header, 0.12)
    fx, baseline = stereo_geometry(left, right, (320, 240))
    assert fx == 320 and baseline == pytest.approx(0.12)
    assert stereo_geometry(left, camera_info_message(320, 240, header), (320, 240)) == (320.0, 0.0)
    with pytest.raises(StereoInputError, match="camera_info is for 320x240 but the images are 160x120"):
        stereo_geometry(left, right, (160, 120))
    shifted = camera_info_message(320, 240, header, 0.12)
    shifted.p[6] += 3.0  # cy differs: not rectified
    with pytest.raises(StereoInputError, match="not rectified"):
        stereo_geometry(left, shifted, (320, 240))
    with pytest.raises(StereoInputError, match="swapped"):
        stereo_geometry(left, camera_info_message(320, 240, header, -0.12), (320, 240))

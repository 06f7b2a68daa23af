"""Integration tests of the ``detector`` node: a real process (``install/kp2d_ros/lib/kp2d_ros/detector``),
real rclpy in the test process, real DDS on loopback, driven by ``camera_sim`` and by frames the tests publish.

One detector process serves the module (start-up costs seconds); each test uses stamps later than the
previous test's, so no test sees another's frames as going backwards.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import cv2
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
    stamp_seconds,
    unique_namespace,
    wait_until,
)

pytestmark = pytest.mark.integration
require_ros()

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402

from kp2d_ros.camera_sim import PhotoCamera, default_photo, image_message  # noqa: E402
from kp2d_ros.messages import field_array, to_array  # noqa: E402
from kp2d_ros_msgs.msg import GroundTruthHomography, Keypoints, Matches  # noqa: E402

TOP_K = 300
WIDTH, HEIGHT = 320, 240
# The bundled default model once it exists (trained: inliers must follow the true motion within 3 px); until
# then the original code's random-weight fixture. Its keypoints barely move off the 8-px cell grid (measured:
# matched points move by multiples of a cell, within ~half a cell of the truth), so the bound is one cell;
# camera_sim moves ~10 px per frame (speed 5), so matches that ignored the motion (identity) or random matches
# still fail it.
USE_DEFAULT_MODEL = DEFAULT_MODEL.is_file()
# The bundled model (8903 CPU training steps, docs/default_model.md): measured 1713 of 1715 inliers within 3 px
# here. Identity or random matches score ~0 at 3 px with ~10 px motion; 0.9 leaves room for retraining noise.
AGREEMENT_PX = 3.0 if USE_DEFAULT_MODEL else 8.0
MIN_INLIER_AGREEMENT = 0.9 if USE_DEFAULT_MODEL else 0.7  # measured with the fixture: 0.97-0.98
PROCESS_TIMEOUT = 60.0  # seconds for one frame end to end (2 shared CPU cores, inference of ~0.3-2 s)


@pytest.fixture(scope="module")
def namespace() -> str:
    return unique_namespace("det")


@pytest.fixture(scope="module")
def detector(model_args, namespace, ros, tmp_path_factory):
    """The detector node process (homography check, camera_info, compressed input on) and its topics."""
    process = NodeProcess(
        "detector",
        [
            "-r", f"__ns:={namespace}",
            *model_args,
            "-p", f"top_k:={TOP_K}",
            "-p", "device:=cpu",
            "-p", "matching.geometry:=homography",
            "-p", "use_camera_info:=true",
            "-p", "camera_info_sync:=latest",
            "-p", "use_compressed:=true",
        ],
        tmp_path_factory.mktemp("detector"),
    )  # fmt: skip
    try:
        ros.wait_for_publishers(f"{namespace}/kp2d_detector/keypoints", timeout=120.0)
        yield DetectorHandle(process, namespace, ros)
    finally:
        code = process.stop()
        assert code == 0, f"detector did not shut down cleanly ({code}):\n{process.log()[-3000:]}"


class DetectorHandle:
    """The running detector, a publisher of images into it and inboxes of its outputs."""

    def __init__(self, process: NodeProcess, namespace: str, ros: RosTestNode):
        self.process, self.namespace, self.ros = process, namespace, ros
        self.name = f"{namespace}/kp2d_detector"
        self.keypoints = ros.subscribe(Keypoints, f"{self.name}/keypoints")
        self.matches = ros.subscribe(Matches, f"{self.name}/matches")
        self.image_pub = ros.publisher(Image, f"{namespace}/image", sensor_qos())
        self.compressed_pub = ros.publisher(CompressedImage, f"{namespace}/image/compressed", sensor_qos())
        self.info_pub = ros.publisher(CameraInfo, f"{namespace}/camera_info", sensor_qos())
        ros.wait_for_subscribers(self.image_pub)
        ros.wait_for_subscribers(self.compressed_pub)
        ros.wait_for_subscribers(self.info_pub)
        wait_until(lambda: self.keypoints_matched() and self.matches_matched(), 30.0, "output subscriptions matched")
        camera = PhotoCamera(cv2.imread(str(default_photo())), (WIDTH, HEIGHT))
        self.frames = [camera.render(camera.reference_to_frame(t)) for t in range(0, 40, 4)]
        self._last_stamp = 0.0

    def keypoints_matched(self) -> bool:
        return self.ros.node.count_publishers(f"{self.name}/keypoints") >= 1

    def matches_matched(self) -> bool:
        return self.ros.node.count_publishers(f"{self.name}/matches") >= 1

    def next_stamp(self) -> float:
        """Wall-clock stamps in whole milliseconds (exact in float seconds), increasing across the module.
        camera_sim stamps with the wall clock too, so its frames come after the tests' frames."""
        self._last_stamp = max(self._last_stamp + 0.001, round(time.time(), 3))
        return self._last_stamp

    def publish_until_logged(self, make: Any, text: str, attempts: int = 5) -> None:
        """Publish ``make(stamp)`` until the node logs ``text`` (a frame can be replaced by a newer one or,
        best effort, lost; the node's warnings are per kind, so the text appears once per test run)."""
        for attempt in range(attempts):
            self.image_pub.publish(make(self.next_stamp()))
            try:
                self.process.wait_for_log(text, timeout=PROCESS_TIMEOUT / attempts)
                return
            except AssertionError:
                if attempt == attempts - 1:
                    raise

    def publish(self, pixels: np.ndarray | None = None, at: float | None = None, encoding: str = "bgr8") -> float:
        """Publish a frame (default: a rendered view of the photo) with stamp ``at``; returns the stamp."""
        at = self.next_stamp() if at is None else at
        pixels = self.frames[int(at) % len(self.frames)] if pixels is None else pixels
        channels = 1 if pixels.ndim == 2 else pixels.shape[2]
        header = Image().header
        header.stamp, header.frame_id = stamp(at), "test_camera"
        self.image_pub.publish(image_message(pixels, encoding, channels * pixels.dtype.itemsize, header))
        return at

    def publish_and_receive(self, attempts: int = 3) -> tuple[float, Keypoints]:
        """Publish a frame and wait for its keypoints; re-publish a new frame if one is lost (best effort)."""
        for attempt in range(attempts):
            at = self.publish()
            try:
                return at, self.keypoints_for(at, timeout=PROCESS_TIMEOUT / attempts)
            except AssertionError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def keypoints_for(self, at: float, timeout: float = PROCESS_TIMEOUT) -> Keypoints:
        return self.keypoints.wait_for(lambda m: is_stamp(m.header.stamp, at), timeout, f"keypoints at {at}")

    def matches_for(self, at: float, timeout: float = PROCESS_TIMEOUT) -> Matches:
        return self.matches.wait_for(lambda m: is_stamp(m.header.stamp, at), timeout, f"matches at {at}")


def points_of(msg: Keypoints) -> np.ndarray:
    return np.stack([field_array(msg.x, np.float32), field_array(msg.y, np.float32)], axis=1)


# --- outputs --------------------------------------------------------------------------------------------------


def test_keypoints_carry_the_source_header_and_stay_inside_the_image(detector):
    detector.publish_and_receive()
    _, msg = detector.publish_and_receive()
    assert msg.header.frame_id == "test_camera"
    assert (msg.image_width, msg.image_height) == (WIDTH, HEIGHT)
    n = len(msg.x)
    assert 0 < n <= TOP_K
    points = points_of(msg)
    assert np.all((points >= 0) & (points <= [WIDTH - 1, HEIGHT - 1]))
    scores = field_array(msg.score, np.float32)
    assert scores.shape == (n,) and np.all(np.diff(scores) <= 0), "scores sorted descending"
    assert msg.descriptor_size in (64, 256)
    descriptors = field_array(msg.descriptors, np.float32).reshape(n, msg.descriptor_size)
    np.testing.assert_allclose(np.linalg.norm(descriptors, axis=1), 1.0, atol=1e-4)
    assert len(msg.track_id) == len(msg.track_length) == n


def test_matches_refer_to_the_previous_processed_frame_and_agree_with_the_ground_truth(detector, tmp_path):
    """camera_sim moves over the photo; the matches' inliers must map by the true homography (within 3 px)."""
    truth = detector.ros.subscribe(
        GroundTruthHomography, f"{detector.namespace}/ground_truth",
        QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL),
    )  # fmt: skip
    start = len(detector.matches.snapshot())
    sim = NodeProcess(
        "camera_sim",
        ["-r", f"__ns:={detector.namespace}", "-r", "image_raw:=image",
         "-p", f"width:={WIDTH}", "-p", f"height:={HEIGHT}", "-p", "rate:=2.0",
         "-p", "num_frames:=10", "-p", "speed:=5.0", "-p", "wait_for_subscribers:=1"],
        tmp_path,
    )  # fmt: skip
    try:
        assert sim.wait(timeout=120.0) == 0, sim.log()
        truths = truth.wait_count(10, 10.0, "ground truth")
        last = stamp_seconds(truths[-1].header.stamp)
        detector.matches_for(last)
    finally:
        sim.stop()
    by_stamp = {stamp_seconds(t.header.stamp): t for t in truths}
    processed = [m for m in detector.matches.snapshot()[start:] if stamp_seconds(m.header.stamp) in by_stamp]

    agreeing, inliers, drifts = 0, 0, []
    for before, now in itertools.pairwise(processed):
        assert now.previous_stamp == before.header.stamp, "previous_stamp is the prior processed frame"
        if by_stamp[stamp_seconds(now.header.stamp)].previous_stamp != before.header.stamp:
            continue  # the node skipped a camera frame (busy): motion too large for the random-weight fixture
        assert now.geometry_model == "homography"
        inlier = field_array(now.inlier, np.uint8).astype(bool)
        assert now.num_inliers == inlier.sum()
        assert now.model_found and inlier.sum() >= 8, f"homography found with inliers ({now.num_inliers})"
        truth_now = np.array(by_stamp[stamp_seconds(now.header.stamp)].reference_to_current).reshape(3, 3)
        truth_before = np.array(by_stamp[stamp_seconds(before.header.stamp)].reference_to_current).reshape(3, 3)
        homography = truth_now @ np.linalg.inv(truth_before)
        previous = np.stack([field_array(now.previous_x, np.float32), field_array(now.previous_y, np.float32)], 1)
        current = np.stack([field_array(now.current_x, np.float32), field_array(now.current_y, np.float32)], 1)
        projected = cv2.perspectiveTransform(previous.reshape(-1, 1, 2).astype(np.float64), homography).reshape(-1, 2)
        error = np.linalg.norm(projected - current, axis=1)
        agreeing += int(np.sum(error[inlier] < AGREEMENT_PX))
        inliers += int(inlier.sum())
        centre = np.array([[[WIDTH / 2, HEIGHT / 2]]])
        estimated = np.array(now.model).reshape(3, 3)
        truth_centre = cv2.perspectiveTransform(centre, homography)
        drifts.append(float(np.linalg.norm(cv2.perspectiveTransform(centre, estimated) - truth_centre)))
    assert len(drifts) >= 2, "at least two consecutive camera frames processed (is the machine overloaded?)"
    assert agreeing / inliers >= MIN_INLIER_AGREEMENT, f"{agreeing}/{inliers} inliers within {AGREEMENT_PX} px of truth"
    assert np.median(drifts) < 2 * AGREEMENT_PX, f"estimated homographies move the image centre off the truth: {drifts}"


def test_track_ids_persist_across_frames(detector):
    first = detector.publish(detector.frames[0])
    kp_first = detector.keypoints_for(first)
    second = detector.publish(detector.frames[1])
    kp_second = detector.keypoints_for(second)
    matches = detector.matches_for(second)
    assert matches.previous_stamp == kp_first.header.stamp
    ids_first = field_array(kp_first.track_id, np.uint64)
    ids_second = field_array(kp_second.track_id, np.uint64)
    lengths_first = field_array(kp_first.track_length, np.uint32)
    lengths_second = field_array(kp_second.track_length, np.uint32)
    inlier = field_array(matches.inlier, np.uint8).astype(bool)
    previous_index = field_array(matches.previous_index, np.uint32)[inlier]
    current_index = field_array(matches.current_index, np.uint32)[inlier]
    assert len(current_index) > 0
    np.testing.assert_array_equal(ids_second[current_index], ids_first[previous_index])
    np.testing.assert_array_equal(lengths_second[current_index], lengths_first[previous_index] + 1)
    fresh = np.setdiff1d(np.arange(len(ids_second)), current_index)
    assert np.all(lengths_second[fresh] == 1)
    assert not np.isin(ids_second[fresh], ids_first).any(), "unmatched points get new ids"
    assert len(np.unique(ids_second)) == len(ids_second)


def diagnostics_value(message: DiagnosticArray, name: str, key: str) -> str | None:
    for status in message.status:
        if status.name.startswith(name):
            for value in status.values:
                if value.key == key:
                    return value.value
    return None


def test_debug_image_is_built_only_while_subscribed(detector):
    diagnostics = detector.ros.subscribe(DiagnosticArray, "/diagnostics")
    key = "debug images published"

    def latest_count() -> int | None:
        values = [diagnostics_value(m, detector.name, key) for m in diagnostics.snapshot()]
        values = [int(v) for v in values if v is not None]
        return values[-1] if values else None

    at = detector.publish()
    detector.keypoints_for(at)
    reported = len(diagnostics.snapshot())
    diagnostics.wait_count(reported + 2, 10.0, "diagnostics after the frame")
    assert latest_count() == 0, "no debug image without subscribers"

    debug = detector.ros.subscribe(Image, f"{detector.name}/debug_image")
    # The detector learns of the new subscription asynchronously: send frames until one comes back drawn.
    for _ in range(5):
        at = detector.publish()
        detector.keypoints_for(at)
        image = next((m for m in debug.snapshot() if is_stamp(m.header.stamp, at)), None)
        if image is None:
            time.sleep(0.5)  # a late debug image of this frame may still be in flight
            image = next((m for m in debug.snapshot() if is_stamp(m.header.stamp, at)), None)
        if image is not None:
            break
    assert image is not None, "no debug image while subscribed"
    assert (image.width, image.height, image.encoding) == (WIDTH, HEIGHT, "bgr8")
    assert len(image.data) == WIDTH * HEIGHT * 3
    wait_until(lambda: (latest_count() or 0) >= 1, 10.0, "the debug image count in /diagnostics")


def test_diagnostics_split_the_overhead_into_its_parts(detector):
    """Every part of a frame's time beyond the detector call is reported, each >= 0, and they add up to no more
    than the overhead (latency minus inference) of the same window."""
    from kp2d_ros.detector_node import OVERHEAD_PARTS

    diagnostics = detector.ros.subscribe(DiagnosticArray, "/diagnostics")
    overhead_key = "overhead mean (ms, latency minus inference)"

    def window_with_one_frame() -> DiagnosticArray | None:
        return next((m for m in reversed(diagnostics.snapshot())
                     if diagnostics_value(m, detector.name, "processed frames") == "1"), None)  # fmt: skip

    report = None
    for _ in range(3):  # a window may hold two frames (or none) when the publishing straddles a report
        detector.keypoints_for(detector.publish())
        time.sleep(2.5)  # two reports (1 Hz) after the frame
        report = window_with_one_frame()
        if report is not None:
            break
    assert report is not None, "no diagnostics window with exactly one processed frame"
    parts = {name: float(diagnostics_value(report, detector.name, f"overhead part mean (ms): {name}"))
             for name in OVERHEAD_PARTS}  # fmt: skip
    overhead = float(diagnostics_value(report, detector.name, overhead_key))
    assert all(value >= 0 for value in parts.values()), parts
    assert parts["matching"] > 0 and parts["publishing"] > 0, parts
    # The parts leave out only the detect() call's own work beyond the network (config, arrays to NumPy).
    assert sum(parts.values()) <= overhead + 0.03, (parts, overhead)  # 0.03: six values rounded to 0.01 ms


# --- latest-frame processing ----------------------------------------------------------------------------------


def test_the_finish_handoff_never_lets_a_detected_frame_wait_behind_another():
    """The detect thread hands a frame over only when the finish thread is done with the previous one."""
    from kp2d_ros.detector_node import FinishHandoff

    handoff = FinishHandoff()
    assert handoff.take(timeout=0.01) is None
    assert handoff.put("frame 1", timeout=0.01)
    assert not handoff.put("frame 2", timeout=0.05), "frame 1 is not taken yet"
    assert handoff.take(timeout=0.01) == "frame 1"
    assert not handoff.put("frame 2", timeout=0.05), "frame 1 is still being finished"
    handoff.done()
    assert handoff.put("frame 2", timeout=0.01) and handoff.take(timeout=0.01) == "frame 2"

    handed = threading.Event()  # a put waiting for the finish thread goes through as soon as it is done
    waiting = threading.Thread(target=lambda: handoff.put("frame 3", timeout=5.0) and handed.set())
    waiting.start()
    time.sleep(0.1)
    assert not handed.is_set()
    handoff.done()
    waiting.join(5.0)
    assert handed.is_set() and handoff.take(timeout=0.01) == "frame 3"


def test_a_burst_faster_than_inference_is_dropped_not_queued(detector):
    """30 frames, 20 per round trip of one frame (at most 5 ms apart): the node keeps only the newest pending
    frame, so it processes a few of them, always including the last one, and answers it about one inference
    later. (The round trip includes DDS both ways and conversion: at 320x240 with auto precision the detector
    call is under half of it, so 10 frames per round trip let about half the burst through.)"""
    at = detector.publish()
    start = time.monotonic()
    detector.keypoints_for(at)
    one_frame_s = time.monotonic() - start
    received_before = len(detector.keypoints.snapshot())

    burst = []
    for _ in range(30):
        burst.append(detector.publish())
        time.sleep(min(0.005, one_frame_s / 20))
    burst_end = time.monotonic()
    last = detector.keypoints_for(burst[-1])
    latency = detector.keypoints.arrivals[detector.keypoints.messages.index(last)] - burst_end
    new = detector.keypoints.snapshot()[received_before:]
    answered = [m for m in new if any(is_stamp(m.header.stamp, b) for b in burst)]
    assert len(answered) < len(burst) / 2, f"{len(answered)} of {len(burst)} burst frames processed: queued?"
    # Bounded: at most the frame in progress plus the newest one, not the whole burst (30 x one_frame_s).
    assert latency < 3 * one_frame_s + 2.0, f"last frame answered {latency:.2f} s after the burst ({one_frame_s=:.2f})"
    sequences = [m.sequence for m in answered]
    assert sequences == sorted(sequences)


# --- bad input ------------------------------------------------------------------------------------------------


def _image(width: int, height: int, encoding: str, step: int, data: bytes, at: float) -> Image:
    msg = Image(width=width, height=height, encoding=encoding, step=step)
    msg.header.stamp = stamp(at)
    msg.data = to_array("B", np.frombuffer(data, np.uint8))
    return msg


BAD_IMAGES = {
    "unsupported encoding": (lambda at: _image(4, 4, "yuv422", 8, bytes(32), at), "unsupported encoding 'yuv422'"),
    "zero size": (lambda at: _image(0, 0, "bgr8", 0, b"", at), "zero-size image"),
    "data shorter than step x height": (
        lambda at: _image(WIDTH, HEIGHT, "bgr8", WIDTH * 3, bytes(WIDTH * 3 * (HEIGHT - 1)), at),
        "fewer than step x height",
    ),
    "step smaller than a row": (
        lambda at: _image(WIDTH, HEIGHT, "rgb8", WIDTH, bytes(WIDTH * 3 * HEIGHT), at),
        f"step {WIDTH} is smaller than width x bytes per pixel",
    ),
    "huge image": (lambda at: _image(100_000, 100_000, "mono8", 100_000, bytes(16), at), "exceeds max_image_pixels"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_image_is_skipped_with_a_specific_warning_and_the_next_frame_is_processed(detector, case):
    make, warning = BAD_IMAGES[case]
    detector.publish_until_logged(make, warning)
    good = detector.publish()
    detector.keypoints_for(good)
    assert detector.process.process.poll() is None


def test_undecodable_compressed_image_is_skipped_and_a_valid_one_is_processed(detector):
    bad = CompressedImage(format="jpeg")
    bad.header.stamp = stamp(detector.next_stamp())
    bad.data = to_array("B", np.frombuffer(b"\xff\xd8 not a jpeg", np.uint8))
    for _ in range(5):  # best effort: resend if lost
        detector.compressed_pub.publish(bad)
        try:
            detector.process.wait_for_log("could not decode compressed image", timeout=PROCESS_TIMEOUT / 5)
            break
        except AssertionError:
            pass
    detector.process.wait_for_log("could not decode compressed image", timeout=1.0)
    good = CompressedImage(format="jpeg")
    at = detector.next_stamp()
    good.header.stamp = stamp(at)
    good.data = to_array("B", cv2.imencode(".jpg", detector.frames[2])[1])
    detector.compressed_pub.publish(good)
    msg = detector.keypoints_for(at)
    assert (msg.image_width, msg.image_height) == (WIDTH, HEIGHT) and len(msg.x) > 0


def test_a_backwards_stamp_resets_matching_and_tracks(detector):
    later = detector.publish()
    detector.keypoints_for(later)
    earlier = later - 100.0
    detector.publish(at=earlier)
    reset = detector.matches_for(earlier)
    assert len(reset.current_index) == 0 and stamp_seconds(reset.previous_stamp) == 0.0, "no previous after reset"
    assert np.all(field_array(detector.keypoints_for(earlier).track_length, np.uint32) == 1), "tracks restart"
    detector.process.wait_for_log("stamp went backwards", timeout=10.0)
    after = detector.publish(at=earlier + 1.0)
    assert is_stamp(detector.matches_for(after).previous_stamp, earlier)


@pytest.mark.parametrize("encoding", ["mono8", "mono16", "rgb8", "rgba8", "bgra8", "8UC1", "8UC3"])
def test_every_supported_encoding_is_processed(detector, encoding):
    from kp2d_ros.camera_sim import encode

    pixels, _ = encode(detector.frames[3], {"8UC1": "mono8", "8UC3": "bgr8"}.get(encoding, encoding))
    at = detector.publish(pixels, encoding=encoding)
    msg = detector.keypoints_for(at)
    assert (msg.image_width, msg.image_height) == (WIDTH, HEIGHT) and len(msg.x) > 0


# --- camera_info ----------------------------------------------------------------------------------------------


def _camera_info(at: float, k: list[float], d: list[float], model: str = "plumb_bob") -> CameraInfo:
    info = CameraInfo(width=WIDTH, height=HEIGHT, distortion_model=model)
    info.header.stamp = stamp(at)
    info.k = np.array(k, float)
    info.d = to_array("d", np.array(d, float))
    return info


def test_camera_info_gives_undistorted_normalized_coordinates(detector):
    k = [300.0, 0, 160.0, 0, 310.0, 120.0, 0, 0, 1]
    d = [-0.2, 0.05, 0.001, -0.001, 0.0]
    at = detector.next_stamp()
    info = _camera_info(at, k, d)
    # The node uses the newest CameraInfo received before the image (no message_filters here).
    for _ in range(20):
        detector.info_pub.publish(info)
        time.sleep(0.05)
    detector.publish(at=at)
    msg = detector.keypoints_for(at)
    points = points_of(msg)
    expected = cv2.undistortPoints(points.reshape(-1, 1, 2).astype(np.float64), np.reshape(k, (3, 3)), np.array(d))
    normalized = np.stack([field_array(msg.x_normalized, np.float32), field_array(msg.y_normalized, np.float32)], 1)
    np.testing.assert_allclose(normalized, expected.reshape(-1, 2), atol=1e-5)


def test_uncalibrated_camera_info_warns_and_gives_no_normalized_coordinates(detector):
    at = detector.next_stamp()
    for _ in range(20):
        detector.info_pub.publish(_camera_info(at, [0.0] * 9, []))
        time.sleep(0.05)
    detector.publish(at=at)
    msg = detector.keypoints_for(at)
    assert len(msg.x) > 0 and len(msg.x_normalized) == 0 and len(msg.y_normalized) == 0
    detector.process.wait_for_log("uncalibrated (K[0] == 0)", timeout=10.0)


# --- parameters -----------------------------------------------------------------------------------------------


def test_runtime_parameter_change_is_applied_and_an_invalid_one_rejected(detector):
    ros, name = detector.ros, detector.name
    # Parameter services answer while the worker runs inference (the executor is not blocked by it).
    assert ros.get_parameters(name, ["top_k"]) == [TOP_K]  # the client discovers the service first
    at = detector.publish()
    start = time.monotonic()
    assert ros.get_parameters(name, ["top_k"]) == [TOP_K]
    answered_after = time.monotonic() - start
    detector.keypoints_for(at)
    inference_done_after = time.monotonic() - start
    assert answered_after < inference_done_after, "get_parameters waited for the inference to finish"

    try:
        [result] = ros.set_parameters(name, {"top_k": 50})
        assert result.successful, result.reason
        msg = detector.keypoints_for(detector.publish())
        assert 0 < len(msg.x) <= 50

        rejected = {
            "matching.geometry": ("affine", "must be one of"),
            "top_k": (-5, ""),  # outside the declared range
            "score_threshold": ("high", ""),  # wrong type
            "model": ("/tmp/other.ckpt", "read-only"),
            "precision": ("fp32", "read-only"),
            "contrast": ("none", "read-only"),
        }
        for parameter, (value, reason) in rejected.items():
            [result] = ros.set_parameters(name, {parameter: value})
            assert not result.successful, f"{parameter}={value!r} accepted"
            assert reason in result.reason and result.reason, result.reason
        assert ros.get_parameters(name, ["top_k", "matching.geometry"]) == [50, "homography"]
        msg = detector.keypoints_for(detector.publish())
        assert 0 < len(msg.x) <= 50, "the node keeps running with the valid settings"
    finally:
        [result] = ros.set_parameters(name, {"top_k": TOP_K})
        assert result.successful


def test_parameter_change_log_names_the_parameters_as_ros2_param_set_takes_them(detector):
    ros, name = detector.ros, detector.name
    try:
        [result] = ros.set_parameters(name, {"matching.geometry": "fundamental"})
        assert result.successful, result.reason
        log = detector.process.wait_for_log("parameters changed: matching.geometry='fundamental'", 20)
        assert "{'geometry'" not in log  # not the internal field name
    finally:
        [result] = ros.set_parameters(name, {"matching.geometry": "homography"})
        assert result.successful, result.reason

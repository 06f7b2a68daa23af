"""The node's pure parts with real ROS messages (no DDS): image conversion and validation, message building
through the buffer protocol, track ids, normalised coordinates, camera_sim's ground truth."""

from __future__ import annotations

import array
import sys

import cv2
import numpy as np
import pytest
from ros_helpers import require_ros

require_ros()

from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from kp2d_ros import conversions  # noqa: E402
from kp2d_ros.camera_model import CameraInfoError, check_camera_info, normalized_coordinates  # noqa: E402
from kp2d_ros.camera_sim import PhotoCamera, camera_info_message, default_photo, encode, image_message  # noqa: E402
from kp2d_ros.conversions import ImageInputError, compressed_to_array, image_to_array, message_to_array  # noqa: E402
from kp2d_ros.messages import field_array, keypoints_message, matches_message, to_array  # noqa: E402
from kp2d_ros.tracks import TrackHistory, TrackIds, carry_tracks  # noqa: E402

RNG = np.random.default_rng(0)
BGR = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)


def header() -> Header:
    h = Header(frame_id="cam")
    h.stamp.sec, h.stamp.nanosec = 12, 345
    return h


# --- image conversion -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "expected_order"),
    [("bgr8", "bgr"), ("rgb8", "rgb"), ("bgra8", "bgr"), ("rgba8", "rgb"), ("mono8", "bgr"), ("mono16", "bgr")],
)
def test_image_round_trips_every_supported_encoding(encoding, expected_order):
    pixels, bytes_per_pixel = encode(BGR, encoding)
    converted = image_to_array(image_message(pixels, encoding, bytes_per_pixel, header()))
    assert converted.channel_order == expected_order
    if encoding == "mono16":  # stretched to the frame's [min, max]
        grey = cv2.cvtColor(BGR, cv2.COLOR_BGR2GRAY).astype(float)
        expected = np.round((grey - grey.min()) * 255 / (grey.max() - grey.min()))
        np.testing.assert_allclose(converted.pixels, expected, atol=1)
    else:
        np.testing.assert_array_equal(converted.pixels, pixels)
    assert converted.pixels.dtype == np.uint8


def test_8uc1_and_8uc3_are_grey_and_bgr():
    assert image_to_array(image_message(BGR, "8UC3", 3, header())).channel_order == "bgr"
    grey = cv2.cvtColor(BGR, cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(image_to_array(image_message(grey, "8UC1", 1, header())).pixels, grey)


def test_rows_padded_beyond_the_width_are_cropped():
    padded = np.zeros((6, 5 * 3 + 7), np.uint8)
    padded[:, :15] = BGR.reshape(6, 15)
    msg = Image(height=6, width=5, encoding="bgr8", step=22)
    msg.data = to_array("B", padded)
    np.testing.assert_array_equal(image_to_array(msg).pixels, BGR)


def test_big_endian_mono16_is_read_in_its_byte_order():
    values = np.arange(30, dtype=np.uint16).reshape(6, 5) * 1000
    msg = Image(height=6, width=5, encoding="mono16", step=10, is_bigendian=True)
    msg.data = to_array("B", values.astype(">u2").view(np.uint8))
    expected = np.round(values.astype(float) * 255 / values.max())
    np.testing.assert_allclose(image_to_array(msg).pixels, expected, atol=1)


class _NumPy2CvBridge:
    """cv_bridge's imgmsg_to_cv2 as it behaves with NumPy 2: big-endian frames fail inside it
    (``ndarray.newbyteorder`` is gone); other frames convert. Counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def imgmsg_to_cv2(self, msg, desired_encoding="passthrough"):
        self.calls += 1
        if msg.is_bigendian:
            raise AttributeError("'numpy.ndarray' object has no attribute 'newbyteorder'")
        dtype = np.uint16 if "16" in msg.encoding else np.uint8
        pixels = np.frombuffer(bytes(msg.data), dtype).reshape(msg.height, msg.width, -1)
        return pixels if "bgr" in msg.encoding else pixels[:, :, 0]


@pytest.mark.parametrize("encoding", ["mono16", "16UC1", "bgr8", "mono8"])
def test_big_endian_frames_do_not_go_through_cv_bridge(monkeypatch, encoding):
    bridge = _NumPy2CvBridge()
    monkeypatch.setattr(conversions, "_BRIDGE", bridge)
    channels = 3 if encoding == "bgr8" else 1
    sample = np.dtype(">u2") if "16" in encoding else np.dtype(np.uint8)
    values = (np.arange(6 * 5 * channels) * (1000 if sample.itemsize == 2 else 7) % 65536).astype(sample)
    msg = Image(height=6, width=5, encoding=encoding, step=5 * channels * sample.itemsize, is_bigendian=True)
    msg.data = to_array("B", values.view(np.uint8))
    pixels = image_to_array(msg).pixels
    expected = values.astype(np.uint16 if sample.itemsize == 2 else np.uint8).reshape(pixels.shape)
    if sample.itemsize == 2:  # stretched to 8 bits per frame
        expected = np.round((expected.astype(float) - expected.min()) * 255 / (expected.max() - expected.min()))
    np.testing.assert_allclose(pixels, expected, atol=1)
    assert bridge.calls == 0
    msg.is_bigendian = False  # a little-endian frame does use the bridge
    msg.data = to_array("B", values.astype(values.dtype.newbyteorder("<")).view(np.uint8))
    np.testing.assert_allclose(image_to_array(msg).pixels, expected, atol=1)
    assert bridge.calls == 1


@pytest.mark.parametrize(
    ("fields", "kind", "text"),
    [
        ({"encoding": "yuv422", "width": 2, "height": 2, "step": 4, "size": 8}, "encoding", "unsupported encoding"),
        ({"encoding": "bgr8", "width": 0, "height": 4, "step": 0, "size": 0}, "empty", "zero-size"),
        ({"encoding": "bgr8", "width": 4, "height": 4, "step": 6, "size": 64}, "step", "smaller than width"),
        ({"encoding": "mono16", "width": 4, "height": 4, "step": 9, "size": 64}, "step", "multiple of the 2-byte"),
        ({"encoding": "bgr8", "width": 4, "height": 4, "step": 12, "size": 47}, "data_size", "fewer than step x"),
        ({"encoding": "mono8", "width": 5000, "height": 5000, "step": 5000, "size": 1}, "too_large", "exceeds"),
    ],
)
def test_bad_image_raises_a_specific_error(fields, kind, text):
    msg = Image(encoding=fields["encoding"], width=fields["width"], height=fields["height"], step=fields["step"])
    msg.data = array.array("B", bytes(fields["size"]))
    with pytest.raises(ImageInputError, match=text) as error:
        image_to_array(msg, max_pixels=4096 * 4096)
    assert error.value.kind == kind


def test_compressed_image_decodes_and_garbage_is_rejected():
    ok, jpeg = cv2.imencode(".png", BGR)
    msg = CompressedImage(format="png")
    msg.data = to_array("B", jpeg)
    np.testing.assert_array_equal(compressed_to_array(msg).pixels, BGR)
    msg.data = array.array("B", b"not an image")
    with pytest.raises(ImageInputError, match="could not decode"):
        compressed_to_array(msg)
    with pytest.raises(ImageInputError, match="no data"):
        compressed_to_array(CompressedImage())


def test_message_to_array_takes_raw_and_compressed_and_bounds_the_detectors_pixels():
    raw = image_message(BGR, "bgr8", 3, header())
    ok, png = cv2.imencode(".png", BGR)
    compressed = CompressedImage(format="png")
    compressed.data = to_array("B", png)
    for msg in (raw, compressed):
        np.testing.assert_array_equal(message_to_array(msg, 100).pixels, BGR)

    class ScaledDetector:  # processes the image at 4x its size (as input_scale 2 would)
        def network_pixels(self, width: int, height: int) -> int:
            return 4 * width * height

    for msg in (raw, compressed):  # 30 image pixels fit 100, the 120 the detector would process do not
        with pytest.raises(ImageInputError):
            message_to_array(msg, 100, ScaledDetector())


# --- messages -------------------------------------------------------------------------------------------------


def test_keypoints_message_holds_the_arrays_in_order():
    n, d = 7, 4
    points = RNG.random((n, 2), dtype=np.float32) * 100
    scores = np.sort(RNG.random(n, dtype=np.float32))[::-1]
    descriptors = RNG.random((n, d), dtype=np.float32)
    ids = np.arange(n, dtype=np.uint64) + 2**40  # beyond float32/uint32: ids stay exact
    lengths = np.arange(n, dtype=np.uint32) + 1
    msg = keypoints_message(header(), 3, (640, 480), points, scores, ids, lengths, points / 100, descriptors)
    assert msg.header == header() and msg.sequence == 3 and (msg.image_width, msg.image_height) == (640, 480)
    assert isinstance(msg.x, array.array) and msg.x.typecode == "f"
    np.testing.assert_array_equal(field_array(msg.x, np.float32), points[:, 0])
    np.testing.assert_array_equal(field_array(msg.y, np.float32), points[:, 1])
    np.testing.assert_array_equal(field_array(msg.score, np.float32), scores)
    np.testing.assert_array_equal(field_array(msg.track_id, np.uint64), ids)
    np.testing.assert_array_equal(field_array(msg.track_length, np.uint32), lengths)
    np.testing.assert_allclose(field_array(msg.x_normalized, np.float32), points[:, 0] / 100)
    assert msg.descriptor_size == d
    np.testing.assert_array_equal(field_array(msg.descriptors, np.float32).reshape(n, d), descriptors)


def test_keypoints_message_without_optional_parts_leaves_them_empty():
    msg = keypoints_message(header(), 1, (4, 4), np.zeros((0, 2)), np.zeros(0), np.zeros(0), np.zeros(0))
    assert len(msg.x) == len(msg.x_normalized) == len(msg.descriptors) == msg.descriptor_size == 0


def test_matches_message_reports_inliers_and_model():
    previous_index, current_index = np.array([0, 2, 5]), np.array([1, 0, 3])
    previous_points, current_points = RNG.random((3, 2)), RNG.random((3, 2))
    distance = np.array([0.1, 0.2, 0.3])
    points = (previous_points, current_points)
    unchecked = matches_message(header(), None, previous_index, current_index, distance, *points)
    assert unchecked.geometry_model == "none" and unchecked.num_inliers == 3 and not unchecked.model_found
    assert list(unchecked.inlier) == [1, 1, 1]
    model = np.arange(9.0).reshape(3, 3)
    stamp = header().stamp
    checked = matches_message(
        header(), stamp, previous_index, current_index, distance, previous_points, current_points,
        "homography", np.array([True, False, True]), model,
    )  # fmt: skip
    assert checked.previous_stamp == stamp
    assert list(checked.inlier) == [1, 0, 1] and checked.num_inliers == 2 and checked.model_found
    np.testing.assert_array_equal(checked.model, model.reshape(9))
    np.testing.assert_array_equal(field_array(checked.previous_index, np.uint32), previous_index)
    np.testing.assert_allclose(field_array(checked.current_y, np.float32), current_points[:, 1].astype(np.float32))


# --- tracks ---------------------------------------------------------------------------------------------------


def test_matched_points_keep_their_track_id_and_the_rest_get_new_ones():
    first, next_id = carry_tracks(None, 3, np.zeros(0, int), np.zeros(0, int), next_id=1)
    assert list(first.ids) == [1, 2, 3] and list(first.lengths) == [1, 1, 1] and next_id == 4
    second, next_id = carry_tracks(first, 4, np.array([2, 0]), np.array([0, 3]), next_id)
    assert list(second.ids) == [3, 4, 5, 1] and list(second.lengths) == [2, 1, 1, 2] and next_id == 6
    third, _ = carry_tracks(second, 1, np.array([3]), np.array([0]), next_id)
    assert list(third.ids) == [1] and list(third.lengths) == [3]


def test_track_history_joins_positions_of_tracks_alive_now():
    history = TrackHistory(3)
    history.add(np.array([1, 2], np.uint64), np.array([[0, 0], [10, 10]], np.float32))
    history.add(np.array([2, 3], np.uint64), np.array([[11, 11], [5, 5]], np.float32))
    history.add(np.array([2], np.uint64), np.array([[12, 12]], np.float32))
    segments = [s.tolist() for s in history.segments()]
    assert segments == [[[10, 10], [11, 11]], [[11, 11], [12, 12]]]
    assert isinstance(TrackIds(np.zeros(0), np.zeros(0)), TrackIds)


# --- camera_info ----------------------------------------------------------------------------------------------


def _info(k, d, model="plumb_bob", size=(640, 480)) -> CameraInfo:
    info = CameraInfo(width=size[0], height=size[1], distortion_model=model)
    info.k = np.array(k, float)
    info.d = array.array("d", d)
    return info


K = [500.0, 0, 320, 0, 510, 240, 0, 0, 1]
POINTS = np.array([[0, 0], [320, 240], [639, 479], [100, 400]], np.float32)


# Pixels over the whole 640 x 480 image, corners included (the strongest distortion).
GRID = np.stack(np.meshgrid(np.linspace(0, 639, 9), np.linspace(0, 479, 7)), -1).reshape(-1, 2).astype(np.float32)


@pytest.mark.parametrize(
    ("model", "d"),
    [
        ("plumb_bob", [-0.3, 0.1, 0.001, 0.002, 0.0]),
        ("rational_polynomial", [-0.3, 0.1, 0, 0, 0, 0.01, 0.02, 0.0]),
        ("equidistant", [0.1, -0.05, 0.01, -0.002]),
    ],
)
def test_normalized_coordinates_undo_the_distortion(model, d):
    """Undistort with the installed OpenCV (4.5, 4.6 or 5: camera_model picks the call), distort again with
    OpenCV's forward model: the pixels come back to 0.05 px. The undistortion converges to ~1e-10 (criteria);
    what is left is the float32 output (relative 6e-8 of |x| <= 1.1, times f = 510 px: < 1e-4 px)."""
    k, coefficients, distortion = check_camera_info(_info(K, d, model), (640, 480))
    normalized = normalized_coordinates(GRID, k, coefficients, distortion)
    assert normalized.dtype == np.float32 and normalized.shape == GRID.shape
    rays = np.concatenate([normalized, np.ones((len(normalized), 1), np.float32)], 1).astype(np.float64)
    camera = np.reshape(K, (3, 3))
    if model == "equidistant":
        pixels, _ = cv2.fisheye.projectPoints(rays[:, None], np.zeros(3), np.zeros(3), camera, np.array(d))
    else:
        pixels, _ = cv2.projectPoints(rays, np.zeros(3), np.zeros(3), camera, np.array(d))
    np.testing.assert_allclose(pixels.reshape(-1, 2), GRID, rtol=0, atol=0.05)
    # The distortion is not negligible: without undoing it the corners would be tens of pixels off.
    pinhole = (GRID - [320, 240]) / [500, 510]
    assert np.abs(normalized - pinhole).max() * 500 > 10


def test_no_distortion_is_the_pinhole_model():
    k, d, model = check_camera_info(_info(K, [0.0] * 5), (640, 480))
    normalized = normalized_coordinates(POINTS, k, d, model)
    np.testing.assert_allclose(normalized, (POINTS - [320, 240]) / [500, 510], atol=1e-6)


@pytest.mark.parametrize(
    ("info", "kind"),
    [
        (_info([0.0] * 9, []), "uncalibrated"),
        (_info(K, [0.0] * 5, size=(320, 240)), "size"),
        (_info(K, [0.1, 0.0, 0.0, 0.0], "kannala_brandt"), "distortion_model"),
        (_info(K, [0.1] * 6, "plumb_bob"), "distortion_model"),
    ],
)
def test_unusable_camera_info_is_refused_with_a_reason(info, kind):
    with pytest.raises(CameraInfoError) as error:
        check_camera_info(info, (640, 480))
    assert error.value.kind == kind


# --- camera_sim -----------------------------------------------------------------------------------------------


def test_camera_sim_ground_truth_maps_one_frame_onto_the_next():
    """Warping frame t by the published previous-to-current homography reproduces frame t + 1."""
    camera = PhotoCamera(cv2.imread(str(default_photo())), (320, 240), speed=5.0)
    h0, h1 = camera.reference_to_frame(10), camera.reference_to_frame(11)
    frame0, frame1 = camera.render(h0), camera.render(h1)
    previous_to_current = h1 @ np.linalg.inv(h0)
    warped = cv2.warpPerspective(frame0, previous_to_current, (320, 240))
    inner = (slice(20, -20), slice(20, -20))
    error = np.abs(warped[inner].astype(float) - frame1[inner].astype(float)).mean()
    moved = np.abs(frame0[inner].astype(float) - frame1[inner].astype(float)).mean()
    assert error < 4.0 and moved > 3 * error, f"{error=:.2f} {moved=:.2f}"


def test_camera_sim_camera_info_is_a_calibrated_pinhole():
    info = camera_info_message(640, 480, header())
    k, d, model = check_camera_info(info, (640, 480))
    assert k[0, 0] == 640 and k[0, 2] == 319.5 and not d.any() and model == "plumb_bob"
    assert sys.byteorder == "little" or image_message(BGR, "bgr8", 3, header()).is_bigendian

"""``ros2 run kp2d_ros extract``: real rosbag2 files (MCAP and sqlite3, written with rosbags from camera_sim frames,
messages serialised by rclpy) in, a real bag and .npz out, compared with what the live ``detector`` node publishes
for the same messages fed one at a time (reliable QoS, each output awaited: no frame dropped).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from bag_helpers import (
    CAMERA_INFO_TOPIC,
    IMAGE_TOPIC,
    camera_frames,
    image_messages,
    log_time,
    read_bag,
    write_bag,
    write_camera_bag,
)
from ros_helpers import DEFAULT_MODEL, INSTALL_BIN, REPO_ROOT, NodeProcess, RosTestNode, require_ros, unique_namespace

pytestmark = pytest.mark.integration
require_ros()

from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from kp2d_model.frame_arrays import FrameArrays  # noqa: E402
from kp2d_ros import extract  # noqa: E402
from kp2d_ros.messages import field_array  # noqa: E402
from kp2d_ros_msgs.msg import Keypoints, Matches  # noqa: E402

FRAMES = 5
SIZE = (160, 120)
# The node's parameters for both the live node and the extractor (those that change the frame path).
PARAMETERS = {"top_k": 150, "device": "cpu", "matching.geometry": "homography"}
KEYPOINTS_TOPIC, MATCHES_TOPIC = "/kp2d_detector/keypoints", "/kp2d_detector/matches"
FEATURES_TOPIC = "/kp2d_detector/features"
TIMEOUT = 120.0  # seconds for one frame through the live node (2 shared CPU cores)


@pytest.fixture(scope="module")
def model_parameters(request) -> dict[str, str]:
    """The bundled default model; without it, the original code's fixture checkpoint (skips where absent)."""
    if DEFAULT_MODEL.is_file():
        return {}
    return {"model": str(request.getfixturevalue("reference_dir") / "v4_reference.ckpt")}


def param_args(values: dict) -> list[str]:
    return [arg for name, value in values.items() for arg in ("--param", f"{name}={json.dumps(value)}")]


@pytest.fixture(scope="module")
def camera_bags(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("bags")
    return {storage: write_camera_bag(folder / storage, storage, FRAMES, SIZE) for storage in ("mcap", "sqlite3")}


def run_extract(*args: str) -> tuple[int, str]:
    """``extract.main`` in this process (as ros2 run calls it) -> (exit code, what it printed on stderr)."""
    import contextlib
    import io

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = extract.main([str(a) for a in args])
    return code, stderr.getvalue()


@pytest.fixture(scope="module")
def extracted(camera_bags, model_parameters, tmp_path_factory) -> dict:
    """Both bags extracted: MCAP by the installed executable (ros2 run's path) with camera_info, sqlite3 in-process
    (ROS syntax for the parameters) into a sqlite3 bag, without; -> storage -> (output bag, npz, stderr)."""
    folder = tmp_path_factory.mktemp("extracted")
    values = PARAMETERS | model_parameters
    results = {}
    out, npz = folder / "mcap_out", folder / "mcap.npz"
    done = subprocess.run(
        [str(INSTALL_BIN / "extract"), "--bag", str(camera_bags["mcap"].path), "--image-topic", IMAGE_TOPIC,
         "--camera-info-topic", CAMERA_INFO_TOPIC, "--out", str(out), "--npz", str(npz), "--features",
         *param_args(values)],
        capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results["mcap"] = (out, npz, done.stderr)
    out, npz = folder / "sqlite3_out", folder / "sqlite3.npz"
    ros_args = [arg for name, value in values.items() for arg in ("-p", f"{name}:={json.dumps(value)}")]
    code, stderr = run_extract(
        "--bag", camera_bags["sqlite3"].path, "--image-topic", IMAGE_TOPIC.lstrip("/"), "--out", out,
        "--storage", "sqlite3", "--npz", npz, "--ros-args", *ros_args,
    )  # fmt: skip
    assert code == 0, stderr
    results["sqlite3"] = (out, npz, stderr)
    return results


@pytest.fixture(scope="module")
def live_outputs(camera_bags, model_parameters, tmp_path_factory) -> list[tuple[Keypoints, Matches]]:
    """The live detector node's (Keypoints, Matches) for the bag's images, fed one at a time over reliable QoS.

    Without camera_info: a best-effort CameraInfo subscription drops what arrives before it has matched the
    publisher, and nothing tells the test when it has (measured: up to seconds after the image subscription), so
    the first frames' intrinsics would be a race. The extractor's camera_info path is checked against the library
    instead (test_normalized_coordinates_come_from_the_bags_camera_info)."""
    namespace = unique_namespace("extract_live")
    values = PARAMETERS | model_parameters | {"image_qos": "reliable"}
    ros_args = ["-r", f"__ns:={namespace}"]
    for name, value in values.items():
        ros_args += ["-p", f"{name}:={json.dumps(value)}"]
    process = NodeProcess("detector", ros_args, tmp_path_factory.mktemp("live"))
    ros = RosTestNode()
    try:
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        keypoints = ros.subscribe(Keypoints, f"{namespace}/kp2d_detector/keypoints", reliable)
        matches = ros.subscribe(Matches, f"{namespace}/kp2d_detector/matches", reliable)
        image_pub = ros.publisher(Image, f"{namespace}/image", reliable)
        ros.wait_for_publishers(f"{namespace}/kp2d_detector/keypoints", timeout=TIMEOUT)
        ros.wait_for_publishers(f"{namespace}/kp2d_detector/matches", timeout=TIMEOUT)
        ros.wait_for_subscribers(image_pub, timeout=TIMEOUT)
        outputs = []
        for index, image in enumerate(camera_bags["sqlite3"].images):
            image_pub.publish(image)  # the next one only after this one's outputs: the node drops nothing
            same = lambda m, s=image.header.stamp: m.header.stamp == s  # noqa: E731
            outputs.append((keypoints.wait_for(same, TIMEOUT, f"keypoints of image {index}"),
                            matches.wait_for(same, TIMEOUT, f"matches of image {index}")))  # fmt: skip
        assert len(keypoints.snapshot()) == len(matches.snapshot()) == FRAMES, "one output per image, none dropped"
        return outputs
    finally:
        ros.close()
        code = process.stop()
        assert code == 0, process.log()[-3000:]


def keypoint_arrays(msg: Keypoints) -> dict[str, np.ndarray]:
    n = len(msg.x)
    return {
        "points": np.stack([field_array(msg.x, np.float32), field_array(msg.y, np.float32)], axis=1),
        "scores": field_array(msg.score, np.float32),
        "track_ids": field_array(msg.track_id, np.uint64),
        "track_lengths": field_array(msg.track_length, np.uint32),
        "normalized": np.stack([field_array(msg.x_normalized, np.float32),
                                field_array(msg.y_normalized, np.float32)], axis=1),  # fmt: skip
        "descriptors": field_array(msg.descriptors, np.float32).reshape(n, -1),
    }


def match_arrays(msg: Matches) -> dict[str, np.ndarray]:
    return {
        "previous_index": field_array(msg.previous_index, np.uint32),
        "current_index": field_array(msg.current_index, np.uint32),
        "distance": field_array(msg.distance, np.float32),
        "inlier": field_array(msg.inlier, np.uint8),
        "model": np.asarray(msg.model, np.float64),
    }


# float32 rounding of the same arithmetic in another process (thread count, kernel choice): a few ulps.
ATOL = {"points": 1e-3, "scores": 1e-5, "normalized": 1e-5, "descriptors": 1e-5, "distance": 1e-5, "model": 1e-6}


def assert_same_output(bag_keypoints: Keypoints, bag_matches: Matches, live_keypoints: Keypoints,
                       live_matches: Matches, label: str) -> None:  # fmt: skip
    assert bag_keypoints.header == live_keypoints.header, label
    assert bag_keypoints.sequence == live_keypoints.sequence, label
    assert (bag_keypoints.image_width, bag_keypoints.image_height) == SIZE
    for name, (ours, theirs) in {
        **{k: (v, keypoint_arrays(live_keypoints)[k]) for k, v in keypoint_arrays(bag_keypoints).items()},
        **{k: (v, match_arrays(live_matches)[k]) for k, v in match_arrays(bag_matches).items()},
    }.items():
        assert ours.shape == theirs.shape, f"{label} {name}: {ours.shape} vs {theirs.shape}"
        if name in ATOL:
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=ATOL[name], err_msg=f"{label} {name}")
        else:
            np.testing.assert_array_equal(ours, theirs, err_msg=f"{label} {name}")
    assert bag_matches.header == live_matches.header and bag_matches.previous_stamp == live_matches.previous_stamp
    assert (bag_matches.geometry_model, bag_matches.model_found, bag_matches.num_inliers) == (
        live_matches.geometry_model, live_matches.model_found, live_matches.num_inliers), label


# --- the extracted bag ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_one_keypoints_and_one_matches_per_image_with_the_image_stamps(storage, camera_bags, extracted):
    out, _, stderr = extracted[storage]
    assert f"{FRAMES} images" in stderr and f"{FRAMES} frames written" in stderr, stderr
    assert not list(out.parent.glob("*.partial")), "no partial output left"
    back = read_bag(out)
    assert sorted(back) == sorted([KEYPOINTS_TOPIC, MATCHES_TOPIC] + ([FEATURES_TOPIC] if storage == "mcap" else []))
    images = camera_bags[storage].images
    for topic in (KEYPOINTS_TOPIC, MATCHES_TOPIC):
        assert len(back[topic]) == len(images), topic
        for (logged, msg), image in zip(back[topic], images, strict=True):
            assert msg.header == image.header
            assert logged == log_time(image), "log time = the image's log time in the input bag"
    pairs = zip(back[KEYPOINTS_TOPIC], back[MATCHES_TOPIC], strict=True)
    for index, ((_, keypoints), (_, matches)) in enumerate(pairs):
        assert keypoints.sequence == index + 1
        assert 0 < len(keypoints.x) <= PARAMETERS["top_k"]
        assert len(keypoints.x_normalized) == (len(keypoints.x) if storage == "mcap" else 0), "camera_info if given"
        assert matches.geometry_model == "homography"
        if index == 0:
            assert len(matches.current_index) == 0 and matches.previous_stamp.sec == 0
        else:
            assert matches.previous_stamp == images[index - 1].header.stamp
            assert matches.num_inliers > 10 and matches.model_found


def test_extracted_bag_equals_what_the_live_node_publishes_for_the_same_frames(extracted, live_outputs):
    back = read_bag(extracted["sqlite3"][0])
    rows = zip(back[KEYPOINTS_TOPIC], back[MATCHES_TOPIC], live_outputs, strict=True)
    for index, ((_, keypoints), (_, matches), (live_keypoints, live_matches)) in enumerate(rows):
        assert_same_output(keypoints, matches, live_keypoints, live_matches, f"frame {index}")


def test_mcap_and_sqlite3_inputs_give_the_same_output_but_for_camera_info(extracted):
    """The MCAP run (installed executable, camera_info) and the sqlite3 run (in-process, none) agree on everything
    but the normalised coordinates."""
    mcap, sqlite3 = (read_bag(extracted[s][0]) for s in ("mcap", "sqlite3"))
    for (_, ours), (_, theirs) in zip(mcap[MATCHES_TOPIC], sqlite3[MATCHES_TOPIC], strict=True):
        assert ours == theirs
    for (_, ours), (_, theirs) in zip(mcap[KEYPOINTS_TOPIC], sqlite3[KEYPOINTS_TOPIC], strict=True):
        assert len(ours.x_normalized) == len(ours.x) and len(theirs.x_normalized) == 0
        ours.x_normalized, ours.y_normalized = theirs.x_normalized, theirs.y_normalized
        assert ours == theirs


def test_normalized_coordinates_come_from_the_bags_camera_info(camera_bags, extracted):
    from kp2d_model.camera import normalized_coordinates
    from kp2d_ros.camera_model import check_camera_info

    back = read_bag(extracted["mcap"][0])
    for (_, keypoints), info in zip(back[KEYPOINTS_TOPIC], camera_bags["mcap"].infos, strict=True):
        arrays = keypoint_arrays(keypoints)
        expected = normalized_coordinates(arrays["points"], check_camera_info(info, SIZE))
        np.testing.assert_allclose(arrays["normalized"], expected, rtol=1e-6, atol=1e-6)  # float32 in the message


def test_features_are_the_tracked_keypoints_in_the_vins_layout(extracted):
    """--features: as the node's ~/features, a PointCloud per frame with tracked keypoints (none for the first
    frame): the keypoints with track_length >= 2, their normalised (x, y, 1), ids and pixels."""
    back = read_bag(extracted["mcap"][0])
    keypoints = {(msg.header.stamp.sec, msg.header.stamp.nanosec): msg for _, msg in back[KEYPOINTS_TOPIC]}
    features = back[FEATURES_TOPIC]
    assert len(features) == FRAMES - 1
    for _, cloud in features:
        stamp = (cloud.header.stamp.sec, cloud.header.stamp.nanosec)
        assert stamp != min(keypoints), "no features for the first frame"
        source = keypoint_arrays(keypoints[stamp])
        tracked = source["track_lengths"] >= 2
        channels = {channel.name: np.asarray(channel.values) for channel in cloud.channels}
        assert list(channels) == ["id", "camera_id", "u", "v", "velocity_x", "velocity_y"]
        np.testing.assert_array_equal(channels["id"], source["track_ids"][tracked] % (1 << 24))
        np.testing.assert_array_equal(channels["u"], source["points"][tracked, 0])
        np.testing.assert_array_equal(channels["v"], source["points"][tracked, 1])
        xyz = np.array([[p.x, p.y, p.z] for p in cloud.points], np.float32)
        np.testing.assert_allclose(xyz[:, :2], source["normalized"][tracked], atol=1e-6)
        assert np.all(xyz[:, 2] == 1.0)


def test_output_bag_declares_the_message_definitions_and_rosidl_type_hashes(extracted):
    """Readable without kp2d_ros_msgs: the definitions stored in the bag are enough for rosbags to decode it, and
    the type hashes are rosidl's (from the installed .json type descriptions)."""
    from ament_index_python.packages import get_package_share_directory
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    for storage in ("mcap", "sqlite3"):
        expected = read_bag(extracted[storage][0])
        with Reader(extracted[storage][0]) as reader:
            store = get_typestore(Stores.EMPTY)
            for connection in reader.connections:
                package, _, name = connection.msgtype.split("/")
                description = Path(get_package_share_directory(package)) / "msg" / f"{name}.json"
                rosidl_hash = json.loads(description.read_text())["type_hashes"][0]["hash_string"]
                assert connection.digest == rosidl_hash, connection.msgtype
                store.register(get_types_from_msg(connection.msgdef.data, connection.msgtype))
            decoded = [store.deserialize_cdr(raw, c.msgtype) for c, _, raw in reader.messages()
                       if c.topic == KEYPOINTS_TOPIC]  # fmt: skip
        assert len(decoded) == FRAMES
        for ours, (_, theirs) in zip(decoded, expected[KEYPOINTS_TOPIC], strict=True):
            assert ours.header.stamp.nanosec == theirs.header.stamp.nanosec and ours.sequence == theirs.sequence
            np.testing.assert_array_equal(ours.x, field_array(theirs.x, np.float32))
            np.testing.assert_array_equal(ours.track_id, field_array(theirs.track_id, np.uint64))


def test_npz_holds_the_same_frames_as_the_bag(extracted):
    out, npz, _ = extracted["mcap"]
    back = read_bag(out)
    arrays = FrameArrays(npz)
    assert len(arrays) == FRAMES
    assert arrays["keypoint_offsets"][-1] == len(arrays["points"]) == len(arrays["track_ids"])
    pairs = zip(back[KEYPOINTS_TOPIC], back[MATCHES_TOPIC], strict=True)
    for index, ((_, keypoints), (_, matches)) in enumerate(pairs):
        frame = arrays.frame(index)
        expected = keypoint_arrays(keypoints)
        stamp = keypoints.header.stamp.sec * 1_000_000_000 + keypoints.header.stamp.nanosec
        assert frame["stamp_ns"] == stamp
        np.testing.assert_array_equal(frame["points"], expected["points"])
        np.testing.assert_array_equal(frame["scores"], expected["scores"])
        np.testing.assert_array_equal(frame["track_ids"], expected["track_ids"])
        np.testing.assert_array_equal(frame["track_lengths"], expected["track_lengths"])
        np.testing.assert_array_equal(frame["descriptors"], expected["descriptors"])
        np.testing.assert_allclose(frame["normalized"], expected["normalized"], atol=1e-6)  # float32 in the message
        np.testing.assert_array_equal(frame["match_previous_index"], field_array(matches.previous_index, np.uint32))
        np.testing.assert_array_equal(frame["match_current_index"], field_array(matches.current_index, np.uint32))
        np.testing.assert_array_equal(frame["match_inlier"], field_array(matches.inlier, np.uint8).astype(bool))
        if index:
            previous = arrays.frame(index - 1)
            assert frame["previous_stamp_ns"] == previous["stamp_ns"]
            # A carried track: the matched previous keypoint has the same id (frame-local indices).
            inlier = frame["match_inlier"]
            np.testing.assert_array_equal(frame["track_ids"][frame["match_current_index"][inlier]],
                                          previous["track_ids"][frame["match_previous_index"][inlier]])  # fmt: skip
        else:
            assert frame["previous_stamp_ns"] == -1


# --- bad input -----------------------------------------------------------------------------------------------


def test_missing_bag_is_a_one_line_usage_error(tmp_path):
    code, stderr = run_extract("--bag", tmp_path / "nothing", "--image-topic", IMAGE_TOPIC, "--out", tmp_path / "o")
    assert code == 2 and stderr.strip().count("\n") == 0, stderr
    assert "does not exist" in stderr


def test_missing_topic_lists_the_bags_image_topics(camera_bags, tmp_path):
    code, stderr = run_extract("--bag", camera_bags["mcap"].path, "--image-topic", "/camera/image_rect",
                               "--out", tmp_path / "o")  # fmt: skip
    assert code == 2 and stderr.strip().count("\n") == 0, stderr
    assert "/camera/image_rect" in stderr and IMAGE_TOPIC in stderr, stderr
    assert not (tmp_path / "o").exists()


def test_topic_of_the_wrong_type_is_refused(camera_bags, tmp_path):
    code, stderr = run_extract("--bag", camera_bags["sqlite3"].path, "--image-topic", CAMERA_INFO_TOPIC,
                               "--out", tmp_path / "o")  # fmt: skip
    assert code == 2 and "sensor_msgs/msg/CameraInfo" in stderr and "expected" in stderr, stderr
    code, stderr = run_extract("--bag", camera_bags["sqlite3"].path, "--image-topic", IMAGE_TOPIC,
                               "--camera-info-topic", IMAGE_TOPIC, "--out", tmp_path / "o")  # fmt: skip
    assert code == 2 and "--camera-info-topic" in stderr, stderr


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_empty_bag_is_a_usage_error_and_writes_nothing(storage, tmp_path):
    empty = write_bag(tmp_path / "empty", storage, {IMAGE_TOPIC: []})
    code, stderr = run_extract("--bag", empty, "--image-topic", IMAGE_TOPIC, "--out", tmp_path / "o",
                               "--param", "device=cpu")  # fmt: skip
    assert code == 2 and "no messages" in stderr, stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()
    no_topics = write_bag(tmp_path / "no_topics", storage, {})
    code, stderr = run_extract("--bag", no_topics, "--image-topic", IMAGE_TOPIC, "--out", tmp_path / "o")
    assert code == 2 and "no topics" in stderr, stderr


def test_corrupt_and_unsupported_frames_are_skipped_and_counted(model_parameters, tmp_path):
    """A truncated CDR message and an unsupported encoding among good frames: the good ones are all written."""
    good = image_messages(camera_frames(3, SIZE))
    bad_encoding = image_messages(camera_frames(1, SIZE))[0]
    bad_encoding.encoding = "yuv422"
    bad_encoding.header.stamp.sec += 1
    from rclpy.serialization import serialize_message

    truncated = serialize_message(good[1])[:200]
    entries = [("sensor_msgs/msg/Image", log_time(good[0]), good[0]),
               ("sensor_msgs/msg/Image", log_time(good[0]) + 1, truncated),
               ("sensor_msgs/msg/Image", log_time(good[1]), good[1]),
               ("sensor_msgs/msg/Image", log_time(good[1]) + 1, bad_encoding),
               ("sensor_msgs/msg/Image", log_time(good[2]), good[2])]  # fmt: skip
    bag = write_bag(tmp_path / "bad", "mcap", {IMAGE_TOPIC: entries})
    out = tmp_path / "out"
    code, stderr = run_extract("--bag", bag, "--image-topic", IMAGE_TOPIC, "--out", out, "--npz", tmp_path / "o.npz",
                               *param_args(PARAMETERS | model_parameters), "--quiet")  # fmt: skip
    assert code == 0, stderr
    assert "5 images" in stderr and "3 frames written" in stderr and "2 skipped" in stderr, stderr
    assert "unreadable_message: 1" in stderr and "image:encoding: 1" in stderr, stderr
    back = read_bag(out)
    assert [m.header.stamp for _, m in back[KEYPOINTS_TOPIC]] == [m.header.stamp for m in good]
    assert [m.sequence for _, m in back[KEYPOINTS_TOPIC]] == [1, 2, 3]
    assert len(FrameArrays(tmp_path / "o.npz")) == 3


def test_invalid_parameters_and_existing_output_are_usage_errors(camera_bags, tmp_path):
    base = ["--bag", camera_bags["mcap"].path, "--image-topic", IMAGE_TOPIC]
    not_yaml, not_params = tmp_path / "a.yaml", tmp_path / "b.yaml"
    not_yaml.write_text("top_k: [1, 2\n")
    not_params.write_text("top_k: 5\n")
    for extra, expected in (
        (["--out", tmp_path / "o", "--param", "top_k=0"], "top_k"),
        (["--out", tmp_path / "o", "--param", "top_k=many"], "top_k"),
        (["--out", tmp_path / "o", "--param", "matching.geometry=affine"], "matching.geometry"),
        (["--out", tmp_path / "o", "--param", "no_such_parameter=1"], "no_such_parameter"),
        (["--out", tmp_path / "o", "--params-file", tmp_path / "missing.yaml"], "missing.yaml"),
        (["--out", tmp_path / "o", "--params-file", not_yaml], "not YAML"),
        (["--out", tmp_path / "o", "--params-file", not_params], "not a ROS parameters file"),
        (["--out", camera_bags["sqlite3"].path], "exists"),
        ([], "--out"),
        (["--out", tmp_path / "o", "--features"], "--camera-info-topic"),
    ):
        code, stderr = run_extract(*base, *extra)
        assert code == 2 and expected in stderr and stderr.strip().count("\n") == 0, (extra, stderr)


def test_params_files_of_the_node_apply_in_order(camera_bags, model_parameters, tmp_path):
    params = tmp_path / "params.yaml"
    model = f"    model: {json.dumps(model_parameters['model'])}\n" if model_parameters else ""
    params.write_text(f"/**:\n  ros__parameters:\n    top_k: 20\n    device: cpu\n    publish_descriptors: false\n"
                      f"{model}")
    code, stderr = run_extract("--bag", camera_bags["mcap"].path, "--image-topic", IMAGE_TOPIC, "--params-file",
                               REPO_ROOT / "config" / "detector.yaml", "--params-file", params,
                               "--npz", tmp_path / "o.npz", "--quiet")  # fmt: skip
    assert code == 0, stderr
    arrays = FrameArrays(tmp_path / "o.npz")
    assert np.all(np.diff(arrays["keypoint_offsets"]) <= 20) and "descriptors" not in arrays.arrays
    assert "normalized" not in arrays.arrays, "no camera_info topic given"


def test_interrupt_leaves_no_partial_output(camera_bags, model_parameters, tmp_path, monkeypatch):
    """Ctrl-C (KeyboardInterrupt) in the middle of the frames: exit 130, neither OUT nor OUT.partial remains."""
    real_build = extract.build_detector
    calls = {"n": 0}

    class InterruptingDetector:
        """The real detector; the third frame gets a KeyboardInterrupt, as Ctrl-C during inference would."""

        def __init__(self, detector):
            self._detector = detector

        def __getattr__(self, name):
            return getattr(self._detector, name)

        def __call__(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
            return self._detector(*args, **kwargs)

    monkeypatch.setattr(extract, "build_detector", lambda parameters: InterruptingDetector(real_build(parameters)))
    out, npz = tmp_path / "o", tmp_path / "o.npz"
    code, stderr = run_extract("--bag", camera_bags["mcap"].path, "--image-topic", IMAGE_TOPIC, "--out", out,
                               "--npz", npz, *param_args(PARAMETERS | model_parameters), "--quiet")  # fmt: skip
    assert code == 130 and "interrupted" in stderr, stderr
    assert calls["n"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "no output, no partial output"


def test_roi_and_mask_parameters_of_the_node_apply(camera_bags, model_parameters, tmp_path):
    code, stderr = run_extract("--bag", camera_bags["mcap"].path, "--image-topic", IMAGE_TOPIC, "--npz",
                               tmp_path / "roi.npz", "--param", "roi=[0, 0, 80, 60]",
                               *param_args(PARAMETERS | model_parameters), "--quiet")  # fmt: skip
    assert code == 0, stderr
    points = FrameArrays(tmp_path / "roi.npz")["points"]
    assert len(points) and np.all(np.round(points) < [80, 60]), "keypoints only inside the roi"
    code, stderr = run_extract("--bag", camera_bags["mcap"].path, "--image-topic", IMAGE_TOPIC, "--npz",
                               tmp_path / "mask.npz", "--param", f"mask={tmp_path / 'no_mask.png'}")  # fmt: skip
    assert code == 2 and "no_mask.png" in stderr and stderr.strip().count("\n") == 0, stderr
    assert not (tmp_path / "mask.npz").exists()


def test_compressed_image_topic_is_extracted(model_parameters, tmp_path):
    import cv2
    from sensor_msgs.msg import CompressedImage

    from kp2d_ros.messages import to_array

    messages = []
    for image in image_messages(camera_frames(3, SIZE)):
        ok, jpeg = cv2.imencode(".jpg", np.frombuffer(image.data, np.uint8).reshape(SIZE[1], SIZE[0], 3))
        assert ok
        msg = CompressedImage(header=image.header, format="jpeg")
        msg.data = to_array("B", jpeg)
        messages.append(msg)
    topic = IMAGE_TOPIC + "/compressed"
    bag = write_bag(tmp_path / "jpeg", "sqlite3",
                    {topic: [("sensor_msgs/msg/CompressedImage", log_time(m), m) for m in messages]})  # fmt: skip
    code, stderr = run_extract("--bag", bag, "--image-topic", topic, "--out", tmp_path / "out",
                               *param_args(PARAMETERS | model_parameters), "--quiet")  # fmt: skip
    assert code == 0 and "3 frames written" in stderr, stderr
    back = read_bag(tmp_path / "out")
    assert [m.header for _, m in back[KEYPOINTS_TOPIC]] == [m.header for m in messages]
    assert all(len(m.x) > 0 for _, m in back[KEYPOINTS_TOPIC])

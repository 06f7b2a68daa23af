"""``ros2 run kp2d_ros extract``: the detector node's frame path over every image of a recorded bag (offline).

    ros2 run kp2d_ros extract --bag IN --image-topic T [--camera-info-topic C] --out OUT [--npz OUT.npz]
        [--features] [--param NAME=VALUE ...] [--params-file config/detector.yaml] [--ros-args ...]

Reads a rosbag2 (directory with metadata.yaml, or a single ``.mcap`` / ``.db3`` file; MCAP or sqlite3 storage,
through the ``rosbags`` library), and for *every* image (no frame is dropped, unlike the live node, which always
takes the newest) runs what the ``detector`` node runs: the message is deserialised by rclpy into a real
``sensor_msgs`` message, converted by ``kp2d_ros.conversions``, stepped through
``kp2d_model.frame_pipeline.FramePipeline`` with the config built from the node's own parameter table
(defaults, ``--params-file``, ``--param``), and turned into Keypoints / Matches by ``kp2d_ros.messages``.

Output ``OUT``: a rosbag2 directory (MCAP by default, ``--storage sqlite3``) with ``/kp2d_detector/keypoints`` and
``/kp2d_detector/matches`` (``--features`` or the parameter ``publish_vins_features``: also
``/kp2d_detector/features``, the node's VINS-Fusion PointCloud), one of each per processed image, headers = the
image's header. Log time of each output message = the source image's log
time in the input bag (``--log-time header``: the image's header stamp), so ``ros2 bag play IN OUT`` replays
them together. ``--npz``: the same frames as NumPy arrays (``kp2d_model.frame_arrays``).
Atomic output: written into ``OUT.partial/`` (and ``OUT.npz.partial``), moved to ``OUT`` when every frame is done;
on an error or Ctrl-C the partial output is removed (nothing half-written is left; there is no resume).
Camera info (``--camera-info-topic``): the CameraInfo with the image's exact stamp, else the latest one stamped
before it. Frames that cannot be read (corrupt message, unsupported encoding, ...) are skipped and counted.
Usage errors (no bag, topic not in the bag, wrong type, bad parameter) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rclpy
import yaml
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from tqdm import tqdm

from kp2d_model import CheckpointError
from kp2d_model.frame_arrays import FrameArraysWriter
from kp2d_model.frame_pipeline import FramePipeline, MaskSizeError, vins_features
from kp2d_model.image import ImageFormatError
from kp2d_model.torch_compat import OutOfMemoryError
from kp2d_ros.camera_model import CameraInfoError, check_camera_info
from kp2d_ros.conversions import ImageInputError, message_to_array
from kp2d_ros.detector_node import (
    PARAMETERS,
    declare_parameters,
    parameter_problems,
    pipeline_config_from_settings,
    settings_from_parameters,
)
from kp2d_ros.detector_node import build_detector as build_node_detector
from kp2d_ros.messages import keypoints_from_record, matches_from_record, stamp_ns, vins_point_cloud

try:  # PyPI's rosbags (pure Python); a ROS installation may lack it: main() says how to install it
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer
except ImportError:
    Reader = StoragePlugin = Writer = None

__all__ = ["ExtractError", "main", "output_typestore"]

NODE_NAME = "kp2d_detector"  # the detector node's name: its sections of a params file apply here too
IMAGE_TYPES = {"sensor_msgs/msg/Image": Image, "sensor_msgs/msg/CompressedImage": CompressedImage}
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
KEYPOINTS_TYPE, MATCHES_TYPE = "kp2d_ros_msgs/msg/Keypoints", "kp2d_ros_msgs/msg/Matches"
BAG_VERSION = 8  # rosbag2 metadata version 8 (Jazzy's; Kilted reads it too)
STORAGES = ("mcap", "sqlite3")  # rosbags StoragePlugin names, lower case
SHOWN_PER_KIND = 3  # skipped-frame messages printed per kind of problem (all are counted)
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class ExtractError(Exception):
    """A usage problem (missing bag or topic, wrong type, bad parameter, output exists): one line, exit 2."""


# --- command line ------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ros2 run kp2d_ros extract",
        description="Run the kp2d detector node's frame path on every image of a rosbag2 (MCAP or sqlite3) and "
        "write Keypoints/Matches to a new bag and/or a NumPy .npz.",
        epilog="Parameters are the detector node's (docs/ros.md); ROS syntax works too: --ros-args -p top_k:=500 "
        "--params-file FILE.",
    )
    parser.add_argument("--bag", required=True, type=Path, help="input rosbag2: directory, .mcap or .db3 file")
    parser.add_argument("--image-topic", required=True, help="sensor_msgs/Image or sensor_msgs/CompressedImage topic")
    parser.add_argument("--camera-info-topic", help="sensor_msgs/CameraInfo topic: normalised coordinates (features)")
    parser.add_argument("--out", type=Path, help="output rosbag2 directory (Keypoints, Matches)")
    parser.add_argument("--storage", choices=STORAGES, default="mcap", help="output bag storage (mcap)")
    parser.add_argument("--npz", type=Path, help="also (or only) write the frames as NumPy arrays to this .npz")
    parser.add_argument("--features", action="store_true",
                        help="also write /kp2d_detector/features (VINS-Fusion PointCloud; needs --camera-info-topic)")
    parser.add_argument("--topic-prefix", default=f"/{NODE_NAME}",
                        help="output topics are PREFIX/keypoints, PREFIX/matches (default: the node's, /kp2d_detector)")
    parser.add_argument("--log-time", choices=("source", "header"), default="source",
                        help="log time of output messages: the image's in the input bag (source) or its header stamp")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a detector parameter (YAML value, as ros2 param set), e.g. --param top_k=500")
    parser.add_argument("--params-file", action="append", default=[], type=Path,
                        help="a ROS parameters YAML (e.g. config/detector.yaml): its /** or kp2d_detector section")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT / OUT.npz when they exist")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser  # fmt: skip


def parse_command_line(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """-> (arguments, ROS arguments for rclpy: ``-p name:=value`` / ``--params-file`` and anything after
    ``--ros-args``). Raises ExtractError for a malformed ``--param`` or a missing output."""
    ros_args: list[str] = []
    if "--ros-args" in argv:
        ros_args = argv[argv.index("--ros-args") + 1 :]
        argv = argv[: argv.index("--ros-args")]
        if "--" in ros_args:
            ros_args = ros_args[: ros_args.index("--")]
    args = build_parser().parse_args(argv)
    given: list[str] = []
    for path in args.params_file:
        check_params_file(path)
        given += ["--params-file", str(path)]
    for item in args.param:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise ExtractError(f"--param {item!r}: expected NAME=VALUE, e.g. --param top_k=500")
        if name not in PARAMETERS:
            raise ExtractError(f"--param {name}: not a detector parameter (docs/ros.md lists them; e.g. top_k)")
        given += ["-p", f"{name}:={value}"]
    if args.out is None and args.npz is None:
        raise ExtractError("nothing to write: give --out OUT (a bag) and/or --npz OUT.npz")
    if args.features and not args.camera_info_topic:
        raise ExtractError("--features needs --camera-info-topic (VINS features are normalised coordinates)")
    if args.features and args.out is None:
        raise ExtractError("--features writes to the output bag: give --out")
    return args, given + ros_args


def check_params_file(path: Path) -> None:
    """ExtractError unless ``path`` is a YAML mapping whose sections hold ``ros__parameters`` (rcl checks the rest,
    but its parser also logs its own error lines)."""
    if not path.is_file():
        raise ExtractError(f"--params-file {path}: no such file")
    try:
        content = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ExtractError(f"--params-file {path}: not YAML ({_first_line(error)})") from None
    if not isinstance(content, dict) or "ros__parameters" not in json.dumps(content, default=str):
        raise ExtractError(f"--params-file {path}: not a ROS parameters file (<node or /**>: ros__parameters: ...)")


def read_parameters(ros_args: list[str]) -> dict[str, Any]:
    """The detector node's parameters (name -> value) as the node would see them with ``ros_args``.

    A short-lived rclpy node named like the detector declares the node's PARAMETERS table, so defaults, params
    files (``/**`` and ``kp2d_detector`` sections), ``-p`` overrides, types and ranges behave exactly as for
    ``ros2 run kp2d_ros detector --ros-args ...``. Raises ExtractError for a bad value or params file.
    """
    context = rclpy.Context()
    try:
        rclpy.init(args=["extract", "--ros-args", *ros_args], context=context)
    except Exception as error:  # rcl's parser: unreadable params file, malformed -p
        raise ExtractError(f"invalid parameters: {_first_line(error)}") from None
    node = None
    try:
        node = Node(NODE_NAME, context=context, start_parameter_services=False, enable_rosout=False)
        declare_parameters(node)
        values = {name: node.get_parameter(name).value for name in PARAMETERS}
    except ParameterException as error:  # wrong type, out of range
        raise ExtractError(f"invalid parameter: {_first_line(error)}") from None
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown(context=context)
    problems = parameter_problems(values)
    if problems:
        raise ExtractError("invalid parameters: " + "; ".join(problems))
    return values


def load_settings(parameters: dict[str, Any]) -> Any:
    """The node's Settings for these values (the mask file read); ExtractError naming an unusable mask."""
    try:
        return settings_from_parameters(parameters)
    except ValueError as error:
        raise ExtractError(f"invalid parameter: {_first_line(error)}") from None


def build_detector(parameters: dict[str, Any]) -> Any:
    """The node's detector for these parameter values (ExtractError for a missing model or bad combination)."""
    try:
        return build_node_detector(parameters)
    except (CheckpointError, ValueError) as error:  # EngineError is a ValueError
        raise ExtractError(f"cannot load the model: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# --- input bag ---------------------------------------------------------------------------------------------


def open_bag(path: Path) -> Reader:
    """An opened rosbags Reader; ExtractError when the path is missing or not a readable rosbag2."""
    if not path.exists():
        raise ExtractError(f"bag {path} does not exist")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as error:  # ReaderError, missing metadata.yaml, a file that is no bag at all
        raise ExtractError(f"cannot read bag {path}: {_first_line(error)}") from None
    return reader


def topic_connections(reader: Reader, bag: Path, topic: str, types: tuple[str, ...], option: str) -> list[Any]:
    """The bag's connections of ``topic`` (with or without the leading slash); ExtractError when the topic is
    missing (listing the bag's topics of ``types``) or has another type."""
    names = {topic, "/" + topic.lstrip("/")}
    connections = [c for c in reader.connections if c.topic in names]
    if not connections:
        candidates = sorted({c.topic for c in reader.connections if c.msgtype in types})
        if not reader.connections:
            found = "it has no topics at all"
        elif candidates:
            found = f"its {' / '.join(types)} topics: {', '.join(candidates)}"
        else:
            found = f"it has no {' / '.join(types)} topic"
        raise ExtractError(f"{option} {topic}: not in bag {bag} ({found})")
    wrong = sorted({c.msgtype for c in connections} - set(types))
    if wrong:
        raise ExtractError(f"{option} {topic} has type {', '.join(wrong)}; expected {' or '.join(types)}")
    return connections


class CameraInfoTable:
    """The bag's CameraInfo messages by header stamp: the one with an image's exact stamp, else the latest one
    stamped before it (all are read first: a camera_info may be logged after its image)."""

    def __init__(self, infos: dict[int, CameraInfo], unreadable: int):
        self._infos = infos
        self._stamps = sorted(infos)
        self.unreadable = unreadable

    @classmethod
    def read(cls, reader: Reader, connections: list[Any]) -> CameraInfoTable:
        infos, unreadable = {}, 0
        for _, _, raw in reader.messages(connections=connections):
            try:
                info = deserialize_message(raw, CameraInfo)
            except Exception:  # corrupt message: counted, the images go on without it
                unreadable += 1
                continue
            infos[stamp_ns(info.header.stamp)] = info
        return cls(infos, unreadable)

    def __len__(self) -> int:
        return len(self._infos)

    def for_stamp(self, stamp: int) -> CameraInfo | None:
        position = bisect.bisect_right(self._stamps, stamp)
        return self._infos[self._stamps[position - 1]] if position else None


# --- output bag --------------------------------------------------------------------------------------------


def output_typestore() -> Any:
    """A rosbags typestore with the ROS 2 standard types and kp2d_ros_msgs' Keypoints and Matches, parsed from
    the installed ``.msg`` files (found through the ament index), for the output bag's message definitions and
    type hashes (RIHS01, equal to rosidl's)."""
    from ament_index_python.packages import get_package_share_directory
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    folder = Path(get_package_share_directory("kp2d_ros_msgs")) / "msg"
    store = get_typestore(Stores.ROS2_KILTED)
    types: dict[str, Any] = {}
    for msgtype in (KEYPOINTS_TYPE, MATCHES_TYPE):
        types |= get_types_from_msg((folder / f"{msgtype.rsplit('/', 1)[1]}.msg").read_text(), msgtype)
    store.register(types)
    return store


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class BagOutput:
    """A rosbag2 written to ``<path>.partial/<name>`` and moved to ``path`` by :meth:`commit` (``abort`` removes it;
    the extra folder keeps the storage file's name, which rosbags derives from the bag folder's, ``<name>.mcap``).

    topics: topic -> message type (registered with their message definitions, so ``ros2 bag info`` and rosbags
    read the bag back). Messages are serialised by rclpy (the same CDR bytes a publisher sends). custom_data: string
    pairs for metadata.yaml's ``custom_data`` (here: where the frames came from and the parameters).
    """

    def __init__(self, path: Path, storage: str, topics: dict[str, str], custom_data: dict[str, str] | None = None):
        self.path, self.partial = path, partial_path(path)
        remove_path(self.partial)  # left by a run that was killed (SIGKILL) before it could clean up
        self.partial.mkdir()
        store = output_typestore()
        plugin = StoragePlugin[storage.upper()]
        self.writer = Writer(self.partial / path.name, version=BAG_VERSION, storage_plugin=plugin)
        for key, value in (custom_data or {}).items():
            self.writer.set_custom_data(key, value)
        self.writer.open()
        self.connections = {topic: self.writer.add_connection(topic, msgtype, typestore=store)
                            for topic, msgtype in topics.items()}  # fmt: skip
        self.counts: Counter[str] = Counter()

    def write(self, topic: str, msg: Any, log_time_ns: int) -> None:
        self.writer.write(self.connections[topic], log_time_ns, serialize_message(msg))
        self.counts[topic] += 1

    def commit(self) -> None:
        """Finish the bag (index, metadata.yaml) and move it to its final name (replacing an old one)."""
        self.writer.close()
        remove_path(self.path)
        (self.partial / self.path.name).rename(self.path)
        self.partial.rmdir()

    def abort(self) -> None:
        with suppress(Exception):
            self.writer.abort()
        remove_path(self.partial)


class NpzOutput:
    """The frames as arrays (``kp2d_model.frame_arrays``), saved to ``<path>.partial`` then renamed."""

    def __init__(self, path: Path, descriptors: bool):
        self.path, self.partial = path, partial_path(path)
        self.frames = FrameArraysWriter(descriptors=descriptors)

    def commit(self) -> None:
        self.frames.save(self.partial)
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        with suppress(OSError):
            remove_path(self.partial)


# --- the run -----------------------------------------------------------------------------------------------


@dataclass
class Summary:
    """What one run did: images read, frames written, skipped frames by kind, stamp resets."""

    images: int = 0
    written: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    resets: int = 0
    without_camera_info: int = 0


def image_frames(reader: Reader, connections: list[Any]) -> Iterator[tuple[int, int, Any, Exception | None]]:
    """(index from 1, log time ns, message or None, deserialisation error or None) for every image, in log-time
    order (the order the node would have received them)."""
    for index, (connection, log_time, raw) in enumerate(reader.messages(connections=connections), start=1):
        try:
            yield index, log_time, deserialize_message(raw, IMAGE_TYPES[connection.msgtype]), None
        except Exception as error:  # truncated / corrupt CDR (rclpy raises RMWError)
            yield index, log_time, None, error


class Extractor:
    """The node's frame path for a bag: convert -> FramePipeline.step -> Keypoints/Matches (and features)."""

    def __init__(self, args: argparse.Namespace, parameters: dict[str, Any], detector: Any):
        self.args = args
        self.settings = load_settings(parameters)
        self.features = args.features or parameters["publish_vins_features"]
        self.camera_id = parameters["vins_camera_id"]
        self.config = pipeline_config_from_settings(self.settings)
        self.detector = detector
        self.pipeline = FramePipeline(detector, self.config)
        prefix = args.topic_prefix.rstrip("/")
        self.keypoints_topic, self.matches_topic = f"{prefix}/keypoints", f"{prefix}/matches"
        self.features_topic = f"{prefix}/features"
        self.summary = Summary()
        self._shown: Counter[str] = Counter()

    def output_topics(self) -> dict[str, str]:
        topics = {self.keypoints_topic: KEYPOINTS_TYPE, self.matches_topic: MATCHES_TYPE}
        if self.features:
            topics[self.features_topic] = "sensor_msgs/msg/PointCloud"
        return topics

    def convert(self, msg: Any) -> Any:
        """As the node: bounded by max_image_pixels of what the network will process, checked before decoding."""
        return message_to_array(msg, self.settings.max_image_pixels, self.detector)

    def skip(self, kind: str, index: int, stamp: int | None, reason: str) -> None:
        self.summary.skipped[kind] += 1
        self._shown[kind] += 1
        if self._shown[kind] <= SHOWN_PER_KIND:
            at = f" (stamp {stamp / 1e9:.6f} s)" if stamp is not None else ""
            more = " (further ones of this kind are counted, not shown)" if self._shown[kind] == SHOWN_PER_KIND else ""
            tqdm.write(f"extract: image {index}{at} skipped: {reason}{more}", file=sys.stderr)

    def intrinsics(self, infos: CameraInfoTable | None, stamp: int, image_size: tuple[int, int]) -> Any:
        if infos is None:
            return None
        info = infos.for_stamp(stamp)
        if info is None:
            self.summary.without_camera_info += 1
            return None
        try:
            return check_camera_info(info, image_size)
        except CameraInfoError as error:  # as the node: the frame goes on without normalised coordinates
            self.summary.without_camera_info += 1
            self._shown[f"camera_info:{error.kind}"] += 1
            if self._shown[f"camera_info:{error.kind}"] == 1:
                tqdm.write(f"extract: camera_info unusable, frames go on without it: {error}", file=sys.stderr)
            return None

    def process(self, msg: Any, index: int, infos: CameraInfoTable | None) -> tuple[Any, Any] | None:
        """One image -> (record, header), or None when it is skipped (counted, first ones shown)."""
        stamp = stamp_ns(msg.header.stamp)
        try:
            image = self.convert(msg)
            height, width = image.pixels.shape[:2]
            record = self.pipeline.step(
                image.pixels, stamp, channel_order=image.channel_order,
                intrinsics=self.intrinsics(infos, stamp, (width, height)), config=self.config,
            )  # fmt: skip
        except ImageInputError as error:
            self.skip(f"image:{error.kind}", index, stamp, str(error))
        except MaskSizeError as error:
            self.skip("image:mask_size", index, stamp, f"{error} (parameter 'mask')")
        except ImageFormatError as error:
            self.skip("image:refused_by_detector", index, stamp, str(error))
        except OutOfMemoryError as error:
            self.skip("out_of_memory", index, stamp, f"out of memory ({_first_line(error)})")
        except Exception as error:  # a model failure on one frame: skipped, as the node does
            self.skip(f"failure:{type(error).__name__}", index, stamp, f"processing failed: {error!r}")
        else:
            return record, msg.header
        return None

    def write(self, record: Any, header: Any, log_time: int, bag: BagOutput | None, npz: NpzOutput | None) -> None:
        """One processed frame to the outputs: the node's Keypoints (sequence = frames written so far) and Matches."""
        settings = self.settings
        if bag is not None:
            keypoints = keypoints_from_record(header, self.summary.written, record, settings.publish_descriptors)
            bag.write(self.keypoints_topic, keypoints, log_time)
            bag.write(self.matches_topic, matches_from_record(header, record, settings.geometry), log_time)
            if self.features and record.normalized is not None:  # as the node: none without camera_info ...
                features = vins_features(record, self.camera_id)
                if len(features["ids"]):  # ... or without tracked keypoints (first frame, after a reset)
                    bag.write(self.features_topic, vins_point_cloud(header, features), log_time)
        if npz is not None:
            npz.frames.add(record)

    def run(self, reader: Reader, image_connections: list[Any], infos: CameraInfoTable | None,
            bag: BagOutput | None, npz: NpzOutput | None) -> Summary:  # fmt: skip
        summary = self.summary
        total = sum(c.msgcount for c in image_connections) or None
        bar = tqdm(total=total, unit="frame", desc="extract", file=sys.stderr, disable=self.args.quiet or None)
        with bar:
            for index, log_time, msg, error in image_frames(reader, image_connections):
                summary.images += 1
                bar.update(1)
                if msg is None:
                    self.skip("unreadable_message", index, None, f"cannot deserialise it ({_first_line(error)})")
                    continue
                result = self.process(msg, index, infos)
                if result is None:
                    continue
                record, header = result
                summary.written += 1
                summary.resets += int(record.reset)
                self.write(record, header, log_time if self.args.log_time == "source" else record.stamp_ns, bag, npz)
        return summary


def describe(summary: Summary, args: argparse.Namespace) -> str:
    outputs = [f"{args.out} ({args.storage})" if args.out else "", str(args.npz) if args.npz else ""]
    line = (f"extract: {summary.images} images on {args.image_topic} -> {summary.written} frames written to "
            f"{' and '.join(o for o in outputs if o)}")  # fmt: skip
    if summary.skipped:
        line += f"; {sum(summary.skipped.values())} skipped (" + ", ".join(
            f"{kind}: {count}" for kind, count in sorted(summary.skipped.items()) if count) + ")"  # fmt: skip
    if summary.resets:
        line += f"; {summary.resets} stamp(s) went backwards (matching and tracks restarted there)"
    if summary.without_camera_info:
        line += f"; {summary.without_camera_info} frame(s) without usable camera_info"
    return line


def check_outputs(args: argparse.Namespace) -> None:
    for option, path in (("--out", args.out), ("--npz", args.npz)):
        if path is None:
            continue
        if path.resolve() == args.bag.resolve():
            raise ExtractError(f"{option} {path} is the input bag")
        if path.exists() and not args.overwrite:
            raise ExtractError(f"{option} {path} exists; remove it or pass --overwrite")
        if not path.resolve().parent.is_dir():
            raise ExtractError(f"{option} {path}: folder {path.resolve().parent} does not exist")


@dataclass
class BagInput:
    """The opened input bag and what is read from it: image connections, camera infos (or None)."""

    reader: Reader
    image_connections: list[Any]
    infos: CameraInfoTable | None

    @classmethod
    def open(cls, args: argparse.Namespace) -> BagInput:
        """Open ``--bag`` and check its topics (ExtractError naming what is wrong; the reader is closed then)."""
        reader = open_bag(args.bag)
        try:
            images = topic_connections(reader, args.bag, args.image_topic, tuple(IMAGE_TYPES), "--image-topic")
            infos = None
            if args.camera_info_topic:
                connections = topic_connections(
                    reader, args.bag, args.camera_info_topic, (CAMERA_INFO_TYPE,), "--camera-info-topic"
                )
                infos = CameraInfoTable.read(reader, connections)
                if not infos:
                    raise ExtractError(
                        f"--camera-info-topic {args.camera_info_topic}: no readable CameraInfo in bag {args.bag}"
                    )
        except BaseException:
            reader.close()
            raise
        return cls(reader, images, infos)


def extract(args: argparse.Namespace, parameters: dict[str, Any], detector: Any, source: BagInput) -> Summary:
    """Run every frame of ``source`` with the node's settings for ``parameters`` and commit the outputs (removed
    again on any error or Ctrl-C)."""
    extractor = Extractor(args, parameters, detector)
    if extractor.features and source.infos is None:
        raise ExtractError("publish_vins_features needs --camera-info-topic (VINS features are normalised coordinates)")
    if extractor.features and args.out is None:
        raise ExtractError("publish_vins_features writes to the output bag: give --out")
    bag = npz = None
    try:
        if args.out is not None:
            provenance = {
                "kp2d.extract.source_bag": str(args.bag.resolve()),
                "kp2d.extract.image_topic": args.image_topic,
                "kp2d.extract.parameters": json.dumps(parameters, sort_keys=True, default=list),  # roi: an array
            }
            bag = BagOutput(args.out, args.storage, extractor.output_topics(), provenance)
        if args.npz is not None:
            npz = NpzOutput(args.npz, descriptors=extractor.settings.publish_descriptors)
        summary = extractor.run(source.reader, source.image_connections, source.infos, bag, npz)
        if summary.images == 0:
            raise ExtractError(f"--image-topic {args.image_topic}: no messages in bag {args.bag}")
        if summary.written == 0:
            raise RuntimeError(f"none of the {summary.images} images could be processed: " + describe(summary, args))
        if bag is not None:
            bag.commit()
        if npz is not None:
            npz.commit()
        return summary
    except BaseException:
        for output in (bag, npz):
            if output is not None:
                output.abort()
        raise


def main(argv: list[str] | None = None) -> int:
    """``ros2 run kp2d_ros extract ...`` (see the module docstring). Exit 0 done, 1 failed, 2 usage, 130 Ctrl-C.

    Everything that can be checked before the model loads is checked first (arguments, parameters, outputs, the
    bag and its topics)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if Reader is None:
        print("extract: error: needs the rosbags library: pip install rosbags (requirements/ros.txt pins it)",
              file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    try:
        args, ros_args = parse_command_line(argv)
        parameters = read_parameters(ros_args)
        load_settings(parameters)  # an unusable mask file: before the model loads
        check_outputs(args)
        source = BagInput.open(args)
        try:
            detector = build_detector(parameters)
            summary = extract(args, parameters, detector, source)
        finally:
            source.reader.close()
    except ExtractError as error:
        print(f"extract: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("extract: interrupted: partial output removed, nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RuntimeError as error:
        print(f"extract: failed: {_first_line(error)}", file=sys.stderr)
        return 1
    print(describe(summary, args), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

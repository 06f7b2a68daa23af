"""The ``camera_sim`` node: a virtual camera for demos and tests.

Photo mode (default): a pinhole camera moves smoothly over a planar photo (default scikit-image's
``astronaut.png``, or ``source:=/path/photo.png``); each frame is the photo warped by a known homography,
published on ``image_raw`` (as camera drivers do) with ``camera_info`` and ``ground_truth``
(kp2d_ros_msgs/GroundTruthHomography: previous-to-current and photo-to-current homographies in pixels) so
matches can be scored.
Folder / video mode (``source:=`` a directory of images or a video file): the frames as they are, no
ground truth. Publishes at ``rate`` Hz, stamps from the node clock; stops after ``num_frames`` (0: never).

Stereo (photo mode, ``stereo:=true``): a rectified pair with ``baseline`` metres between the cameras, looking
at the photo on a fronto-parallel plane ``depth`` metres away; the right view is the left view moved left by
the disparity ``d = fx * baseline / depth`` pixels. Publishes ``left/image_raw``, ``left/camera_info``,
``left/ground_truth`` and the same under ``right/``, with identical stamps; both camera_infos are the ideal
pinhole, the right one with ``P[3] = -fx * baseline`` (the ROS convention for the right camera of a pair).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from kp2d_model.image import IMAGE_FILE_SUFFIXES, image_files_in
from kp2d_ros.messages import ground_truth_message, to_array
from kp2d_ros_msgs.msg import GroundTruthHomography

__all__ = ["CameraSimNode", "PhotoCamera", "default_photo", "main"]

ENCODINGS = ("bgr8", "rgb8", "mono8", "mono16", "bgra8", "rgba8")


def default_photo() -> Path:
    """scikit-image's bundled astronaut photo (NASA, public domain): part of the held-out/demo split."""
    import skimage

    return Path(skimage.__file__).resolve().parent / "data" / "astronaut.png"


class PhotoCamera:
    """Frames of a virtual camera looking at a planar photo, with exact homographies.

    ``reference_to_frame(t)`` maps photo pixels to frame ``t`` pixels: the view centre follows a smooth
    Lissajous path over the photo, with an in-plane rotation, a zoom and a small perspective tilt, each a
    sinusoid of the frame index. ``speed`` scales the motion per frame (1.0: a few pixels per frame).
    """

    def __init__(self, photo_bgr: np.ndarray, size: tuple[int, int], speed: float = 1.0):
        self.photo = photo_bgr
        self.width, self.height = size
        photo_h, photo_w = photo_bgr.shape[:2]
        # Scale so that the view spans ~60 % of the photo: room to move without leaving it.
        self.base_scale = max(self.width / (0.6 * photo_w), self.height / (0.6 * photo_h))
        self.amplitude = (0.12 * photo_w, 0.12 * photo_h)
        self.centre = (0.5 * (photo_w - 1), 0.5 * (photo_h - 1))
        self.speed = speed

    def reference_to_frame(self, t: int) -> np.ndarray:
        """``(3, 3)`` homography, photo pixels -> frame ``t`` pixels."""
        phase = 0.02 * self.speed * t
        cx = self.centre[0] + self.amplitude[0] * math.sin(phase)
        cy = self.centre[1] + self.amplitude[1] * math.sin(1.3 * phase + 0.5)
        angle = math.radians(6.0) * math.sin(0.7 * phase)
        scale = self.base_scale * (1.0 + 0.08 * math.sin(0.9 * phase + 1.0))
        tilt_x = 4e-5 * math.sin(0.5 * phase)
        tilt_y = 4e-5 * math.cos(0.6 * phase)
        to_view = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], float)
        cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
        rotate_scale = np.array([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]], float)
        perspective = np.array([[1, 0, 0], [0, 1, 0], [tilt_x, tilt_y, 1]], float)
        to_frame = np.array([[1, 0, 0.5 * (self.width - 1)], [0, 1, 0.5 * (self.height - 1)], [0, 0, 1]], float)
        homography = to_frame @ perspective @ rotate_scale @ to_view
        return homography / homography[2, 2]

    def render(self, homography: np.ndarray) -> np.ndarray:
        """The frame (H x W x 3 uint8 BGR) seen through ``homography`` (photo -> frame)."""
        return cv2.warpPerspective(
            self.photo, homography, (self.width, self.height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )


def _read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot read image {path}")
    return image


class FrameSource:
    """Frames of a folder of images or a video file (BGR), optionally looping."""

    def __init__(self, path: Path, loop: bool):
        self.loop = loop
        self.files: list[Path] = []
        self.video: Any = None
        self.path = path
        if path.is_dir():
            self.files = image_files_in(path)
            if not self.files:
                raise ValueError(f"no images ({', '.join(sorted(IMAGE_FILE_SUFFIXES))}) in {path}")
        else:
            self.video = cv2.VideoCapture(str(path))
            if not self.video.isOpened():
                raise ValueError(f"cannot open {path} as a video or image folder")
        self.index = 0

    def next(self) -> np.ndarray | None:
        """The next frame, or None at the end (without ``loop``)."""
        if self.files:
            if self.index >= len(self.files):
                if not self.loop:
                    return None
                self.index = 0
            frame = _read_image(self.files[self.index])
            self.index += 1
            return frame
        ok, frame = self.video.read()
        if not ok and self.loop:
            self.video.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self.video.read()
        return frame if ok else None


def encode(frame_bgr: np.ndarray, encoding: str) -> tuple[np.ndarray, int]:
    """BGR uint8 frame -> (pixels in ``encoding``, bytes per pixel)."""
    if encoding == "bgr8":
        return frame_bgr, 3
    if encoding == "rgb8":
        return cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB), 3
    if encoding == "bgra8":
        return cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2BGRA), 4
    if encoding == "rgba8":
        return cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGBA), 4
    grey = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)
    if encoding == "mono16":
        return grey.astype(np.uint16) * 257, 2
    return grey, 1


def image_message(pixels: np.ndarray, encoding: str, bytes_per_pixel: int, header: Any) -> Image:
    """A sensor_msgs/Image of ``pixels`` (data filled through the buffer protocol, little-endian)."""
    msg = Image(header=header, height=pixels.shape[0], width=pixels.shape[1], encoding=encoding)
    msg.is_bigendian = sys.byteorder == "big"
    msg.step = pixels.shape[1] * bytes_per_pixel
    msg.data = to_array("B", np.ascontiguousarray(pixels).view(np.uint8))
    return msg


def camera_info_message(width: int, height: int, header: Any, baseline: float = 0.0) -> CameraInfo:
    """An ideal pinhole CameraInfo (fx = fy = width, ~53 deg horizontal field of view, no distortion).

    baseline: metres from the left camera of a rectified pair to this one (0: mono or left camera); the
    projection matrix gets ``P[3] = -fx * baseline`` as ROS stereo drivers publish for the right camera."""
    focal = float(width)
    cx, cy = 0.5 * (width - 1), 0.5 * (height - 1)
    info = CameraInfo(header=header, width=width, height=height, distortion_model="plumb_bob")
    info.d = to_array("d", np.zeros(5))
    info.k = np.array([focal, 0, cx, 0, focal, cy, 0, 0, 1], float)
    info.r = np.eye(3).reshape(9)
    info.p = np.array([focal, 0, cx, -focal * baseline, 0, focal, cy, 0, 0, 0, 1, 0], float)
    return info


def stereo_disparity(width: int, baseline: float, depth: float) -> float:
    """Disparity in pixels of the fronto-parallel photo plane: ``fx * baseline / depth`` with fx = width."""
    return float(width) * baseline / depth


@dataclass(frozen=True)
class View:
    """One published camera: topic prefix ("" mono, "left/", "right/"), horizontal image shift (pixels, the
    right view moves left by the disparity), baseline for its camera_info and header frame_id."""

    prefix: str
    shift: float
    baseline: float
    frame_id: str

    def photo_to_view(self, homography: np.ndarray) -> np.ndarray:
        """The (3, 3) photo -> this view homography given the photo -> left (or mono) frame one."""
        return np.array([[1, 0, -self.shift], [0, 1, 0], [0, 0, 1]], float) @ homography


class CameraSimNode(Node):
    """Publishes ``image_raw``, ``camera_info`` and (photo mode) ``ground_truth``; see the module docstring."""

    def __init__(self, **node_kwargs: Any):
        super().__init__("camera_sim", **node_kwargs)
        params = {
            "source": ("", "photo file, image folder or video; empty: scikit-image's astronaut photo"),
            "width": (640, "photo mode frame width (pixels)"),
            "height": (480, "photo mode frame height (pixels)"),
            "rate": (30.0, "frames per second"),
            "num_frames": (0, "stop after this many frames (0: never)"),
            "encoding": ("bgr8", f"one of {', '.join(ENCODINGS)}"),
            "frame_id": ("camera", "header.frame_id"),
            "speed": (1.0, "photo mode motion per frame, relative to the default"),
            "loop": (True, "folder/video mode: start again at the end"),
            "image_qos": ("sensor_data", "sensor_data (BEST_EFFORT, depth 1) or reliable (depth 10)"),
            "publish_compressed": (False, "also publish image_raw/compressed (JPEG)"),
            "wait_for_subscribers": (0, "publish only once image_raw has at least this many subscribers"),
            "stereo": (False, "photo mode: publish a rectified pair under left/ and right/"),
            "baseline": (0.12, "stereo: distance between the cameras (metres)"),
            "depth": (3.0, "stereo: distance of the photo plane from the cameras (metres)"),
        }
        for name, (default, description) in params.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=description, read_only=True))
        p = {name: self.get_parameter(name).value for name in params}
        if p["encoding"] not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {p['encoding']!r}")
        if p["rate"] <= 0 or p["width"] <= 0 or p["height"] <= 0 or p["num_frames"] < 0:
            raise ValueError("rate, width and height must be > 0 and num_frames >= 0")
        if p["stereo"] and not (p["baseline"] > 0 and p["depth"] > 0):
            raise ValueError(f"stereo needs baseline > 0 and depth > 0, got {p['baseline']} and {p['depth']}")
        self.p = p
        source = Path(p["source"]) if p["source"] else default_photo()
        if not source.exists():
            raise ValueError(f"source {source} does not exist")
        self.camera: PhotoCamera | None = None
        self.frames: FrameSource | None = None
        if source.is_file() and source.suffix.lower() in IMAGE_FILE_SUFFIXES:
            self.camera = PhotoCamera(_read_image(source), (p["width"], p["height"]), p["speed"])
        else:
            if p["stereo"]:
                raise ValueError(f"stereo needs photo mode (a single image as source), got {source}")
            self.frames = FrameSource(source, p["loop"])
        self.source = source
        if p["stereo"]:
            self.disparity = stereo_disparity(p["width"], p["baseline"], p["depth"])
            self.views = [
                View("left/", 0.0, 0.0, f"{p['frame_id']}_left"),
                View("right/", self.disparity, p["baseline"], f"{p['frame_id']}_right"),
            ]
        else:
            self.disparity = 0.0
            self.views = [View("", 0.0, 0.0, p["frame_id"])]

        reliable = p["image_qos"] == "reliable"
        image_qos = QoSProfile(
            depth=10 if reliable else 1,
            reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
            history=HistoryPolicy.KEEP_LAST,
        )
        # Transient local: a scorer that joins late still gets the recent ground truth.
        truth_qos = QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.publishers_by_view = []
        for view in self.views:
            compressed = (
                self.create_publisher(CompressedImage, f"{view.prefix}image_raw/compressed", image_qos)
                if p["publish_compressed"]
                else None
            )
            self.publishers_by_view.append(
                (
                    self.create_publisher(Image, f"{view.prefix}image_raw", image_qos),
                    compressed,
                    self.create_publisher(CameraInfo, f"{view.prefix}camera_info", image_qos),
                    self.create_publisher(GroundTruthHomography, f"{view.prefix}ground_truth", truth_qos),
                )
            )
        self.image_pub = self.publishers_by_view[0][0]  # mono: image_raw; stereo: left/image_raw
        self.count = 0
        self.previous_homography: np.ndarray | None = None
        self.previous_stamp = None
        self.finished = False
        self.timer = self.create_timer(1.0 / p["rate"], self._tick)
        self.get_logger().info(
            f"publishing {'photo ' if self.camera else 'frames of '}{source} at {p['rate']} Hz "
            f"on {self.resolve_topic_name(self.views[0].prefix + 'image_raw')}"
            + (f" (stereo, disparity {self.disparity:.3f} px)" if p["stereo"] else "")
        )

    def _tick(self) -> None:
        if self.finished:
            return
        if min(pubs[0].get_subscription_count() for pubs in self.publishers_by_view) < self.p["wait_for_subscribers"]:
            return
        if self.p["num_frames"] and self.count >= self.p["num_frames"]:
            self._finish(f"published {self.count} frames")
            return
        homography = None
        if self.camera is not None:
            homography = self.camera.reference_to_frame(self.count)
            frame = self.camera.render(homography)
        else:
            frame = self.frames.next()
            if frame is None:
                self._finish(f"end of {self.source} after {self.count} frames")
                return
        stamp = self.get_clock().now().to_msg()
        for view, publishers in zip(self.views, self.publishers_by_view, strict=True):
            view_frame = frame
            view_homography = None
            if homography is not None:
                view_homography = view.photo_to_view(homography)
                view_frame = self.camera.render(view_homography) if view.shift else frame
            self._publish_view(view, publishers, Header(stamp=stamp, frame_id=view.frame_id), view_frame,
                               view_homography)  # fmt: skip
        self.previous_homography, self.previous_stamp = homography, stamp
        self.count += 1

    def _publish_view(
        self, view: View, publishers: tuple, header: Header, frame: np.ndarray, homography: np.ndarray | None
    ) -> None:
        image_pub, compressed_pub, info_pub, truth_pub = publishers
        pixels, bytes_per_pixel = encode(frame, self.p["encoding"])
        if homography is not None:
            previous_to_current = (
                homography @ np.linalg.inv(view.photo_to_view(self.previous_homography))
                if self.previous_homography is not None
                else np.eye(3)
            )
            truth_pub.publish(
                ground_truth_message(
                    header, self.previous_stamp, previous_to_current / previous_to_current[2, 2], homography,
                    str(self.source),
                )
            )  # fmt: skip
        info_pub.publish(camera_info_message(frame.shape[1], frame.shape[0], header, view.baseline))
        image_pub.publish(image_message(pixels, self.p["encoding"], bytes_per_pixel, header))
        if compressed_pub is not None:
            ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
            if ok:
                msg = CompressedImage(header=header, format="jpeg")
                msg.data = to_array("B", jpeg)
                compressed_pub.publish(msg)

    def _finish(self, reason: str) -> None:
        self.finished = True
        self.timer.cancel()
        self.get_logger().info(f"done: {reason}")


def main(args: list[str] | None = None) -> int:
    """``ros2 run kp2d_ros camera_sim [--ros-args -p source:=... -p num_frames:=N]``."""
    rclpy.init(args=args)
    node = None
    try:
        node = CameraSimNode()
        while rclpy.ok() and not node.finished:
            rclpy.spin_once(node, timeout_sec=0.1)
        # Give reliable subscribers a moment to receive the last ground truth before the process exits.
        end = node.get_clock().now().nanoseconds + 300_000_000
        while rclpy.ok() and node.get_clock().now().nanoseconds < end:
            rclpy.spin_once(node, timeout_sec=0.05)
    except ValueError as error:
        rclpy.logging.get_logger("camera_sim").fatal(f"cannot start: {error}")
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``make demo`` / ``ros2 run kp2d_ros demo``: camera_sim feeding the detector, scored against the ground truth.

Starts the installed ``camera_sim`` and ``detector`` executables (what ``launch/demo.launch.py`` does, for
machines without ``ros2 launch``), listens to the matches and ground-truth homographies, prints one line per
processed frame (keypoints, matches, inliers, share of inliers within 3 px of the true motion) and saves a few
debug images to ``demo_output/``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile
from sensor_msgs.msg import Image

from kp2d_model.checkpoint import default_checkpoint_path
from kp2d_ros.conversions import image_to_array
from kp2d_ros.messages import stamp_ns
from kp2d_ros_msgs.msg import GroundTruthHomography, Keypoints, Matches

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "kp2d_reference" / "v4_reference.ckpt"


def _executable(name: str) -> str:
    """The installed executable (``install/kp2d_ros/lib/kp2d_ros/<name>``) found through AMENT_PREFIX_PATH."""
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        path = Path(prefix) / "lib" / "kp2d_ros" / name
        if prefix and path.is_file():
            return str(path)
    raise SystemExit(f"demo: {name} not installed; run 'make ros' and source install/local_setup.bash")


def _choose_model(model: str | None) -> str:
    if model:
        return model
    if default_checkpoint_path().is_file():
        return str(default_checkpoint_path())
    if FIXTURE.is_file():
        print(f"demo: no default model bundled yet; using the random-weight fixture {FIXTURE} (noisy matches)")
        return str(FIXTURE)
    raise SystemExit("demo: no default model bundled yet; pass one with --model /path/to/model.ckpt")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kp2d demo", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint (default: the bundled default model)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--input-scale", type=float, default=1.0, help="detector input_scale (2: finer, 4x compute)")
    parser.add_argument("--frames", type=int, default=40, help="camera frames to publish")
    parser.add_argument("--rate", type=float, default=5.0, help="camera frame rate (Hz)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--source", default="", help="photo, image folder or video (default: astronaut photo)")
    parser.add_argument("--output", default="demo_output", help="folder for a few debug images")
    args = parser.parse_args(argv)
    model = _choose_model(args.model)
    namespace = f"/kp2d_demo_{uuid.uuid4().hex[:6]}"
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)

    rclpy.init()
    node = rclpy.create_node("kp2d_demo", namespace=namespace)
    keypoints: dict[int, Keypoints] = {}
    arrival_ns: dict[int, int] = {}  # source stamp -> wall-clock arrival of its Keypoints (same clock as the stamp)
    matches: list[Matches] = []
    truths: dict[int, GroundTruthHomography] = {}
    saved: list[Path] = []

    def on_debug(msg: Image) -> None:
        if len(saved) < 5 and len(matches) % 5 == 1:
            path = output / f"debug_{len(saved)}.png"
            cv2.imwrite(str(path), image_to_array(msg).pixels)
            saved.append(path)

    def on_keypoints(msg: Keypoints) -> None:
        keypoints[stamp_ns(msg.header.stamp)] = msg
        arrival_ns[stamp_ns(msg.header.stamp)] = time.time_ns()

    node.create_subscription(Keypoints, "kp2d_detector/keypoints", on_keypoints, 10)
    node.create_subscription(Matches, "kp2d_detector/matches", matches.append, 10)
    node.create_subscription(GroundTruthHomography, "ground_truth", lambda m: truths.__setitem__(
        stamp_ns(m.header.stamp), m), QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL))  # fmt: skip
    node.create_subscription(Image, "kp2d_detector/debug_image", on_debug, 1)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    ns = ["-r", f"__ns:={namespace}"]
    detector = subprocess.Popen([_executable("detector"), "--ros-args", *ns, "-r", "image:=image_raw",
                                 "-p", f"model:={model}",
                                 "-p", f"device:={args.device}", "-p", f"input_scale:={args.input_scale}",
                                 "-p", "matching.geometry:=homography",
                                 "-p", "use_camera_info:=true", "-p", "camera_info_sync:=latest",
                                 "-p", "image_qos:=reliable"])  # fmt: skip
    camera = None
    try:
        deadline = time.monotonic() + 120
        while node.count_publishers(f"{namespace}/kp2d_detector/keypoints") == 0:
            if detector.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("demo: the detector did not start (see its log above)")
            time.sleep(0.1)
        camera = subprocess.Popen([_executable("camera_sim"), "--ros-args", *ns, "-p", f"num_frames:={args.frames}",
                                   "-p", f"rate:={args.rate}", "-p", f"width:={args.width}",
                                   "-p", f"height:={args.height}", "-p", "wait_for_subscribers:=1",
                                   "-p", "image_qos:=reliable",
                                   *(["-p", f"source:={args.source}"] if args.source else [])])  # fmt: skip
        if camera.wait() != 0:
            raise SystemExit(f"demo: camera_sim failed ({camera.returncode})")
        time.sleep(3.0)  # the last frame's inference
    finally:
        for process in (camera, detector):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()

    header = f"{'frame':>5} {'keypoints':>9} {'matches':>7} {'inliers':>7} {'within 3 px':>11} {'true motion':>11}"
    print(f"\n{header} {'tracks: mean/max length':>23} {'latency':>9}")
    shares = []
    for index, m in enumerate(matches):
        now, before = truths.get(stamp_ns(m.header.stamp)), truths.get(stamp_ns(m.previous_stamp))
        n_keypoints = len(keypoints[stamp_ns(m.header.stamp)].x) if stamp_ns(m.header.stamp) in keypoints else 0
        share = motion = ""
        if now is not None and before is not None and m.num_inliers:
            homography = np.reshape(now.reference_to_current, (3, 3)) @ np.linalg.inv(
                np.reshape(before.reference_to_current, (3, 3)))  # fmt: skip
            previous = np.stack([np.frombuffer(m.previous_x, np.float32), np.frombuffer(m.previous_y, np.float32)], 1)
            current = np.stack([np.frombuffer(m.current_x, np.float32), np.frombuffer(m.current_y, np.float32)], 1)
            projected = cv2.perspectiveTransform(previous.reshape(-1, 1, 2).astype(np.float64), homography)
            error = np.linalg.norm(projected.reshape(-1, 2) - current, axis=1)
            inlier = np.frombuffer(m.inlier, np.uint8).astype(bool)
            shares.append(float(np.mean(error[inlier] < 3.0)))
            share = f"{shares[-1]:.0%}"
            motion = f"{np.median(np.linalg.norm(projected.reshape(-1, 2) - previous, axis=1)):.1f} px"
        stamp = stamp_ns(m.header.stamp)
        tracks = latency = ""
        if stamp in keypoints and n_keypoints:
            lengths = np.frombuffer(keypoints[stamp].track_length, np.uint32)
            tracks = f"{lengths.mean():.1f} / {lengths.max()}"
        if stamp in arrival_ns:
            latency = f"{(arrival_ns[stamp] - stamp) / 1e6:.0f} ms"
        row = f"{index:>5} {n_keypoints:>9} {len(m.current_index):>7} {m.num_inliers:>7} {share:>11} {motion:>11}"
        print(f"{row} {tracks:>23} {latency:>9}")
    print(f"\n{len(matches)} of {args.frames} camera frames processed (the detector skips frames while busy)")
    if len(arrival_ns) >= 2:
        arrivals = sorted(arrival_ns.values())
        latencies = [(arrival_ns[s] - s) / 1e6 for s in arrival_ns]
        print(
            f"output rate: {(len(arrivals) - 1) / ((arrivals[-1] - arrivals[0]) / 1e9):.2f} FPS, "
            f"latency publish -> keypoints: median {np.median(latencies):.0f} ms, max {max(latencies):.0f} ms"
        )
    if shares:
        print(
            f"inliers within 3 px of the true motion: {np.mean(shares):.0%} on average (compare with the motion: "
            "points that did not move at all would agree when the motion is under 3 px)"
        )
    if saved:
        print(f"debug images: {', '.join(str(p) for p in saved)}")
    # Stop the spin thread before the node and context go: tearing them down under a thread still in
    # rclpy's wait set can abort the process at exit ("terminate called without an active exception").
    executor.shutdown()
    spinner.join(timeout=5.0)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0 if matches else 1


if __name__ == "__main__":
    sys.exit(main())

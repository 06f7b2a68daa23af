"""Transport benchmark: how many best-effort camera frames reach a subscriber in another process over Fast DDS.

A stock camera publisher (best effort, depth 1, like a driver's ``sensor_data`` QoS; one CameraInfo per frame)
and a receiver run as two processes on this machine, each with its own middleware environment:

- ``default``: Fast DDS' default transports in both processes (shared memory + UDPv4).
- ``subscriber``: the receiver gets the configuration the launch files ship
  (:func:`kp2d_ros.transport.subscriber_environment`, ``config/fastdds_subscriber.xml``); the publisher is stock.
- ``large_data``: ``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA`` in both processes (system-wide change).
- ``large_data_subscriber_only``: ``LARGE_DATA`` in the receiver's process only.
- (on request) ``large_data_publisher_only``; ``large_data_publisher_shipped_subscriber``: a ``LARGE_DATA``
  camera and the shipped profile in the receiver.

The receiver is a plain subscription (what reaches the process: transport loss alone) or, with
``--receiver node``, the detector node (frames it answers with Keypoints; ``--input-scale`` keeps its inference
short so that it keeps up). ``--load`` adds CPU-bound threads in the receiver (the node's torch threads during
inference). Each cell is repeated ``--repeats`` times, configurations in round robin; JSON out
(default ``benchmarks/results/transport.json``).

    scripts/with_ros_env.sh .venv/bin/python benchmarks/bench_transport.py

The same file runs the two roles (``publish``, ``receive``) as subprocesses; tests start ``publish`` too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DETECTOR = REPO_ROOT / "install" / "kp2d_ros" / "lib" / "kp2d_ros" / "detector"
FIXTURE = REPO_ROOT.parent / "shared" / "fixtures" / "kp2d_reference" / "v4_reference.ckpt"
CONFIGURATIONS = ("default", "subscriber", "large_data", "large_data_subscriber_only")
EXTRA_CONFIGURATIONS = ("large_data_publisher_only", "large_data_publisher_shipped_subscriber")
FORMATS = ("640x480:bgr8", "640x480:mono8", "1280x720:bgr8", "1280x720:mono8")


def sensor_qos(depth: int = 1):
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)


# --- role: publish ------------------------------------------------------------------------------------------------


def publish(args: argparse.Namespace) -> int:
    """Publish ``--frames`` frames at ``--rate`` Hz on <namespace>/image (+ camera_info); skip images in --skip."""
    import numpy as np
    import rclpy
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header

    from kp2d_ros.camera_sim import camera_info_message, encode, image_message

    width, height = (int(v) for v in args.size.split("x"))
    skip = {int(i) for i in args.skip.split(",") if i}
    rclpy.init()
    node = rclpy.create_node(f"bench_camera_{uuid.uuid4().hex[:6]}")
    image_pub = node.create_publisher(Image, f"{args.namespace}/image", sensor_qos())
    info_pub = node.create_publisher(CameraInfo, f"{args.namespace}/camera_info", sensor_qos())
    deadline = time.monotonic() + args.wait
    while image_pub.get_subscription_count() < 1 or info_pub.get_subscription_count() < args.info_subscribers:
        if time.monotonic() > deadline:
            print("publisher: no subscriber", flush=True)
            return 1
        time.sleep(0.05)
    time.sleep(args.settle)  # let discovery finish on both sides (locators, the reader's proxy)
    rng = np.random.default_rng(0)
    frames = [encode(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), args.encoding) for _ in range(4)]
    period = 1.0 / args.rate
    start = time.monotonic()
    stamp0 = args.stamp0
    for index in range(args.frames):
        time.sleep(max(0.0, start + index * period - time.monotonic()))
        seconds = stamp0 + index * period
        header = Header(frame_id="bench_camera")
        header.stamp.sec, header.stamp.nanosec = int(seconds), int(round((seconds - int(seconds)) * 1e9)) % 10**9
        pixels, bytes_per_pixel = frames[index % len(frames)]
        if index not in skip:
            image_pub.publish(image_message(pixels, args.encoding, bytes_per_pixel, header))
        info_pub.publish(camera_info_message(width, height, header))
    time.sleep(args.linger)
    print(f"publisher: sent {args.frames} frames ({len(skip)} images skipped) in {time.monotonic() - start:.2f} s",
          flush=True)  # fmt: skip
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


# --- role: receive ------------------------------------------------------------------------------------------------


def burn_cpu(stop: threading.Event) -> None:
    """Native matrix products that release the GIL, like torch's inference threads."""
    import numpy as np

    a = np.random.default_rng(0).random((400, 400), dtype=np.float32)
    while not stop.is_set():
        a @ a


def receive(args: argparse.Namespace) -> int:
    """Count the images (and camera_infos) that arrive on <namespace>/image until SIGINT; JSON on stdout."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import CameraInfo, Image

    stop = threading.Event()
    for _ in range(args.load):
        threading.Thread(target=burn_cpu, args=(stop,), daemon=True).start()
    rclpy.init()
    node = rclpy.create_node(f"bench_receiver_{uuid.uuid4().hex[:6]}")
    images: set[int] = set()
    infos: set[int] = set()

    def stamp_ns(msg) -> int:
        return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec

    node.create_subscription(Image, f"{args.namespace}/image", lambda m: images.add(stamp_ns(m)), sensor_qos())
    node.create_subscription(CameraInfo, f"{args.namespace}/camera_info", lambda m: infos.add(stamp_ns(m)),
                             sensor_qos(10))  # fmt: skip
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    interrupted = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    print("receiver: ready", flush=True)
    while not interrupted.is_set():
        executor.spin_once(timeout_sec=0.05)
    stop.set()
    print(json.dumps({"images": len(images), "camera_infos": len(infos)}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


# --- orchestration --------------------------------------------------------------------------------------------------


def environments(configuration: str, profile: str | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """(publisher environment, receiver environment) for one configuration."""
    from kp2d_ros.transport import SYSTEM_VARIABLES, subscriber_environment

    base = {k: v for k, v in os.environ.items() if k not in SYSTEM_VARIABLES}
    large = {**base, "FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"}
    if configuration == "default":
        return base, base
    if configuration == "subscriber":
        return base, {**base, **subscriber_environment(profile, base)}
    if configuration == "large_data":
        return large, large
    if configuration == "large_data_subscriber_only":
        return base, large
    if configuration == "large_data_publisher_only":
        return large, base
    if configuration == "large_data_publisher_shipped_subscriber":
        return large, {**base, **subscriber_environment(profile, base)}
    raise ValueError(f"unknown configuration {configuration!r}")


def run_cell(args: argparse.Namespace, configuration: str, size: str, encoding: str) -> dict:
    """One run: start the receiver, then the publisher; count what arrived."""
    publisher_env, receiver_env = environments(configuration, args.subscriber_profile)
    namespace = f"/bench_transport_{uuid.uuid4().hex[:6]}"
    script = str(Path(__file__).resolve())
    if args.receiver == "node":
        return run_node_cell(args, namespace, publisher_env, receiver_env, size, encoding)
    receiver = subprocess.Popen(
        [sys.executable, script, "receive", "--namespace", namespace, "--load", str(args.load)],
        env=receiver_env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert receiver.stdout.readline().startswith("receiver: ready")
        publisher = subprocess.run(
            [sys.executable, script, "publish", "--namespace", namespace, "--size", size, "--encoding", encoding,
             "--rate", str(args.rate), "--frames", str(args.frames), "--wait", "20"],
            env=publisher_env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        time.sleep(0.5)
        receiver.send_signal(signal.SIGINT)
        out, _ = receiver.communicate(timeout=30)
        counts = json.loads(out.strip().splitlines()[-1])
        return {"sent": args.frames, **counts, "publisher_ok": publisher.returncode == 0}
    finally:
        if receiver.poll() is None:
            receiver.kill()


def run_node_cell(args, namespace, publisher_env, receiver_env, size, encoding) -> dict:
    """The detector node as the receiver: count Keypoints answers (this process subscribes to them)."""
    import rclpy

    from kp2d_ros_msgs.msg import Keypoints

    model = args.checkpoint
    node = subprocess.Popen(
        [str(DETECTOR), "--ros-args", "-r", f"__ns:={namespace}", "-p", f"model:={model}", "-p", "device:=cpu",
         "-p", f"input_scale:={args.input_scale}", "-p", "top_k:=100", "-p", "publish_descriptors:=false",
         "-p", "use_camera_info:=true", "-p", "camera_info_sync:=latest"],
        env=receiver_env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    context = rclpy.Context()
    rclpy.init(context=context)
    client = rclpy.create_node(f"bench_client_{uuid.uuid4().hex[:6]}", context=context)
    answers: set[int] = set()

    def on_keypoints(msg: Keypoints) -> None:
        answers.add(msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)

    client.create_subscription(Keypoints, f"{namespace}/kp2d_detector/keypoints", on_keypoints, 50)
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=context)
    executor.add_node(client)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        publisher = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "publish", "--namespace", namespace, "--size", size,
             "--encoding", encoding, "--rate", str(args.rate), "--frames", str(args.frames), "--wait", "120",
             "--info-subscribers", "1", "--linger", "3"],
            env=publisher_env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        time.sleep(2.0)
        return {"sent": args.frames, "answered": len(answers), "publisher_ok": publisher.returncode == 0}
    finally:
        os.killpg(node.pid, signal.SIGINT)
        try:
            node.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
        executor.shutdown(timeout_sec=2.0)
        client.destroy_node()
        rclpy.try_shutdown(context=context)


def orchestrate(args: argparse.Namespace) -> int:
    from kp2d_ros.transport import receive_buffer_cap

    results: dict[str, dict[str, list[dict]]] = {}
    uptime_before = os.getloadavg()
    for repeat in range(args.repeats):
        for fmt in args.formats:
            size, encoding = fmt.split(":")
            for configuration in args.configurations:
                cell = run_cell(args, configuration, size, encoding)
                results.setdefault(fmt, {}).setdefault(configuration, []).append(cell)
                load = os.getloadavg()[0]
                print(
                    f"[{repeat + 1}/{args.repeats}] {fmt:>15} {configuration:>26}: {cell} load {load:.2f}", flush=True
                )
    key = "answered" if args.receiver == "node" else "images"
    summary = {
        fmt: {conf: {"median_received": statistics.median(c[key] for c in cells),
                     "all_received": [c[key] for c in cells], "sent": args.frames}
              for conf, cells in confs.items()}
        for fmt, confs in results.items()
    }  # fmt: skip
    report = {
        "what": "best-effort frames received in another process over Fast DDS (see the module docstring)",
        "receiver": args.receiver,
        "rate_hz": args.rate,
        "frames_per_run": args.frames,
        "repeats": args.repeats,
        "receiver_cpu_load_threads": args.load,
        "subscriber_profile": args.subscriber_profile or "shipped (config/fastdds_subscriber.xml)",
        "ros_automatic_discovery_range": os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "(unset: SUBNET)"),
        "net.core.rmem_max": receive_buffer_cap(),
        "load_average_before": uptime_before,
        "load_average_after": os.getloadavg(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "summary": summary,
        "runs": results,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role")
    pub = sub.add_parser("publish", help="(internal) the camera process")
    pub.add_argument("--namespace", required=True)
    pub.add_argument("--size", default="640x480")
    pub.add_argument("--encoding", default="bgr8")
    pub.add_argument("--rate", type=float, default=30.0)
    pub.add_argument("--frames", type=int, default=60)
    pub.add_argument("--skip", default="", help="comma-separated frame indices whose image is not published")
    pub.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the subscriber")
    pub.add_argument("--info-subscribers", type=int, default=1)
    pub.add_argument("--settle", type=float, default=1.0)
    pub.add_argument("--linger", type=float, default=1.0)
    pub.add_argument("--stamp0", type=float, default=1000.0)
    rec = sub.add_parser("receive", help="(internal) the receiving process")
    rec.add_argument("--namespace", required=True)
    rec.add_argument("--load", type=int, default=0)
    parser.add_argument("--receiver", choices=("plain", "node"), default="plain")
    parser.add_argument(
        "--configurations", nargs="+", default=list(CONFIGURATIONS), choices=CONFIGURATIONS + EXTRA_CONFIGURATIONS
    )
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), help="WIDTHxHEIGHT:encoding")
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--load", type=int, default=0, help="CPU-bound threads in the receiver")
    parser.add_argument("--input-scale", type=float, default=0.25, help="node receiver: network input scale")
    parser.add_argument("--subscriber-profile", help="another Fast DDS XML profile for the 'subscriber' runs")
    parser.add_argument("--checkpoint", default=str(FIXTURE))
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "transport.json"))
    args = parser.parse_args()
    if args.role == "publish":
        return publish(args)
    if args.role == "receive":
        return receive(args)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())

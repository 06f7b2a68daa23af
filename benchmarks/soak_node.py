"""Soak test of the detector node: 30 Hz 640x480 frames into the real node over DDS for 10 minutes.

Runs the installed ``detector`` (default model, CPU, top_k 1000, homography verification, compressed input on)
and publishes 640x480 BGR views of a photo at ``--rate`` Hz for ``--seconds``; every ``--hostile-every``
seconds it also sends a JPEG bomb (629 bytes claiming 16384 x 16384) and a 1 x 1,048,576 mono8 frame (8.4 M
pixels for the network after padding), each followed by a 1 s pause, which the node (``max_image_pixels``
2,000,000) must refuse without memory cost. Records the node's resident memory (VmRSS, /proc) every
``--sample-every`` seconds: at the start (node ready, before any frame), after ``--warmup`` seconds and at the
end; unhandled exceptions (``Traceback`` in the node's log) and failed frames; frames published, processed and
dropped (the node keeps only the newest frame); and the machine's load average.

Pass criteria (docs/ros.md): memory growth after warm-up <= 5 %, zero unhandled exceptions, exit 0 on SIGINT.
Writes JSON (default ``benchmarks/results/soak_node.json``).
``scripts/with_ros_env.sh .venv/bin/python benchmarks/soak_node.py [--seconds 600]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import struct
import subprocess
import threading
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from kp2d_ros.camera_sim import PhotoCamera, default_photo, image_message
from kp2d_ros_msgs.msg import Keypoints

REPO_ROOT = Path(__file__).resolve().parents[1]
DETECTOR = REPO_ROOT / "install" / "kp2d_ros" / "lib" / "kp2d_ros" / "detector"
WIDTH, HEIGHT = 640, 480
MAX_IMAGE_PIXELS = 2_000_000  # the node's limit here: a 640x480 camera with room (the thin frame needs 8.4 M)
HOSTILE_PAUSE_S = 1.0


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of ``pid`` in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def jpeg_bomb(side: int) -> bytes:
    """A small JPEG whose header claims ``side x side`` pixels."""
    data = bytearray(cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)


class Client:
    """Publishes frames into the detector, counts its Keypoints and reads its /diagnostics."""

    def __init__(self, namespace: str):
        self.node = rclpy.create_node(f"soak_client_{uuid.uuid4().hex[:6]}")
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        self.image_pub = self.node.create_publisher(Image, f"{namespace}/image", qos)
        self.compressed_pub = self.node.create_publisher(CompressedImage, f"{namespace}/image/compressed", qos)
        self.keypoints = 0
        self.diagnostics: list[dict[str, str]] = []
        self.namespace = namespace
        self.node.create_subscription(Keypoints, f"{namespace}/kp2d_detector/keypoints", self._on_keypoints, 50)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def _on_keypoints(self, msg: Keypoints) -> None:
        self.keypoints += 1

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith(self.namespace):
                self.diagnostics.append({v.key: v.value for v in status.values})

    def total(self, key: str) -> int:
        return sum(int(d.get(key, "0")) for d in self.diagnostics)


def floor_mb(samples: list[dict], start_s: float, end_s: float) -> float | None:
    """Lowest VmRSS (MB) among the samples taken from ``start_s`` to ``end_s`` (None: no sample there)."""
    values = [sample["VmRSS"] for sample in samples if start_s <= sample["t_s"] <= end_s]
    return round(min(values) / 1024, 1) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the warm-up memory reading")
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--hostile-every", type=float, default=30.0, help="seconds between bomb frames (0: none)")
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "soak_node.json"))
    args = parser.parse_args()

    camera = PhotoCamera(cv2.imread(str(default_photo())), (WIDTH, HEIGHT))
    frames = [image_message(camera.render(camera.reference_to_frame(t)), "bgr8", 3, Header()) for t in range(8)]
    bomb = jpeg_bomb(16384)
    thin = Image(encoding="mono8", width=1 << 20, height=1, step=1 << 20, data=bytes(1 << 20))

    namespace = f"/soak_{uuid.uuid4().hex[:6]}"
    log_path = REPO_ROOT / "log" / "soak_node_detector.log"  # log/ is not committed
    log_path.parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")  # noqa: SIM115 - closed at the end
    detector = subprocess.Popen(
        [str(DETECTOR), "--ros-args", "-r", f"__ns:={namespace}", "-p", f"device:={args.device}",
         "-p", "top_k:=1000", "-p", "image_qos:=reliable", "-p", "use_compressed:=true",
         "-p", "matching.geometry:=homography", "-p", f"max_image_pixels:={MAX_IMAGE_PIXELS}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    rclpy.init()
    client = Client(namespace)
    samples: list[dict] = []
    loads: list[float] = []
    published = hostile = 0
    try:
        deadline = time.monotonic() + 180
        while client.image_pub.get_subscription_count() == 0 or client.compressed_pub.get_subscription_count() == 0:
            if time.monotonic() > deadline or detector.poll() is not None:
                raise SystemExit(f"detector did not start; see {log_path}")
            time.sleep(0.1)
        time.sleep(2.0)
        start = memory_kb(detector.pid)
        begin = time.monotonic()
        next_sample = next_hostile = 0.0
        warmup: dict[str, int] | None = None
        period = 1.0 / args.rate
        while (elapsed := time.monotonic() - begin) < args.seconds:
            image = frames[published % len(frames)]
            image.header = Header(frame_id="soak")
            image.header.stamp.sec, image.header.stamp.nanosec = divmod(time.time_ns(), 10**9)
            client.image_pub.publish(image)
            published += 1
            if args.hostile_every and elapsed >= next_hostile:
                header = Header(frame_id="soak")
                header.stamp.sec, header.stamp.nanosec = divmod(time.time_ns(), 10**9)
                # each alone for a moment: the node keeps only the newest frame, a 30 Hz frame would replace it
                client.compressed_pub.publish(CompressedImage(header=header, format="jpeg", data=bomb))
                time.sleep(HOSTILE_PAUSE_S)
                thin.header = header
                client.image_pub.publish(thin)
                time.sleep(HOSTILE_PAUSE_S)
                hostile += 1
                next_hostile += args.hostile_every
            if elapsed >= next_sample:
                if detector.poll() is not None:
                    raise SystemExit(f"detector exited ({detector.returncode}); see {log_path}")
                samples.append({"t_s": round(elapsed, 1), **memory_kb(detector.pid), "processed": client.keypoints})
                loads.append(os.getloadavg()[0])
                next_sample += args.sample_every
            if warmup is None and elapsed >= args.warmup:
                warmup = memory_kb(detector.pid)
            time.sleep(max(0.0, begin + published * period - time.monotonic()))
        publish_seconds = time.monotonic() - begin
        time.sleep(3.0)  # the last diagnostics window
        end = memory_kb(detector.pid)
    finally:
        detector.send_signal(signal.SIGINT)
        try:
            exit_code = detector.wait(30)
        except subprocess.TimeoutExpired:
            detector.kill()
            exit_code = detector.wait()
        client.executor.shutdown()
        rclpy.try_shutdown()
        log.close()

    text = log_path.read_text(errors="replace")
    warmup = warmup or start
    floors = [floor_mb(samples, args.warmup, args.warmup + 60.0), floor_mb(samples, publish_seconds - 60.0, 1e9)]
    result = {
        "seconds": round(publish_seconds, 1),
        "resolution": f"{WIDTH}x{HEIGHT}",
        "rate_hz": args.rate,
        "published": published,
        "publish_rate_hz": round(published / publish_seconds, 2),
        "processed": client.keypoints,
        "output_rate_hz": round(client.keypoints / publish_seconds, 2),
        "dropped_by_node": client.total("dropped frames (newer frame arrived first)"),
        "hostile_frame_pairs": hostile,
        "max_image_pixels": MAX_IMAGE_PIXELS,
        "rejected_frames": client.total("rejected frames (bad input)"),
        "failed_frames": client.total("failed frames (model errors)"),
        "unhandled_exceptions": text.count("Traceback"),
        "exit_code_on_sigint": exit_code,
        "rss_mb": {
            "start": round(start["VmRSS"] / 1024, 1),
            "after_warmup": round(warmup["VmRSS"] / 1024, 1),
            "end": round(end["VmRSS"] / 1024, 1),
            "peak": round(end["VmHWM"] / 1024, 1),
        },
        "growth_after_warmup_percent": round(100.0 * (end["VmRSS"] - warmup["VmRSS"]) / warmup["VmRSS"], 2),
        # RSS swings ~100 MB within a frame (activations come and go): the floor (lowest sample) of the minute
        # after warm-up against that of the last minute compares like with like.
        "rss_floor_mb": {
            "first_minute_after_warmup": floors[0],
            "last_minute": floors[1],
        },
        "floor_growth_percent": round(100.0 * (floors[1] - floors[0]) / floors[0], 2) if all(floors) else None,
        "samples": samples,
        "environment": {
            "cpu_count": os.cpu_count(),
            "load_average_1m": {
                "min": min(loads, default=float("nan")),
                "median": float(np.median(loads)) if loads else float("nan"),
                "max": max(loads, default=float("nan")),
            },
            "device": args.device,
            "machine": platform.machine(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
    }
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    rss = result["rss_mb"]
    print(
        f"{result['seconds']:.0f} s at {result['publish_rate_hz']} Hz: processed {result['processed']} "
        f"({result['output_rate_hz']} Hz), dropped {result['dropped_by_node']}, rejected {result['rejected_frames']}, "
        f"failed {result['failed_frames']}, tracebacks {result['unhandled_exceptions']}, exit {exit_code}; RSS "
        f"start {rss['start']} MB, after warm-up {rss['after_warmup']} MB, end {rss['end']} MB (peak {rss['peak']}): "
        f"growth after warm-up {result['growth_after_warmup_percent']} %; "
        f"load {result['environment']['load_average_1m']}"
    )
    print(f"wrote {args.output}")
    ok = result["growth_after_warmup_percent"] <= 5.0 and result["unhandled_exceptions"] == 0 and exit_code == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

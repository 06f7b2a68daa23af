"""Detector node benchmark: per-frame overhead of the node beyond the network, and behaviour under a 30 Hz source.

Runs the installed ``detector`` (``install/kp2d_ros/lib/kp2d_ros/detector``, top_k 1000, CPU unless
``--device``) on 640x480 BGR views of a photo over real DDS (loopback), from this process:

1. ``sequential``: publish one frame, wait for its Keypoints, repeat. End-to-end latency (publish ->
   Keypoints received) minus the detector's own time (``KeypointDetector`` call, reported per frame window
   by the node on /diagnostics) = the node's overhead including DDS transport both ways.
   The node also reports its own split of that overhead on /diagnostics (wait for the detect thread,
   conversion, handoff to the finish thread, matching, publishing): ``node_overhead_parts_ms``.
2. ``components``: the same steps timed in this process, one at a time (image conversion, matching
   1000 x 1000, track ids, building + serialising the Keypoints and Matches messages).
3. ``stream_30hz``: frames published at 30 Hz for ``--seconds``: output rate, frames dropped by the node, and
   latency of the processed frames over time (first third vs last third: no queue growth).

Writes JSON (default ``benchmarks/results/node.json``) and prints a summary. Not a test: run it on a quiet
machine. ``scripts/with_ros_env.sh .venv/bin/python benchmarks/bench_node.py``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import threading
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from kp2d_model import KeypointDetector, match_descriptors
from kp2d_model.checkpoint import default_checkpoint_path
from kp2d_model.matching import squared_distances
from kp2d_ros.camera_sim import PhotoCamera, default_photo, image_message
from kp2d_ros.conversions import image_to_array
from kp2d_ros.detector_node import OVERHEAD_PARTS
from kp2d_ros.messages import keypoints_message, matches_message
from kp2d_ros.tracks import carry_tracks
from kp2d_ros_msgs.msg import Keypoints

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE = REPO_ROOT.parent / "shared" / "fixtures" / "kp2d_reference" / "v4_reference.ckpt"
DETECTOR = REPO_ROOT / "install" / "kp2d_ros" / "lib" / "kp2d_ros" / "detector"
WIDTH, HEIGHT, TOP_K = 640, 480, 1000


def stats(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "mean_ms": statistics.fmean(samples),
        "median_ms": statistics.median(samples),
        "p90_ms": samples[int(0.9 * (len(samples) - 1))],
        "max_ms": samples[-1],
        "n": len(samples),
    }


class Client:
    """Publishes frames to the detector and records Keypoints arrivals and diagnostics."""

    def __init__(self, namespace: str):
        self.node = rclpy.create_node(f"bench_client_{uuid.uuid4().hex[:6]}")
        # RELIABLE, depth 1 on both sides (the node's image_qos:=reliable): still newest-sample-only, but a
        # 921 KB best-effort sample is mostly lost on Fast DDS' default UDP transport here (docs/ros.md).
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        self.publisher = self.node.create_publisher(Image, f"{namespace}/image", qos)
        self.arrivals: dict[int, float] = {}  # stamp ns -> arrival (perf_counter)
        # Waiting on a condition, not polling: a 2 kHz sleep loop here took CPU from the node's threads on a 2-core
        # machine (the node's own inference and matching times rose with it).
        self.arrived = threading.Condition()
        self.keypoint_counts: list[int] = []
        self.diagnostics: list[dict[str, str]] = []
        self.namespace = namespace
        self.node.create_subscription(Keypoints, f"{namespace}/kp2d_detector/keypoints", self._on_keypoints, 50)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def _on_keypoints(self, msg: Keypoints) -> None:
        arrival = time.perf_counter()
        with self.arrived:
            self.arrivals[msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec] = arrival
            self.keypoint_counts.append(len(msg.x))
            self.arrived.notify_all()

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith(self.namespace):
                self.diagnostics.append({v.key: v.value for v in status.values})

    def publish(self, image: Image, stamp_ns: int) -> float:
        image.header = Header(frame_id="bench")
        image.header.stamp.sec, image.header.stamp.nanosec = divmod(stamp_ns, 10**9)
        sent = time.perf_counter()
        self.publisher.publish(image)
        return sent

    def wait_for(self, stamp_ns: int, timeout: float) -> float | None:
        with self.arrived:
            self.arrived.wait_for(lambda: stamp_ns in self.arrivals, timeout)
            return self.arrivals.get(stamp_ns)

    def node_means(self, start: int) -> dict[str, float]:
        """Frame-weighted means of the node's inference and overhead over diagnostics windows from ``start``."""
        rows = [d for d in self.diagnostics[start:] if d.get("processed frames", "0") != "0"]
        frames = [int(d["processed frames"]) for d in rows]
        mean = {}
        for key, name in (("inference mean (ms)", "inference_ms"),
                          ("overhead mean (ms, latency minus inference)", "node_internal_overhead_ms")):  # fmt: skip
            values = [float(d[key]) for d in rows]
            mean[name] = float(np.average(values, weights=frames)) if frames else float("nan")
        parts = {}  # the node's own split of the overhead (diagnostics "overhead part mean (ms): <name>")
        for name in OVERHEAD_PARTS:
            key = f"overhead part mean (ms): {name}"
            reported = [(float(d[key]), n) for d, n in zip(rows, frames, strict=True) if d.get(key, "n/a") != "n/a"]
            if reported:
                parts[name] = float(np.average([v for v, _ in reported], weights=[n for _, n in reported]))
        mean["node_overhead_parts_ms"] = parts
        mean["dropped"] = sum(int(d["dropped frames (newer frame arrived first)"]) for d in self.diagnostics[start:])
        mean["processed"] = sum(frames)
        return mean


def run_sequential(client: Client, frames: list[Image], count: int) -> dict:
    latencies = []
    start_diag = len(client.diagnostics)
    for i in range(count):
        stamp_ns = time.time_ns()
        sent = client.publish(frames[i % len(frames)], stamp_ns)
        arrived = client.wait_for(stamp_ns, timeout=60.0)
        if arrived is not None:
            latencies.append((arrived - sent) * 1e3)
        time.sleep(0.05)
    time.sleep(2.5)  # the last diagnostics window
    node = client.node_means(start_diag)
    result = {"end_to_end": stats(latencies), **node}
    result["overhead_ms"] = result["end_to_end"]["mean_ms"] - node["inference_ms"]
    return result


def run_stream(client: Client, frames: list[Image], seconds: float, rate: float) -> dict:
    start_diag = len(client.diagnostics)
    sent: dict[int, float] = {}
    period = 1.0 / rate
    begin = time.perf_counter()
    i = 0
    while time.perf_counter() - begin < seconds:
        stamp_ns = time.time_ns()
        sent[stamp_ns] = client.publish(frames[i % len(frames)], stamp_ns)
        i += 1
        time.sleep(max(0.0, begin + i * period - time.perf_counter()))
    publish_s = time.perf_counter() - begin
    last = max(sent)
    client.wait_for(last, timeout=60.0)
    time.sleep(2.5)
    processed = sorted((s, client.arrivals[s] - sent[s]) for s in sent if s in client.arrivals)
    latencies = [latency * 1e3 for _, latency in processed]
    third = max(1, len(latencies) // 3)
    node = client.node_means(start_diag)
    return {
        "published": len(sent),
        "publish_rate_hz": len(sent) / publish_s,
        "processed": len(processed),
        "output_rate_hz": len(processed) / publish_s,
        "dropped_by_node": node["dropped"],
        "last_frame_processed": last in client.arrivals,
        "latency": stats(latencies) if latencies else None,
        "latency_first_third_mean_ms": statistics.fmean(latencies[:third]) if latencies else None,
        "latency_last_third_mean_ms": statistics.fmean(latencies[-third:]) if latencies else None,
        "inference_ms": node["inference_ms"],
        "node_internal_overhead_ms": node["node_internal_overhead_ms"],
        "node_overhead_parts_ms": node["node_overhead_parts_ms"],
    }


def time_components(frames: list[Image], checkpoint: str, device: str, repeats: int) -> dict:
    """The node's per-frame steps besides the network, timed in this process (ms, median of ``repeats``)."""
    detector = KeypointDetector(checkpoint=checkpoint, device=device, top_k=TOP_K)
    a = detector(image_to_array(frames[0]).pixels)
    b = detector(image_to_array(frames[1]).pixels)
    points = b.keypoints.cpu().numpy()
    times: dict[str, list[float]] = {k: [] for k in ("conversion", "matching", "to_numpy", "tracks", "messages")}
    tracks, _ = carry_tracks(None, len(a), np.zeros(0, int), np.zeros(0, int), 1)
    for _ in range(repeats):
        t0 = time.perf_counter()
        image_to_array(frames[1])
        t1 = time.perf_counter()
        matches = match_descriptors(a.descriptors, b.descriptors)
        t2 = time.perf_counter()
        previous_index, current_index = matches.index_a.cpu().numpy(), matches.index_b.cpu().numpy()
        distance, descriptors = matches.distance.cpu().numpy(), b.descriptors.cpu().numpy()
        scores = b.scores.cpu().numpy()
        t3 = time.perf_counter()
        current, _ = carry_tracks(tracks, len(b), previous_index, current_index, 10**6)
        t4 = time.perf_counter()
        header = frames[1].header
        ids, lengths = current.ids, current.lengths
        k = keypoints_message(header, 1, (WIDTH, HEIGHT), points, scores, ids, lengths, None, descriptors)
        m = matches_message(header, header.stamp, previous_index, current_index, distance,
                            a.keypoints.cpu().numpy()[previous_index], points[current_index])  # fmt: skip
        serialize_message(k), serialize_message(m)  # what publish() does before handing the bytes to DDS
        t5 = time.perf_counter()
        for name, (start, end) in zip(times, [(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5)], strict=True):
            times[name].append((end - start) * 1e3)
    result = {name: statistics.median(values) for name, values in times.items()}
    result["total_ms"] = sum(result.values())
    # On a shared 2-core machine torch's 2 OpenMP threads stall when one core is taken: matching on 1 thread too.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    single = []
    for _ in range(repeats):
        start = time.perf_counter()
        match_descriptors(a.descriptors, b.descriptors)
        single.append((time.perf_counter() - start) * 1e3)
    torch.set_num_threads(threads)
    result["matching_1_thread"] = statistics.median(single)
    floor = []  # the matrix product alone: what matching cannot go below without another arithmetic
    for _ in range(repeats):
        start = time.perf_counter()
        squared_distances(a.descriptors, b.descriptors)
        floor.append((time.perf_counter() - start) * 1e3)
    result["matching_distance_gemm_only"] = statistics.median(floor)
    result["matches"] = len(current_index)
    result["keypoints"] = len(points)
    return result


def run_node(args: argparse.Namespace, frames: list[Image], precision: str) -> tuple[dict, dict, list[int]]:
    """Start the installed detector with ``precision`` (backend auto), run the sequential and 30 Hz phases."""
    namespace = f"/bench_{uuid.uuid4().hex[:6]}"
    log = (
        open(REPO_ROOT / "log" / f"bench_node_detector_{precision}.log", "wb") if (REPO_ROOT / "log").is_dir() else None
    )  # noqa: SIM115, E501
    detector = subprocess.Popen(
        [str(DETECTOR), "--ros-args", "-r", f"__ns:={namespace}", "-p", f"model:={args.checkpoint}",
         "-p", f"device:={args.device}", "-p", f"top_k:={TOP_K}", "-p", "image_qos:=reliable",
         "-p", f"precision:={precision}"],
        stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    rclpy.init()
    client = Client(namespace)
    try:
        deadline = time.monotonic() + 180
        while client.publisher.get_subscription_count() == 0 or client.node.count_publishers(
            f"{namespace}/kp2d_detector/keypoints") == 0:  # fmt: skip
            if time.monotonic() > deadline or detector.poll() is not None:
                raise SystemExit("detector did not start")
            time.sleep(0.1)
        run_sequential(client, frames, 3)  # warm-up (first inferences, DDS discovery of large samples)
        sequential = run_sequential(client, frames, args.frames)
        stream = run_stream(client, frames, args.seconds, 30.0)
    finally:
        detector.send_signal(signal.SIGINT)
        detector.wait(20)
        client.executor.shutdown()
        rclpy.try_shutdown()
    return sequential, stream, client.keypoint_counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_model = default_checkpoint_path() if default_checkpoint_path().is_file() else FIXTURE
    parser.add_argument("--checkpoint", default=str(default_model))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=20, help="sequential frames")
    parser.add_argument("--seconds", type=float, default=20.0, help="30 Hz stream duration")
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "node.json"))
    parser.add_argument(
        "--precision", action="append", help="node precision parameter, repeatable, one node after the other "
        "(default: fp32 then auto); the top-level figures are the last one's"
    )  # fmt: skip
    args = parser.parse_args()
    args.precision = args.precision or ["fp32", "auto"]

    load_at_start = os.getloadavg()[0]
    camera = PhotoCamera(cv2.imread(str(default_photo())), (WIDTH, HEIGHT))
    frames = [image_message(camera.render(camera.reference_to_frame(t)), "bgr8", 3, Header()) for t in range(8)]
    components = time_components(frames, args.checkpoint, args.device, repeats=20)

    runs = {precision: run_node(args, frames, precision) for precision in args.precision}
    sequential, stream, keypoint_counts = runs[args.precision[-1]]
    result = {
        "resolution": f"{WIDTH}x{HEIGHT}",
        "top_k": TOP_K,
        "keypoints_per_frame_mean": float(np.mean(keypoint_counts)) if keypoint_counts else 0.0,
        "precision": args.precision[-1],
        "sequential": sequential,
        "components_in_process": components,
        "stream_30hz": stream,
        "by_precision": {name: {"sequential": run[0], "stream_30hz": run[1]} for name, run in runs.items()},
        "environment": {
            "cpu_count": os.cpu_count(),
            "load_average_1m_at_start": load_at_start,
            "load_average_1m_at_end": os.getloadavg()[0],
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "device": args.device,
            "checkpoint": args.checkpoint,
            "machine": platform.machine(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    e2e = sequential["end_to_end"]
    print(f"sequential: end-to-end {e2e['mean_ms']:.1f} ms (median {e2e['median_ms']:.1f}), detector "
          f"{sequential['inference_ms']:.1f} ms -> node overhead {sequential['overhead_ms']:.1f} ms per frame "
          f"(inside the node: {sequential['node_internal_overhead_ms']:.1f} ms)")  # fmt: skip
    parts = sequential["node_overhead_parts_ms"]
    print("inside the node, its parts (ms, mean): " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
    for name, run in runs.items():
        run_parts = ", ".join(f"{k} {v:.2f}" for k, v in run[0]["node_overhead_parts_ms"].items())
        print(f"  {name}: overhead inside the node {run[0]['node_internal_overhead_ms']:.2f} ms ({run_parts})")
    steps = ("conversion", "matching", "matching_1_thread", "matching_distance_gemm_only", "to_numpy", "tracks",
             "messages", "total_ms")
    print("components (ms, median): " + ", ".join(f"{k} {components[k]:.2f}" for k in steps))
    latency = stream["latency"] or {}
    print(f"30 Hz stream: published {stream['published']} at {stream['publish_rate_hz']:.1f} Hz, processed "
          f"{stream['processed']} ({stream['output_rate_hz']:.2f} Hz), node dropped {stream['dropped_by_node']}, "
          f"latency mean {latency.get('mean_ms', float('nan')):.0f} ms (first third "
          f"{stream['latency_first_third_mean_ms'] or float('nan'):.0f}, last third "
          f"{stream['latency_last_third_mean_ms'] or float('nan'):.0f})")  # fmt: skip
    if len(runs) > 1:
        rates = {name: run[1]["processed"] for name, run in runs.items()}
        base = rates[args.precision[0]]
        print("30 Hz stream, frames processed: " + ", ".join(
            f"{name} {count} ({count / base:.2f}x {args.precision[0]})" if base else f"{name} {count}"
            for name, count in rates.items()))  # fmt: skip
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

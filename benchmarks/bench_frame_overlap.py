"""Does overlapping pay on this CPU? The detector node's frame path serial vs on two threads, in one process.

Both run the node's per-frame work on 640x480 views of a photo, back to back (as when a 30 Hz camera keeps a
frame waiting): conversion of a sensor_msgs/Image, ``FramePipeline.detect`` (the network), then
``FramePipeline.finish`` (matching 1000 x 1000, tracks) and the Keypoints + Matches messages built and
serialised (what ``publish`` does before DDS).

- ``serial``: one thread does all of it, frame after frame (the node before the overlap).
- ``overlapped``: the node's design: a detect thread (conversion + network) hands each detected frame to a
  finish thread (one frame at most between them), which matches and builds the messages while the detect
  thread runs the next frame's network.

Round-robin: ``--rounds`` times each mode for ``--frames`` frames, alternating; frames per second, median.
Writes JSON (default ``benchmarks/results/frame_overlap.json``).
``scripts/with_ros_env.sh .venv/bin/python benchmarks/bench_frame_overlap.py --precision auto --precision fp32``
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import threading
import time
from pathlib import Path

import cv2
import torch
from rclpy.serialization import serialize_message
from std_msgs.msg import Header

from kp2d_model import KeypointDetector
from kp2d_model.frame_pipeline import FramePipeline, PipelineConfig
from kp2d_ros.camera_sim import PhotoCamera, default_photo, image_message
from kp2d_ros.conversions import image_to_array
from kp2d_ros.messages import keypoints_from_record, matches_from_record

REPO_ROOT = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT, TOP_K = 640, 480, 1000


def publish_bytes(record, header: Header) -> None:  # noqa: ANN001
    """The node's messages for ``record``, serialised as ``publish`` does."""
    serialize_message(keypoints_from_record(header, 1, record, True))
    serialize_message(matches_from_record(header, record, "none"))


def run_serial(pipeline: FramePipeline, frames: list, count: int, first_stamp: int) -> float:
    """Frames per second, everything on this thread."""
    start = time.perf_counter()
    for k in range(count):
        msg = frames[k % len(frames)]
        image = image_to_array(msg)
        record = pipeline.step(image.pixels, first_stamp + k, channel_order=image.channel_order)
        publish_bytes(record, msg.header)
    return count / (time.perf_counter() - start)


def run_overlapped(pipeline: FramePipeline, frames: list, count: int, first_stamp: int) -> float:
    """Frames per second, detect and finish on two threads with a one-frame handoff (the node's design)."""
    handoff: queue.Queue = queue.Queue(maxsize=1)

    def finish() -> None:
        while (item := handoff.get()) is not None:
            k, detected = item
            record = pipeline.finish(detected, first_stamp + k)
            publish_bytes(record, frames[k % len(frames)].header)

    finisher = threading.Thread(target=finish)
    start = time.perf_counter()
    finisher.start()
    for k in range(count):
        image = image_to_array(frames[k % len(frames)])
        handoff.put((k, pipeline.detect(image.pixels, channel_order=image.channel_order)))
    handoff.put(None)
    finisher.join()
    return count / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", action="append", help="repeatable (default: auto)")
    parser.add_argument("--frames", type=int, default=20, help="frames per timed run")
    parser.add_argument("--rounds", type=int, default=5, help="timed runs of each mode, alternating")
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "frame_overlap.json"))
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]

    camera = PhotoCamera(cv2.imread(str(default_photo())), (WIDTH, HEIGHT))
    frames = [image_message(camera.render(camera.reference_to_frame(t)), "bgr8", 3, Header()) for t in range(8)]
    results = {}
    for precision in args.precision or ["auto"]:
        detector = KeypointDetector(device="cpu", top_k=TOP_K, precision=precision)
        pipeline = FramePipeline(detector, PipelineConfig(top_k=TOP_K))
        run_serial(pipeline, frames, 3, 0)  # warm-up
        rates: dict[str, list[float]] = {"serial": [], "overlapped": []}
        stamp = 10**9
        for _ in range(args.rounds):
            for mode, run in (("serial", run_serial), ("overlapped", run_overlapped)):
                pipeline.reset()
                rates[mode].append(run(pipeline, frames, args.frames, stamp))
                stamp += 10**9
        median = {mode: statistics.median(values) for mode, values in rates.items()}
        results[precision] = {
            "engine": str(getattr(detector, "engine_choice", precision)),
            "frames_per_second_median": median,
            "overlapped_over_serial": median["overlapped"] / median["serial"],
            "frames_per_second_runs": rates,
        }
        print(f"{precision}: serial {median['serial']:.2f} fps, overlapped {median['overlapped']:.2f} fps "
              f"({median['overlapped'] / median['serial']:.3f}x)")  # fmt: skip
    output = {
        "resolution": f"{WIDTH}x{HEIGHT}",
        "top_k": TOP_K,
        "frames_per_run": args.frames,
        "rounds": args.rounds,
        "by_precision": results,
        "environment": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_1m_at_start": load_at_start,
            "load_average_1m_at_end": os.getloadavg()[0],
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
    }
    Path(args.output).write_text(json.dumps(output, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

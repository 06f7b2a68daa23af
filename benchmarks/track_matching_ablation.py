"""kp2d matching settings on the sequence benchmark (kp2d-track-bench's sequences), detections computed once.

The detector runs once per frame (top-k 2000, score-sorted, so the first 1000 are the top-1000; ``--contrast``,
default the node's ``stretch``); every
matching variant then runs the benchmark's kp2d front-end logic (match -> optional geometry -> carry_tracks)
on the cached detections, at every frame and at every ``--stride``-th frame (the gaps a busy CPU leaves: at
30 fps a ~200 ms detector processes about every 6th frame). Quality only; no timing.

    .venv/bin/python benchmarks/track_matching_ablation.py --json benchmarks/results/track_matching_ablation.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from kp2d_model.detector import KeypointDetector
from kp2d_model.evaluation.synthetic import held_out_photos, read_photo
from kp2d_model.image import CONTRASTS
from kp2d_model.track_bench.bench import photos_for, run_sequence
from kp2d_model.track_bench.frontends import NODE_CONTRAST, DescriptorFrontEnd, MatchingSettings
from kp2d_model.track_bench.metrics import RunResult, summarize
from kp2d_model.track_bench.sequences import SEQUENCE_NAMES, Sequence, make_sequence

VARIANTS = {
    "node default (mutual NN)": MatchingSettings(),
    "ratio 0.9": MatchingSettings(ratio=0.9),
    "geometry homography 3 px": MatchingSettings(geometry="homography"),
    "geometry fundamental 3 px": MatchingSettings(geometry="fundamental"),
    "geometry homography 1 px": MatchingSettings(geometry="homography", geometry_threshold=1.0),
    "geometry fundamental 1 px": MatchingSettings(geometry="fundamental", geometry_threshold=1.0),
    "prediction 40 px": MatchingSettings(prediction_radius=40.0),
    "prediction 40 px + fundamental": MatchingSettings(prediction_radius=40.0, geometry="fundamental"),
    "top_k 2000": MatchingSettings(top_k=2000),
    "top_k 2000 + fundamental": MatchingSettings(top_k=2000, geometry="fundamental"),
}


class CachedKp2d(DescriptorFrontEnd):
    """The kp2d front-end's matching and tracking on detections computed beforehand (keyed by frame buffer)."""

    def __init__(self, cache: dict[int, tuple[np.ndarray, object]], settings: MatchingSettings):
        self.cache = cache
        super().__init__(settings)

    def detect(self, image_bgr: np.ndarray):
        points, descriptors = self.cache[image_bgr.__array_interface__["data"][0]]
        k = self.settings.top_k
        return points[:k], descriptors[:k]


def strided(sequence: Sequence, stride: int) -> Sequence:
    return replace(
        sequence,
        frames=sequence.frames[::stride],
        photo_to_frame=sequence.photo_to_frame[::stride],
        fps=sequence.fps / stride,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=45)
    parser.add_argument("--resolution", default="640x480")
    parser.add_argument("--stride", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sequence", action="append", choices=SEQUENCE_NAMES, help="repeatable (default: all)")
    parser.add_argument("--contrast", choices=CONTRASTS, default=NODE_CONTRAST, help="detector contrast (the node's)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.resolution.split("x"))
    detector = KeypointDetector(device="cpu", top_k=2000, contrast=args.contrast)
    photos = held_out_photos()
    results = {(name, rate): RunResult() for name in VARIANTS for rate in ("every_frame", f"every_{args.stride}")}
    load_before = os.getloadavg()
    for index, name in enumerate(SEQUENCE_NAMES):
        if args.sequence and name not in args.sequence:
            continue
        photo = photos[photos_for(index, len(photos), 1, args.seed)[0]]
        sequence = make_sequence(read_photo(photo.path), name, args.frames, size, 30.0, args.seed, photo.name)
        cache = {}
        for frame in sequence.frames:
            detections = detector(frame)
            cache[frame.__array_interface__["data"][0]] = (detections.keypoints.numpy(), detections.descriptors)
        print(f"{name} on {photo.name}: detected", file=sys.stderr, flush=True)
        for variant, settings in VARIANTS.items():
            run_sequence(CachedKp2d(cache, settings), sequence, "every_frame", results[(variant, "every_frame")])
            run_sequence(
                CachedKp2d(cache, settings),
                strided(sequence, args.stride),
                "every_frame",
                results[(variant, f"every_{args.stride}")],
            )
    rows = []
    print("| variant | frames | correct / frame | precision | median track | frames >= 50 correct |")
    print("|---|---|---|---|---|---|")
    for (variant, rate), result in results.items():
        summary = summarize(result.frames, result.track_lengths, sum(result.frames_total.values()))
        by_sequence = {}
        for name in args.sequence or SEQUENCE_NAMES:
            records = [r for r in result.frames if r.sequence.startswith(name + "/")]
            by_sequence[name] = summarize(records, result.track_lengths_by_sequence.get(name, []), 1)
        rows.append({"variant": variant, "rate": rate, "summary": summary, "sequences": by_sequence})
        print(
            f"| {variant} | {rate.replace('_', ' ')} | {summary['correct_matches_per_frame']:.1f} | "
            f"{summary['precision']:.3f} | {summary['median_track_length']:.0f} | "
            f"{summary['frames_with_50_correct']:.2f} |"
        )
    load = {"before": list(load_before), "after": list(os.getloadavg())}
    print(f"load {load}")
    if args.json:
        args.json.write_text(json.dumps({"arguments": vars(args) | {"json": str(args.json)}, "load": load,
                                         "runs": rows}, indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

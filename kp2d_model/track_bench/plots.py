"""Plots for ``kp2d-track-bench --plots DIR``: per-frame correct-match curves and a track picture (matplotlib)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from kp2d_model.track_bench.bench import TrackPicture
from kp2d_model.track_bench.metrics import RunResult

TAIL_FRAMES = 10


def write_plots(
    folder: Path, results: dict[tuple[str, str], RunResult], pictures: dict[str, TrackPicture]
) -> list[Path]:
    """``correct_per_frame_<rate>.png``: correct matches per processed frame, one panel per sequence run, one
    curve per method; ``tracks_<method>.png``: the last frame of the first sequence with each method's track
    tails (last ``TAIL_FRAMES`` processed frames; green: correct link, red: wrong). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for rate in dict.fromkeys(rate for _, rate in results):
        runs = {label: result for (label, r), result in results.items() if r == rate}
        keys = list(dict.fromkeys(record.sequence for result in runs.values() for record in result.frames))
        columns = 2
        rows = (len(keys) + columns - 1) // columns
        figure, axes = plt.subplots(rows, columns, figsize=(12, 2.6 * rows), squeeze=False, sharey=True)
        for axis, key in zip(axes.ravel(), keys, strict=False):
            for label, result in runs.items():
                records = [r for r in result.frames if r.sequence == key and r.has_previous]
                axis.plot([r.frame for r in records], [r.correct for r in records], label=label, marker=".", ms=3)
            axis.axhline(50, color="grey", lw=0.5, ls="--")
            axis.set_title(key, fontsize=9)
            axis.set_xlabel("frame")
        for axis in axes.ravel()[len(keys) :]:
            axis.axis("off")
        axes[0, 0].set_ylabel("correct matches")
        axes[0, 0].legend(fontsize=8)
        figure.suptitle(f"correct matches (<= 2 px) per processed frame, {rate.replace('_', ' ')}")
        figure.tight_layout()
        path = folder / f"correct_per_frame_{rate}.png"
        figure.savefig(path, dpi=80)
        plt.close(figure)
        written.append(path)
    for label, picture in pictures.items():
        if picture.image is None:
            continue
        canvas = picture.image.copy()
        positions: dict[int, list[tuple[np.ndarray, bool]]] = {}
        for _, points, ids, current_index, correct in picture.frames[-TAIL_FRAMES:]:
            carried = dict(zip(current_index.tolist(), correct.tolist(), strict=True))
            for index, (track_id, point) in enumerate(zip(ids.tolist(), points, strict=True)):
                positions.setdefault(track_id, []).append((point, carried.get(index, True)))
        _, last_points, last_ids, _, _ = picture.frames[-1]
        for track_id in last_ids.tolist():
            tail = positions.get(track_id, [])
            for (a, _), (b, ok) in zip(tail[:-1], tail[1:], strict=True):
                colour = (0, 200, 0) if ok else (0, 0, 255)
                cv2.line(canvas, tuple(np.round(a).astype(int)), tuple(np.round(b).astype(int)), colour, 1, cv2.LINE_AA)
        for point in last_points:
            cv2.circle(canvas, tuple(np.round(point).astype(int)), 2, (255, 200, 0), -1)
        cv2.putText(canvas, f"{label} {picture.sequence}", (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2)
        path = folder / f"tracks_{label}.png"
        cv2.imwrite(str(path), canvas)
        written.append(path)
    return written

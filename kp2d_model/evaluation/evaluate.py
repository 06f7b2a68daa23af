"""HPatches evaluation driver: a feature method over every pair (1, k) of every sequence -> per-pair metrics.

Per sequence the six images are described once (image 1 serves all five pairs; a method with
``describe_batch`` gets them as one network batch), then the five pairs are scored. Sequences are processed
by a few worker threads (read -> describe -> metrics each), so reading, the network and the metrics of
different sequences overlap. For a thread-safe method (``thread_safe = True``, e.g. KeyPointNet) each worker
runs its own forward with ``torch`` intra-op threads divided among the workers, which avoids the thread
synchronisation cost of one forward spread over all cores; other methods are called one at a time.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from kp2d_model.evaluation.hpatches import PAIR_INDICES, HPatchesSequence, LoadedSequence, load_sequence
from kp2d_model.evaluation.methods import FeatureMethod, Features, describe_images
from kp2d_model.evaluation.metrics import METRIC_NAMES, PairMetrics, mean_metrics, pair_metrics

__all__ = [
    "DEFAULT_SETTINGS",
    "EvaluationRun",
    "PairResult",
    "evaluate_method",
    "format_table",
    "sequence_pair_metrics",
]

# The paper's protocol: (resolution (W, H), top_k)
DEFAULT_SETTINGS = (((320, 240), 300), ((640, 480), 1000))
MAX_WORKERS = 4  # sequences in flight at once (each holds its six images and one network batch)


@dataclass(frozen=True)
class PairResult:
    """Metrics of the pair (1, ``index``) of ``sequence``."""

    sequence: str
    index: int
    metrics: PairMetrics

    @property
    def subset(self) -> str:
        return self.sequence[0]

    def as_dict(self) -> dict[str, object]:
        """JSON-ready row: ``sequence``, ``pair`` (k), the six metrics (NaN localization error -> None)."""
        values = {name: (None if math.isnan(value) else value) for name, value in self.metrics.as_dict().items()}
        return {"sequence": self.sequence, "pair": self.index, **values}


@dataclass
class EvaluationRun:
    """One method at one resolution and top-k over a list of sequences."""

    method: str
    resolution: tuple[int, int]
    top_k: int
    pairs: list[PairResult] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the whole run: reading, network, metrics
    precision: str | None = None  # kp2d: the network's arithmetic (fp32, bf16, int8, ...); None for baselines
    backend: str | None = None  # kp2d: the engine that ran it (torch, openvino, ...)

    @property
    def label(self) -> str:
        """The method's name, with precision/backend when not the float32 torch reference."""
        if self.precision in (None, "fp32") and self.backend in (None, "torch"):
            return self.method
        return f"{self.method} {self.precision}/{self.backend}"

    @property
    def pairs_per_second(self) -> float:
        return len(self.pairs) / self.seconds if self.seconds > 0 else math.nan

    def summary(self) -> dict[str, dict[str, float]]:
        """Means per subset present (``"i"``, ``"v"``) and over ``"all"`` pairs, each with a ``"pairs"`` count.

        The localization-error mean skips pairs without one (no repeatable point)."""
        groups = {subset: [pair for pair in self.pairs if pair.subset == subset] for subset in ("i", "v")}
        groups = {subset: pairs for subset, pairs in groups.items() if pairs}
        groups["all"] = self.pairs
        return {
            subset: {**mean_metrics(pair.metrics for pair in pairs), "pairs": len(pairs)}
            for subset, pairs in groups.items()
        }

    def as_dict(self) -> dict[str, object]:
        summary = {
            subset: {name: (None if isinstance(v, float) and math.isnan(v) else v) for name, v in values.items()}
            for subset, values in self.summary().items()
        }
        return {
            "method": self.method,
            "resolution": list(self.resolution),
            "top_k": self.top_k,
            "precision": self.precision,
            "backend": self.backend,
            "seconds": self.seconds,
            "pairs_per_second": self.pairs_per_second,
            "summary": summary,
            "pairs": [pair.as_dict() for pair in self.pairs],
        }


def sequence_pair_metrics(
    loaded: LoadedSequence, features: Sequence[Features], top_k: int, norm: int
) -> list[PairResult]:
    """Metrics of the five pairs (1, k) of one loaded sequence, given the features of its six images."""
    points_1, descriptors_1 = features[0]
    width_height = (loaded.images[0].shape[1], loaded.images[0].shape[0])
    results = []
    for k in PAIR_INDICES:
        points_k, descriptors_k = features[k - 1]
        metrics = pair_metrics(
            np.asarray(points_1),
            np.asarray(descriptors_1),
            np.asarray(points_k),
            np.asarray(descriptors_k),
            loaded.homographies[k],
            width_height,
            top_k,
            norm,
        )
        results.append(PairResult(loaded.sequence.name, k, metrics))
    return results


def evaluate_method(
    method: FeatureMethod,
    sequences: Sequence[HPatchesSequence],
    resolution: tuple[int, int],
    top_k: int,
    on_sequence_done: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> EvaluationRun:
    """Evaluate ``method`` on every pair of ``sequences`` at ``resolution`` ``(W, H)`` keeping ``top_k`` points.

    ``workers``: sequences processed at once (default: ``torch.get_num_threads()``, at most 4). For a thread-safe
    method the torch intra-op threads are divided among them during the run and restored afterwards.
    ``on_sequence_done(number_of_pairs)`` is called (from a worker thread) after each sequence, e.g. a progress
    bar's ``update``. Pairs come back in sequence order. Errors (an unreadable image, a method failure) propagate.
    """
    if int(top_k) != top_k or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    intra_op_threads = torch.get_num_threads()
    workers = max(1, min(workers or min(intra_op_threads, MAX_WORKERS), max(len(sequences), 1)))
    thread_safe = bool(getattr(method, "thread_safe", False))
    method_lock = threading.Lock()
    run = EvaluationRun(getattr(method, "name", type(method).__name__), tuple(resolution), int(top_k))

    def describe(images: list[np.ndarray]) -> list[Features]:
        if thread_safe:
            return describe_images(method, images)
        with method_lock:
            return describe_images(method, images)

    def process(sequence: HPatchesSequence) -> list[PairResult]:
        loaded = load_sequence(sequence, resolution)
        pairs = sequence_pair_metrics(loaded, describe(loaded.images), run.top_k, method.norm)
        if on_sequence_done is not None:
            on_sequence_done(len(pairs))
        return pairs

    start = time.perf_counter()
    if thread_safe:
        torch.set_num_threads(max(1, intra_op_threads // workers))
    pool = ThreadPoolExecutor(workers, thread_name_prefix="hpatches")
    try:
        for pairs in pool.map(process, sequences):
            run.pairs.extend(pairs)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after an error, do not run the remaining sequences
        torch.set_num_threads(intra_op_threads)
    run.seconds = time.perf_counter() - start
    return run


def format_table(runs: Sequence[EvaluationRun]) -> str:
    """README-ready Markdown table: one row per run and subset (i, v, all) with Rep, Loc, C1, C3, C5, MScore."""
    lines = [
        "| Method | Resolution | top-k | Subset | Pairs | Rep | Loc | C1 | C3 | C5 | MScore |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        for subset, values in run.summary().items():
            cells = ["–" if math.isnan(values[name]) else f"{values[name]:.3f}" for name in METRIC_NAMES]
            resolution = f"{run.resolution[0]}x{run.resolution[1]}"
            lines.append(
                f"| {run.label} | {resolution} | {run.top_k} | {subset} | {values['pairs']} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines)

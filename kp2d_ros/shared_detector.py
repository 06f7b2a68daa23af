"""One KeypointDetector used by several nodes of one process (``multi_detector``, ``stereo_detector``).

:func:`kp2d_ros.detector_node.build_detector` builds it from the node's MODEL_PARAMETERS; :class:`SharedDetector`
is one node's handle on it: every call holds the shared lock, so the frames of several cameras run through the one
network one at a time (the frame pipeline passes top_k / score_threshold / nms_radius / mask per call and
never changes the detector, so the nodes' settings stay their own).
"""

from __future__ import annotations

import threading
from typing import Any

from kp2d_model import KeypointDetector

__all__ = ["MODEL_PARAMETERS", "SharedDetector"]

# The detector node's parameters that build the network (all read-only there).
MODEL_PARAMETERS = ("model", "device", "half", "precision", "backend", "calibration", "num_threads", "input_width",
                    "input_height", "input_scale", "contrast")  # fmt: skip


class SharedDetector:
    """A node's handle on a detector shared with other nodes: calls hold ``lock``; other attributes (device,
    engine_choice, ...) are the shared detector's."""

    def __init__(self, detector: KeypointDetector, lock: threading.Lock | None = None):
        self.shared = detector
        self.lock = lock if lock is not None else threading.Lock()

    def __getattr__(self, name: str) -> Any:  # only for attributes this handle does not have
        if name in ("shared", "lock"):  # not set yet (e.g. copy/pickle): no recursion
            raise AttributeError(name)
        return getattr(self.shared, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return self.shared(*args, **kwargs)

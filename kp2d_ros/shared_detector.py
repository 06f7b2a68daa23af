"""One KeypointDetector used by several nodes of one process (``multi_detector``, ``stereo_detector``).

:func:`build_detector` builds it from the detector node's model parameters; :class:`SharedDetector` is one
node's handle on it: every call holds the shared lock, so the frames of several cameras run through the one
network one at a time (the frame pipeline passes top_k / score_threshold / nms_radius / mask per call and
never changes the detector, so the nodes' settings stay their own).
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from kp2d_model import CheckpointError, KeypointDetector
from kp2d_model.checkpoint import default_checkpoint_path

__all__ = ["MODEL_PARAMETERS", "SharedDetector", "build_detector"]

# The detector node's parameters that build the network (all read-only there).
MODEL_PARAMETERS = ("model", "device", "half", "precision", "backend", "calibration", "num_threads", "input_width",
                    "input_height", "input_scale")  # fmt: skip


def build_detector(param: Any) -> KeypointDetector:
    """A KeypointDetector from the model parameters; ``param(name)`` gives a parameter's value.
    CheckpointError (no model) / ValueError (inconsistent sizes) for a bad configuration."""
    model = param("model")
    if not model and not default_checkpoint_path().is_file():
        raise CheckpointError(f"no model: {default_checkpoint_path()} is not installed; pass -p model:=/path/to.ckpt")
    if param("num_threads") > 0:
        torch.set_num_threads(param("num_threads"))
    width, height = param("input_width"), param("input_height")
    if (width == 0) != (height == 0):
        raise ValueError("input_width and input_height must both be 0 (native size) or both > 0")
    if width and param("input_scale") != 1.0:
        raise ValueError("give input_width/input_height or input_scale, not both")
    return KeypointDetector(
        checkpoint=model or None, device=param("device"), half=param("half"),
        input_size=(width, height) if width else None, input_scale=None if width else param("input_scale"),
        precision=param("precision"), backend=param("backend"), calibration=param("calibration") or None,
    )  # fmt: skip


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

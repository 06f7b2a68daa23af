"""The camera list of ``multi_detector`` and ``multi_camera.launch.py`` (no heavy imports: launch files use it)."""

from __future__ import annotations

__all__ = ["parse_cameras"]


def parse_cameras(text: str) -> list[str]:
    """``"cam0 cam1"`` or ``"cam0,cam1"`` -> ``["cam0", "cam1"]``; ValueError for none, duplicates or bad names."""
    cameras = [name.strip("/") for name in text.replace(",", " ").split()]
    if not cameras:
        raise ValueError("parameter 'cameras' is empty: give the camera namespaces, e.g. cameras:='cam0 cam1'")
    if len(set(cameras)) != len(cameras):
        raise ValueError(f"parameter 'cameras' names a camera twice: {text!r}")
    for name in cameras:
        parts = name.split("/")
        if not name.isascii() or not all(
            part and (part[0].isalpha() or part[0] == "_") and part.replace("_", "").isalnum() for part in parts
        ):
            raise ValueError(f"camera {name!r} is not a valid ROS namespace (letters, digits, _; not starting "
                             "with a digit)")  # fmt: skip
    return cameras

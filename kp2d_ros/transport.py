"""Middleware configuration for the detector's process: large best-effort images over Fast DDS.

On one machine Fast DDS' default transports deliver user data over shared memory when both processes have
it, and the publisher's default 512 KB segment loses most 640 x 480 bgr8 (921 KB) best-effort frames.
``config/fastdds_subscriber.xml`` makes the detector's participant announce UDPv4 only, with a large socket
receive buffer, so a stock publisher sends to it over UDP and the kernel buffers whole frames
(measurements and the system-wide alternative: docs/ros.md, "Large images over Fast DDS").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "PROFILE_NAME",
    "MIN_RECEIVE_BUFFER_BYTES",
    "RECEIVE_BUFFER_BYTES",
    "SYSTEM_VARIABLES",
    "profile_in_use",
    "profile_path",
    "receive_buffer_cap",
    "receive_buffer_warning",
    "subscriber_environment",
]

PROFILE_NAME = "fastdds_subscriber.xml"
RECEIVE_BUFFER_BYTES = 16777216  # the profile's receiveBufferSize (keep in step with config/fastdds_subscriber.xml)
# Below this kernel cap (net.core.rmem_max) the node warns: 4 MB holds ~4 frames of 640 x 480 bgr8.
MIN_RECEIVE_BUFFER_BYTES = 4194304
REPO_CONFIG = Path(__file__).resolve().parents[1] / "config"


def profile_path() -> Path:
    """The Fast DDS XML profile: installed share/kp2d_ros/config when found, else the source tree's config/."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        try:
            installed = Path(get_package_share_directory("kp2d_ros")) / "config" / PROFILE_NAME
            if installed.is_file():
                return installed
        except (PackageNotFoundError, OSError):  # OSError: no AMENT_PREFIX_PATH (not a ROS environment)
            pass
    except ImportError:
        pass
    return REPO_CONFIG / PROFILE_NAME


# Set by a user who configures Fast DDS for the whole system: the shipped profile then stays out of the way.
FAST_DDS_2_DISTROS = ("humble", "iron", "jazzy")
SYSTEM_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_BUILTIN_TRANSPORTS")


def subscriber_environment(
    profile: Path | str | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Environment variables to add to the detector's process environment (``environ``: default os.environ).

    Points Fast DDS' profile variable at the profile: ``FASTDDS_DEFAULT_PROFILES_FILE`` (Fast DDS 3: Kilted and
    later), ``FASTRTPS_DEFAULT_PROFILES_FILE`` where ``ROS_DISTRO`` is humble / iron / jazzy (Fast DDS 2). Only
    one: Fast DDS 3 reads both and fails on a profile loaded twice. Fast DDS reads it when the process creates
    its participant; other RMW implementations ignore it. Empty when ``environ`` already sets a profile file or
    ``FASTDDS_BUILTIN_TRANSPORTS`` (a system-wide configuration: e.g. ``LARGE_DATA`` publishers have no UDP
    unicast, so a UDP-only subscriber would not hear them).
    """
    environ = os.environ if environ is None else environ
    if any(environ.get(name) for name in SYSTEM_VARIABLES):
        return {}
    path = str(Path(profile) if profile is not None else profile_path())
    fast_dds_2 = environ.get("ROS_DISTRO", "") in FAST_DDS_2_DISTROS
    return {"FASTRTPS_DEFAULT_PROFILES_FILE" if fast_dds_2 else "FASTDDS_DEFAULT_PROFILES_FILE": path}


def receive_buffer_cap() -> int | None:
    """``net.core.rmem_max`` in bytes (the kernel's cap on a socket receive buffer); None when unreadable."""
    try:
        return int(Path("/proc/sys/net/core/rmem_max").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def profile_in_use(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process was started with the shipped profile (either Fast DDS profile variable names it)."""
    environ = os.environ if environ is None else environ
    names = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
    return any(Path(environ.get(name) or "/").name == PROFILE_NAME for name in names)


def receive_buffer_warning(cap: int | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """A warning when the shipped profile is in use but the kernel caps socket receive buffers below 4 MB.

    Linux silently clamps a socket's receive buffer to ``net.core.rmem_max`` (``cap``: default read from /proc);
    the profile then still works, with room for fewer frames (a 640 x 480 bgr8 frame is 0.9 MB). None when
    there is nothing to say.
    """
    if not profile_in_use(environ):
        return None
    cap = receive_buffer_cap() if cap is None else cap
    if cap is None or cap >= MIN_RECEIVE_BUFFER_BYTES:
        return None
    return (
        f"net.core.rmem_max is {cap} bytes: the kernel caps the UDP receive buffer of the Fast DDS profile there "
        f"(it asks for {RECEIVE_BUFFER_BYTES}), room for {cap / 921600:.1f} frames of 640x480 bgr8, so large "
        f"frames may be lost while the node is busy; raise it, e.g. 'sudo sysctl -w net.core.rmem_max="
        f"{RECEIVE_BUFFER_BYTES}' (docs/ros.md, 'Large images over Fast DDS')"
    )

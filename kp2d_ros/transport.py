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

__all__ = ["PROFILE_NAME", "SYSTEM_VARIABLES", "profile_path", "receive_buffer_cap", "subscriber_environment"]

PROFILE_NAME = "fastdds_subscriber.xml"
REPO_CONFIG = Path(__file__).resolve().parents[1] / "config"


def profile_path() -> Path:
    """The Fast DDS XML profile: installed share/kp2d_ros/config when found, else the source tree's config/."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        try:
            installed = Path(get_package_share_directory("kp2d_ros")) / "config" / PROFILE_NAME
            if installed.is_file():
                return installed
        except PackageNotFoundError:
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


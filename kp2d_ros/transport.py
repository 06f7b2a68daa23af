"""Middleware configuration for the detector's process: large best-effort images over Fast DDS.

On one machine Fast DDS' default transports deliver user data over shared memory when both processes have
it, and the publisher's default 512 KB segment loses most 640 x 480 bgr8 (921 KB) best-effort frames.
``config/fastdds_subscriber.xml`` makes the detector's participant announce UDPv4 only, with a large socket
receive buffer, so a stock publisher sends to it over UDP and the kernel buffers whole frames
(measurements and the system-wide alternative: docs/ros.md, "Large images over Fast DDS").
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PROFILE_NAME", "profile_path", "receive_buffer_cap", "subscriber_environment"]

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


def subscriber_environment(profile: Path | str | None = None) -> dict[str, str]:
    """Environment variables for the detector's process (merge into its environment).

    Points both Fast DDS profile variables (3.x and 2.x names) at the profile; Fast DDS reads them when the
    process creates its participant. Other RMW implementations ignore them.
    """
    path = str(Path(profile) if profile is not None else profile_path())
    return {"FASTDDS_DEFAULT_PROFILES_FILE": path, "FASTRTPS_DEFAULT_PROFILES_FILE": path}


def receive_buffer_cap() -> int | None:
    """``net.core.rmem_max`` in bytes (the kernel's cap on a socket receive buffer); None when unreadable."""
    try:
        return int(Path("/proc/sys/net/core/rmem_max").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


if __name__ == "__main__":  # pragma: no cover - manual check
    print(subscriber_environment(), receive_buffer_cap(), os.environ.get("RMW_IMPLEMENTATION"))

"""Frames the camera sent that never reached the node (lost in transport), from what the node does receive.

Two checks, both on header stamps (nanoseconds) and receipt times (``time.monotonic()`` seconds):

- camera_info: a camera publishes one CameraInfo per image with the image's stamp, and the small CameraInfo
  arrives even when a large best-effort image is lost. A CameraInfo stamp with no image of that stamp after
  ``grace_s`` counts as a lost frame. Used once some CameraInfo stamp has matched an image stamp (a camera
  whose CameraInfo stamps never match its images says nothing about loss), or while CameraInfo arrives and
  no image at all has for ``keep_s`` (every frame lost, or the image topic is wrong). CameraInfos stamped
  before the first image are not counted (start-up: the image subscription may match a moment later).
- stamp spacing (no usable camera_info): a camera's stamps are evenly spaced; a gap of k periods between
  consecutive received stamps means k - 1 frames lost. The period is estimated from the shortest gaps; the
  check reports nothing for irregular stamps (fewer than 90 % of gaps on the grid) and treats gaps of more
  than ``max_gap_periods`` periods as a pause, not loss.

Frames the node receives but skips because it is busy are received: they are not counted here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

__all__ = ["FrameLossMonitor", "LossReport"]


@dataclass(frozen=True)
class LossReport:
    """What one :meth:`FrameLossMonitor.take` found.

    method: "camera_info", "stamp spacing" or "" (nothing checked); expected: frames the camera sent in the
    checked span (received + lost); lost: frames that did not arrive.
    """

    method: str
    expected: int
    lost: int


class FrameLossMonitor:
    """Counts frames lost before the node (see the module docstring). Not thread-safe: one caller thread."""

    def __init__(self, grace_s: float = 1.0, keep_s: float = 10.0, max_gap_periods: int = 30, history: int = 200):
        self.grace_s = grace_s  # how long an image may arrive after its CameraInfo
        self.keep_s = keep_s  # received image stamps kept this long (s)
        self.max_gap_periods = max_gap_periods
        self._images: deque[tuple[int, float]] = deque()  # (stamp ns, receipt s), receipt order
        self._image_stamps: set[int] = set()
        self._infos: deque[tuple[int, float]] = deque()  # CameraInfo (stamp ns, receipt s) not yet checked
        self.stamps_correspond = False  # some CameraInfo stamp matched an image stamp
        self._first_image_stamp: int | None = None  # CameraInfos before it: start-up (endpoints still matching)
        self._first_info_time: float | None = None
        self._new_stamps: list[int] = []  # image stamps since the last spacing check
        self._last_stamp: int | None = None  # the newest stamp of the previous spacing check
        self._gaps: deque[int] = deque(maxlen=history)  # recent gaps between consecutive stamps (ns)

    def image(self, stamp_ns: int, now: float) -> None:
        """An image with header stamp ``stamp_ns`` arrived at ``now``."""
        if stamp_ns in self._image_stamps:
            return  # the same frame again (e.g. raw and compressed topics)
        if self._images and stamp_ns < self._images[-1][0]:
            self._first_image_stamp = None  # stamps went backwards (bag loop): start-up again
        self._images.append((stamp_ns, now))
        if self._first_image_stamp is None:
            self._first_image_stamp = stamp_ns
        self._image_stamps.add(stamp_ns)
        self._new_stamps.append(stamp_ns)

    def camera_info(self, stamp_ns: int, now: float) -> None:
        """A CameraInfo with header stamp ``stamp_ns`` arrived at ``now``."""
        if self._first_info_time is None:
            self._first_info_time = now
        if not self._infos or self._infos[-1][0] != stamp_ns:
            self._infos.append((stamp_ns, now))

    def take(self, now: float) -> LossReport:
        """Check what arrived since the last call (CameraInfos older than ``grace_s``)."""
        info = self._check_camera_info(now)
        spacing = self._check_spacing()
        while self._images and self._images[0][1] < now - self.keep_s:
            self._image_stamps.discard(self._images.popleft()[0])
        if self.stamps_correspond or info.method:
            return info
        return spacing

    def _check_camera_info(self, now: float) -> LossReport:
        expected = lost = 0
        while self._infos and self._infos[0][1] <= now - self.grace_s:
            stamp_ns, _ = self._infos.popleft()
            if self._first_image_stamp is not None and stamp_ns < self._first_image_stamp:
                continue
            expected += 1
            if stamp_ns in self._image_stamps:
                self.stamps_correspond = True
            else:
                lost += 1
        if expected and not self._images and now - self._first_info_time >= self.keep_s:
            return LossReport("camera_info", expected, expected)  # camera_info arrives, no image at all
        if not expected or not self.stamps_correspond:
            return LossReport("", 0, 0)
        return LossReport("camera_info", expected, lost)

    def _check_spacing(self) -> LossReport:
        stamps = sorted(set(self._new_stamps))
        self._new_stamps = []
        if not stamps:
            return LossReport("", 0, 0)
        if self._last_stamp is not None and stamps[0] < self._last_stamp:
            self._gaps.clear()  # stamps went backwards (bag loop, simulator reset): start over
            self._last_stamp = None
        if self._last_stamp is not None:
            stamps.insert(0, self._last_stamp)
        self._last_stamp = stamps[-1]
        gaps = np.diff(np.asarray(stamps, np.int64))
        gaps = gaps[gaps > 0]
        self._gaps.extend(int(g) for g in gaps)
        period = self.period_ns()
        if period is None or len(gaps) == 0:
            return LossReport("", 0, 0)
        multiples = gaps / period
        nearest = np.rint(multiples)
        missing = (nearest >= 2) & (nearest <= self.max_gap_periods) & (np.abs(multiples - nearest) <= 0.2)
        lost = int((nearest[missing] - 1).sum())
        received = len(gaps)  # frames that closed a gap (the first stamp of the first check closes none)
        return LossReport("stamp spacing", received + lost, lost)

    def period_ns(self) -> float | None:
        """The camera's frame period from recent gaps (None: too few, or stamps not on a regular grid)."""
        if len(self._gaps) < 8:
            return None
        gaps = np.asarray(self._gaps, np.float64)
        short = gaps[gaps <= 1.5 * np.percentile(gaps, 10)]
        period = float(np.median(short))
        multiples = gaps / period
        nearest = np.rint(multiples)
        on_grid = (nearest >= 1) & ((np.abs(multiples - nearest) <= 0.2) | (nearest > self.max_gap_periods))
        return period if on_grid.mean() >= 0.9 else None

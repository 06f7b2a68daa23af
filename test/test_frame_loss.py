"""kp2d_ros.frame_loss: frames lost before the node, from camera_info stamps and from image stamp spacing.

Pure Python (no DDS): the monitor is fed the stamps and receipt times a node would see. The node-level
behaviour over real DDS is in test_ros_transport.py.
"""

from __future__ import annotations

import numpy as np

from kp2d_ros.frame_loss import FrameLossMonitor

PERIOD_NS = 33_333_333  # 30 Hz
T0_NS = 1_700_000_000 * 10**9


def stream(monitor, frames, lost=(), camera_info=True, jitter_ns=0, seed=0):
    """Feed ``frames`` frames at 30 Hz (receipt time = stamp time); images in ``lost`` never arrive."""
    rng = np.random.default_rng(seed)
    for index in range(frames):
        stamp = T0_NS + index * PERIOD_NS + (int(rng.integers(-jitter_ns, jitter_ns + 1)) if jitter_ns else 0)
        now = index * PERIOD_NS / 1e9
        if camera_info:
            monitor.camera_info(stamp, now)
        if index not in lost:
            monitor.image(stamp, now)
    return frames * PERIOD_NS / 1e9


def take_all(monitor, end, seconds=3.0):
    """Reports of one take() per second from ``end`` on (the CameraInfo grace period passes)."""
    return [monitor.take(end + t) for t in np.arange(0.0, seconds, 1.0)]


def test_camera_info_counts_exactly_the_missing_images():
    monitor = FrameLossMonitor()
    lost = {5, 6, 40, 77}
    reports = take_all(monitor, stream(monitor, 90, lost))
    assert sum(r.lost for r in reports) == len(lost)
    assert sum(r.expected for r in reports) == 90
    assert {r.method for r in reports if r.expected} == {"camera_info"}


def test_camera_info_silent_when_every_image_arrives():
    monitor = FrameLossMonitor()
    reports = take_all(monitor, stream(monitor, 90))
    assert sum(r.lost for r in reports) == 0 and sum(r.expected for r in reports) == 90


def test_images_arriving_after_their_camera_info_are_not_lost():
    monitor = FrameLossMonitor(grace_s=1.0)
    for index in range(30):
        monitor.camera_info(T0_NS + index * PERIOD_NS, index * 0.033)
    monitor.take(0.5)  # too early for any CameraInfo: nothing checked yet
    for index in range(30):
        monitor.image(T0_NS + index * PERIOD_NS, 0.9 + index * 0.001)
    assert sum(r.lost for r in take_all(monitor, 2.0)) == 0


def test_camera_info_before_the_first_image_is_start_up_not_loss():
    monitor = FrameLossMonitor()
    for index in range(10):  # the image subscription matched a moment after camera_info's
        monitor.camera_info(T0_NS + index * PERIOD_NS, index * 0.033)
    for index in range(10, 40):
        monitor.camera_info(T0_NS + index * PERIOD_NS, index * 0.033)
        monitor.image(T0_NS + index * PERIOD_NS, index * 0.033)
    assert sum(r.lost for r in take_all(monitor, 1.5)) == 0


def test_camera_info_without_any_image_reports_every_frame_lost_after_keep_s():
    monitor = FrameLossMonitor(keep_s=10.0)
    for index in range(12 * 30):
        monitor.camera_info(T0_NS + index * PERIOD_NS, index * PERIOD_NS / 1e9)
        if index % 30 == 0:
            report = monitor.take(index * PERIOD_NS / 1e9)
            assert report.lost == 0 or index * PERIOD_NS / 1e9 >= 10.0
    report = monitor.take(13.0)
    assert report.method == "camera_info" and report.lost == report.expected > 0


def test_camera_info_with_unrelated_stamps_falls_back_to_spacing():
    monitor = FrameLossMonitor()
    for index in range(90):
        monitor.camera_info(T0_NS + index * PERIOD_NS + 1234, index * 0.033)  # never an image's stamp
        if index not in (30, 31):
            monitor.image(T0_NS + index * PERIOD_NS, index * 0.033)
    reports = take_all(monitor, 3.0)
    assert not monitor.stamps_correspond
    assert sum(r.lost for r in reports) == 2 and {r.method for r in reports if r.expected} == {"stamp spacing"}


def test_spacing_counts_gaps_at_multiples_of_the_period():
    monitor = FrameLossMonitor()
    lost = {20, 21, 22, 50, 70}
    reports = []
    for chunk in range(3):  # one take() per 30 frames, as the node's 1 s timer does
        for index in range(chunk * 30, chunk * 30 + 30):
            if index not in lost:
                monitor.image(T0_NS + index * PERIOD_NS, index * 0.033)
        reports.append(monitor.take(chunk + 1.0))
    assert sum(r.lost for r in reports) == len(lost)
    assert sum(r.expected for r in reports) == 89  # the first stamp closes no gap


def test_spacing_silent_for_a_jittery_complete_stream():
    monitor = FrameLossMonitor()
    end = stream(monitor, 120, camera_info=False, jitter_ns=PERIOD_NS // 10)
    assert sum(r.lost for r in take_all(monitor, end)) == 0


def test_spacing_says_nothing_for_irregular_stamps():
    monitor = FrameLossMonitor()
    stamps = T0_NS + np.cumsum(np.random.default_rng(1).uniform(0.2, 3.0, 100) * PERIOD_NS).astype(np.int64)
    for index, stamp in enumerate(stamps):
        monitor.image(int(stamp), index * 0.033)
    report = monitor.take(4.0)
    assert report.lost == 0 and report.method == "" and monitor.period_ns() is None


def test_spacing_pause_and_backwards_stamps_are_not_loss():
    monitor = FrameLossMonitor(max_gap_periods=30)
    for index in range(40):
        monitor.image(T0_NS + index * PERIOD_NS, index * 0.033)
    monitor.take(1.5)
    for index in range(100, 140):  # camera paused for 60 periods
        monitor.image(T0_NS + index * PERIOD_NS, 5 + index * 0.033)
    assert monitor.take(10.0).lost == 0
    for index in range(40):  # bag loop: stamps start again
        monitor.image(T0_NS + index * PERIOD_NS, 12 + index * 0.033)
    assert monitor.take(14.0).lost == 0


def test_the_same_frame_twice_counts_once():
    monitor = FrameLossMonitor()
    for index in range(60):
        stamp = T0_NS + index * PERIOD_NS
        monitor.camera_info(stamp, index * 0.033)
        monitor.image(stamp, index * 0.033)  # raw
        monitor.image(stamp, index * 0.033)  # and compressed
    reports = take_all(monitor, 2.0)
    assert sum(r.lost for r in reports) == 0 and sum(r.expected for r in reports) == 60

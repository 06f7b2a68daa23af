"""Virtual camera sequences over a photo, with exact frame-to-frame homographies.

A camera state at time ``s`` (seconds) is a view of the photo: a quadrilateral (``view_quadrilateral`` of
the HPatches-style generator: in-plane rotation, zoom, two keystone tilts) shifted by a pan offset, all in
"image-1" pixels (a centre crop of the photo at the output size). Frame ``t`` is the photo warped by the
homography ``H_t`` (photo px -> frame px) of the state at ``s = t / fps``; the frame-to-frame homography is
``H_{t+1} H_t^{-1}`` (exact: the frames are rendered from the same photo by these matrices).

Image effects, applied in this order:

- motion blur: the frame is the mean of sub-frames rendered at states spread over the exposure time
  (``exposure`` x frame period, centred on ``s``), as many sub-frames as the fastest corner moves in pixels
  during the exposure (at most ``MAX_BLUR_SAMPLES``), so the blur follows the motion and the stated ``H_t``
  is the blur's centre;
- exposure: a gain on the intensities (then clipped to 0..255, so bright parts saturate);
- contrast: the image pulled towards its mean grey (the low-texture stretch);
- sensor noise: Gaussian, ``noise_sigma`` grey levels, from the sequence's seeded generator.

The views always stay inside the photo (the trajectory's amplitude is shrunk until they do), so no frame
shows border fill.

Gyro sequences (``GYRO_SEQUENCE_NAMES``, not in the default set): the camera only rotates, about its centre,
with a pinhole ``K`` (``camera_matrix``): the photo is what a reference camera sees, and the camera at time ``s``
with orientation ``R(s)`` (camera -> reference, axis-angle ``Motion.rotation``) sees ``K R(s)^T K^-1`` of it, so
frame-to-frame homographies are exactly ``K R_cur_prev K^-1``. Such a sequence carries a synthetic gyro
(``gyro_stamps_ns``, ``gyro_rates`` in camera axes): the body rate ``w`` of ``R(s)`` (``dR/ds = R [w]_x``, by a
central difference of the rotation's log over 0.1 ms) sampled at ``GYRO_RATE_HZ``, plus a constant bias and white
noise from the sequence's own seeded generator (``GYRO_BIAS``, ``GYRO_NOISE``: a MEMS gyro's order of magnitude).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from kp2d_model.evaluation.synthetic import prepare_photo, view_quadrilateral

MAX_BLUR_SAMPLES = 16
GYRO_RATE_HZ = 200.0
GYRO_BIAS = 0.005  # rad/s per axis (random sign), constant over the sequence
GYRO_NOISE = 0.005  # rad/s per axis per sample, Gaussian
FOCAL_PER_WIDTH = 0.8  # gyro sequences' pinhole focal length as a share of the frame width (~64 deg wide)
CROP_FRACTION = 0.55  # the reference view's share of the photo: room to pan, roll and zoom inside it


class SequenceError(ValueError):
    """A sequence cannot be made (unknown name, bad size or frame count, trajectory does not fit the photo)."""


@dataclass(frozen=True)
class Motion:
    """One named camera trajectory and its image effects.

    state: seconds -> ``[pan_x, pan_y, rotation, log_zoom, keystone_x, keystone_y]`` at full amplitude (pan as
    a fraction of the frame width / height, rotation in radians). gain / contrast: seconds -> factor.
    exposure: exposure time as a fraction of the frame period (motion blur).
    """

    name: str
    description: str
    state: Callable[[float], np.ndarray]
    exposure: float = 0.1
    gain: Callable[[float], float] = field(default=lambda s: 1.0)
    contrast: Callable[[float], float] = field(default=lambda s: 1.0)
    rotation: Callable[[float], np.ndarray] | None = None  # gyro sequences: seconds -> camera axis-angle (rad)


def _wave(s: float, period: float, phase: float = 0.0) -> float:
    return float(np.sin(2 * np.pi * s / period + phase))


def _pan(s: float, period: float = 4.0) -> np.ndarray:
    return np.array([0.25 * _wave(s, period), 0.08 * _wave(s, 1.7 * period, 1.0), 0, 0, 0, 0])


def _exposure_gain(s: float) -> float:
    """Steps (x2 at 0.25 s, x0.5 at 0.5 s), then a ramp down to x0.35 and back up by 1.5 s (auto-exposure
    catching up); repeats every 1.5 s."""
    cycle = s % 1.5
    if cycle < 0.25:
        return 1.0
    if cycle < 0.5:
        return 2.0
    if cycle < 0.75:
        return 0.5
    return float(1.0 - 0.65 * np.sin(np.pi * (cycle - 0.75) / 0.75))


def _low_texture_contrast(s: float) -> float:
    """Full contrast, down to 12 % between 0.25 s and 0.5 s, 0.5 s of low texture, back up by 1.25 s; repeats
    every 1.5 s."""
    cycle = s % 1.5
    if cycle < 0.25:
        return 1.0
    if cycle < 0.5:
        return float(1.0 - 0.88 * (cycle - 0.25) / 0.25)
    if cycle < 1.0:
        return 0.12
    if cycle < 1.25:
        return float(0.12 + 0.88 * (cycle - 1.0) / 0.25)
    return 1.0


MOTIONS: dict[str, Motion] = {
    motion.name: motion
    for motion in (
        Motion("pan", "smooth pan, up to ~8 px/frame at 640x480 and 30 fps", _pan),
        Motion(
            "roll",
            "in-plane rotation (up to ~1.8 deg/frame) with a slow pan",
            lambda s: _pan(s, 6.0) * 0.5 + np.array([0, 0, 0.6 * _wave(s, 4.0), 0, 0, 0]),
        ),
        Motion(
            "zoom_tilt",
            "zoom in and out (x0.74..x1.35) and tilts about both axes (keystone up to 0.2)",
            lambda s: np.array(
                [0.05 * _wave(s, 5.0), 0, 0, 0.3 * _wave(s, 4.0), 0.2 * _wave(s, 5.0), 0.2 * _wave(s, 3.3, 1.0)]
            ),
        ),
        Motion(
            "blur",
            "fast pan and roll, long exposure (80 % of the frame period): blur of ~10-15 px",
            lambda s: _pan(s, 2.0) + np.array([0, 0, 0.25 * _wave(s, 2.0, 0.5), 0, 0, 0]),
            exposure=0.8,
        ),
        Motion(
            "exposure",
            "slow pan; exposure steps (x2, x0.5) and a ramp (down to x0.35 and back), 1.5 s cycle",
            lambda s: 0.5 * _pan(s),
            gain=_exposure_gain,
        ),
        Motion(
            "fast_rotation",
            "fast in-plane rotation (up to ~7 deg/frame), exposure 50 % of the period",
            lambda s: np.array([0.05 * _wave(s, 3.0), 0, 1.1 * _wave(s, 2.0), 0, 0, 0]),
            exposure=0.5,
        ),
        Motion(
            "low_texture",
            "pan; contrast down to 12 % for 0.5 s of each 1.5 s (little texture left above the sensor noise)",
            lambda s: 0.6 * _pan(s),
            contrast=_low_texture_contrast,
        ),
    )
}
SEQUENCE_NAMES = tuple(MOTIONS)

# Pure camera rotations (x right, y down, z forward; axis-angle of camera -> reference) with a synthetic gyro.
GYRO_MOTIONS: dict[str, Motion] = {
    motion.name: motion
    for motion in (
        Motion(
            "gyro_roll",
            "pure rotation: fast roll (up to ~14 deg/frame) with a slow pan and tilt, exposure 20 % of the period",
            lambda s: np.zeros(6),
            exposure=0.2,
            rotation=lambda s: np.array([0.04 * _wave(s, 2.0, 1.0), 0.08 * _wave(s, 3.0), 0.9 * _wave(s, 0.75)]),
        ),
        Motion(
            "gyro_pan",
            "pure rotation: fast pan (yaw up to ~7 deg/frame, ~60 px/frame) with tilt and roll, exposure 20 %",
            lambda s: np.zeros(6),
            exposure=0.2,
            rotation=lambda s: np.array([0.06 * _wave(s, 0.45, 0.5), 0.32 * _wave(s, 0.5), 0.25 * _wave(s, 0.65, 2.0)]),
        ),
        Motion(
            "gyro_shake",
            "pure rotation: hand-held shake, fast reversals about all three axes (up to ~5 deg/frame), exposure 20 %",
            lambda s: np.zeros(6),
            exposure=0.2,
            rotation=lambda s: np.array(
                [
                    0.05 * _wave(s, 0.45) + 0.03 * _wave(s, 0.23, 1.0),
                    0.07 * _wave(s, 0.55, 2.0) + 0.03 * _wave(s, 0.31),
                    0.12 * _wave(s, 0.5, 0.7),
                ]
            ),
        ),
    )
}
GYRO_SEQUENCE_NAMES = tuple(GYRO_MOTIONS)
ALL_SEQUENCE_NAMES = SEQUENCE_NAMES + GYRO_SEQUENCE_NAMES


@dataclass
class Sequence:
    """Rendered frames ``(T, H, W, 3)`` uint8 BGR and ``photo_to_frame`` ``(T, 3, 3)`` float64 (photo px -> frame
    px); ``fps`` frames per second; ``name`` the motion, ``photo`` the photo's name."""

    name: str
    photo: str
    fps: float
    frames: np.ndarray
    photo_to_frame: np.ndarray
    amplitude: float  # share of the motion's full amplitude that fits inside the photo
    camera_matrix: np.ndarray | None = None  # gyro sequences: (3, 3) pinhole K (no distortion)
    gyro_stamps_ns: np.ndarray | None = None  # gyro sequences: (S,) int64, frame t is at t / fps seconds
    gyro_rates: np.ndarray | None = None  # gyro sequences: (S, 3) rad/s, camera axes

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def homography(self, from_index: int, to_index: int) -> np.ndarray:
        """Frame ``from_index`` px -> frame ``to_index`` px: ``H_to @ inv(H_from)`` (3, 3)."""
        h = self.photo_to_frame[to_index] @ np.linalg.inv(self.photo_to_frame[from_index])
        return h / h[2, 2]


def camera_matrix_for(out_size: tuple[int, int]) -> np.ndarray:
    """The gyro sequences' pinhole ``K`` (3, 3) for ``(width, height)``: focal ``FOCAL_PER_WIDTH`` x width, centred."""
    width, height = out_size
    focal = FOCAL_PER_WIDTH * width
    return np.array([[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]])


def rotation_matrix(rotation_vector: np.ndarray) -> np.ndarray:
    """Axis-angle (3,) -> (3, 3) (Rodrigues)."""
    return cv2.Rodrigues(np.asarray(rotation_vector, np.float64).reshape(3, 1))[0]


def _body_rate(orientation: Callable[[float], np.ndarray], s: float, step: float = 1e-4) -> np.ndarray:
    """Body angular velocity (3,) rad/s of ``orientation`` (camera -> reference) at ``s``: log(R(s-h)^T R(s+h)) / 2h."""
    delta = orientation(s - step).T @ orientation(s + step)
    return cv2.Rodrigues(delta)[0].reshape(3) / (2 * step)


def _view_homography(state: np.ndarray, out_size: tuple[int, int], crop: np.ndarray) -> np.ndarray:
    """Photo px -> frame px for one camera state (see ``Motion.state``)."""
    width, height = out_size
    quad = view_quadrilateral(out_size, *state[2:])
    centre = np.array([(width - 1) / 2 + state[0] * width, (height - 1) / 2 + state[1] * height])
    target = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], np.float32)
    view = cv2.getPerspectiveTransform((quad + centre).astype(np.float32), target).astype(np.float64)
    return view @ crop


def _inside(h: np.ndarray, out_size: tuple[int, int], photo_size: tuple[int, int], inset: float = 1.0) -> bool:
    """Whether the whole frame of ``h`` (photo -> frame) looks at photo pixels ``inset`` px inside the edge."""
    width, height = out_size
    corners = np.array([[0, 0, 1], [width - 1, 0, 1], [width - 1, height - 1, 1], [0, height - 1, 1]], float)
    photo = corners @ np.linalg.inv(h).T
    photo = photo[:, :2] / photo[:, 2:]
    return bool(
        np.all(photo >= inset) and np.all(photo[:, 0] <= photo_size[0] - 1 - inset)
        and np.all(photo[:, 1] <= photo_size[1] - 1 - inset)
    )  # fmt: skip


def _corner_motion(h_a: np.ndarray, h_b: np.ndarray, out_size: tuple[int, int]) -> float:
    """Largest displacement (px) of a frame corner between the views ``h_a`` and ``h_b``."""
    width, height = out_size
    corners = np.array([[0, 0, 1], [width - 1, 0, 1], [width - 1, height - 1, 1], [0, height - 1, 1]], float)
    moved = corners @ (h_b @ np.linalg.inv(h_a)).T
    return float(np.max(np.linalg.norm(moved[:, :2] / moved[:, 2:] - corners[:, :2], axis=1)))


def _warp(photo: np.ndarray, h: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    return cv2.warpPerspective(photo, h, out_size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def make_sequence(
    photo: np.ndarray,
    name: str,
    num_frames: int,
    out_size: tuple[int, int] = (640, 480),
    fps: float = 30.0,
    seed: int = 0,
    photo_name: str = "photo",
    noise_sigma: float = 1.5,
    effects: bool = True,
) -> Sequence:
    """Render motion ``name`` (one of ``SEQUENCE_NAMES``) over ``photo`` (H x W x 3 uint8 BGR).

    out_size: (width, height) px. noise_sigma: grey levels. effects=False renders the plain warps (no blur,
    gain, contrast or noise), for checking the geometry. The noise is drawn from a generator seeded by
    ``(seed, name, photo_name)``.
    """
    if name not in MOTIONS and name not in GYRO_MOTIONS:
        raise SequenceError(f"unknown sequence {name!r}; expected one of {', '.join(ALL_SEQUENCE_NAMES)}")
    if num_frames < 2:
        raise SequenceError(f"a sequence needs at least 2 frames, got {num_frames}")
    if min(out_size) < 32:
        raise SequenceError(f"frame size must be at least 32x32 px, got {out_size[0]}x{out_size[1]}")
    if not fps > 0:
        raise SequenceError(f"fps must be positive, got {fps}")
    motion = MOTIONS[name] if name in MOTIONS else GYRO_MOTIONS[name]
    k = camera_matrix_for(out_size)
    photo, crop = prepare_photo(photo, out_size, CROP_FRACTION)
    photo_size = (photo.shape[1], photo.shape[0])
    times = np.arange(num_frames) / fps
    half_exposure = 0.5 * motion.exposure / fps if effects else 0.0

    amplitude = 1.0
    for _ in range(40):

        def orientation(s: float, amplitude: float = amplitude) -> np.ndarray:
            return rotation_matrix(amplitude * motion.rotation(s))

        def view(s: float, amplitude: float = amplitude) -> np.ndarray:
            if motion.rotation is not None:
                return k @ orientation(s, amplitude).T @ np.linalg.inv(k) @ crop
            return _view_homography(amplitude * motion.state(s), out_size, crop)

        checked = [view(s + d) for s in times for d in {-half_exposure, 0.0, half_exposure}]
        if all(_inside(h, out_size, photo_size) for h in checked):
            break
        amplitude *= 0.85
    else:
        raise SequenceError(f"sequence {name!r} does not fit inside photo {photo_name!r}")

    rng = np.random.default_rng([seed, zlib.crc32(f"{name}/{photo_name}".encode())])
    frames = np.empty((num_frames, out_size[1], out_size[0], 3), np.uint8)
    photo_to_frame = np.empty((num_frames, 3, 3))
    for index, s in enumerate(times):
        photo_to_frame[index] = view(s)
        if not effects:
            frames[index] = _warp(photo, photo_to_frame[index], out_size)
            continue
        blur_px = _corner_motion(view(s - half_exposure), view(s + half_exposure), out_size)
        samples = int(np.clip(np.ceil(blur_px), 1, MAX_BLUR_SAMPLES))
        offsets = np.linspace(-half_exposure, half_exposure, samples) if samples > 1 else [0.0]
        image = np.mean([_warp(photo, view(s + d), out_size).astype(np.float32) for d in offsets], axis=0)
        image = image * motion.gain(s)
        contrast = motion.contrast(s)
        if contrast != 1.0:
            image = image.mean() + contrast * (image - image.mean())
        image = image + rng.normal(0.0, noise_sigma, image.shape)
        frames[index] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    if motion.rotation is None:
        return Sequence(name, photo_name, fps, frames, photo_to_frame, amplitude)
    gyro_rng = np.random.default_rng([seed, zlib.crc32(f"gyro/{name}/{photo_name}".encode())])
    last_s = (num_frames - 1) / fps
    gyro_stamps = np.arange(-2, int(np.ceil(last_s * GYRO_RATE_HZ)) + 3) * (1e9 / GYRO_RATE_HZ)
    gyro_stamps = np.rint(gyro_stamps).astype(np.int64)
    rates = np.array([_body_rate(orientation, t * 1e-9) for t in gyro_stamps])
    bias = GYRO_BIAS * gyro_rng.choice([-1.0, 1.0], size=3)
    rates = rates + bias + gyro_rng.normal(0.0, GYRO_NOISE, rates.shape) if effects else rates
    return Sequence(name, photo_name, fps, frames, photo_to_frame, amplitude, k, gyro_stamps, rates)

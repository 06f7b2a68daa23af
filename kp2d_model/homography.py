"""Random homographies and image warps for KP2D's self-supervision (homography adaptation).

All homographies here act on **normalised coordinates**: x in [-1, 1] from the left to the right pixel
centre, y in [-1, 1] from the top to the bottom pixel centre (``align_corners=True`` convention;
pixel u <-> u / ((W - 1) / 2) - 1). A homography ``H`` of a training pair maps coordinates of
``image_aug`` (the source) to coordinates of ``image`` (the target): ``image_aug(p) = image(H p)``.

The sampler reproduces the original KP2D ``sample_homography`` (as called by its training pipeline):
the unit square's corners map to a patch of ``patch_ratio`` of the image, perturbed by a perspective
jitter, scaled about its centroid, translated uniformly within the bounds that keep it inside the
image and rotated by one of 100 angles in ``[-max_angle, max_angle]`` (or 0) that keep it inside.
With ``rotation_fits=False`` (not in the original) the angle is drawn among all of them: wide rotations then
come without the extra zoom a smaller ``patch_ratio`` would need, and the part of the warped image that falls
outside the photo is black (the loss ignores keypoints that warp outside the target image).
Geometry is done in an aspect-corrected frame (y scaled by H/W) so rotations are rotations in pixels.

Amplitudes are the effective ones: ``perspective_amplitude=0.2`` means corner offsets drawn from
N(0, 0.2) clipped to +-0.2 (the original's argument 0.4, halved inside); ``scaling_amplitude=0.1``
means scales from N(1, 0.1) clipped to [0.9, 1.1] (the original's 0.2, halved inside).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "PatchSample",
    "patch_extent",
    "sample_patch",
    "homography_from_corners",
    "sample_homography",
    "warp_points",
    "normalized_grid",
    "warp_image",
]

NUM_SCALES = 100
NUM_ANGLES = 100

# Corners of the normalised image, (x, y): top-left, bottom-left, top-right, bottom-right (the original's order).
UNIT_CORNERS = ((-1.0, -1.0), (-1.0, 1.0), (1.0, -1.0), (1.0, 1.0))


@dataclass(frozen=True)
class PatchSample:
    """One batch of sampled patches (all tensors float64).

    corners: ``(B, 4, 2)`` normalised (x, y) of the patch in the target image, one per unit corner.
    scale: ``(B,)`` the chosen scale factor; angle: ``(B,)`` the chosen rotation, radians;
    translation: ``(B, 2)`` the translation in the aspect-corrected frame (x in [-1, 1] units, y in H/W units).
    """

    corners: torch.Tensor
    scale: torch.Tensor
    angle: torch.Tensor
    translation: torch.Tensor


def patch_extent(patch_ratio: float, perspective_amplitude: float, scaling_amplitude: float) -> float:
    """Half-size of the widest patch the sampler can draw, as a fraction of the image's; it fits when < 1."""
    return (patch_ratio + perspective_amplitude) * (1.0 + scaling_amplitude)


def _check_sampler_arguments(
    batch_size: int,
    patch_ratio: float,
    perspective_amplitude: float,
    scaling_amplitude: float,
    max_angle: float,
    image_shape: tuple[int, int],
) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0.0 < patch_ratio <= 1.0:
        raise ValueError(f"patch_ratio must be in (0, 1], got {patch_ratio}")
    if perspective_amplitude < 0.0 or scaling_amplitude < 0.0 or scaling_amplitude >= 1.0 or max_angle < 0.0:
        raise ValueError(
            "perspective_amplitude and max_angle must be >= 0 and scaling_amplitude in [0, 1), got "
            f"{perspective_amplitude}, {max_angle}, {scaling_amplitude}"
        )
    # The widest possible patch must fit, else no translation keeps it inside the image.
    if patch_extent(patch_ratio, perspective_amplitude, scaling_amplitude) >= 1.0:
        raise ValueError(
            "(patch_ratio + perspective_amplitude) * (1 + scaling_amplitude) must be < 1 so the patch fits in the "
            f"image, got ({patch_ratio} + {perspective_amplitude}) * (1 + {scaling_amplitude})"
        )
    if len(image_shape) != 2 or min(image_shape) < 2:
        raise ValueError(f"image_shape must be (height, width) with both >= 2, got {image_shape}")


def sample_patch(
    batch_size: int,
    *,
    patch_ratio: float = 0.7,
    perspective_amplitude: float = 0.2,
    scaling_amplitude: float = 0.1,
    max_angle: float = math.pi / 4,
    rotation_fits: bool = True,
    image_shape: tuple[int, int] = (240, 320),
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> PatchSample:
    """Sample ``batch_size`` target patches (see the module docstring); random draws come from ``generator``.

    The draws happen on ``generator.device`` when a generator is given (else on ``device``); the result is
    returned on ``device``. ``image_shape`` = (height, width) sets the aspect ratio of the geometry.
    ``rotation_fits``: only angles that keep the patch inside the image (the original); else any of them.
    """
    _check_sampler_arguments(batch_size, patch_ratio, perspective_amplitude, scaling_amplitude, max_angle, image_shape)
    draw_device = generator.device if generator is not None else torch.device(device)
    f64 = {"dtype": torch.float64, "device": draw_device}
    b = batch_size
    hw_ratio = image_shape[0] / image_shape[1]
    lower = torch.tensor([-1.0, -hw_ratio], **f64)
    upper = torch.tensor([1.0, hw_ratio], **f64)

    corners = torch.tensor(UNIT_CORNERS, **f64).expand(b, 4, 2) * patch_ratio * torch.tensor([1.0, hw_ratio], **f64)

    # Perspective: two x and two y offsets per patch, shared pairwise by the corners as in the original.
    px = (torch.randn(b, 2, generator=generator, **f64) * perspective_amplitude).clamp(
        -perspective_amplitude, perspective_amplitude
    )
    py_amp = hw_ratio * perspective_amplitude
    py = (torch.randn(b, 2, generator=generator, **f64) * py_amp).clamp(-py_amp, py_amp)
    offsets = torch.stack(
        [
            torch.stack([-px[:, 1], -py[:, 1]], dim=1),
            torch.stack([-px[:, 0], py[:, 1]], dim=1),
            torch.stack([px[:, 1], -py[:, 0]], dim=1),
            torch.stack([px[:, 0], py[:, 0]], dim=1),
        ],
        dim=1,
    )
    corners = corners + offsets

    # Scale about the centroid: one of [1, 100 clipped-normal candidates], picked among the first 100 (original).
    candidates = (1.0 + torch.randn(b, NUM_SCALES, generator=generator, **f64) * scaling_amplitude).clamp(
        1.0 - scaling_amplitude, 1.0 + scaling_amplitude
    )
    candidates = torch.cat([torch.ones(b, 1, **f64), candidates], dim=1)
    pick = torch.randint(0, NUM_SCALES, (b, 1), generator=generator, device=draw_device)
    scale = candidates.gather(1, pick).squeeze(1)
    center = corners.mean(dim=1, keepdim=True)
    corners = (corners - center) * scale[:, None, None] + center

    # Translation: uniform within the room left on each side.
    room_low = (corners - lower).amin(dim=1)
    room_high = (upper - corners).amin(dim=1)
    translation = -room_low + torch.rand(b, 2, generator=generator, **f64) * (room_high + room_low)
    corners = corners + translation[:, None, :]

    # Rotation: angle 0 or one of 100 angles over [-max_angle, max_angle], uniformly among those that stay inside
    # (or among all of them without rotation_fits).
    angles = torch.cat([torch.zeros(1, **f64), torch.linspace(-max_angle, max_angle, NUM_ANGLES, **f64)])
    cos, sin = angles.cos(), angles.sin()
    rotations = torch.stack([torch.stack([cos, -sin], dim=-1), torch.stack([sin, cos], dim=-1)], dim=-2)  # (A,2,2)
    center = corners.mean(dim=1, keepdim=True)
    rotated = torch.einsum("bkj,aji->baki", corners - center, rotations) + center[:, None]  # (B,A,4,2)
    inside = ((rotated >= lower) & (rotated < upper)).flatten(2).all(dim=2)  # (B,A); angle 0 is always inside
    allowed = inside if rotation_fits else torch.ones_like(inside)
    choice = torch.multinomial(allowed.double(), 1, generator=generator)  # (B,1)
    corners = rotated[torch.arange(b, device=draw_device), choice.squeeze(1)]
    angle = angles[choice.squeeze(1)]

    corners = corners / torch.tensor([1.0, hw_ratio], **f64)
    return PatchSample(
        corners=corners.to(device), scale=scale.to(device), angle=angle.to(device), translation=translation.to(device)
    )


def homography_from_corners(corners: torch.Tensor) -> torch.Tensor:
    """The homographies ``(B, 3, 3)`` (H[2, 2] = 1) mapping the unit corners to ``corners`` ``(B, 4, 2)``.

    Solved exactly from the 8 point equations (float64 inside, returned in ``corners.dtype``).
    """
    if corners.ndim != 3 or corners.shape[1:] != (4, 2):
        raise ValueError(f"corners must have shape (B, 4, 2), got {tuple(corners.shape)}")
    target = corners.double()
    source = torch.tensor(UNIT_CORNERS, dtype=torch.float64, device=corners.device).expand_as(target)
    x, y = source[..., 0], source[..., 1]
    u, v = target[..., 0], target[..., 1]
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -x * u, -y * u], dim=-1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -x * v, -y * v], dim=-1)
    system = torch.stack([rows_u, rows_v], dim=2).reshape(-1, 8, 8)
    rhs = torch.stack([u, v], dim=2).reshape(-1, 8)
    solution = torch.linalg.solve(system, rhs)
    homography = torch.cat([solution, torch.ones_like(solution[:, :1])], dim=1).reshape(-1, 3, 3)
    return homography.to(corners.dtype)


def sample_homography(
    batch_size: int,
    *,
    patch_ratio: float = 0.7,
    perspective_amplitude: float = 0.2,
    scaling_amplitude: float = 0.1,
    max_angle: float = math.pi / 4,
    rotation_fits: bool = True,
    image_shape: tuple[int, int] = (240, 320),
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Random homographies ``(B, 3, 3)`` float32 on ``device``, in normalised [-1, 1] coordinates.

    ``H`` maps the whole source image (``image_aug``) onto a patch of the target image (see :func:`sample_patch`).
    """
    patch = sample_patch(
        batch_size,
        patch_ratio=patch_ratio,
        perspective_amplitude=perspective_amplitude,
        scaling_amplitude=scaling_amplitude,
        max_angle=max_angle,
        rotation_fits=rotation_fits,
        image_shape=image_shape,
        generator=generator,
        device=device,
    )
    return homography_from_corners(patch.corners).float()


def warp_points(points: torch.Tensor, homography: torch.Tensor) -> torch.Tensor:
    """Apply ``homography`` ``(B, 3, 3)`` to points ``(B, ..., 2)`` (x, y); returns ``(B, ..., 2)``."""
    if homography.ndim != 3 or homography.shape[1:] != (3, 3):
        raise ValueError(f"homography must have shape (B, 3, 3), got {tuple(homography.shape)}")
    if points.shape[0] != homography.shape[0] or points.shape[-1] != 2:
        raise ValueError(
            f"points must have shape (B, ..., 2) with B = {homography.shape[0]}, got {tuple(points.shape)}"
        )
    flat = points.reshape(points.shape[0], -1, 2)
    projected = torch.baddbmm(homography[:, None, :, 2], flat, homography[:, :, :2].transpose(1, 2))
    return (projected[..., :2] / projected[..., 2:]).reshape(points.shape)


def normalized_grid(height: int, width: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """``(H, W, 2)`` normalised (x, y) coordinates of every pixel centre (``align_corners=True`` convention)."""
    ys = torch.linspace(-1.0, 1.0, height, dtype=dtype, device=device)
    xs = torch.linspace(-1.0, 1.0, width, dtype=dtype, device=device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1)


def warp_image(image: torch.Tensor, homography: torch.Tensor) -> torch.Tensor:
    """``image_aug(p) = image(H p)``: bilinear, zeros outside, ``(B, C, H, W)`` -> ``(B, C, H, W)``.

    ``homography`` ``(B, 3, 3)`` maps normalised coordinates of the result to those of ``image``.
    """
    if image.ndim != 4:
        raise ValueError(f"image must have shape (B, C, H, W), got {tuple(image.shape)}")
    if homography.shape != (image.shape[0], 3, 3):
        raise ValueError(f"homography must have shape ({image.shape[0]}, 3, 3), got {tuple(homography.shape)}")
    batch, _, height, width = image.shape
    grid = normalized_grid(height, width, image.dtype, image.device).expand(batch, height, width, 2)
    source_grid = warp_points(grid, homography.to(image.dtype))
    return F.grid_sample(image, source_grid, mode="bilinear", padding_mode="zeros", align_corners=True)

"""Feature methods the HPatches evaluation compares: the protocol, the registry and the KeyPointNet method.

A method is called with one ``H x W x 3`` uint8 BGR image and returns ``(points, descriptors)``: ``points``
``(N, 3)`` ``[x, y, score]`` in the image's pixels and ``descriptors`` ``(N, D)``; the metric code applies top-k
itself. ``norm`` is the OpenCV norm its descriptors are matched with. Methods may also offer
``describe_batch(images)`` (same-size images in one network batch; :func:`describe_images` uses it when present)
and ``thread_safe = True`` (the evaluation driver may then call it from several threads at once).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kp2d_model.checkpoint import load_keypoint_net
from kp2d_model.detector import (
    KeypointDetector,
    check_input_scale,
    fuse_batchnorm,
    resolve_device,
    scaled_size,
    to_image_pixels,
)
from kp2d_model.engines import BackendName, Precision, resolve_engine
from kp2d_model.image import check_contrast, normalize_image, stretch_contrast
from kp2d_model.networks import KeypointNet, KeypointResnet

__all__ = [
    "BASELINE_CLASSES",
    "METHOD_NAMES",
    "FeatureMethod",
    "KeyPointNetMethod",
    "describe_images",
    "descriptors_at_points",
    "get_method",
]

Features = tuple[np.ndarray, np.ndarray]

# name -> class in kp2d_model.evaluation.baselines (imported only when asked for)
BASELINE_CLASSES = {"orb": "OrbMethod", "sift": "SiftMethod", "akaze": "AkazeMethod", "xfeat": "XFeatMethod"}
METHOD_NAMES = ("kp2d", *BASELINE_CLASSES)


@runtime_checkable
class FeatureMethod(Protocol):
    """Keypoints + descriptors of one image, for the HPatches metrics."""

    name: str
    norm: int  # cv2.NORM_L2 or cv2.NORM_HAMMING, for cv2.BFMatcher

    def __call__(self, image_bgr: np.ndarray) -> Features:
        """``H x W x 3`` uint8 BGR -> points ``(N, 3)`` ``[x, y, score]`` px, descriptors ``(N, D)``."""
        ...


class KeyPointNetMethod:
    """KeyPointNet as the original evaluation runs it: every cell with ``score > 0`` is a keypoint (no NMS, no
    top-k here), its descriptor sampled at the keypoint; points come in the network's raster order (row-major
    over the cell grid), which the metrics' sort and RANSAC see in the same order as the original's.

    The image goes to the network as it is (BGR, as the original's OpenCV reader gives it), ``/255`` then
    ``(x - 0.5) * 0.225``. Its size must be a multiple of the network's stride (8; 32 for KeypointResnet).

    ``input_scale`` (not in the original; default 1): the image is first resized by this factor
    (``cv2.INTER_LINEAR``, as ``KeypointDetector(input_scale=...)``) and the points are mapped back to the
    image's pixels (pixel-centre aligned), so the metrics still see the benchmark's resolution. The method is
    then named ``kp2d_x<scale>`` (e.g. ``kp2d_x2``).

    ``contrast="stretch"`` (not in the original; default ``"none"``): each image's channels stretched to the full
    0..255 range first (``kp2d_model.image.stretch_contrast``, as ``KeypointDetector(contrast="stretch")``, the ROS
    node's default); the method is then named ``kp2d_stretch`` (``kp2d_x2.5_stretch`` with a scale).

    ``fuse_batchnorm`` (default): BatchNorm folded into the convolutions, channels-last, and for KeyPointNet the
    descriptor head's last 3x3 convolution (linear) evaluated at the keypoints only (:func:`descriptors_at_points`)
    instead of on the whole H/4 map: about 2.2 of 13.2 GMAC saved per 320x240 image. Equal to the original's
    forward to float rounding (~1e-6). ``fuse_batchnorm=False``: the plain eval-mode network.
    """

    name = "kp2d"
    norm = cv2.NORM_L2
    thread_safe = True  # forward only reads the network: several threads may call it at once

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        device: str | torch.device = "auto",
        fuse_batchnorm: bool = True,
        input_scale: float = 1.0,
        precision: str = "fp32",
        backend: str = "auto",
        calibration: str | os.PathLike | None = None,
        contrast: str = "none",
    ) -> None:
        self.input_scale = check_input_scale(input_scale)
        self.contrast = check_contrast(contrast, "kp2d: contrast")
        self.name = "kp2d" if self.input_scale == 1 else f"kp2d_x{self.input_scale:g}"
        if self.contrast != "none":
            self.name += f"_{self.contrast}"
        self.device = resolve_device(device)
        # Another precision or engine: the detector's engine runs the network (same raw outputs, coordinates
        # in float32 here as there); the plain float32 torch path below stays the original protocol.
        self.engine: KeypointDetector | None = None
        choice = resolve_engine(precision, backend, self.device, int8_ready=True)
        self.precision, self.backend = choice.precision.value, choice.backend.value
        if (choice.precision, choice.backend) != (Precision.FP32, BackendName.TORCH):
            if not fuse_batchnorm:
                raise ValueError("kp2d: --reference-forward runs the float32 torch network; not with another precision")
            self.engine = KeypointDetector(
                checkpoint,
                device=self.device,
                top_k=None,
                precision=precision,
                backend=backend,
                calibration=calibration,
            )
            self.precision, self.backend = self.engine.precision.value, self.engine.backend.value
            self.thread_safe = self.engine.backend is BackendName.ONNXRUNTIME
        network = load_keypoint_net(checkpoint, device=self.device)
        self.checkpoint = str(checkpoint)
        self.stride = 32 if isinstance(network, KeypointResnet) else 8
        self.memory_format = torch.channels_last if fuse_batchnorm else torch.contiguous_format
        self.final_conv: nn.Conv2d | None = None
        if fuse_batchnorm:
            network = _fused(network).to(memory_format=self.memory_format)
            if isinstance(network, KeypointNet):
                # With convFbb removed, the (mode-independent) fused network's train-mode forward returns the
                # descriptor head's features before its last convolution, which is applied at the keypoints.
                self.final_conv, network.convFbb = network.convFbb, nn.Identity()
                network.train()
        self.network = network

    def __call__(self, image_bgr: np.ndarray) -> Features:
        return self.describe_batch([image_bgr])[0]

    def describe_batch(self, images_bgr: Sequence[np.ndarray]) -> list[Features]:
        """Same-size ``H x W x 3`` uint8 BGR images, one network batch -> per image ``(points (N, 3), desc (N, D))``
        float32, ``N`` = cells with ``score > 0``."""
        if not images_bgr:
            return []
        shape = images_bgr[0].shape
        for index, image in enumerate(images_bgr):
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"kp2d: images[{index}] must be an H x W x 3 uint8 BGR array")
            if image.shape != shape:
                raise ValueError(f"kp2d: images[{index}] has shape {image.shape}, images[0] has {shape}")
        if self.contrast == "stretch":
            images_bgr = [stretch_contrast(image) for image in images_bgr]
        height, width = shape[:2]
        network_w, network_h = scaled_size(width, height, self.input_scale)
        resized = (network_w, network_h) != (width, height)
        if network_h % self.stride or network_w % self.stride:
            scaled = f" (input_scale {self.input_scale:g} x {width}x{height})" if resized else ""
            size = f"{network_w}x{network_h}{scaled}"
            raise ValueError(f"kp2d: image size {size} is not a multiple of the network stride {self.stride}")
        if resized:
            size = (network_w, network_h)
            images_bgr = [cv2.resize(image, size, interpolation=cv2.INTER_LINEAR) for image in images_bgr]
        if self.engine is not None:
            score, coord, source = self.engine._run_trunk(np.stack(images_bgr))  # noqa: SLF001
            with torch.inference_mode():  # the detector's descriptors at every cell's keypoint: (B, D, N)
                cells = coord.flatten(2).transpose(1, 2)
                describe = self.engine.describe_points
                desc = torch.stack([describe(source[b], cells[b], network_h, network_w).T for b in range(len(cells))])
        else:
            batch = torch.from_numpy(np.stack(images_bgr)).to(self.device).permute(0, 3, 1, 2).float().div(255.0)
            batch = normalize_image(batch).contiguous(memory_format=self.memory_format)
            with torch.inference_mode():
                score, coord, desc = self.network(batch)
            if self.final_conv is None:
                desc = desc.flatten(2)
            else:
                desc = descriptors_at_points(desc, self.final_conv, coord.flatten(2), network_h, network_w)
        with torch.inference_mode():
            coord, score = coord.flatten(2), score.flatten(2)  # (B, 2, N), (B, 1, N): cells in raster order
            if resized:  # back to the image's pixels, as the detector maps them
                coord = to_image_pixels(coord.transpose(1, 2), (network_w, network_h), (width, height)).transpose(1, 2)
            points = torch.cat([coord, score], dim=1).transpose(1, 2).float().cpu().numpy()  # (B, N, 3)
            descriptors = desc.transpose(1, 2).float().cpu().numpy()  # (B, N, D)
        results = []
        for image_points, image_descriptors in zip(points, descriptors, strict=True):
            keep = image_points[:, 2] > 0.0
            results.append((np.ascontiguousarray(image_points[keep]), np.ascontiguousarray(image_descriptors[keep])))
        return results


def descriptors_at_points(
    features: torch.Tensor, final_conv: nn.Conv2d, coord: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """L2-normalised descriptors ``(B, D, N)`` = the original's ``grid_sample(final_conv(features), coord)``
    (align_corners=True) computed at the points only.

    ``features``: ``(B, C, h, w)``, the input of the descriptor head's last ``3 x 3`` convolution ``final_conv``
    (stride 1, zero padding 1, C -> D); ``coord``: ``(B, 2, N)`` x, y pixels of the ``height x width`` image.
    The convolution is linear and bilinear sampling commutes with it, so the sample of its output at a point is
    the convolution of the zero-padded features sampled at the point plus each of the 9 tap offsets.
    """
    batch, channels, map_h, map_w = features.shape
    padded = F.pad(features, (1, 1, 1, 1))
    # pixel -> map coordinate as the original's normalisation + align_corners=True, then +1 for the padding
    column = coord[:, 0] * ((map_w - 1) / (width - 1)) + 1.0  # (B, N)
    row = coord[:, 1] * ((map_h - 1) / (height - 1)) + 1.0
    offsets = torch.arange(-1.0, 2.0, device=coord.device, dtype=coord.dtype)
    tap_rows = (row[:, :, None] + offsets.repeat_interleave(3)) / (map_h + 1) * 2 - 1  # (B, N, 9)
    tap_columns = (column[:, :, None] + offsets.repeat(3)) / (map_w + 1) * 2 - 1
    grid = torch.stack([tap_columns, tap_rows], dim=-1)  # (B, N, 9, 2), taps in (ky, kx) raster order
    samples = F.grid_sample(padded, grid, mode="bilinear", padding_mode="zeros", align_corners=True)  # (B,C,N,9)
    samples = samples.permute(0, 2, 3, 1).reshape(batch, grid.shape[1], 9 * channels)  # (B, N, 9*C): tap, channel
    weight = final_conv.weight.permute(0, 2, 3, 1).reshape(final_conv.out_channels, 9 * channels)  # (D, 9*C)
    descriptors = torch.matmul(samples, weight.T)  # (B, N, D)
    if final_conv.bias is not None:
        descriptors = descriptors + final_conv.bias
    descriptors = descriptors.transpose(1, 2)  # (B, D, N)
    return descriptors / torch.linalg.vector_norm(descriptors, dim=1, keepdim=True)


def _fused(network: nn.Module) -> nn.Module:
    fused = fuse_batchnorm(network)
    fused.eval()  # eval mode: descriptors sampled at every cell's keypoint, as the original's eval forward
    return fused


def describe_images(method: FeatureMethod, images_bgr: Sequence[np.ndarray]) -> list[Features]:
    """Run ``method`` on several images (one batch when it has ``describe_batch``) -> per image (points, desc)."""
    describe_batch = getattr(method, "describe_batch", None)
    if describe_batch is not None:
        return describe_batch(images_bgr)
    return [method(image) for image in images_bgr]


def get_method(name: str, **kwargs: object) -> FeatureMethod:
    """A feature method by name: ``"kp2d"`` (``checkpoint=...``, ``device=...``) or a baseline
    (``"orb"``, ``"sift"``, ``"akaze"``, ``"xfeat"``, from ``kp2d_model.evaluation.baselines``)."""
    if name == "kp2d":
        if kwargs.get("checkpoint") is None:
            raise ValueError("method 'kp2d' needs a checkpoint (e.g. --checkpoint v4.ckpt)")
        return KeyPointNetMethod(**kwargs)  # type: ignore[arg-type]
    if name not in BASELINE_CLASSES:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(METHOD_NAMES)}")
    try:
        from kp2d_model.evaluation import baselines
    except ImportError as error:
        raise RuntimeError(
            f"method {name!r} needs kp2d_model.evaluation.baselines, which failed to import: {error}"
        ) from error
    return getattr(baselines, BASELINE_CLASSES[name])(**kwargs)

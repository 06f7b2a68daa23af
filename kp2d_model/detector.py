"""KeypointDetector: images in -> keypoints (pixels of the input image), scores, descriptors out.

Pipeline per image: any uint8 image (grey, BGR, RGB, BGRA) -> BGR (what the original evaluation fed the
network) -> optional resize to ``input_size`` or by ``input_scale`` -> replicate-pad right/bottom to a
multiple of the network's stride -> normalise -> network (BatchNorm folded into the convolutions, channels-last) ->
one keypoint per cell -> optional cell NMS, ``score > score_threshold``, drop points in the padding ->
``top_k`` by score -> descriptors sampled at the kept keypoints only (for KeyPointNet the descriptor
head's last 3x3 conv is evaluated at the keypoints only, in every engine but TensorRT:
``sample_conv3x3_descriptors``) -> coordinates mapped back to the input image.
"""

from __future__ import annotations

import copy
import logging
import numbers
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from kp2d_model import engines
from kp2d_model.checkpoint import CheckpointError, default_checkpoint_path, load_keypoint_net
from kp2d_model.engines import BackendName, DenseHeads, EngineChoice, EngineError, Precision
from kp2d_model.image import (
    IMAGE_FILE_SUFFIXES,
    ImageFormatError,
    check_contrast,
    image_files_in,
    stretch_contrast,
    to_bgr,
)
from kp2d_model.networks import KeypointNet, KeypointResnet, sample_descriptors, score_and_coord

__all__ = [
    "Detections",
    "KeypointDetector",
    "LastConv",
    "fuse_batchnorm",
    "network_input_size",
    "resolve_device",
    "sample_conv3x3_descriptors",
]

LOG = logging.getLogger("kp2d_model.detector")
SPARSE_CONV_CHUNK = 256  # points per step of sample_conv3x3_descriptors
CALIBRATION_SIZE = (640, 480)  # (W, H) the INT8 calibration photos are resized to (then input_scale applies)


@dataclass
class Detections:
    """Keypoints of one image, sorted by descending score.

    keypoints: ``(N, 2)`` float32 pixels of the *input* image, x right, y down (pixel centres at integers).
    scores: ``(N,)`` float32 in [0, 1]. descriptors: ``(N, D)`` float32, L2-normalised (D = 256 or 64).
    image_size: ``(W, H)`` of the input image. Fields are torch tensors (detector's device) or NumPy
    arrays (after :meth:`numpy`).
    """

    keypoints: Any
    scores: Any
    descriptors: Any
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def numpy(self) -> Detections:
        """The same detections as NumPy arrays (float32) on the CPU."""

        def as_numpy(value: Any) -> np.ndarray:
            return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)

        return Detections(as_numpy(self.keypoints), as_numpy(self.scores), as_numpy(self.descriptors), self.image_size)


class CalibrationBatches(list):
    """INT8 calibration inputs already prepared by ``KeypointDetector.calibration_batches`` (a list of
    ``(480, 640, C)`` uint8 arrays), told apart from a caller's list of photos."""


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def fuse_batchnorm(net: nn.Module) -> nn.Module:
    """An eval-mode copy of ``net`` with every BatchNorm folded into the convolution before it.

    Handles ``Sequential(conv, bn, ...)`` pairs and ``convN``/``bnN`` attribute pairs (ResNet blocks);
    dropout layers are removed. The copy has no train/eval-dependent layer left (checked).
    Outputs match the unfused eval-mode network to float rounding.
    """
    fused = copy.deepcopy(net).eval()
    for module in list(fused.modules()):
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                    module[i] = fuse_conv_bn_eval(module[i], module[i + 1])
                    module[i + 1] = nn.Identity()
        for index in (1, 2, 3):
            conv, bn = getattr(module, f"conv{index}", None), getattr(module, f"bn{index}", None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, f"conv{index}", fuse_conv_bn_eval(conv, bn))
                setattr(module, f"bn{index}", nn.Identity())
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Dropout2d | nn.Dropout):
                setattr(module, name, nn.Identity())
    leftovers = [
        name for name, m in fused.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm | nn.Dropout2d)
    ]
    if leftovers:
        raise TypeError(f"fuse_batchnorm: could not fold/remove {leftovers[:5]} of {type(net).__name__}")
    return fused


@dataclass(frozen=True)
class LastConv:
    """KeyPointNet's last descriptor conv (3x3, stride 1, zero padding 1, C -> D) as one matrix, for
    :func:`sample_conv3x3_descriptors`.

    weight: ``(9C, D)``, rows in (ky, kx, c) order, in the dtype the product runs in; bias: ``(D,)`` float32;
    pad_value: the input value of the conv's zero padding. For a UINT8 input map (an INT8 engine's,
    ``scale * (q - zero_point)``) the scale is folded into weight and bias and pad_value is the zero point, so
    the map is used as it comes.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    pad_value: float

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        quantization: engines.FeatureQuantization | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> LastConv:
        with torch.no_grad():
            weight = conv.weight.detach().permute(0, 2, 3, 1).reshape(conv.out_channels, -1).float()  # (D, 9C)
            bias = conv.bias.detach().float() if conv.bias is not None else weight.new_zeros(conv.out_channels)
            if quantization is None:
                return cls(weight.T.contiguous().to(dtype), bias.contiguous(), 0.0)
            scale, zero_point = quantization.scale, quantization.zero_point
            bias = bias - scale * zero_point * weight.sum(dim=1)
            return cls((weight * scale).T.contiguous().to(dtype), bias.contiguous(), float(zero_point))

    def dense(self, features: torch.Tensor) -> torch.Tensor:
        """The conv over a whole ``(B, h, w, C)`` input map -> ``(B, D, h, w)`` float32 (``run_dense``)."""
        values = F.pad(features.float().permute(0, 3, 1, 2), (1, 1, 1, 1), value=self.pad_value)
        kernel = self.weight.float().T.reshape(-1, 3, 3, features.shape[-1]).permute(0, 3, 1, 2)  # (D, C, 3, 3)
        return F.conv2d(values, kernel, self.bias)


def sample_conv3x3_descriptors(
    features: torch.Tensor, conv: LastConv, points: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Descriptors ``(N, D)`` = the conv of ``features`` sampled bilinearly (align_corners=True) at ``points``,
    L2-normalised, computed at the points only.

    features: ``(h, w, C)`` channels last, float or UINT8 (``conv`` says), the input map of an ``height x
    width`` image; points: ``(N, 2)`` float32 pixels x, y. The conv and bilinear sampling are both linear and the
    4 bilinear weights sum to 1, so the sample of the conv's output at a point is the conv of the 3x3 taps of
    the input sampled at the point plus each tap offset: one ``(N, 9C) x (9C, D)`` product, a quarter of the
    arithmetic of the conv at the 4 map positions each point reads (1,000 points: 0.59 of 11.3 GMAC dense at
    640x480). Every tap is read from the point's 4x4 input window (positions outside the map: the padding value).
    """
    map_h, map_w, channels = features.shape
    # sample_descriptors' pixel -> [-1, 1] mapping, then grid_sample's (align_corners=True) [-1, 1] -> map position.
    u = (points[:, 0] / ((width - 1) / 2.0) - 1.0 + 1.0) / 2.0 * (map_w - 1)
    v = (points[:, 1] / ((height - 1) / 2.0) - 1.0 + 1.0) / 2.0 * (map_h - 1)
    x0, y0 = u.floor(), v.floor()
    fx, fy = (u - x0).reshape(-1, 1, 1, 1), (v - y0).reshape(-1, 1, 1, 1)
    window = torch.arange(-1, 3, device=features.device)
    rows, cols = y0.long()[:, None] + window, x0.long()[:, None] + window  # (N, 4) each
    inside = ((rows >= 0) & (rows < map_h))[:, :, None] & ((cols >= 0) & (cols < map_w))[:, None, :]  # (N, 4, 4)
    flat = rows.clamp(0, map_h - 1)[:, :, None] * map_w + cols.clamp(0, map_w - 1)[:, None, :]
    table = features.reshape(-1, channels)
    products = []
    # Chunks of points keep the temporaries at a few MB: 1,000 points at once allocate ~40 MB per call, which
    # glibc's malloc hands back to the system after each call and page-faults in again (4 -> 17 ms measured).
    for start in range(0, points.shape[0], SPARSE_CONV_CHUNK):
        part = slice(start, start + SPARSE_CONV_CHUNK)
        taps = table.index_select(0, flat[part].reshape(-1)).reshape(-1, 4, 4, channels)
        if not bool(inside[part].all()):  # near the border: the conv's zero padding
            taps = taps.masked_fill(~inside[part, :, :, None], conv.pad_value)
        taps = taps.float()
        across = torch.lerp(taps[:, :, 0:3], taps[:, :, 1:4], fx[part])  # (n, 4, 3, C): x interpolated
        sampled = torch.lerp(across[:, 0:3], across[:, 1:4], fy[part]).reshape(-1, 9 * channels)
        products.append(torch.mm(sampled.to(conv.weight.dtype), conv.weight))
    descriptors = torch.cat(products).float() + conv.bias
    return descriptors / torch.linalg.vector_norm(descriptors, dim=1, keepdim=True)


def check_input_scale(input_scale: object) -> float:
    """``input_scale`` as a float, or ValueError naming it: a real number in (0, 8] (8 = 64x the pixels)."""
    if not (isinstance(input_scale, numbers.Real) and 0 < input_scale <= 8):
        raise ValueError(f"input_scale must be a number in (0, 8], got {input_scale!r}")
    return float(input_scale)


def scaled_size(width: int, height: int, input_scale: float) -> tuple[int, int]:
    """``(W, H)`` of a ``width x height`` image resized by ``input_scale`` (rounded, at least 1 px)."""
    return max(1, round(width * input_scale)), max(1, round(height * input_scale))


def network_input_size(
    width: int, height: int, stride: int, input_size: tuple[int, int] | None = None, input_scale: float | None = None
) -> tuple[int, int]:
    """``(W, H)`` the network processes for a ``width x height`` image: resized to ``input_size`` or by
    ``input_scale`` (see :func:`scaled_size`), then padded right/bottom to a multiple of ``stride``."""
    if input_size is not None:
        width, height = input_size
    elif input_scale is not None:
        width, height = scaled_size(width, height, input_scale)
    return width + (-width % stride), height + (-height % stride)


def to_image_pixels(xy: torch.Tensor, network_size: tuple[int, int], image_size: tuple[int, int]) -> torch.Tensor:
    """``(..., 2)`` x, y pixels of the resized network input -> pixels of the ``image_size`` ``(W, H)`` image it
    was resized from (``cv2.resize`` to ``network_size``): pixel-centre aligned, as cv2.resize samples,
    ``x = (x_net + 0.5) * W / W_net - 0.5``, clipped to the image."""
    (network_w, network_h), (width, height) = network_size, image_size
    xy = (xy + 0.5) * xy.new_tensor([width / network_w, height / network_h]) - 0.5
    return torch.minimum(xy.clamp_min(0), xy.new_tensor([width - 1, height - 1]))


def agreement_check_image(channels: int = 3, size: tuple[int, int] = (192, 256)) -> np.ndarray:
    """A fixed ``(1, H, W, C)`` uint8 test image (smooth noise, discs and bars; the same on every machine)."""
    rng = np.random.default_rng(20260)
    image = cv2.GaussianBlur(rng.integers(0, 256, (*size, 3), dtype=np.uint8), (0, 0), 2)
    for _ in range(24):
        x, y = int(rng.integers(0, size[1])), int(rng.integers(0, size[0]))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.circle(image, (x, y), int(rng.integers(4, 24)), color, -1)
        cv2.line(image, (x, y), (x + int(rng.integers(-40, 40)), y + int(rng.integers(-40, 40))), color[::-1], 2)
    if channels == 1:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[:, :, None]
    return image[None]


def _half_precision(half: bool | str) -> Precision | None:
    """The legacy ``half`` argument as a precision (None: off)."""
    if half is False or half is None:
        return None
    if half is True or half == "fp16":
        return Precision.FP16
    if half == "bf16":
        return Precision.BF16
    raise ValueError(f"half must be False, True, 'fp16' or 'bf16', got {half!r}")


@dataclass(frozen=True)
class _Selection:
    """Which candidates one call keeps: the detector's settings, or the caller's overrides."""

    top_k: int | None
    score_threshold: float
    nms_radius: int
    mask: np.ndarray | None  # (H, W) bool of the input image, True = keep; None: everywhere


_UNSET: Any = object()  # "not given": use the detector's own setting


@dataclass
class _Prepared:
    """One image ready for the network: padded BGR array + how to map coordinates back."""

    padded: np.ndarray  # Hp x Wp x 3 uint8 BGR (Hp x Wp x 1 grey for 1-channel networks)
    valid_size: tuple[int, int]  # (w, h) of the resized/unpadded content inside ``padded``
    input_size: tuple[int, int]  # (W, H) of the caller's image


class KeypointDetector:
    """KeyPointNet keypoint detector and descriptor.

    Args:
        checkpoint: a checkpoint path (released ``.ckpt``, project ``.safetensors``, trainer ``.pt``), a
            loaded KeypointNet/KeypointResnet module, an exported ``.onnx`` (``kp2d-export``; its metadata gives
            stride, channels, precision), or None for the bundled default model.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:0"``, ...
        top_k: keep at most this many keypoints per image (None or <= 0: all).
        score_threshold: keep keypoints with ``score > score_threshold`` (0 drops the zeroed border cells).
        nms_radius: cell-level non-maximum suppression radius in cells (0: off), max-pool based.
        precision: arithmetic of the network: ``"fp32"`` (the exact reference), ``"bf16"``, ``"fp16"`` (CUDA),
            ``"int8"`` (needs ``calibration``) or ``"auto"`` (the fastest setting measured to keep quality on
            this machine; logged). Coordinates, scores and descriptor normalisation stay float32 in every case.
        backend: the engine: ``"auto"``, ``"torch"``, ``"onnxruntime"``, ``"openvino"`` or ``"tensorrt"``
            (kp2d_model.engines lists what each runs). Invalid pairs raise EngineError here.
        calibration: INT8 calibration photos: a folder of training photos or a list of uint8 BGR images
            (never benchmark photos), or None; resized to 640x480. The INT8 graph is cached
            (``$KP2D_ENGINE_CACHE``, default ``~/.cache/kp2d``). The bundled default model ships one
            (calibrated on its training photos), so ``precision="int8"``/``"auto"`` need no photos for it.
        half: legacy: ``True``/``"fp16"`` or ``"bf16"``: autocast on CUDA (ignored with a warning on the CPU).
        input_size: ``(W, H)``: resize every image to this size first (coordinates still reported in the
            input image's pixels); None: run at the native size, padded to the network's stride.
        input_scale: resize every image by this factor first (e.g. 2.0: a 320x240 image runs as 640x480;
            coordinates still in the input image's pixels); None or 1.0: native size. Not with ``input_size``.
            The bundled default model matches best at 2.5 (finer keypoint positions; docs/default_model.md),
            at 6.25x the network's cost (2.0: 4x, nearly as good).
        contrast: ``"none"`` (the image as given, as the original) or ``"stretch"``: each image's channels
            stretched to the full 0..255 range first (``kp2d_model.image.stretch_contrast``: per channel, the
            darkest and brightest 1 % clipped; ~0.7 ms at 640x480). More repeatable keypoints in dim, hazy or
            badly exposed frames, nothing lost on well-exposed ones (docs/track_bench.md, "Contrast stretch");
            the ROS node's default.

    Call with one ``H x W x 3`` uint8 image (BGR by default; ``channel_order="rgb"`` for RGB; grey
    ``H x W`` and 4-channel BGRA/RGBA accepted) -> :class:`Detections`, or a list of images -> a list.
    Keyword overrides for one call: ``top_k``, ``score_threshold``, ``nms_radius`` (the detector's own values
    are left alone, so one detector can serve callers with different settings) and ``mask``: an ``(H, W)``
    array of the image's size, keypoints at a zero pixel (``mask[round(y), round(x)] == 0``) are dropped before
    the ``top_k`` truncation, so up to ``top_k`` keypoints come back from the allowed area.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | nn.Module | None = None,
        device: str | torch.device = "auto",
        top_k: int | None = 1000,
        score_threshold: float = 0.0,
        nms_radius: int = 0,
        half: bool | str = False,
        input_size: tuple[int, int] | None = None,
        input_scale: float | None = None,
        precision: str = "fp32",
        backend: str = "auto",
        calibration: str | os.PathLike | Sequence[np.ndarray] | None = None,
        contrast: str = "none",
    ):
        self.device = resolve_device(device)
        self.contrast = check_contrast(contrast)
        if isinstance(checkpoint, str | os.PathLike) and str(checkpoint).endswith(".onnx"):
            self._init_from_export(checkpoint, top_k, score_threshold, nms_radius, input_size, input_scale,
                                   precision, backend)  # fmt: skip
            return
        if isinstance(checkpoint, nn.Module):
            network = checkpoint.to(self.device).eval()
        else:
            if checkpoint is None:
                checkpoint = default_checkpoint_path()
                if not checkpoint.is_file():
                    raise CheckpointError(
                        f"no default model bundled yet ({checkpoint} does not exist); pass a checkpoint, e.g. "
                        "KeypointDetector(checkpoint='v4.ckpt') (released KP2D .ckpt, project .safetensors "
                        "or trainer .pt)"
                    )
            network = load_keypoint_net(checkpoint, device=self.device)
        self._set_selection(top_k, score_threshold, nms_radius, input_size, input_scale)
        self.network = network
        half_precision = _half_precision(half)
        if half_precision is not None and Precision(str(precision).lower()) == Precision.FP32:
            if self.device.type == "cuda":
                precision = half_precision
            else:
                warnings.warn("KeypointDetector: half precision is only used on CUDA; running float32", stacklevel=2)
        self.stride = 32 if isinstance(network, KeypointResnet) else 8
        self.cell, self.cross_ratio = int(network.cell), float(network.cross_ratio)
        self.grey_input = not getattr(network, "use_color", True)  # 1-channel networks get cv2 BGR2GRAY
        self.align_corners = not isinstance(network, KeypointResnet)
        self._descriptor_dim = int(network.descriptor_dim)
        # BatchNorm folded, dropout removed: no train/eval-dependent layer is left, so the train-mode forward
        # is the eval computation returning the dense descriptor map instead of sampling it at every cell.
        self._trunk = fuse_batchnorm(network).to(memory_format=torch.channels_last).train()
        # KeyPointNet: the descriptor head's last 3x3 conv is evaluated only at the kept keypoints (``_last_conv``,
        # set with the engine) unless the engine runs it densely.
        self._descriptor_conv: nn.Conv2d | None = None
        self._last_conv: LastConv | None = None
        if isinstance(network, KeypointNet):
            self._descriptor_conv = self._trunk.convFbb
            self._trunk.convFbb = nn.Identity()
        self._bundled_int8 = engines.bundled_int8_graph(checkpoint if not isinstance(checkpoint, nn.Module) else None)
        int8_ready = calibration is not None or self._bundled_int8 is not None
        self.engine_choice = engines.resolve_engine(precision, backend, self.device, int8_ready=int8_ready)
        auto_backend = engines.parse_choice(BackendName, backend, "backend") is BackendName.AUTO
        if engines.parse_choice(Precision, precision, "precision") is Precision.AUTO:
            self._build_auto_engine(calibration, fall_back_on_failure=auto_backend)
        else:
            self.engine = self._build_engine(self.engine_choice, calibration)
        LOG.info("KeypointDetector: %s", self.engine_choice)

    def _build_auto_engine(self, calibration: object, fall_back_on_failure: bool) -> None:
        """``precision="auto"``: build the chosen engine and check it (``_check_auto_choice``). With ``backend="auto"``
        too, an engine that fails to build or run here (an engine package broken on this CPU or under
        ``ONEDNN_MAX_CPU_ISA``, a failed quantisation) falls back to torch fp32 with the reason in the log line,
        never a traceback; an explicit backend's failure is raised (explicit choices never fall back)."""
        photos = None  # the caller's calibration photos: a bad folder is an error, not a reason to fall back
        if self.engine_choice.precision is Precision.INT8 and calibration is not None:
            photos = self.calibration_batches(calibration)
        try:
            self.engine = self._build_engine(self.engine_choice, photos)
            self._check_auto_choice()
        except Exception as error:  # noqa: BLE001 - any engine failure: "auto" falls back, with the reason
            failed = self.engine_choice
            if not fall_back_on_failure or (failed.backend, failed.precision) == (BackendName.TORCH, Precision.FP32):
                raise
            detail = engines.error_reason(error)
            detail = detail if isinstance(error, engines.EngineError) else f"{type(error).__name__}: {detail}"
            self.engine_choice = EngineChoice(
                BackendName.TORCH, Precision.FP32,
                f"{failed.backend.value} {failed.precision.value} could not run on this machine ({detail})",
            )  # fmt: skip
            self.engine = self._build_engine(self.engine_choice, None)

    def _check_auto_choice(self) -> None:
        """Check on a fixed synthetic 256x192 image that the engine ``"auto"`` chose agrees with float32 (>= 90 %
        of the 100 best cells' keypoints within 1 px); else fall back to torch fp32 (one log line)."""
        if self.engine_choice.precision is Precision.FP32 and self.engine_choice.backend is BackendName.TORCH:
            return
        image = agreement_check_image(1 if self.grey_input else 3)
        reference = engines.TorchBackend(self.dense_heads(), self.device, Precision.FP32).forward(image)
        found = self.engine.forward(image)
        best = reference.score.flatten().topk(100).indices
        shift_px = (found.center_shift - reference.center_shift).abs().amax(dim=1).flatten()[best]
        shift_px = shift_px * self.cross_ratio * (self.cell - 1) / 2  # tanh shift -> pixels
        within = float((shift_px <= 1.0).float().mean())
        if within >= 0.9:
            self.engine_choice = replace(self.engine_choice, reason=f"{self.engine_choice.reason}; "
                                         f"{within:.0%} of check keypoints within 1 px of fp32")  # fmt: skip
            return
        rejected = self.engine_choice
        self.engine_choice = EngineChoice(
            BackendName.TORCH, Precision.FP32, f"{rejected.backend.value} {rejected.precision.value} failed the "
            f"agreement check ({within:.0%} of keypoints within 1 px of fp32)"
        )  # fmt: skip
        self.engine = self._build_engine(self.engine_choice, None)

    def _set_selection(self, top_k, score_threshold, nms_radius, input_size, input_scale) -> None:  # noqa: ANN001
        if nms_radius < 0 or int(nms_radius) != nms_radius:
            raise ValueError(f"nms_radius must be a non-negative integer (cells), got {nms_radius!r}")
        if input_size is not None and (len(input_size) != 2 or any(int(v) != v or v < 1 for v in input_size)):
            raise ValueError(f"input_size must be (width, height) in pixels, got {input_size!r}")
        if input_scale is not None:
            input_scale = check_input_scale(input_scale)
            if input_size is not None:
                raise ValueError("give input_size or input_scale, not both")
        self.top_k = top_k
        self.score_threshold = float(score_threshold)
        self.nms_radius = int(nms_radius)
        self.input_size = None if input_size is None else (int(input_size[0]), int(input_size[1]))
        self.input_scale = None if input_scale == 1.0 else input_scale

    def export_metadata(self, precision: Precision = Precision.FP32, descriptor_conv: str = "separate") -> dict:
        """What an exported graph of this detector's network says about itself (read back on load)."""
        return {
            "stride": self.stride,
            "cell": self.cell,
            "cross_ratio": self.cross_ratio,
            "channels": 1 if self.grey_input else 3,
            "channel_order": "grey" if self.grey_input else "bgr",
            "descriptor_dim": self.descriptor_dim,
            "align_corners": self.align_corners,
            "network": type(self.network).__name__,
            "precision": Precision(precision).value,
            "descriptor_conv": descriptor_conv,  # "separate": the detector runs KeyPointNet's last conv itself
            "input": "uint8 (B, H, W, C), H and W multiples of stride",
            "outputs": "score (B,1,H/8,W/8) sigmoid without border mask; center_shift (B,2,H/8,W/8) tanh; "
            "features (B,C,h,w)",
        }

    def dense_heads(self, with_descriptor_conv: bool = False) -> DenseHeads:
        """The graph the engines run (a copy holding KeyPointNet's last descriptor conv when asked)."""
        trunk = self._trunk
        if with_descriptor_conv and self._descriptor_conv is not None:
            trunk = copy.deepcopy(self._trunk)
            trunk.convFbb = self._descriptor_conv
        return DenseHeads(trunk)

    def _build_engine(self, choice: EngineChoice, calibration: object) -> engines.Backend:
        """The engine for ``choice``. For KeyPointNet every engine but TensorRT stops before the descriptor head's
        last conv and returns its input map channels last; the detector evaluates the conv at the keypoints only
        (``self._last_conv``; 1,000 keypoints at 640x480: 0.59 of the dense conv's 11.3 GMAC). TensorRT runs
        the whole network (``self._last_conv`` None)."""
        cut = self._descriptor_conv is not None and choice.backend is not BackendName.TENSORRT
        self._last_conv = None
        if choice.backend is BackendName.TORCH:
            self._last_conv = self._float_last_conv()
            return engines.TorchBackend(self.dense_heads(), self.device, choice.precision, channels_last=cut)
        options = {"device": self.device, "precision": choice.precision, "threads": torch.get_num_threads()}
        options["channels_last"] = cut
        bf16 = torch.bfloat16 if engines.native_bf16() else torch.float32
        with tempfile.TemporaryDirectory(prefix="kp2d-engine-") as workdir:
            if choice.precision is Precision.INT8 and calibration is None:
                onnx_path = self._bundled_int8
            else:  # INT8 is calibrated on the whole graph and cut below; the float graphs are exported cut
                whole = not cut or choice.precision is Precision.INT8
                onnx_path = engines.export_onnx(
                    self.dense_heads(with_descriptor_conv=whole),
                    Path(workdir) / "dense_heads.onnx",
                    self.export_metadata(descriptor_conv="included" if whole else "separate"),
                    channels=1 if self.grey_input else 3,
                )
            if choice.precision is Precision.INT8:
                if calibration is not None:
                    if not isinstance(calibration, CalibrationBatches):
                        calibration = self.calibration_batches(calibration)
                    batches = [image[None] for image in calibration]
                    onnx_path = engines.cached_int8_graph(onnx_path, batches)
                if cut:  # the conv's UINT8 input, its scale folded into the conv; products in bf16 where native
                    quantization = engines.cut_before_last_conv(onnx_path, Path(workdir) / "dense_heads_cut.onnx")
                    onnx_path = Path(workdir) / "dense_heads_cut.onnx"
                    self._last_conv = LastConv.from_conv(self._descriptor_conv, quantization, bf16)
            elif cut:
                product = bf16 if choice.precision is Precision.BF16 else torch.float32
                self._last_conv = LastConv.from_conv(self._descriptor_conv, dtype=product)
            if choice.backend is BackendName.TENSORRT:  # the engine is built once and cached next to the graph
                onnx_path = engines.cache_dir() / f"dense_heads_{engines.file_sha256(onnx_path)[:16]}.onnx"
                if not onnx_path.is_file():
                    shutil.copyfile(Path(workdir) / "dense_heads.onnx", onnx_path)
            return engines.BACKENDS[choice.backend](onnx_path=onnx_path, **options)

    def _float_last_conv(self) -> LastConv | None:
        """KeyPointNet's last descriptor conv for a float32 input map (None for other networks)."""
        return None if self._descriptor_conv is None else LastConv.from_conv(self._descriptor_conv)

    def calibration_batches(self, calibration: object) -> CalibrationBatches:
        """INT8 calibration inputs ``(480, 640, C)`` uint8: each photo resized to 640x480 (INTER_AREA; the same
        graph then runs at any size and ``input_scale``). ``calibration``: a folder of photos or a list of uint8
        BGR images."""
        if isinstance(calibration, str | os.PathLike):
            folder = Path(calibration)
            if not folder.is_dir():
                raise EngineError(f"calibration folder {folder} does not exist")
            paths = image_files_in(folder)
            images = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]
            images = [image for image in images if image is not None]
            if not images:
                raise EngineError(
                    f"no readable calibration photos ({', '.join(IMAGE_FILE_SUFFIXES)}) in folder {folder}"
                    + (f" ({len(paths)} file(s) with those suffixes could not be read)" if paths else "")
                )
        else:
            images = [to_bgr(image, "bgr", name=f"calibration[{i}]") for i, image in enumerate(calibration)]
            if not images:
                raise EngineError("no calibration photos: the list of calibration images is empty")
        batches = []
        for image in images:
            resized = cv2.resize(image, CALIBRATION_SIZE, interpolation=cv2.INTER_AREA)  # a multiple of 32
            batches.append(cv2.cvtColor(resized, cv2.COLOR_BGR2GRAY)[:, :, None] if self.grey_input else resized)
        return CalibrationBatches(batches)

    def _init_from_export(self, path, top_k, score_threshold, nms_radius, input_size, input_scale, precision, backend):  # noqa: ANN001, E501
        """A detector on an exported graph (``kp2d-export``): the file's metadata gives stride, channels,
        descriptor size and precision; the descriptor map comes dense from the graph."""
        metadata = engines.read_onnx_metadata(path)
        if metadata.get("descriptor_conv") != "included":
            raise EngineError(f"{path}: exported without the descriptor head's last conv; export with kp2d-export")
        self._set_selection(top_k, score_threshold, nms_radius, input_size, input_scale)
        self.network = None
        self.stride, self.cell = int(metadata["stride"]), int(metadata["cell"])
        self.cross_ratio, self.grey_input = float(metadata["cross_ratio"]), int(metadata["channels"]) == 1
        self.align_corners, self._descriptor_dim = bool(metadata["align_corners"]), int(metadata["descriptor_dim"])
        self._descriptor_conv, self._last_conv = None, None
        file_precision = Precision(metadata["precision"])
        requested = engines.parse_choice(Precision, precision, "precision")
        if requested in (Precision.AUTO, Precision.FP32) or requested is file_precision:
            requested = file_precision if requested is Precision.FP32 or file_precision is Precision.INT8 else requested
        backend_name = engines.parse_choice(BackendName, backend, "backend")
        if backend_name is BackendName.TORCH:
            raise EngineError(f"{path}: an exported graph runs on onnxruntime, openvino or tensorrt, not torch")
        if requested is Precision.AUTO:
            self.engine_choice = engines.resolve_engine(Precision.AUTO, backend_name, self.device)
            if self.engine_choice.backend is BackendName.TORCH:
                self.engine_choice = engines.resolve_engine(file_precision, BackendName.AUTO, self.device, True)
        else:
            if backend_name is BackendName.AUTO:
                backend_name = (
                    BackendName.OPENVINO if engines._engine_installed(BackendName.OPENVINO) else BackendName.ONNXRUNTIME
                )
            self.engine_choice = engines.resolve_engine(requested, backend_name, self.device, int8_ready=True)
        if file_precision is Precision.INT8 and self.engine_choice.precision is not Precision.INT8:
            raise EngineError(f"{path} is an INT8 graph; it runs as precision int8, not {self.engine_choice.precision}")
        self.engine = engines.BACKENDS[self.engine_choice.backend](
            onnx_path=Path(path), device=self.device, precision=self.engine_choice.precision,
            threads=torch.get_num_threads(),
        )  # fmt: skip
        LOG.info("KeypointDetector: %s from %s", self.engine_choice, path)

    @property
    def precision(self) -> Precision:
        return self.engine_choice.precision

    @property
    def backend(self) -> BackendName:
        return self.engine_choice.backend

    # Refuse images whose network input (after scaling and padding) has more pixels than this (None: no limit).
    # Memory grows with these pixels (~300 bytes each for KeyPointNet on the CPU), not with the image's own.
    max_network_pixels: int | None = None

    @property
    def descriptor_dim(self) -> int:
        return self._descriptor_dim

    def network_pixels(self, width: int, height: int) -> int:
        """Pixels the network processes for a ``width x height`` image (after ``input_size``/``input_scale``
        and padding to the stride): what memory and time grow with."""
        network_w, network_h = network_input_size(width, height, self.stride, self.input_size, self.input_scale)
        return network_w * network_h

    # --- public calls ------------------------------------------------------------------------------

    def __call__(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        channel_order: str = "bgr",
        *,
        top_k: int | None = _UNSET,
        score_threshold: float = _UNSET,
        nms_radius: int = _UNSET,
        mask: np.ndarray | None = None,
    ) -> Detections | list[Detections]:
        selection = self._selection(top_k, score_threshold, nms_radius, mask)
        if isinstance(images, np.ndarray):
            return self.detect_batch([images], channel_order, selection)[0]
        if not isinstance(images, Sequence):
            raise ImageFormatError(f"expected an image array or a list of them, got {type(images).__name__}")
        return self.detect_batch(list(images), channel_order, selection)

    def _selection(self, top_k: Any, score_threshold: Any, nms_radius: Any, mask: Any) -> _Selection:
        """The call's overrides over the detector's settings (checked as ``__init__`` checks them)."""
        nms_radius = self.nms_radius if nms_radius is _UNSET else nms_radius
        if nms_radius < 0 or int(nms_radius) != nms_radius:
            raise ValueError(f"nms_radius must be a non-negative integer (cells), got {nms_radius!r}")
        if mask is not None:
            mask = np.asarray(mask)
            if mask.ndim != 2:
                raise ImageFormatError(f"mask: expected an (H, W) array, got shape {mask.shape}")
            mask = mask != 0
        return _Selection(
            self.top_k if top_k is _UNSET else top_k,
            float(self.score_threshold if score_threshold is _UNSET else score_threshold),
            int(nms_radius),
            mask,
        )

    def detect_batch(
        self, images: list[np.ndarray], channel_order: str = "bgr", selection: _Selection | None = None
    ) -> list[Detections]:
        """Detect in several images; images of the same (padded) size run as one network batch."""
        selection = selection or self._selection(_UNSET, _UNSET, _UNSET, None)
        images_bgr = [to_bgr(image, channel_order, name=f"images[{i}]") for i, image in enumerate(images)]
        if self.contrast == "stretch":
            images_bgr = [stretch_contrast(image) for image in images_bgr]
        prepared = [self._prepare(image) for image in images_bgr]
        if selection.mask is not None:
            for index, item in enumerate(prepared):
                if selection.mask.shape != item.input_size[::-1]:
                    raise ImageFormatError(
                        f"mask is {selection.mask.shape[1]} x {selection.mask.shape[0]} pixels but images[{index}] "
                        f"is {item.input_size[0]} x {item.input_size[1]}"
                    )
        results: list[Detections | None] = [None] * len(prepared)
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, item in enumerate(prepared):
            groups.setdefault(item.padded.shape, []).append(index)
        for indices in groups.values():
            group = self._detect_group([prepared[i] for i in indices], selection)
            for index, detections in zip(indices, group, strict=True):
                results[index] = detections
        return results  # type: ignore[return-value]

    # --- steps -------------------------------------------------------------------------------------

    def _check_network_size(self, image_size: tuple[int, int], network_size: tuple[int, int]) -> None:
        """Refuse an image before the network allocates anything for it (ImageFormatError naming the sizes):

        - under one ``stride`` cell high or wide (``network_size``, before padding): nothing to detect, and padding
          multiplies its pixels (a 1 x 1,048,576 frame became 8 x 1,048,576: 2.6 GB of activations for 1 MB);
        - more network pixels (scaled and padded) than ``max_network_pixels``."""
        (width, height), (network_w, network_h) = image_size, network_size
        padded_w, padded_h = network_input_size(network_w, network_h, self.stride)
        if min(network_w, network_h) < self.stride:
            side = "high" if network_h < self.stride else "wide"
            raise ImageFormatError(
                f"image of {width} x {height} pixels is {network_w} x {network_h} for the network, under one "
                f"{self.stride}-pixel cell {side}: nothing to detect (padding would multiply its pixels by "
                f"{padded_w * padded_h / (network_w * network_h):.1f})"
            )
        if self.max_network_pixels is not None and padded_w * padded_h > self.max_network_pixels:
            raise ImageFormatError(
                f"image of {width} x {height} pixels becomes {padded_w * padded_h} pixels for the "
                f"network (scaled and padded to a multiple of {self.stride}), over max_network_pixels="
                f"{self.max_network_pixels}"
            )

    def _prepare(self, image_bgr: np.ndarray) -> _Prepared:
        height, width = image_bgr.shape[:2]
        network_size = self.input_size or (width, height)  # input_size and input_scale are never both set
        if self.input_scale is not None:
            network_size = scaled_size(width, height, self.input_scale)
        self._check_network_size((width, height), network_size)
        resized = image_bgr
        if network_size != (width, height):
            resized = cv2.resize(image_bgr, network_size, interpolation=cv2.INTER_LINEAR)
        h, w = resized.shape[:2]
        pad_h, pad_w = -h % self.stride, -w % self.stride
        padded = resized
        if pad_h or pad_w:
            padded = cv2.copyMakeBorder(resized, 0, pad_h, 0, pad_w, cv2.BORDER_REPLICATE)
        if self.grey_input:
            padded = cv2.cvtColor(padded, cv2.COLOR_BGR2GRAY)[:, :, None]
        return _Prepared(padded, (w, h), (width, height))

    def _run_trunk(self, batch_bgr: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, H, W, C)`` uint8 BGR (or grey, C = 1), H and W multiples of the stride -> float32 score, coord and
        the descriptor source: with ``self._last_conv`` the input map of KeyPointNet's last conv, channels last
        ``(B, h, w, C)`` (float32, or UINT8 from an INT8 engine), else the dense descriptor map ``(B, D, h, w)``.

        The engine returns the heads' raw outputs; the border mask and the pixel coordinates are computed
        here in float32 whatever the engine's precision (bf16 cannot hold pixel positions: 8 mantissa bits)."""
        dense = self.engine.forward(batch_bgr)
        height, width = batch_bgr.shape[1:3]
        with torch.inference_mode():
            score, coord = score_and_coord(
                dense.score.float(), dense.center_shift.float(), self.cell, self.cross_ratio, height, width
            )
        return score, coord, dense.features if self._last_conv is not None else dense.features.float()

    def run_dense(self, batch_bgr: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The inference network's full output for a prepared batch (see ``_run_trunk``): float32 score
        ``(B, 1, Hc, Wc)``, coord ``(B, 2, Hc, Wc)`` and the dense (unnormalised) descriptor map ``(B, D, h, w)``."""
        score, coord, features = self._run_trunk(batch_bgr)
        if self._last_conv is not None:
            with torch.inference_mode():
                features = self._last_conv.dense(features)
        return score, coord, features

    def describe_points(self, features: torch.Tensor, points: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """L2-normalised descriptors ``(N, D)`` at ``points`` ``(N, 2)`` (pixels of the ``height x width`` network
        input) from one image's descriptor source (``_run_trunk``'s third output, batch index taken)."""
        if points.shape[0] == 0:
            return points.new_zeros((0, self.descriptor_dim))
        if self._last_conv is not None:
            return sample_conv3x3_descriptors(features, self._last_conv, points, height, width)
        grid = points.T.reshape(1, 2, 1, -1)
        return sample_descriptors(features[None], grid, height, width, self.align_corners)[0, :, 0].T

    def _detect_group(self, items: list[_Prepared], selection: _Selection) -> list[Detections]:
        batch = np.stack([item.padded for item in items])
        padded_h, padded_w = batch.shape[1:3]
        score, coord, features = self._run_trunk(batch)
        with torch.inference_mode():
            keep = score > selection.score_threshold
            if selection.nms_radius > 0:
                size = 2 * selection.nms_radius + 1
                keep &= score == F.max_pool2d(score, size, stride=1, padding=selection.nms_radius)
            return [
                self._select(score[b, 0], coord[b], keep[b, 0], features[b], item, padded_h, padded_w, selection)
                for b, item in enumerate(items)
            ]

    def _select(
        self,
        score: torch.Tensor,
        coord: torch.Tensor,
        keep: torch.Tensor,
        features: torch.Tensor,
        item: _Prepared,
        padded_h: int,
        padded_w: int,
        selection: _Selection,
    ) -> Detections:
        """score/keep ``(Hc, Wc)``, coord ``(2, Hc, Wc)``, features: one image's descriptor source -> Detections."""
        valid_w, valid_h = item.valid_size
        input_w, input_h = item.input_size
        resized = (valid_w, valid_h) != (input_w, input_h)
        keep = keep & (coord[0] <= valid_w - 1) & (coord[1] <= valid_h - 1)  # drop points in the padding
        scores = score[keep]
        points = coord[:, keep].T  # (N, 2) x, y in network-input pixels
        if selection.mask is not None and points.shape[0]:  # before top_k: up to top_k from the allowed area
            image_points = to_image_pixels(points, (valid_w, valid_h), (input_w, input_h)) if resized else points
            x = image_points[:, 0].round().clamp(0, input_w - 1).long().cpu().numpy()
            y = image_points[:, 1].round().clamp(0, input_h - 1).long().cpu().numpy()
            allowed = torch.from_numpy(selection.mask[y, x]).to(points.device)
            scores, points = scores[allowed], points[allowed]
        top_k = selection.top_k
        if top_k is not None and 0 < top_k < scores.shape[0]:
            scores, order = torch.topk(scores, top_k, sorted=True)
        else:
            scores, order = torch.sort(scores, descending=True, stable=True)
        points = points[order]
        descriptors = self.describe_points(features, points, padded_h, padded_w)
        if resized:
            points = to_image_pixels(points, (valid_w, valid_h), (input_w, input_h))
        return Detections(points.contiguous(), scores.contiguous(), descriptors.contiguous(), (input_w, input_h))

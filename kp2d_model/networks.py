"""KeyPointNet, KeypointResnet and IO-Net: the three networks of KP2D (Tang et al., ICLR 2020).

State-dict keys and shapes match the original TRI-ML/KP2D code, so released checkpoints load with
``strict=True``. Conventions shared by all networks:

* input: a normalised image tensor ``(B, C, H, W)`` (see :func:`kp2d_model.image.normalize_image`);
* ``score``: ``(B, 1, Hc, Wc)`` in [0, 1], one keypoint per ``cell x cell`` cell, border cells zeroed;
* ``coord``: ``(B, 2, Hc, Wc)`` keypoint pixel coordinates of the input, channel 0 = x (column),
  channel 1 = y (row), clamped to the image;
* ``desc``: in train mode the dense descriptor map, in eval mode descriptors sampled at ``coord``
  and L2-normalised, ``(B, D, Hc, Wc)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["KeypointNet", "KeypointResnet", "InlierNet", "cell_grid", "border_mask", "score_and_coord"]


def cell_grid(batch: int, height: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Integer cell coordinates as a ``(B, 2, H, W)`` tensor: channel 0 = column, channel 1 = row."""
    ys = torch.arange(height, dtype=dtype, device=device)
    xs = torch.arange(width, dtype=dtype, device=device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y]).unsqueeze(0).expand(batch, -1, -1, -1)


def border_mask(height: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(1, 1, H, W)`` mask with 0 on the first/last row and column of the cell grid, 1 inside."""
    mask = torch.zeros(1, 1, height, width, dtype=dtype, device=device)
    mask[:, :, 1:-1, 1:-1] = 1
    return mask


def cell_keypoints(center_shift: torch.Tensor, cell: int, cross_ratio: float, height: int, width: int) -> torch.Tensor:
    """Turn the location head's ``tanh`` output ``(B, 2, Hc, Wc)`` into clamped pixel coordinates.

    x = col * cell + (cell - 1) / 2 + shift_x * cross_ratio * (cell - 1) / 2, likewise y with row.
    """
    batch, _, cells_h, cells_w = center_shift.shape
    step = (cell - 1) / 2.0
    base = cell_grid(batch, cells_h, cells_w, center_shift.dtype, center_shift.device) * cell + step
    coord = base + center_shift * (cross_ratio * step)
    x = coord[:, 0].clamp(0, width - 1)
    y = coord[:, 1].clamp(0, height - 1)
    return torch.stack([x, y], dim=1)


def score_and_coord(
    score: torch.Tensor, center_shift: torch.Tensor, cell: int, cross_ratio: float, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The heads' raw score ``(B, 1, Hc, Wc)`` and ``tanh`` shift ``(B, 2, Hc, Wc)`` of an ``height x width``
    input -> (score with the border cells zeroed, pixel coordinates ``(B, 2, Hc, Wc)``; :func:`cell_keypoints`)."""
    cells_h, cells_w = score.shape[2:]
    score = score * border_mask(cells_h, cells_w, score.dtype, score.device)
    return score, cell_keypoints(center_shift, cell, cross_ratio, height, width)


def sample_descriptors(
    dense: torch.Tensor, coord: torch.Tensor, height: int, width: int, align_corners: bool
) -> torch.Tensor:
    """Bilinearly sample a dense descriptor map at pixel coordinates and L2-normalise.

    dense: ``(B, D, h, w)``; coord: ``(B, 2, Hc, Wc)`` pixels of an ``height x width`` image.
    Returns ``(B, D, Hc, Wc)``. The pixel -> [-1, 1] mapping is the original's (u / ((W-1)/2) - 1).
    """
    grid = torch.stack([coord[:, 0] / ((width - 1) / 2.0) - 1.0, coord[:, 1] / ((height - 1) / 2.0) - 1.0], dim=-1)
    desc = F.grid_sample(dense, grid, align_corners=align_corners)
    return desc / torch.linalg.vector_norm(desc, dim=1, keepdim=True)


def _conv_bn(in_channels: int, out_channels: int, momentum: float = 0.1) -> nn.Sequential:
    """3x3 convolution without bias followed by BatchNorm (keys ``0.weight``, ``1.*``)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(out_channels, momentum=momentum),
    )


class KeypointNet(nn.Module):
    """KeyPointNet: a VGG-style trunk with score, location and descriptor heads.

    Args:
        use_color: 3-channel input (else 1-channel grey).
        do_upsample: descriptors at H/4 (sub-pixel conv + skip connection) instead of H/8.
        with_drop: Dropout2d(0.2) after each block (active only in train mode).
        do_cross: keypoints may move up to 2 cells (cross_ratio 2) instead of 1.

    ``H`` and ``W`` of the input must be multiples of 8.
    """

    cell = 8

    def __init__(self, use_color: bool = True, do_upsample: bool = True, with_drop: bool = True, do_cross: bool = True):
        super().__init__()
        self.use_color = use_color
        self.do_upsample = do_upsample
        self.with_drop = with_drop
        self.do_cross = do_cross
        self.cross_ratio = 2.0 if do_cross else 1.0

        c0 = 3 if use_color else 1
        c1, c2, c3, c4, c5, d1 = 32, 64, 128, 256, 256, 512
        self.conv1a, self.conv1b = _conv_bn(c0, c1), _conv_bn(c1, c1)
        self.conv2a, self.conv2b = _conv_bn(c1, c2), _conv_bn(c2, c2)
        self.conv3a, self.conv3b = _conv_bn(c2, c3), _conv_bn(c3, c3)
        self.conv4a, self.conv4b = _conv_bn(c3, c4), _conv_bn(c4, c4)
        # Score head.
        self.convDa = _conv_bn(c4, c5)
        self.convDb = nn.Conv2d(c5, 1, kernel_size=3, stride=1, padding=1)
        # Location head.
        self.convPa = _conv_bn(c4, c5)
        self.convPb = nn.Conv2d(c5, 2, kernel_size=3, stride=1, padding=1)
        # Descriptor head (convFb exists even without upsampling, as in the original).
        self.convFa = _conv_bn(c4, c5)
        self.convFb = _conv_bn(c5, d1)
        self.convFaa = _conv_bn(c5, c5)
        self.convFbb = nn.Conv2d(c5, 256, kernel_size=3, stride=1, padding=1)

        self.relu = nn.LeakyReLU(negative_slope=0.01, inplace=True)
        self.dropout = nn.Dropout2d(0.2) if with_drop else nn.Identity()
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.upsample = nn.PixelShuffle(upscale_factor=2)

    @property
    def descriptor_dim(self) -> int:
        return 256

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: ``(B, C, H, W)`` normalised image -> the heads' raw outputs: score ``(B, 1, Hc, Wc)`` (sigmoid,
        border cells not yet zeroed), center shift ``(B, 2, Hc, Wc)`` (tanh, in [-1, 1]) and the dense
        descriptor map ``(B, 256, H/4, W/4)`` (unnormalised). No pixel-coordinate arithmetic happens here."""
        act, drop = self.relu, self.dropout

        x = drop(act(self.conv1b(act(self.conv1a(x)))))
        x = self.pool(x)
        x = drop(act(self.conv2b(act(self.conv2a(x)))))
        x = self.pool(x)
        skip = drop(act(self.conv3b(act(self.conv3a(x)))))
        x = self.pool(skip)
        x = drop(act(self.conv4b(act(self.conv4a(x)))))

        score = self.convDb(drop(act(self.convDa(x)))).sigmoid()
        center_shift = self.convPb(drop(act(self.convPa(x)))).tanh()
        feat = drop(act(self.convFa(x)))
        if self.do_upsample:
            feat = torch.cat([self.upsample(self.convFb(feat)), skip], dim=1)
        return score, center_shift, self.convFbb(act(self.convFaa(feat)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: ``(B, C, H, W)`` normalised image -> ``(score, coord, desc)`` (see module docstring)."""
        _, _, height, width = x.shape
        score, center_shift, feat = self.heads(x)
        score, coord = score_and_coord(score, center_shift, self.cell, self.cross_ratio, height, width)
        if self.training:
            return score, coord, feat
        return score, coord, sample_descriptors(feat, coord, height, width, align_corners=True)


# --- KeypointResnet ------------------------------------------------------------------------------


class _BasicBlock(nn.Module):
    """ResNet-18 basic block with the torchvision parameter names (conv1, bn1, conv2, bn2, downsample)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class _ResNet18(nn.Module):
    """torchvision's resnet18 layout (same state-dict keys, incl. the unused ``fc``), randomly initialised.

    Written out so that inference needs no torchvision and construction downloads nothing.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = nn.Sequential(_BasicBlock(64, 64, 1), _BasicBlock(64, 64, 1))
        self.layer2 = nn.Sequential(_BasicBlock(64, 128, 2), _BasicBlock(128, 128, 1))
        self.layer3 = nn.Sequential(_BasicBlock(128, 256, 2), _BasicBlock(256, 256, 1))
        self.layer4 = nn.Sequential(_BasicBlock(256, 512, 2), _BasicBlock(512, 512, 1))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, 1000)


class _ConvBnAct(nn.Module):
    """conv3x3 (no bias) + BN + LeakyReLU, stored under ``conv.{0,1}`` as the original's conv_bn_elu."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _resnet_head(channels: int, out_channels: int) -> nn.Sequential:
    """conv+BN+LeakyReLU+ReflectionPad+conv (keys ``0``, ``1``, ``4``)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
        nn.BatchNorm2d(channels),
        nn.LeakyReLU(inplace=True),
        nn.ReflectionPad2d(1),
        nn.Conv2d(channels, out_channels, 3),
    )


class _KeypointEncoder(nn.Module):
    def __init__(self, with_drop: bool):
        super().__init__()
        self.rn = _ResNet18()
        self.dropout = nn.Dropout2d(0.2) if with_drop else nn.Identity()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        rn, drop = self.rn, self.dropout
        x0 = rn.relu(rn.bn1(rn.conv1(x)))
        l1 = drop(rn.layer1(rn.maxpool(x0)))
        l2 = drop(rn.layer2(l1))
        l3 = drop(rn.layer3(l2))
        l4 = drop(rn.layer4(l3))
        return [x0, l1, l2, l3, l4]


class _KeypointDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        enc = [64, 64, 128, 256, 512]
        dec = [32, 64, 128, 256, 256]
        self.upconv4_0 = _ConvBnAct(enc[4], dec[4])
        self.upconv4_1 = _ConvBnAct(dec[4] + enc[3], dec[4])
        self.upconv3_0 = _ConvBnAct(dec[4], dec[3])
        self.upconv3_1 = _ConvBnAct(dec[3] + enc[2], dec[3])
        self.upconv2_0 = _ConvBnAct(dec[3], dec[2])
        self.upconv2_1 = _ConvBnAct(dec[2] + enc[1], dec[2])
        self.upconv1_0 = _ConvBnAct(dec[2], dec[1])
        self.upconv1_1 = _ConvBnAct(dec[1] + enc[0], dec[1])
        self.scoreconv = _resnet_head(dec[3], 1)
        self.locconv = _resnet_head(dec[3], 2)
        self.featconv = _resnet_head(dec[1], dec[1])

    @staticmethod
    def _up_cat(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.interpolate(x, scale_factor=2, mode="nearest"), skip], dim=1)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.upconv4_1(self._up_cat(self.upconv4_0(features[4]), features[3]))
        x = self.upconv3_1(self._up_cat(self.upconv3_0(x), features[2]))
        location = torch.tanh(self.locconv(x))
        score = torch.sigmoid(self.scoreconv(x))
        x = self.upconv2_1(self._up_cat(self.upconv2_0(x), features[1]))
        x = self.upconv1_1(self._up_cat(self.upconv1_0(x), features[0]))
        return score, location, self.featconv(x)


class KeypointResnet(nn.Module):
    """KP2D's ResNet-18 variant (config ``v2_resnet``): 64-dim descriptors at H/2, input divisible by 32.

    The original builds the encoder with ImageNet weights downloaded at construction; this one starts
    from random weights (load a checkpoint, or pass ImageNet weights yourself before training).
    """

    cell = 8
    cross_ratio = 2.0

    def __init__(self, with_drop: bool = True):
        super().__init__()
        self.encoderK = _KeypointEncoder(with_drop)
        self.decoderK = _KeypointDecoder()

    @property
    def descriptor_dim(self) -> int:
        return 64

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The heads' raw outputs (score without the border mask, tanh center shift, dense descriptor map);
        see :meth:`KeypointNet.heads`."""
        return self.decoderK(self.encoderK(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _, _, height, width = x.shape
        score, center_shift, feat = self.heads(x)
        score, coord = score_and_coord(score, center_shift, self.cell, self.cross_ratio, height, width)
        if self.training:
            return score, coord, feat
        return score, coord, sample_descriptors(feat, coord, height, width, align_corners=False)


# --- IO-Net ------------------------------------------------------------------------------------


class InlierNet(nn.Module):
    """IO-Net: a 1-D residual CNN that classifies point correspondences as inliers or outliers.

    Input ``(B, 5, N, 1)``: source x, y, target x, y (all in [-1, 1]) and descriptor distance.
    Output ``(B, 1, N, 1)``: an unbounded inlier logit-like score (trained with MSE towards +-1).
    Parameter names (``p_in``, ``{i}s0..{i}s3``, ``p_out``) are the original's.
    """

    def __init__(self, blocks: int = 4):
        super().__init__()
        self.blocks = blocks
        self.p_in = nn.Sequential(nn.Conv2d(5, 128, 1, 1, 0, bias=False), nn.BatchNorm2d(128, momentum=0.9))
        for i in range(blocks):
            self.add_module(f"{i}s0", nn.Conv2d(128, 128, 1, 1, 0))
            self.add_module(f"{i}s1", nn.BatchNorm2d(128, momentum=0.1))
            self.add_module(f"{i}s2", nn.Conv2d(128, 128, 1, 1, 0))
            self.add_module(f"{i}s3", nn.BatchNorm2d(128, momentum=0.1))
        self.p_out = nn.Conv2d(128, 1, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.p_in(x))
        for i in range(self.blocks):
            conv_a, bn_a, conv_b, bn_b = (getattr(self, f"{i}s{j}") for j in range(4))
            residual = x
            x = F.relu(bn_a(F.instance_norm(conv_a(x))))
            x = F.relu(bn_b(F.instance_norm(conv_b(x))))
            x = x + residual
        return self.p_out(x)

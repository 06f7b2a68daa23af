"""The KP2D training loss (KeypointNet + IO-Net), term by term as the original KP2D code computes it.

Source = ``image_aug``, target = ``image``; ``homography`` maps normalised [-1, 1] coordinates of the
source to the target. Everything is at cell resolution (one keypoint per 8x8 cell, ``N = Hc * Wc`` cells
per image) and vectorised over the batch; the terms (all already multiplied by their weights) are:

* ``location``: mean distance (pixels) from each warped source keypoint to its nearest target keypoint,
  over cells whose distance is < 4 px and that are valid (interior cell, warped point strictly inside).
* ``descriptor``: triplet loss (``margin``) with the hardest negative farther than ``relax_field`` px in x
  or y, per image with >= 20 valid cells, averaged over the batch, times 2 (the original's x2).
* ``score``: mean over the location-valid cells of (associated target score + source score) x
  (distance - its mean), plus 2 x MSE between source scores and target scores resampled at the warped points.
* ``io``: IO-Net on ``io_top_k`` cells per image (the original's quirk: the *lowest* scores), trained with
  MSE towards +1 / -1 (associated target within 4 px of the warped source point or not), counted only when
  the batch has more than 10 inliers.
* ``recall``: fraction of valid source cells whose nearest target descriptor is the correct one (no gradient).

Deviations available as options (never on by default): ``io_cells="highest"``; the released models'
``margin=1.0, relax_field=8``; ``single_pass=True`` runs both images as one batch of 2B (faster, but
BatchNorm batch statistics then differ from the original's two passes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kp2d_model.image import normalize_image

__all__ = ["kp2d_loss", "LOSS_TERMS"]

LOSS_TERMS = ("location", "descriptor", "score", "io", "total", "recall")

LOCATION_THRESHOLD_PX = 4.0  # association distance below which a cell counts for location / score / IO labels
MIN_DESCRIPTOR_CELLS = 20  # images with fewer valid cells are skipped by the descriptor loss
MIN_IO_INLIERS = 10  # the IO term counts only with more inliers than this in the batch
SQRT_EPS = 1e-12  # floor under 2 - 2 cos before sqrt, so the gradient stays finite at distance 0


def _pixels_to_normalized(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel (x, y) in the last dimension -> [-1, 1] (``align_corners=True``), as the original: u / ((W-1)/2) - 1."""
    scale = points.new_tensor([(width - 1) / 2.0, (height - 1) / 2.0])
    return points / scale - 1.0


def _normalized_to_pixels(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[-1, 1] (x, y) in the last dimension -> pixels: (u + 1) * ((W-1)/2)."""
    scale = points.new_tensor([(width - 1) / 2.0, (height - 1) / 2.0])
    return (points + 1.0) * scale


def _warp_normalized(points: torch.Tensor, homography: torch.Tensor) -> torch.Tensor:
    """points ``(B, N, 2)`` normalised, homography ``(B, 3, 3)`` -> warped ``(B, N, 2)``."""
    projected = torch.baddbmm(homography[:, None, :, 2], points, homography[:, :, :2].transpose(1, 2))
    return projected[..., :2] / projected[..., 2:]


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is true (0 where the mask is empty); gradient-safe for masked-out values."""
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp(min=1)


def _sample_at(dense: torch.Tensor, points_normalized: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``dense`` ``(B, C, h, w)`` at ``(B, N, 2)`` normalised points -> ``(B, N, C)``."""
    sampled = F.grid_sample(dense, points_normalized.unsqueeze(1), mode="bilinear", align_corners=True)
    return sampled.squeeze(2).transpose(1, 2)


def _descriptor_distance(cosine: torch.Tensor) -> torch.Tensor:
    """Distance between unit vectors from their cosine: sqrt(2 - 2 cos), floored before the sqrt."""
    return (2.0 - 2.0 * cosine.clamp(-1.0, 1.0)).clamp(min=SQRT_EPS).sqrt()


def _descriptor_loss_and_recall(
    source_dense: torch.Tensor,
    target_dense: torch.Tensor,
    source_points: torch.Tensor,
    warped_points: torch.Tensor,
    warped_pixels: torch.Tensor,
    valid: torch.Tensor,
    margin: float,
    relax_field: float,
    with_loss: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hardest-negative triplet loss and nearest-neighbour recall over the valid cells of each image.

    source_points, warped_points: ``(B, N, 2)`` normalised (no gradient through them); warped_pixels ``(B, N, 2)``;
    valid ``(B, N)``. Returns (loss averaged over the batch, recall averaged over the batch), both scalars.
    """
    batch = valid.shape[0]
    anchors = F.normalize(_sample_at(source_dense, source_points), dim=2)  # (B, N, C)
    positives = F.normalize(_sample_at(target_dense, warped_points), dim=2)  # (B, N, C)
    counts = valid.sum(dim=1)
    used = counts >= MIN_DESCRIPTOR_CELLS  # (B,)

    with torch.no_grad():
        # (B, anchor, candidate) cosines; only valid cells are candidates. Max cosine = min descriptor distance.
        similarity = torch.bmm(anchors, positives.transpose(1, 2))
        lowest = torch.finfo(similarity.dtype).min
        similarity.masked_fill_(~valid[:, None, :], lowest)
        nearest = similarity.argmax(dim=2)  # (B, N)
        nearest_pixels = warped_pixels.gather(1, nearest[..., None].expand(-1, -1, 2))
        correct = (nearest_pixels == warped_pixels).all(dim=2) & valid
        recall = (correct.sum(dim=1) / counts.clamp(min=1) * used).sum() / batch
        if not with_loss:
            return similarity.new_zeros(()), recall

        # Hardest negative: the most similar candidate whose location is more than relax_field px away in x or y.
        x, y = warped_pixels[..., 0], warped_pixels[..., 1]
        near = (x[:, None, :] - x[:, :, None]).abs_() <= relax_field
        near &= (y[:, None, :] - y[:, :, None]).abs_() <= relax_field
        similarity.masked_fill_(near, lowest)
        hardest = similarity.argmax(dim=2)
        # The original falls back to the nearest candidate when every candidate is within the relax field.
        negative_index = torch.where(similarity.amax(dim=2) > lowest, hardest, nearest)

    negatives = positives.gather(1, negative_index[..., None].expand_as(positives))
    channels = anchors.shape[2]
    per_cell = F.triplet_margin_loss(
        anchors.reshape(-1, channels),
        positives.reshape(-1, channels),
        negatives.reshape(-1, channels),
        margin=margin,
        reduction="none",
    ).reshape(batch, -1)
    per_image = torch.where(valid, per_cell, torch.zeros_like(per_cell)).sum(dim=1) / counts.clamp(min=1)
    loss = torch.where(used, per_image, torch.zeros_like(per_image)).sum() / batch
    return loss, recall


def _select_cells(scores: torch.Tensor, count: int, io_cells: str) -> torch.Tensor:
    """Indices ``(B, count)`` of the ``count`` lowest (or highest) scores of ``(B, N)``, in raster order."""
    indices = scores.topk(count, dim=1, largest=io_cells == "highest").indices
    return indices.sort(dim=1).values


def _gather_points(points: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """points ``(B, N, 2)``, indices ``(B, K)`` -> ``(B, K, 2)``."""
    return points.gather(1, indices[..., None].expand(-1, -1, points.shape[2]))


def _io_loss(
    io_net: nn.Module,
    source_score: torch.Tensor,
    target_score: torch.Tensor,
    source_dense: torch.Tensor,
    target_dense: torch.Tensor,
    source_points: torch.Tensor,
    target_points: torch.Tensor,
    warped_points: torch.Tensor,
    height: int,
    width: int,
    io_cells: str,
    io_top_k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """IO-Net's MSE towards +-1 labels on ``io_top_k`` cells per image (0 unless > 10 inliers in the batch).

    Scores ``(B, N)``; points ``(B, N, 2)`` normalised. Returns (loss, number of inliers in the batch).
    """
    batch, cells = source_score.shape
    count = min(io_top_k, cells)
    source_cells = _select_cells(source_score.detach(), count, io_cells)
    target_cells = _select_cells(target_score.detach(), count, io_cells)
    source_selected = _gather_points(source_points, source_cells)  # (B, K, 2)
    target_selected = _gather_points(target_points, target_cells)
    warped_selected = _gather_points(warped_points, source_cells)

    source_desc = F.normalize(_sample_at(source_dense, source_selected), dim=2)  # (B, K, C)
    target_desc = F.normalize(_sample_at(target_dense, target_selected), dim=2)
    distance = _descriptor_distance(torch.bmm(source_desc, target_desc.transpose(1, 2)))  # (B, K, K)
    nearest_distance, nearest = distance.min(dim=2)
    target_associated = _gather_points(target_selected, nearest)

    point_pairs = torch.cat([source_selected, target_associated, nearest_distance[..., None]], dim=2)  # (B, K, 5)
    prediction = io_net(point_pairs.transpose(1, 2).unsqueeze(3)).reshape(batch, count)

    with torch.no_grad():
        error = _normalized_to_pixels(target_associated, height, width) - _normalized_to_pixels(
            warped_selected, height, width
        )
        inlier = torch.linalg.vector_norm(error, dim=2) < LOCATION_THRESHOLD_PX
        labels = inlier.to(prediction.dtype) * 2.0 - 1.0
        inliers = inlier.sum()
    loss = F.mse_loss(prediction, labels)
    return torch.where(inliers > MIN_IO_INLIERS, loss, torch.zeros_like(loss)), inliers


def _check_batch(batch: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    for key in ("image", "image_aug", "homography"):
        if key not in batch:
            raise KeyError(f"kp2d_loss: batch has no {key!r} (needs 'image', 'image_aug', 'homography')")
    image, image_aug, homography = batch["image"], batch["image_aug"], batch["homography"]
    if image.ndim != 4 or image.shape != image_aug.shape:
        raise ValueError(
            "kp2d_loss: 'image' and 'image_aug' must both be (B, C, H, W) of the same shape, got "
            f"{tuple(image.shape)} and {tuple(image_aug.shape)}"
        )
    size, _, height, width = image.shape
    if homography.shape != (size, 3, 3):
        raise ValueError(f"kp2d_loss: 'homography' must be ({size}, 3, 3), got {tuple(homography.shape)}")
    return size, height, width


def kp2d_loss(
    keypoint_net: nn.Module,
    io_net: nn.Module | None,
    batch: dict[str, torch.Tensor],
    *,
    keypoint_loss_weight: float = 1.0,
    descriptor_loss_weight: float = 1.0,
    score_loss_weight: float = 1.0,
    descriptor_loss: bool = True,
    with_io: bool = True,
    margin: float = 0.2,
    relax_field: float = 4.0,
    io_cells: str = "lowest",
    io_top_k: int = 300,
    single_pass: bool = False,
) -> dict[str, torch.Tensor]:
    """The KP2D loss of one batch (module docstring), faithful to the original by default.

    keypoint_net: a KeypointNet / KeypointResnet in train mode (it must return the dense descriptor map).
    io_net: an InlierNet, required when ``with_io``. batch: ``image``, ``image_aug`` ``(B, 3, H, W)`` RGB in [0, 1]
    (normalised here) and ``homography`` ``(B, 3, 3)`` mapping normalised coordinates of ``image_aug`` to ``image``.
    Returns 0-d tensors ``location``, ``descriptor`` (x2 included), ``score``, ``io`` (each weighted, detached for
    logging), ``total`` (their sum, the only one with gradient) and ``recall`` (no gradient).
    """
    if io_cells not in ("lowest", "highest"):
        raise ValueError(f"kp2d_loss: io_cells must be 'lowest' or 'highest', got {io_cells!r}")
    if with_io and io_net is None:
        raise ValueError("kp2d_loss: with_io=True needs an io_net")
    if not keypoint_net.training:
        raise ValueError("kp2d_loss: keypoint_net must be in train mode (it then returns the dense descriptor map)")
    size, height, width = _check_batch(batch)

    target_input = normalize_image(batch["image"])
    source_input = normalize_image(batch["image_aug"])
    if single_pass:
        score, coord, dense = keypoint_net(torch.cat([source_input, target_input], dim=0))
        (source_score, target_score), (source_coord, target_coord) = score.split(size), coord.split(size)
        source_dense, target_dense = dense.split(size)
    else:
        source_score, source_coord, source_dense = keypoint_net(source_input)
        target_score, target_coord, target_dense = keypoint_net(target_input)
    # The loss itself runs in float32, also when the networks ran under autocast (half-precision coordinates
    # would be off by a fraction of a pixel at 320 px).
    with torch.autocast(device_type=source_coord.device.type, enabled=False):
        return _loss_terms(
            (source_score.float(), source_coord.float(), source_dense.float()),
            (target_score.float(), target_coord.float(), target_dense.float()),
            batch["homography"].float(),
            io_net,
            keypoint_loss_weight=keypoint_loss_weight,
            descriptor_loss_weight=descriptor_loss_weight,
            score_loss_weight=score_loss_weight,
            descriptor_loss=descriptor_loss,
            with_io=with_io,
            margin=margin,
            relax_field=relax_field,
            io_cells=io_cells,
            io_top_k=io_top_k,
            image_size=(height, width),
        )


def _loss_terms(
    source: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    target: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    homography: torch.Tensor,
    io_net: nn.Module | None,
    *,
    keypoint_loss_weight: float,
    descriptor_loss_weight: float,
    score_loss_weight: float,
    descriptor_loss: bool,
    with_io: bool,
    margin: float,
    relax_field: float,
    io_cells: str,
    io_top_k: int,
    image_size: tuple[int, int],
) -> dict[str, torch.Tensor]:
    """The terms of :func:`kp2d_loss` from the network outputs ``(score, coord, dense)`` of source and target."""
    source_score, source_coord, source_dense = source
    target_score, target_coord, target_dense = target
    height, width = image_size
    _, _, cells_h, cells_w = target_score.shape

    # Keypoints as (B, N, 2): pixels and normalised; the source ones warped into the target.
    source_pixels = source_coord.flatten(2).transpose(1, 2)
    target_pixels = target_coord.flatten(2).transpose(1, 2)
    source_points = _pixels_to_normalized(source_pixels, height, width)
    target_points = _pixels_to_normalized(target_pixels, height, width)
    warped_points = _warp_normalized(source_points, homography)
    warped_pixels = _normalized_to_pixels(warped_points, height, width)

    # Valid cells: interior of the cell grid and warped strictly inside the target image.
    interior = torch.zeros(cells_h, cells_w, dtype=torch.bool, device=source_coord.device)
    interior[1:-1, 1:-1] = True
    inside = (warped_points > -1.0).all(dim=2) & (warped_points < 1.0).all(dim=2)
    valid = interior.flatten()[None, :] & inside  # (B, N)

    # Association: nearest target keypoint of each warped source keypoint (the min is found without gradient,
    # the distance recomputed with it, which gives the original's value and gradient).
    with torch.no_grad():
        nearest = torch.cdist(warped_pixels, target_pixels, compute_mode="donot_use_mm_for_euclid_dist").argmin(dim=2)
    associated_pixels = _gather_points(target_pixels, nearest)
    distance = torch.linalg.vector_norm(warped_pixels - associated_pixels, dim=2)  # (B, N)
    close = valid & (distance < LOCATION_THRESHOLD_PX)

    location = keypoint_loss_weight * _masked_mean(distance, close)

    source_score_flat = source_score.flatten(1)
    target_score_flat = target_score.flatten(1)
    descriptor, recall = _descriptor_loss_and_recall(
        source_dense,
        target_dense,
        source_points.detach(),
        warped_points.detach(),
        warped_pixels.detach(),
        valid,
        margin,
        relax_field,
        with_loss=descriptor_loss,
    )
    descriptor = descriptor_loss_weight * descriptor * 2.0

    target_score_associated = target_score_flat.gather(1, nearest)
    mean_distance = _masked_mean(distance, close)
    ranking = _masked_mean((target_score_associated + source_score_flat) * (distance - mean_distance), close)
    target_score_resampled = _sample_at(target_score, warped_points.detach()).squeeze(2)
    consistency = _masked_mean((target_score_resampled - source_score_flat) ** 2, valid)
    score = score_loss_weight * (ranking + 2.0 * consistency)

    if with_io:
        io, _ = _io_loss(
            io_net,
            source_score_flat,
            target_score_flat,
            source_dense,
            target_dense,
            source_points,
            target_points,
            warped_points,
            height,
            width,
            io_cells,
            io_top_k,
        )
        io = keypoint_loss_weight * io
    else:
        io = location.new_zeros(())

    total = location + descriptor + score + io
    terms = {"location": location, "descriptor": descriptor, "score": score, "io": io}
    return {**{name: value.detach() for name, value in terms.items()}, "total": total, "recall": recall}

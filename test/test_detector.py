"""KeypointDetector: coordinates in input pixels, channel orders, filtering, batching and input checks."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
import skimage.data
import torch

import kp2d_model.detector as detector_module
from kp2d_model.checkpoint import CheckpointError, build_keypoint_net, load_keypoint_net
from kp2d_model.detector import Detections, KeypointDetector, LastConv, sample_conv3x3_descriptors
from kp2d_model.engines import FeatureQuantization
from kp2d_model.image import ImageFormatError, image_to_tensor
from kp2d_model.networks import sample_descriptors

ODD_HEIGHT, ODD_WIDTH = 251, 333


@pytest.fixture(scope="module")
def checkpoint_path(reference_dir):
    return reference_dir / "v4_reference.ckpt"


@pytest.fixture(scope="module")
def raw_net(checkpoint_path):
    return load_keypoint_net(checkpoint_path)


@pytest.fixture(scope="module")
def detector(checkpoint_path):
    return KeypointDetector(checkpoint_path, device="cpu", top_k=None)


@pytest.fixture(scope="module")
def photo_bgr():
    """A real photo (skimage's astronaut), BGR, cropped to an odd size (not a multiple of 8)."""
    rgb = skimage.data.astronaut()[100 : 100 + ODD_HEIGHT, 90 : 90 + ODD_WIDTH]
    return np.ascontiguousarray(rgb[:, :, ::-1])


def raw_detections(net, image_bgr: np.ndarray, valid_w: int, valid_h: int):
    """The unfused eval-mode network on an already padded/resized BGR image: (xy (N,2), score (N,), desc (N,D))."""
    with torch.inference_mode():
        score, coord, desc = net(image_to_tensor(image_bgr))
    xy = coord[0].reshape(2, -1).T
    flat_score = score[0, 0].reshape(-1)
    flat_desc = desc[0].reshape(desc.shape[1], -1).T
    keep = (flat_score > 0) & (xy[:, 0] <= valid_w - 1) & (xy[:, 1] <= valid_h - 1)
    return xy[keep], flat_score[keep], flat_desc[keep]


def assert_same_detections(found: Detections, xy: torch.Tensor, score: torch.Tensor, desc: torch.Tensor):
    """Every detection equals one raw cell (nearest coordinates), and the counts agree."""
    assert len(found) == score.shape[0] > 100
    distance = torch.cdist(found.keypoints.double(), xy.double())
    nearest = distance.argmin(dim=1)
    assert float(distance.min(dim=1).values.max()) < 1e-3
    assert len(set(nearest.tolist())) == len(found)
    assert torch.allclose(found.scores, score[nearest], atol=1e-4)
    assert torch.allclose(found.descriptors, desc[nearest], atol=1e-4)


def test_odd_size_image_is_padded_and_coordinates_are_input_pixels(detector, raw_net, photo_bgr):
    found = detector(photo_bgr)
    assert found.image_size == (ODD_WIDTH, ODD_HEIGHT)
    padded = cv2.copyMakeBorder(photo_bgr, 0, 256 - ODD_HEIGHT, 0, 336 - ODD_WIDTH, cv2.BORDER_REPLICATE)
    assert_same_detections(found, *raw_detections(raw_net, padded, ODD_WIDTH, ODD_HEIGHT))
    assert float(found.keypoints[:, 0].max()) <= ODD_WIDTH - 1 and float(found.keypoints[:, 1].max()) <= ODD_HEIGHT - 1


def test_resized_input_maps_coordinates_back_to_input_pixels(checkpoint_path, raw_net, photo_bgr):
    detector = KeypointDetector(checkpoint_path, device="cpu", top_k=None, input_size=(320, 240))
    found = detector(photo_bgr)
    assert found.image_size == (ODD_WIDTH, ODD_HEIGHT)
    resized = cv2.resize(photo_bgr, (320, 240), interpolation=cv2.INTER_LINEAR)
    xy, score, desc = raw_detections(raw_net, resized, 320, 240)
    scale = torch.tensor([ODD_WIDTH / 320, ODD_HEIGHT / 240])
    xy_input = ((xy + 0.5) * scale - 0.5).clamp_min(0)
    xy_input = torch.minimum(xy_input, torch.tensor([ODD_WIDTH - 1.0, ODD_HEIGHT - 1.0]))
    assert_same_detections(found, xy_input, score, desc)


def test_input_scale_runs_the_network_on_the_scaled_image_and_reports_input_pixels(checkpoint_path, photo_bgr):
    scaled = KeypointDetector(checkpoint_path, device="cpu", top_k=None, input_scale=2.0)
    sized = KeypointDetector(checkpoint_path, device="cpu", top_k=None, input_size=(2 * ODD_WIDTH, 2 * ODD_HEIGHT))
    found, expected = scaled(photo_bgr), sized(photo_bgr)
    assert found.image_size == (ODD_WIDTH, ODD_HEIGHT)
    assert torch.equal(found.keypoints, expected.keypoints) and torch.equal(found.descriptors, expected.descriptors)
    assert len(found) > 2 * len(KeypointDetector(checkpoint_path, device="cpu", top_k=None)(photo_bgr))
    assert float(found.keypoints[:, 0].max()) <= ODD_WIDTH - 1 and float(found.keypoints[:, 1].max()) <= ODD_HEIGHT - 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_scale": 0.0}, "input_scale must be a number in (0, 8]"),
        ({"input_scale": float("nan")}, "input_scale must be a number in (0, 8]"),
        ({"input_scale": "2"}, "input_scale must be a number in (0, 8]"),
        ({"input_scale": 2.0, "input_size": (320, 240)}, "input_size or input_scale, not both"),
    ],
)
def test_bad_input_scale_is_refused_with_the_reason(checkpoint_path, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        KeypointDetector(checkpoint_path, device="cpu", **kwargs)


def test_rgb_with_rgb_channel_order_equals_the_bgr_image(detector, photo_bgr):
    from_bgr = detector(photo_bgr)
    from_rgb = detector(np.ascontiguousarray(photo_bgr[:, :, ::-1]), channel_order="rgb")
    assert torch.equal(from_bgr.keypoints, from_rgb.keypoints)
    assert torch.equal(from_bgr.descriptors, from_rgb.descriptors)


def test_channel_order_matters_for_colour_images(detector, photo_bgr):
    swapped = detector(photo_bgr, channel_order="rgb")
    assert not torch.equal(detector(photo_bgr).scores[:50], swapped.scores[:50])


def test_bgra_input_drops_alpha(detector, photo_bgr):
    bgra = cv2.cvtColor(photo_bgr, cv2.COLOR_BGR2BGRA)
    bgra[:, :, 3] = np.arange(ODD_WIDTH, dtype=np.uint8)[None, :]
    assert torch.equal(detector(bgra).descriptors, detector(photo_bgr).descriptors)


def test_grey_input_equals_grey_replicated_to_three_channels(detector, photo_bgr):
    grey = cv2.cvtColor(photo_bgr, cv2.COLOR_BGR2GRAY)
    from_grey = detector(grey)
    from_grey_hw1 = detector(grey[:, :, None])
    from_grey_bgr = detector(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    assert torch.equal(from_grey.keypoints, from_grey_bgr.keypoints)
    assert torch.equal(from_grey_hw1.descriptors, from_grey_bgr.descriptors)


def test_nothing_above_threshold_gives_empty_detections_with_correct_shapes(checkpoint_path, photo_bgr):
    found = KeypointDetector(checkpoint_path, device="cpu", score_threshold=1.0)(photo_bgr)
    assert len(found) == 0
    assert tuple(found.keypoints.shape) == (0, 2) and tuple(found.scores.shape) == (0,)
    assert tuple(found.descriptors.shape) == (0, 256)
    as_numpy = found.numpy()
    assert as_numpy.keypoints.dtype == np.float32 and as_numpy.descriptors.shape == (0, 256)


def test_batch_call_equals_single_calls(detector, photo_bgr):
    flipped = np.ascontiguousarray(photo_bgr[::-1])
    other_size = np.ascontiguousarray(photo_bgr[:200, :300])
    batch = detector([photo_bgr, other_size, flipped])
    assert isinstance(batch, list) and len(batch) == 3
    for image, found in zip([photo_bgr, other_size, flipped], batch, strict=True):
        single = detector(image)
        assert found.image_size == single.image_size and len(found) == len(single)
        assert torch.allclose(found.keypoints, single.keypoints, atol=1e-3)
        assert torch.allclose(found.scores, single.scores, atol=1e-5)
        assert torch.allclose(found.descriptors, single.descriptors, atol=1e-4)


def test_top_k_keeps_the_best_scores_sorted_with_unit_descriptors(checkpoint_path, detector, photo_bgr):
    everything = detector(photo_bgr)
    best = KeypointDetector(checkpoint_path, device="cpu", top_k=100)(photo_bgr)
    assert len(best) == 100
    assert torch.all(best.scores[:-1] >= best.scores[1:])
    assert torch.allclose(best.scores, everything.scores[:100])
    # 100 points: descriptors come from the sparse last-conv path, all points: from the dense conv.
    assert torch.allclose(best.descriptors, everything.descriptors[:100], atol=1e-5)
    assert best.keypoints.dtype == best.scores.dtype == best.descriptors.dtype == torch.float32
    assert torch.allclose(torch.linalg.vector_norm(best.descriptors, dim=1), torch.ones(100), atol=1e-5)


def test_nms_keeps_exactly_the_local_maxima_of_the_cell_scores(checkpoint_path, detector, photo_bgr):
    radius = 1
    with_nms = KeypointDetector(checkpoint_path, device="cpu", top_k=None, nms_radius=radius)(photo_bgr)
    padded = cv2.copyMakeBorder(photo_bgr, 0, 256 - ODD_HEIGHT, 0, 336 - ODD_WIDTH, cv2.BORDER_REPLICATE)
    score, coord, _ = detector.run_dense(padded[None])
    score, coord = score[0, 0].numpy(), coord[0].numpy()
    expected = 0
    for row in range(score.shape[0]):
        for col in range(score.shape[1]):
            window = score[max(row - radius, 0) : row + radius + 1, max(col - radius, 0) : col + radius + 1]
            inside = coord[0, row, col] <= ODD_WIDTH - 1 and coord[1, row, col] <= ODD_HEIGHT - 1
            expected += bool(score[row, col] > 0 and score[row, col] >= window.max() and inside)
    assert len(with_nms) == expected
    assert expected < len(detector(photo_bgr)) / 2


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((64, 64, 3), dtype=np.float32), "dtype uint8"),
        (np.zeros((0, 64, 3), dtype=np.uint8), "empty"),
        (np.zeros((64, 64, 5), dtype=np.uint8), "64, 64, 5"),
        (np.zeros((2, 64, 64, 3), dtype=np.uint8), "shape"),
        ([[1, 2], [3, 4]], "images\\[0\\]"),
    ],
)
def test_bad_images_raise_clear_errors(detector, image, message):
    with pytest.raises(ImageFormatError, match=message):
        detector(image)


def test_unknown_channel_order_is_rejected(detector, photo_bgr):
    with pytest.raises(ImageFormatError, match="channel_order"):
        detector(photo_bgr, channel_order="bgra")


def test_missing_default_model_tells_how_to_pass_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(detector_module, "default_checkpoint_path", lambda: tmp_path / "kp2d_default.safetensors")
    with pytest.raises(CheckpointError, match="pass a checkpoint"):
        KeypointDetector()


def test_loaded_module_can_be_passed_instead_of_a_path(raw_net, detector, photo_bgr):
    assert torch.equal(
        KeypointDetector(raw_net, device="cpu", top_k=None)(photo_bgr).scores, detector(photo_bgr).scores
    )


def test_numpy_detections_match_the_tensors(detector, photo_bgr):
    found = detector(photo_bgr)
    as_numpy = found.numpy()
    assert isinstance(as_numpy.keypoints, np.ndarray) and as_numpy.image_size == found.image_size
    np.testing.assert_array_equal(as_numpy.descriptors, found.descriptors.numpy())


def test_single_channel_network_gets_grey_input(photo_bgr):
    torch.manual_seed(0)
    grey_net = build_keypoint_net({"use_color": False, "do_upsample": False}).eval()
    found = KeypointDetector(grey_net, device="cpu", top_k=None)(photo_bgr)
    padded = cv2.copyMakeBorder(photo_bgr, 0, 256 - ODD_HEIGHT, 0, 336 - ODD_WIDTH, cv2.BORDER_REPLICATE)
    grey = cv2.cvtColor(padded, cv2.COLOR_BGR2GRAY)
    with torch.inference_mode():
        score, coord, _ = grey_net((torch.from_numpy(grey)[None, None].float() / 255.0 - 0.5) * 0.225)
    inside = (score[0, 0] > 0) & (coord[0, 0] <= ODD_WIDTH - 1) & (coord[0, 1] <= ODD_HEIGHT - 1)
    expected = score[0, 0][inside].sort(descending=True).values
    assert found.descriptors.shape[1] == 256 and len(found) == expected.shape[0] > 100
    assert torch.allclose(found.scores, expected, atol=1e-5)


@pytest.mark.parametrize(("height", "width", "map_scale"), [(64, 96, 4), (64, 96, 8), (40, 56, 4)])
def test_sparse_last_conv_sampling_equals_dense_conv_then_sampling(height, width, map_scale):
    generator = torch.Generator().manual_seed(height + map_scale)
    conv = torch.nn.Conv2d(16, 24, 3, padding=1)
    features = torch.randn(16, height // map_scale, width // map_scale, generator=generator)
    corners = torch.tensor([[0.0, 0.0], [width - 1, 0.0], [0.0, height - 1], [width - 1, height - 1]])
    inside = torch.rand(50, 2, generator=generator) * torch.tensor([width - 1.0, height - 1.0])
    points = torch.cat([corners, inside])
    with torch.inference_mode():
        sparse = sample_conv3x3_descriptors(features.permute(1, 2, 0), LastConv.from_conv(conv), points, height, width)
        dense = sample_descriptors(conv(features[None]), points.T.reshape(1, 2, 1, -1), height, width, True)
    assert torch.allclose(sparse, dense[0, :, 0].T, atol=1e-5)


@pytest.mark.parametrize(("height", "width"), [(64, 96), (40, 56)])
def test_last_conv_on_a_uint8_map_equals_the_dense_conv_of_the_dequantised_map(height, width):
    """An INT8 engine's UINT8 map with its scale folded into the conv: the same descriptors as the float conv of
    ``scale * (q - zero_point)``, border points included (the padding is the zero point, i.e. 0.0)."""
    generator = torch.Generator().manual_seed(height)
    conv = torch.nn.Conv2d(16, 24, 3, padding=1)
    quantized = torch.randint(0, 256, (height // 4, width // 4, 16), generator=generator, dtype=torch.uint8)
    quantization = FeatureQuantization(scale=0.03, zero_point=7)
    corners = torch.tensor([[0.0, 0.0], [width - 1, 0.0], [0.0, height - 1], [width - 1, height - 1]])
    inside = torch.rand(600, 2, generator=generator) * torch.tensor([width - 1.0, height - 1.0])  # 3 chunks of points
    points = torch.cat([corners, inside])
    with torch.inference_mode():
        sparse = sample_conv3x3_descriptors(quantized, LastConv.from_conv(conv, quantization), points, height, width)
        real = (0.03 * (quantized.float() - 7)).permute(2, 0, 1)[None]
        dense = sample_descriptors(conv(real), points.T.reshape(1, 2, 1, -1), height, width, True)
        assert torch.allclose(sparse, dense[0, :, 0].T, atol=1e-5)
        dense_map = LastConv.from_conv(conv, quantization).dense(quantized[None])
        assert torch.allclose(dense_map, conv(real), atol=1e-4)
        bf16 = LastConv.from_conv(conv, quantization, torch.bfloat16)
        cosine = (sample_conv3x3_descriptors(quantized, bf16, points, height, width) * sparse).sum(dim=1)
        assert cosine.dtype == torch.float32 and cosine.min() > 0.999

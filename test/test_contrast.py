"""Contrast stretch before the network (``contrast="stretch"``: the ROS node's default)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import skimage.data

from kp2d_model.detector import KeypointDetector
from kp2d_model.evaluation.cli import main as evaluate_main
from kp2d_model.evaluation.methods import KeyPointNetMethod
from kp2d_model.image import ImageFormatError, stretch_contrast
from kp2d_model.track_bench.cli import _kp2d_variants, build_parser
from kp2d_model.track_bench.frontends import NODE_CONTRAST


@pytest.fixture(scope="module")
def checkpoint_path(reference_dir):
    return reference_dir / "v4_reference.ckpt"


@pytest.fixture(scope="module")
def dim_photo_bgr():
    """A real photo squeezed into grey levels 60..120 (a dim, low-contrast frame), 240 x 320 BGR."""
    rgb = skimage.data.astronaut()[:240, 100:420].astype(np.float32)
    return np.ascontiguousarray(np.rint(60 + rgb[:, :, ::-1] * (60 / 255)).astype(np.uint8))


def test_stretch_maps_the_one_percent_tails_to_black_and_white():
    ramp = np.tile(np.arange(256, dtype=np.uint8), (100, 1))  # every value 100 times
    out = stretch_contrast(ramp)[0].astype(int)
    # 1 % of 25,600 values = 256: values 0..2 (300 of them) reach past it -> 0; 253..255 -> 255
    assert list(out[:3]) == [0, 0, 0] and list(out[-3:]) == [255, 255, 255]
    assert out[3] == 1 and out[252] == 254
    assert np.all(np.diff(out) >= 0)  # monotone


def test_stretch_gives_each_channel_of_a_dim_image_the_full_range(dim_photo_bgr):
    out = stretch_contrast(dim_photo_bgr)
    assert out.shape == dim_photo_bgr.shape and out.dtype == np.uint8
    for channel in range(3):
        assert np.percentile(out[:, :, channel], 0.5) == 0 and np.percentile(out[:, :, channel], 99.5) == 255
        # one map per channel: a value -> one value, order kept
        before, after = dim_photo_bgr[:, :, channel].ravel(), out[:, :, channel].ravel()
        pairs = sorted({(int(a), int(b)) for a, b in zip(before, after, strict=True)})
        assert len(pairs) == len({a for a, _ in pairs}) and all(p[1] <= q[1] for p, q in itertools.pairwise(pairs))


def test_a_colour_cast_is_stretched_per_channel_without_saturating_it():
    """Red 150..250 over blue and green 0: red spans 0..255 afterwards, not clipped to 255; the others stay 0."""
    reddish = np.zeros((64, 64, 3), np.uint8)
    reddish[:, :, 2] = np.rint(np.linspace(150, 250, 64 * 64).reshape(64, 64))
    out = stretch_contrast(reddish)
    assert out[:, :, 2].min() == 0 and out[:, :, 2].max() == 255
    assert np.mean((out[:, :, 2] > 0) & (out[:, :, 2] < 255)) > 0.95  # only the 1 % tails clipped
    assert out[:, :, :2].max() == 0


def test_full_range_and_flat_images_come_back_unchanged(dim_photo_bgr):
    once = stretch_contrast(dim_photo_bgr[:, :, 1])  # grey: its luminance now spans 0..255 beyond both tails
    assert once.min() == 0 and once.max() == 255
    assert stretch_contrast(once) is once  # the map never compresses: nothing to do
    flat = np.full((8, 9), 77, np.uint8)
    assert np.array_equal(stretch_contrast(flat), flat)


def test_stretch_refuses_what_it_cannot_stretch():
    with pytest.raises(ImageFormatError, match="uint8"):
        stretch_contrast(np.zeros((4, 4), np.float32))
    with pytest.raises(ImageFormatError, match="H x W x 3"):
        stretch_contrast(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="percent"):
        stretch_contrast(np.zeros((4, 4), np.uint8), percent=50)


def test_detector_with_stretch_equals_the_detector_on_the_stretched_image(checkpoint_path, dim_photo_bgr):
    plain = KeypointDetector(checkpoint_path, device="cpu", top_k=300)
    stretched = KeypointDetector(checkpoint_path, device="cpu", top_k=300, contrast="stretch")
    found = stretched(dim_photo_bgr)
    expected = plain(stretch_contrast(dim_photo_bgr))
    assert np.array_equal(found.keypoints.numpy(), expected.keypoints.numpy())
    assert np.array_equal(found.descriptors.numpy(), expected.descriptors.numpy())
    as_given = plain(dim_photo_bgr)
    assert not np.array_equal(found.keypoints.numpy(), as_given.keypoints.numpy())


def test_detector_refuses_an_unknown_contrast(checkpoint_path):
    with pytest.raises(ValueError, match="contrast must be one of none, stretch, got 'equalize'"):
        KeypointDetector(checkpoint_path, device="cpu", contrast="equalize")


def test_evaluation_method_stretches_before_the_network_and_says_so_in_its_name(checkpoint_path, dim_photo_bgr):
    method = KeyPointNetMethod(checkpoint_path, device="cpu", contrast="stretch")
    assert method.name == "kp2d_stretch"
    assert KeyPointNetMethod(checkpoint_path, device="cpu", input_scale=2.0, contrast="stretch").name == (
        "kp2d_x2_stretch"
    )
    points, descriptors = method(dim_photo_bgr)
    plain_points, plain_descriptors = KeyPointNetMethod(checkpoint_path, device="cpu")(stretch_contrast(dim_photo_bgr))
    assert np.array_equal(points, plain_points) and np.array_equal(descriptors, plain_descriptors)


def test_evaluate_cli_contrast_needs_the_kp2d_method(tmp_path, capsys):
    with pytest.raises(SystemExit):
        evaluate_main(["--hpatches", str(tmp_path), "--method", "orb", "--contrast", "stretch"])
    assert "--contrast applies to the kp2d method" in capsys.readouterr().err


def test_track_bench_runs_kp2d_at_the_node_contrast_unless_told():
    default = _kp2d_variants(build_parser().parse_args([]))
    assert default == [("kp2d", {"precision": None, "input_scale": None, "contrast": NODE_CONTRAST})]
    arguments = ["--precision", "fp32", "--contrast", "stretch", "--contrast", "none"]
    both = _kp2d_variants(build_parser().parse_args(arguments))
    assert [label for label, _ in both] == ["kp2d_fp32", "kp2d_fp32_contrast_none"]

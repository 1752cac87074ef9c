"""Preprocess: image -> tensor, checked against values computed by hand."""

import copy
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from edgeinfer.errors import DataError, UsageError
from edgeinfer.preprocess import KEYS, Preprocess, infer_from_input
from edgeinfer.tensors import TensorSpec


def rgb_pixels(height, width):
    """A deterministic uint8 (H, W, 3) image: every pixel and channel distinct."""
    values = np.arange(height * width * 3, dtype=np.int64).reshape(height, width, 3)
    return ((values * 7) % 256).astype(np.uint8)


def save_png(path, pixels):
    Image.fromarray(pixels).save(str(path))
    return path


def test_known_png_gives_exact_normalized_tensor(tmp_path):
    pixels = rgb_pixels(4, 4)
    path = save_png(tmp_path / "x.png", pixels)
    pre = Preprocess(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])

    out = pre(path)

    # The same float32 arithmetic by hand, channel by channel.
    expected = pixels.astype(np.float32) * np.float32(1.0 / 255.0)
    expected = (expected - np.float32([0.485, 0.456, 0.406])) / np.float32([0.229, 0.224, 0.225])
    assert out.dtype == np.float32
    assert out.shape == (3, 4, 4)
    np.testing.assert_array_equal(out, expected.transpose(2, 0, 1))
    # Spot check one value in plain arithmetic: pixel (0, 1) green.
    assert out[1, 0, 1] == pytest.approx((pixels[0, 1, 1] / 255.0 - 0.456) / 0.224, abs=1e-6)


def test_bgr_reverses_channels_and_mean_is_in_model_order(tmp_path):
    pixels = rgb_pixels(4, 4)
    path = save_png(tmp_path / "x.png", pixels)
    rgb = Preprocess(color="RGB", scale=1.0)(path)
    bgr = Preprocess(color="BGR", scale=1.0, mean=[1.0, 2.0, 3.0])(path)

    np.testing.assert_array_equal(rgb[0], pixels[:, :, 0])
    np.testing.assert_array_equal(bgr[0], pixels[:, :, 2] - 1.0)  # blue first, minus mean[0]
    np.testing.assert_array_equal(bgr[1], pixels[:, :, 1] - 2.0)
    np.testing.assert_array_equal(bgr[2], pixels[:, :, 0] - 3.0)


def test_grayscale_gives_one_channel_with_pillow_luma(tmp_path):
    pixels = rgb_pixels(4, 4)
    path = save_png(tmp_path / "x.png", pixels)
    out = Preprocess(color="L", scale=1.0)(path)

    luma = np.asarray(Image.fromarray(pixels).convert("L"), dtype=np.float32)
    assert out.shape == (1, 4, 4)
    np.testing.assert_array_equal(out[0], luma)


def test_nhwc_is_nchw_transposed(tmp_path):
    path = save_png(tmp_path / "x.png", rgb_pixels(5, 3))
    nchw = Preprocess(layout="NCHW")(path)
    nhwc = Preprocess(layout="NHWC")(path)
    assert nchw.shape == (3, 5, 3)
    assert nhwc.shape == (5, 3, 3)
    assert nhwc.flags["C_CONTIGUOUS"] and nchw.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(nhwc, nchw.transpose(1, 2, 0))


def test_resize_shorter_side_keeps_aspect_then_center_crop(tmp_path):
    # 30 wide, 20 high: shorter side 20 -> 8 makes 8 x int(8 * 30 / 20) = 8 x 12.
    path = save_png(tmp_path / "wide.png", rgb_pixels(20, 30))
    assert Preprocess(resize=8)(path).shape == (3, 8, 12)
    cropped = Preprocess(resize=8, center_crop=[6, 6])
    assert cropped(path).shape == (3, 6, 6)
    assert cropped.expected_shape() == (3, 6, 6)
    # Tall image: 10 wide, 25 high -> 4 wide, int(4 * 25 / 10) = 10 high.
    tall = save_png(tmp_path / "tall.png", rgb_pixels(25, 10))
    assert Preprocess(resize=4, layout="NHWC")(tall).shape == (10, 4, 3)
    # [h, w] resizes exactly, ignoring the aspect ratio.
    assert Preprocess(resize=[7, 9])(tall).shape == (3, 7, 9)


def test_center_crop_takes_the_middle_as_torchvision_does(tmp_path):
    pixels = rgb_pixels(4, 6)
    path = save_png(tmp_path / "x.png", pixels)
    out = Preprocess(center_crop=[2, 3], scale=1.0, layout="NHWC")(path)
    # top = round((4 - 2) / 2) = 1, left = round((6 - 3) / 2) = round(1.5) = 2
    np.testing.assert_array_equal(out, pixels[1:3, 2:5].astype(np.float32))


def test_center_crop_larger_than_image_pads_with_black(tmp_path):
    pixels = np.full((2, 2, 3), 200, dtype=np.uint8)
    path = save_png(tmp_path / "x.png", pixels)
    out = Preprocess(center_crop=[4, 4], scale=1.0, mean=[10.0], layout="NHWC")(path)
    expected = np.full((4, 4, 3), -10.0, dtype=np.float32)
    expected[1:3, 1:3] = 190.0
    np.testing.assert_array_equal(out, expected)


def test_nearest_resize_of_a_uniform_image_keeps_values(tmp_path):
    path = save_png(tmp_path / "x.png", np.full((6, 6, 3), 51, dtype=np.uint8))
    out = Preprocess(resize=[3, 3], interpolation="nearest")(path)
    np.testing.assert_allclose(out, np.full((3, 3, 3), 0.2, dtype=np.float32), rtol=0, atol=1e-7)


def test_dtypes_float16_and_uint8(tmp_path):
    pixels = rgb_pixels(4, 4)
    path = save_png(tmp_path / "x.png", pixels)
    half = Preprocess(dtype="float16")(path)
    assert half.dtype == np.float16
    np.testing.assert_allclose(half, (pixels / 255.0).transpose(2, 0, 1), atol=1e-3)
    raw = Preprocess(dtype="uint8", scale=1.0, layout="NHWC")(path)
    assert raw.dtype == np.uint8
    np.testing.assert_array_equal(raw, pixels)
    # uint8 rounds and clips rather than wrapping around.
    clipped = Preprocess(dtype="uint8", scale=1.0, mean=[100.0], layout="NHWC")(path)
    np.testing.assert_array_equal(clipped, np.clip(pixels.astype(int) - 100, 0, 255))


def test_apply_converts_any_mode_and_rejects_non_images():
    rgba = Image.new("RGBA", (2, 2), (10, 20, 30, 0))
    out = Preprocess(scale=1.0).apply(rgba)
    np.testing.assert_array_equal(out[:, 0, 0], [10.0, 20.0, 30.0])
    with pytest.raises(UsageError, match="takes a PIL image"):
        Preprocess().apply(np.zeros((2, 2, 3)))


def test_to_dict_round_trips_exactly_through_json():
    full = {"color": "BGR", "resize": 256, "interpolation": "bicubic", "center_crop": [224, 224],
            "scale": 0.5, "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "layout": "NHWC",
            "dtype": "float16"}
    pre = Preprocess.from_dict(full)
    assert pre.to_dict() == full
    assert json.loads(json.dumps(pre.to_dict())) == full
    assert Preprocess.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre

    defaults = Preprocess.from_dict({}).to_dict()
    assert list(defaults) == list(KEYS)
    assert defaults == {"color": "RGB", "resize": None, "interpolation": "bilinear",
                        "center_crop": None, "scale": 1.0 / 255.0, "mean": [0.0], "std": [1.0],
                        "layout": "NCHW", "dtype": "float32"}
    assert Preprocess.from_dict({"resize": [3, 4]}).to_dict()["resize"] == [3, 4]


def test_is_immutable_hashable_and_copyable():
    pre = Preprocess(resize=[4, 4])
    with pytest.raises(AttributeError, match="immutable"):
        pre.resize = 8
    assert pre.resize == (4, 4)
    assert copy.deepcopy(pre) == pre
    assert pickle.loads(pickle.dumps(pre)) == pre
    assert hash(Preprocess(resize=[4, 4])) == hash(pre)
    assert Preprocess(resize=[4, 5]) != pre


def test_unknown_key_is_named_with_the_valid_ones():
    with pytest.raises(UsageError) as info:
        Preprocess.from_dict({"color": "RGB", "normalise": True})
    text = str(info.value)
    assert "'normalise'" in text
    assert "Valid keys: color, resize, interpolation, center_crop, scale, mean, std, layout, dtype" in text


@pytest.mark.parametrize("key, value", [
    ("color", "rgb"), ("resize", "big"), ("resize", True), ("resize", 0), ("resize", [1, 2, 3]),
    ("interpolation", "area"), ("center_crop", 224), ("center_crop", [0, 4]), ("scale", 0),
    ("scale", float("nan")), ("mean", 0.5), ("mean", [0.1, 0.2]), ("std", [0.0]),
    ("std", [1.0, -1.0, 1.0]), ("layout", "CHW"), ("dtype", "int8"),
])
def test_bad_values_are_refused_naming_the_key(key, value):
    with pytest.raises(UsageError) as info:
        Preprocess.from_dict({key: value})
    assert "Preprocessing {!r} is {!r}.".format(key, value) in str(info.value)
    assert "Note: Expected" in str(info.value)


def test_mean_with_three_values_is_refused_for_grayscale():
    with pytest.raises(UsageError, match="'mean'"):
        Preprocess(color="L", mean=[0.1, 0.2, 0.3])
    assert Preprocess(color="L", mean=[0.5]).mean == (0.5,)


def test_from_dict_refuses_a_non_mapping():
    with pytest.raises(UsageError, match="mapping"):
        Preprocess.from_dict(["RGB"])


def test_expected_shape():
    assert Preprocess().expected_shape() is None
    assert Preprocess(resize=256).expected_shape() is None
    assert Preprocess(resize=[4, 5]).expected_shape() == (3, 4, 5)
    assert Preprocess(resize=256, center_crop=[224, 200], layout="NHWC").expected_shape() == (224, 200, 3)
    assert Preprocess(color="L", resize=[28, 28]).expected_shape() == (1, 28, 28)


def test_load_converts_mode_and_detaches_from_the_file(tmp_path):
    path = tmp_path / "p.png"
    Image.new("P", (3, 2)).save(str(path))
    image = Preprocess(color="BGR").load(path)
    assert image.mode == "RGB" and image.size == (3, 2)
    assert Preprocess(color="L").load(str(path)).mode == "L"


def test_not_an_image_is_a_data_error_naming_the_file(tmp_path):
    path = tmp_path / "x.png"
    path.write_text("hello")
    with pytest.raises(DataError) as info:
        Preprocess().load(path)
    assert str(info.value) == ("Cannot read image '{}': cannot identify image file. Note: give a "
                               "PNG, JPEG or BMP image, or a .npy/.npz tensor.".format(path))


def test_missing_and_truncated_images_are_data_errors(tmp_path):
    missing = tmp_path / "gone.jpg"
    with pytest.raises(DataError, match="Cannot read image '.*gone.jpg': no such file"):
        Preprocess()(missing)
    full = tmp_path / "full.png"
    save_png(full, rgb_pixels(32, 32))
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(full.read_bytes()[:120])
    with pytest.raises(DataError, match="Cannot read image '.*cut.png'"):
        Preprocess()(truncated)
    with pytest.raises(DataError, match="it is a folder"):
        Preprocess().load(tmp_path)


def test_infer_from_input_nchw_rgb():
    pre = infer_from_input(TensorSpec("input", "float32", ("batch", 3, 224, 200)))
    assert pre.to_dict() == {"color": "RGB", "resize": [224, 200], "interpolation": "bilinear",
                             "center_crop": None, "scale": 1.0 / 255.0, "mean": [0.0],
                             "std": [1.0], "layout": "NCHW", "dtype": "float32"}


def test_infer_from_input_nhwc_gray_and_uint8():
    pre = infer_from_input(TensorSpec("x", "float16", (1, 28, 28, 1)))
    assert (pre.color, pre.layout, pre.resize, pre.dtype) == ("L", "NHWC", (28, 28), "float16")
    raw = infer_from_input(TensorSpec("x", "uint8", (None, 3, 8, 8)))
    assert (raw.dtype, raw.scale) == ("uint8", 1.0)


@pytest.mark.parametrize("spec", [
    TensorSpec("ids", "int64", ("batch", 3, 8, 8)),      # not an image dtype
    TensorSpec("x", "float32", ("batch", 16)),           # not rank 4
    TensorSpec("x", "float32", (1, 8, 8, 8)),            # no 1/3 channel dim
    TensorSpec("x", "float32", (1, 3, "h", "w")),        # size unknown
    TensorSpec("x", "float32", (1, True, 8, 8)),         # bool is not a dim
])
def test_infer_from_input_returns_none_for_non_images(spec):
    assert infer_from_input(spec) is None

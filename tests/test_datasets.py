"""Datasets: image folders with labels, .npy/.npz files, and every way they can be wrong."""

import numpy as np
import pytest
from PIL import Image

from edgeinfer.datasets import open_dataset
from edgeinfer.errors import DataError, UsageError
from edgeinfer.preprocess import Preprocess
from edgeinfer.tensors import TensorSpec

IMAGE = TensorSpec("image", "float32", ("batch", 3, 4, 4))
TOKENS = [TensorSpec("input_ids", "int64", ("batch", "seq")),
          TensorSpec("attention_mask", "int64", ("batch", "seq"))]
RAW = Preprocess(scale=1.0)  # pixels as they are, NCHW float32


def write_image(path, value):
    """A 4x4 RGB image whose red channel is ``value``, green value+1, blue value+2."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.empty((4, 4, 3), dtype=np.uint8)
    pixels[...] = (value, value + 1, value + 2)
    Image.fromarray(pixels).save(str(path))
    return path


def red(sample):
    return float(sample["image"][0, 0, 0])


def assert_data_error(match, func, *args, **kwargs):
    with pytest.raises(DataError) as info:
        func(*args, **kwargs)
    assert match in str(info.value), str(info.value)
    return str(info.value)


# --- image folders -------------------------------------------------------------------------

def test_image_folder_sorted_by_name_with_labels_csv(tmp_path):
    write_image(tmp_path / "b.png", 20)
    write_image(tmp_path / "a.PNG", 10)
    write_image(tmp_path / "c.JpEg", 30)
    (tmp_path / "README.md").write_text("not data")
    (tmp_path / ".hidden.png").write_text("macOS junk, not an image")
    (tmp_path / "labels.csv").write_text("file,label\nb.png,1\na.PNG,0\nc.JpEg,2\n")

    data = open_dataset(tmp_path, [IMAGE], preprocess=RAW)

    assert len(data) == 3
    assert data.input_names == ["image"]
    assert data.labels.dtype == np.int64
    assert data.labels.tolist() == [0, 1, 2]
    first = data.sample(0)
    assert first["image"].dtype == np.float32 and first["image"].shape == (3, 4, 4)
    np.testing.assert_array_equal(first["image"][:, 2, 3], [10.0, 11.0, 12.0])
    assert red(data.sample(1)) == 20.0
    assert abs(red(data.sample(2)) - 30.0) <= 2.0  # JPEG is lossy
    assert data.describe() == "image folder '{}': 3 images of image, labels from labels.csv".format(
        tmp_path)

    batches = list(data.batches(2))
    assert [feeds["image"].shape for feeds, _ in batches] == [(2, 3, 4, 4), (1, 3, 4, 4)]
    assert [labels.tolist() for _, labels in batches] == [[0, 1], [2]]
    np.testing.assert_array_equal(batches[0][0]["image"][1], data.sample(1)["image"])
    assert len(list(data.batches(2, drop_last=True))) == 1


def test_image_folder_labels_txt_and_every_extension(tmp_path):
    names = ["a.png", "b.jpg", "c.jpeg", "d.bmp", "e.gif", "f.tif", "g.tiff", "h.webp"]
    for i, name in enumerate(names):
        write_image(tmp_path / name, 10 * i)
    (tmp_path / "labels.txt").write_text(
        "# file label\n" + "".join("{} {}\n".format(n, 7 - i) for i, n in enumerate(names)))
    data = open_dataset(str(tmp_path), [IMAGE], preprocess=RAW)
    assert len(data) == 8
    assert data.labels.tolist() == [7, 6, 5, 4, 3, 2, 1, 0]
    assert red(data.sample(3)) == 30.0  # bmp is lossless
    assert red(data.sample(-1)) == pytest.approx(70.0, abs=3)


def test_image_folder_class_subfolders(tmp_path):
    write_image(tmp_path / "dog" / "1.png", 1)
    write_image(tmp_path / "cat" / "2.png", 2)
    write_image(tmp_path / "cat" / "deep" / "3.png", 3)
    data = open_dataset(tmp_path, [IMAGE], preprocess=RAW)
    assert data.labels.tolist() == [0, 0, 1]  # cat=0, dog=1 in sorted order
    assert [red(data.sample(i)) for i in range(3)] == [2.0, 3.0, 1.0]
    assert "labels from 2 class subfolders" in data.describe()


def test_integer_class_subfolders_are_their_own_labels(tmp_path):
    write_image(tmp_path / "10" / "a.png", 10)
    write_image(tmp_path / "3" / "b.png", 3)
    data = open_dataset(tmp_path, [IMAGE], preprocess=RAW)
    assert data.labels.tolist() == [10, 3]
    assert [red(data.sample(i)) for i in range(2)] == [10.0, 3.0]


def test_label_file_overrides_subfolders_with_relative_names(tmp_path):
    write_image(tmp_path / "cat" / "a.png", 1)
    write_image(tmp_path / "dog" / "b.png", 2)
    (tmp_path / "labels.csv").write_text("file,label\ncat/a.png,5\n./dog/b.png,6\n")
    assert open_dataset(tmp_path, [IMAGE], preprocess=RAW).labels.tolist() == [5, 6]


def test_image_folder_without_labels(tmp_path):
    write_image(tmp_path / "a.png", 1)
    data = open_dataset(tmp_path, [IMAGE], preprocess=RAW)
    assert data.labels is None
    [(feeds, labels)] = list(data.batches(4))
    assert labels is None and feeds["image"].shape == (1, 3, 4, 4)


def test_image_folder_casts_preprocess_output_to_the_input_dtype(tmp_path):
    write_image(tmp_path / "a.png", 1)
    half = TensorSpec("image", "float16", (1, 4, 4, 3))
    sample = open_dataset(tmp_path, [half], preprocess=Preprocess(layout="NHWC")).sample(0)
    assert sample["image"].dtype == np.float16 and sample["image"].shape == (4, 4, 3)


def test_image_folder_needs_a_preprocess(tmp_path):
    write_image(tmp_path / "a.png", 1)
    assert_data_error("Image folder '{}' needs a preprocessing recipe.".format(tmp_path),
                      open_dataset, tmp_path, [IMAGE])


def test_image_folder_needs_a_one_input_model(tmp_path):
    write_image(tmp_path / "a.png", 1)
    assert_data_error("cannot feed a model with 2 inputs (input_ids, attention_mask)",
                      open_dataset, tmp_path, TOKENS, preprocess=RAW)


def test_preprocess_that_cannot_fit_the_input_is_refused_before_reading(tmp_path):
    write_image(tmp_path / "a.png", 1)
    message = assert_data_error("would be [3, 8, 8] (NCHW RGB) but input 'image' takes [3, 4, 4]",
                                open_dataset, tmp_path, [IMAGE], preprocess=Preprocess(resize=[8, 8]))
    assert "image: float32[batch, 3, 4, 4]" in message
    assert_data_error("would be ['?', '?', 3] (NHWC RGB)", open_dataset, tmp_path, [IMAGE],
                      preprocess=Preprocess(layout="NHWC"))
    ints = TensorSpec("image", "int8", ("batch", 3, 4, 4))
    assert_data_error("holds float32 values but input 'image' takes int8", open_dataset,
                      tmp_path, [ints], preprocess=RAW)


def test_image_of_the_wrong_size_names_the_file(tmp_path):
    write_image(tmp_path / "a.png", 1)
    Image.new("RGB", (5, 4)).save(str(tmp_path / "b.png"))
    data = open_dataset(tmp_path, [IMAGE], preprocess=RAW)
    assert_data_error("'{}' does not fit input 'image': shape [3, 4, 5], expected [3, 4, 4]".format(
        tmp_path / "b.png"), data.sample, 1)


def test_images_of_different_sizes_cannot_share_a_batch(tmp_path):
    spec = TensorSpec("image", "float32", ("batch", 3, "h", "w"))
    write_image(tmp_path / "a.png", 1)
    Image.new("RGB", (5, 4)).save(str(tmp_path / "b.png"))
    data = open_dataset(tmp_path, [spec], preprocess=RAW)
    assert [f["image"].shape for f, _ in data.batches(1)] == [(1, 3, 4, 4), (1, 3, 4, 5)]
    message = assert_data_error("Cannot batch '{}' with '{}'".format(
        tmp_path / "b.png", tmp_path / "a.png"), list, data.batches(2))
    assert "input 'image' is [3, 4, 5] in one, [3, 4, 4] in the other" in message


def test_corrupt_image_names_the_file(tmp_path):
    write_image(tmp_path / "a.png", 1)
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    data = open_dataset(tmp_path, [IMAGE], preprocess=RAW)
    assert_data_error("Cannot read image '{}'".format(tmp_path / "b.jpg"), list, data.batches(2))


def test_label_file_naming_a_missing_file(tmp_path):
    write_image(tmp_path / "a.png", 1)
    (tmp_path / "labels.csv").write_text("file,label\na.png,0\nghost.png,1\n")
    assert_data_error("names 1 file(s) that are not data files in '{}': ghost.png".format(tmp_path),
                      open_dataset, tmp_path, [IMAGE], preprocess=RAW)


def test_files_without_a_label(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        write_image(tmp_path / name, 1)
    (tmp_path / "labels.txt").write_text("b.png 4\n")
    assert_data_error("2 file(s) in '{}' have no label in '{}': a.png, c.png".format(
        tmp_path, tmp_path / "labels.txt"), open_dataset, tmp_path, [IMAGE], preprocess=RAW)


@pytest.mark.parametrize("name, text, match", [
    ("labels.csv", "name,class\na.png,0\n", "not the header file,label"),
    ("labels.csv", "file,label\na.png,cat\n", "line 2: label 'cat' of 'a.png' is not an integer"),
    ("labels.csv", "file,label\na.png,0,1\n", "line 2: expected file,label"),
    ("labels.txt", "a.png 0\na.png 1\n", "line 2: 'a.png' is labelled twice"),
    ("labels.txt", "a.png\n", "line 1: expected <file> <label>"),
])
def test_malformed_label_files(tmp_path, name, text, match):
    write_image(tmp_path / "a.png", 1)
    (tmp_path / name).write_text(text)
    assert_data_error(match, open_dataset, tmp_path, [IMAGE], preprocess=RAW)


def test_both_label_files_are_ambiguous(tmp_path):
    write_image(tmp_path / "a.png", 1)
    (tmp_path / "labels.csv").write_text("file,label\na.png,0\n")
    (tmp_path / "labels.txt").write_text("a.png 0\n")
    assert_data_error("has both labels.csv and labels.txt", open_dataset, tmp_path, [IMAGE],
                      preprocess=RAW)


def test_empty_class_folder_is_refused(tmp_path):
    write_image(tmp_path / "cat" / "a.png", 1)
    (tmp_path / "dog").mkdir()
    assert_data_error("Class folder(s) 'dog' in '{}' hold no data files".format(tmp_path),
                      open_dataset, tmp_path, [IMAGE], preprocess=RAW)


def test_files_at_top_and_in_subfolders_are_refused(tmp_path):
    write_image(tmp_path / "a.png", 1)
    write_image(tmp_path / "extra" / "b.png", 1)
    assert_data_error("holds data files both at the top (a.png) and in subfolders (extra/b.png)",
                      open_dataset, tmp_path, [IMAGE], preprocess=RAW)


# --- explicit labels -----------------------------------------------------------------------

def test_explicit_labels_list_and_file(tmp_path):
    folder = tmp_path / "data"
    write_image(folder / "a.png", 1)
    write_image(folder / "b.png", 2)
    assert open_dataset(folder, [IMAGE], RAW, labels=[3, 4]).labels.tolist() == [3, 4]
    other = tmp_path / "truth.txt"
    other.write_text("b.png 9\na.png 8\n")
    data = open_dataset(folder, [IMAGE], RAW, labels=other)
    assert data.labels.tolist() == [8, 9]
    assert "labels from truth.txt" in data.describe()
    assert_data_error("3 labels given for 2 samples", open_dataset, folder, [IMAGE], RAW,
                      labels=[1, 2, 3])
    assert_data_error("Labels must be a sequence of ints", open_dataset, folder, [IMAGE], RAW,
                      labels=[0.5, 1.5])
    assert_data_error("Label file '{}' does not exist".format(tmp_path / "nope.csv"),
                      open_dataset, folder, [IMAGE], RAW, labels=tmp_path / "nope.csv")


# --- one .npz file -------------------------------------------------------------------------

def test_stacked_npz_with_labels_casts_float64(tmp_path):
    x = np.arange(5 * 3 * 4 * 4, dtype=np.float64).reshape(5, 3, 4, 4) / 7.0
    path = tmp_path / "calib.npz"
    np.savez(str(path), image=x, labels=np.array([4, 3, 2, 1, 0]))
    data = open_dataset(path, [IMAGE])
    assert len(data) == 5
    assert data.labels.tolist() == [4, 3, 2, 1, 0]
    sample = data.sample(2)["image"]
    assert sample.dtype == np.float32
    np.testing.assert_array_equal(sample, x[2].astype(np.float32))
    feeds, labels = next(iter(data.batches(4)))
    np.testing.assert_array_equal(feeds["image"], x[:4].astype(np.float32))
    assert labels.tolist() == [4, 3, 2, 1]
    assert data.describe() == "npz file '{}': 5 samples of image, labels from 'labels' in the .npz".format(
        path)


def test_stacked_npz_multi_input_int64(tmp_path):
    ids = np.array([[101, 7, 102], [101, 8, 102]], dtype=np.int32)
    mask = np.ones((2, 3), dtype=np.int64)
    path = tmp_path / "tokens.npz"
    np.savez(str(path), input_ids=ids, attention_mask=mask)
    data = open_dataset(path, TOKENS)
    assert data.labels is None
    feeds, labels = next(iter(data.batches(2)))
    assert labels is None
    assert feeds["input_ids"].dtype == np.int64
    np.testing.assert_array_equal(feeds["input_ids"], ids)
    np.testing.assert_array_equal(feeds["attention_mask"], mask)


def test_stacked_npz_unknown_key_names_it_and_the_inputs(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(str(path), image=np.zeros((2, 3, 4, 4)), img2=np.zeros(2))
    message = assert_data_error("'{}' holds array(s) 'img2' that are not model inputs.".format(path),
                                open_dataset, path, [IMAGE])
    assert "expected one array per input: image (and optionally 'labels')" in message


def test_stacked_npz_missing_input_is_named(tmp_path):
    path = tmp_path / "tokens.npz"
    np.savez(str(path), input_ids=np.zeros((2, 3), dtype=np.int64))
    assert_data_error("'{}' has no array for input(s) 'attention_mask'".format(path),
                      open_dataset, path, TOKENS)


def test_stacked_npz_lengths_and_shapes_must_agree(tmp_path):
    path = tmp_path / "tokens.npz"
    np.savez(str(path), input_ids=np.zeros((2, 3), np.int64), attention_mask=np.zeros((3, 3), np.int64))
    assert_data_error("different numbers of samples per input: input_ids 2, attention_mask 3",
                      open_dataset, path, TOKENS)
    np.savez(str(path), image=np.zeros((2, 3, 5, 4)))
    assert_data_error("Samples of 'image' in '{}' does not fit input 'image': shape [3, 5, 4]".format(
        path), open_dataset, path, [IMAGE])
    np.savez(str(path), image=np.zeros((3, 4, 4)))
    assert_data_error("array 'image' has shape [3, 4, 4], expected [batch, 3, 4, 4]",
                      open_dataset, path, [IMAGE])
    np.savez(str(path), image=np.zeros((0, 3, 4, 4)))
    assert_data_error("holds no samples", open_dataset, path, [IMAGE])
    np.savez(str(path), image=np.zeros((2, 3, 4, 4)), labels=np.array([0.0, 1.0]))
    assert_data_error("'labels' is float64[2], not one integer per sample", open_dataset, path, [IMAGE])


def test_float_values_for_an_int_input_are_refused(tmp_path):
    path = tmp_path / "tokens.npz"
    np.savez(str(path), input_ids=np.zeros((2, 3)), attention_mask=np.zeros((2, 3), np.int64))
    message = assert_data_error("holds float64 values but input 'input_ids' takes int64",
                                open_dataset, path, TOKENS)
    assert "does not round floats into integers" in message


def test_int_values_that_overflow_the_input_are_refused(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(str(path), x=np.array([[1, 300]], dtype=np.int64))
    data = open_dataset(path, [TensorSpec("x", "uint8", ("n", 2))])
    assert_data_error("Sample 0 of '{}' holds values 1..300 that do not fit input 'x' (uint8)".format(
        path), data.sample, 0)


def test_npz_holding_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(str(path), image=np.array([{"a": 1}], dtype=object))
    assert_data_error("Cannot read '{}'".format(path), open_dataset, path, [IMAGE])


# --- one .npy file -------------------------------------------------------------------------

def test_stacked_npy_is_memory_mapped_samples(tmp_path):
    x = np.random.default_rng(0).random((6, 3, 4, 4), dtype=np.float32)
    path = tmp_path / "calib.npy"
    np.save(str(path), x)
    data = open_dataset(path, [IMAGE])
    assert len(data) == 6 and data.form == "npy file"
    np.testing.assert_array_equal(data.sample(5)["image"], x[5])
    assert data.sample(5)["image"].flags.writeable
    assert [f["image"].shape[0] for f, _ in data.batches(4)] == [4, 2]
    assert_data_error("is one array, but the model has 2 inputs", open_dataset, path, TOKENS)


# --- folders of .npy / .npz ----------------------------------------------------------------

def test_npy_folder_with_and_without_batch_dim_and_labels(tmp_path):
    x = np.arange(3 * 48, dtype=np.float32).reshape(3, 3, 4, 4)
    np.save(str(tmp_path / "0.npy"), x[0])           # no batch dim
    np.save(str(tmp_path / "1.npy"), x[1:2])         # batch dim of 1
    np.save(str(tmp_path / "2.npy"), x[2].astype(np.int16))  # ints are cast to float
    (tmp_path / "labels.txt").write_text("0.npy 1\n1.npy 0\n2.npy 1\n")
    data = open_dataset(tmp_path, [IMAGE])
    assert data.form == "npy folder"
    assert data.labels.tolist() == [1, 0, 1]
    feeds, labels = next(iter(data.batches(3)))
    assert feeds["image"].dtype == np.float32
    np.testing.assert_array_equal(feeds["image"], x)
    assert labels.tolist() == [1, 0, 1]
    assert data.describe() == "npy folder '{}': 3 files of image, labels from labels.txt".format(tmp_path)


def test_npz_folder_multi_input_int64(tmp_path):
    for i, length in enumerate([3, 3, 5]):
        ids = np.arange(length, dtype=np.int32) + 100 * i
        np.savez(str(tmp_path / "s{}.npz".format(i)), input_ids=ids[None, :],
                 attention_mask=np.ones(length, dtype=np.int64))
    (tmp_path / "labels.csv").write_text("file,label\ns0.npz,0\ns1.npz,1\ns2.npz,0\n")
    data = open_dataset(tmp_path, TOKENS)
    assert data.input_names == ["input_ids", "attention_mask"]
    sample = data.sample(1)
    assert sample["input_ids"].dtype == np.int64
    assert sample["input_ids"].tolist() == [100, 101, 102]
    assert sample["attention_mask"].tolist() == [1, 1, 1]
    batches = data.batches(1)
    assert [f["input_ids"].shape for f, _ in batches] == [(1, 3), (1, 3), (1, 5)]
    # Samples 0 and 1 stack; 2 has another sequence length and cannot join them.
    message = assert_data_error("Cannot batch '{}' with '{}'".format(tmp_path / "s2.npz",
                                                                      tmp_path / "s0.npz"),
                                list, data.batches(3))
    assert "[5] in one, [3] in the other" in message


def test_npz_folder_missing_and_unknown_keys_name_the_file(tmp_path):
    np.savez(str(tmp_path / "a.npz"), input_ids=np.zeros(3, np.int64))
    np.savez(str(tmp_path / "b.npz"), input_ids=np.zeros(3, np.int64),
             attention_mask=np.zeros(3, np.int64), token_type_ids=np.zeros(3, np.int64))
    data = open_dataset(tmp_path, TOKENS)
    assert_data_error("'{}' has no array for input(s) 'attention_mask'".format(tmp_path / "a.npz"),
                      data.sample, 0)
    assert_data_error("'{}' holds array(s) 'token_type_ids' that are not model inputs".format(
        tmp_path / "b.npz"), data.sample, 1)


def test_npy_folder_needs_a_one_input_model(tmp_path):
    np.save(str(tmp_path / "a.npy"), np.zeros(3, np.int64))
    assert_data_error(".npy folder '{}' cannot feed a model with 2 inputs".format(tmp_path),
                      open_dataset, tmp_path, TOKENS)


def test_sample_with_wrong_shape_names_the_file(tmp_path):
    np.save(str(tmp_path / "a.npy"), np.zeros((3, 4, 4), np.float32))
    np.save(str(tmp_path / "b.npy"), np.zeros((3, 5, 4), np.float32))
    np.save(str(tmp_path / "c.npy"), np.zeros((4, 4), np.float32))
    np.save(str(tmp_path / "d.npy"), np.zeros((2, 3, 4, 4), np.float32))
    data = open_dataset(tmp_path, [IMAGE])
    message = assert_data_error("'{}' does not fit input 'image': shape [3, 5, 4], expected [3, 4, 4] "
                                "per sample.".format(tmp_path / "b.npy"), data.sample, 1)
    assert "Note: input image: float32[batch, 3, 4, 4]" in message
    assert_data_error("'{}' does not fit input 'image': shape [4, 4]".format(tmp_path / "c.npy"),
                      data.sample, 2)
    assert_data_error("'{}' holds 2 samples for input 'image'".format(tmp_path / "d.npy"),
                      data.sample, 3)
    assert_data_error("'{}' does not fit".format(tmp_path / "b.npy"), list, data.batches(2))


def test_corrupt_tensor_files_are_named(tmp_path):
    np.save(str(tmp_path / "a.npy"), np.zeros((3, 4, 4), np.float32))
    good = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "b.npy").write_bytes(good[:100])
    (tmp_path / "c.npy").write_bytes(b"garbage, not numpy")
    np.save(str(tmp_path / "d.npy"), np.array([object()], dtype=object), allow_pickle=True)
    data = open_dataset(tmp_path, [IMAGE])
    assert data.sample(0)["image"].shape == (3, 4, 4)
    for index, name in [(1, "b.npy"), (2, "c.npy"), (3, "d.npy")]:
        assert_data_error("Cannot read '{}'".format(tmp_path / name), data.sample, index)
    assert_data_error("never unpickles", data.sample, 3)

    npz_dir = tmp_path / "npz"
    npz_dir.mkdir()
    (npz_dir / "x.npz").write_bytes(b"PK\x03\x04 truncated zip")
    data = open_dataset(npz_dir, [IMAGE])
    assert_data_error("Cannot read '{}'".format(npz_dir / "x.npz"), data.sample, 0)
    assert_data_error("Cannot read '{}'".format(npz_dir / "x.npz"), open_dataset,
                      npz_dir / "x.npz", [IMAGE])


# --- the path itself ------------------------------------------------------------------------

def test_missing_path(tmp_path):
    message = assert_data_error("Dataset '{}' does not exist.".format(tmp_path / "nope"),
                                open_dataset, tmp_path / "nope", [IMAGE])
    assert "Note: give a folder of images" in message


def test_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    assert_data_error("Folder '{}' holds no images and no .npy/.npz files.".format(tmp_path),
                      open_dataset, tmp_path, [IMAGE], preprocess=RAW)


def test_folder_mixing_images_and_tensors(tmp_path):
    write_image(tmp_path / "a.png", 1)
    np.save(str(tmp_path / "b.npy"), np.zeros((3, 4, 4), np.float32))
    assert_data_error("Folder '{}' mixes kinds of files: image (a.png), npy (b.npy).".format(tmp_path),
                      open_dataset, tmp_path, [IMAGE], preprocess=RAW)


def test_folder_mixing_npy_and_npz(tmp_path):
    np.save(str(tmp_path / "a.npy"), np.zeros((3, 4, 4), np.float32))
    np.savez(str(tmp_path / "b.npz"), image=np.zeros((3, 4, 4), np.float32))
    assert_data_error("mixes kinds of files: npy (a.npy), npz (b.npz)", open_dataset, tmp_path, [IMAGE])


def test_unsupported_file(tmp_path):
    path = tmp_path / "calib.csv"
    path.write_text("1,2,3\n")
    assert_data_error("Dataset '{}' is neither a folder nor a .npz/.npy file.".format(path),
                      open_dataset, path, [IMAGE])


def test_batch_size_is_checked_when_asked(tmp_path):
    np.save(str(tmp_path / "a.npy"), np.zeros((3, 4, 4), np.float32))
    data = open_dataset(tmp_path, [IMAGE])
    with pytest.raises(UsageError, match="positive int"):
        data.batches(0)
    fixed = open_dataset(tmp_path, [TensorSpec("image", "float32", (1, 3, 4, 4))])
    with pytest.raises(UsageError, match="fixed batch size of 1"):
        fixed.batches(8)
    assert len(list(fixed.batches(1))) == 1
    with pytest.raises(IndexError):
        data.sample(1)


def test_inputs_must_be_given(tmp_path):
    with pytest.raises(UsageError, match="needs the model's inputs"):
        open_dataset(tmp_path, [])


def test_batches_over_chosen_indices(tmp_path):
    for i in range(5):
        np.save(str(tmp_path / "{}.npy".format(i)), np.full((3, 4, 4), i, np.float32))
    (tmp_path / "labels.txt").write_text("".join("{}.npy {}\n".format(i, 10 + i) for i in range(5)))
    data = open_dataset(tmp_path, [IMAGE])
    batches = list(data.batches(2, indices=[4, 0, -1]))
    assert [f["image"][:, 0, 0, 0].tolist() for f, _ in batches] == [[4.0, 0.0], [4.0]]
    assert [labels.tolist() for _, labels in batches] == [[14, 10], [14]]
    assert list(data.batches(2, indices=[])) == []
    with pytest.raises(UsageError, match="Sample 5 is out of range"):
        data.batches(2, indices=[0, 5])

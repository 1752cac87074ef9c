"""Calibration and evaluation data: image folders with labels, .npy and .npz files.

:func:`open_dataset` reads one of these forms:

- **image folder**: files ending in .png .jpg .jpeg .bmp .gif .tif .tiff .webp
  (any case), sorted by name, for a model with one input; needs a
  :class:`~edgeinfer.preprocess.Preprocess`.  Or the ImageFolder layout: one
  subfolder per class, holding that class's images.
- **folder of .npy files** (one-input model) or **.npz files** (keys = input
  names): one sample per file, with or without a leading batch dim of 1.
- **one .npz file**: one array per input, samples stacked along axis 0, and
  optionally a ``labels`` array.
- **one .npy file**: a one-input model's samples stacked along axis 0
  (memory-mapped, so it is not loaded at once).

Labels for folders come from ``labels.csv`` (header ``file,label``) or
``labels.txt`` (``<file> <label>`` per line) in the folder, names relative to
it, or from the class subfolders.  Samples are read one at a time, when asked
for, so a folder of any size streams; only a single .npz is read whole.

This module runs on devices: Python 3.6 syntax, numpy and Pillow only, and it
never unpickles (``allow_pickle=False`` everywhere).
"""

import csv
import os
import posixpath
import re
import zipfile
import zlib

import numpy as np

from .errors import DataError, UsageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TENSOR_EXTENSIONS = (".npy", ".npz")
LABEL_FILES = ("labels.csv", "labels.txt")
LABELS_KEY = "labels"

FORMS_HINT = ("give a folder of images, a folder of .npy/.npz files (one sample each), "
              "or one .npz file with an array per input.")

# What np.load raises for a truncated, corrupt or foreign file.
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError)


def open_dataset(path, inputs, preprocess=None, labels=None):
    """Open calibration or evaluation data for a model.

    Args:
        path: a folder or a .npz/.npy file (str or path-like).
        inputs: the model's inputs, a list of :class:`~edgeinfer.tensors.TensorSpec`.
        preprocess: a :class:`~edgeinfer.preprocess.Preprocess`, needed for image
            folders and ignored otherwise (default None).
        labels: None to find labels in the data (default); the path of a
            labels.csv / labels.txt file for a folder (names relative to the
            folder); or a sequence of ints, one per sample in dataset order.

    Returns:
        A :class:`Dataset`.  Files in a folder are read only when a sample is asked
        for, so a broken file raises then.

    Raises:
        DataError: the data is missing, empty, unreadable or does not fit the inputs.
        UsageError: ``inputs`` is empty or holds a name twice.
    """
    specs = list(inputs)
    if not specs:
        raise UsageError("open_dataset() needs the model's inputs; got none.",
                         "Pass the model's input TensorSpecs.")
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise UsageError("Input names repeat: {}.".format(", ".join(names)),
                         "Each model input needs its own name.")
    where = os.fspath(path)
    if not os.path.exists(where):
        raise DataError("Dataset '{}' does not exist.".format(where), FORMS_HINT)
    if os.path.isdir(where):
        dataset = _open_folder(where, specs, preprocess)
    else:
        ext = os.path.splitext(where)[1].lower()
        if ext == ".npz":
            dataset = _open_npz(where, specs)
        elif ext == ".npy":
            dataset = _open_npy(where, specs)
        else:
            raise DataError("Dataset '{}' is neither a folder nor a .npz/.npy file.".format(where),
                            FORMS_HINT)
    if labels is not None:
        dataset._set_labels(*_explicit_labels(dataset, labels))
    return dataset


class Dataset(object):
    """Samples for a model's inputs, read one at a time.

    Attributes:
        path: the folder or file given to :func:`open_dataset`.
        form: ``"image folder"``, ``"npy folder"``, ``"npz folder"``,
            ``"npz file"`` or ``"npy file"``.
        inputs: the input specs, in the model's order.
        labels: an int64 array with one label per sample, or None.
    """

    form = "dataset"
    unit = "samples"

    def __init__(self, path, inputs):
        self.path = path
        self.inputs = list(inputs)
        self.labels = None
        self.labels_source = None

    @property
    def input_names(self):
        """The input names, in the model's order."""
        return [spec.name for spec in self.inputs]

    def __len__(self):
        raise NotImplementedError

    def sample(self, index):
        """One sample: a dict input name -> array without the batch dim, in the input's dtype.

        Raises:
            IndexError: ``index`` is out of range.
            DataError: the sample cannot be read or does not fit an input.
        """
        count = len(self)
        i = index + count if index < 0 else index
        if not 0 <= i < count:
            raise IndexError("sample {} out of range: {} has {} samples".format(
                index, self.path, count))
        arrays = self._read(i)
        where = self._where(i)
        return {spec.name: fit_sample(arrays[spec.name], spec, where) for spec in self.inputs}

    def batches(self, batch_size=1, drop_last=False, indices=None):
        """Iterate over ``(feeds, labels)`` of up to ``batch_size`` samples each.

        ``feeds`` maps each input name to the samples stacked on a new axis 0;
        ``labels`` is the matching int64 slice, or None without labels.  Only one
        batch is in memory at a time.

        Args:
            batch_size: samples per batch (default 1).
            drop_last: skip a last, smaller batch (default False), e.g. for a
                model whose batch dim is fixed.
            indices: the samples to take, in this order, e.g. a calibration
                subset (default None: all, in dataset order).

        Raises:
            UsageError: ``batch_size`` is not a positive int, or differs from an
                input's fixed batch dim.
            DataError: (while iterating) a sample cannot be read, does not fit, or
                cannot be stacked with the others of its batch.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError("Batch size must be a positive int, got {!r}.".format(batch_size))
        for spec in self.inputs:
            first = spec.shape[0] if len(spec.shape) else None
            if _fixed(first) and first != batch_size:
                raise UsageError(
                    "Input '{}' has a fixed batch size of {}; batch size {} cannot feed it.".format(
                        spec.name, first, batch_size),
                    "Use batch size {} (and drop_last=True for a smaller last batch).".format(first))
        order = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        if order.ndim != 1:
            raise UsageError("indices must be a flat sequence of sample numbers.")
        bad = order[(order < -len(self)) | (order >= len(self))]
        if len(bad):
            raise UsageError("Sample {} is out of range: '{}' has {} samples.".format(
                int(bad[0]), self.path, len(self)))
        order = order % max(len(self), 1)  # negative numbers count from the end
        return self._batches(batch_size, drop_last, order)

    def _batches(self, batch_size, drop_last, order):
        count = len(order)
        stop_at = count - count % batch_size if drop_last else count
        for start in range(0, stop_at, batch_size):
            chunk = order[start:start + batch_size]
            feeds, first_where = None, None
            for row, i in enumerate(chunk):
                i = int(i)
                sample = self.sample(i)
                if feeds is None:
                    first_where = self._where(i)
                    feeds = {name: np.empty((len(chunk),) + array.shape, array.dtype)
                             for name, array in sample.items()}
                for name, array in sample.items():
                    if array.shape != feeds[name].shape[1:]:
                        raise DataError(
                            "Cannot batch {} with {}: input '{}' is {} in one, {} in the other.".format(
                                self._where(i), first_where, name, list(array.shape),
                                list(feeds[name].shape[1:])),
                            "use batch size 1, or give samples of one shape (pad them, or a "
                            "preprocess with resize [height, width] or center_crop).")
                    feeds[name][row] = array
            yield feeds, (None if self.labels is None else self.labels[chunk])

    def describe(self):
        """One line: form, count and where, e.g. ``image folder 'calib': 100 images, labels from labels.csv``."""
        if self.labels is None:
            labels = "no labels"
        else:
            labels = "labels from {}".format(self.labels_source)
        return "{} '{}': {} {} of {}, {}".format(
            self.form, self.path, len(self), self.unit, ", ".join(self.input_names), labels)

    def __repr__(self):
        return "<Dataset {}>".format(self.describe())

    def _set_labels(self, labels, source):
        labels = np.asarray(labels, dtype=np.int64)
        labels.setflags(write=False)
        self.labels = labels
        self.labels_source = source

    def _read(self, index):
        """The raw arrays of sample ``index``: input name -> array without batch dim."""
        raise NotImplementedError

    def _where(self, index):
        """Sample ``index`` in the user's words, for messages: a quoted file name."""
        raise NotImplementedError


class _FileDataset(Dataset):
    """A folder with one sample per file."""

    def __init__(self, path, inputs, files, kind):
        Dataset.__init__(self, path, inputs)
        self.files = files  # paths relative to the folder, with "/"
        self.kind = kind
        self.form = "image folder" if kind == "image" else "{} folder".format(kind)
        self.unit = "images" if kind == "image" else "files"

    def __len__(self):
        return len(self.files)

    def file(self, index):
        """The path of sample ``index``'s file."""
        return os.path.join(self.path, *self.files[index].split("/"))

    def _where(self, index):
        return "'{}'".format(self.file(index))


class _ImageFolder(_FileDataset):

    def __init__(self, path, inputs, files, preprocess):
        _FileDataset.__init__(self, path, inputs, files, "image")
        self.preprocess = preprocess

    def _read(self, index):
        return {self.inputs[0].name: self.preprocess(self.file(index))}


class _TensorFolder(_FileDataset):

    def _read(self, index):
        name = self.file(index)
        loaded = _load_tensor_file(name)
        if self.kind == "npy":
            if isinstance(loaded, dict):
                raise DataError("Cannot read '{}': it is a .npz archive, not a .npy array.".format(name),
                                "Rename it to .npz, and keep one kind of file per folder.")
            arrays = {self.inputs[0].name: loaded}
        else:
            if not isinstance(loaded, dict):
                raise DataError("Cannot read '{}': it is a .npy array, not a .npz archive.".format(name),
                                "Rename it to .npy, and keep one kind of file per folder.")
            _check_keys(loaded, self.inputs, name, allow_labels=False)
            arrays = loaded
        return {spec.name: _one_sample(arrays[spec.name], spec, name) for spec in self.inputs}


class _Stacked(Dataset):
    """Arrays with samples stacked along axis 0 (one .npz, or one memory-mapped .npy)."""

    def __init__(self, path, inputs, arrays, form):
        Dataset.__init__(self, path, inputs)
        self.arrays = arrays
        self.form = form
        self._count = len(arrays[inputs[0].name])

    def __len__(self):
        return self._count

    def _read(self, index):
        # np.array copies: a sample must not keep a memory-mapped file alive or writable.
        return {name: np.array(array[index]) for name, array in self.arrays.items()}

    def _where(self, index):
        return "sample {} of '{}'".format(index, self.path)


def fit_sample(array, spec, where):
    """Check one sample (no batch dim) against ``spec`` and cast it to the spec's dtype.

    Fixed dims must match, symbolic dims take any size, and the first dim of the
    spec is the batch dim.  Ints and floats are cast to a float input; ints to a
    narrower int only when the values fit; floats are never cast to an int input.

    Args:
        array: the sample.
        spec: the input's :class:`~edgeinfer.tensors.TensorSpec`.
        where: the sample in the user's words, e.g. ``"'calib/0.npy'"``.

    Raises:
        DataError: the shape or dtype does not fit.
    """
    array = np.asarray(array)
    _check_shape(array.shape, spec, where)
    return _cast(array, spec, where)


def _check_shape(shape, spec, where):
    expected = tuple(spec.shape)[1:]
    if len(shape) != len(expected) or not all(
            not _fixed(dim) or dim == size for dim, size in zip(expected, shape)):
        raise DataError(
            _capital("{} does not fit input '{}': shape {}, expected {} per sample.".format(
                where, spec.name, list(shape), _dims(expected))),
            "input {} (the first dim is the batch); a file may hold one sample with or "
            "without a batch dim of 1.".format(_describe(spec)))


def _cast(array, spec, where):
    target = np.dtype(spec.dtype)
    if array.dtype == target:
        return array
    source = array.dtype.kind
    _check_kind(array.dtype, spec, where)
    if target.kind in "iu" and not np.can_cast(array.dtype, target) and array.size:
        info = np.iinfo(target)
        low, high = int(array.min()), int(array.max())
        if low < info.min or high > info.max:
            raise DataError(
                _capital("{} holds values {}..{} that do not fit input '{}' ({}).".format(
                    where, low, high, spec.name, spec.dtype)),
                "give values in {}..{}.".format(info.min, info.max))
    if target.kind == "b" and source != "b" and array.size and not np.isin(array, (0, 1)).all():
        raise DataError(
            _capital("{} holds values other than 0 and 1 for bool input '{}'.".format(where, spec.name)),
            "give a bool array, or 0/1 values.")
    return array.astype(target)


def _check_kind(dtype, spec, where):
    """Refuse a source dtype that cannot be cast to the input's dtype without loss of meaning."""
    target = np.dtype(spec.dtype)
    source = np.dtype(dtype).kind
    if target.kind == "f":
        allowed = "biuf"
    elif target.kind in "iub":
        allowed = "biu"
    else:
        allowed = ""
    if source not in allowed and np.dtype(dtype) != target:
        hint = ("give {} values; edgeinfer does not round floats into integers.".format(spec.dtype)
                if source == "f" else "give {} values.".format(spec.dtype))
        raise DataError(
            _capital("{} holds {} values but input '{}' takes {}.".format(
                where, np.dtype(dtype).name, spec.name, spec.dtype)), hint)


def _one_sample(array, spec, name):
    """A per-file array: strip a leading batch dim of 1 when the rank says there is one."""
    if array.ndim == len(spec.shape) and array.ndim > 0:
        if array.shape[0] != 1:
            raise DataError(
                "'{}' holds {} samples for input '{}' (shape {}); one file holds one sample.".format(
                    name, array.shape[0], spec.name, list(array.shape)),
                "save one sample per file, or stack all samples in one .npz file.")
        return array[0]
    return array


def _open_folder(folder, specs, preprocess):
    files, kind, classes = _scan_folder(folder)
    if kind == "image":
        if len(specs) != 1:
            raise DataError(
                "Image folder '{}' cannot feed a model with {} inputs ({}).".format(
                    folder, len(specs), ", ".join(s.name for s in specs)),
                "give a folder of .npz files (one sample each) or one .npz file, with an array "
                "per input.")
        if preprocess is None:
            raise DataError("Image folder '{}' needs a preprocessing recipe.".format(folder),
                            "give one (color, resize, scale, mean, std, layout), or give "
                            ".npy/.npz tensors instead of images.")
        _check_preprocess(preprocess, specs[0], folder)
        dataset = _ImageFolder(folder, specs, files, preprocess)
    else:
        if kind == "npy" and len(specs) != 1:
            raise DataError(
                ".npy folder '{}' cannot feed a model with {} inputs ({}).".format(
                    folder, len(specs), ", ".join(s.name for s in specs)),
                "save each sample as a .npz file with one array per input name.")
        dataset = _TensorFolder(folder, specs, files, kind)
    label_file = _find_label_file(folder)
    if label_file is not None:
        dataset._set_labels(_labels_from_file(label_file, folder, files),
                            os.path.basename(label_file))
    elif classes is not None:
        dataset._set_labels(_labels_from_classes(files, classes),
                            "{} class subfolders".format(len(classes)))
    return dataset


def _scan_folder(folder):
    """Find the data files: (relative paths, kind, class names or None)."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise DataError("Cannot list folder '{}': {}.".format(folder, exc.strerror or exc),
                        "check the path and its permissions.")
    top, subfolders = [], []
    for name in names:
        if name.startswith("."):
            continue
        if os.path.isdir(os.path.join(folder, name)):
            subfolders.append(name)
        elif _kind(name) is not None:
            top.append(name)
    nested = [(sub, _walk(folder, sub)) for sub in subfolders]
    nested_files = [rel for _, found in nested for rel in found]
    if top and nested_files:
        raise DataError(
            "Folder '{}' holds data files both at the top ({}) and in subfolders ({}).".format(
                folder, top[0], nested_files[0]),
            "use one layout: all files at the top, or one subfolder per class.")
    if not top and not nested_files:
        raise DataError("Folder '{}' holds no images and no .npy/.npz files.".format(folder),
                        FORMS_HINT)
    classes = None
    files = top
    if nested_files:
        empty = [sub for sub, found in nested if not found]
        if empty:
            raise DataError(
                "Class folder(s) {} in '{}' hold no data files.".format(
                    ", ".join("'{}'".format(e) for e in empty), folder),
                "every subfolder is a class (ImageFolder layout): fill it or remove it.")
        classes = subfolders
        files = nested_files
    examples = {}
    for rel in files:
        examples.setdefault(_kind(rel), rel)
    if len(examples) > 1:
        found = ", ".join("{} ({})".format(k, examples[k]) for k in sorted(examples))
        raise DataError("Folder '{}' mixes kinds of files: {}.".format(folder, found),
                        "keep one kind per folder: images, .npy files or .npz files.")
    return files, next(iter(examples)), classes


def _walk(folder, sub):
    found = []
    for root, dirs, names in os.walk(os.path.join(folder, sub)):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_root = os.path.relpath(root, folder).replace(os.sep, "/")
        found.extend(rel_root + "/" + name for name in names
                     if not name.startswith(".") and _kind(name) is not None)
    return sorted(found)


def _kind(name):
    ext = os.path.splitext(name)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in TENSOR_EXTENSIONS:
        return ext[1:]
    return None


def _labels_from_classes(files, classes):
    # Integer names ("0", "7", ...) are the labels themselves; other names label by sorted index.
    if all(re.match(r"[0-9]+\Z", name) for name in classes):
        index = {name: int(name) for name in classes}
    else:
        index = {name: i for i, name in enumerate(sorted(classes))}
    return [index[rel.split("/", 1)[0]] for rel in files]


def _find_label_file(folder):
    found = [os.path.join(folder, name) for name in LABEL_FILES
             if os.path.isfile(os.path.join(folder, name))]
    if len(found) > 1:
        raise DataError("Folder '{}' has both labels.csv and labels.txt.".format(folder),
                        "keep one of them.")
    return found[0] if found else None


def _labels_from_file(label_file, folder, files):
    """Match a label file's entries to the folder's data files, refusing gaps both ways."""
    table = _read_label_file(label_file)
    present = set(files)
    unknown = [name for name in table if name not in present]
    if unknown:
        raise DataError(
            "'{}' names {} file(s) that are not data files in '{}': {}.".format(
                label_file, len(unknown), folder, _some(unknown)),
            "names are relative to the folder; remove those lines or add the files.")
    unlabelled = [rel for rel in files if rel not in table]
    if unlabelled:
        raise DataError(
            "{} file(s) in '{}' have no label in '{}': {}.".format(
                len(unlabelled), folder, label_file, _some(unlabelled)),
            "give every file a label, or remove the label file to go without labels.")
    return [table[rel] for rel in files]


def _read_label_file(label_file):
    """Parse labels.csv (header file,label) or labels.txt (<file> <label>): {name: int}."""
    rows = []
    try:
        # utf-8-sig: spreadsheets write a byte order mark.
        with open(label_file, newline="", encoding="utf-8-sig") as stream:
            if label_file.lower().endswith(".csv"):
                reader = csv.reader(stream)
                header = None
                for cells in reader:
                    if not cells or not "".join(cells).strip():
                        continue
                    cells = [c.strip() for c in cells]
                    if header is None:
                        header = [c.lower() for c in cells]
                        if header != ["file", "label"]:
                            raise DataError(
                                "'{}' starts with {}, not the header file,label.".format(
                                    label_file, ",".join(cells)),
                                "make the first line `file,label`.")
                        continue
                    if len(cells) != 2:
                        raise DataError("'{}' line {}: expected file,label, got {!r}.".format(
                            label_file, reader.line_num, ",".join(cells)),
                            "write one `file,label` pair per line.")
                    rows.append((reader.line_num, cells[0], cells[1]))
            else:
                for number, line in enumerate(stream, 1):
                    line = line.strip()
                    if not line or line.startswith("#"):
                        continue
                    parts = line.rsplit(None, 1)
                    if len(parts) != 2:
                        raise DataError("'{}' line {}: expected <file> <label>, got {!r}.".format(
                            label_file, number, line), "write one `file label` pair per line.")
                    rows.append((number, parts[0], parts[1]))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError("Cannot read label file '{}': {}.".format(label_file, exc),
                        "give a UTF-8 text file.")
    table = {}
    for number, name, label in rows:
        if not re.match(r"[-+]?[0-9]+\Z", label):
            raise DataError("'{}' line {}: label {!r} of '{}' is not an integer.".format(
                label_file, number, label, name), "labels are class indices: 0, 1, 2 ...")
        key = posixpath.normpath(name.replace("\\", "/"))
        if key in table:
            raise DataError("'{}' line {}: '{}' is labelled twice.".format(label_file, number, name),
                            "give each file one label.")
        table[key] = int(label)
    return table


def _explicit_labels(dataset, labels):
    """Labels passed to open_dataset(): a label file's path or one int per sample."""
    if isinstance(labels, (str, bytes, os.PathLike)):
        label_file = os.fsdecode(labels)
        if not isinstance(dataset, _FileDataset):
            raise DataError(
                "Label file '{}' names files, but '{}' is one file of stacked samples.".format(
                    label_file, dataset.path),
                "put a 'labels' array in the .npz, or pass the labels as a list of ints.")
        if not os.path.isfile(label_file):
            raise DataError("Label file '{}' does not exist.".format(label_file),
                            "give a labels.csv (file,label) or labels.txt (<file> <label>).")
        return (_labels_from_file(label_file, dataset.path, dataset.files),
                os.path.basename(label_file))
    try:
        values = np.asarray(labels)
    except (TypeError, ValueError):
        values = np.asarray([], dtype=object)
    if values.ndim != 1 or values.dtype.kind not in "iu":
        got = type(labels).__name__ if values.dtype.kind == "O" else "{} of {}".format(
            type(labels).__name__, values.dtype.name)
        raise DataError("Labels must be a sequence of ints, got {}.".format(got),
                        "give one integer class index per sample, or a labels file.")
    if len(values) != len(dataset):
        raise DataError("{} labels given for {} samples in '{}'.".format(
            len(values), len(dataset), dataset.path), "give one label per sample.")
    return values, "the labels given"


def _open_npz(path, specs):
    loaded = _load_tensor_file(path)
    if not isinstance(loaded, dict):
        raise DataError("'{}' holds a single .npy array, not a .npz archive.".format(path),
                        "save it with numpy.savez(path, {}=...) or rename it to .npy.".format(
                            specs[0].name))
    labels_is_input = any(spec.name == LABELS_KEY for spec in specs)
    _check_keys(loaded, specs, path, allow_labels=not labels_is_input)
    arrays = {spec.name: loaded[spec.name] for spec in specs}
    _check_stacked(path, specs, arrays)
    dataset = _Stacked(path, specs, arrays, "npz file")
    if LABELS_KEY in loaded and not labels_is_input:
        labels = loaded[LABELS_KEY]
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise DataError("'{}': 'labels' is {}{}, not one integer per sample.".format(
                path, labels.dtype.name, list(labels.shape)), "save labels as an int array of shape [N].")
        if len(labels) != len(dataset):
            raise DataError("'{}' has {} labels for {} samples.".format(
                path, len(labels), len(dataset)), "give one label per sample.")
        dataset._set_labels(labels, "'labels' in the .npz")
    return dataset


def _open_npy(path, specs):
    if len(specs) != 1:
        raise DataError(
            "'{}' is one array, but the model has {} inputs ({}).".format(
                path, len(specs), ", ".join(s.name for s in specs)),
            "give a .npz file with one array per input.")
    try:
        # Memory-mapped: a large calibration array is paged in one sample at a time.
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except _READ_ERRORS as exc:
        raise DataError("Cannot read '{}': {}.".format(path, _reason(exc)), FORMS_HINT) from exc
    if not isinstance(array, np.ndarray):
        array.close()
        raise DataError("'{}' is a .npz archive, not a .npy array.".format(path),
                        "rename it to .npz.")
    arrays = {specs[0].name: array}
    _check_stacked(path, specs, arrays)
    return _Stacked(path, specs, arrays, "npy file")


def _check_stacked(path, specs, arrays):
    counts = {}
    for spec in specs:
        array = arrays[spec.name]
        if array.ndim != len(spec.shape) or array.ndim == 0:
            raise DataError(
                "'{}': array '{}' has shape {}, expected {} with samples along axis 0.".format(
                    path, spec.name, list(array.shape), _dims(spec.shape)),
                "input {}; stack the samples on a first axis.".format(_describe(spec)))
        _check_shape(array.shape[1:], spec, "samples of '{}' in '{}'".format(spec.name, path))
        _check_kind(array.dtype, spec, "'{}' array '{}'".format(path, spec.name))
        counts[spec.name] = array.shape[0]
    if len(set(counts.values())) > 1:
        raise DataError("'{}' holds different numbers of samples per input: {}.".format(
            path, ", ".join("{} {}".format(k, v) for k, v in counts.items())),
            "stack the same number of samples for every input.")
    if not next(iter(counts.values())):
        raise DataError("'{}' holds no samples.".format(path), "stack at least one sample.")


def _check_keys(arrays, specs, where, allow_labels):
    names = [spec.name for spec in specs]
    extra = [key for key in arrays if key not in names and not (allow_labels and key == LABELS_KEY)]
    expected = "one array per input: {}{}.".format(
        ", ".join(names), " (and optionally 'labels')" if allow_labels else "")
    if extra:
        raise DataError("'{}' holds array(s) {} that are not model inputs.".format(
            where, ", ".join("'{}'".format(k) for k in extra)), "expected " + expected)
    missing = [name for name in names if name not in arrays]
    if missing:
        raise DataError("'{}' has no array for input(s) {}.".format(
            where, ", ".join("'{}'".format(k) for k in missing)), "expected " + expected)


def _load_tensor_file(name):
    """Read a whole .npy (-> array) or .npz (-> dict of arrays), never unpickling."""
    try:
        loaded = np.load(name, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return loaded
        with loaded:
            return {key: loaded[key] for key in loaded.files}
    except _READ_ERRORS as exc:
        raise DataError("Cannot read '{}': {}.".format(name, _reason(exc)),
                        "give a .npy or .npz file saved with numpy (no pickled objects).") from exc


def _reason(exc):
    text = str(exc).rstrip(".")
    if "pickle" in text.lower():
        return "not a numpy .npy/.npz file, or it holds Python objects (edgeinfer never unpickles)"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, zipfile.BadZipFile):
        return "corrupt .npz archive ({})".format(text)
    return text or type(exc).__name__


def _check_preprocess(preprocess, spec, folder):
    """Refuse, before reading any image, a recipe whose samples cannot fit the input."""
    expected = tuple(spec.shape)[1:]
    shape = preprocess.expected_shape()
    if shape is None:
        c = preprocess.channels
        shape = (c, None, None) if preprocess.layout == "NCHW" else (None, None, c)
    shown = [("?" if d is None else d) for d in shape]
    if len(expected) != 3 or not all(
            d is None or not _fixed(e) or d == e for d, e in zip(shape, expected)):
        raise DataError(
            "Images from '{}' would be {} ({} {}) but input '{}' takes {} per sample.".format(
                folder, shown, preprocess.layout, preprocess.color, spec.name, _dims(expected)),
            "set the preprocess color, layout and resize/center_crop to fit input {}.".format(
                _describe(spec)))
    _check_kind(preprocess.dtype, spec, "the preprocess for '{}'".format(folder))


def _fixed(dim):
    return isinstance(dim, int) and not isinstance(dim, bool) and dim > 0


def _dims(shape):
    return "[{}]".format(", ".join("?" if d is None else str(d) for d in shape))


def _describe(spec):
    return "{}: {}{}".format(spec.name, spec.dtype, _dims(spec.shape))


def _some(names, limit=5):
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else "{} and {} more".format(shown, len(names) - limit)


def _capital(text):
    return text[:1].upper() + text[1:]

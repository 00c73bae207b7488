"""MiniImageNet (Vinyals et al., 2016) with the Ravi & Larochelle (2017) split.

The images cannot be downloaded automatically (they are ImageNet images, under
ImageNet's terms of use). The user provides, under `<data_dir>/miniimagenet/`:
  * `train.csv`, `val.csv`, `test.csv`: the Ravi & Larochelle split files,
    header `filename,label`, 64 / 16 / 20 classes x 600 rows, from
    `CSV_SOURCE`;
  * `images/`: the JPEGs named in them (`nXXXXXXXX0000NNNN.jpg`), e.g. as made
    by the usual mini-ImageNet tools from the ILSVRC-2012 training images.

Each split is decoded once (RGB; resized to `image_size` with PIL BILINEAR,
which is antialiased when shrinking, and skipped when an image already has the
target size, as the common pre-resized 84x84 copies do) into
`<cache_dir>/miniimagenet_<split>_<S>.npz` with `images` uint8
`[C, per_class, S, S, 3]` and `class_names` (WordNet ids). Classes are in
order of first appearance in the CSV, images in CSV order. Every class must
have the same number of rows (600 in the real CSVs).
"""

import csv
import os
import zipfile
import zlib

import numpy as np
from absl import logging
from PIL import Image

from tf_rmaml.data.download import check_image_size, write_npz_atomic
from tf_rmaml.data.errors import DataError

SPLITS = ("train", "val", "test")
DEFAULT_IMAGE_SIZE = 84
CSV_SOURCE = ("https://github.com/twitter/meta-learning-lstm/tree/master/"
              "data/miniImagenet")
_RESAMPLE = Image.Resampling.BILINEAR


def dataset_dir(data_dir):
    return os.path.join(os.fspath(data_dir), "miniimagenet")


def images_dir(data_dir):
    return os.path.join(dataset_dir(data_dir), "images")


def csv_path(data_dir, split):
    return os.path.join(dataset_dir(data_dir), f"{split}.csv")


def cache_path(cache_dir, split, image_size=DEFAULT_IMAGE_SIZE):
    return os.path.join(os.fspath(cache_dir),
                        f"miniimagenet_{split}_{int(image_size)}.npz")


def how_to_get(data_dir):
    """Where the user must put which files (no automatic download exists)."""
    root = dataset_dir(data_dir)
    return (
        "MiniImageNet cannot be downloaded automatically (its images are "
        "ImageNet images, under ImageNet's terms of use). Put under "
        f"{root}/:\n"
        f"  {root}/train.csv, val.csv, test.csv: the Ravi & Larochelle split "
        f"files (header `filename,label`), from {CSV_SOURCE};\n"
        f"  {root}/images/: the JPEG files named in them (e.g. "
        "n0153282900000005.jpg), made from the ILSVRC-2012 training images "
        "with a mini-ImageNet tool.")


def read_csv(path):
    """Returns [(filename, label)] from a `filename,label` CSV."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"filename", "label"} <= set(
                    reader.fieldnames):
                raise DataError(
                    f"{path} must have the header `filename,label` (the Ravi "
                    f"& Larochelle format, {CSV_SOURCE}); it has "
                    f"{reader.fieldnames}.")
            rows = [(r["filename"].strip(), r["label"].strip())
                    for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"Cannot read {path} ({type(e).__name__}: {e}). "
                        f"Replace it with the file from {CSV_SOURCE}.") from e
    if not rows or any(not name or not label for name, label in rows):
        raise DataError(f"{path} has no rows or empty fields. Replace it with "
                        f"the file from {CSV_SOURCE}.")
    return rows


def check_inputs(data_dir, splits=SPLITS):
    """Checks CSVs and images of `splits`; returns {split: rows}.

    Raises:
      DataError: one error listing everything that is missing, with
        `how_to_get`.
    """
    problems = []
    rows = {}
    for split in splits:
        path = csv_path(data_dir, split)
        if os.path.isfile(path):
            rows[split] = read_csv(path)
        else:
            problems.append(f"missing {path}")
    image_root = images_dir(data_dir)
    if not os.path.isdir(image_root):
        problems.append(f"missing folder {image_root}/")
    else:
        for split, split_rows in rows.items():
            absent = [f for f, _ in split_rows
                      if not os.path.isfile(os.path.join(image_root, f))]
            if absent:
                problems.append(
                    f"{len(absent)} of the {len(split_rows)} images of "
                    f"{split}.csv are not in {image_root}/ (first: "
                    f"{', '.join(absent[:3])})")
    if problems:
        raise DataError("MiniImageNet data is incomplete: "
                        + "; ".join(problems) + ".\n" + how_to_get(data_dir))
    return rows


def _group(rows, source):
    """[(filename, label)] -> (class names, [[filenames] per class])."""
    groups = {}
    for filename, label in rows:
        groups.setdefault(label, []).append(filename)
    sizes = {label: len(files) for label, files in groups.items()}
    if len(set(sizes.values())) != 1:
        raise DataError(
            f"{source}: every class needs the same number of images, got "
            f"between {min(sizes.values())} and {max(sizes.values())}. Use the "
            f"unmodified Ravi & Larochelle CSVs from {CSV_SOURCE}.")
    return tuple(groups), list(groups.values())


def _decode(path, image_size):
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), _RESAMPLE)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(
            f"MiniImageNet image {path} does not decode ({type(e).__name__}: "
            f"{e}). Replace it with a good copy.") from e


def _check_size(image_size):
    return check_image_size(image_size, "MiniImageNet", DEFAULT_IMAGE_SIZE)


def prepare_split(data_dir, cache_dir, split, image_size=DEFAULT_IMAGE_SIZE):
    """Builds `<cache_dir>/miniimagenet_<split>_<S>.npz` unless it exists.

    Returns:
      The cache path.
    """
    if split not in SPLITS:
        raise DataError(f"split={split!r} is unknown; choose one of {SPLITS}.")
    image_size = _check_size(image_size)
    path = cache_path(cache_dir, split, image_size)
    if os.path.isfile(path):
        logging.info("Using MiniImageNet cache %s", path)
        return path
    rows = check_inputs(data_dir, (split,))[split]
    class_names, files = _group(rows, csv_path(data_dir, split))
    root = images_dir(data_dir)
    images = np.empty((len(class_names), len(files[0]), image_size,
                       image_size, 3), np.uint8)
    logging.info("Decoding MiniImageNet %s: %d classes x %d images at %dx%d",
                 split, images.shape[0], images.shape[1], image_size,
                 image_size)
    for c, class_files in enumerate(files):
        for i, filename in enumerate(class_files):
            images[c, i] = _decode(os.path.join(root, filename), image_size)
        logging.log_every_n_seconds(
            logging.INFO, "MiniImageNet %s: decoded %d / %d classes", 10,
            split, c + 1, len(files))
    # Photos barely compress; plain npz keeps writing and loading fast.
    write_npz_atomic(path, {"images": images,
                            "class_names": np.array(class_names)},
                     compress=False)
    logging.info("Wrote MiniImageNet cache %s", path)
    return path


def load_split(data_dir, cache_dir, split, image_size=DEFAULT_IMAGE_SIZE):
    """Loads one split as (images uint8 `[C, per_class, S, S, 3]`, names).

    Example:
      images, wnids = load_split("/data", "/cache", "val")  # (16, 600, 84,..)
    """
    path = prepare_split(data_dir, cache_dir, split, image_size)
    size = _check_size(image_size)
    try:
        with np.load(path, allow_pickle=False) as f:
            images = f["images"]
            class_names = tuple(str(n) for n in f["class_names"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile,
            zlib.error) as e:
        raise DataError(
            f"MiniImageNet cache {path} is unreadable ({type(e).__name__}: "
            f"{e}). Delete it; it is rebuilt on the next run.") from e
    if (images.dtype != np.uint8 or images.ndim != 5 or
            images.shape[2:] != (size, size, 3) or
            images.shape[0] != len(class_names)):
        raise DataError(
            f"MiniImageNet cache {path} has unexpected contents ({images.dtype}"
            f" {images.shape}). Delete it; it is rebuilt on the next run.")
    return images, class_names

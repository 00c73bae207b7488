"""CIFAR-FS (Bertinetto et al., 2019): CIFAR-100 split 64 / 16 / 20 classes.

Prepared files, under `<data_dir>/cifar_fs/`, one per split:
`cifar_fs_{train,val,test}.npz` with
  * `images`: uint8 `[N, 32, 32, 3]` RGB,
  * `labels`: int64 `[N]` in `0..C-1`, an index into `class_names`,
  * `fine_labels`: int64 `[N]`, the CIFAR-100 fine class id,
  * `coarse_labels`: int64 `[N]`, the CIFAR-100 superclass id,
  * `class_names`: str `[C]`, in the order of
    `tf_rmaml/data/splits/cifar_fs_<split>.txt`.
Rows are grouped by label (label 0 first); within a class, CIFAR-100's
`train` images come first, then its `test` images, each in file order
(500 + 100 = 600 per class).

They are built from the official `cifar-100-python.tar.gz` (downloaded to the
same folder) without extracting it and without unpickling arbitrary objects:
`RestrictedUnpickler` only lets through what numpy arrays need.
"""

import importlib.resources
import io
import os
import pickle
import tarfile
import zlib

import numpy as np
from absl import logging

from tf_rmaml.data.download import download as download_file
from tf_rmaml.data.download import write_npz_atomic
from tf_rmaml.data.errors import DataError

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
ARCHIVE_NAME = "cifar-100-python.tar.gz"
SPLITS = ("train", "val", "test")
IMAGE_SHAPE = (32, 32, 3)
NUM_FINE_CLASSES = 100

# (module, name) globals a pickle of plain numpy arrays may reference.
_ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
})


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that refuses every global but numpy array builders.

    CIFAR-100 ships python-2 pickles of dicts holding numpy arrays, lists of
    ints and byte strings. Those need only the globals in `_ALLOWED_GLOBALS`;
    any other (e.g. `os.system`) is refused with a DataError, so a tampered
    archive cannot run code.
    """

    def __init__(self, file, source="<pickle>", **kwargs):
        super().__init__(file, **kwargs)
        self._source = source

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise DataError(
            f"Refusing to unpickle the global '{module}.{name}' in "
            f"{self._source}: CIFAR-100 pickles only hold numpy arrays, so "
            "this file is not the official one. Delete it and download it "
            f"again from {URL}.")


def safe_load_pickle(data, source="<pickle>"):
    """Unpickles python-2 CIFAR bytes with `RestrictedUnpickler`.

    Byte strings stay bytes (`encoding="bytes"`), so dict keys are `b"data"`
    etc., as with the loader on the CIFAR web page.
    """
    return RestrictedUnpickler(io.BytesIO(data), source=source,
                               encoding="bytes").load()


def split_class_names(split):
    """The CIFAR-100 fine class names of a CIFAR-FS split, in file order."""
    if split not in SPLITS:
        raise DataError(f"split={split!r} is unknown; choose one of {SPLITS}.")
    resource = importlib.resources.files("tf_rmaml.data").joinpath(
        "splits", f"cifar_fs_{split}.txt")
    lines = resource.read_text(encoding="utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip())


def dataset_dir(data_dir):
    return os.path.join(os.fspath(data_dir), "cifar_fs")


def archive_path(data_dir):
    return os.path.join(dataset_dir(data_dir), ARCHIVE_NAME)


def npz_path(data_dir, split):
    return os.path.join(dataset_dir(data_dir), f"cifar_fs_{split}.npz")


def has_npz(data_dir):
    return all(os.path.isfile(npz_path(data_dir, s)) for s in SPLITS)


def missing_message(data_dir):
    return (f"CIFAR-FS data not found in {dataset_dir(data_dir)}/: expected "
            "cifar_fs_train.npz, cifar_fs_val.npz and cifar_fs_test.npz, or "
            f"the CIFAR-100 archive {archive_path(data_dir)} (from {URL}) to "
            "build them from. Run `rmaml-data download --dataset=cifar_fs "
            f"--data_dir={data_dir}` (or pass download=True), or download "
            "the archive by hand and put it at that path.")


def _as_str(x):
    return x.decode("latin1") if isinstance(x, bytes) else str(x)


def _str_keys(d, source):
    if not isinstance(d, dict):
        raise DataError(f"{source} does not hold a dict; the archive is not "
                        f"the official CIFAR-100 one. Delete it and download "
                        f"it again from {URL}.")
    return {_as_str(k): v for k, v in d.items()}


def read_cifar100(path):
    """Reads the official python-version archive without extracting it.

    Returns:
      dict with "train" and "test" -> (images uint8 `[N, 32, 32, 3]`,
      fine int64 `[N]`, coarse int64 `[N]`), and "fine_label_names",
      "coarse_label_names" -> lists of str.

    Raises:
      DataError: unreadable archive, missing members, refused pickle globals
        or malformed arrays; the message names the file.
    """
    def bad(what, err=None):
        detail = f" ({type(err).__name__}: {err})" if err else ""
        return DataError(
            f"CIFAR-100 archive {path} is corrupt or not the official one: "
            f"{what}{detail}. Delete it and download it again from {URL} "
            "(`rmaml-data download --dataset=cifar_fs --data_dir=...`).")

    members = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for info in tar:
                base = info.name.rstrip("/").split("/")[-1]
                if info.isfile() and base in ("train", "test", "meta"):
                    members[base] = tar.extractfile(info).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise bad("cannot read the tar.gz", e) from e
    missing = [m for m in ("train", "test", "meta") if m not in members]
    if missing:
        raise bad(f"members {missing} are missing")

    out = {}
    try:
        meta = _str_keys(safe_load_pickle(members["meta"], f"{path}:meta"),
                         f"{path}:meta")
        out["fine_label_names"] = [_as_str(n)
                                   for n in meta["fine_label_names"]]
        out["coarse_label_names"] = [_as_str(n)
                                     for n in meta["coarse_label_names"]]
        for part in ("train", "test"):
            source = f"{path}:{part}"
            d = _str_keys(safe_load_pickle(members[part], source), source)
            data = np.asarray(d["data"])
            fine = np.asarray(d["fine_labels"], dtype=np.int64)
            coarse = np.asarray(d["coarse_labels"], dtype=np.int64)
            if (data.dtype != np.uint8 or data.ndim != 2 or
                    data.shape[1] != 3072 or fine.shape != (len(data),) or
                    coarse.shape != (len(data),)):
                raise bad(f"'{part}' has data {data.dtype} {data.shape}, "
                          f"{fine.shape[0]} fine labels, {coarse.shape[0]} "
                          "coarse labels (expected uint8 [N, 3072] and N "
                          "labels)")
            # Rows are channel-major (1024 R, 1024 G, 1024 B), row-major.
            images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            out[part] = (np.ascontiguousarray(images), fine, coarse)
    except DataError:
        raise
    except (pickle.UnpicklingError, KeyError, ValueError, TypeError,
            EOFError, AttributeError, IndexError) as e:
        raise bad("cannot unpickle its contents", e) from e
    if len(out["fine_label_names"]) != NUM_FINE_CLASSES:
        raise bad(f"meta has {len(out['fine_label_names'])} fine class "
                  f"names, expected {NUM_FINE_CLASSES}")
    return out


def build(archive, out_dir):
    """Writes `cifar_fs_{train,val,test}.npz` into `out_dir` from the archive.

    Each file is written atomically. Returns the list of written paths.
    """
    cifar = read_cifar100(archive)
    name_to_id = {n: i for i, n in enumerate(cifar["fine_label_names"])}
    images = np.concatenate([cifar["train"][0], cifar["test"][0]])
    fine = np.concatenate([cifar["train"][1], cifar["test"][1]])
    coarse = np.concatenate([cifar["train"][2], cifar["test"][2]])
    paths = []
    for split in SPLITS:
        class_names = split_class_names(split)
        unknown = [n for n in class_names if n not in name_to_id]
        if unknown:
            raise DataError(
                f"CIFAR-FS {split} classes {unknown} are not CIFAR-100 class "
                f"names in {archive}; the archive is not the official one. "
                f"Delete it and download it again from {URL}.")
        # Stable per-class selection keeps train-then-test file order.
        rows = [np.flatnonzero(fine == name_to_id[n]) for n in class_names]
        labels = np.concatenate([np.full(len(r), i, np.int64)
                                 for i, r in enumerate(rows)])
        rows = np.concatenate(rows)
        path = os.path.join(os.fspath(out_dir), f"cifar_fs_{split}.npz")
        write_npz_atomic(path, {
            "images": images[rows],
            "labels": labels,
            "fine_labels": fine[rows],
            "coarse_labels": coarse[rows],
            "class_names": np.array(class_names),
        })
        logging.info("Wrote %s: %d classes, %d images", path,
                     len(class_names), len(rows))
        paths.append(path)
    return paths


def prepare(data_dir, download=False):
    """Makes sure the three CIFAR-FS npz files exist in `<data_dir>/cifar_fs/`.

    Uses them if present; otherwise builds them from the local archive,
    downloading it first if `download` is True.

    Returns:
      The three npz paths (train, val, test).
    """
    if not has_npz(data_dir):
        archive = archive_path(data_dir)
        if not os.path.isfile(archive):
            if not download:
                raise DataError(missing_message(data_dir))
            download_file(URL, archive, md5=MD5)
        build(archive, dataset_dir(data_dir))
    return [npz_path(data_dir, s) for s in SPLITS]


def load_split(data_dir, split, download=False):
    """Loads one CIFAR-FS split grouped by class.

    Returns:
      (images uint8 `[C, per_class, 32, 32, 3]` ordered by label, images in
      file order; tuple of C class names).

    Example:
      images, names = load_split("/data", "train")  # (64, 600, 32, 32, 3)
    """
    if split not in SPLITS:
        raise DataError(f"split={split!r} is unknown; choose one of {SPLITS}.")
    prepare(data_dir, download)
    path = npz_path(data_dir, split)
    try:
        with np.load(path, allow_pickle=False) as f:
            images = f["images"]
            labels = f["labels"]
            class_names = tuple(str(n) for n in f["class_names"])
    except (OSError, ValueError, KeyError, EOFError, zlib.error) as e:
        raise DataError(
            f"CIFAR-FS file {path} is unreadable ({type(e).__name__}: {e}). "
            "Delete it; it is rebuilt from cifar-100-python.tar.gz (`rmaml-"
            "data prepare --dataset=cifar_fs --data_dir=...`).") from e
    return group_by_label(images, labels, class_names, path)


def group_by_label(images, labels, class_names, source):
    """`[N, ...]` + labels -> `[C, N / C, ...]`, sorted by label, stable."""
    num_classes = len(class_names)
    if (images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE or
            labels.shape != (len(images),)):
        raise DataError(
            f"CIFAR-FS file {source} has images {images.dtype} "
            f"{images.shape} and labels {labels.shape}; expected uint8 "
            f"[N, 32, 32, 3] and [N]. Delete it and run `rmaml-data prepare "
            "--dataset=cifar_fs --data_dir=...` again.")
    fix = (f"Delete {source} and run `rmaml-data prepare --dataset=cifar_fs "
           "--data_dir=...` again.")
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(
            f"CIFAR-FS file {source}: labels must lie in 0..{num_classes - 1} "
            f"(one per class name). {fix}")
    counts = np.bincount(labels, minlength=num_classes)
    if counts.min() != counts.max():
        raise DataError(
            f"CIFAR-FS file {source}: every class needs the same number of "
            f"images, got between {counts.min()} and {counts.max()}. {fix}")
    order = np.argsort(labels, kind="stable")
    grouped = images[order].reshape((num_classes, counts[0]) + IMAGE_SHAPE)
    return grouped, class_names

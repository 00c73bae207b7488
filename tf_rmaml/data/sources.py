"""The single entry point to the few-shot datasets: one split as class arrays.

Every dataset comes out the same way: a `SplitData` whose `images` are uint8
`[num_classes, per_class, H, W, C]` (the episode sampler draws ways from the
first axis and shots/queries from the second), plus the class names.

| dataset        | shape per image  | train x val x test classes | per class |
|----------------|------------------|----------------------------|-----------|
| `omniglot`     | `(S, S, 1)`, S=28| 806/158/659 ("standard"),  | 20        |
|                |                  | 1028/172/423 ("vinyals")   |           |
| `cifar_fs`     | `(32, 32, 3)`    | 64/16/20                   | 600       |
| `miniimagenet` | `(S, S, 3)`, S=84| 64/16/20                   | 600       |

Files: raw and prepared data live in `<data_dir>/<dataset>/` (see each
dataset module); decoded caches in `<cache_dir>/` (`omniglot_<S>.npz`,
`miniimagenet_<split>_<S>.npz`). CIFAR-FS needs no cache: its prepared
`cifar_fs_<split>.npz` files in the data dir are read directly.
"""

import dataclasses
import os

import numpy as np

from tf_rmaml.data import cifar_fs, miniimagenet, omniglot
from tf_rmaml.data.errors import DataError

DATASETS = ("omniglot", "cifar_fs", "miniimagenet")
SPLITS = ("train", "val", "test")
OMNIGLOT_SPLITS = omniglot.OMNIGLOT_SPLITS
DEFAULT_IMAGE_SIZES = {
    "omniglot": omniglot.DEFAULT_IMAGE_SIZE,
    "cifar_fs": cifar_fs.IMAGE_SHAPE[0],
    "miniimagenet": miniimagenet.DEFAULT_IMAGE_SIZE,
}
_CHANNELS = {"omniglot": 1, "cifar_fs": 3, "miniimagenet": 3}


@dataclasses.dataclass(frozen=True)
class SplitData:
    """One split of one dataset, grouped by class.

    Attributes:
      dataset: one of `DATASETS`.
      split: one of `SPLITS`.
      images: uint8 `[num_classes, per_class, H, W, C]` in [0, 255]; Omniglot
        strokes are bright (255) on a dark (0) background.
      class_names: `num_classes` names (Omniglot `"Alphabet/characterNN"`,
        with a `"/rot090"`-style suffix when rotated; CIFAR-100 class names;
        ImageNet WordNet ids).
    """
    dataset: str
    split: str
    images: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self):
        if (not isinstance(self.images, np.ndarray) or
                self.images.dtype != np.uint8 or self.images.ndim != 5):
            raise DataError(
                "SplitData.images must be a uint8 numpy array [num_classes, "
                f"per_class, H, W, C], got {type(self.images).__name__} "
                f"{getattr(self.images, 'dtype', '')} "
                f"{getattr(self.images, 'shape', '')}.")
        if len(self.class_names) != self.images.shape[0]:
            raise DataError(
                f"SplitData has {len(self.class_names)} class names for "
                f"{self.images.shape[0]} classes of images.")

    @property
    def num_classes(self):
        return self.images.shape[0]

    @property
    def per_class(self):
        return self.images.shape[1]

    @property
    def image_shape(self):
        return tuple(self.images.shape[2:])


def default_data_dir():
    """`$RMAML_DATA_DIR`, else `~/.rmaml/data`."""
    return os.path.expanduser(os.environ.get("RMAML_DATA_DIR") or
                              "~/.rmaml/data")


def default_cache_dir():
    """`$RMAML_CACHE_DIR`, else `~/.cache/tf_rmaml`."""
    return os.path.expanduser(os.environ.get("RMAML_CACHE_DIR") or
                              "~/.cache/tf_rmaml")


def _check_dataset(dataset):
    if dataset not in DATASETS:
        raise DataError(f"dataset={dataset!r} is unknown; choose one of "
                        f"{DATASETS}.")


def _resolve_size(dataset, image_size):
    _check_dataset(dataset)
    if image_size is None:
        return DEFAULT_IMAGE_SIZES[dataset]
    if isinstance(image_size, bool) or not isinstance(
            image_size, (int, np.integer)) or image_size < 1:
        raise DataError(f"image_size={image_size!r} is invalid: use a "
                        "positive int, or None for the dataset default "
                        f"({DEFAULT_IMAGE_SIZES[dataset]}).")
    if dataset == "cifar_fs" and image_size != cifar_fs.IMAGE_SHAPE[0]:
        raise DataError(
            f"image_size={image_size} is not available for cifar_fs: its "
            "images are 32x32. Pass image_size=None (or 32) and resize in the "
            "input pipeline if needed.")
    return int(image_size)


def image_shape(dataset, image_size=None):
    """`(H, W, C)` of the images `load_split` returns.

    Example:
      image_shape("omniglot")  # (28, 28, 1)
    """
    size = _resolve_size(dataset, image_size)
    return (size, size, _CHANNELS[dataset])


def _dirs(data_dir, cache_dir):
    data_dir = default_data_dir() if data_dir is None else data_dir
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    return (os.path.expanduser(os.fspath(data_dir)),
            os.path.expanduser(os.fspath(cache_dir)))


def load_split(dataset, split, *, data_dir=None, cache_dir=None,
               image_size=None, omniglot_split="standard",
               omniglot_rotations=False, download=False):
    """Loads one split of one dataset, preparing caches on first use.

    Args:
      dataset: one of `DATASETS`.
      split: one of `SPLITS`.
      data_dir: raw/prepared data root (default `default_data_dir()`).
      cache_dir: decoded caches (default `default_cache_dir()`).
      image_size: square side; None for the default (Omniglot 28,
        MiniImageNet 84); CIFAR-FS only has 32.
      omniglot_split: "standard" or "vinyals" (see `tf_rmaml.data.omniglot`).
      omniglot_rotations: Omniglot only: every character becomes 4 classes,
        rotated by 0/90/180/270 degrees (class c -> classes 4c..4c+3). It is
        applied to whichever split is requested (the caller decides, e.g.
        train only, or all splits as in Vinyals et al.); not cached.
      download: fetch missing official files into `<data_dir>/<dataset>/`
        (Omniglot, CIFAR-FS). MiniImageNet cannot be downloaded; the flag is
        ignored for it and missing files raise a DataError saying what to put
        where.

    Returns:
      `SplitData` with uint8 `images [num_classes, per_class, H, W, C]`.

    Raises:
      DataError: unknown argument values, missing data (the message says
        where to put which file, or which command fetches it), corrupt files.

    Example:
      train = load_split("omniglot", "train", data_dir="/data")
      train.images.shape  # (806, 20, 28, 28, 1)
      x = train.images.astype("float32") / 255.0  # strokes at 1.0
    """
    size = _resolve_size(dataset, image_size)
    if split not in SPLITS:
        raise DataError(f"split={split!r} is unknown; choose one of {SPLITS}.")
    if omniglot_split not in OMNIGLOT_SPLITS:
        raise DataError(f"omniglot_split={omniglot_split!r} is unknown; "
                        f"choose one of {OMNIGLOT_SPLITS}.")
    if omniglot_rotations and dataset != "omniglot":
        raise DataError(f"omniglot_rotations=True only applies to omniglot, "
                        f"not {dataset}.")
    data_dir, cache_dir = _dirs(data_dir, cache_dir)

    if dataset == "omniglot":
        data = omniglot.load(data_dir, cache_dir, size, download)
        index = omniglot.split_indices(data, split, omniglot_split)
        images = data.images[index]
        names = tuple(data.names[i] for i in index)
        if omniglot_rotations:
            images, names = omniglot.rotate_classes(images, names)
    elif dataset == "cifar_fs":
        images, names = cifar_fs.load_split(data_dir, split, download)
    else:
        # Nothing to download: a missing file raises a DataError that says
        # what to put where.
        images, names = miniimagenet.load_split(data_dir, cache_dir, split,
                                                size)
    return SplitData(dataset=dataset, split=split, images=images,
                     class_names=tuple(names))


def prepare(dataset, *, data_dir, cache_dir, download, image_size=None):
    """Downloads (if asked) and prepares every split of `dataset`.

    Used by `rmaml-data`. Omniglot: `<cache_dir>/omniglot_<S>.npz`; CIFAR-FS:
    `<data_dir>/cifar_fs/cifar_fs_<split>.npz`; MiniImageNet:
    `<cache_dir>/miniimagenet_<split>_<S>.npz`. Existing prepared files are
    reused.

    Args:
      dataset: one of `DATASETS`.
      data_dir: raw/prepared data root (None: `default_data_dir()`).
      cache_dir: decoded caches (None: `default_cache_dir()`).
      download: fetch missing official files first. MiniImageNet has no
        download: download=True raises a DataError saying what to put where.
      image_size: as in `load_split`.

    Returns:
      `{split: {"num_classes": int, "per_class": int, "image_shape": (H, W,
      C)}}` for train, val and test (Omniglot: the "standard" split, no
      rotations).
    """
    _resolve_size(dataset, image_size)
    if dataset == "miniimagenet" and download:
        root = _dirs(data_dir, cache_dir)[0]
        raise DataError(
            miniimagenet.how_to_get(root) + "\nThen run `rmaml-data prepare "
            f"--dataset=miniimagenet --data_dir={root}`.")
    summary = {}
    for split in SPLITS:
        data = load_split(dataset, split, data_dir=data_dir,
                          cache_dir=cache_dir, image_size=image_size,
                          download=download)
        summary[split] = {"num_classes": data.num_classes,
                          "per_class": data.per_class,
                          "image_shape": data.image_shape}
    return summary

"""Omniglot (Lake et al., 2015): 1623 handwritten characters x 20 drawers.

Raw data, under `<data_dir>/omniglot/`, either form per set:
  * the official zips `images_background.zip` (30 alphabets, 964 characters)
    and `images_evaluation.zip` (20 alphabets, 659 characters), or
  * the extracted folders
    `images_{background,evaluation}/<Alphabet>/<characterNN>/*.png`.
A zip wins over a folder when both exist. A zip that is already on disk is
used without checking its md5 (re-packed copies are fine); only downloads are
checked against the official md5.

Pixel convention (the MAML one): strokes are bright on a dark background.
The 105x105 1-bit originals have black ink (0) on white (1). Each image is
converted to 8-bit grey, resized to `image_size` with PIL's LANCZOS filter
(antialiased; the filter of cbfinn/maml's Omniglot resize script) and then
inverted, so the cache holds uint8 with ink = 255 and background = 0;
`images / 255` gives floats with strokes at 1.0 on 0.0.

The decoded set is cached once per image size in
`<cache_dir>/omniglot_<S>.npz`:
  * `images`: uint8 `[1623, 20, S, S, 1]`, characters ordered by
    (set: background then evaluation, alphabet, character) in sorted name
    order, drawers in file-name order (`IIII_01.png` .. `IIII_20.png`);
  * `names`: str `[1623]`, `"Alphabet/characterNN"` (unique over both sets);
  * `is_background`: bool `[1623]`.

Class splits (see `split_indices`):
  * "standard": test = the 659 evaluation-set characters; val = every
    character of 5 background alphabets, those at positions 5, 11, 17, 23, 29
    of the sorted background alphabet names (`sorted(...)[5::6]`: Balinese,
    Early_Aramaic, Inuktitut_(Canadian_Aboriginal_Syllabics),
    Mkhedruli_(Georgian), Tifinagh; 158 characters); train = the other 806
    background characters.
  * "vinyals": the character lists of Vinyals et al. (2016) shipped in
    `tf_rmaml/data/splits/omniglot_vinyals_{train,val,test}.txt`
    (1028 / 172 / 423), in the order of those files.
"""

import dataclasses
import importlib.resources
import io
import os
import re
import zipfile
import zlib

import numpy as np
from absl import logging
from PIL import Image

from tf_rmaml.data.download import check_image_size, write_npz_atomic
from tf_rmaml.data.download import download as download_file
from tf_rmaml.data.errors import DataError

BACKGROUND = "background"
EVALUATION = "evaluation"
SETS = (BACKGROUND, EVALUATION)

URLS = {
    BACKGROUND: "https://github.com/brendenlake/omniglot/raw/master/python/"
                "images_background.zip",
    EVALUATION: "https://github.com/brendenlake/omniglot/raw/master/python/"
                "images_evaluation.zip",
}
MD5S = {
    BACKGROUND: "68d2efa1b9178cc56df9314c21c6e718",
    EVALUATION: "6b91aef0f799c5bb55b94e3f2daec811",
}

DEFAULT_IMAGE_SIZE = 28
OMNIGLOT_SPLITS = ("standard", "vinyals")
# "standard" split: every VAL_ALPHABET_STRIDE-th sorted background alphabet,
# starting at index VAL_ALPHABET_STRIDE - 1, goes to validation.
VAL_ALPHABET_STRIDE = 6
ROTATIONS_DEG = (0, 90, 180, 270)

_RESAMPLE = Image.Resampling.LANCZOS
# Exceptions that mean "this zip member / PNG is damaged".
_CORRUPT_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, SyntaxError,
                   ValueError, EOFError)


@dataclasses.dataclass(frozen=True)
class OmniglotData:
    """The whole of Omniglot at one image size.

    Attributes:
      images: uint8 `[characters, drawers, S, S, 1]`, ink 255 on 0.
      names: `"Alphabet/characterNN"` per character.
      is_background: bool `[characters]`, True for the background set.
    """
    images: np.ndarray
    names: tuple
    is_background: np.ndarray


def dataset_dir(data_dir):
    return os.path.join(os.fspath(data_dir), "omniglot")


def zip_path(data_dir, set_name):
    return os.path.join(dataset_dir(data_dir), f"images_{set_name}.zip")


def folder_path(data_dir, set_name):
    return os.path.join(dataset_dir(data_dir), f"images_{set_name}")


def cache_path(cache_dir, image_size=DEFAULT_IMAGE_SIZE):
    return os.path.join(os.fspath(cache_dir), f"omniglot_{int(image_size)}.npz")


def find_source(data_dir, set_name):
    """Returns the local zip or folder for `set_name`, or None."""
    path = zip_path(data_dir, set_name)
    if os.path.isfile(path):
        return path
    path = folder_path(data_dir, set_name)
    if os.path.isdir(path):
        return path
    return None


def missing_message(data_dir, set_names):
    """The DataError text for sets without local data."""
    lines = []
    for s in set_names:
        lines.append(f"  {zip_path(data_dir, s)} (from {URLS[s]}), or the "
                     f"extracted folder {folder_path(data_dir, s)}/")
    return ("Omniglot data not found. Expected:\n" + "\n".join(lines) +
            "\nRun `rmaml-data download --dataset=omniglot "
            f"--data_dir={data_dir}` (or pass download=True), or download the "
            "zips by hand and put them at the paths above.")


def download_files(data_dir):
    """Downloads the official zips of the sets that have no local data.

    Returns:
      The list of zip paths downloaded (empty if everything was present).
    """
    paths = []
    for s in SETS:
        if find_source(data_dir, s) is None:
            paths.append(download_file(URLS[s], zip_path(data_dir, s),
                                       md5=MD5S[s]))
    return paths


def _corrupt(path, what, err):
    data_dir = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    return DataError(
        f"Omniglot file {path} is corrupt ({what}: {type(err).__name__}: "
        f"{err}). Delete it and download it again (`rmaml-data download "
        f"--dataset=omniglot --data_dir={data_dir}`, or by hand from "
        "https://github.com/brendenlake/omniglot/tree/master/python).")


def _decode(data, image_size):
    """PNG bytes -> uint8 [S, S, 1], ink 255 on 0."""
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("L")  # 1-bit -> {0, 255}.
        if im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), _RESAMPLE)
        pixels = np.asarray(im, dtype=np.uint8)
    return (255 - pixels)[:, :, None]


def _group(paths, set_name, source):
    """Groups 'Alphabet/character/file.png' relative paths by character.

    Returns:
      A list of ("Alphabet/character", [paths sorted by file name]) sorted by
      (alphabet, character).
    """
    groups = {}
    for alphabet, character, path in paths:
        groups.setdefault((alphabet, character), []).append(path)
    if not groups:
        data_dir = os.path.dirname(os.path.dirname(os.path.abspath(source)))
        raise DataError(
            f"Omniglot source {source} holds no "
            f"images_{set_name}/<Alphabet>/<character>/*.png files. Delete "
            "it and download it again (`rmaml-data download "
            f"--dataset=omniglot --data_dir={data_dir}`).")
    return [(f"{a}/{c}", sorted(groups[(a, c)], key=os.path.basename))
            for a, c in sorted(groups)]


def _read_zip(path, set_name, image_size):
    pattern = re.compile(rf"images_{set_name}/([^/]+)/([^/]+)/([^/]+\.png)")
    try:
        with zipfile.ZipFile(path) as zf:
            members = []
            for name in zf.namelist():
                m = pattern.fullmatch(name)
                if m and not m.group(3).startswith("."):
                    members.append((m.group(1), m.group(2), name))
            groups = _group(members, set_name, path)
            images = _decode_groups(groups, zf.read, image_size, path,
                                    set_name)
    except DataError:
        raise
    except _CORRUPT_ERRORS as e:
        raise _corrupt(path, "cannot read zip", e) from e
    return images, [name for name, _ in groups]


def _read_folder(path, set_name, image_size):
    files = []
    for alphabet in sorted(os.listdir(path)):
        alphabet_dir = os.path.join(path, alphabet)
        if alphabet.startswith(".") or not os.path.isdir(alphabet_dir):
            continue
        for character in sorted(os.listdir(alphabet_dir)):
            character_dir = os.path.join(alphabet_dir, character)
            if character.startswith(".") or not os.path.isdir(character_dir):
                continue
            for f in os.listdir(character_dir):
                if f.endswith(".png") and not f.startswith("."):
                    files.append((alphabet, character,
                                  os.path.join(character_dir, f)))
    groups = _group(files, set_name, path)

    def read(p):
        with open(p, "rb") as f:
            return f.read()

    images = _decode_groups(groups, read, image_size, path, set_name)
    return images, [name for name, _ in groups]


def _decode_groups(groups, read, image_size, source, set_name):
    """Decodes all drawings; returns uint8 [characters, drawers, S, S, 1]."""
    drawers = len(groups[0][1])
    out = np.empty((len(groups), drawers, image_size, image_size, 1), np.uint8)
    for i, (name, members) in enumerate(groups):
        if len(members) != drawers:
            raise DataError(
                f"Omniglot source {source}: character {name} has "
                f"{len(members)} drawings but {groups[0][0]} has {drawers}; "
                "every character needs the same number. The data is "
                "incomplete: delete it and download it again.")
        for j, member in enumerate(members):
            try:
                out[i, j] = _decode(read(member), image_size)
            except _CORRUPT_ERRORS as e:
                raise _corrupt(source, f"image {member} does not decode",
                               e) from e
        logging.log_every_n_seconds(
            logging.INFO, "Omniglot %s: decoded %d / %d characters", 10,
            set_name, i + 1, len(groups))
    return out


def read_set(source, set_name, image_size=DEFAULT_IMAGE_SIZE):
    """Decodes one set from a zip or folder.

    Returns:
      (images uint8 `[characters, drawers, S, S, 1]`, list of names).
    """
    logging.info("Decoding Omniglot %s set from %s at %dx%d", set_name,
                 source, image_size, image_size)
    if os.path.isdir(source):
        return _read_folder(source, set_name, image_size)
    return _read_zip(source, set_name, image_size)


def prepare(data_dir, cache_dir, image_size=DEFAULT_IMAGE_SIZE,
            download=False):
    """Builds `<cache_dir>/omniglot_<S>.npz` unless it exists.

    Args:
      data_dir: root holding `omniglot/`.
      cache_dir: where the decoded cache goes.
      image_size: side S of the square output images.
      download: fetch the official zips of missing sets first.

    Returns:
      The cache path.

    Raises:
      DataError: data missing (and download=False), download failed, or
        corrupt zip/PNG.
    """
    image_size = _check_size(image_size)
    path = cache_path(cache_dir, image_size)
    if os.path.isfile(path):
        logging.info("Using Omniglot cache %s", path)
        return path
    sources = {s: find_source(data_dir, s) for s in SETS}
    missing = [s for s in SETS if sources[s] is None]
    if missing:
        if not download:
            raise DataError(missing_message(data_dir, missing))
        download_files(data_dir)
        sources = {s: find_source(data_dir, s) for s in SETS}
    parts = {s: read_set(sources[s], s, image_size) for s in SETS}
    (bg, bg_names), (ev, ev_names) = parts[BACKGROUND], parts[EVALUATION]
    if bg.shape[1] != ev.shape[1]:
        raise DataError(
            f"Omniglot sets disagree on drawers per character: "
            f"{sources[BACKGROUND]} has {bg.shape[1]}, {sources[EVALUATION]} "
            f"has {ev.shape[1]}. One of them is incomplete: delete it and "
            "download it again.")
    names = bg_names + ev_names
    if len(set(names)) != len(names):
        raise DataError(
            "Omniglot background and evaluation sets share character names "
            f"({sources[BACKGROUND]}, {sources[EVALUATION]}); they must be "
            "the official, disjoint sets.")
    is_background = np.array([True] * len(bg_names) + [False] * len(ev_names))
    write_npz_atomic(path, {
        "images": np.concatenate([bg, ev]),
        "names": np.array(names),
        "is_background": is_background,
    })
    logging.info("Wrote Omniglot cache %s: %d characters x %d drawers",
                 path, len(names), bg.shape[1])
    return path


def _check_size(image_size):
    return check_image_size(image_size, "Omniglot", DEFAULT_IMAGE_SIZE)


def load(data_dir, cache_dir, image_size=DEFAULT_IMAGE_SIZE, download=False):
    """Returns all of Omniglot as `OmniglotData`, preparing the cache if needed.

    Example:
      data = load("~/.rmaml/data", "~/.cache/tf_rmaml", image_size=28)
      data.images.shape  # (1623, 20, 28, 28, 1)
    """
    path = prepare(data_dir, cache_dir, image_size, download)
    try:
        with np.load(path, allow_pickle=False) as f:
            images = f["images"]
            names = tuple(str(n) for n in f["names"])
            is_background = f["is_background"].astype(bool)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile,
            zlib.error) as e:
        raise DataError(
            f"Omniglot cache {path} is unreadable ({type(e).__name__}: {e}). "
            "Delete it; it is rebuilt from the raw data on the next run."
        ) from e
    size = _check_size(image_size)
    if (images.dtype != np.uint8 or images.ndim != 5 or
            images.shape[2:] != (size, size, 1) or
            len(names) != images.shape[0] or
            is_background.shape != (images.shape[0],)):
        raise DataError(
            f"Omniglot cache {path} has unexpected contents (images "
            f"{images.dtype} {images.shape}, {len(names)} names). Delete it; "
            "it is rebuilt from the raw data on the next run.")
    return OmniglotData(images=images, names=names,
                        is_background=is_background)


def standard_val_alphabets(data):
    """The background alphabets used for validation in the standard split."""
    alphabets = sorted({n.split("/")[0] for n, bg in
                        zip(data.names, data.is_background) if bg})
    return alphabets[VAL_ALPHABET_STRIDE - 1::VAL_ALPHABET_STRIDE]


def vinyals_names(split):
    """The `Alphabet/characterNN` names of a Vinyals et al. split."""
    resource = importlib.resources.files("tf_rmaml.data").joinpath(
        "splits", f"omniglot_vinyals_{split}.txt")
    lines = resource.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]


def split_indices(data, split, omniglot_split="standard"):
    """Character indices (into `data`) of one split.

    Args:
      data: `OmniglotData`.
      split: "train", "val" or "test".
      omniglot_split: "standard" or "vinyals" (see the module docstring).

    Returns:
      int64 `[characters_in_split]`.
    """
    if omniglot_split not in OMNIGLOT_SPLITS:
        raise DataError(f"omniglot_split={omniglot_split!r} is unknown; "
                        f"choose one of {OMNIGLOT_SPLITS}.")
    if split not in ("train", "val", "test"):
        raise DataError(f"split={split!r} is unknown; choose one of "
                        "('train', 'val', 'test').")
    if omniglot_split == "vinyals":
        index = {n: i for i, n in enumerate(data.names)}
        wanted = vinyals_names(split)
        missing = [n for n in wanted if n not in index]
        if missing:
            raise DataError(
                f"{len(missing)} characters of the Vinyals {split} split are "
                f"not in the Omniglot data (first: {missing[:3]}). The data "
                "is incomplete: delete the Omniglot zips and cache and "
                "download them again.")
        return np.array([index[n] for n in wanted], dtype=np.int64)
    if split == "test":
        keep = ~data.is_background
    else:
        val_alphabets = set(standard_val_alphabets(data))
        in_val = np.array([n.split("/")[0] in val_alphabets
                           for n in data.names], dtype=bool)
        keep = data.is_background & (in_val if split == "val" else ~in_val)
    indices = np.flatnonzero(keep).astype(np.int64)
    if indices.size == 0:
        raise DataError(
            f"The standard Omniglot {split} split is empty: the data has "
            f"too few alphabets (the val split needs at least "
            f"{VAL_ALPHABET_STRIDE} background alphabets).")
    return indices


def rotate_classes(images, names):
    """Turns every class into 4 classes rotated by 0/90/180/270 degrees.

    Rotation is counter-clockwise (`np.rot90` on the H, W axes). Classes stay
    grouped: class c becomes classes 4c .. 4c+3, named `"<name>/rot000"`,
    `"/rot090"`, `"/rot180"`, `"/rot270"`.

    Args:
      images: `[classes, per_class, S, S, C]` (square).
      names: sequence of `classes` names.

    Returns:
      (images `[4 * classes, per_class, S, S, C]`, tuple of names).
    """
    rotated = np.stack([np.rot90(images, k=k, axes=(2, 3))
                        for k in range(len(ROTATIONS_DEG))], axis=1)
    rotated = rotated.reshape((-1,) + images.shape[1:])
    new_names = tuple(f"{n}/rot{deg:03d}" for n in names
                      for deg in ROTATIONS_DEG)
    return rotated, new_names


def character_groups(names):
    """`[num_classes]` int32 group ids from class names: the rotated copies `"<name>/rotNNN"` of one
    character (see `rotate_classes`) share one; any other name is a group of its own."""
    bases = [re.sub(r"/rot\d{3}$", "", name) for name in names]
    index = {}
    return np.array([index.setdefault(b, len(index)) for b in bases], np.int32)

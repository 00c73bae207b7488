"""The real benchmark data, read from $RMAML_DATA_DIR (skipped when unset).

Omniglot is decoded once per module into a temporary cache (~10 s on one
core); every other test reads that cache.
"""

import os
import shutil

import numpy as np
import pytest

from tf_rmaml.data import cifar_fs, omniglot, sources
from tf_rmaml.data.errors import DataError

DATA_DIR = os.environ.get("RMAML_DATA_DIR")
pytestmark = pytest.mark.skipif(
    not DATA_DIR, reason="RMAML_DATA_DIR is not set: point it at the benchmark data (omniglot/, cifar_fs/) to run")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("rmaml_cache")
    omniglot.prepare(DATA_DIR, path)  # The one expensive step: 32,460 PNGs.
    return path


@pytest.fixture(scope="module")
def omniglot_all(cache_dir):
    return omniglot.load(DATA_DIR, cache_dir)


def test_omniglot_prepares_all_characters(omniglot_all, cache_dir):
    assert os.listdir(cache_dir) == ["omniglot_28.npz"]
    images = omniglot_all.images
    assert images.shape == (1623, 20, 28, 28, 1) and images.dtype == np.uint8
    assert int(omniglot_all.is_background.sum()) == 964 and int((~omniglot_all.is_background).sum()) == 659
    assert len(set(omniglot_all.names)) == 1623
    assert omniglot_all.names[0] == "Alphabet_of_the_Magi/character01"
    # Not all equal, and bright strokes on a dark background (ink covers ~10% of a character).
    assert images.min() == 0 and images.max() == 255
    assert not np.array_equal(images[0, 0], images[0, 1]) and not np.array_equal(images[0, 0], images[1, 0])
    assert 0.03 < (images > 127).mean() < 0.25
    assert (images[:, :, 0, 0, 0] == 0).mean() > 0.99  # Corners are background.


def test_omniglot_standard_split(cache_dir):
    splits = {s: sources.load_split("omniglot", s, data_dir=DATA_DIR, cache_dir=cache_dir) for s in sources.SPLITS}
    train, val, test = (splits[s] for s in sources.SPLITS)
    assert train.num_classes + val.num_classes == 964 and test.num_classes == 659
    assert (train.num_classes, val.num_classes) == (806, 158)
    assert {n.split("/")[0] for n in val.class_names} == {
        "Balinese", "Early_Aramaic", "Inuktitut_(Canadian_Aboriginal_Syllabics)", "Mkhedruli_(Georgian)", "Tifinagh"}
    assert not set(train.class_names) & set(val.class_names)
    for data in splits.values():
        assert data.images.shape[1:] == (20, 28, 28, 1) and data.images.dtype == np.uint8


def test_omniglot_vinyals_split(cache_dir):
    sizes = {}
    names = set()
    for split in sources.SPLITS:
        data = sources.load_split("omniglot", split, data_dir=DATA_DIR, cache_dir=cache_dir, omniglot_split="vinyals")
        sizes[split] = data.num_classes
        names |= set(data.class_names)
        assert data.class_names == tuple(omniglot.vinyals_names(split))
    assert sizes == {"train": 1028, "val": 172, "test": 423}
    assert len(names) == 1623


def test_omniglot_vinyals_lists_match_the_shared_copy():
    for split in sources.SPLITS:
        path = os.path.join(DATA_DIR, "omniglot", "splits_vinyals", f"{split}.txt")
        if not os.path.exists(path):
            pytest.skip(f"{path} not present")
        with open(path) as f:
            assert omniglot.vinyals_names(split) == [line.strip() for line in f if line.strip()]


def test_omniglot_rotations_on_real_data(cache_dir):
    data = sources.load_split("omniglot", "val", data_dir=DATA_DIR, cache_dir=cache_dir, omniglot_rotations=True)
    assert data.images.shape == (4 * 158, 20, 28, 28, 1)


def test_cifar_fs_splits():
    expected = {"train": 64, "val": 16, "test": 20}
    seen = set()
    for split, num_classes in expected.items():
        data = sources.load_split("cifar_fs", split, data_dir=DATA_DIR, cache_dir="/nonexistent-cache-unused")
        assert data.images.shape == (num_classes, 600, 32, 32, 3) and data.images.dtype == np.uint8
        assert data.class_names == cifar_fs.split_class_names(split)
        assert data.images.std() > 10
        seen |= set(data.class_names)
    assert len(seen) == 100


def test_cifar_fs_conventions_match_what_build_writes():
    """The shared files follow the conventions `cifar_fs.build` uses (see its tests)."""
    all_names = sorted(n for s in cifar_fs.SPLITS for n in cifar_fs.split_class_names(s))
    for split in cifar_fs.SPLITS:
        with np.load(cifar_fs.npz_path(DATA_DIR, split), allow_pickle=False) as f:
            assert sorted(f.files) == ["class_names", "coarse_labels", "fine_labels", "images", "labels"]
            labels, fine, class_names = f["labels"], f["fine_labels"], tuple(f["class_names"])
            assert labels.dtype == np.int64 and fine.dtype == np.int64 and f["coarse_labels"].dtype == np.int64
            assert class_names == cifar_fs.split_class_names(split)
            assert np.all(np.diff(labels) >= 0)  # Grouped by label, label 0 first.
            # CIFAR-100 fine ids are the alphabetical rank of the class name.
            fine_of_label = np.array([all_names.index(n) for n in class_names])
            np.testing.assert_array_equal(fine, fine_of_label[labels])


@pytest.mark.parametrize("damage", ["truncate", "overwrite"])
def test_corrupt_zip_names_the_file(tmp_path, damage):
    folder = tmp_path / "data" / "omniglot"
    folder.mkdir(parents=True)
    real = os.path.join(DATA_DIR, "omniglot", "images_background.zip")
    broken = folder / "images_background.zip"
    shutil.copyfile(real, broken)
    with open(broken, "r+b") as f:
        if damage == "truncate":  # No central directory: BadZipFile on open.
            f.truncate(os.path.getsize(real) // 2)
        else:  # Garbage inside the first members: a CRC / PNG error while decoding.
            f.seek(2000)
            f.write(b"\xff" * 3000)
    os.symlink(os.path.join(DATA_DIR, "omniglot", "images_evaluation.zip"), folder / "images_evaluation.zip")
    with pytest.raises(DataError) as err:
        sources.load_split("omniglot", "train", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert str(broken) in str(err.value) and "Delete it and download it again" in str(err.value)
    assert not (tmp_path / "cache" / "omniglot_28.npz").exists()


def test_unknown_dataset():
    with pytest.raises(DataError, match="choose one of .'omniglot', 'cifar_fs', 'miniimagenet'"):
        sources.load_split("tiered_imagenet", "train", data_dir=DATA_DIR)

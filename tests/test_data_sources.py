"""Omniglot, MiniImageNet, `sources` and `rmaml-data` on tiny fake data.

The fakes mimic the real layouts (official Omniglot zips of 1-bit 105x105
PNGs; a MiniImageNet folder with Ravi & Larochelle CSVs and JPEGs) at a few
classes, so these run in seconds without `RMAML_DATA_DIR`.
"""

import functools
import http.server
import io
import os
import random
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

from tf_rmaml.data import miniimagenet, omniglot, sources
from tf_rmaml.data.download import file_digest
from tf_rmaml.data.errors import DataError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Sorted background alphabets: Alpha Beta Delta Epsilon Eta Gamma Zeta; index 5
# (Gamma) is the standard-split validation alphabet.
BACKGROUND_ALPHABETS = ("Alpha", "Beta", "Gamma", "Delta", "Epsilon", "Zeta", "Eta")
EVALUATION_ALPHABETS = ("Omega", "Psi")
CHARACTERS, DRAWERS = 2, 3


def _ink_box(key):
    """A deterministic ink rectangle (y0, y1, x0, x1) in 105x105 for `key`."""
    rng = random.Random(key)
    y0, x0 = rng.randrange(10, 50), rng.randrange(10, 50)
    return y0, y0 + rng.randrange(30, 50), x0, x0 + rng.randrange(30, 50)


def _omniglot_png(key):
    white = np.ones((105, 105), dtype=bool)  # Omniglot: ink is black (0) on white (1).
    y0, y1, x0, x1 = _ink_box(key)
    white[y0:y1, x0:x1] = False
    buf = io.BytesIO()
    Image.fromarray(white).save(buf, format="PNG")  # bool -> mode "1", like the originals.
    return buf.getvalue()


def _omniglot_members(set_name, alphabets):
    members = []
    for a, alphabet in enumerate(alphabets):
        for c in range(1, CHARACTERS + 1):
            drawers = list(range(1, DRAWERS + 1))
            random.Random(f"{alphabet}{c}").shuffle(drawers)  # Zip order is not drawer order.
            for d in drawers:
                name = f"images_{set_name}/{alphabet}/character{c:02d}/{a * 10 + c:04d}_{d:02d}.png"
                members.append((name, _omniglot_png(f"{alphabet}/character{c:02d}/{d}")))
    return members


def write_fake_omniglot(folder, as_zip=True):
    """Writes both fake sets into `folder` (zips, or extracted folders)."""
    os.makedirs(folder, exist_ok=True)
    for set_name, alphabets in (("background", BACKGROUND_ALPHABETS), ("evaluation", EVALUATION_ALPHABETS)):
        members = _omniglot_members(set_name, alphabets)
        if as_zip:
            with zipfile.ZipFile(os.path.join(folder, f"images_{set_name}.zip"), "w") as zf:
                for name, data in members:
                    zf.writestr(name, data)
        else:
            for name, data in members:
                path = os.path.join(folder, name)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)


@pytest.fixture
def omniglot_dir(tmp_path):
    data_dir = tmp_path / "data"
    write_fake_omniglot(data_dir / "omniglot")
    return data_dir


@pytest.fixture
def file_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_omniglot_download_cache_and_standard_split(file_server, tmp_path, monkeypatch):
    served, url = file_server
    write_fake_omniglot(served)
    for s in omniglot.SETS:
        monkeypatch.setitem(omniglot.URLS, s, f"{url}/images_{s}.zip")
        monkeypatch.setitem(omniglot.MD5S, s, file_digest(served / f"images_{s}.zip", "md5"))
    data_dir, cache_dir = tmp_path / "data", tmp_path / "cache"

    with pytest.raises(DataError, match=f"rmaml-data download --dataset=omniglot --data_dir={data_dir}"):
        sources.load_split("omniglot", "train", data_dir=data_dir, cache_dir=cache_dir)
    train = sources.load_split("omniglot", "train", data_dir=data_dir, cache_dir=cache_dir, download=True)

    assert sorted(os.listdir(data_dir / "omniglot")) == ["images_background.zip", "images_evaluation.zip"]
    assert os.listdir(cache_dir) == ["omniglot_28.npz"]
    with np.load(cache_dir / "omniglot_28.npz", allow_pickle=False) as f:
        assert f["images"].shape == (18, DRAWERS, 28, 28, 1) and f["images"].dtype == np.uint8
        assert f["names"][0] == "Alpha/character01" and f["names"][14] == "Omega/character01"
        np.testing.assert_array_equal(f["is_background"], [True] * 14 + [False] * 4)

    val = sources.load_split("omniglot", "val", data_dir=data_dir, cache_dir=cache_dir)
    test = sources.load_split("omniglot", "test", data_dir=data_dir, cache_dir=cache_dir)
    assert val.class_names == ("Gamma/character01", "Gamma/character02")
    assert test.class_names == ("Omega/character01", "Omega/character02", "Psi/character01", "Psi/character02")
    assert train.images.shape == (12, DRAWERS, 28, 28, 1)
    assert not set(train.class_names) & set(val.class_names)
    assert train.class_names[0] == "Alpha/character01"


def test_omniglot_pixels_are_bright_strokes_on_dark_in_drawer_order(omniglot_dir, tmp_path):
    data = omniglot.load(omniglot_dir, tmp_path / "cache", image_size=35)  # 105 / 35 = 3 px per px.
    assert data.images.shape == (18, DRAWERS, 35, 35, 1)
    for drawer in range(DRAWERS):
        image = data.images[0, drawer, :, :, 0]
        y0, y1, x0, x1 = (v // 3 for v in _ink_box(f"Alpha/character01/{drawer + 1}"))
        assert image[(y0 + y1) // 2, (x0 + x1) // 2] == 255  # Ink.
        assert image[1, 1] == 0 and image[-2, -2] == 0  # Background.


def test_omniglot_local_zip_is_used_without_md5_and_cache_is_reused(omniglot_dir, tmp_path):
    cache_dir = tmp_path / "cache"
    # The fake zips do not match the official md5: local files are trusted.
    first = omniglot.load(omniglot_dir, cache_dir)
    stamp = os.stat(cache_dir / "omniglot_28.npz").st_mtime_ns
    for s in omniglot.SETS:
        os.remove(omniglot_dir / "omniglot" / f"images_{s}.zip")
    again = omniglot.load(omniglot_dir, cache_dir)
    np.testing.assert_array_equal(first.images, again.images)
    assert os.stat(cache_dir / "omniglot_28.npz").st_mtime_ns == stamp


def test_omniglot_extracted_folders_equal_zips(omniglot_dir, tmp_path):
    folders = tmp_path / "folders"
    write_fake_omniglot(folders / "omniglot", as_zip=False)
    from_zip = omniglot.load(omniglot_dir, tmp_path / "c1")
    from_folder = omniglot.load(folders, tmp_path / "c2")
    np.testing.assert_array_equal(from_zip.images, from_folder.images)
    assert from_zip.names == from_folder.names


def test_omniglot_rotations(omniglot_dir, tmp_path):
    plain = sources.load_split("omniglot", "test", data_dir=omniglot_dir, cache_dir=tmp_path)
    rotated = sources.load_split("omniglot", "test", data_dir=omniglot_dir, cache_dir=tmp_path,
                                 omniglot_rotations=True)
    assert rotated.images.shape == (16, DRAWERS, 28, 28, 1)
    assert rotated.class_names[:4] == tuple(f"Omega/character01/rot{d:03d}" for d in (0, 90, 180, 270))
    for k in range(4):
        np.testing.assert_array_equal(rotated.images[4 + k], np.rot90(plain.images[1], k=k, axes=(1, 2)))


def test_omniglot_vinyals_split_needs_the_real_characters(omniglot_dir, tmp_path):
    assert len(omniglot.vinyals_names("train")) == 1028
    with pytest.raises(DataError, match="Vinyals train split"):
        sources.load_split("omniglot", "train", data_dir=omniglot_dir, cache_dir=tmp_path,
                           omniglot_split="vinyals")


def test_omniglot_corrupt_png_names_zip_and_member(omniglot_dir, tmp_path):
    path = omniglot_dir / "omniglot" / "images_evaluation.zip"
    broken = "images_evaluation/Psi/character02/0012_02.png"
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    members[broken] = b"not a png"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(DataError) as err:
        omniglot.load(omniglot_dir, tmp_path / "cache")
    assert str(path) in str(err.value) and broken in str(err.value)
    assert "Delete it" in str(err.value)
    assert not (tmp_path / "cache" / "omniglot_28.npz").exists()


def test_omniglot_truncated_zip_names_the_file(omniglot_dir, tmp_path):
    path = omniglot_dir / "omniglot" / "images_background.zip"
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(DataError, match="is corrupt") as err:
        omniglot.load(omniglot_dir, tmp_path / "cache")
    assert str(path) in str(err.value)


def test_omniglot_uneven_drawers(omniglot_dir, tmp_path):
    with zipfile.ZipFile(omniglot_dir / "omniglot" / "images_background.zip", "a") as zf:
        zf.writestr("images_background/Beta/character02/0012_04.png", _omniglot_png("extra"))
    with pytest.raises(DataError, match="Beta/character02 has 4 drawings"):
        omniglot.load(omniglot_dir, tmp_path / "cache")


# --- MiniImageNet --------------------------------------------------------------

MINI_CLASSES = {"train": ("n03000001", "n01000002", "n02000003"), "val": ("n04000004", "n04000005"),
                "test": ("n05000006", "n05000007")}
MINI_PER_CLASS = 4


def _mini_color(c, i):
    return (40 * c + 10, 30 * i + 5, 200)


def write_fake_miniimagenet(data_dir, per_class=MINI_PER_CLASS):
    """Ravi & Larochelle layout: <data_dir>/miniimagenet/{images/, train.csv, ...}."""
    root = data_dir / "miniimagenet"
    (root / "images").mkdir(parents=True)
    for split, wnids in MINI_CLASSES.items():
        lines = ["filename,label"]
        for c, wnid in enumerate(wnids):
            for i in range(per_class):
                name = f"{wnid}{i + 1:08d}.jpg"
                size = [(100, 120), (84, 84), (500, 375), (90, 84)][i % 4]
                if i == 3:  # Some ImageNet JPEGs are greyscale.
                    image = Image.new("L", size, 128)
                else:
                    image = Image.new("RGB", size, _mini_color(c, i))
                image.save(root / "images" / name, quality=95)
                lines.append(f"{name},{wnid}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def test_miniimagenet_from_a_user_folder(tmp_path):
    write_fake_miniimagenet(tmp_path / "data")
    train = sources.load_split("miniimagenet", "train", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert train.images.shape == (3, MINI_PER_CLASS, 84, 84, 3) and train.images.dtype == np.uint8
    assert train.class_names == MINI_CLASSES["train"]  # CSV order, not sorted.
    for i in range(3):  # Solid colours survive JPEG + resize within a few levels.
        np.testing.assert_allclose(train.images[2, i].mean(axis=(0, 1)), _mini_color(2, i), atol=3)
    np.testing.assert_allclose(train.images[1, 3], 128, atol=2)  # Greyscale JPEG became RGB.
    assert os.listdir(tmp_path / "cache") == ["miniimagenet_train_84.npz"]

    small = sources.load_split("miniimagenet", "test", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache",
                               image_size=32)
    assert small.images.shape == (2, MINI_PER_CLASS, 32, 32, 3)
    assert (tmp_path / "cache" / "miniimagenet_test_32.npz").exists()


def test_miniimagenet_missing_files_say_what_to_put_where(tmp_path):
    data_dir = tmp_path / "data"
    with pytest.raises(DataError) as err:
        sources.load_split("miniimagenet", "val", data_dir=data_dir, cache_dir=tmp_path / "cache", download=True)
    message = str(err.value)
    root = data_dir / "miniimagenet"
    for expected in (f"missing {root / 'val.csv'}", f"missing folder {root / 'images'}/",
                     "cannot be downloaded automatically", miniimagenet.CSV_SOURCE):
        assert expected in message

    write_fake_miniimagenet(data_dir)
    os.remove(root / "images" / "n0400000500000002.jpg")
    with pytest.raises(DataError, match=r"1 of the 8 images of val.csv are not in .*n0400000500000002.jpg"):
        sources.load_split("miniimagenet", "val", data_dir=data_dir, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="cannot be downloaded automatically"):
        sources.prepare("miniimagenet", data_dir=data_dir, cache_dir=tmp_path / "cache", download=True)


def test_miniimagenet_classes_must_have_equal_size(tmp_path):
    root = write_fake_miniimagenet(tmp_path / "data")
    lines = (root / "test.csv").read_text().splitlines()
    (root / "test.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match="same number of images"):
        sources.load_split("miniimagenet", "test", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")


# --- sources ---------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(dataset="imagenet", split="train"), r"dataset='imagenet' is unknown.*omniglot.*cifar_fs.*miniimagenet"),
    (dict(dataset="omniglot", split="training"), r"split='training' is unknown.*train.*val.*test"),
    (dict(dataset="omniglot", split="train", omniglot_split="lake"), r"omniglot_split='lake'.*standard.*vinyals"),
    (dict(dataset="cifar_fs", split="train", image_size=64), r"image_size=64 is not available for cifar_fs"),
    (dict(dataset="omniglot", split="train", image_size=0), r"image_size=0 is invalid"),
    (dict(dataset="cifar_fs", split="train", omniglot_rotations=True), r"only applies to omniglot"),
])
def test_bad_arguments_list_valid_choices(kwargs, pattern, tmp_path):
    dataset, split = kwargs.pop("dataset"), kwargs.pop("split")
    with pytest.raises(DataError, match=pattern):
        sources.load_split(dataset, split, data_dir=tmp_path, cache_dir=tmp_path, **kwargs)


def test_image_shape_and_default_dirs(monkeypatch):
    assert sources.image_shape("omniglot") == (28, 28, 1)
    assert sources.image_shape("omniglot", 84) == (84, 84, 1)
    assert sources.image_shape("cifar_fs") == (32, 32, 3)
    assert sources.image_shape("miniimagenet") == (84, 84, 3)
    with pytest.raises(DataError, match="unknown"):
        sources.image_shape("mnist")
    monkeypatch.setenv("RMAML_DATA_DIR", "/somewhere/data")
    monkeypatch.setenv("RMAML_CACHE_DIR", "/somewhere/cache")
    assert (sources.default_data_dir(), sources.default_cache_dir()) == ("/somewhere/data", "/somewhere/cache")
    monkeypatch.delenv("RMAML_DATA_DIR")
    monkeypatch.delenv("RMAML_CACHE_DIR")
    assert sources.default_data_dir() == os.path.expanduser("~/.rmaml/data")
    assert sources.default_cache_dir() == os.path.expanduser("~/.cache/tf_rmaml")


def test_split_data_validates():
    with pytest.raises(DataError, match="uint8"):
        sources.SplitData("omniglot", "train", np.zeros((2, 3, 4, 4, 1), np.float32), ("a", "b"))
    with pytest.raises(DataError, match="class names"):
        sources.SplitData("omniglot", "train", np.zeros((2, 3, 4, 4, 1), np.uint8), ("a",))


# --- rmaml-data --------------------------------------------------------------------


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "tf_rmaml.cli.data", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_prepare_logs_a_summary(tmp_path):
    write_fake_miniimagenet(tmp_path / "data")
    done = _cli("prepare", "--dataset=miniimagenet", f"--data_dir={tmp_path / 'data'}",
                f"--cache_dir={tmp_path / 'cache'}", "--image_size=16")
    assert done.returncode == 0, done.stderr
    assert "train     3 classes x    4 images of 16x16x3" in done.stderr
    assert "test      2 classes x    4 images of 16x16x3" in done.stderr
    assert len(os.listdir(tmp_path / "cache")) == 3


def test_cli_bad_action_and_missing_data(tmp_path):
    done = _cli("fetch", "--dataset=omniglot")
    assert done.returncode != 0
    assert "Give exactly one action, one of ('download', 'prepare')" in done.stderr
    done = _cli("prepare", "--dataset=omniglot", f"--data_dir={tmp_path}", f"--cache_dir={tmp_path}")
    assert done.returncode == 1
    assert "Omniglot data not found" in done.stderr and "Traceback" not in done.stderr

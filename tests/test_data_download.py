"""Downloads against a local HTTP server, and CIFAR-100 -> CIFAR-FS end to end.

Nothing here touches the internet: every URL points at a ThreadingHTTPServer
on 127.0.0.1 (port 0), or at a port nobody listens on.
"""

import collections
import hashlib
import http.server
import io
import os
import socket
import struct
import tarfile
import threading
import time

import numpy as np
import pytest

from tf_rmaml.data import cifar_fs, sources
from tf_rmaml.data.download import download
from tf_rmaml.data.errors import DataError

GOOD = os.urandom(300_000)
BAD = os.urandom(50_000)
TRUNCATED = os.urandom(400_000)


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # Keep pytest output clean.
        pass

    def _send(self, body, length=None):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 (http.server naming)
        self.server.hits[self.path] += 1
        if self.path == "/good.bin":
            self._send(GOOD)
        elif self.path == "/bad.bin":
            self._send(BAD)
        elif self.path == "/truncated.bin":
            # Promise the whole file, send half, hang up.
            self._send(TRUNCATED[: len(TRUNCATED) // 2], length=len(TRUNCATED))
            self.wfile.flush()
            self.close_connection = True
        elif self.path == "/slow.bin":
            self.send_response(200)
            self.send_header("Content-Length", "10")
            self.end_headers()
            self.wfile.write(b"12345")
            self.wfile.flush()
            time.sleep(1.5)
        elif self.path in self.server.files:
            self._send(self.server.files[self.path])
        else:
            self.send_error(404)


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.block_on_close = False
    httpd.hits = collections.Counter()
    httpd.files = {}
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _md5(data):
    return hashlib.md5(data).hexdigest()


def test_good_file_lands_with_right_bytes(server, tmp_path):
    dest = tmp_path / "sub" / "good.bin"
    out = download(f"{server.url}/good.bin", dest, md5=_md5(GOOD),
                   sha256=hashlib.sha256(GOOD).hexdigest())
    assert out == str(dest)
    assert dest.read_bytes() == GOOD
    assert os.listdir(dest.parent) == ["good.bin"]


def test_existing_file_with_right_hash_is_not_downloaded_again(server, tmp_path):
    dest = tmp_path / "good.bin"
    download(f"{server.url}/good.bin", dest, md5=_md5(GOOD))
    hits = server.hits["/good.bin"]
    download(f"{server.url}/good.bin", dest, md5=_md5(GOOD))
    assert server.hits["/good.bin"] == hits


def test_existing_file_with_wrong_hash_is_replaced(server, tmp_path):
    dest = tmp_path / "good.bin"
    dest.write_bytes(b"stale")
    download(f"{server.url}/good.bin", dest, md5=_md5(GOOD))
    assert dest.read_bytes() == GOOD
    assert os.listdir(tmp_path) == ["good.bin"]


def test_wrong_checksum_leaves_nothing(server, tmp_path):
    dest = tmp_path / "bad.bin"
    expected = _md5(b"what the file should have been")
    with pytest.raises(DataError) as err:
        download(f"{server.url}/bad.bin", dest, md5=expected)
    message = str(err.value)
    assert "bad.bin" in message and expected in message and _md5(BAD) in message
    assert os.listdir(tmp_path) == []


def test_wrong_checksum_keeps_the_existing_file(server, tmp_path):
    dest = tmp_path / "bad.bin"
    dest.write_bytes(b"old copy")
    with pytest.raises(DataError):
        download(f"{server.url}/bad.bin", dest, sha256="0" * 64)
    assert dest.read_bytes() == b"old copy"
    assert os.listdir(tmp_path) == ["bad.bin"]


def test_interrupted_transfer_leaves_nothing(server, tmp_path):
    dest = tmp_path / "truncated.bin"
    with pytest.raises(DataError, match=r"stopped early.*200000 of 400000"):
        download(f"{server.url}/truncated.bin", dest)
    assert os.listdir(tmp_path) == []


def test_read_timeout_leaves_nothing(server, tmp_path):
    dest = tmp_path / "slow.bin"
    with pytest.raises(DataError, match="interrupted"):
        download(f"{server.url}/slow.bin", dest, timeout=0.3)
    assert os.listdir(tmp_path) == []


def test_http_error(server, tmp_path):
    with pytest.raises(DataError, match="HTTP 404"):
        download(f"{server.url}/missing.bin", tmp_path / "x.bin")
    assert os.listdir(tmp_path) == []


def test_no_network_says_where_to_put_the_file(tmp_path):
    with socket.socket() as s:  # A port that nobody listens on.
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "file.zip"
    with pytest.raises(DataError) as err:
        download(f"http://127.0.0.1:{port}/file.zip", dest, md5="0" * 32, timeout=5)
    assert f"put it at {dest}" in str(err.value)
    assert os.listdir(tmp_path) == []


def test_malformed_checksum_is_refused(tmp_path):
    with pytest.raises(DataError, match="md5"):
        download("http://127.0.0.1:1/x", tmp_path / "x", md5="abc")


# --- CIFAR-100 python archive, built the way the real one is -----------------
# The real pickles come from Python 2: byte strings use the (SHORT_)BINSTRING
# opcodes and arrays reference numpy.core.multiarray._reconstruct. Python 3's
# pickler cannot emit that, so the fake writes the opcodes itself.


def _p2(obj):
    if isinstance(obj, bytes):
        if len(obj) < 256:
            return b"U" + bytes([len(obj)]) + obj
        return b"T" + struct.pack("<I", len(obj)) + obj
    if obj is None:
        return b"N"
    if isinstance(obj, bool):
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int):
        return b"K" + bytes([obj]) if 0 <= obj < 256 else b"J" + struct.pack("<i", obj)
    if isinstance(obj, tuple):
        return b"(" + b"".join(_p2(x) for x in obj) + b"t"
    if isinstance(obj, list):
        return b"](" + b"".join(_p2(x) for x in obj) + b"e"
    if isinstance(obj, dict):
        return b"}(" + b"".join(_p2(k) + _p2(v) for k, v in obj.items()) + b"u"
    if isinstance(obj, np.ndarray):
        assert obj.dtype == np.uint8
        dtype = (b"cnumpy\ndtype\n" + _p2((b"u1", 0, 1)) + b"R"
                 + _p2((3, b"|", None, None, None, -1, -1, 0)) + b"b")
        new = b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n" + _p2((0,)) + _p2(b"b") + b"tR"
        state = b"(" + _p2(1) + _p2(tuple(obj.shape)) + dtype + b"\x89" + _p2(obj.tobytes()) + b"t"
        return new + state + b"b"
    raise TypeError(type(obj))


def py2_pickle(obj):
    return b"\x80\x02" + _p2(obj) + b"."


def fine_names():
    """CIFAR-100's fine label names: the union of the CIFAR-FS splits, sorted."""
    return sorted(n for s in cifar_fs.SPLITS for n in cifar_fs.split_class_names(s))


def fake_image_rows(fine, part, index):
    """[3072] channel-major rows: R = fine id, G = 10 * part + index, B = pixel number % 251."""
    planes = np.stack([np.full(1024, fine), np.full(1024, 10 * part + index), np.arange(1024) % 251])
    return planes.astype(np.uint8).reshape(3072)


def make_cifar100_tar(path, per_class=(3, 1), meta=None):
    """A cifar-100-python.tar.gz with `per_class` = (train, test) images per class."""
    names = fine_names()
    members = {}
    for part, (name, count) in enumerate(zip(("train", "test"), per_class)):
        rows, fine = [], []
        for index in range(count):  # Interleave classes, as the real files do.
            for c in range(100):
                rows.append(fake_image_rows(c, part, index))
                fine.append(c)
        members[name] = py2_pickle({
            b"filenames": [f"img_{i}.png".encode() for i in range(len(fine))],
            b"batch_label": f"{name} batch".encode(),
            b"fine_labels": fine,
            b"coarse_labels": [c // 5 for c in fine],
            b"data": np.stack(rows),
        })
    members["meta"] = meta if meta is not None else py2_pickle({
        b"fine_label_names": [n.encode() for n in names],
        b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)],
    })
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_py2_pickle_round_trips_through_restricted_unpickler():
    data = {b"data": np.arange(12, dtype=np.uint8).reshape(2, 6), b"fine_labels": [1, 300]}
    out = cifar_fs.safe_load_pickle(py2_pickle(data))
    np.testing.assert_array_equal(out[b"data"], data[b"data"])
    assert out[b"fine_labels"] == [1, 300]


def test_cifar_fs_downloads_and_prepares_end_to_end(server, tmp_path, monkeypatch):
    archive = make_cifar100_tar(tmp_path / "served.tar.gz")
    blob = archive.read_bytes()
    server.files["/cifar-100-python.tar.gz"] = blob
    monkeypatch.setattr(cifar_fs, "URL", f"{server.url}/cifar-100-python.tar.gz")
    monkeypatch.setattr(cifar_fs, "MD5", _md5(blob))
    data_dir = tmp_path / "data"

    with pytest.raises(DataError, match="rmaml-data download --dataset=cifar_fs"):
        sources.load_split("cifar_fs", "train", data_dir=data_dir, cache_dir=tmp_path / "cache")
    train = sources.load_split("cifar_fs", "train", data_dir=data_dir, cache_dir=tmp_path / "cache",
                               download=True)

    folder = data_dir / "cifar_fs"
    assert sorted(os.listdir(folder)) == ["cifar-100-python.tar.gz", "cifar_fs_test.npz",
                                          "cifar_fs_train.npz", "cifar_fs_val.npz"]
    assert (folder / "cifar-100-python.tar.gz").read_bytes() == blob
    names = fine_names()
    for split, num_classes in (("train", 64), ("val", 16), ("test", 20)):
        with np.load(folder / f"cifar_fs_{split}.npz", allow_pickle=False) as f:
            assert sorted(f.files) == ["class_names", "coarse_labels", "fine_labels", "images", "labels"]
            assert f["images"].dtype == np.uint8 and f["images"].shape == (num_classes * 4, 32, 32, 3)
            for key in ("labels", "fine_labels", "coarse_labels"):
                assert f[key].dtype == np.int64 and f[key].shape == (num_classes * 4,)
            assert f["class_names"].dtype.kind == "U"
            class_names = tuple(f["class_names"])
            assert class_names == cifar_fs.split_class_names(split)
            np.testing.assert_array_equal(f["labels"], np.repeat(np.arange(num_classes), 4))
            fine = np.array([names.index(n) for n in class_names]).repeat(4)
            np.testing.assert_array_equal(f["fine_labels"], fine)
            np.testing.assert_array_equal(f["coarse_labels"], fine // 5)
            # Channel-major rows became HWC, row-major.
            images = f["images"]
            np.testing.assert_array_equal(images[:, :, :, 0], np.broadcast_to(fine[:, None, None], (len(fine), 32, 32)))
            np.testing.assert_array_equal(images[0, :, :, 2], (np.arange(1024) % 251).reshape(32, 32))

    assert train.images.shape == (64, 4, 32, 32, 3) and train.images.dtype == np.uint8
    assert train.class_names == cifar_fs.split_class_names("train")
    # Within a class: CIFAR-100 train images in file order, then test images.
    np.testing.assert_array_equal(train.images[5, :, 0, 0, 1], [0, 1, 2, 10])
    assert train.images[5, 0, 0, 0, 0] == names.index(train.class_names[5])

    hits = server.hits["/cifar-100-python.tar.gz"]
    sources.load_split("cifar_fs", "val", data_dir=data_dir, cache_dir=tmp_path / "cache", download=True)
    assert server.hits["/cifar-100-python.tar.gz"] == hits


def test_forbidden_pickle_global_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    command = f"touch {marker}".encode()
    evil = b"\x80\x02cos\nsystem\n" + _p2((command,)) + b"R."
    with pytest.raises(DataError, match=r"os\.system"):
        cifar_fs.safe_load_pickle(evil, source="evil.pkl")
    archive = make_cifar100_tar(tmp_path / "cifar-100-python.tar.gz", meta=evil)
    with pytest.raises(DataError) as err:
        cifar_fs.read_cifar100(archive)
    assert "os.system" in str(err.value) and str(archive) in str(err.value)
    assert not marker.exists()


def test_corrupt_cifar_archive_names_the_file(tmp_path):
    archive = make_cifar100_tar(tmp_path / "cifar-100-python.tar.gz")
    archive.write_bytes(archive.read_bytes()[:2000])
    with pytest.raises(DataError, match="Delete it and download it again") as err:
        cifar_fs.build(archive, tmp_path / "out")
    assert str(archive) in str(err.value)
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []

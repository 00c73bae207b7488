"""Checksummed, atomic downloads (urllib only) and atomic `.npz` writes.

A file appears at its destination only once it is complete and verified: bytes
are streamed into a hidden temporary file in the destination directory (so the
final `os.replace` is an atomic rename on the same file system) and the
temporary file is removed on every failure path.
"""

import contextlib
import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.request

import numpy as np
from absl import logging

from tf_rmaml.data.errors import DataError

_CHUNK_BYTES = 1 << 20
_USER_AGENT = "tf-rmaml-data/0.1 (python urllib)"
_HEX_LENGTHS = {"md5": 32, "sha256": 64}


def file_digest(path, algorithm="sha256"):
    """Returns the lowercase hex digest of the file at `path`.

    Args:
      path: file to hash.
      algorithm: a `hashlib` name, e.g. "md5" or "sha256".
    """
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def _expected_digests(md5, sha256):
    """Validates the given checksums; returns {algorithm: lowercase hex}."""
    expected = {}
    for name, value in (("md5", md5), ("sha256", sha256)):
        if value is None:
            continue
        value = value.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{%d}" % _HEX_LENGTHS[name], value):
            raise DataError(
                f"{name}={value!r} is not a valid {name} checksum: expected "
                f"{_HEX_LENGTHS[name]} hexadecimal digits.")
        expected[name] = value
    return expected


def _mismatches(actual, expected):
    return [(name, expected[name], actual[name])
            for name in expected if actual[name] != expected[name]]


def _describe(mismatches):
    return "; ".join(f"{name} expected {want}, got {got}"
                     for name, want, got in mismatches)


def _manual_hint(url, dest_path, expected):
    sums = ", ".join(f"{k} {v}" for k, v in expected.items())
    return (f"To get the file manually, download {url} on a machine with "
            f"internet access and put it at {dest_path}"
            + (f" (expected {sums})." if sums else "."))


def _stream(url, out, hashers, timeout, dest_path, expected):
    """Copies the body of `url` into `out`, feeding `hashers`; returns bytes.

    Raises:
      DataError: the server cannot be reached, answers with an HTTP error, or
        the transfer stops early (fewer bytes than Content-Length, a reset
        connection, a timeout, or any other exception while reading).
    """
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    received = 0
    total = None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.strip().isdigit():
                total = int(length)
            logging.info("Downloading %s (%s bytes) to %s", url,
                         total if total is not None else "unknown", dest_path)
            while True:
                chunk = response.read(_CHUNK_BYTES)
                if not chunk:
                    break
                out.write(chunk)
                for hasher in hashers.values():
                    hasher.update(chunk)
                received += len(chunk)
                logging.log_every_n_seconds(
                    logging.INFO, "Downloading %s: %d / %s bytes", 10, url,
                    received, total if total is not None else "?")
    except urllib.error.HTTPError as e:
        raise DataError(
            f"Downloading {url} failed with HTTP {e.code} ({e.reason}). "
            + _manual_hint(url, dest_path, expected)) from e
    except urllib.error.URLError as e:
        raise DataError(
            f"Cannot reach {url} ({e.reason}); is this machine offline? "
            + _manual_hint(url, dest_path, expected)) from e
    except Exception as e:  # pylint: disable=broad-except
        # Reset connections, timeouts mid-body, IncompleteRead for chunked
        # bodies, disk-full on write: all mean "no usable file".
        raise DataError(
            f"Download of {url} was interrupted after {received} bytes "
            f"({type(e).__name__}: {e}). Nothing was written to {dest_path}; "
            "run the command again. " + _manual_hint(url, dest_path, expected)
        ) from e
    # http.client returns b"" (no exception) when a Content-Length body is cut
    # short, so the length has to be checked here.
    if total is not None and received != total:
        raise DataError(
            f"Download of {url} stopped early: got {received} of {total} "
            f"bytes. Nothing was written to {dest_path}; run the command "
            "again. " + _manual_hint(url, dest_path, expected))
    return received


def download(url, dest_path, *, md5=None, sha256=None, timeout=60):
    """Downloads `url` to `dest_path`, verified and atomically.

    If `dest_path` already exists and matches the given checksums, nothing is
    downloaded. If it exists and does not match, it is downloaded again (and
    replaced only once the new copy verifies). Without any checksum an existing
    file is kept as is.

    Args:
      url: http(s) (or file) URL.
      dest_path: where the file should end up; parent folders are created.
      md5: optional expected md5 (hex).
      sha256: optional expected sha256 (hex).
      timeout: socket timeout in seconds, for connecting and for each read.

    Returns:
      `dest_path` as an absolute path.

    Raises:
      DataError: no network, HTTP error, interrupted transfer, or checksum
        mismatch. In every case nothing is left at `dest_path` (an existing
        file there is not touched) and no temporary file is left behind.

    Example:
      path = download(
          "https://example.org/data.zip", "/data/omniglot/data.zip",
          md5="68d2efa1b9178cc56df9314c21c6e718")
    """
    dest_path = os.path.abspath(os.fspath(dest_path))
    expected = _expected_digests(md5, sha256)
    if os.path.isfile(dest_path):
        if not expected:
            logging.info("%s already exists (no checksum given); not "
                         "downloading %s", dest_path, url)
            return dest_path
        actual = {name: file_digest(dest_path, name) for name in expected}
        bad = _mismatches(actual, expected)
        if not bad:
            logging.info("%s already exists with the right checksum; "
                         "skipping download", dest_path)
            return dest_path
        logging.warning("%s exists but does not match (%s); downloading it "
                        "again", dest_path, _describe(bad))

    base = os.path.basename(dest_path)
    hashers = {name: hashlib.new(name) for name in expected}
    with atomic_file(dest_path, suffix=".part") as out:
        size = _stream(url, out, hashers, timeout, dest_path, expected)
        actual = {name: h.hexdigest() for name, h in hashers.items()}
        bad = _mismatches(actual, expected)
        if bad:
            raise DataError(
                f"Checksum mismatch for {base} downloaded from {url}: "
                f"{_describe(bad)}. The download was discarded; nothing was "
                f"written to {dest_path}. Try again; if it keeps failing, the "
                "server is serving a different file. "
                + _manual_hint(url, dest_path, expected))
    logging.info("Saved %s (%d bytes)", dest_path, size)
    return dest_path


def write_npz_atomic(path, arrays, *, compress=True):
    """Writes `arrays` (a dict name -> array) to `path` as `.npz`, atomically.

    Readers never see a half-written file: the data goes to a hidden temporary
    file next to `path`, which is renamed into place when complete.

    Args:
      path: destination, normally ending in `.npz`; parent folders are created.
      arrays: dict of array name to numpy array (no object arrays).
      compress: use `np.savez_compressed` (zip deflate) instead of `np.savez`.

    Returns:
      `path` as an absolute path.
    """
    path = os.path.abspath(os.fspath(path))
    with atomic_file(path) as f:
        (np.savez_compressed if compress else np.savez)(f, **arrays)
    return path


@contextlib.contextmanager
def atomic_file(path, suffix=".tmp"):
    """Opens a hidden temporary file beside `path` for writing (binary).

    On a clean exit the file is renamed to `path` (an atomic rename on the same file
    system); on any exception it is removed and `path` is left as it was.
    """
    dest_dir, base = os.path.split(os.path.abspath(os.fspath(path)))
    os.makedirs(dest_dir, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=f".{base}.", suffix=suffix, dir=dest_dir)
    done = False
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp_path, 0o644)  # mkstemp creates 0600 files.
        os.replace(tmp_path, path)
        done = True
    finally:
        if not done:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp_path)


def check_image_size(image_size, dataset, default):
    """Returns `image_size` as an int, or raises DataError naming the dataset's default."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise DataError(f"image_size={image_size!r} is invalid: use a positive int ({dataset} default {default}).")
    return int(image_size)

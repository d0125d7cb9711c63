"""resolve / fetch / sha256_file: lookup order, caching, checksums and download errors."""

from __future__ import annotations

import hashlib
import http.server
import socket
import sys
import threading
from pathlib import Path

import pytest

import modelyard.data as mdata
from modelyard.data import _download
from modelyard.errors import ChecksumError, DataError, DownloadError, ModelyardError

CONTENT = b"a small file served by the test mirror\n" * 100
SHA = hashlib.sha256(CONTENT).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# -- sha256_file ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 1 << 20, (1 << 20) + 7])
def test_sha256_file_matches_hashlib(tmp_path: Path, size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert mdata.sha256_file(path) == hashlib.sha256(data).hexdigest(), f"{size=}"
    assert mdata.sha256_file(path, chunk_size=1000) == hashlib.sha256(data).hexdigest(), f"{size=}, chunked"


def test_sha256_file_of_published_file(shared_data: Path) -> None:
    # Reference: the SHA-256 listed in the data README.
    assert mdata.sha256_file(shared_data / "adult" / "adult.names") == mdata.FILES["adult/adult.names"].sha256


# -- resolve: downloads through a mirror --------------------------------------------------


def test_resolve_downloads_verifies_and_caches(mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELYARD_DATA_DIR", raising=False)
    monkeypatch.setenv("MODELYARD_DATA_MIRROR", mirror.url + "/")  # a trailing slash is fine
    mirror.add("toy/small.txt", CONTENT)
    cache = tmp_path / "cache"

    path = mdata.resolve("toy", "small.txt", SHA, cache_dir=cache, progress=False)
    assert path == cache / "toy" / "small.txt"
    assert path.read_bytes() == CONTENT
    assert mirror.requests == ["/toy/small.txt"]
    assert _leftovers(cache) == ["toy/small.txt"]  # no temporary file left behind

    again = mdata.resolve("toy", "small.txt", SHA, cache_dir=cache, progress=False)
    assert again == path
    assert mirror.requests == ["/toy/small.txt"], "the second call must be served from the cache"


def test_resolve_builtin_file_through_mirror(mirror, shared_data: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MODELYARD_DATA_DIR", raising=False)
    monkeypatch.setenv("MODELYARD_DATA_MIRROR", mirror.url)
    monkeypatch.setenv("MODELYARD_CACHE_DIR", str(tmp_path / "env-cache"))  # the cache from the environment
    mirror.copy(shared_data / "adult" / "adult.names", "adult/adult.names")
    entry = mdata.FILES["adult/adult.names"]

    path = mdata.resolve("adult", "adult.names", entry.sha256)
    assert path == tmp_path / "env-cache" / "adult" / "adult.names"
    assert mdata.sha256_file(path) == entry.sha256
    assert mirror.requests == ["/adult/adult.names"]


def test_download_with_progress_bar_on_a_terminal(mirror, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MODELYARD_DATA_MIRROR", mirror.url)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # takes the rich progress-bar path
    mirror.add("toy/small.txt", CONTENT)
    path = mdata.resolve("toy", "small.txt", SHA, cache_dir=tmp_path / "cache", progress=True)
    assert path.read_bytes() == CONTENT


def test_served_file_with_wrong_bytes_raises_and_keeps_nothing(mirror, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MODELYARD_DATA_MIRROR", mirror.url)
    tampered = CONTENT.replace(b"small", b"smell")
    mirror.add("toy/small.txt", tampered)
    cache = tmp_path / "cache"
    url = f"{mirror.url}/toy/small.txt"

    with pytest.raises(ChecksumError) as info:
        mdata.resolve("toy", "small.txt", SHA, cache_dir=cache, progress=False)
    actual = hashlib.sha256(tampered).hexdigest()
    assert str(info.value) == (
        f"Downloaded file small.txt from {url} has SHA-256 {actual}, expected {SHA}; it was not kept. "
        "The download was corrupted or the file changed at its source: try again, or set "
        "MODELYARD_DATA_DIR to a folder holding a verified copy."
    )
    assert _leftovers(cache) == []


def test_server_404_raises_download_error(mirror, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MODELYARD_DATA_MIRROR", mirror.url)
    with pytest.raises(DownloadError) as info:
        mdata.resolve("toy", "absent.txt", SHA, cache_dir=tmp_path / "cache", progress=False)
    url = f"{mirror.url}/toy/absent.txt"
    assert str(info.value) == (
        f"Could not download {url}: HTTP 404 File not found. Check the network connection (or set "
        "MODELYARD_DATA_MIRROR to a reachable mirror), or set MODELYARD_DATA_DIR to a folder that already holds "
        "the file."
    )
    assert isinstance(info.value, (ModelyardError, OSError))
    assert mirror.requests == ["/toy/absent.txt"]
    assert _leftovers(tmp_path / "cache") == []


def test_refused_connection_raises_download_error(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port with nothing listening on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/toy/small.txt"
    with pytest.raises(DownloadError, match=r"^Could not download http://127\.0\.0\.1:\d+/toy/small\.txt: .*refused"):
        mdata.fetch(url, tmp_path / "cache" / "small.txt", sha256=SHA, timeout=5, progress=False)
    assert _leftovers(tmp_path / "cache") == []


def test_fetch_replaces_an_existing_file_atomically(mirror, tmp_path: Path) -> None:
    mirror.add("toy/small.txt", CONTENT)
    dest = tmp_path / "out" / "small.txt"
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    assert mdata.fetch(f"{mirror.url}/toy/small.txt", dest, sha256=SHA.upper(), progress=False) == dest
    assert dest.read_bytes() == CONTENT
    assert _leftovers(dest.parent) == ["small.txt"]


def test_fetch_file_url(tmp_path: Path) -> None:
    source = tmp_path / "src.txt"
    source.write_bytes(CONTENT)
    dest = mdata.fetch(source.as_uri(), tmp_path / "dst" / "small.txt", sha256=SHA, progress=False)
    assert dest.read_bytes() == CONTENT


# -- resolve: local files ---------------------------------------------------------------


def test_resolve_prefers_data_dir_and_makes_no_request(mirror, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MODELYARD_DATA_MIRROR", mirror.url)
    data_dir = tmp_path / "data"
    (data_dir / "toy").mkdir(parents=True)
    (data_dir / "toy" / "small.txt").write_bytes(CONTENT)
    cache = tmp_path / "cache"

    assert mdata.resolve("toy", "small.txt", SHA, data_dir=data_dir, cache_dir=cache) == data_dir / "toy" / "small.txt"
    monkeypatch.setenv("MODELYARD_DATA_DIR", str(data_dir))
    assert mdata.resolve("toy", "small.txt", SHA, cache_dir=cache) == data_dir / "toy" / "small.txt"
    assert mirror.requests == []
    assert not cache.exists()


def test_resolve_falls_back_from_data_dir_to_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "toy").mkdir(parents=True)
    (cache / "toy" / "small.txt").write_bytes(CONTENT)
    found = mdata.resolve("toy", "small.txt", SHA, data_dir=tmp_path / "empty", cache_dir=cache, download=False)
    assert found == cache / "toy" / "small.txt"


@pytest.mark.parametrize("where", ["data_dir", "cache"])
def test_local_file_with_wrong_checksum(tmp_path: Path, where: str) -> None:
    root = tmp_path / where
    (root / "toy").mkdir(parents=True)
    bad = root / "toy" / "small.txt"
    bad.write_bytes(b"not the published bytes")
    kwargs = {"data_dir": root} if where == "data_dir" else {"cache_dir": root}
    with pytest.raises(ChecksumError) as info:
        mdata.resolve("toy", "small.txt", SHA, **kwargs)
    actual = hashlib.sha256(b"not the published bytes").hexdigest()
    assert str(info.value) == (
        f"{bad} has SHA-256 {actual}, expected {SHA}. The file is corrupted or a different version: "
        "delete it (it will be downloaded again) or replace it with the published file."
    )
    assert isinstance(info.value, DataError)
    assert bad.read_bytes() == b"not the published bytes", "a file the user put there is never deleted"


def test_no_local_file_and_download_false(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MODELYARD_DATA_DIR", raising=False)
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as info:
        mdata.resolve("toy", "small.txt", SHA, data_dir=tmp_path / "data", cache_dir=cache, download=False)
    looked = [str(tmp_path / "data" / "toy" / "small.txt"), str(cache / "toy" / "small.txt")]
    assert str(info.value) == (
        f"Data file toy/small.txt not found; looked in {looked}. Set MODELYARD_DATA_DIR to a folder holding "
        "toy/small.txt, or pass download=True."
    )


def test_unknown_file_without_mirror_has_no_source(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MODELYARD_DATA_DIR", raising=False)
    with pytest.raises(DataError, match=r"^Data file toy/small\.txt not found \(looked in .*\) and no download URL"):
        mdata.resolve("toy", "small.txt", SHA, cache_dir=tmp_path / "cache")


def test_builtin_file_downloads_from_its_canonical_url(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MODELYARD_DATA_DIR", raising=False)
    calls = []

    def fake_fetch(url, dest, *, sha256, timeout=60, progress=True):
        calls.append((url, Path(dest), sha256))
        return Path(dest)

    monkeypatch.setattr(_download, "fetch", fake_fetch)
    for key, url in [
        ("adult/adult.test", "https://archive.ics.uci.edu/ml/machine-learning-databases/adult/adult.test"),
        (
            "compas/compas-scores-two-years.csv",
            "https://raw.githubusercontent.com/propublica/compas-analysis/master/compas-scores-two-years.csv",
        ),
        (
            "fashion-mnist/t10k-labels-idx1-ubyte.gz",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-labels-idx1-ubyte.gz",
        ),
        (
            "mnist/train-images-idx3-ubyte.gz",
            "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",
        ),
    ]:
        entry = mdata.FILES[key]
        mdata.resolve(entry.dataset_dir, entry.filename, entry.sha256, cache_dir=tmp_path)
        assert calls[-1] == (url, tmp_path / key, entry.sha256)


def test_builtin_table_matches_data_readme() -> None:
    # The SHA-256 block of the shared data README, copied here as the reference.
    readme = """
5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d  adult/adult.data
a2a9044bc167a35b2361efbabec64e89d69ce82d9790d2980119aac5fd7e9c05  adult/adult.test
c248284c0b5de30c9e1958d6cdd168a34a654758b620e68f46aefa83fc0a576a  adult/adult.names
c451db85908b2f7fef1d83203bedf6b71ecda0d5af468d82ae62178f91d0cc7d  compas/compas-scores-two-years.csv
3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84  fashion-mnist/train-images-idx3-ubyte.gz
a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845  fashion-mnist/train-labels-idx1-ubyte.gz
346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073  fashion-mnist/t10k-images-idx3-ubyte.gz
67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5  fashion-mnist/t10k-labels-idx1-ubyte.gz
440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609  mnist/train-images-idx3-ubyte.gz
3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c  mnist/train-labels-idx1-ubyte.gz
8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6  mnist/t10k-images-idx3-ubyte.gz
f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6  mnist/t10k-labels-idx1-ubyte.gz
"""
    expected = {key: sha for sha, key in (line.split() for line in readme.strip().splitlines())}
    assert {key: f.sha256 for key, f in mdata.FILES.items()} == expected


def test_shared_files_match_the_table(shared_data: Path) -> None:
    for key, entry in mdata.FILES.items():
        assert mdata.sha256_file(shared_data / key) == entry.sha256, key


def test_truncated_download_raises_download_error(tmp_path: Path) -> None:
    class Truncating(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(CONTENT)))
            self.end_headers()
            self.wfile.write(CONTENT[:100])  # then the connection closes
            self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Truncating)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/toy/small.txt"
    try:
        with pytest.raises(DownloadError) as info:
            mdata.fetch(url, tmp_path / "cache" / "small.txt", sha256=SHA, progress=False)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    expected = f"Could not download {url}: the connection closed after 100 of {len(CONTENT)} bytes."
    assert str(info.value).startswith(expected)
    assert _leftovers(tmp_path / "cache") == []

"""Shared fixtures of the data-layer tests.

Tests that need the real data sets take them from ``$MODELYARD_DATA_DIR`` (the
project's ``../shared/data``) and are skipped with a reason when it is unset. No test
downloads from the internet: downloads go to a local HTTP server (:func:`mirror`).
"""

from __future__ import annotations

import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

import modelyard.data as mdata

_SHARED = os.environ.get("MODELYARD_DATA_DIR")


@pytest.fixture(autouse=True)
def _isolated_download_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test writes to ~/.cache or follows a mirror set in the caller's environment."""
    monkeypatch.setenv("MODELYARD_CACHE_DIR", str(tmp_path_factory.mktemp("default-cache")))
    monkeypatch.delenv("MODELYARD_DATA_MIRROR", raising=False)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder, or skip."""
    if not _SHARED:
        pytest.skip("needs the real data sets: set MODELYARD_DATA_DIR to the shared data folder (../shared/data)")
    path = Path(_SHARED)
    if not path.is_dir():
        pytest.skip(f"MODELYARD_DATA_DIR={_SHARED} is not a folder")
    return path


def _load(name: str, shared: Path, **kwargs):
    # download=False: a test must never reach the internet, even if a file is missing.
    return mdata.load(name, data_dir=shared, download=False, **kwargs)


@pytest.fixture(scope="session")
def adult(shared_data: Path) -> mdata.TabularData:
    return _load("adult", shared_data)


@pytest.fixture(scope="session")
def compas(shared_data: Path) -> mdata.TabularData:
    return _load("compas", shared_data)


@pytest.fixture(scope="session")
def mnist(shared_data: Path) -> mdata.ImageData:
    return _load("mnist", shared_data)


@pytest.fixture(scope="session")
def fashion_mnist(shared_data: Path) -> mdata.ImageData:
    return _load("fashion-mnist", shared_data)  # the hyphenated spelling must work too


@dataclass
class Mirror:
    """A local HTTP server serving ``root`` (laid out ``<dataset_dir>/<filename>``)."""

    root: Path
    url: str
    requests: list[str] = field(default_factory=list)  # request paths, in order

    def add(self, relative: str, content: bytes) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path

    def copy(self, source: Path, relative: str) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)
        return path


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    """A real ``ThreadingHTTPServer`` on 127.0.0.1, random port, counting the requests it gets."""
    root = tmp_path / "mirror"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            requests.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep test output quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Mirror(root=root, url=f"http://127.0.0.1:{server.server_address[1]}", requests=requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

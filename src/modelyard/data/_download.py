"""Find data files locally or download them, always verifying their SHA-256.

A data file is named by its data set folder and file name (``adult/adult.data``).
:func:`resolve` looks for it, in this order:

1. ``<data_dir>/<dataset_dir>/<filename>``, where ``data_dir`` is the argument or
   ``$MODELYARD_DATA_DIR`` (a shared, read-only folder of verified files);
2. ``<cache_dir>/<dataset_dir>/<filename>``, where ``cache_dir`` is the argument,
   ``$MODELYARD_CACHE_DIR`` or ``~/.cache/modelyard/data``;
3. a download into the cache from the file's canonical URL (kept in the built-in
   data set table, :mod:`modelyard.data._builtin`), or from
   ``$MODELYARD_DATA_MIRROR/<dataset_dir>/<filename>`` when a mirror is set.

Every file found or fetched is checked against its SHA-256 before it is used. A
download goes to a temporary file beside its destination and is renamed into place
only once its checksum matches, so the cache never holds a partial or corrupted file.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modelyard._atomic import atomic_path
from modelyard.errors import ChecksumError, DataError, DownloadError

__all__ = ["fetch", "resolve", "sha256_file", "default_cache_dir", "DATA_DIR_ENV", "CACHE_DIR_ENV", "MIRROR_ENV"]

log = logging.getLogger(__name__)

DATA_DIR_ENV = "MODELYARD_DATA_DIR"  # a folder of verified files, laid out <dataset_dir>/<filename>
CACHE_DIR_ENV = "MODELYARD_CACHE_DIR"  # where downloads go; same layout
MIRROR_ENV = "MODELYARD_DATA_MIRROR"  # base URL that replaces every canonical URL: <mirror>/<dataset_dir>/<filename>

_CHUNK = 1 << 20  # 1 MiB: large enough that hashing runs at memory speed, small enough to stream
_USER_AGENT = "modelyard-data/0.1 (+https://github.com/modelyard/modelyard)"


def sha256_file(path: str | os.PathLike[str], *, chunk_size: int = _CHUNK) -> str:
    """SHA-256 of a file as a lowercase hex string, read in chunks.

    Parameters
    ----------
    path : str or path-like
        The file to hash.
    chunk_size : int, default=1 MiB
        Bytes read at a time; memory use stays at one chunk whatever the file size.

    Returns
    -------
    str
        64 hex digits.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """The download cache: ``$MODELYARD_CACHE_DIR`` when set, else ``~/.cache/modelyard/data``."""
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "modelyard" / "data"


@contextmanager
def _progress_bar(enabled: bool, total: int | None, description: str) -> Iterator[Any]:
    """Yield a callable ``advance(n_bytes)``; draws a transient rich bar on an interactive stderr only."""
    if not (enabled and sys.stderr.isatty()):
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _download_error(url: str, reason: str) -> DownloadError:
    return DownloadError(
        f"Could not download {url}: {reason}. Check the network connection (or set {MIRROR_ENV} to a reachable "
        f"mirror), or set {DATA_DIR_ENV} to a folder that already holds the file."
    )


def fetch(url: str, dest: str | os.PathLike[str], *, sha256: str, timeout: float = 60, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` and verify its SHA-256.

    The body is streamed to a temporary file in ``dest``'s folder while it is hashed;
    only when the digest matches is the file renamed to ``dest`` (an atomic
    :func:`os.replace`), so ``dest`` is either absent or complete and verified.

    Parameters
    ----------
    url : str
        Where to download from (``http``, ``https`` or ``file``).
    dest : str or path-like
        Where the file ends up; its folder is created if needed.
    sha256 : str
        The expected SHA-256, as hex.
    timeout : float, default=60
        Seconds to wait for the connection and for each read.
    progress : bool, default=True
        Show a transient progress bar when stderr is an interactive terminal.

    Returns
    -------
    Path
        ``dest``.

    Raises
    ------
    DownloadError
        On an HTTP error status, a refused or timed-out connection, or a truncated body.
    ChecksumError
        If the downloaded bytes do not have the expected SHA-256 (nothing is kept).
    """
    dest = Path(dest)
    expected = sha256.lower()
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    log.info("Downloading %s to %s", url, dest)
    with atomic_path(dest) as tmp, open(tmp, "wb") as out:
        request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
        try:
            # The URL comes from the built-in table, the caller or the user's mirror.
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                received = 0
                with _progress_bar(progress, total, dest.name) as advance:
                    while chunk := response.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        received += len(chunk)
                        advance(len(chunk))
                if total is not None and received != total:
                    raise _download_error(url, f"the connection closed after {received} of {total} bytes")
        except urllib.error.HTTPError as exc:
            raise _download_error(url, f"HTTP {exc.code} {exc.reason}") from exc
        except urllib.error.URLError as exc:
            raise _download_error(url, str(exc.reason)) from exc
        except (http.client.HTTPException, TimeoutError, ConnectionError) as exc:
            raise _download_error(url, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
        out.flush()
        actual = digest.hexdigest()
        if actual != expected:  # raised inside atomic_path: the temporary file is removed, dest untouched
            raise ChecksumError(
                f"Downloaded file {dest.name} from {url} has SHA-256 {actual}, expected {expected}; it was not kept. "
                "The download was corrupted or the file changed at its source: try again, or set "
                f"{DATA_DIR_ENV} to a folder holding a verified copy."
            )
    return dest


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None


def _verified(path: Path, sha256: str) -> Path:
    actual = sha256_file(path)
    if actual != sha256.lower():
        raise ChecksumError(
            f"{path} has SHA-256 {actual}, expected {sha256.lower()}. The file is corrupted or a different "
            "version: delete it (it will be downloaded again) or replace it with the published file."
        )
    return path


def resolve(
    dataset_dir: str,
    filename: str,
    sha256: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    url: str | None = None,
    progress: bool = True,
) -> Path:
    """Find a data file locally, or download it into the cache, and verify its SHA-256.

    Parameters
    ----------
    dataset_dir : str
        The data set's folder name (``"adult"``, ``"fashion-mnist"``).
    filename : str
        The file's name inside that folder.
    sha256 : str
        The expected SHA-256, as hex.
    data_dir : str or path-like, optional
        A folder holding ``<dataset_dir>/<filename>``; default ``$MODELYARD_DATA_DIR``.
    cache_dir : str or path-like, optional
        The download cache; default ``$MODELYARD_CACHE_DIR`` or ``~/.cache/modelyard/data``.
    download : bool, default=True
        Download the file when it is found nowhere locally.
    url : str, optional
        Where to download from; default the file's canonical URL from the built-in table.
        ``$MODELYARD_DATA_MIRROR``, when set, overrides both.
    progress : bool, default=True
        Show a progress bar while downloading (interactive terminals only).

    Returns
    -------
    Path
        The verified file.

    Raises
    ------
    ChecksumError
        If a local file, or the downloaded one, has the wrong SHA-256.
    DataError
        If the file is not found locally and ``download=False``, or no download source is known.
    DownloadError
        If the download fails.
    """
    relative = Path(dataset_dir) / filename
    data_root = Path(data_dir).expanduser() if data_dir is not None else _env_path(DATA_DIR_ENV)
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    looked = []
    if data_root is not None:
        candidate = data_root / relative
        if candidate.is_file():
            return _verified(candidate, sha256)
        looked.append(str(candidate))
    cached = cache_root / relative
    if cached.is_file():
        return _verified(cached, sha256)
    looked.append(str(cached))

    if not download:
        raise DataError(
            f"Data file {relative.as_posix()} not found; looked in {looked}. Set {DATA_DIR_ENV} to a folder "
            f"holding {relative.as_posix()}, or pass download=True."
        )
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        source = f"{mirror.rstrip('/')}/{relative.as_posix()}"
    else:
        source = url or _canonical_url(dataset_dir, filename)
    if source is None:
        raise DataError(
            f"Data file {relative.as_posix()} not found (looked in {looked}) and no download URL is known for it. "
            f"Put it in {DATA_DIR_ENV}/{relative.as_posix()}, or set {MIRROR_ENV}."
        )
    return fetch(source, cached, sha256=sha256, progress=progress)


def _canonical_url(dataset_dir: str, filename: str) -> str | None:
    # Imported here: the built-in table imports this module.
    from modelyard.data._builtin import canonical_url

    return canonical_url(dataset_dir, filename)

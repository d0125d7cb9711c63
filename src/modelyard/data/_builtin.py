"""Built-in data sets: Adult, COMPAS, Fashion-MNIST and MNIST, with checksummed sources.

Each data set's files are listed in :data:`FILES` with their SHA-256 and canonical
URL; :func:`load` finds them through :func:`modelyard.data.resolve` (the data folder,
the cache, or a download) and parses them, handling each format's quirks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from modelyard._registry import Registry
from modelyard.data._download import resolve
from modelyard.data._image import ImageData, ImageSplit
from modelyard.data._readers import read_idx
from modelyard.data._schema import infer_schema
from modelyard.data._split import check_fractions, split_frame, split_indices
from modelyard.data._tabular import TabularData, TabularSplit
from modelyard.errors import DataError

__all__ = ["DataFile", "FILES", "DATASET_FILES", "DATASETS", "load", "builtin_files", "canonical_url"]


@dataclass(frozen=True)
class DataFile:
    """One published file of a built-in data set."""

    dataset_dir: str  # folder in the data dir and the cache ("fashion-mnist")
    filename: str
    sha256: str  # of the file as published, hex
    url: str  # canonical source; $MODELYARD_DATA_MIRROR replaces it

    @property
    def key(self) -> str:
        """``"<dataset_dir>/<filename>"``, the name used in ``sources``."""
        return f"{self.dataset_dir}/{self.filename}"


_UCI_ADULT = "https://archive.ics.uci.edu/ml/machine-learning-databases/adult/"
_COMPAS = "https://raw.githubusercontent.com/propublica/compas-analysis/master/"
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"

#: Every built-in file, by ``"<dataset_dir>/<filename>"``.
FILES: dict[str, DataFile] = {
    f.key: f
    for f in (
        *(
            DataFile("adult", name, sha, _UCI_ADULT + name)
            for name, sha in (
                ("adult.data", "5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d"),
                ("adult.test", "a2a9044bc167a35b2361efbabec64e89d69ce82d9790d2980119aac5fd7e9c05"),
                ("adult.names", "c248284c0b5de30c9e1958d6cdd168a34a654758b620e68f46aefa83fc0a576a"),
            )
        ),
        DataFile(
            "compas", "compas-scores-two-years.csv",
            "c451db85908b2f7fef1d83203bedf6b71ecda0d5af468d82ae62178f91d0cc7d", _COMPAS + "compas-scores-two-years.csv",
        ),
        *(
            DataFile("fashion-mnist", name, sha, _FASHION + name)
            for name, sha in (
                ("train-images-idx3-ubyte.gz", "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
                ("train-labels-idx1-ubyte.gz", "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
                ("t10k-images-idx3-ubyte.gz", "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
                ("t10k-labels-idx1-ubyte.gz", "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
            )
        ),
        *(
            DataFile("mnist", name, sha, _MNIST + name)
            for name, sha in (
                ("train-images-idx3-ubyte.gz", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
                ("train-labels-idx1-ubyte.gz", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
                ("t10k-images-idx3-ubyte.gz", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
                ("t10k-labels-idx1-ubyte.gz", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
            )
        ),
    )
}  # fmt: skip


#: The files each built-in data set reads, in the order its ``sources`` lists them.
DATASET_FILES: dict[str, tuple[str, ...]] = {
    "adult": ("adult/adult.data", "adult/adult.test"),
    "compas": ("compas/compas-scores-two-years.csv",),
    **{
        name: tuple(
            f"{folder}/{kind}-{what}-ubyte.gz" for kind in ("train", "t10k") for what in ("images-idx3", "labels-idx1")
        )
        for name, folder in (("mnist", "mnist"), ("fashion_mnist", "fashion-mnist"))
    },
}


def canonical_url(dataset_dir: str, filename: str) -> str | None:
    """The canonical download URL of a built-in file, or None if the file is not built in."""
    entry = FILES.get(f"{dataset_dir}/{filename}")
    return entry.url if entry else None


class _Files:
    """Resolves built-in files with the caller's options and records what was used."""

    def __init__(
        self, data_dir: str | os.PathLike[str] | None, cache_dir: str | os.PathLike[str] | None, download: bool
    ) -> None:
        self._options = {"data_dir": data_dir, "cache_dir": cache_dir, "download": download}
        self.sources: dict[str, str] = {}

    def path(self, key: str) -> Path:
        f = FILES[key]
        found = resolve(f.dataset_dir, f.filename, f.sha256, url=f.url, **self._options)  # type: ignore[arg-type]
        self.sources[key] = f.sha256
        return found


Loader = Callable[..., "TabularData | ImageData"]

#: Built-in data sets by name; each entry is a loader ``(files, *, valid, test, seed)``.
DATASETS: Registry[Loader] = Registry("data set")


def _tabular(
    name: str,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    test: pd.DataFrame,
    *,
    target: str,
    sensitive: tuple[str, ...],
    sources: dict[str, str],
) -> TabularData:
    # Vocabularies from the train split only; classes are the same in every split by construction.
    schema = infer_schema(train, target, sensitive=sensitive)
    splits = (TabularSplit(f, schema) for f in (train, valid, test))
    return TabularData(name, schema, *splits, sources=sources)


# -- Adult ---------------------------------------------------------------------------------

#: Columns of adult.data and adult.test, in file order (from adult.names).
ADULT_COLUMNS = (
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
    "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country", "income",
)  # fmt: skip
ADULT_NUMERIC = ("age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week")
ADULT_CLASSES = ("<=50K", ">50K")


def read_adult(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Parse ``adult.data`` or ``adult.test`` as published by UCI.

    Handles the quirks: fields separated by ``", "`` (spaces stripped), ``?`` for a
    missing value (NaN), the junk first line of ``adult.test`` (``|1x3 Cross
    validator``), its labels' trailing period (``>50K.`` becomes ``>50K``), and the
    trailing empty line. Numeric columns are int64, the others strings.
    """
    path = Path(path)
    with open(path, encoding="ascii", errors="replace") as fh:
        junk_first_line = fh.readline().startswith("|")
    dtypes = {c: ("int64" if c in ADULT_NUMERIC else "str") for c in ADULT_COLUMNS}
    try:
        frame = pd.read_csv(
            path,
            header=None,
            names=list(ADULT_COLUMNS),
            sep=",",
            skipinitialspace=True,  # the separator is ", "
            skiprows=1 if junk_first_line else 0,
            na_values=["?"],
            keep_default_na=False,  # only "?" marks a missing value in Adult
            dtype=dtypes,
            skip_blank_lines=True,
        )
    except (ValueError, pd.errors.ParserError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise DataError(f"{path} is not in the UCI Adult format: {reason}. Delete it and load it again.") from exc
    frame["income"] = frame["income"].str.strip().str.rstrip(".")
    bad = sorted(set(frame["income"].dropna()) - set(ADULT_CLASSES))
    if bad or frame["income"].isna().any():
        raise DataError(f"{path} has unexpected income labels {bad or ['(missing)']}; expected {list(ADULT_CLASSES)}.")
    return frame


@DATASETS.register("adult")
def _load_adult(files: _Files, *, valid: float, test: float | None, seed: int) -> TabularData:
    """UCI Adult: predict ``income`` (``<=50K`` / ``>50K``); sensitive ``sex`` and ``race``.

    With ``test=None`` the test split is the official ``adult.test`` (16,281 rows) and
    ``valid`` is a fraction of ``adult.data`` (32,561 rows). With a float ``test``, the
    union of both files is split.
    """
    data_key, test_key = DATASET_FILES["adult"]
    data = read_adult(files.path(data_key))
    official_test = read_adult(files.path(test_key))
    if test is None:
        train, valid_frame, _ = split_frame(data, "income", valid=valid, test=0.0, seed=seed, task="binary")
        test_frame = official_test
    else:
        union = pd.concat([data, official_test], ignore_index=True)
        train, valid_frame, test_frame = split_frame(union, "income", valid=valid, test=test, seed=seed, task="binary")
    return _tabular(
        "adult", train, valid_frame, test_frame, target="income", sensitive=("sex", "race"), sources=files.sources
    )


# -- COMPAS --------------------------------------------------------------------------------

#: The features of ProPublica's analysis (demographics and criminal history). Not
#: used, because they would leak the outcome or the tool under study: the COMPAS
#: scores (``decile_score``, ``score_text``, ``v_decile_score``), the recidivism
#: records (``is_recid``, ``r_*``, ``vr_*``, ``is_violent_recid``), and the dates and
#: custody periods measured after screening (``c_jail_out``, ``in_custody``, ``end``,
#: ``event``). Identifiers and names are not features either.
COMPAS_FEATURES = (
    "sex", "age", "age_cat", "race", "juv_fel_count", "juv_misd_count", "juv_other_count", "priors_count",
    "c_charge_degree",
)  # fmt: skip
COMPAS_TARGET = "two_year_recid"


@DATASETS.register("compas")
def _load_compas(files: _Files, *, valid: float, test: float | None, seed: int) -> TabularData:
    """ProPublica COMPAS: predict ``two_year_recid``; sensitive ``race`` and ``sex``.

    All 7,214 rows of ``compas-scores-two-years.csv`` are kept (ProPublica's own
    analysis filters them to 6,172); ``test`` defaults to 0.2.
    """
    (key,) = DATASET_FILES["compas"]
    path = files.path(key)
    try:
        frame = pd.read_csv(path, usecols=[*COMPAS_FEATURES, COMPAS_TARGET])
    except (ValueError, pd.errors.ParserError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise DataError(f"{path} is not ProPublica's COMPAS file: {reason}. Delete it and load it again.") from exc
    frame = frame[[*COMPAS_FEATURES, COMPAS_TARGET]]  # a fixed column order
    train, valid_frame, test_frame = split_frame(
        frame, COMPAS_TARGET, valid=valid, test=0.2 if test is None else test, seed=seed, task="binary"
    )
    return _tabular(
        "compas", train, valid_frame, test_frame, target=COMPAS_TARGET, sensitive=("race", "sex"),
        sources=files.sources,
    )  # fmt: skip


# -- MNIST and Fashion-MNIST ---------------------------------------------------------------

MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_IDX_IMAGES, _IDX_LABELS = 2051, 2049  # magic numbers: uint8 with 3 dimensions, uint8 with 1


def _read_idx_pair(images_path: Path, labels_path: Path, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 1, 28, 28)`` uint8 and labels ``(N,)`` int64 from an IDX image/label file pair."""
    images = read_idx(images_path, magic=_IDX_IMAGES)  # (N, H, W)
    labels = read_idx(labels_path, magic=_IDX_LABELS)  # (N,)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{images_path} holds images of shape {images.shape[1:]}, expected (28, 28).")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels; "
            "the files do not belong together."
        )
    if labels.size and int(labels.max()) >= n_classes:
        raise DataError(f"{labels_path} holds label {int(labels.max())}, expected 0..{n_classes - 1}.")
    return np.ascontiguousarray(images[:, None]), labels.astype(np.int64)  # (N, 1, 28, 28), (N,)


def _load_idx_dataset(
    name: str, classes: tuple[str, ...], files: _Files, *, valid: float, test: float | None, seed: int
) -> ImageData:
    train_images, train_labels, test_images, test_labels = (files.path(key) for key in DATASET_FILES[name])
    x_train, y_train = _read_idx_pair(train_images, train_labels, len(classes))
    x_test, y_test = _read_idx_pair(test_images, test_labels, len(classes))
    if test is None:
        train_idx, valid_idx, _ = split_indices(y_train, valid=valid, test=0.0, seed=seed, task="multiclass")
        test_split = ImageSplit(x_test, y_test)
    else:
        x_train, y_train = np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])
        train_idx, valid_idx, test_idx = split_indices(y_train, valid=valid, test=test, seed=seed, task="multiclass")
        test_split = ImageSplit(x_train[test_idx], y_train[test_idx])
    return ImageData(
        name=name,
        train=ImageSplit(x_train[train_idx], y_train[train_idx]),
        valid=ImageSplit(x_train[valid_idx], y_train[valid_idx]),
        test=test_split,
        classes=classes,
        sources=files.sources,
    )


@DATASETS.register("mnist")
def _load_mnist(files: _Files, *, valid: float, test: float | None, seed: int) -> ImageData:
    """MNIST digits, 28x28 grayscale, classes ``"0"`` .. ``"9"``; test = the official t10k files."""
    return _load_idx_dataset("mnist", MNIST_CLASSES, files, valid=valid, test=test, seed=seed)


@DATASETS.register("fashion_mnist")
def _load_fashion_mnist(files: _Files, *, valid: float, test: float | None, seed: int) -> ImageData:
    """Fashion-MNIST, 28x28 grayscale, 10 clothing classes; test = the official t10k files."""
    return _load_idx_dataset("fashion_mnist", FASHION_MNIST_CLASSES, files, valid=valid, test=test, seed=seed)


def load(
    name: str,
    *,
    valid: float = 0.1,
    test: float | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> TabularData | ImageData:
    """Load a built-in data set, split into train, valid and test.

    ======================== ================ ======================================================
    name                     returns          test split when ``test=None``
    ======================== ================ ======================================================
    ``adult``                TabularData      the official ``adult.test`` (16,281 rows)
    ``compas``               TabularData      a seeded, stratified 20%
    ``mnist``                ImageData        the official t10k files (10,000 images)
    ``fashion_mnist``        ImageData        the official t10k files (10,000 images)
    ======================== ================ ======================================================

    Parameters
    ----------
    name : str
        A data set from the table; ``fashion-mnist`` is accepted for ``fashion_mnist``.
    valid : float, default=0.1
        Fraction for validation, in (0, 1): of the official training file where there is
        an official test split, else of all rows. Seeded and stratified.
    test : float, optional
        A fraction in [0, 1) to split off all rows (official test files included) instead
        of using the data set's default test split.
    seed : int, default=0
        Seed of the splits.
    data_dir : str or path-like, optional
        Folder holding ``<dataset_dir>/<filename>``; default ``$MODELYARD_DATA_DIR``.
    cache_dir : str or path-like, optional
        Download cache; default ``$MODELYARD_CACHE_DIR`` or ``~/.cache/modelyard/data``.
    download : bool, default=True
        Download files found nowhere locally (from ``$MODELYARD_DATA_MIRROR`` when set).

    Returns
    -------
    TabularData or ImageData
        ``sources`` maps ``"<dataset_dir>/<filename>"`` of every file used to its SHA-256.

    Raises
    ------
    DataError
        For an unknown name (the message lists the known ones) or a file that cannot be used.
    ChecksumError
        If a file has the wrong SHA-256.
    DownloadError
        If a download fails.

    Examples
    --------
    >>> import modelyard as my
    >>> data = my.data.load("adult")  # doctest: +SKIP
    >>> len(data.test)  # doctest: +SKIP
    16281
    """
    loader = DATASETS.get(_dataset_key(name))
    check_fractions(valid, 0.0 if test is None else test)
    return loader(_Files(data_dir, cache_dir, download), valid=valid, test=test, seed=seed)


def _dataset_key(name: str) -> str:
    """The registry name for ``name`` (``fashion-mnist`` -> ``fashion_mnist``); DataError if unknown."""
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a data set name (a string); got {type(name).__name__}.")
    key = name.strip().lower().replace("-", "_")
    if key not in DATASETS:
        raise DataError(
            f"Unknown data set {name!r}. Known: {DATASETS.names()}. "
            "For your own data use modelyard.data.from_csv(path, target=...)."
        )
    return key


def builtin_files(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> list[tuple[str, Path, str]]:
    """Find (or download) and verify the files a built-in data set reads, without parsing them.

    For lineage and cache keys: the result names exactly the files whose digests
    :func:`load` puts in ``sources``.

    Parameters
    ----------
    name : str
        A built-in data set (see :func:`load`).
    data_dir, cache_dir, download
        As for :func:`load`.

    Returns
    -------
    list of (str, Path, str)
        ``("<dataset_dir>/<filename>", local path, sha256)`` per file, in ``sources`` order.
    """
    files = _Files(data_dir, cache_dir, download)
    return [(key, files.path(key), FILES[key].sha256) for key in DATASET_FILES[_dataset_key(name)]]

"""Built-in data sets against the counts in the shared data README and independent parses."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import modelyard.data as mdata
from modelyard.data._builtin import ADULT_COLUMNS, ADULT_NUMERIC, read_adult
from modelyard.errors import DataError


def _union(data: mdata.TabularData, *splits: str) -> pd.DataFrame:
    return pd.concat([data.splits[s].frame for s in splits], ignore_index=True)


# -- Adult ------------------------------------------------------------------------------


def test_adult_counts_match_readme(adult: mdata.TabularData) -> None:
    train_valid = _union(adult, "train", "valid")
    assert len(train_valid) == 32_561
    assert train_valid["income"].value_counts().to_dict() == {"<=50K": 24_720, ">50K": 7_841}
    assert train_valid["sex"].value_counts().to_dict() == {"Male": 21_790, "Female": 10_771}
    assert train_valid["race"].value_counts().to_dict() == {
        "White": 27_816, "Black": 3_124, "Asian-Pac-Islander": 1_039, "Amer-Indian-Eskimo": 311, "Other": 271,
    }  # fmt: skip
    assert int(train_valid.isna().any(axis=1).sum()) == 2_399  # rows with a "?"
    test = adult.test.frame
    assert len(test) == 16_281
    assert test["income"].value_counts().to_dict() == {"<=50K": 12_435, ">50K": 3_846}
    assert int(test.isna().any(axis=1).sum()) == 1_221


def test_adult_cleaning_and_dtypes(adult: mdata.TabularData) -> None:
    frame = _union(adult, "train", "valid", "test")
    assert list(frame.columns) == list(ADULT_COLUMNS)
    assert set(frame["income"]) == {"<=50K", ">50K"}  # no trailing periods
    for name in ADULT_NUMERIC:
        assert pd.api.types.is_integer_dtype(frame[name]), name
    strings = frame.select_dtypes(exclude="number")
    for name in strings.columns:
        values = strings[name].dropna()
        assert not values.str.contains(r"^\s|\s$|^\?$").any(), f"{name} has padded or '?' cells"
    assert not (frame == "?").any().any()
    assert frame["age"].between(17, 90).all()


def test_adult_schema(adult: mdata.TabularData) -> None:
    schema = adult.schema
    assert schema.target == "income" and schema.task == "binary"
    assert schema.classes == ("<=50K", ">50K")
    assert schema.sensitive == ("sex", "race")
    assert schema.numeric_names == list(ADULT_NUMERIC)
    assert schema.categorical_names == [
        "workclass", "education", "marital-status", "occupation", "relationship", "race", "sex", "native-country",
    ]  # fmt: skip
    for column in schema.categorical:  # vocabularies come from the train split only
        assert column.categories == tuple(sorted(adult.train.frame[column.name].dropna().unique())), column.name
    assert adult.sources == {key: mdata.FILES[key].sha256 for key in ("adult/adult.data", "adult/adult.test")}
    assert adult.test.y.dtype == np.int64 and set(np.unique(adult.test.y)) == {0, 1}


def test_adult_test_split_is_the_official_file(adult: mdata.TabularData, shared_data: Path) -> None:
    # Independent reference: parse adult.test line by line with plain Python.
    lines = (shared_data / "adult" / "adult.test").read_text().splitlines()
    rows = [line.split(", ") for line in lines[1:] if line.strip()]
    assert len(rows) == len(adult.test)
    expected = pd.DataFrame(rows, columns=list(ADULT_COLUMNS)).replace("?", np.nan)
    expected["income"] = expected["income"].str.rstrip(".")
    for name in ADULT_NUMERIC:
        expected[name] = expected[name].astype("int64")
    got = adult.test.frame
    for name in ADULT_COLUMNS:
        if name in ADULT_NUMERIC:
            assert got[name].tolist() == expected[name].tolist(), name
        else:
            assert got[name].fillna("<missing>").tolist() == expected[name].fillna("<missing>").tolist(), name


def test_adult_valid_is_stratified_fraction_of_adult_data(adult: mdata.TabularData) -> None:
    n, positives = 32_561, 7_841
    assert len(adult.valid) == round(0.1 * n)
    # Largest-remainder apportionment puts each class within one row of its exact share.
    assert abs(int(adult.valid.y.sum()) - 0.1 * positives) < 1
    assert abs(adult.valid.y.mean() - adult.train.y.mean()) < 1e-3


def test_adult_split_is_seeded(shared_data: Path, adult: mdata.TabularData) -> None:
    same = mdata.load("adult", data_dir=shared_data, download=False)
    pd.testing.assert_frame_equal(same.valid.frame, adult.valid.frame)
    pd.testing.assert_frame_equal(same.train.frame, adult.train.frame)
    other = mdata.load("adult", seed=1, data_dir=shared_data, download=False)
    assert not other.valid.frame.equals(adult.valid.frame)
    pd.testing.assert_frame_equal(other.test.frame, adult.test.frame)  # the official test split never moves


def test_adult_float_test_splits_the_union(shared_data: Path) -> None:
    data = mdata.load("adult", valid=0.1, test=0.2, data_dir=shared_data, download=False)
    n = 32_561 + 16_281
    assert (len(data.train), len(data.valid), len(data.test)) == (n - round(0.1 * n) - round(0.2 * n), 4884, 9768)
    positives = 7_841 + 3_846
    assert abs(int(data.test.y.sum()) - 0.2 * positives) < 1


def test_read_adult_rejects_other_formats(tmp_path: Path) -> None:
    path = tmp_path / "adult.data"
    path.write_text("39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, "
                    "2174, 0, 40, United-States, maybe\n")  # fmt: skip
    with pytest.raises(DataError, match=r"has unexpected income labels \['maybe'\]"):
        read_adult(path)
    path.write_text("x, State-gov\n")
    with pytest.raises(DataError, match=r"is not in the UCI Adult format"):
        read_adult(path)


# -- COMPAS -----------------------------------------------------------------------------


def test_compas(compas: mdata.TabularData) -> None:
    frame = _union(compas, "train", "valid", "test")
    assert len(frame) == 7_214
    assert frame["two_year_recid"].mean() == pytest.approx(0.451, abs=5e-4)
    assert frame["race"].value_counts().to_dict() == {
        "African-American": 3_696, "Caucasian": 2_454, "Hispanic": 637, "Other": 377, "Asian": 32,
        "Native American": 18,
    }  # fmt: skip
    assert frame["sex"].value_counts().to_dict() == {"Male": 5_819, "Female": 1_395}
    schema = compas.schema
    assert schema.target == "two_year_recid" and schema.classes == ("0", "1")
    assert schema.sensitive == ("race", "sex")
    assert schema.feature_names == [
        "sex", "age", "age_cat", "race", "juv_fel_count", "juv_misd_count", "juv_other_count", "priors_count",
        "c_charge_degree",
    ]  # fmt: skip
    leaky = {"decile_score", "score_text", "is_recid", "v_decile_score", "is_violent_recid", "event"}
    assert not leaky & set(frame.columns)
    assert (len(compas.test), len(compas.valid)) == (round(0.2 * 7_214), round(0.1 * 7_214))
    for split in compas.splits.values():  # stratified: every split within a row of the overall rate
        assert abs(int(split.y.sum()) - len(split) * 0.4507) < 1.5
    key = "compas/compas-scores-two-years.csv"
    assert compas.sources == {key: mdata.FILES[key].sha256}


# -- MNIST and Fashion-MNIST ------------------------------------------------------------

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def _check_images(data: mdata.ImageData, train_counts: list[int], test_counts: list[int]) -> None:
    assert data.train.x.shape == (54_000, 1, 28, 28) and data.train.x.dtype == np.uint8
    assert data.valid.x.shape == (6_000, 1, 28, 28)
    assert data.test.x.shape == (10_000, 1, 28, 28)
    for split in data.splits.values():
        assert split.y.dtype == np.int64 and len(split.y) == len(split.x)
    train_valid = np.concatenate([data.train.y, data.valid.y])
    assert np.bincount(train_valid, minlength=10).tolist() == train_counts
    assert np.bincount(data.test.y, minlength=10).tolist() == test_counts
    # Stratified validation split: each class within one image of 10% of its count.
    assert np.all(np.abs(np.bincount(data.valid.y, minlength=10) - 0.1 * np.array(train_counts)) < 1)


def test_mnist(mnist: mdata.ImageData) -> None:
    _check_images(mnist, MNIST_TRAIN_COUNTS, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    assert mnist.classes == tuple("0123456789")
    assert mnist.image_shape == (1, 28, 28)
    assert set(mnist.sources) == {
        f"mnist/{kind}-{what}" for kind in ("train", "t10k")
        for what in ("images-idx3-ubyte.gz", "labels-idx1-ubyte.gz")
    }


def test_fashion_mnist(fashion_mnist: mdata.ImageData) -> None:
    _check_images(fashion_mnist, [6000] * 10, [1000] * 10)
    assert fashion_mnist.name == "fashion_mnist"
    assert fashion_mnist.classes == (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )  # fmt: skip
    assert fashion_mnist.sources == {k: f.sha256 for k, f in mdata.FILES.items() if k.startswith("fashion-mnist/")}


def _gunzip(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())


def test_mnist_test_split_matches_a_direct_read(mnist: mdata.ImageData, shared_data: Path) -> None:
    # Independent reference: decompress and read past the 16- and 8-byte IDX headers with numpy.
    images = np.frombuffer(_gunzip(shared_data / "mnist/t10k-images-idx3-ubyte.gz")[16:], np.uint8)
    labels = np.frombuffer(_gunzip(shared_data / "mnist/t10k-labels-idx1-ubyte.gz")[8:], np.uint8)
    np.testing.assert_array_equal(mnist.test.x, images.reshape(10_000, 1, 28, 28))
    np.testing.assert_array_equal(mnist.test.y, labels.astype(np.int64))


def test_train_and_valid_images_come_from_the_train_file(mnist: mdata.ImageData, shared_data: Path) -> None:
    images = np.frombuffer(_gunzip(shared_data / "mnist/train-images-idx3-ubyte.gz")[16:], np.uint8).reshape(-1, 784)
    labels = np.frombuffer(_gunzip(shared_data / "mnist/train-labels-idx1-ubyte.gz")[8:], np.uint8)
    # Splits keep file order, so the train and valid rows interleave back into the file.
    keys = {img.tobytes() + bytes([lab]) for img, lab in zip(images, labels)}
    for split in (mnist.train, mnist.valid):
        flat = split.x.reshape(len(split), 784)
        assert all(img.tobytes() + bytes([lab]) in keys for img, lab in zip(flat[:500], split.y[:500]))


def test_image_split_with_float_test(shared_data: Path) -> None:
    data = mdata.load("mnist", valid=0.1, test=0.2, seed=3, data_dir=shared_data, download=False)
    assert (len(data.train), len(data.valid), len(data.test)) == (49_000, 7_000, 14_000)


# -- load --------------------------------------------------------------------------------


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(DataError) as info:
        mdata.load("adulte")
    assert str(info.value) == (
        "Unknown data set 'adulte'. Known: ['adult', 'compas', 'fashion_mnist', 'mnist']. "
        "For your own data use modelyard.data.from_csv(path, target=...)."
    )
    assert isinstance(info.value, ValueError)
    assert mdata.DATASETS.names() == ["adult", "compas", "fashion_mnist", "mnist"]


def test_bad_fractions_fail_before_any_file_is_read() -> None:
    with pytest.raises(DataError, match=r"^`valid` must be a fraction in \(0, 1\), got valid=0\.0\."):
        mdata.load("adult", valid=0.0, download=False)


def test_missing_files_without_download(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MODELYARD_DATA_DIR", raising=False)
    with pytest.raises(DataError, match=r"^Data file compas/compas-scores-two-years\.csv not found; looked in"):
        mdata.load("compas", cache_dir=tmp_path, download=False)


def test_load_downloads_through_a_mirror(mirror, shared_data: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MODELYARD_DATA_DIR", raising=False)
    monkeypatch.setenv("MODELYARD_DATA_MIRROR", mirror.url)
    for name in ("adult.data", "adult.test"):
        mirror.copy(shared_data / "adult" / name, f"adult/{name}")
    cache = tmp_path / "cache"
    first = mdata.load("adult", cache_dir=cache)
    assert sorted(mirror.requests) == ["/adult/adult.data", "/adult/adult.test"]
    second = mdata.load("adult", cache_dir=cache)
    assert len(mirror.requests) == 2, "the second load reads the cache"
    assert len(first.test) == len(second.test) == 16_281
    assert first.sources == second.sources


def test_idx_files_with_bad_headers(tmp_path: Path, shared_data: Path) -> None:
    # A label file where an image file belongs: the magic number check catches it.
    data_dir = tmp_path / "data"
    (data_dir / "mnist").mkdir(parents=True)
    for f in ("t10k-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (data_dir / "mnist" / f).write_bytes((shared_data / "mnist" / f).read_bytes())
    wrong = (shared_data / "mnist/train-labels-idx1-ubyte.gz").read_bytes()
    (data_dir / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(wrong)
    with pytest.raises(DataError, match="SHA-256"):  # the checksum catches it first
        mdata.load("mnist", data_dir=data_dir, download=False)
    with pytest.raises(DataError, match=r"has IDX magic number 2049, expected 2051"):
        mdata.read_idx(data_dir / "mnist" / "train-images-idx3-ubyte.gz", magic=2051)


@pytest.mark.parametrize("name", ["adult", "compas", "mnist", "fashion-mnist"])
def test_builtin_files_name_what_load_records(name: str, shared_data: Path, request) -> None:
    data = request.getfixturevalue(name.replace("-", "_"))
    files = mdata.builtin_files(name, data_dir=shared_data, download=False)
    assert [(key, sha) for key, _, sha in files] == list(data.sources.items())
    assert all(path == shared_data / key for key, path, _ in files)


def test_builtin_files_unknown_name() -> None:
    with pytest.raises(DataError, match=r"^Unknown data set 'iris'\. Known: \["):
        mdata.builtin_files("iris")

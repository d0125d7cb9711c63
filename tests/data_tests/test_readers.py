"""read_table, from_csv, from_parquet, from_frame: round trips, cleaning, schema inference, errors."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import modelyard.data as mdata
from modelyard.data import from_csv, from_frame, from_parquet, read_table
from modelyard.errors import DataError


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 200
    return pd.DataFrame(
        {
            "age": rng.integers(18, 80, n),
            "income": np.where(rng.random(n) < 0.1, np.nan, rng.normal(50_000, 10_000, n).round(2)),
            "city": rng.choice(["Lyon", "Paris", "Nice"], n),
            "sex": rng.choice(["F", "M"], n),
            "zip": rng.choice([69001, 75001, 6000], n),
            "id": np.arange(n),
            "y": rng.choice(["no", "yes"], n, p=[0.7, 0.3]),
        }
    ).assign(city=lambda f: f["city"].where(rng.random(n) > 0.05))  # some missing cities


# -- read_table ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz", "t.tsv", "t.parquet", "t.pq"])
def test_round_trip(tmp_path: Path, frame: pd.DataFrame, name: str) -> None:
    path = tmp_path / name
    if name.endswith((".parquet", ".pq")):
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False, sep="\t" if ".tsv" in name else ",")
    got = read_table(path)
    pd.testing.assert_frame_equal(got, frame, check_dtype=False)
    assert pd.api.types.is_integer_dtype(got["age"]) and pd.api.types.is_float_dtype(got["income"])
    assert got["city"].isna().sum() == frame["city"].isna().sum()


def test_explicit_separator(tmp_path: Path) -> None:
    path = tmp_path / "bank.csv"
    path.write_text('"age";"job";"y"\n30;"admin.";"no"\n41;"technician";"yes"\n')
    got = read_table(path, sep=";")
    assert got.to_dict("list") == {"age": [30, 41], "job": ["admin.", "technician"], "y": ["no", "yes"]}


def test_cleaning_strips_cells_and_reads_missing_markers(tmp_path: Path) -> None:
    path = tmp_path / "padded.csv"
    path.write_text("a,b,c,d,e\n 1 , x ,?, none,NA\n2,y , 3 ,NA,n/a\n? , z,4,-,\n")
    got = read_table(path)
    assert pd.api.types.is_float_dtype(got["a"]) and pd.api.types.is_float_dtype(got["c"])
    assert got["a"].tolist()[:2] == [1.0, 2.0] and np.isnan(got["a"].iloc[2])
    assert got["b"].tolist() == ["x", "y", "z"]
    assert np.isnan(got["c"].iloc[0]) and got["c"].tolist()[1:] == [3.0, 4.0]
    assert got["d"].isna().tolist() == [False, True, False]  # "none" and "-" are values, "NA" is missing
    assert got["d"].dropna().tolist() == ["none", "-"]
    assert got["e"].isna().all()


# -- read_table errors: each names the file and what to do --------------------------------


def _error(path: Path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        read_table(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message, "error messages are one line"
    return message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.csv"
    assert _error(path) == f"Data file {path} does not exist (working directory: {Path.cwd()}). Check the path."
    with pytest.raises(DataError, match="does not exist"):
        from_csv(path, target="y")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    assert _error(path) == f"{path} has no rows: the file is empty (0 bytes). Check that it was written completely."
    path.write_text("\n\n")
    assert _error(path) == (
        f"{path} has no rows: the file holds only blank lines. Check that it was written completely."
    )


def test_header_only(tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_text("a,b,y\n")
    assert _error(path) == (
        f"{path} has no rows: it holds only a header (['a', 'b', 'y']). Check that the file was written completely."
    )
    empty_parquet = tmp_path / "header.parquet"
    pd.DataFrame({"a": pd.Series([], dtype="int64")}).to_parquet(empty_parquet)
    assert _error(empty_parquet).startswith(f"{empty_parquet} has no rows: it holds only a header (['a'])")


def test_binary_garbage(tmp_path: Path) -> None:
    path = tmp_path / "garbage.csv"
    path.write_bytes(bytes(range(256)) * 8)
    assert _error(path) == (
        f"Cannot parse {path} as CSV: it holds binary data, not text. Check the file; if it is Parquet, name it "
        ".parquet."
    )
    path.write_bytes(b"a,b\n\xff\xfe,1\n")
    assert _error(path) == (
        f"Cannot parse {path} as CSV: it is not UTF-8 text (byte 4: invalid start byte). Re-save it as UTF-8."
    )


def test_ragged_csv(tmp_path: Path) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text("a,b\n1,2\n3,4,5\n")
    assert _error(path) == (
        f"Cannot parse {path} as CSV with separator ',': Expected 2 fields in line 3, saw 3. Check the separator "
        "(pass sep=...) and that every row has the same number of fields."
    )


def test_corrupted_parquet_and_gzip(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = tmp_path / "cut.parquet"
    frame.to_parquet(path)
    path.write_bytes(path.read_bytes()[:-100])
    assert _error(path).startswith(f"Cannot read {path} as Parquet: ")
    assert _error(path).endswith("Check that the file is complete and really Parquet (a CSV file must be named .csv).")
    gz = tmp_path / "plain.csv.gz"
    gz.write_text("a,b\n1,2\n")
    assert _error(gz) == (
        f"Cannot read {gz}: it is not a valid .gz file (Not a gzipped file (b'a,')). Check the file, or rename it "
        "without .gz if it is not compressed."
    )


def test_unsupported_type(tmp_path: Path) -> None:
    path = tmp_path / "sheet.xlsx"
    path.write_bytes(b"PK")
    assert _error(path) == (
        f"Cannot read {path}: unsupported file type '.xlsx'. Use CSV (.csv, .tsv, optionally .gz/.bz2/.xz) or "
        "Parquet (.parquet, .pq), renaming the file if needed."
    )


# -- from_csv / from_parquet / from_frame ------------------------------------------------


def test_from_csv_infers_schema_and_records_source(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = tmp_path / "people.csv.gz"
    with gzip.open(path, "wt") as fh:
        frame.to_csv(fh, index=False)
    data = from_csv(path, target="y", sensitive=["sex"], drop=["id"], categorical=["zip"])
    schema = data.schema
    assert data.name == "people"
    assert data.sources == {"people.csv.gz": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert schema.task == "binary" and schema.classes == ("no", "yes")
    assert schema.numeric_names == ["age", "income"]
    assert schema.categorical_names == ["city", "sex", "zip"]
    assert schema.column("zip").categories == ("6000", "69001", "75001")
    assert schema.sensitive == ("sex",)
    assert "id" in data.train.frame.columns and "id" not in schema.feature_names  # dropped, but kept for lookup
    assert (len(data.train), len(data.valid), len(data.test)) == (140, 20, 40)
    assert data.train.frame["income"].isna().any()  # missing numbers stay NaN
    x_num, x_cat = mdata.encode_frame(data.test.X, schema)
    assert x_num.shape == (40, 2) and x_cat.shape == (40, 3)


def test_from_parquet(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = tmp_path / "people.parquet"
    frame.to_parquet(path)
    data = from_parquet(path, target="y", drop=["id"], valid=0.2, test=0.2, seed=1)
    assert data.name == "people" and data.schema.task == "binary"
    assert data.schema.numeric_names == ["age", "income", "zip"]  # Parquet keeps the stored types
    assert data.sources == {"people.parquet": mdata.sha256_file(path)}
    assert (len(data.train), len(data.valid), len(data.test)) == (120, 40, 40)


def test_regression_target(frame: pd.DataFrame) -> None:
    data = from_frame(frame.dropna(subset=["income"]), target="income", drop=["id"])
    assert data.schema.task == "regression" and data.schema.classes == ()
    assert data.train.y.dtype == np.float64


def test_vocabularies_come_from_train_only(frame: pd.DataFrame) -> None:
    frame.loc[7, "city"] = "Brest"  # one row: it lands in exactly one split
    for seed in range(10):
        data = from_frame(frame, target="y", seed=seed)
        vocab = data.schema.column("city").categories
        in_train = "Brest" in set(data.train.frame["city"])
        assert ("Brest" in vocab) == in_train, f"{seed=}"
        assert vocab == tuple(sorted(data.train.frame["city"].dropna().unique()))


def test_from_frame_copies_and_stringifies_columns() -> None:
    raw = pd.DataFrame({0: [1.0, 2.0, 3.0, 4.0] * 5, 1: ["a", "b"] * 10})
    before = raw.copy()
    data = from_frame(raw, target="1", valid=0.2, test=0.2)
    assert data.schema.feature_names == ["0"] and data.sources == {} and data.name == "frame"
    pd.testing.assert_frame_equal(raw, before)


def test_split_is_seeded(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    a, b = from_csv(path, target="y", seed=4), from_csv(path, target="y", seed=4)
    pd.testing.assert_frame_equal(a.test.frame, b.test.frame)
    # Stratified: the positive rate of every split is within a row of the overall one.
    rate = (frame["y"] == "yes").mean()
    for split in a.splits.values():
        assert abs(int(split.y.sum()) - rate * len(split)) < 1.5


def test_dropping_the_first_numeric_column_still_works(frame: pd.DataFrame) -> None:
    data = from_frame(frame, target="y", drop=["age", "income", "zip", "id"])
    assert data.schema.feature_names == ["city", "sex"]


# -- from_* errors ------------------------------------------------------------------------


def test_target_does_not_exist(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError) as info:
        from_csv(path, target="label")
    assert str(info.value) == (
        "Target column 'label' does not exist. Columns are: ['age', 'income', 'city', 'sex', 'zip', 'id', 'y']. "
        "Set `target` to one of them."
    )


def test_target_with_a_single_class(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = tmp_path / "t.csv"
    frame.assign(y="no").to_csv(path, index=False)
    with pytest.raises(DataError) as info:
        from_csv(path, target="y")
    assert str(info.value) == (
        "Target column 'y' has a single class ('no'); a classifier needs at least two. Check the target column "
        "or filter."
    )


def test_target_with_missing_values(frame: pd.DataFrame) -> None:
    with pytest.raises(DataError) as info:
        from_frame(frame, target="income")
    n_missing = int(frame["income"].isna().sum())
    assert str(info.value) == (
        f"Target column 'income' has {n_missing} missing values; drop those rows before training."
    )


def test_unknown_column_names(frame: pd.DataFrame) -> None:
    with pytest.raises(DataError) as info:
        from_frame(frame, target="y", sensitive=["gender"])
    assert str(info.value) == (
        "sensitive names unknown columns ['gender']. Columns are: ['age', 'income', 'city', 'sex', 'zip', 'id', 'y']."
    )


@pytest.mark.parametrize(
    ("kwargs", "error"), [({"target": ["y"]}, TypeError), ({"target": "y", "valid": 0}, DataError)]
)
def test_bad_arguments(frame: pd.DataFrame, kwargs: dict, error: type) -> None:
    with pytest.raises(error):
        from_frame(frame, **kwargs)


def test_from_frame_needs_a_dataframe() -> None:
    with pytest.raises(TypeError, match="`frame` must be a pandas DataFrame; got dict"):
        from_frame({"y": [1, 2]}, target="y")  # type: ignore[arg-type]


def test_real_csv_with_padding_and_question_marks(tmp_path: Path, shared_data: Path) -> None:
    # adult.data written as a headered CSV: ", " separators and "?" must come out clean.
    lines = (shared_data / "adult" / "adult.data").read_text().splitlines()[:2000]
    path = tmp_path / "adult_head.csv"
    header = "age, workclass, fnlwgt, education, education-num, marital-status, occupation, relationship, race, sex, " \
             "capital-gain, capital-loss, hours-per-week, native-country, income"  # fmt: skip
    path.write_text(header + os.linesep + os.linesep.join(lines) + os.linesep)
    data = from_csv(path, target="income", sensitive=["sex", "race"])
    assert data.schema.classes == ("<=50K", ">50K")
    assert data.schema.numeric_names == ["age", "fnlwgt", "education-num", "capital-gain", "capital-loss",
                                         "hours-per-week"]  # fmt: skip
    everything = pd.concat([s.frame for s in data.splits.values()])
    assert int(everything.isna().any(axis=1).sum()) == sum("?" in line for line in lines)

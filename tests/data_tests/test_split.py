"""split_frame / split_indices: fraction checks, determinism, and stratification vs class proportions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from modelyard.data import check_fractions, split_frame, split_indices
from modelyard.errors import DataError


def _labels(counts: dict[str, int], seed: int = 0) -> pd.Series:
    values = np.concatenate([[label] * n for label, n in counts.items()])
    return pd.Series(np.random.default_rng(seed).permutation(values))


@pytest.mark.parametrize(
    ("valid", "test", "message"),
    [
        (0.0, 0.2, "`valid` must be a fraction in (0, 1), got valid=0.0. Training stops early on the validation "
                   "split, so it cannot be empty; the default is 0.1."),
        (1.0, 0.0, "`valid` must be a fraction in (0, 1), got valid=1.0. Training stops early on the validation "
                   "split, so it cannot be empty; the default is 0.1."),
        (float("nan"), 0.2, "`valid` must be a fraction in (0, 1), got valid=nan. Training stops early on the "
                            "validation split, so it cannot be empty; the default is 0.1."),
        (0.1, -0.1, "`test` must be a fraction in [0, 1), got test=-0.1."),
        (0.1, 1.0, "`test` must be a fraction in [0, 1), got test=1.0."),
        (0.5, 0.5, "`valid` + `test` must be below 1 to leave rows for training, got valid=0.5 + test=0.5 = 1."),
    ],
)  # fmt: skip
def test_bad_fractions(valid: float, test: float, message: str) -> None:
    with pytest.raises(DataError) as info:
        check_fractions(valid, test)
    assert str(info.value) == message
    with pytest.raises(DataError):
        split_indices(np.zeros(100), valid=valid, test=test, seed=0)


@pytest.mark.parametrize("bad", ["0.1", None, True])
def test_fraction_of_wrong_type(bad: object) -> None:
    with pytest.raises(TypeError, match=r"^`valid` must be a fraction between 0 and 1; got"):
        check_fractions(bad, 0.2)


def test_bad_seed() -> None:
    with pytest.raises(TypeError, match=r"`seed` must be a non-negative integer; got 0\.5"):
        split_indices(np.arange(10) % 2, valid=0.2, test=0.2, seed=0.5)  # type: ignore[arg-type]


def test_too_few_rows() -> None:
    with pytest.raises(DataError) as info:
        split_indices(["a", "b"], valid=0.1, test=0.2, seed=0)
    assert str(info.value) == (
        "Only 2 rows: too few to split into train, valid (valid=0.1) and test (test=0.2); every split needs at "
        "least one row. Provide more rows or lower the fractions."
    )


def test_missing_target_column() -> None:
    frame = pd.DataFrame({"a": [1, 2], "b": [3, 4]})
    with pytest.raises(DataError) as info:
        split_frame(frame, "y", valid=0.1, test=0.2, seed=0)
    assert str(info.value) == "Target column 'y' does not exist. Columns are: ['a', 'b']. Set `target` to one of them."


@pytest.mark.parametrize("n", [10, 101, 1000])
@pytest.mark.parametrize(("valid", "test"), [(0.1, 0.2), (0.15, 0.0), (0.3, 0.3)])
def test_sizes_partition_and_order(n: int, valid: float, test: float) -> None:
    y = np.arange(n, dtype=float) / 7  # regression: a plain shuffle
    train, val, tst = split_indices(y, valid=valid, test=test, seed=0)
    assert len(tst) == round(test * n) or (test > 0 and len(tst) == 1)
    assert len(val) == max(1, round(valid * n))
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val, tst])), np.arange(n))
    for part in (train, val, tst):
        assert np.all(np.diff(part) > 0), "rows keep their original order"


def test_deterministic_and_seed_dependent() -> None:
    y = _labels({"a": 500, "b": 300, "c": 200})
    first = split_indices(y, valid=0.1, test=0.2, seed=7)
    again = split_indices(y.copy(), valid=0.1, test=0.2, seed=7)
    other = split_indices(y, valid=0.1, test=0.2, seed=8)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[2], other[2])


def test_golden_split() -> None:
    # Pinned: a change of algorithm or generator would silently change every split and
    # every result downstream of one, so it must show up here.
    y = np.array([0, 1] * 10)
    train, valid, test = split_indices(y, valid=0.2, test=0.2, seed=0)
    assert train.tolist() == [0, 1, 2, 3, 6, 9, 10, 11, 15, 16, 17, 18]
    assert valid.tolist() == [4, 7, 13, 14]
    assert test.tolist() == [5, 8, 12, 19]
    regression = split_indices(np.arange(12) / 7, valid=0.25, test=0.25, seed=0)
    assert [part.tolist() for part in regression] == [[0, 1, 3, 6, 8, 10], [4, 5, 11], [2, 7, 9]]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "counts",
    [{"a": 700, "b": 300}, {"x": 5000, "y": 37, "z": 3}, {str(k): 10 + 13 * k for k in range(12)}],
)
def test_stratification_matches_class_proportions(counts: dict[str, int], seed: int) -> None:
    y = _labels(counts, seed)
    n = len(y)
    valid, test = 0.1, 0.2
    train, val, tst = split_indices(y, valid=valid, test=test, seed=seed)
    for label, n_c in counts.items():
        in_test = int((y.iloc[tst] == label).sum())
        in_valid = int((y.iloc[val] == label).sum())
        # Test is apportioned from the class counts: within one row of the exact share
        # (with the split size itself rounded, the share is len(test) * n_c / n).
        assert abs(in_test - len(tst) * n_c / n) < 1, f"{label=} {in_test=}"
        # Valid is apportioned from what test left, so it may be one row further off.
        assert abs(in_valid - len(val) * n_c / n) < 2, f"{label=} {in_valid=}"
        assert (y.iloc[train] == label).any(), f"class {label} must keep a row in train"


def test_singleton_class_stays_in_train() -> None:
    y = pd.Series(["a"] * 50 + ["b"] * 49 + ["rare"])
    for seed in range(20):
        train, _, _ = split_indices(y, valid=0.1, test=0.2, seed=seed)
        assert 99 in train, f"{seed=}"


def test_falls_back_to_unstratified_when_classes_are_too_small() -> None:
    y = pd.Series([f"id{i}" for i in range(20)])  # 20 classes of one row: nothing to stratify
    with pytest.warns(UserWarning, match=r"too many classes with a single row\); splitting without stratification\.$"):
        train, valid, test = split_indices(y, valid=0.1, test=0.2, seed=0)
    assert (len(train), len(valid), len(test)) == (14, 2, 4)


def test_regression_targets_are_not_stratified_and_need_no_classes() -> None:
    y = np.random.default_rng(0).normal(size=200)  # every value distinct
    train, valid, test = split_indices(y, valid=0.1, test=0.2, seed=0)
    assert (len(train), len(valid), len(test)) == (140, 20, 40)


def test_split_frame_resets_index_and_copies() -> None:
    frame = pd.DataFrame({"x": range(100), "y": ["p", "q"] * 50}, index=range(1000, 1100))
    train, valid, test = split_frame(frame, "y", valid=0.1, test=0.2, seed=0)
    for part in (train, valid, test):
        assert part.index.equals(pd.RangeIndex(len(part)))
    assert sorted([*train["x"], *valid["x"], *test["x"]]) == list(range(100))
    train.loc[0, "x"] = -1
    assert frame["x"].min() == 0, "the input frame is not modified"


def test_stratify_false_shuffles() -> None:
    y = pd.Series(["a"] * 90 + ["b"] * 10)
    strat = split_indices(y, valid=0.1, test=0.2, seed=0)
    plain = split_indices(y, valid=0.1, test=0.2, seed=0, stratify=False)
    assert not np.array_equal(strat[2], plain[2])
    assert len(plain[2]) == 20

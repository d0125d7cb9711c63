"""The scikit-learn adapter: it must answer exactly as the estimator it wraps, and refuse what does not fit."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder
from sklearn.svm import LinearSVC

from modelyard.data import encode_frame
from modelyard.errors import SchemaMismatchError
from modelyard.models import Predictor, SklearnPredictor, encode_matrix, encoded_feature_names

try:  # tests/models_tests may or may not be a package
    from ._adult_gbm import one_openmp_thread, synthetic_splits  # noqa: F401 - an autouse fixture
except ImportError:
    from _adult_gbm import one_openmp_thread, synthetic_splits  # noqa: F401


def _hgb(task: str):  # noqa: ANN202 - an estimator
    if task == "regression":
        return HistGradientBoostingRegressor(max_iter=20)
    return HistGradientBoostingClassifier(max_iter=20)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_predictions_equal_the_estimators(task: str) -> None:
    train, test = synthetic_splits(task)
    x_train, x_test = encode_matrix(train.X, train.schema), encode_matrix(test.X, test.schema)
    est = _hgb(task).fit(x_train, train.y)
    model = SklearnPredictor(est, train.schema)
    assert isinstance(model, Predictor)
    assert model.task == task and model.feature_names == train.schema.feature_names
    # Same rows, same float32 values, same estimator: the answers must be identical, not merely close.
    if task == "regression":
        np.testing.assert_array_equal(model.predict(test.X), est.predict(x_test))
        with pytest.raises(TypeError, match="only defined for classifiers"):
            model.predict_proba(test.X)
    else:
        np.testing.assert_array_equal(model.predict_proba(test.X), est.predict_proba(x_test))
        np.testing.assert_array_equal(model.predict(test.X), est.predict(x_test))


def test_encode_matrix_is_numeric_then_codes_as_float32() -> None:
    train, _ = synthetic_splits("binary")
    x = encode_matrix(train.X, train.schema)
    x_num, x_cat = encode_frame(train.X, train.schema)
    assert x.dtype == np.float32 and x.shape == (len(train), 4)
    assert encoded_feature_names(train.schema) == ["num_a", "num_b", "cat_a", "cat_b"]
    np.testing.assert_array_equal(x[:, :2], x_num)  # NaN compares equal in assert_array_equal
    np.testing.assert_array_equal(x[:, 2:], x_cat.astype(np.float32))


def test_raw_input_pipeline() -> None:
    """A user pipeline that preprocesses raw columns itself, fitted on the raw labels."""
    train, test = synthetic_splits("multiclass")
    schema = train.schema
    pre = ColumnTransformer(
        [
            ("num", SimpleImputer(), schema.numeric_names),
            ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
             schema.categorical_names),
        ]
    )
    pipe = make_pipeline(pre, LogisticRegression(max_iter=500)).fit(train.X, train.frame["y"])
    model = SklearnPredictor(pipe, schema, inputs="raw")
    finite = test.frame.replace([np.inf, -np.inf], np.nan)  # SimpleImputer refuses infinities
    # Shuffled columns and an extra target column are fine: the adapter selects and orders them.
    shuffled = finite[["y", *reversed(schema.feature_names)]]
    expected = pipe.predict_proba(finite[schema.feature_names])  # the pipeline's class order is the schema's
    assert list(pipe.classes_) == list(schema.classes)
    np.testing.assert_array_equal(model.predict_proba(shuffled), expected)
    np.testing.assert_array_equal(model.predict(shuffled), expected.argmax(axis=1))


def test_classes_fitted_as_labels_are_reordered_to_the_schema() -> None:
    """An estimator fitted on label strings answers in the schema's class order, whatever its own."""
    train, test = synthetic_splits("multiclass")
    x_train, x_test = encode_matrix(train.X, train.schema), encode_matrix(test.X, test.schema)
    relabel = {"high": "c", "low": "a", "mid": "b"}
    est = _hgb("multiclass").fit(x_train, train.frame["y"].map(relabel))
    assert list(est.classes_) == ["a", "b", "c"]
    schema = replace(train.schema, classes=("c", "a", "b"))  # class index 0 is "c": not scikit-learn's order
    model = SklearnPredictor(est, schema)
    assert model.proba_columns.tolist() == [2, 0, 1]
    np.testing.assert_array_equal(model.predict_proba(test.X), est.predict_proba(x_test)[:, [2, 0, 1]])


@pytest.mark.parametrize(
    ("drop", "add", "message"),
    [
        (["num_b"], {}, "Feature columns differ from training: missing ['num_b']."),
        ([], {"surprise": 1.0}, "Feature columns differ from training: unexpected ['surprise']."),
        (["cat_a"], {"cat_z": "x"}, "Feature columns differ from training: missing ['cat_a']; unexpected ['cat_z']."),
    ],
)
def test_missing_or_extra_columns_raise(drop: list[str], add: dict[str, object], message: str) -> None:
    train, test = synthetic_splits("binary")
    model = SklearnPredictor(_hgb("binary").fit(encode_matrix(train.X, train.schema), train.y), train.schema)
    frame = test.X.drop(columns=drop).assign(**add)
    for method in (model.predict, model.predict_proba):
        with pytest.raises(SchemaMismatchError, match=re.escape(message)):
            method(frame)


def test_estimator_that_does_not_fit_the_schema_is_refused() -> None:
    train, _ = synthetic_splits("binary")
    reg_train, _ = synthetic_splits("regression")
    x = encode_matrix(train.X, train.schema)
    with pytest.raises(TypeError, match="task is regression but HistGradientBoostingClassifier is a classifier"):
        SklearnPredictor(_hgb("binary").fit(x, train.y), reg_train.schema)
    with pytest.raises(TypeError, match="LinearRegression has no predict_proba"):
        SklearnPredictor(LinearRegression().fit(np.nan_to_num(x), train.y), train.schema)
    with pytest.raises(TypeError, match="LinearSVC has no predict_proba"):
        SklearnPredictor(LinearSVC().fit(np.nan_to_num(x), train.y), train.schema)
    with pytest.raises(ValueError, match="HistGradientBoostingClassifier is not fitted"):
        SklearnPredictor(HistGradientBoostingClassifier(), train.schema)
    with pytest.raises(TypeError, match="SklearnPredictor wraps a scikit-learn estimator; got dict."):
        SklearnPredictor({"weights": [1, 2]}, train.schema)
    with pytest.raises(ValueError, match="inputs must be 'encoded' or 'raw'"):
        SklearnPredictor(_hgb("binary").fit(x, train.y), train.schema, inputs="onehot")  # type: ignore[arg-type]
    with pytest.raises(SchemaMismatchError, match=r"fitted on 3 features but the schema encodes 4"):
        SklearnPredictor(_hgb("binary").fit(x[:, :3], train.y), train.schema)
    three = np.resize(np.arange(3), len(train))  # classes 0, 1, 2 for a binary schema
    with pytest.raises(SchemaMismatchError, match=r"fitted on classes \[0, 1, 2\] but the schema has 2 classes"):
        SklearnPredictor(_hgb("binary").fit(x, three), train.schema)
    named = pd.DataFrame(x, columns=["a", "b", "c", "d"])
    with pytest.raises(SchemaMismatchError, match="not on the encoded matrix"):
        SklearnPredictor(_hgb("binary").fit(named, train.y), train.schema)


def test_estimator_fitted_on_a_named_encoded_frame_gets_one() -> None:
    """Fitted on a DataFrame of the encoded matrix: fed one too, so scikit-learn sees its column names."""
    train, test = synthetic_splits("binary")
    names = encoded_feature_names(train.schema)
    est = _hgb("binary").fit(pd.DataFrame(encode_matrix(train.X, train.schema), columns=names), train.y)
    model = SklearnPredictor(est, train.schema)
    expected = est.predict_proba(pd.DataFrame(encode_matrix(test.X, test.schema), columns=names))
    np.testing.assert_array_equal(model.predict_proba(test.X), expected)

"""The scikit-learn adapter: a fitted estimator (or Pipeline) seen through the Predictor protocol.

By default the estimator is fed the *encoded matrix* (:func:`encode_matrix`): the
numeric features in schema order (``float32``, missing values ``NaN``) followed by the
categorical codes as ``float32`` (``0`` = missing or unseen, ``i + 1`` =
``categories[i]``). That is exactly the ``x`` input of the ONNX core graphs of tree
ensembles (layout ``"matrix"`` in :mod:`modelyard.compress._onnx_frontend`), so a model
fitted here and its ONNX export see the same numbers. A user pipeline that does its own
preprocessing can take the raw feature frame instead (``inputs="raw"``).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd

from modelyard.data._schema import Schema, category_strings, encode_frame
from modelyard.errors import SchemaMismatchError
from modelyard.models._base import BasePredictor

__all__ = ["SklearnPredictor", "encode_matrix", "encoded_feature_names"]

Inputs = Literal["encoded", "raw"]


def encoded_feature_names(schema: Schema) -> list[str]:
    """Column names of the encoded matrix: numeric features, then categorical ones."""
    return schema.numeric_names + schema.categorical_names


def encode_matrix(frame: pd.DataFrame, schema: Schema) -> np.ndarray:
    """Encode raw feature columns into one ``float32`` matrix.

    Parameters
    ----------
    frame : pandas.DataFrame
        Raw feature columns (the target and sensitive columns may be present too).
    schema : Schema
        The schema giving the columns, their kinds and vocabularies.

    Returns
    -------
    ndarray of shape (n_rows, n_numeric + n_categorical), float32
        ``[x_num, x_cat]`` from :func:`~modelyard.data.encode_frame`, the codes cast to
        float (exact: codes are small integers). Column ``j`` is
        ``encoded_feature_names(schema)[j]``.

    Raises
    ------
    SchemaMismatchError
        If the frame's feature columns differ from the schema's.
    """
    x_num, x_cat = encode_frame(frame, schema)
    return np.hstack([x_num, x_cat.astype(np.float32)]).astype(np.float32, copy=False)


class SklearnPredictor(BasePredictor):
    """A fitted scikit-learn estimator or Pipeline behind the Predictor protocol.

    Classifiers answer through ``predict_proba`` (columns in the schema's class order),
    regressors through ``predict``.

    Parameters
    ----------
    estimator : fitted scikit-learn estimator or Pipeline
        A classifier (with ``predict_proba``) for a binary or multiclass schema, a
        regressor for a regression schema. A classifier's ``classes_`` must be the class
        indices ``0 .. n_classes - 1`` (it was fitted on ``TabularSplit.y``) or the
        schema's class labels (it was fitted on the raw target column).
    schema : Schema
        The schema the estimator was trained with.
    inputs : {"encoded", "raw"}, default="encoded"
        ``"encoded"``: the estimator takes :func:`encode_matrix` of the features (the
        layout of the ONNX core input ``x``); this is what :func:`~modelyard.models.fit_gbm`
        fits and what the ONNX converter can export. ``"raw"``: the estimator takes the
        raw feature frame, columns in schema order, and does its own preprocessing (a
        ``Pipeline`` with a ``ColumnTransformer``, say).

    Raises
    ------
    ValueError
        If ``inputs`` is not one of the two modes, or the estimator is not fitted.
    TypeError
        If the estimator does not fit the schema's task (a regressor for a classification
        schema, a classifier without ``predict_proba``, a classifier for regression).
    SchemaMismatchError
        If the estimator's classes or fitted features differ from the schema's.

    Examples
    --------
    >>> from sklearn.ensemble import HistGradientBoostingClassifier
    >>> est = HistGradientBoostingClassifier().fit(encode_matrix(train.X, schema), train.y)  # doctest: +SKIP
    >>> model = SklearnPredictor(est, schema)  # doctest: +SKIP
    >>> model.predict_proba(test.X)  # doctest: +SKIP
    """

    def __init__(self, estimator: Any, schema: Schema, *, inputs: Inputs = "encoded") -> None:
        super().__init__(schema)
        if inputs not in ("encoded", "raw"):
            raise ValueError(f"inputs must be 'encoded' or 'raw', but got {inputs=!r}.")
        from sklearn.exceptions import NotFittedError  # scikit-learn loads on first use
        from sklearn.utils.validation import check_is_fitted

        try:
            check_is_fitted(estimator)
        except NotFittedError as exc:
            raise ValueError(
                f"SklearnPredictor needs a fitted estimator; {type(estimator).__name__} is not fitted. "
                "Call its fit(...) first."
            ) from exc
        except TypeError as exc:  # not an estimator at all
            raise TypeError(
                f"SklearnPredictor wraps a scikit-learn estimator; got {type(estimator).__name__}."
            ) from exc
        self.estimator = estimator
        self.inputs: Inputs = inputs
        self._proba_columns = self._check_task()
        self._fit_columns = self._check_features()

    def __repr__(self) -> str:
        return f"SklearnPredictor({type(self.estimator).__name__}, task={self.task!r}, inputs={self.inputs!r})"

    @property
    def proba_columns(self) -> np.ndarray | None:
        """The estimator's ``predict_proba`` column of each schema class (None for regression)."""
        return None if self._proba_columns is None else self._proba_columns.copy()

    # -- checks against the schema ----------------------------------------------------
    def _check_task(self) -> np.ndarray | None:
        """Check the estimator fits the task; return the predict_proba column of each class."""
        from sklearn.base import is_classifier

        name = type(self.estimator).__name__
        if self.task == "regression":
            if is_classifier(self.estimator):
                raise TypeError(
                    f"The schema's task is regression but {name} is a classifier; wrap a regressor, "
                    "or rebuild the schema with task='binary'/'multiclass'."
                )
            if not hasattr(self.estimator, "predict"):
                raise TypeError(f"{name} has no predict method; SklearnPredictor needs one for regression.")
            return None
        if not hasattr(self.estimator, "predict_proba"):
            raise TypeError(
                f"The schema's task is {self.task} but {name} has no predict_proba; wrap a probabilistic "
                "classifier (or calibrate it with sklearn.calibration.CalibratedClassifierCV)."
            )
        classes = getattr(self.estimator, "classes_", None)
        if classes is None:
            raise TypeError(f"{name} has no classes_; SklearnPredictor needs a fitted classifier.")
        classes = np.asarray(classes)
        n = self.schema.n_classes
        # Fitted on TabularSplit.y: classes_ are the indices 0..n-1, in order.
        if classes.dtype.kind in "iu" and classes.tolist() == list(range(n)):
            return np.arange(n)
        # Fitted on the raw target column: classes_ are the labels, possibly in another order.
        labels = [str(c) for c in category_strings(classes)]
        if sorted(labels) == sorted(self.schema.classes) and len(labels) == n:
            return np.array([labels.index(c) for c in self.schema.classes])
        raise SchemaMismatchError(
            f"{name} was fitted on classes {classes.tolist()} but the schema has {n} classes "
            f"{list(self.schema.classes)} (indices {list(range(n))}). Fit it on TabularSplit.y, whose "
            "values are the class indices, on a split that holds every class."
        )

    def _check_features(self) -> list[str] | None:
        """Check the estimator's fitted features; return the column names to feed it, if any."""
        name = type(self.estimator).__name__
        fitted_names = getattr(self.estimator, "feature_names_in_", None)
        if self.inputs == "encoded":
            expected = encoded_feature_names(self.schema)
            n_in = getattr(self.estimator, "n_features_in_", None)
            if n_in is not None and n_in != len(expected):
                raise SchemaMismatchError(
                    f"{name} was fitted on {n_in} features but the schema encodes {len(expected)} "
                    f"({len(self.schema.numeric)} numeric + {len(self.schema.categorical)} categorical: {expected}). "
                    "Fit it on encode_matrix(X, schema), or pass inputs='raw' if it preprocesses raw columns itself."
                )
            if fitted_names is not None:
                if [str(c) for c in fitted_names] != expected:
                    raise SchemaMismatchError(
                        f"{name} was fitted on columns {list(fitted_names)}, not on the encoded matrix {expected}. "
                        "Pass inputs='raw' if it preprocesses raw columns itself."
                    )
                return expected  # fitted on a DataFrame of the encoded matrix: feed it one
            return None
        if fitted_names is not None:
            fitted = [str(c) for c in fitted_names]
            if sorted(fitted) != sorted(self.schema.feature_names):
                missing = [c for c in fitted if c not in self.schema.feature_names]
                extra = [c for c in self.schema.feature_names if c not in fitted]
                raise SchemaMismatchError(
                    f"{name} was fitted on columns {fitted}; the schema's features differ "
                    f"(fitted but not in the schema: {missing}; in the schema but not fitted: {extra})."
                )
            return fitted  # scikit-learn wants the fitted column order
        return None

    # -- prediction -------------------------------------------------------------------
    def _model_input(self, X: pd.DataFrame) -> np.ndarray | pd.DataFrame:
        if self.inputs == "raw":
            return X if self._fit_columns is None else X[self._fit_columns]
        x = encode_matrix(X, self.schema)  # (n, n_numeric + n_categorical) float32
        if self._fit_columns is not None:
            return pd.DataFrame(x, columns=self._fit_columns, index=X.index)
        return x

    def _forward(self, X: pd.DataFrame) -> np.ndarray:
        x = self._model_input(X)
        if self._proba_columns is None:
            return np.asarray(self.estimator.predict(x), dtype=np.float64).reshape(-1)  # (n,)
        proba = np.asarray(self.estimator.predict_proba(x), dtype=np.float64)  # (n, n_classes), estimator order
        return proba[:, self._proba_columns]  # (n, n_classes), schema order

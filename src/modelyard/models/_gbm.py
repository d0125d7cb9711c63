"""The gradient-boosting baseline: scikit-learn's histogram gradient boosting on the encoded matrix.

Every model family in modelyard is measured against this baseline, so it must be
strong with its defaults, fast (about a second on Adult on two cores), and exportable
to ONNX exactly (:mod:`modelyard.compress._tree_onnx`).

Categorical features
--------------------
The estimator sees :func:`~modelyard.models.encode_matrix`: numeric features, then
the categorical codes (``0`` = missing or unseen, ``i + 1`` = ``categories[i]``) as
floats. With ``categorical="native"`` (the default) the codes are declared categorical
to scikit-learn, which then splits on *sets* of categories (Fisher's ordering of
categories by gradient statistics), so no order is imposed on, say, occupations.
Code ``0`` is an ordinary category to it, so a missing value and a value unseen in
training take the same branch. The ONNX converter writes these splits as exact
``BRANCH_MEMBER`` set-membership nodes. With ``categorical="ordinal"`` the codes are
treated as numbers (splits ``code <= t`` on the alphabetical order of the vocabulary).

On Adult (train on ``adult.data`` less a stratified 10% used for early stopping, test
on the official ``adult.test``) the defaults reach 0.8730 with native splits and 0.8726
with ordinal codes (seed-0 split of ``modelyard.data.load``; over three split seeds
0.8732-0.8737 native, 0.8719-0.8739 ordinal), in about 1.4 s on one core. Native splits
are as accurate and steadier, and they do not depend on the accident of alphabetical
order, so they are the default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from modelyard.data._schema import Schema
from modelyard.data._tabular import TabularSplit
from modelyard.errors import DataError, SchemaMismatchError
from modelyard.models._config import GBMConfig
from modelyard.models._sklearn import SklearnPredictor, encode_matrix

if TYPE_CHECKING:  # scikit-learn loads on first fit, so spec validation (GBMConfig) stays fast
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

__all__ = ["GBMConfig", "fit_gbm"]


def _categorical_mask(schema: Schema, config: GBMConfig) -> np.ndarray | None:
    """Which encoded columns scikit-learn should split natively as categories."""
    if config.categorical == "ordinal" or not schema.categorical:
        return None
    numeric = [False] * len(schema.numeric)
    # scikit-learn takes at most max_bins categories per feature; the codes 0..n_categories are
    # n_categories + 1 of them. Wider vocabularies stay ordinal.
    categorical = [len(c.categories) + 1 <= config.max_bins for c in schema.categorical]
    if not any(categorical):
        return None
    return np.array(numeric + categorical, dtype=bool)


def fit_gbm(
    train: TabularSplit,
    valid: TabularSplit | None = None,
    config: GBMConfig = GBMConfig(),
    *,
    n_threads: int | None = None,
    sample_weight: np.ndarray | None = None,
) -> SklearnPredictor:
    """Fit the gradient-boosting baseline on a tabular split.

    Trains a ``HistGradientBoostingClassifier`` (binary, multiclass) or
    ``HistGradientBoostingRegressor`` (regression, squared error) on
    :func:`~modelyard.models.encode_matrix` of the features.

    Parameters
    ----------
    train : TabularSplit
        The rows to fit; for classification it must hold every class of the schema.
    valid : TabularSplit or None, default=None
        Rows for early stopping (their loss decides when to stop); required when
        ``config.early_stopping`` is true, unused otherwise. Same schema as ``train``.
    config : GBMConfig, default=GBMConfig()
        Hyperparameters; see :class:`GBMConfig` for each one's reason.
    n_threads : int or None, default=None
        OpenMP threads for the fit; None lets scikit-learn use every core. The fitted
        model does not depend on it. Pass 1 on a machine whose cores other processes
        keep busy: scikit-learn synchronises its threads many times per tree, and a
        descheduled thread stalls every barrier (measured once on two busy cores: an
        Adult fit took 27 s with two threads, 1.4 s with one).
    sample_weight : array of shape (len(train),) or None, default=None
        Non-negative weight per training row (for example reweighing's), passed to
        scikit-learn's ``fit``; the early-stopping loss on ``valid`` stays unweighted.

    Returns
    -------
    SklearnPredictor
        The fitted estimator (``.estimator``) with the training schema, taking the
        encoded matrix; export it with ``modelyard.compress.export_onnx``.

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`GBMConfig` or a split is not a ``TabularSplit``.
    ValueError
        If early stopping is on and ``valid`` is None, or ``n_threads`` is below 1.
    SchemaMismatchError
        If ``valid`` has another schema than ``train``.
    DataError
        If ``train`` is empty or misses a class, or early stopping gets an empty ``valid``.
    """
    if not isinstance(config, GBMConfig):
        raise TypeError(f"config must be a GBMConfig; got {type(config).__name__}. Build one with GBMConfig(**params).")
    for name, split in (("train", train), ("valid", valid)):
        if split is not None and not isinstance(split, TabularSplit):
            raise TypeError(f"{name} must be a TabularSplit; got {type(split).__name__}.")
    schema = train.schema
    if valid is not None and valid.schema != schema:
        raise SchemaMismatchError(
            "train and valid have different schemas; split them from one TabularData so they share it."
        )
    if config.early_stopping and valid is None:
        raise ValueError(
            "GBMConfig.early_stopping is True but valid is None; pass the validation split, "
            "or use GBMConfig(early_stopping=False)."
        )
    if n_threads is not None and (isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1):
        raise ValueError(f"n_threads must be a positive integer or None, but got {n_threads=!r}.")
    if len(train) == 0:
        raise DataError("The train split is empty; the gradient-boosting baseline needs rows to fit.")
    if config.early_stopping and valid is not None and len(valid) == 0:
        raise DataError("The valid split is empty; early stopping needs rows, or use GBMConfig(early_stopping=False).")

    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    x_train = encode_matrix(train.X, schema)  # (n, n_numeric + n_categorical) float32
    y_train = train.y
    common = dict(
        learning_rate=config.learning_rate,
        max_iter=config.max_iter,
        max_leaf_nodes=config.max_leaf_nodes,
        max_depth=config.max_depth,
        min_samples_leaf=config.min_samples_leaf,
        l2_regularization=config.l2_regularization,
        max_features=config.max_features,
        max_bins=config.max_bins,
        categorical_features=_categorical_mask(schema, config),
        early_stopping=config.early_stopping,
        n_iter_no_change=config.n_iter_no_change,
        validation_fraction=None,  # the validation rows are `valid`, never a hidden split of train
        random_state=config.seed,
    )
    if schema.task == "regression":
        estimator: HistGradientBoostingClassifier | HistGradientBoostingRegressor = HistGradientBoostingRegressor(
            loss="squared_error", **common
        )
    else:
        present = np.unique(y_train)
        if len(present) != schema.n_classes:
            absent = [schema.classes[i] for i in range(schema.n_classes) if i not in set(present.tolist())]
            raise DataError(
                f"The train split lacks classes {absent} of target {schema.target!r}; "
                "use a stratified split so that every class appears in train."
            )
        estimator = HistGradientBoostingClassifier(loss="log_loss", **common)

    fit_kwargs: dict[str, object] = {}
    if sample_weight is not None:
        w = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
        if len(w) != len(train) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(
                f"sample_weight needs {len(train)} finite non-negative values, not all zero (one per train row); "
                f"got {len(w)} values."
            )
        fit_kwargs["sample_weight"] = w
    if config.early_stopping and valid is not None:  # valid is None was refused above
        fit_kwargs.update(X_val=encode_matrix(valid.X, schema), y_val=valid.y)
    with threadpool_limits(limits=n_threads, user_api="openmp"):  # None: no limit
        estimator.fit(x_train, y_train, **fit_kwargs)
    return SklearnPredictor(estimator, schema, inputs="encoded")

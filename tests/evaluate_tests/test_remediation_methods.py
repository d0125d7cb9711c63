"""Fairness remediation: reweighing, MinDiff, per-group thresholds, learning fair representations."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

import modelyard as my
from modelyard.errors import DataError
from modelyard.evaluate import (
    LearnedFairRepresentation,
    MinDiffPenalty,
    ThresholdOptimizer,
    fairness_summary,
    mmd_penalty,
    remediate,
    reweighing_weights,
)
from modelyard.models import MLPConfig
from modelyard.train import Trainer, fit_mlp
from modelyard.train._fit import TabularMLP


# -- synthetic biased data ----------------------------------------------------------------
def _biased_scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores, labels and groups where group "b" has fewer positives and lower scores."""
    rng = np.random.default_rng(seed)
    groups = np.where(rng.random(n) < 0.35, "b", "a")
    base = np.where(groups == "a", 0.45, 0.2)
    y = (rng.random(n) < base).astype(np.int64)
    logit = 1.6 * (2 * y - 1) + np.where(groups == "a", 0.4, -0.6) + rng.normal(0, 1.2, n)
    return 1 / (1 + np.exp(-logit)), y, groups


def _biased_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sex = np.where(rng.random(n) < 0.4, "F", "M")
    x1 = rng.normal(0, 1, n) + np.where(sex == "M", 0.8, -0.4)  # a proxy of the group
    x2 = rng.normal(0, 1, n)
    color = rng.choice(["red", "green", "blue"], n)
    logit = 1.5 * x1 + x2 + (color == "red") - 0.8 + np.where(sex == "M", 0.7, -0.7)
    y = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    return pd.DataFrame({"x1": x1, "x2": x2, "color": color, "sex": sex, "y": y})


@pytest.fixture(scope="module")
def data() -> my.data.TabularData:
    return my.data.from_frame(_biased_frame(3000, 0), target="y", sensitive=["sex"], drop=["sex"], seed=0)


# -- metrics ------------------------------------------------------------------------------
def test_fairness_summary_matches_fairlearn() -> None:
    from fairlearn.metrics import (
        demographic_parity_difference,
        equalized_odds_difference,
    )

    scores, y, groups = _biased_scores(2000, 1)
    pred = (scores > 0.5).astype(np.int64)
    s = fairness_summary(y, pred, groups)
    # same counts, same formulas: agreement to rounding (1e-12)
    assert s.demographic_parity_difference == pytest.approx(
        demographic_parity_difference(y, pred, sensitive_features=groups), abs=1e-12
    )
    assert s.equalized_odds_difference == pytest.approx(
        equalized_odds_difference(y, pred, sensitive_features=groups), abs=1e-12
    )
    assert s.accuracy == pytest.approx(np.mean(pred == y), abs=1e-12)
    with pytest.raises(ValueError, match="rows; they must match"):
        fairness_summary(y, pred[:-1], groups)


# -- reweighing ---------------------------------------------------------------------------
def test_reweighing_weights_match_a_slow_exact_computation() -> None:
    rng = np.random.default_rng(2)
    groups = rng.choice(["x", "y", "z"], 500, p=[0.6, 0.3, 0.1])
    y = (rng.random(500) < np.where(groups == "x", 0.6, 0.2)).astype(int)
    w = reweighing_weights(y, groups)
    n = len(y)
    for i in range(0, n, 7):  # the definition, row by row
        p_g = np.sum(groups == groups[i]) / n
        p_y = np.sum(y == y[i]) / n
        p_gy = np.sum((groups == groups[i]) & (y == y[i])) / n
        assert w[i] == pytest.approx(p_g * p_y / p_gy, rel=1e-12)  # float rounding only


def test_reweighing_makes_label_and_group_independent_exactly() -> None:
    rng = np.random.default_rng(3)
    groups = rng.choice(["x", "y", "z"], 1000, p=[0.5, 0.3, 0.2])
    y = (rng.random(1000) < np.where(groups == "x", 0.7, 0.15)).astype(int)
    w = reweighing_weights(y, groups)
    assert w.sum() == pytest.approx(len(y), rel=1e-12)  # total weight is preserved
    total = w.sum()
    for g, c in itertools.product(np.unique(groups), (0, 1)):
        joint = w[(groups == g) & (y == c)].sum() / total
        p_g, p_y = w[groups == g].sum() / total, w[y == c].sum() / total
        assert joint == pytest.approx(p_g * p_y, abs=1e-12)  # independence under the weights
        assert p_g == pytest.approx(np.mean(groups == g), abs=1e-12)  # marginals unchanged
        assert p_y == pytest.approx(np.mean(y == c), abs=1e-12)


def test_gbm_and_trainer_take_sample_weights(data: my.data.TabularData) -> None:
    from modelyard.models import GBMConfig
    from modelyard.train import fit_gbm

    config = GBMConfig(max_iter=20, early_stopping=False)
    plain = fit_gbm(data.train, None, config, n_threads=1)
    ones = fit_gbm(data.train, None, config, n_threads=1, sample_weight=np.ones(len(data.train)))
    # unit weights are the unweighted fit (histogram sums are the same numbers)
    np.testing.assert_allclose(ones.predict_proba(data.test.X), plain.predict_proba(data.test.X), atol=1e-12)
    weighted = fit_gbm(data.train, None, config, n_threads=1, sample_weight=1.0 + (data.train.y == 1) * 4.0)
    assert weighted.predict_proba(data.test.X)[:, 1].mean() > plain.predict_proba(data.test.X)[:, 1].mean()
    with pytest.raises(ValueError, match="one per train row"):
        fit_gbm(data.train, None, config, sample_weight=np.ones(3))

    # the trainer: a constant weight gives the same weighted mean loss, so the same fit
    cfg = MLPConfig(hidden_sizes=(16,), max_epochs=2, batch_size=128, numeric_embedding="none")
    a = fit_mlp(data.train, data.valid, cfg)
    b = fit_mlp(data.train, data.valid, cfg, sample_weight=np.full(len(data.train), 3.0))
    # float32 rounding of (3 l).sum() / (3 n) against l.mean(), over two epochs: 1e-5
    np.testing.assert_allclose(a.predict_proba(data.test.X), b.predict_proba(data.test.X), atol=1e-5)
    with pytest.raises(ValueError, match="one per row"):
        fit_mlp(data.train, data.valid, cfg, sample_weight=np.ones(5))


# -- threshold optimization ---------------------------------------------------------------
class _Identity(ClassifierMixin, BaseEstimator):
    """A prefit 'estimator' whose probability is the score column, for fairlearn."""

    def __sklearn_is_fitted__(self) -> bool:
        return True

    def fit(self, X, y):
        return self

    def predict_proba(self, X):
        s = np.asarray(X, dtype=float)[:, 0]
        return np.column_stack([1 - s, s])

    def predict(self, X):
        return (np.asarray(X, dtype=float)[:, 0] >= 0.5).astype(int)


@pytest.mark.parametrize("constraint", ["demographic_parity", "equalized_odds"])
def test_threshold_optimizer_meets_the_constraint_and_beats_fairlearn(constraint: str) -> None:
    from fairlearn.postprocessing import ThresholdOptimizer as FairlearnTO

    fit_s, fit_y, fit_g = _biased_scores(6000, 4)
    test_s, test_y, test_g = _biased_scores(40000, 5)
    before = fairness_summary(test_y, (test_s >= 0.5).astype(int), test_g)
    assert before.demographic_parity_difference > 0.2 and before.equalized_odds_difference > 0.1  # biased data

    ours = ThresholdOptimizer(constraint).fit(fit_s, fit_y, fit_g)
    on_fit = fairness_summary(fit_y, ours.predict_proba(fit_s, fit_g), fit_g)
    gap = "demographic_parity_difference" if constraint == "demographic_parity" else "equalized_odds_difference"
    assert getattr(on_fit, gap) < 1e-9  # the LP's equality constraint holds exactly in expectation (rounding)
    assert on_fit.accuracy == pytest.approx(ours.accuracy_, abs=1e-12)
    after = fairness_summary(test_y, ours.predict(test_s, test_g, random_state=0), test_g)
    # fresh rows: the gap is only sampling noise; with ~14,000 rows in the smaller group 0.02 is > 4 sd
    assert getattr(after, gap) < 0.02

    theirs = FairlearnTO(estimator=_Identity(), constraints=constraint, prefit=True, predict_method="predict_proba")
    theirs.fit(fit_s[:, None], fit_y, sensitive_features=fit_g)
    p_theirs_fit = theirs._pmf_predict(fit_s[:, None], sensitive_features=fit_g)[:, 1]
    acc_theirs_fit = fairness_summary(fit_y, p_theirs_fit, fit_g).accuracy
    # On the fitting rows ours is the exact LP optimum; fairlearn searches a 1,000-point grid: never better (1e-9: rounding)
    assert ours.accuracy_ >= acc_theirs_fit - 1e-9
    p_theirs = theirs._pmf_predict(test_s[:, None], sensitive_features=test_g)[:, 1]
    acc_theirs = fairness_summary(test_y, p_theirs, test_g).accuracy
    acc_ours = fairness_summary(test_y, ours.predict_proba(test_s, test_g), test_g).accuracy
    # On fresh rows both are estimates from 6,000 rows: ours within 0.003 (about 1 sd of accuracy at n=6,000) or better
    assert acc_ours >= acc_theirs - 0.003


def test_threshold_tolerance_is_respected_and_trades_accuracy() -> None:
    s, y, g = _biased_scores(5000, 6)
    accs = []
    for tol in (0.0, 0.02, 0.05, 0.1):
        to = ThresholdOptimizer("demographic_parity", tolerance=tol).fit(s, y, g)
        summary = fairness_summary(y, to.predict_proba(s, g), g)
        assert summary.demographic_parity_difference <= tol + 1e-9  # the LP's bound, up to rounding
        accs.append(to.accuracy_)
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(accs))  # a looser constraint never costs accuracy
    from fairlearn.postprocessing import ThresholdOptimizer as FairlearnTO

    theirs = FairlearnTO(estimator=_Identity(), constraints="demographic_parity", prefit=True,
                         predict_method="predict_proba", tol=0.05).fit(s[:, None], y, sensitive_features=g)  # fmt: skip
    p_theirs = theirs._pmf_predict(s[:, None], sensitive_features=g)[:, 1]
    assert fairness_summary(y, p_theirs, g).demographic_parity_difference <= 0.05 + 1e-6  # the same relaxed constraint
    # the exact LP at the same tolerance is at least as accurate as fairlearn's grid search (1e-9: rounding)
    assert accs[2] >= fairness_summary(y, p_theirs, g).accuracy - 1e-9
    # a tolerance above the unconstrained gap gives the unconstrained optimum: one threshold per group at 0.5-ish
    free = ThresholdOptimizer("demographic_parity", tolerance=0.99).fit(s, y, g)
    best_single = max(np.mean((s >= t) == y) for t in np.unique(s)[::25])
    assert free.accuracy_ >= best_single - 1e-12  # per-group thresholds are at least as good as one


def test_pruned_hull_equals_the_exact_chain_on_every_point() -> None:
    from modelyard.evaluate._remediation_threshold import (
        _GroupHull,
        _hull_candidates,
        _upper_hull,
    )

    rng = np.random.default_rng(10)
    s = np.round(rng.random(5000), 3)  # ties: about 1,000 distinct scores
    y = (rng.random(5000) < s).astype(int)
    hull = _GroupHull(s, y)
    f = np.concatenate([hull.uf, rng.random(500)])
    t = np.concatenate([hull.ut, rng.random(500)])
    # Qhull's vertex pruning is an optimization only: the chain over all points is the reference
    np.testing.assert_array_equal(_upper_hull(f, t, _hull_candidates(f, t)), _upper_hull(f, t))
    # the hull is concave and spans f = 0 .. 1
    assert hull.uf[0] == 0.0 and hull.uf[-1] == 1.0
    slopes = np.diff(hull.ut) / np.diff(hull.uf)
    assert np.all(np.diff(slopes) <= 1e-12)


def test_threshold_optimizer_errors() -> None:
    s, y, g = _biased_scores(200, 7)
    with pytest.raises(ValueError, match="Unknown constraint"):
        ThresholdOptimizer("parity")
    with pytest.raises(DataError, match="at least two groups"):
        ThresholdOptimizer().fit(s, y, np.full(len(s), "a"))
    with pytest.raises(ValueError, match="NaN"):
        ThresholdOptimizer().fit(np.where(np.arange(len(s)) == 3, np.nan, s), y, g)
    to = ThresholdOptimizer().fit(s, y, g)
    with pytest.raises(DataError, match="not seen"):
        to.predict(s, np.full(len(s), "zz"))


# -- MinDiff ------------------------------------------------------------------------------
def test_mmd_is_zero_for_identical_samples_and_matches_a_slow_formula() -> None:
    rng = np.random.default_rng(8)
    a = torch.tensor(rng.random(40), dtype=torch.float64)
    assert float(mmd_penalty(a, a)) < 1e-15  # exactly 0 up to rounding
    assert float(mmd_penalty(a, a[torch.randperm(40)])) < 1e-15  # a multiset: order does not matter
    b = torch.tensor(rng.random(30) * 0.5 + 0.4, dtype=torch.float64)
    bw = 0.1

    def k(u: float, v: float) -> float:
        return float(np.exp(-((u - v) ** 2) / (2 * bw**2)))

    aa, bb = a.numpy(), b.numpy()
    slow = (
        sum(k(u, v) for u in aa for v in aa) / len(aa) ** 2
        + sum(k(u, v) for u in bb for v in bb) / len(bb) ** 2
        - 2 * sum(k(u, v) for u in aa for v in bb) / (len(aa) * len(bb))
    )
    assert float(mmd_penalty(a, b, bandwidth=bw)) == pytest.approx(slow, rel=1e-10)  # float64 sums
    assert slow > 0.01


def test_mindiff_hook_reduces_the_score_distribution_gap(data: my.data.TabularData) -> None:
    cfg = MLPConfig(hidden_sizes=(32,), max_epochs=6, batch_size=128, numeric_embedding="none", patience=10)
    groups = data.train.frame["sex"].to_numpy()
    plain = fit_mlp(data.train, data.valid, cfg)
    hook = MinDiffPenalty(groups, data.train.y, weight=5.0, label=None)
    fair = fit_mlp(data.train, data.valid, cfg, loss_hook=hook)

    def gap(model: object) -> float:
        s = torch.tensor(model.predict_proba(data.test.X)[:, 1])  # type: ignore[attr-defined]
        g = data.test.frame["sex"].to_numpy()
        return float(mmd_penalty(s[torch.from_numpy(g == "F")], s[torch.from_numpy(g == "M")]))

    assert gap(fair) < 0.5 * gap(plain)  # the penalty shrinks the test-set MMD by more than half
    # the hook sees the batch and adds a differentiable scalar
    out = torch.zeros(4, 2, requires_grad=True)
    value = hook(out, torch.arange(4))
    assert value.ndim == 0
    with pytest.raises(ValueError, match="two groups"):
        MinDiffPenalty(np.full(10, "a"), np.zeros(10))


def test_trainer_loss_hook_is_called_with_batch_rows(data: my.data.TabularData) -> None:
    seen: list[int] = []

    def hook(out: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        seen.extend(idx.tolist())
        return out.sum() * 0.0

    cfg = MLPConfig(hidden_sizes=(8,), max_epochs=1, batch_size=256, numeric_embedding="none")
    x_num, _ = my.data.encode_frame(data.train.X, data.schema)
    module = TabularMLP.build(data.schema, cfg, x_num=x_num, y=data.train.y)
    Trainer(max_epochs=1, batch_size=256).fit(module, data.train, data.valid, loss_hook=hook)
    assert sorted(seen) == list(range(len(data.train)))  # every row once per epoch


# -- learning fair representations --------------------------------------------------------
def test_lfr_loss_decreases_and_parity_improves() -> None:
    frame = _biased_frame(1500, 9)
    x = np.column_stack([frame["x1"], frame["x2"], frame["color"] == "red"]).astype(float)
    x = (x - x.mean(0)) / x.std(0)
    y = (frame["y"] == "yes").to_numpy().astype(int)
    g = frame["sex"].to_numpy()
    unfair = LearnedFairRepresentation(5, fairness=0.0, max_iter=60).fit(x, y, g)
    fair = LearnedFairRepresentation(5, fairness=5.0, max_iter=60).fit(x, y, g)
    for model in (unfair, fair):
        h = model.loss_history_
        assert h[-1] < h[0]  # the objective went down
        assert all(b <= a + 1e-9 for a, b in itertools.pairwise(h))  # strong-Wolfe steps never increase it
    dpd_unfair = fairness_summary(y, unfair.predict(x, g), g).demographic_parity_difference
    dpd_fair = fairness_summary(y, fair.predict(x, g), g).demographic_parity_difference
    assert dpd_unfair > 0.2  # the proxy x1 carries the group
    assert dpd_fair < 0.5 * dpd_unfair
    assert fair.losses_["L_z"] < unfair.losses_["L_z"]
    m = fair.transform(x, g)
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-12)  # memberships are a distribution
    with pytest.raises(DataError, match="not seen"):
        fair.transform(x[:3], np.array(["Q", "F", "M"]))


def test_lfr_with_its_defaults_beats_the_majority_class_on_adult() -> None:
    """With AIF360's A_z = 50 the parity term drowned the prediction term (accuracy below always
    answering the majority class); the default must learn something on real data."""
    adult = my.data.load("adult")
    train, test = adult.train.frame.sample(1500, random_state=0), adult.test.frame.sample(1500, random_state=1)
    cols = ["age", "education-num", "capital-gain", "capital-loss", "hours-per-week"]
    mu, sd = train[cols].mean(), train[cols].std()
    x_tr, x_te = ((train[cols] - mu) / sd).to_numpy(float), ((test[cols] - mu) / sd).to_numpy(float)
    positive = adult.schema.classes[1]
    y_tr, y_te = (train["income"] == positive).to_numpy(int), (test["income"] == positive).to_numpy(int)
    lfr = LearnedFairRepresentation(max_iter=60).fit(x_tr, y_tr, train["sex"].to_numpy())
    accuracy = float((lfr.predict(x_te, test["sex"].to_numpy()) == y_te).mean())
    majority = max(y_te.mean(), 1 - y_te.mean())
    assert accuracy > majority + 0.01  # at least one point above the constant answer (0.76 here)


# -- the entry point ----------------------------------------------------------------------
def test_remediate_threshold_and_reweighing_end_to_end(data: my.data.TabularData) -> None:
    r = remediate("threshold", data.train, data.valid, data.test, sensitive="sex", base_params={"max_iter": 30})
    assert r.before.demographic_parity_difference > 0.3
    # thresholds chosen on 300 validation rows: the test gap is sampling noise (sd about 0.03 here)
    assert r.after.demographic_parity_difference < 0.1
    assert r.accuracy_cost == pytest.approx(r.before.accuracy - r.after.accuracy)
    assert "threshold on 'sex'" in r.table()
    w = remediate("reweighing", data.train, data.valid, data.test, sensitive="sex", base_params={"max_iter": 30})
    assert w.after.demographic_parity_difference < w.before.demographic_parity_difference
    assert set(w.as_dict()) >= {"before", "after", "accuracy_cost"}
    # any scikit-learn classifier taking sample_weight works as the base
    from sklearn.linear_model import LogisticRegression

    lr = remediate("reweighing", data.train, data.valid, data.test, sensitive="sex", base=LogisticRegression(max_iter=500))
    assert lr.after.demographic_parity_difference < lr.before.demographic_parity_difference


def test_remediate_mindiff_and_lfr_end_to_end(data: my.data.TabularData) -> None:
    cfg = MLPConfig(hidden_sizes=(16,), max_epochs=4, batch_size=128, numeric_embedding="none", patience=10)
    r = remediate("mindiff", data.train, data.valid, data.test, sensitive="sex", base="mlp", mlp_config=cfg,
                  options={"weight": 5.0, "label": None})  # fmt: skip
    assert r.after.demographic_parity_difference < r.before.demographic_parity_difference
    lfr = remediate("lfr", data.train, data.valid, data.test, sensitive="sex", base_params={"max_iter": 20},
                    options={"n_prototypes": 5, "fairness": 5.0, "max_iter": 40})  # fmt: skip
    assert lfr.after.demographic_parity_difference < 0.5 * lfr.before.demographic_parity_difference
    assert lfr.details["final_loss"] < lfr.model.loss_history_[0]


def test_remediate_errors(data: my.data.TabularData) -> None:
    with pytest.raises(ValueError, match="Unknown remediation method"):
        remediate("magic", data.train, data.valid, data.test, sensitive="sex")
    with pytest.raises(DataError, match="its columns are"):
        remediate("threshold", data.train, data.valid, data.test, sensitive="gender")
    with pytest.raises(ValueError, match="base='mlp'"):
        remediate("mindiff", data.train, data.valid, data.test, sensitive="sex", base="gbm")
    with pytest.raises(ValueError, match="Unknown base model"):
        remediate("threshold", data.train, data.valid, data.test, sensitive="sex", base="xgb")

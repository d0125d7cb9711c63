"""Counterfactuals and what-if against a linear model whose minimal change has a closed form."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from modelyard.data import infer_schema
from modelyard.explain import counterfactuals, what_if
from modelyard.search import LinearPredictor


@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"x1": rng.normal(0, 1, 2000), "x2": rng.normal(0, 3, 2000), "x3": rng.normal(0, 0.2, 2000),
                      "color": rng.choice(["blue", "green", "red"], 2000)})
    X["y"] = rng.choice(["no", "yes"], 2000)
    schema = infer_schema(X, "y")
    # logit = -1 + 2 x1 - x2 + 0.5 x3 + (5 if red); codes: 0 missing, then blue, green, red
    model = LinearPredictor(schema, log_mask=np.zeros(3, bool), mean=np.zeros(3), scale=np.ones(3),
                            num_coef=np.array([[2.0], [-1.0], [0.5]]), cat_table=np.array([[0.0], [0.0], [0.0], [5.0]]),
                            intercept=np.array([-1.0]))
    return model, X


def _mad(v: pd.Series) -> float:
    return float(np.median(np.abs(v - v.median())))


def test_smallest_change_matches_the_closed_form(linear) -> None:
    model, X = linear
    row = {"x1": 0.0, "x2": 0.0, "x3": 0.0, "color": "blue"}  # logit -1: class "no"
    found = counterfactuals(model, row, X, n=3)
    best = found[0]
    # Weighted-L1 optimum of a linear boundary is a single feature: the one with the largest |w_j| * MAD_j.
    costs = {f: 1.0 / (abs(w) * _mad(X[f])) for f, w in (("x1", 2.0), ("x2", -1.0), ("x3", 0.5))}
    assert min(costs, key=costs.get) == "x2" and set(best.changes) == {"x2"}
    assert best.predicted == "yes"
    new_x2 = best.changes["x2"][1]
    assert new_x2 == pytest.approx(-1.0, abs=2e-3 * _mad(X["x2"]))  # bisection tol 1e-3 MAD, plus the flip margin
    assert best.distance == pytest.approx(costs["x2"], rel=1e-2)
    assert any(set(c.changes) == {"color"} and c.distance == 1.0 for c in found)  # red flips at cost 1
    assert [c.distance for c in found] == sorted(c.distance for c in found)


def test_immutable_features_are_left_alone(linear) -> None:
    model, X = linear
    row = {"x1": 0.0, "x2": 0.0, "x3": 0.0, "color": "blue"}
    best = counterfactuals(model, row, X, mutable=["x1", "x3"], n=1)[0]
    assert set(best.changes) == {"x1"} and best.changes["x1"][1] == pytest.approx(0.5, abs=2e-3 * _mad(X["x1"]))


def test_what_if_repredicts_the_edited_row(linear) -> None:
    model, X = linear
    out = what_if(model, {"x1": 0.0, "x2": 0.0, "x3": 0.0, "color": "blue"}, {"x2": -2.0, "color": "green"})
    assert (out["before"], out["after"]) == ("no", "yes")
    assert out["proba_after"][1] == pytest.approx(1 / (1 + np.exp(-1.0)))  # logit -1 + 2 = 1
    assert out["row"]["x2"].item() == -2.0


def test_bad_input(linear) -> None:
    model, X = linear
    with pytest.raises(IndexError, match="out of range: the data has 2000 rows"):
        counterfactuals(model, 5000, X)
    with pytest.raises(ValueError, match=r"\['age'\] are not inputs"):
        counterfactuals(model, 0, X, mutable=["age"])
    with pytest.raises(ValueError, match=r"\['age'\] are not inputs"):
        what_if(model, 0, {"age": 3}, X=X)
    with pytest.raises(ValueError, match="target 'maybe' is not a class"):
        counterfactuals(model, 0, X, target="maybe")

"""Calibrated lattice: exact monotonicity, interpolation against a slow reference, save/export, pipeline, errors."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from modelyard.compress import export_onnx
from modelyard.data import TabularSplit, encode_frame, infer_schema
from modelyard.errors import SpecError
from modelyard.models import (
    CalibratedLattice,
    LatticeConfig,
    OnnxPredictor,
    load_predictor,
    save_torch,
)
from modelyard.train import fit_lattice


def _data(n: int = 1500, seed: int = 0) -> tuple[TabularSplit, TabularSplit]:
    rng = np.random.default_rng(seed)
    f = pd.DataFrame({"hours": rng.uniform(0, 80, n), "debt": rng.exponential(5, n), "noise": rng.normal(size=n),
                      "color": rng.choice(["red", "green", "blue"], n)})
    logit = 0.08 * (f["hours"] - 40) - 0.4 * (f["debt"] - 5) + np.where(f["color"] == "red", 1.0, 0.0) \
        + np.sin(3 * f["noise"])  # non-monotone in noise
    f["y"] = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    f.loc[rng.random(n) < 0.03, "hours"] = np.nan
    schema = infer_schema(f, "y")
    cut = int(0.8 * n)
    return TabularSplit(f.iloc[:cut].reset_index(drop=True), schema), TabularSplit(f.iloc[cut:].reset_index(drop=True), schema)


MONO = LatticeConfig(monotonic={"hours": "increasing", "debt": "decreasing"}, max_epochs=15, lattice_size=3)


@pytest.fixture(scope="module")
def fitted():
    train, valid = _data()
    return fit_lattice(train, valid, MONO), train, valid


def test_learns_and_is_monotone_on_random_inputs(fitted) -> None:
    model, train, valid = fitted
    acc = (model.predict(valid.X) == valid.y).mean()
    assert acc > 0.7  # the Bayes rate of this noisy target is about 0.78
    rng = np.random.default_rng(1)
    rows = pd.concat([valid.X] * 4, ignore_index=True)
    rows["hours"] = rng.uniform(-10, 90, len(rows))  # also outside the training range
    for feature, sign in (("hours", 1), ("debt", -1)):
        higher = rows.copy()
        higher[feature] = rows[feature].fillna(0) + rng.exponential(5, len(rows))
        base = rows.copy()
        base[feature] = rows[feature].fillna(0)
        p0, p1 = model.predict_proba(base)[:, 1], model.predict_proba(higher)[:, 1]
        # Exact in the parameters (checked below); float32 evaluation can round by ~1e-7.
        assert np.all(sign * (p1 - p0) >= -1e-6), feature


def test_constraints_hold_exactly_in_the_parameters(fitted) -> None:
    model, _, _ = fitted
    m: CalibratedLattice = model.module
    theta = m.vertices().detach()
    hours, debt = m.names.index("hours"), m.names.index("debt")
    assert torch.all(theta.diff(dim=hours + 1) >= 0) and torch.all(theta.diff(dim=debt + 1) >= 0)
    # (a decreasing feature's sign is in its calibrator; the lattice rises along every constrained axis)
    values = m._numeric_values().detach()
    assert torch.all(values[hours].diff() >= 0) and torch.all(values[debt].diff() <= 0)


def test_interpolation_and_calibration_match_slow_references(fitted) -> None:
    model, train, _ = fitted
    m: CalibratedLattice = model.module
    L, d = m.config.lattice_size, m.n_num + m.n_cat
    rng = np.random.default_rng(2)
    z = torch.from_numpy(rng.uniform(0, L - 1, (7, d))).float()
    theta = m.vertices().detach().numpy()[0]
    expected = []
    for point in z.numpy():
        cell = np.minimum(np.floor(point), L - 2).astype(int)
        frac = point - cell
        total = 0.0
        for corner in itertools.product((0, 1), repeat=d):  # every corner of the cell, weight prod(frac or 1-frac)
            weight = np.prod([frac[j] if c else 1 - frac[j] for j, c in enumerate(corner)])
            total += weight * theta[tuple(cell + np.array(corner))]
        expected.append(total)
    np.testing.assert_allclose(m.interpolate(z).detach().numpy()[:, 0], expected, atol=1e-5)  # float32
    x_num, x_cat = encode_frame(train.X.head(50), train.schema)
    got = m.calibrate(torch.from_numpy(x_num), torch.from_numpy(x_cat)).detach().numpy()
    kp, vals = m.keypoints.numpy(), m._numeric_values().detach().numpy()
    for j in range(m.n_num):
        col = np.where(np.isnan(x_num[:, j]), m.fill[j].item(), x_num[:, j])
        np.testing.assert_allclose(got[:, j], np.interp(col, kp[j], vals[j]), atol=1e-5)  # float32


def test_save_load_and_onnx_parity(fitted, tmp_path: Path) -> None:
    model, _, valid = fitted
    back = load_predictor(save_torch(model, tmp_path / "lattice.safetensors"))
    assert back.family == "lattice"
    np.testing.assert_array_equal(back.predict_proba(valid.X), model.predict_proba(valid.X))
    result = export_onnx(model, tmp_path / "lattice.onnx", sample=valid.X)
    served = OnnxPredictor(result.path)
    np.testing.assert_allclose(served.predict_proba(valid.X), model.predict_proba(valid.X), atol=1e-5)


def test_bad_configs_are_refused() -> None:
    train, _ = _data(200)
    with pytest.raises(SpecError, match=r"features \['age'\] the data does not have"):
        CalibratedLattice(train.schema, LatticeConfig(monotonic={"age": "increasing"}))
    with pytest.raises(SpecError, match="no order to be monotonic"):
        CalibratedLattice(train.schema, LatticeConfig(monotonic={"color": "increasing"}))
    with pytest.raises(SpecError, match="vertices, above max_vertices"):
        CalibratedLattice(train.schema, LatticeConfig(lattice_size=30))
    frame = train.frame.assign(y=np.resize(["a", "b", "c"], len(train)))
    with pytest.raises(SpecError, match="binary or regression"):
        CalibratedLattice(infer_schema(frame, "y"), LatticeConfig(monotonic={"hours": "increasing"}))


def test_lattice_runs_as_a_pipeline_family(tmp_path: Path, monkeypatch, sqlite_url: str) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "pipeline_tests"))
    from _synthetic import make_csv, write_spec

    from modelyard import pipeline

    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path / "spec.yaml", make_csv(tmp_path / "p.csv", n=500),
                      train={"models": {"lattice": {"family": "lattice", "max_epochs": 3,
                                                    "monotonic": {"age": "increasing"}}}})
    result = pipeline.run(spec, store=sqlite_url, quiet=True)
    import json

    metrics = json.loads((result.root / "metrics.json").read_text())
    assert set(metrics["models"]) == {"lattice"} and (result.root / "model.onnx").is_file()

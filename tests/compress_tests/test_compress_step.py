"""The compress step: variants built, measured on ONNX Runtime, the best recorded, end to end in a pipeline."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import yaml
from onnx import numpy_helper
from sklearn.metrics import accuracy_score

from modelyard import pipeline
from modelyard.compress import PRUNERS, QUANTIZERS, measure, parse_variant
from modelyard.compress._step import (
    REFERENCE_VARIANT,
    compress_variants,
    make_variants,
    pick_best,
)
from modelyard.data import Schema, TabularSplit
from modelyard.errors import SpecError
from modelyard.models import OnnxPredictor
from modelyard.pipeline import parse_spec

EVIL = "<script>alert(1)</script>"  # a group value: the report must show it as text
VARIANTS = ["magnitude:0.8", "dynamic_int8", {"name": "pruned-int8", "prune": {"sparsity": 0.5},
                                              "quantize": "static_int8"}, {"structured": {"fraction": 0.5}}]


@pytest.fixture(autouse=True)
def one_openmp_thread() -> Iterator[None]:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        yield


def _csv(path: Path, n: int = 900, seed: int = 0) -> Path:
    """A binary problem with numeric and categorical columns and a sensitive column."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n).astype(float)
    income = rng.lognormal(10, 1, n)
    group = rng.choice(["a", "b", EVIL], n, p=[0.5, 0.3, 0.2])
    sex = rng.choice(["F", "M"], n)
    logit = 0.08 * (age - 45) + 1.5 * (np.log(income) - 10) + np.where(group == "b", 1.0, -0.5)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    pd.DataFrame({"age": age, "income": income, "group": group, "sex": sex,
                  "label": np.where(y == 1, "yes", "no")}).to_csv(path, index=False)
    return path


def _spec(path: Path, csv: Path, compress: dict) -> Path:
    spec = {
        "name": "compress-test",
        "data": {"source": str(csv), "target": "label", "sensitive": ["sex"], "split": {"test": 0.25, "valid": 0.2}},
        "train": {"models": {"mlp": {"family": "mlp", "max_epochs": 2, "hidden_sizes": [32, 16]}}},
        "evaluate": {"slices": ["sex", "group"]},
        "compress": compress,
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> pipeline.RunResult:
    work = tmp_path_factory.mktemp("compress")
    csv = _csv(work / "data.csv")
    spec = _spec(work / "spec.yaml", csv, {"variants": VARIANTS, "max_accuracy_drop": 0.02, "repeats": 5,
                                           "warmup": 1})
    return pipeline.run(spec, runs_dir=work / "runs", store=f"sqlite:///{work / 'meta.db'}", quiet=True)


def _split(root: Path, name: str) -> TabularSplit:
    schema = Schema.from_dict(json.loads((root / "data" / "schema.json").read_text())["schema"])
    return TabularSplit(pd.read_parquet(root / "data" / f"{name}.parquet"), schema)


def test_the_step_runs_after_evaluate_and_writes_table_plots_and_models(run: pipeline.RunResult) -> None:
    root = run.root
    names = [s.name for s in run.steps]
    assert names.index("evaluate") < names.index("compress") < names.index("report")
    out = root / "compress"
    found = json.loads((out / "compress.json").read_text())
    table = pd.read_csv(out / "compress.csv")
    assert list(table["variant"]) == [REFERENCE_VARIANT, "magnitude:0.8", "dynamic_int8", "pruned-int8",
                                      "structured_l2:0.5"]
    assert [r["variant"] for r in found["table"]] == list(table["variant"])
    assert found["model"] == "mlp" and found["metric"] == "accuracy" and (table["error"].isna()).all()
    for col in ("size_bytes", "gzip_bytes", "p50_ms_b1", "p99_ms_b1", "p50_ms_b64", "p99_ms_b64", "accuracy",
                "accuracy_change", "valid_accuracy", "valid_drop", "size_ratio"):
        assert table[col].notna().all(), col
    for png in ("size_accuracy.png", "latency_accuracy.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for variant in found["variants"].values():
        assert (out / "variants" / variant["file"]).is_file()
    best = found["best"]
    assert (root / "model.compressed.onnx").read_bytes() == (out / "variants" / found["variants"][best]["file"]).read_bytes()
    slices = pd.read_csv(out / "slices.csv")
    assert set(slices["slice"]) == {"sex", "group"} and set(slices["variant"]) == set(table["variant"])


def test_table_values_equal_an_independent_measure(run: pipeline.RunResult) -> None:
    root = run.root
    out = root / "compress"
    found = json.loads((out / "compress.json").read_text())
    table = pd.read_csv(out / "compress.csv").set_index("variant")
    slices = pd.read_csv(out / "slices.csv")
    test, valid = _split(root, "test"), _split(root, "valid")
    ref_valid = None
    for name in (REFERENCE_VARIANT, "magnitude:0.8", "pruned-int8"):
        path = out / "variants" / found["variants"][name]["file"]
        m = measure(path, test, slices=["sex", "group"], repeats=2, warmup=0)
        assert m.size_bytes == table.loc[name, "size_bytes"] == path.stat().st_size  # sizes: exact
        assert m.gzip_bytes == table.loc[name, "gzip_bytes"]
        assert m.overall["accuracy"] == table.loc[name, "accuracy"]  # the same rows, the same model: exact
        # An independent reference for the accuracy: scikit-learn on ONNX Runtime's predictions.
        served = OnnxPredictor(path)
        assert accuracy_score(test.y, served.predict(test.X)) == table.loc[name, "accuracy"]
        for group, values in m.by_slice["sex"].items():
            row = slices[(slices.variant == name) & (slices.slice == "sex") & (slices.group == group)
                         & (slices.metric == "accuracy")]
            assert row["value"].item() == values["accuracy"]
        valid_acc = accuracy_score(valid.y, served.predict(valid.X))
        assert valid_acc == table.loc[name, "valid_accuracy"]
        ref_valid = valid_acc if name == REFERENCE_VARIANT else ref_valid
        # Subtracting in float64 twice gives the same bits: exact.
        assert table.loc[name, "valid_drop"] == ref_valid - valid_acc
        assert table.loc[name, "accuracy_change"] == table.loc[name, "accuracy"] - table.loc[REFERENCE_VARIANT,
                                                                                            "accuracy"]


def test_variants_are_what_they_claim(run: pipeline.RunResult) -> None:
    out = run.root / "compress"
    found = json.loads((out / "compress.json").read_text())
    table = pd.read_csv(out / "compress.csv").set_index("variant")

    def layer_weights(name: str) -> list[np.ndarray]:
        """The Linear layers' weight matrices (body and head; embeddings and the front end are not pruned)."""
        model = onnx.load(str(out / "variants" / found["variants"][name]["file"]))
        return [numpy_helper.to_array(t) for t in model.graph.initializer
                if re.fullmatch(r"core/module\.(body\.\d+|head)\.weight", t.name)]

    # Global magnitude pruning zeroes exactly round(0.8 * n) of the layers' weights, the smallest ones.
    dense, pruned = layer_weights(REFERENCE_VARIANT), layer_weights("magnitude:0.8")
    assert len(dense) == len(pruned) == 3  # hidden_sizes [32, 16]: two body layers and the head
    total = sum(w.size for w in dense)
    assert sum(int((w == 0).sum()) for w in pruned) == round(0.8 * total)
    kept = np.concatenate([np.abs(w[w != 0]) for w in pruned])
    dropped = np.concatenate([np.abs(d[p == 0]) for d, p in zip(dense, pruned)])
    assert kept.min() >= dropped.max()  # magnitude: every kept weight is at least as large as every pruned one
    assert abs(table.loc["magnitude:0.8", "weight_sparsity"] - round(0.8 * total) / total) < 1e-12
    # Zeros compress: the pruned file is as large on disk but smaller after gzip.
    assert table.loc["magnitude:0.8", "size_bytes"] == pytest.approx(table.loc[REFERENCE_VARIANT, "size_bytes"],
                                                                     rel=0.01)  # same shapes; metadata may differ
    assert table.loc["magnitude:0.8", "gzip_bytes"] < table.loc[REFERENCE_VARIANT, "gzip_bytes"]
    # Structured pruning removes half of the hidden units: fewer parameters, a smaller file.
    assert table.loc["structured_l2:0.5", "size_bytes"] < table.loc[REFERENCE_VARIANT, "size_bytes"]
    assert table.loc["structured_l2:0.5", "flops_ratio"] < 0.75
    # int8 variants record how they were quantized.
    meta = {p.key: p.value for p in onnx.load(str(out / "variants" / found["variants"]["pruned-int8"]["file"]))
            .metadata_props}
    assert json.loads(meta["modelyard.quantization"])["mode"] == "static"


def test_the_best_variant_follows_the_rule(run: pipeline.RunResult) -> None:
    found = json.loads((run.root / "compress" / "compress.json").read_text())
    table = pd.DataFrame(found["table"])
    ref = table[table.variant == REFERENCE_VARIANT].iloc[0]
    eligible = table[(table.variant != REFERENCE_VARIANT) & (table.valid_drop <= 0.02)
                     & (table.size_bytes < ref.size_bytes)]
    expected = eligible.sort_values(["size_bytes", "valid_drop"]).variant.iloc[0] if len(eligible) else REFERENCE_VARIANT
    assert found["best"] == expected
    assert table.set_index("variant").loc[expected, "best"] and table["best"].sum() == 1


def test_report_shows_the_section_and_a_rerun_is_cached(run: pipeline.RunResult, tmp_path: Path) -> None:
    root = run.root
    html = (root / "report.html").read_text()
    section = html[html.index('<section id="compress">'):]
    section = section[:section.index("</section>")]
    assert len(re.findall(r'<img src="data:image/png;base64,', section)) == 2
    assert "magnitude:0.8" in section and "structured_l2:0.5" in section and "Accuracy per sex" in section
    assert EVIL not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in section  # per-group table, escaped
    metrics = json.loads((root / "metrics.json").read_text())
    assert metrics["compress"]["best"] == json.loads((root / "compress" / "compress.json").read_text())["best"]
    again = pipeline.run(root / "spec.yaml", runs_dir=root.parent, store=f"sqlite:///{root.parent.parent / 'meta.db'}",
                         quiet=True)
    assert again.all_cached


def test_pick_best_rule() -> None:
    table = pd.DataFrame([
        {"variant": "uncompressed", "size_bytes": 100, "gzip_bytes": 90, "p50_ms_b64": 1.0, "valid_drop": 0.0,
         "error": ""},
        {"variant": "a", "size_bytes": 50, "gzip_bytes": 40, "p50_ms_b64": 1.5, "valid_drop": 0.03, "error": ""},
        {"variant": "b", "size_bytes": 60, "gzip_bytes": 30, "p50_ms_b64": 0.9, "valid_drop": 0.005, "error": ""},
        {"variant": "c", "size_bytes": 70, "gzip_bytes": 35, "p50_ms_b64": 0.5, "valid_drop": 0.0, "error": ""},
        {"variant": "d", "size_bytes": None, "gzip_bytes": None, "p50_ms_b64": None, "valid_drop": None,
         "error": "ValueError: cannot"},
    ])
    assert pick_best(table, metric="accuracy", max_accuracy_drop=0.01, prefer="size")[0] == "b"
    assert pick_best(table, metric="accuracy", max_accuracy_drop=0.05, prefer="size")[0] == "a"
    assert pick_best(table, metric="accuracy", max_accuracy_drop=0.01, prefer="gzip")[0] == "b"
    assert pick_best(table, metric="accuracy", max_accuracy_drop=0.01, prefer="latency")[0] == "c"
    name, reason = pick_best(table, metric="accuracy", max_accuracy_drop=0.0, prefer="gzip")
    assert name == "c"
    slower = table.assign(p50_ms_b64=[1.0, 2.0, 2.0, 2.0, None])
    name, reason = pick_best(slower, metric="accuracy", max_accuracy_drop=0.01, prefer="latency")
    assert name == "uncompressed" and "lower p50 latency" in reason
    name, reason = pick_best(table.assign(valid_drop=[0, 0.5, 0.5, 0.5, None]), metric="accuracy",
                             max_accuracy_drop=0.01)
    assert name == "uncompressed" and "smallest drop +0.5000" in reason


def test_an_onnx_only_model_can_only_be_quantized(tmp_path: Path) -> None:
    from modelyard.compress import export_onnx
    from modelyard.data import from_csv
    from modelyard.models import GBMConfig, fit_gbm

    data = from_csv(_csv(tmp_path / "d.csv", n=500), target="label", test=0.3, valid=0.2, seed=0)
    gbm = fit_gbm(data.train, data.valid, GBMConfig(max_iter=5))
    export_onnx(gbm, tmp_path / "gbm.onnx", sample=data.valid.X)
    result = compress_variants(tmp_path / "gbm.onnx", data.train, data.valid, data.test, tmp_path / "work",
                               ["magnitude:0.5", "fp16"], repeats=2, warmup=0)
    table = result.table.set_index("variant")
    assert "pruning needs a torch model" in table.loc["magnitude:0.5", "error"]
    assert table.loc["fp16", "error"] == "" and table.loc["fp16", "size_bytes"] > 0
    assert result.best != "magnitude:0.5"


def test_a_variant_the_runtime_cannot_serve_is_a_row_with_its_error(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from modelyard.compress import _step
    from modelyard.data import from_csv
    from modelyard.models import MLPConfig
    from modelyard.train import fit_mlp

    data = from_csv(_csv(tmp_path / "d.csv", n=400), target="label", test=0.3, valid=0.2, seed=0)
    mlp = fit_mlp(data.train, data.valid, MLPConfig(max_epochs=1, hidden_sizes=(8,)))
    real = _step.measure
    calls: list[str] = []

    def flaky(path: Path, split: object, *, name: str, **kw: object) -> object:
        calls.append(name)
        if name == "fp16":  # e.g. float16 overflowing on raw values above 65504: NaN outputs
            raise ValueError("y_score has 3 rows with NaN or infinite values")
        return real(path, split, name=name, **kw)

    monkeypatch.setattr(_step, "measure", flaky)
    result = compress_variants(mlp, data.train, data.valid, data.test, tmp_path / "w", ["fp16", "dynamic_int8"],
                               repeats=1, warmup=0, max_accuracy_drop=1.0, prefer="gzip")
    table = result.table.set_index("variant")
    assert table.loc["fp16", "error"] == "measuring failed: ValueError: y_score has 3 rows with NaN or infinite values"
    assert not table.loc["fp16", "within_budget"] and table.loc["dynamic_int8", "error"] == ""
    assert result.best == "dynamic_int8"  # the only variant measured; int8 weights gzip smaller than float32
    assert set(result.measurements) == {REFERENCE_VARIANT, "dynamic_int8"}
    # The reference is timed before and after the variants; the faster p50 per batch size is kept.
    assert calls == [REFERENCE_VARIANT, "fp16", "dynamic_int8", REFERENCE_VARIANT]


def test_a_small_cnn_on_fashion_mnist(tmp_path: Path) -> None:
    from modelyard.data import ImageSplit, load
    from modelyard.models import ImageNetConfig
    from modelyard.train import fit_image

    data = load("fashion_mnist", valid=0.1, seed=0)
    train = ImageSplit(data.train.x[:1500], data.train.y[:1500])
    valid = ImageSplit(data.valid.x[:300], data.valid.y[:300])
    test = ImageSplit(data.test.x[:300], data.test.y[:300])
    cnn = fit_image(train, valid, ImageNetConfig(channels=(4, 8), hidden_sizes=(16,), max_epochs=1),
                    classes=data.classes)
    result = compress_variants(cnn, train, valid, test, tmp_path, ["static_int8", "structured:0.5"],
                               repeats=3, warmup=1, calibration_rows=64)
    table = result.table.set_index("variant")
    assert (table["error"] == "").all(), table["error"]
    m = measure(result.paths["static_int8"], test, repeats=2, warmup=0)
    assert m.size_bytes == table.loc["static_int8", "size_bytes"]
    assert m.overall["accuracy"] == table.loc["static_int8", "accuracy"]
    assert set(m.by_slice["class"]) <= set(data.classes)
    assert table.loc["structured:0.5", "size_bytes"] < table.loc[REFERENCE_VARIANT, "size_bytes"]


@pytest.mark.parametrize(("variants", "message"), [
    (["bogus"], r"compress\.variants\[0\]: unknown variant part 'bogus'.*known: dynamic_int8"),
    ([{"quantize": "int4"}], r"compress\.variants\[0\]\.quantize: unknown quantizer 'int4'; known: dynamic_int8"),
    ([{"prune": {"sparsity": 1.5}}], r"compress\.variants\[0\]\.prune\.sparsity: .*less than 1"),
    ([{"prune": {"sparsity": 0}}], r"compress\.variants\[0\]\.prune\.sparsity: .*greater than 0"),
    (["magnitude:1.0"], r"compress\.variants\[0\]: the sparsity of 'magnitude' must be a number in \(0, 1\)"),
    ([{"prune": {"sparsity": 0.5, "method": "random"}}], r"unknown pruning method 'random'; known: magnitude, obd"),
    ([{"structured": {"fraction": 0.5, "flops": 0.5}}], r"give exactly one of fraction"),
    ([{}], r"needs at least one of prune, structured or quantize"),
    (["dynamic_int8", {"quantize": "dynamic_int8"}], r"two variants are named 'dynamic_int8'"),
    (["dynamic_int8+fp16"], r"names two quantizers"),
    ("dynamic_int8", r"must be a list of variants"),
])
def test_bad_variants_are_clear_spec_errors(variants: object, message: str) -> None:
    spec = {"name": "x", "data": {"source": "adult"}, "compress": {"variants": variants}}
    with pytest.raises(SpecError, match=message):
        parse_spec(spec)


def test_bad_model_and_budget_are_spec_errors() -> None:
    base = {"name": "x", "data": {"source": "adult"}}
    with pytest.raises(SpecError, match=r"compress\.model: no model 'nope'.*\['mlp', 'gbm'\]"):
        parse_spec({**base, "compress": {"model": "nope"}})
    with pytest.raises(SpecError, match=r"compress\.max_accuracy_drop"):
        parse_spec({**base, "compress": {"max_accuracy_drop": -0.1}})
    with pytest.raises(SpecError, match=r"compress\.prefer"):
        parse_spec({**base, "compress": {"prefer": "speed"}})


def test_registry_resolves_the_names() -> None:
    assert QUANTIZERS.get("dynamic_int8").mode == "dynamic"
    assert QUANTIZERS.get("static_int8").mode == "static" and QUANTIZERS.get("fp16").mode == "fp16"
    assert not PRUNERS.get("magnitude").structured and PRUNERS.get("structured_l1").structured
    assert parse_variant("prune:0.9+static_int8") == {"name": "prune:0.9+static_int8", "quantize": "static_int8",
                                                      "prune": {"method": "magnitude", "sparsity": 0.9}}
    assert parse_variant("structured:0.25") == {"name": "structured:0.25",
                                                "structured": {"criterion": "l2", "fraction": 0.25}}
    with pytest.raises(ValueError, match="needs an amount"):
        parse_variant("magnitude")
    with pytest.raises(ValueError, match="takes no amount"):
        parse_variant("fp16:0.5")
    (v,) = make_variants([{"prune": {"method": "prune", "sparsity": 0.9}}])
    assert v.name == "magnitude:0.9" and [type(p).__name__ for p in v.pruners()] == ["MagnitudePruner"]
    with pytest.raises(ValueError, match=r"sparsity must be a number in \(0, 1\)"):
        PRUNERS.get("magnitude")(1.0)


def test_model_card_names_the_served_variant_with_its_measured_figures(run: pipeline.RunResult) -> None:
    from modelyard.report._html import fmt_bytes

    card = (run.root / "model_card.md").read_text()
    found = json.loads((run.root / "compress" / "compress.json").read_text())
    section = card[card.index("### Compression"):]
    section = section[:re.search(r"\n##+ ", section).start()]  # up to the next heading
    rows = {r["variant"]: r for r in found["table"]}
    best, reference = rows[found["best"]], rows[REFERENCE_VARIANT]
    names = [r["variant"].replace("_", "\\_") for r in found["table"]]  # Markdown-escaped as the card writes them
    assert all(f"| {n}" in section for n in names)
    assert f"| {names[list(rows).index(found['best'])]} (served) |" in section
    if found["best"] != REFERENCE_VARIANT:  # the card's sentence carries the table's sizes, not recomputed ones
        assert f"{fmt_bytes(best['size_bytes'])} against {fmt_bytes(reference['size_bytes'])}" in section
    else:
        assert "The uncompressed model is served." in section
    assert card.index("### Compression") < card.index("## Ethical considerations")

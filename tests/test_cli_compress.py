"""``modelyard compress``: the comparison table, the files it writes, and its exit codes on bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelyard.cli import main
from modelyard.compress import measure
from modelyard.data import from_csv
from modelyard.models import MLPConfig, save_torch
from modelyard.train import fit_mlp

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from threadpoolctl import threadpool_limits

    monkeypatch.setenv("COLUMNS", "200")  # rich wraps tables at 80 columns without a tty
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


def _csv(path: Path, n: int = 800, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n).astype(float)
    hours = rng.normal(40, 10, n)
    sex = rng.choice(["F", "M"], n)
    logit = 0.08 * (age - 45) + 0.1 * (hours - 40) + np.where(sex == "F", 0.5, -0.5)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    pd.DataFrame({"age": age, "hours": hours, "sex": sex, "label": np.where(y == 1, "yes", "no")}).to_csv(path,
                                                                                                        index=False)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("cli-compress")
    csv = _csv(work / "data.csv")
    data = from_csv(csv, target="label", sensitive=["sex"], valid=0.1, test=0.2, seed=0)
    mlp = fit_mlp(data.train, data.valid, MLPConfig(max_epochs=2, hidden_sizes=(16,)))
    model = save_torch(mlp, work / "model.safetensors")
    # A run folder as the pipeline leaves it: the evaluate step's choice and the trained model.
    run = work / "runs" / "20260101-000000-abcdef"
    (run / "evaluate").mkdir(parents=True)
    (run / "evaluate" / "evaluation.json").write_text(json.dumps({"chosen": {"model": "mlp"}}))
    (run / "train" / "mlp").mkdir(parents=True)
    save_torch(mlp, run / "train" / "mlp" / "model.safetensors")
    return {"work": work, "csv": csv, "model": model, "run": run}


def test_compress_prints_the_table_and_writes_what_it_measured(files: dict[str, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["compress", str(files["model"]), "--data", str(files["csv"]), "--target", "label",
                 "--variants", "magnitude:0.7,dynamic_int8", "-v", "structured:0.5+fp16", "--slice", "sex",
                 "--repeats", "3", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "Variants measured on ONNX Runtime" in printed and "best: " in printed
    for name in ("uncompressed", "magnitude:0.7", "dynamic_int8", "structured:0.5+fp16"):
        assert name in printed
    assert printed.strip().splitlines()[-1] == str(out.resolve())
    table = pd.read_csv(out / "compress.csv").set_index("variant")
    found = json.loads((out / "compress.json").read_text())
    assert list(table.index) == ["uncompressed", "magnitude:0.7", "dynamic_int8", "structured:0.5+fp16"]
    assert (out / "size_accuracy.png").is_file() and (out / "latency_accuracy.png").is_file()
    # The CLI splits the file as from_csv does with the same seed: measure the test rows independently.
    test = from_csv(files["csv"], target="label", valid=0.1, test=0.2, seed=0).test
    for name in table.index:
        path = out / "variants" / found["variants"][name]["file"]
        assert path.stat().st_size == table.loc[name, "size_bytes"]  # sizes: exact
        m = measure(path, test, slices=["sex"], repeats=1, warmup=0)
        assert m.overall["accuracy"] == table.loc[name, "accuracy"]  # same rows, same file: exact
    assert (out / "best.onnx").read_bytes() == (out / "variants" / found["variants"][found["best"]]["file"]).read_bytes()
    assert set(pd.read_csv(out / "slices.csv")["group"]) == {"F", "M"}


def test_a_run_folder_gives_its_chosen_torch_model(files: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["compress", str(files["run"]), "--data", str(files["csv"]), "--variants", "magnitude:0.5",
                 "--repeats", "2", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    found = json.loads((out / "compress.json").read_text())
    assert found["model"].endswith("train/mlp/model.safetensors")  # the torch weights, so pruning applies
    row = next(r for r in found["table"] if r["variant"] == "magnitude:0.5")
    assert row["error"] == "" and row["weight_sparsity"] == pytest.approx(0.5, abs=0.01)  # one weight of ~400


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--variants", "int4"], 2, ("unknown variant part 'int4' in 'int4'; known: dynamic_int8, "
                                 "dynamic_int8_per_channel, fp16, magnitude, obd, prune, static_int8")),
    (["--variants", "magnitude:0"], 2, "the sparsity of 'magnitude' must be a number in (0, 1); got 0.0"),
    (["--variants", "magnitude:1"], 2, "the sparsity of 'magnitude' must be a number in (0, 1); got 1.0"),
    (["--variants", "prune:1.5"], 2, "the sparsity of 'prune' must be a number in (0, 1); got 1.5"),
    (["--variants", "magnitude:lots"], 2, "the amount of 'magnitude' must be a number in (0, 1); got 'lots'"),
    (["--variants", "magnitude"], 2, "pruner 'magnitude' needs an amount in (0, 1), e.g. magnitude:0.5"),
    (["--variants", "fp16,fp16"], 2, "two variants are named 'fp16'"),
    (["--prefer", "speed"], 2, "--prefer must be one of size, gzip, latency; got 'speed'"),
    (["--max-accuracy-drop", "-0.1"], 2, "--max-accuracy-drop must be >= 0"),
    (["--variants", "missing.yaml"], 2, "--variants: file 'missing.yaml' does not exist"),
])
def test_bad_input_exits_non_zero_with_a_clear_message(files: dict[str, Path], tmp_path: Path, args: list[str],
                                                       code: int, message: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    got = main(["compress", str(files["model"]), "--data", str(files["csv"]), "--out", str(out), *args])
    err = capsys.readouterr().err
    assert got == code
    assert message in err and err.startswith("error: ")
    assert not out.exists()  # nothing written on bad input


def test_a_missing_model_or_data_exits_1(files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # no .modelyard/metadata.db here
    assert main(["compress", "no-such-run", "--data", str(files["csv"])]) == 1
    assert "Model 'no-such-run' not found" in capsys.readouterr().err
    assert main(["compress", str(tmp_path / "missing.onnx"), "--data", str(files["csv"])]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["compress", str(files["model"]), "--data", "no_such_set"]) == 1
    assert "neither an existing file nor a built-in data set" in capsys.readouterr().err
    store = f"sqlite:///{tmp_path / 'meta.db'}"
    assert main(["compress", "20990101", "--data", str(files["csv"]), "--store", store]) == 1
    assert "is neither a model file, a run folder nor a run id" in capsys.readouterr().err


def test_a_small_cnn_on_fashion_mnist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from modelyard.data import ImageSplit, load
    from modelyard.models import ImageNetConfig
    from modelyard.train import fit_image

    data = load("fashion_mnist", valid=0.1, seed=0)
    cnn = fit_image(ImageSplit(data.train.x[:1000], data.train.y[:1000]),
                    ImageSplit(data.valid.x[:200], data.valid.y[:200]),
                    ImageNetConfig(channels=(4, 8), hidden_sizes=(16,), max_epochs=1), classes=data.classes)
    model = save_torch(cnn, tmp_path / "cnn.safetensors")
    out = tmp_path / "out"
    code = main(["compress", str(model), "--data", "fashion_mnist", "--valid", "0.02", "--rows", "200", "--repeats", "2",
                 "--variants", str(EXAMPLES / "compress_fashion_mnist.yaml"), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    table = pd.read_csv(out / "compress.csv").set_index("variant")
    assert list(table.index) == ["uncompressed", "static_int8", "static_int8_per_channel", "dynamic_int8", "fp16",
                                 "structured_l2:0.5", "structured-int8", "magnitude:0.7"]
    assert table["error"].isna().all() and table.loc["uncompressed", "count"] == 200
    assert table.loc["structured_l2:0.5", "size_bytes"] < table.loc["uncompressed", "size_bytes"]
    assert table.loc["static_int8", "size_bytes"] < table.loc["uncompressed", "size_bytes"]  # int8 weights
    assert "class" in set(pd.read_csv(out / "slices.csv")["slice"])



def test_a_variants_file_is_validated_like_a_spec(files: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "v.yaml"
    bad.write_text("variants:\n  - dynamic_int8\n  - {prune: {sparsity: 1.2}}\n")
    out = tmp_path / "out"
    assert main(["compress", str(files["model"]), "--data", str(files["csv"]), "--variants", str(bad),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"Invalid variants file '{bad}': variants[1].prune.sparsity: Input should be less than 1 (got 1.2)" in err
    assert not out.exists()


def test_the_examples_validate() -> None:
    from modelyard.pipeline import load_spec

    spec = load_spec(EXAMPLES / "compress_adult.yaml")
    assert spec.compress is not None and len(spec.compress.variants or []) == 7
    from modelyard.cli import _variants_file

    assert len(_variants_file(EXAMPLES / "compress_fashion_mnist.yaml")) == 7

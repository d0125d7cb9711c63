"""The ``modelyard`` command line: a thin layer over the Python API.

Every command explains itself with ``--help``. On failure the error is printed as one
line and the exit code is non-zero (2 for a bad spec or bad usage, 1 otherwise); a
traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from modelyard import __version__
from modelyard.errors import ModelyardError, SpecError

app = typer.Typer(
    name="modelyard",
    help="Take a model from first fit to production-ready in one pipeline: search, train, shrink, analyze, "
    "explain, gate. Every run's artifacts, metrics and lineage are recorded.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
runs_app = typer.Typer(help="List and inspect recorded runs.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")

_state: dict[str, Any] = {"debug": False}

StoreOption = Annotated[
    Optional[str],
    typer.Option("--store", envvar="MODELYARD_STORE", show_envvar=True,
                 help="Metadata store URL (sqlite:///path.db or postgresql://user@host/db). "
                 "Default: sqlite:///.modelyard/metadata.db"),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"modelyard {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback when something fails.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    _state["debug"] = debug
    if not debug:
        # ONNX Runtime's C++ logger prints graph-optimizer notes ("Removing initializer ...")
        # on stderr while quantizing; they are not problems. --debug keeps them.
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


@app.command("run")
def run_cmd(
    spec: Annotated[Path, typer.Argument(help="Pipeline spec (YAML), e.g. examples/adult.yaml.")],
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where run folders are written.")] = Path("runs"),
    store: StoreOption = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Run every step even if a cached result exists.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or step lines.")] = False,
) -> None:
    """Run the whole pipeline a spec describes.

    The spec is validated before anything runs. Each step's result is cached by its
    name, code version, config and input digests: re-running an unchanged spec reuses
    every step, and changing one step's config re-runs it and the steps after it. A run
    that was killed is marked aborted on the next start, which resumes from the last
    finished step. Output goes to RUNS_DIR/<run-id>/ (report.html, metrics.json,
    model.onnx, model_card.md, one folder per step).
    """
    from modelyard import pipeline

    result = pipeline.run(spec, runs_dir=runs_dir, store=store, use_cache=not no_cache, quiet=quiet)
    typer.echo(str(result.root))


@app.command("search")
def search_cmd(
    spec: Annotated[Path, typer.Argument(help="Pipeline spec (YAML) with a `search:` section.")],
    workers: Annotated[Optional[int], typer.Option("--workers", "-w", min=1,
                                                   help="Local worker processes sharing the study.")] = None,
    storage: Annotated[Optional[str], typer.Option("--storage", help="Optuna storage URL shared by workers on "
                                                   "many machines, e.g. postgresql://user@host/db.")] = None,
    trials: Annotated[Optional[int], typer.Option("--trials", "-n", min=1,
                                                  help="Finished trials the study should hold.")] = None,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where run folders are written.")] = Path("runs"),
    store: StoreOption = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Search again even if a cached result exists.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or step lines.")] = False,
) -> None:
    """Run a spec's hyperparameter search (the data and search steps only).

    Writes RUNS_DIR/<run-id>/search/: trials.csv (every trial: parameters, values,
    duration, state), leaderboard.csv, search.json (best parameters and value, or the
    Pareto front for several objectives) and, for one objective, the best model refitted.
    With --storage, workers on other machines can join the same study by running the same
    command; a re-run resumes the study and runs only the missing trials.
    """
    from modelyard import pipeline

    overrides = {f"search.{k}": v for k, v in {"workers": workers, "storage": storage, "trials": trials}.items()
                 if v is not None}
    result = pipeline.run(spec, runs_dir=runs_dir, store=store, use_cache=not no_cache, quiet=quiet,
                          until="search", overrides=overrides)
    board = result.root / "search" / "leaderboard.csv"
    if not quiet and board.is_file():
        import pandas as pd
        from rich.table import Table

        frame = pd.read_csv(board).head(10)
        frame.columns = [str(c).removeprefix("params_") for c in frame.columns]
        table = Table(title="Leaderboard (top 10)", title_justify="left")
        for col in frame.columns:
            table.add_column(str(col), overflow="fold")
        for row in frame.itertuples(index=False):
            table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
        _console().print(table)
    typer.echo(str(result.root))


def _is_data_file(data: str) -> bool:
    """Whether a DATA argument names a file (by suffix, a path separator, or an existing file)."""
    suffixes = (".csv", ".tsv", ".gz", ".bz2", ".xz", ".parquet", ".pq")
    return data.lower().endswith(suffixes) or "/" in data or Path(data).is_file()


def _tabular_data(data: str, target: str | None, *, valid: float, test: float | None, seed: int,
                  target_words: str, image_error: str, drop: Sequence[str] = ()) -> tuple[Any, bool]:
    """``(splits, is_file)`` of a CSV/Parquet file or a tabular built-in data set, for a command on tables.

    ``target_words`` finishes the "--target is required" message; ``image_error`` follows
    "<name> is an image data set; " when DATA is an image set.
    """
    from modelyard import data as mydata
    from modelyard.errors import DataError

    if _is_data_file(data):
        if not target:
            raise SpecError(f"--target is required for a file ({data}); name {target_words}.")
        reader = mydata.from_parquet if data.lower().endswith((".parquet", ".pq")) else mydata.from_csv
        return reader(data, target=target, drop=tuple(drop), valid=valid, test=0.2 if test is None else test,
                      seed=seed), True
    if data not in mydata.DATASETS:
        raise DataError(f"{data!r} is neither an existing file nor a built-in data set; built-ins: "
                        f"{mydata.DATASETS.names()}.")
    dataset = mydata.load(data, valid=valid, test=test, seed=seed)
    if not isinstance(dataset, mydata.TabularData):
        raise DataError(f"{data!r} is an image data set; {image_error}")
    if target and target != dataset.schema.target:
        raise DataError(f"Built-in data set {data!r} has target {dataset.schema.target!r}, not {target!r}; "
                        "drop --target.")
    return dataset, False


@app.command("automl")
def automl_cmd(
    data: Annotated[str, typer.Argument(help="A CSV or Parquet file, or a built-in tabular data set (adult, compas).")],
    target: Annotated[Optional[str], typer.Option("--target", "-t", help="Target column (required for a file).")] = None,
    time_budget: Annotated[float, typer.Option("--time-budget", help="Seconds shared by the families' searches.")] = 60.0,
    families: Annotated[str, typer.Option("--families", help="Comma-separated families to tune: linear, gbm, mlp.")]
    = "linear,gbm,mlp",
    ensemble: Annotated[str, typer.Option("--ensemble", help="weighted (Caruana ensemble selection), stacked "
                                          "(linear meta-model) or none.")] = "weighted",
    metric: Annotated[Optional[str], typer.Option("--metric", help="Validation metric to rank and ensemble by; "
                                                  "default log_loss (classifiers) or rmse.")] = None,
    strategy: Annotated[str, typer.Option("--strategy", help="Search strategy of every family.")] = "auto",
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for leaderboard.csv, automl.json and the "
                                      "ONNX models.")] = Path("automl"),
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seeds the split, the samplers and the models.")] = 0,
    test: Annotated[Optional[float], typer.Option("--test", help="Test fraction; default 0.2 for a file, the "
                                                  "official test file for a built-in set that has one.")] = None,
    valid: Annotated[float, typer.Option("--valid", help="Validation fraction (ranks and ensembles models).")] = 0.1,
    drop: Annotated[Optional[list[str]], typer.Option("--drop", help="A column never used as a feature "
                                                      "(repeat for several).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or table.")] = False,
) -> None:
    """Tune linear, gradient-boosting and MLP models within a time budget, ensemble the best, print a leaderboard.

    Every family is searched in turn within its share of --time-budget (linear 1, gbm 2,
    mlp 2; unused time rolls over). The best few models of each family are combined:
    weighted (Caruana ensemble selection on the validation split), stacked (a logistic /
    linear meta-model, cross-fitted on the validation split) or none. Trials are ranked
    on the validation split; the test split is scored once at the end.

    Writes to OUT: leaderboard.csv (every finished trial and the ensemble), automl.json
    (budget, families, best model, ensemble members and weights, test figures),
    best_model.onnx and ensemble.onnx (one ONNX graph holding every member), each
    parity-checked against the in-memory model. Nothing is written on bad input.
    """
    from modelyard.errors import DataError
    from modelyard.search._automl import automl, check_automl_args

    names = [f.strip() for f in families.split(",") if f.strip()]
    check_automl_args(names, time_budget, ensemble, strategy)
    if not 0 < valid < 1:
        raise SpecError(f"--valid must be a fraction between 0 and 1; got {valid!r}.")
    dataset, is_file = _tabular_data(
        data, target, valid=valid, test=test, seed=seed, drop=drop or (), target_words="the column to predict",
        image_error="automl tunes tabular models. Give a CSV, Parquet or tabular built-in data set.")
    if drop and not is_file:  # a file's reader dropped them already
        import dataclasses

        missing = [c for c in drop if c not in dataset.schema.feature_names]
        if missing:
            raise DataError(f"--drop names unknown feature columns {missing}; features are "
                            f"{dataset.schema.feature_names}.")
        features = tuple(c for c in dataset.schema.features if c.name not in drop)
        dataset.schema = dataclasses.replace(dataset.schema, features=features)
        for split in dataset.splits.values():
            split.schema = dataset.schema
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = _console()
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                        TimeElapsedColumn(), console=Console(stderr=True, highlight=False), transient=True,
                        disable=quiet)
    with progress:
        task = progress.add_task(f"automl · {', '.join(names)}", total=time_budget, info="")

        def on_event(event: dict[str, Any]) -> None:
            best = event.get("best")
            info = f"{event['family']}" + (f" · best {best:.4f}" if isinstance(best, float) else "")
            progress.update(task, completed=min(event["elapsed"], time_budget), info=info)

        result = automl(dataset, families=names, time_budget=time_budget, strategy=strategy, metric=metric,
                        ensemble=ensemble, seed=seed, progress=on_event)  # type: ignore[arg-type]
        progress.update(task, completed=time_budget, info="exporting to ONNX")
        files = result.save(out)
    if not quiet:
        import pandas as pd
        from rich.table import Table

        board = result.leaderboard.head(10)
        wide = console.width >= 110
        table = Table(title=f"Leaderboard (top {len(board)} of {len(result.leaderboard)})", title_justify="left")
        columns = ["rank", "model", f"valid_{result.metric}", f"test_{result.metric}", "fit_seconds"]
        for col in columns:
            table.add_column(col.replace("_", " "), justify="left" if col == "model" else "right", no_wrap=True)
        if wide:
            table.add_column("params", overflow="ellipsis", no_wrap=True, max_width=console.width - 70)
        for row in board.to_dict(orient="records"):
            cells = [f"{row[c]:.4f}" if isinstance(row[c], float) and not pd.isna(row[c])
                     else ("–" if pd.isna(row[c]) else str(row[c])) for c in columns]
            if columns[-1] == "fit_seconds" and not pd.isna(row["fit_seconds"]):
                cells[-1] = f"{row['fit_seconds']:.2f}"
            table.add_row(*cells, *([str(row["params"])] if wide else []))
        console.print(table)
        s = result.summary
        best = s["best"]
        line = f"best single model {best['model']}: valid {result.metric} {best['valid']:.4f}"
        if best.get("test") is not None:
            line += f", test {best['test']:.4f}"
        console.print(line)
        if s.get("ensemble"):
            e = s["ensemble"]
            line = f"ensemble ({e['method']}, {len(e['members'])} members): valid {result.metric} {e['valid']:.4f}"
            if e.get("test") is not None:
                line += f", test {e['test']:.4f}"
            console.print(line)
    typer.echo(str(files["automl.json"].parent.resolve()))


@app.command("nas")
def nas_cmd(
    data: Annotated[str, typer.Argument(help="A built-in image data set (fashion_mnist).")] = "fashion_mnist",
    strategy: Annotated[str, typer.Option("--strategy", "-s", help="pnas, morphism, rl, evolution, random or "
                                          "another registered search strategy.")] = "pnas",
    models: Annotated[int, typer.Option("--models", "-n", min=1, help="Budget: networks trained.")] = 30,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Training epochs per network.")] = 1,
    blocks: Annotated[int, typer.Option("--blocks", min=1, max=5, help="Blocks per cell (PNAS: the most).")] = 3,
    channels: Annotated[int, typer.Option("--channels", min=1, help="Channels of the first stack.")] = 8,
    train_size: Annotated[int, typer.Option("--train-size", min=1, help="Training images (seeded subset).")] = 3000,
    valid_size: Annotated[int, typer.Option("--valid-size", min=1, help="Validation images (seeded subset).")]
    = 1000,
    beam: Annotated[int, typer.Option("--beam", min=1, help="PNAS: cells trained per round (K).")] = 8,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seeds the subsets, the networks and the strategy.")]
    = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for nas.json, leaderboard.csv and history.png.")]
    = Path("nas"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or table.")] = False,
) -> None:
    """Search CNN cell architectures on an image data set with a fixed budget of trained models.

    Strategies: pnas (progressive NAS: cells grow one block at a time, a learned
    surrogate keeps the top --beam), morphism (function-preserving widen/deepen/skip
    transforms, children inherit their parent's weights), rl (REINFORCE controller),
    evolution (regularized aging evolution), random, and the other registered search
    strategies. Every network is trained --epochs on a seeded subset and scored on the
    validation subset; the test split is not used.

    Writes to OUT: nas.json (settings, the best cell, every model), leaderboard.csv and
    history.png (accuracy by models trained).
    """
    from modelyard import data as mydata
    from modelyard.errors import DataError
    from modelyard.search._nas import UNKNOWN_NAS_STRATEGY, _known_strategies, nas

    known = _known_strategies()
    if strategy not in known:
        raise SpecError(UNKNOWN_NAS_STRATEGY.format(name=strategy, known=known))
    if data not in mydata.DATASETS:
        raise DataError(f"{data!r} is not a built-in data set; built-ins: {mydata.DATASETS.names()}.")
    dataset = mydata.load(data)
    if not isinstance(dataset, mydata.ImageData):
        raise DataError(f"{data!r} is a tabular data set; nas searches CNNs for image data (fashion_mnist). "
                        "For tabular data use `modelyard search` or `modelyard automl`.")
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = _console()
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                        console=Console(stderr=True, highlight=False), transient=True, disable=quiet)
    best = [0.0]
    with progress:
        task = progress.add_task(f"nas · {strategy}", total=models, info="")

        def on_record(rec: Any) -> None:
            best[0] = max(best[0], rec.accuracy)
            progress.update(task, completed=min(rec.index, models), info=f"best {best[0]:.4f}")

        result = nas(dataset, strategy, models=models, epochs=epochs, n_blocks=blocks, channels=channels,
                     train_size=train_size, valid_size=valid_size, beam=beam, seed=seed, callback=on_record)
        files = result.save(out)
    if not quiet:
        from rich.table import Table

        board = result.to_dataframe().sort_values(["accuracy", "index"], ascending=[False, True]).head(10)
        table = Table(title=f"NAS leaderboard ({strategy}, top {len(board)} of {len(result.records)})",
                      title_justify="left")
        for col in ("index", "accuracy", "params", "MFLOPs", "seconds", "description"):
            table.add_column(col, justify="left" if col == "description" else "right",
                             overflow="fold" if col == "description" else "ellipsis")
        for row in board.to_dict(orient="records"):
            table.add_row(str(row["index"]), f"{row['accuracy']:.4f}", f"{row['params']:,}",
                          f"{row['flops'] / 1e6:.2f}", f"{row['seconds']:.1f}", str(row["description"]))
        console.print(table)
    typer.echo(str(files["nas.json"].parent.resolve()))


def _load_model_ref(ref: str, store: str | None, what: str) -> tuple[Any, Path]:
    """A predictor from a model file, a run folder, or a run id (prefix) in the metadata store."""
    from modelyard.errors import DataError
    from modelyard.evaluate._gate import resolve_model_file
    from modelyard.pipeline._image import load_image_model

    p = Path(ref).expanduser()
    default_db = Path(".modelyard/metadata.db")
    if not p.exists() and "/" not in ref and not ref.endswith((".onnx", ".safetensors")) and (
            store is not None or default_db.is_file()):  # a run id; never create a store just to look
        from modelyard.errors import StoreError
        from modelyard.pipeline import MetadataStore

        try:
            with MetadataStore(store) as meta:
                p = Path(meta.get_run(ref).root)
        except StoreError as exc:
            raise DataError(f"{what} {ref!r} is neither a model file, a run folder nor a run id ({exc})") from None
    path = resolve_model_file(p)
    return load_image_model(path), path  # any model file, the nas step's network included


@app.command("evaluate")
def evaluate_cmd(
    model: Annotated[str, typer.Argument(help="The candidate: a .onnx or .safetensors file, a run folder "
                                         "(runs/<run-id>) or a run id.")],
    data: Annotated[Path, typer.Option("--data", "-d", help="CSV or Parquet rows with the features, the target "
                                       "and the slice columns.")],
    target: Annotated[Optional[str], typer.Option("--target", "-t", help="Target column; default: the model's.")]
    = None,
    slices: Annotated[Optional[list[str]], typer.Option("--slice", "-s", help="A column to slice by (repeat for "
                                                        "several; 'sex,race' crosses columns).")] = None,
    baseline: Annotated[Optional[str], typer.Option("--baseline", "-b", help="The model to compare with (e.g. "
                                                    "production): a file, a run folder or a run id.")] = None,
    gate: Annotated[Optional[Path], typer.Option("--gate", "-g", help="Gate file (YAML): thresholds and changes "
                                                 "against the baseline, per slice; see examples/gate.yaml.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for slices.json and blessing.json.")]
    = Path("evaluation"),
    metric: Annotated[Optional[list[str]], typer.Option("--metric", "-m", help="A metric to show (repeat); "
                                                        "default: the task's defaults.")] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=0, help="Poisson-bootstrap replicates for "
                                           "intervals (0: none).")] = 0,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the bootstrap.")] = 0,
    store: StoreOption = None,
) -> None:
    """Score a model overall and per slice, compare it with a baseline, and judge it against a gate.

    Prints the slice table and, with --gate, every check (metric, slice, value, baseline
    value, threshold, pass/fail and why). Writes OUT/slices.json and, with --gate,
    OUT/blessing.json (whether blessed or not). Exits 1 when the gate fails (for CI),
    2 on a bad gate file.
    """
    import math

    from rich.table import Table
    from rich.text import Text

    from modelyard.data import read_table
    from modelyard.evaluate import gate_predictors, load_gate
    from modelyard.pipeline._artifacts import ArtifactStore, sha256_file

    config = load_gate(gate) if gate is not None else None
    candidate, cand_path = _load_model_ref(model, store, "MODEL")
    base_ref = baseline or (config.baseline if config is not None else None)
    base, base_path = _load_model_ref(base_ref, store, "Baseline") if base_ref else (None, None)
    frame = read_table(data)
    specs: list[Any] = [tuple(s.split(",")) if "," in s else s for s in (slices or [])]
    result = gate_predictors(candidate, frame, config, baseline=base, target=target, slices=specs, metrics=metric,
                             bootstrap=bootstrap, seed=seed)
    info = {"candidate": {"path": str(cand_path), "sha256": sha256_file(cand_path)},
            "baseline": None if base_path is None else {"path": str(base_path), "sha256": sha256_file(base_path)},
            "data": {"path": str(data), "sha256": sha256_file(data), "rows": len(frame)}}
    files = ArtifactStore(out)
    files.write_json("slices.json", {**info, "candidate_metrics": result.candidate.to_dict(),
                                     "baseline_metrics": None if result.baseline is None
                                     else result.baseline.to_dict()})
    if config is not None:
        result.write_blessing(out / "blessing.json", **info)

    def fmt(v: Any) -> str:
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

    console = _console()
    rep, ref = result.candidate, result.baseline
    shown = [m for m in rep.metrics if m != "count"]
    table = Table(title=Text(f"{cand_path.name} on {data.name} ({rep.n_rows:,} rows)"
                             + (f" vs baseline {base_path.name}" if base_path else "")), title_justify="left")
    for col in ("slice", "group", "count", *shown):
        table.add_column(col, justify="left" if col in ("slice", "group") else "right", overflow="fold")
    rows = [("overall", None, rep.overall)] + [(s, g, v) for s in rep.slices for g, v in rep.by_slice[s].items()]
    for s, g, values in rows:
        cells = []
        for m in shown:
            text = fmt(values[m])
            if rep.intervals is not None:
                lo, hi = rep.interval(m, None if g is None else s, g)
                text += f" [{fmt(lo)}, {fmt(hi)}]"
            if ref is not None:
                b = ref.overall[m] if g is None else ref.by_slice[s][g][m]
                if not (math.isnan(values[m]) or math.isnan(b)):
                    text += f" ({values[m] - b:+.4f})"
            cells.append(text)
        small = g is not None and g in rep.small.get(s, [])
        table.add_row(Text(s), Text("" if g is None else str(g)),
                      f"{int(values['count']):,}" + (" *" if small else ""), *map(Text, cells))
    console.print(table)
    notes = []
    if any(rep.small.values()):
        notes.append(f"* fewer than {rep.min_count} rows: values unreliable")
    if ref is not None:
        notes.append("(±x): change against the baseline")
    if notes:
        console.print("; ".join(notes))
    if config is None:
        typer.echo(str(out.resolve()))
        return
    fair = result.fairness.get("candidate")
    if fair is not None:  # the rates behind the gate's fairness checks
        from modelyard.evaluate import INDICATORS

        rates = Table(title="Fairness indicators (candidate)", title_justify="left")
        for col in ("feature", "group", "threshold", "count", *INDICATORS):
            rates.add_column(col, justify="left" if col in ("feature", "group") else "right", overflow="fold")
        for feature in fair.features:
            for t in fair.thresholds:
                for g, v in fair.groups[feature][t].items():
                    ci = fair.intervals[feature][t][g] if fair.intervals is not None else None
                    cells = [fmt(v[m]) + (f" [{fmt(ci[m][0])}, {fmt(ci[m][1])}]" if ci else "") for m in INDICATORS]
                    rates.add_row(Text(feature), Text(str(g)), f"{t:g}", f"{int(v['count']):,}", *map(Text, cells))
        console.print(rates)
    checks = Table(title=Text(f"Gate {gate} ({result.counts['checks']} checks)"), title_justify="left")
    for col in ("status", "metric", "slice", "group", "value", "baseline", "threshold", "reason"):
        checks.add_column(col, overflow="fold", justify="right" if col in ("value", "baseline") else "left")
    colors = {"pass": "green", "fail": "red", "skipped": "yellow"}
    for c in result.checks:
        checks.add_row(Text(c.status.upper(), style=colors[c.status]), Text(c.metric), Text(c.slice),
                       Text("" if c.group is None else str(c.group)), fmt(c.value), fmt(c.baseline),
                       Text(c.threshold), Text("" if c.status == "pass" else c.reason))
    console.print(checks)
    console.print(Text(result.summary(), style="bold green" if result.blessed else "bold red"))
    typer.echo(str((out / "blessing.json").resolve()))
    if not result.blessed:
        raise typer.Exit(1)


@runs_app.command("list")
def runs_list(
    store: StoreOption = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many runs to show, newest first.")] = 20,
    pipeline_name: Annotated[Optional[str], typer.Option("--pipeline", help="Only runs of this pipeline.")] = None,
) -> None:
    """List recorded runs, newest first, with their status and how many steps were cached."""
    from rich.table import Table

    from modelyard.pipeline import MetadataStore

    with MetadataStore(store) as meta:
        runs = meta.list_runs(limit=limit, pipeline=pipeline_name)
        table = Table(title=f"Runs in {meta.describe()}", title_justify="left")
        for col in ("run", "pipeline", "status", "started (UTC)", "seconds", "steps"):
            table.add_column(col, justify="right" if col == "seconds" else "left", no_wrap=col == "run")
        for r in runs:
            execs = meta.executions(r.id)
            ran = sum(e.status == "complete" for e in execs)
            cached = sum(e.status == "cached" for e in execs)
            secs = f"{(r.finished_at - r.started_at).total_seconds():.1f}" if r.finished_at else "–"
            color = {"succeeded": "green", "failed": "red", "aborted": "yellow"}.get(r.status, "cyan")
            table.add_row(r.id, r.pipeline, f"[{color}]{r.status}[/{color}]", f"{r.started_at:%Y-%m-%d %H:%M:%S}",
                          secs, f"{ran} ran, {cached} cached")
    console = _console()
    if not runs:
        console.print("No runs recorded yet. Start one with `modelyard run examples/adult.yaml`.")
        return
    console.print(table)


@runs_app.command("show")
def runs_show(
    run: Annotated[str, typer.Argument(help="Run id (or a unique prefix of it).")],
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Show one run: its status, each step (ran or cached, seconds, key figures) and its artifacts."""
    from rich.table import Table

    from modelyard.pipeline import MetadataStore

    with MetadataStore(store) as meta:
        r = meta.get_run(run)
        execs = meta.executions(r.id)
    if as_json:
        typer.echo(json.dumps({
            "id": r.id, "pipeline": r.pipeline, "status": r.status, "root": r.root, "error": r.error,
            "started_at": r.started_at.isoformat(), "finished_at": r.finished_at.isoformat() if r.finished_at else None,
            "steps": [{"step": e.step, "status": e.status, "seconds": e.seconds, "figures": e.figures,
                       "cache_key": e.cache_key, "cached_from": e.cached_from, "error": e.error,
                       "outputs": [{"name": a.name, "digest": a.digest, "size": a.size} for a in e.outputs]}
                      for e in execs],
        }, indent=2, default=str))
        return
    console = _console()
    console.print(f"[bold]run[/bold] {r.id} · pipeline [bold]{r.pipeline}[/bold] · status [bold]{r.status}[/bold]")
    console.print(f"folder {r.root} · started {r.started_at:%Y-%m-%d %H:%M:%S} UTC · spec sha256:{r.spec_digest[:16]}")
    if r.error:
        console.print(f"[red]error:[/red] {r.error}", markup=True)
    table = Table(title_justify="left")
    for col in ("step", "status", "seconds", "figures", "outputs"):
        table.add_column(col, overflow="fold")
    for e in execs:
        figures = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in e.figures.items()
                            if not isinstance(v, (dict, list)) and k != "seconds")
        outputs = ", ".join(Path(a.name).name for a in e.outputs)
        table.add_row(e.step, e.status, f"{e.seconds:.2f}" if e.seconds is not None else "–", figures, outputs)
    console.print(table)


def _explain_run_files(meta: Any, ref: str, split: str) -> tuple[Any, str, dict[str, Path]]:
    """``(run, model name, {"model", "split", "train", "evaluation"} paths)`` of a finished run, from its outputs."""
    from modelyard.errors import StoreError

    try:
        r = meta.get_run(ref)
    except StoreError as exc:
        if "ambiguous" in str(exc):
            raise
        recent = [x.id for x in meta.list_runs(limit=10)]
        shown = ", ".join(recent) if recent else "none yet (start one with `modelyard run SPEC`)"
        raise StoreError(f"No run {ref!r} in {meta.describe()}. Recent runs: {shown}.") from None
    files = {a.name: Path(a.uri) for e in meta.executions(r.id) for a in e.outputs}
    if "evaluate/evaluation.json" not in files:
        raise StoreError(f"Run {r.id} has no evaluation (status {r.status}): explain needs a run whose evaluate "
                         "step finished; `modelyard runs show` lists its steps.")
    evaluation = json.loads(files["evaluate/evaluation.json"].read_text(encoding="utf-8"))
    name = evaluation["chosen"]["model"]
    model = next((files[f"{folder}/model.{ext}"] for folder in (f"train/{name}", name)
                  for ext in ("safetensors", "onnx") if f"{folder}/model.{ext}" in files), None)
    source = "features" if f"features/{split}.parquet" in files else "data"
    if f"data/{split}.npz" in files:  # an image run: its images, no background table
        paths = {"model": model, "split": files[f"data/{split}.npz"]}
    else:
        paths = {"model": model, "split": files.get(f"{source}/{split}.parquet"),
                 "train": files.get(f"{source}/train.parquet")}
    missing = [k for k, v in paths.items() if v is None or not v.is_file()]
    if missing:
        raise StoreError(f"Run {r.id} lacks its {', '.join(missing)} file(s) (folder {r.root} moved or deleted?); "
                         "re-run the spec to explain it.")
    return r, name, paths  # type: ignore[return-value]


@app.command("explain")
def explain_cmd(
    run: Annotated[str, typer.Argument(help="Run id (or a unique prefix) whose chosen model to explain.")],
    rows: Annotated[str, typer.Option("--rows", "-r", help="Comma-separated row positions in the split, "
                                      "e.g. 0,5,9.")] = "0",
    method: Annotated[Optional[str], typer.Option("--method", "-m", help="Tables: shap (default), lime, ig (per "
                                                  "row) or permutation (global importances). Images: ig, saliency "
                                                  "or lime heatmaps (default: all three).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for the plots and explain.json; "
                                                "default ./explain-<run id>.")] = None,
    split: Annotated[str, typer.Option("--split", help="Split whose rows are explained: test or valid.")] = "test",
    top: Annotated[int, typer.Option("--top", min=1, help="Importances to print.")] = 10,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seeds the samples, background and shuffles.")] = 0,
    store: StoreOption = None,
) -> None:
    """Explain a finished run's chosen model: per-row contributions, top importances, plots.

    Loads the model the run's evaluate step chose and the run's split from the runs
    store, explains the chosen rows (SHAP: Tree SHAP for gradient boosting, exact or
    Kernel SHAP otherwise; LIME; integrated gradients for torch models) or computes
    permutation importances, prints tables and writes PNG plots and explain.json to OUT.
    For an image run it draws, per chosen image, the heatmaps of integrated gradients,
    gradient saliency and LIME on superpixels.
    """
    import pandas as pd
    from rich.table import Table
    from rich.text import Text

    from modelyard.explain._step import (
        EXPLAIN_METHODS,
        IMAGE_EXPLAIN_METHODS,
        ROW_METHODS,
        ExplainOptions,
        explain_model,
        save_figures,
    )
    from modelyard.models import load_predictor
    from modelyard.pipeline import MetadataStore

    known = [m for m in EXPLAIN_METHODS if m in ROW_METHODS or m == "permutation"]
    if method is not None and method not in known + list(IMAGE_EXPLAIN_METHODS):
        raise SpecError(f"Unknown --method {method!r}; known methods: {', '.join(sorted(known))} (tables), "
                        f"{', '.join(IMAGE_EXPLAIN_METHODS)} (images).")
    if split not in ("test", "valid"):
        raise SpecError(f"Unknown --split {split!r}; use test or valid.")
    try:
        positions = [int(p) for p in rows.split(",") if p.strip()]
    except ValueError:
        raise SpecError(f"--rows must be comma-separated row positions such as 0,5,9; got {rows!r}.") from None
    if not positions:
        raise SpecError("--rows names no row; give positions such as 0,5,9.")
    with MetadataStore(store) as meta:
        r, name, paths = _explain_run_files(meta, run, split)
    if paths["split"].suffix == ".npz":
        _explain_images_cmd(r, name, paths, method=method, positions=positions, split=split, seed=seed, out=out)
        return
    method = method or "shap"
    if method not in known:
        raise SpecError(f"--method {method!r} draws image heatmaps, and run {r.id} is on tables; use one of "
                        f"{', '.join(sorted(known))}.")
    predictor = load_predictor(paths["model"])
    if method == "ig" and not getattr(predictor, "differentiable", False):
        raise SpecError(f"--method ig needs a differentiable (torch) model; run {r.id}'s model {name!r} is "
                        f"{type(predictor).__name__}. Use --method shap or lime.")
    frame = pd.read_parquet(paths["split"])
    options = ExplainOptions(methods=(method,), rows=tuple(positions), seed=seed)
    result = explain_model(predictor, frame, train=pd.read_parquet(paths["train"]), options=options, model=name,
                           split=split)
    folder = out if out is not None else Path(f"explain-{r.id}")
    result["plots"] = save_figures(result, folder)
    from modelyard._atomic import atomic_path

    with atomic_path(folder / "explain.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
    console = _console()
    console.print(Text(f"run {r.id} · model {name} ({type(predictor).__name__}) · {split} split, {len(frame):,} rows "
                       f"· method {method}"))
    for entry in result["rows"]:
        for m, part in entry["explanations"].items():
            console.print(Text(f"Row {entry['row']} · predicted {entry['predicted']} · {m} of {part['output']}: "
                               f"base {part['base_value']:.4g} → prediction {part['prediction']:.4g}"))
            table = Table()
            for col, justify in (("feature", "left"), ("value", "left"), ("contribution", "right")):
                table.add_column(col, justify=justify, overflow="fold")  # type: ignore[arg-type]
            for c in part["contributions"]:
                value = c["value"]
                shown = "–" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))
                table.add_row(Text(str(c["feature"])), Text(shown), f"{c['contribution']:+.4g}")  # data: no markup
            console.print(table, markup=False)
    if method == "permutation":
        perm = result["permutation"]
        title = f"Top importances (permutation: drop in {perm['metric']}, {perm['rows']} rows, 95% interval)"
        ranked = [(x["feature"], x["importance"], x.get("low"), x.get("high")) for x in perm["table"]]
        console.print("Permutation importance is global: it ranks features, it does not explain single rows.")
    else:
        part = result[method]
        import numpy as np

        values = np.abs(np.asarray(part["values"], dtype=np.float64))
        mean = values.mean(axis=0) if values.ndim == 2 else values.sum(axis=2).mean(axis=0)
        title = f"Top importances (mean |{method}| over {len(values)} rows)"
        ranked = sorted(((f, float(v), None, None) for f, v in zip(part["feature_names"], mean, strict=True)),
                        key=lambda t: -t[1])
    console.print(Text(title))
    table = Table()
    for col in ("feature", "importance", "interval"):
        table.add_column(col, justify="left" if col == "feature" else "right", overflow="fold")
    for f, v, lo, hi in ranked[:top]:
        table.add_row(Text(str(f)), f"{v:.4g}", Text(f"[{lo:.4g}, {hi:.4g}]") if lo is not None and hi is not None
                      else "–")
    console.print(table, markup=False)
    typer.echo(str(folder.resolve()))


def _explain_images_cmd(r: Any, name: str, paths: dict[str, Path], *, method: str | None, positions: list[int],
                        split: str, seed: int, out: Path | None) -> None:
    """``modelyard explain`` on an image run: heatmaps of the chosen images, one PNG each."""
    from rich.text import Text

    from modelyard._atomic import atomic_path
    from modelyard.data import load_image_split
    from modelyard.explain._step import IMAGE_EXPLAIN_METHODS, ExplainOptions, explain_model, save_figures
    from modelyard.pipeline._image import load_image_model

    if method is not None and method not in IMAGE_EXPLAIN_METHODS:
        raise SpecError(f"--method {method!r} explains table columns, and run {r.id} is on images; use one of "
                        f"{', '.join(IMAGE_EXPLAIN_METHODS)} (or omit --method for all three).")
    predictor = load_image_model(paths["model"])  # a cnn, or a nas step's network
    data = load_image_split(paths["split"])
    options = ExplainOptions(methods=(method,) if method else None, rows=tuple(positions), seed=seed)
    result = explain_model(predictor, (data.x, data.y), options=options, model=name, split=split)
    folder = out if out is not None else Path(f"explain-{r.id}")
    result["plots"] = save_figures(result, folder)
    with atomic_path(folder / "explain.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
    console = _console()
    console.print(Text(f"run {r.id} · model {name} ({type(predictor).__name__}) · {split} split, {len(data.y):,} "
                       f"images · {', '.join(result['methods']) or 'no method'}"))
    for s in result["skipped"]:
        console.print(Text(f"skipped {s['method']}: {s['reason']}"))
    image = result["image"]
    for row, predicted, plot in zip(image["rows"], image["predicted"], result["plots"], strict=True):
        console.print(Text(f"image {row}: predicted {predicted} → {plot['file']}"))
    typer.echo(str(folder.resolve()))


@app.command("lineage")
def lineage_cmd(
    artifact: Annotated[str, typer.Argument(help="An artifact: a file path (e.g. runs/<id>/model.onnx), "
                                            "an artifact id, or a SHA-256 prefix.")],
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Show which data, spec and steps produced an artifact.

    Walks the recorded events back from the artifact: the execution that wrote it, the
    artifacts that execution read, and so on down to the source data files and their
    SHA-256 digests.
    """
    from modelyard.pipeline import MetadataStore
    from modelyard.pipeline._lineage import lineage_summary, render_lineage, resolve_artifact

    with MetadataStore(store) as meta:
        art = resolve_artifact(meta, artifact)
        tree = meta.lineage(art.id)
        summary = lineage_summary(meta, tree)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    render_lineage(_console(), tree, summary)


def _compress_model_file(ref: str, store: Optional[str]) -> Path:
    """The model ``modelyard compress`` works on: a file, a run folder (its chosen model, torch weights
    preferred so that pruning applies), or a run id in the metadata store."""
    from modelyard.errors import DataError, StoreError

    p = Path(ref).expanduser()
    if not p.exists() and "/" not in ref and not ref.endswith((".onnx", ".safetensors")):
        if store is None and not Path(".modelyard/metadata.db").is_file():  # never create a store just to look
            raise DataError(f"Model {ref!r} not found: it is not a file or folder, and there is no metadata store "
                            "to look it up as a run id (give --store). Give a .onnx or .safetensors file, a run "
                            "folder (runs/<run-id>) or a run id.")
        from modelyard.pipeline import MetadataStore

        try:
            with MetadataStore(store) as meta:
                p = Path(meta.get_run(ref).root)
        except StoreError as exc:
            raise DataError(f"Model {ref!r} not found: it is neither a model file, a run folder nor a run id "
                            f"({exc})") from None
    if p.is_file():
        return p
    if p.is_dir():
        chosen = None
        evaluation = p / "evaluate" / "evaluation.json"
        if evaluation.is_file():
            chosen = json.loads(evaluation.read_text(encoding="utf-8")).get("chosen", {}).get("model")
        folders = [p / "train" / chosen, p / chosen] if chosen else []
        for folder in [*folders, p]:
            for name in ("model.safetensors", "model.onnx"):
                if (folder / name).is_file():
                    return folder / name
        raise DataError(f"Folder {str(p)!r} holds no model: no evaluate/evaluation.json naming a trained model and no "
                        "model.onnx or model.safetensors; give a model file or a finished run's folder.")
    raise DataError(f"Model {ref!r} not found: give a .onnx or .safetensors file, a run folder (runs/<run-id>) or "
                    "a run id.")


def _compress_data(data: str, target: Optional[str], predictor: Any, *, valid: float, test: Optional[float],
                   seed: int) -> Any:
    """Train, valid and test splits for ``modelyard compress``: a built-in data set or a CSV/Parquet file."""
    from modelyard import data as mydata
    from modelyard.errors import DataError

    schema = getattr(predictor, "schema", None)
    if Path(data).is_file() or data.lower().endswith((".csv", ".tsv", ".gz", ".parquet", ".pq")) or "/" in data:
        if not Path(data).is_file():
            raise DataError(f"Data file {data!r} does not exist; give a CSV or Parquet file or a built-in data set "
                            f"({', '.join(mydata.DATASETS.names())}).")
        target = target or (schema.target if schema is not None else None)
        if not target:
            raise SpecError(f"--target is required for {data} (the model does not name its target).")
        reader = mydata.from_parquet if data.lower().endswith((".parquet", ".pq")) else mydata.from_csv
        return reader(data, target=target, valid=valid, test=0.2 if test is None else test, seed=seed)
    if data not in mydata.DATASETS:
        raise DataError(f"{data!r} is neither an existing file nor a built-in data set; built-ins: "
                        f"{mydata.DATASETS.names()}.")
    loaded = mydata.load(data, valid=valid, test=test, seed=seed)
    if isinstance(loaded, mydata.TabularData) and target and target != loaded.schema.target:
        raise DataError(f"Built-in data set {data!r} has target {loaded.schema.target!r}, not {target!r}; "
                        "drop --target.")
    return loaded


@app.command("compress")
def compress_cmd(
    model: Annotated[str, typer.Argument(help="The model: a .safetensors (torch) or .onnx file, a run folder "
                                         "(runs/<run-id>: its chosen model) or a run id.")],
    data: Annotated[str, typer.Option("--data", "-d", help="A CSV or Parquet file, or a built-in data set "
                                      "(adult, fashion_mnist, ...).")],
    target: Annotated[Optional[str], typer.Option("--target", "-t", help="Target column; default: the model's.")]
    = None,
    variants: Annotated[Optional[list[str]], typer.Option(
        "--variants", "-v", help="Comma-separated variants (repeatable): quantizers (dynamic_int8, static_int8, "
        "fp16, ...), pruners with an amount (magnitude:0.9, obd:0.8, structured:0.5), joined by '+' "
        "(magnitude:0.5+static_int8); or a YAML file of variants (examples/compress_fashion_mnist.yaml). "
        "Default: int8 and fp16, plus pruning for a torch model.")] = None,
    max_accuracy_drop: Annotated[float, typer.Option("--max-accuracy-drop", help="Largest allowed validation drop "
                                                     "of the metric for the best variant.")] = 0.01,
    metric: Annotated[Optional[str], typer.Option("--metric", "-m", help="Metric of the budget; default accuracy "
                                                  "(rmse for regression).")] = None,
    prefer: Annotated[str, typer.Option("--prefer", help="What the best variant minimizes: size, gzip or "
                                        "latency.")] = "size",
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for compress.json/.csv, slices.csv, the plots "
                                      "and the variants' ONNX files.")] = Path("compress"),
    rows: Annotated[Optional[int], typer.Option("--rows", min=1, help="Measure on at most this many test rows.")]
    = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed runs per batch size.")] = 50,
    slices: Annotated[Optional[list[str]], typer.Option("--slice", "-s", help="A column to slice by (repeat); "
                                                        "default: the data's sensitive columns.")] = None,
    test: Annotated[Optional[float], typer.Option("--test", help="Test fraction of a file (default 0.2); "
                                                  "built-ins use their official test files.")] = None,
    valid: Annotated[float, typer.Option("--valid", help="Validation fraction (chooses the best variant).")] = 0.1,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seeds the split, fine-tuning and row samples.")] = 0,
    store: StoreOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or table.")] = False,
) -> None:
    """Compress a model several ways, measure every variant on ONNX Runtime, and print the comparison.

    Each variant (pruning in torch, then post-training quantization in ONNX Runtime) is
    measured on the test split: file size raw and gzip, p50/p99 latency at batch 1 and
    64, the metric overall and per slice, the change against the uncompressed model. The
    best is the smallest (--prefer) whose validation metric drops by at most
    --max-accuracy-drop. Writes to OUT: compress.json, compress.csv, slices.csv,
    size_accuracy.png, latency_accuracy.png, variants/*.onnx and best.onnx.
    """
    import tempfile

    from modelyard.compress._step import (
        PREFER,
        compress_variants,
        default_variants,
        directory_writer,
        make_variants,
        write_outputs,
    )
    from modelyard.pipeline._image import load_image_model

    if prefer not in PREFER:
        raise SpecError(f"--prefer must be one of {', '.join(PREFER)}; got {prefer!r}.")
    if not (max_accuracy_drop >= 0):
        raise SpecError(f"--max-accuracy-drop must be >= 0 (0.01 = one point of accuracy); got {max_accuracy_drop}.")
    if not 0 < valid < 1:
        raise SpecError(f"--valid must be a fraction between 0 and 1; got {valid!r}.")
    entries: list[Any] = []
    for arg in variants or []:
        if arg.strip().lower().endswith((".yaml", ".yml")):
            entries += _variants_file(Path(arg.strip()))
        else:
            entries += [v.strip() for v in arg.split(",") if v.strip()]
    parsed = make_variants(entries, where="--variants") if entries else None  # bad names fail before any work
    path = _compress_model_file(model, store)
    predictor = load_image_model(path)  # any model file, the nas step's network included
    dataset = _compress_data(data, target, predictor, valid=valid, test=test, seed=seed)
    if parsed is None:
        import torch

        parsed = make_variants(default_variants(isinstance(getattr(predictor, "module", None), torch.nn.Module),
                                                image=hasattr(predictor, "image_shape")))
    if slices is None:
        schema = getattr(dataset, "schema", None)
        slices = list(schema.sensitive) if schema is not None else []
    console = _console()
    from rich.console import Console

    status = Console(stderr=True, highlight=False)
    with tempfile.TemporaryDirectory(prefix="modelyard-compress-") as tmp:
        with status.status(f"compressing {path.name}", spinner="dots") if not quiet else _nullcontext() as live:
            def progress(message: str) -> None:
                if live is not None:
                    live.update(f"{path.name}: {message}")

            result = compress_variants(
                path, dataset.train, dataset.valid, dataset.test, tmp, parsed, metric=metric,
                max_accuracy_drop=max_accuracy_drop, prefer=prefer, slices=slices, rows=rows, repeats=repeats,
                seed=seed, progress=progress)
        result.extra.update(model=str(path))
        write_outputs(result, directory_writer(out))
    if not quiet:
        console.print(_compress_table(result))
        console.print(f"best: [bold]{result.best}[/bold] · {result.reason}", markup=True, highlight=False)
    typer.echo(str(out.resolve()))


def _variants_file(path: Path) -> list[Any]:
    """Variants from a YAML file: a list, ``{variants: [...]}``, or a pipeline spec's ``compress.variants``."""
    import yaml
    from pydantic import ValidationError

    from modelyard.pipeline._spec import CompressSpec, _format_errors

    if not path.is_file():
        raise SpecError(f"--variants: file {str(path)!r} does not exist; give a YAML list of variants such as "
                        "examples/compress_fashion_mnist.yaml, or names such as dynamic_int8,magnitude:0.9.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SpecError(f"--variants: {str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}.") from None
    if isinstance(raw, dict):
        raw = (raw.get("compress") or {}).get("variants") if "compress" in raw else raw.get("variants")
    if not isinstance(raw, list) or not raw:
        raise SpecError(f"--variants: {str(path)!r} must hold a non-empty list of variants (or `variants:` / "
                        "`compress: {variants: ...}` with one).")
    try:
        section = CompressSpec.model_validate({"variants": raw})
    except ValidationError as exc:
        raise _format_errors(exc, model=CompressSpec, where=f"variants file {str(path)!r}") from None
    return [v.model_dump(exclude_none=True) for v in section.variants or []]


def _nullcontext() -> Any:
    import contextlib

    return contextlib.nullcontext()


def _compress_table(result: Any) -> Any:
    """The comparison as a rich Table."""
    import math

    from rich.table import Table
    from rich.text import Text

    def num(v: Any, fmt: str) -> str:
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    metric = result.metric
    table = Table(title=f"Variants measured on ONNX Runtime ({result.extra.get('rows_measured', '?')} test rows)",
                  title_justify="left")
    columns = ["variant", "size", "gzip", *[f"p50/p99 b{b} ms" for b in result.batch_sizes], f"test {metric}",
               "change", "valid drop", "note"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("variant", "note") else "right", overflow="fold")
    for r in result.table.to_dict(orient="records"):
        name = Text(str(r["variant"]), style="bold" if r["variant"] == result.best else "")
        if r.get("error"):
            table.add_row(name, *["–"] * (len(columns) - 2), Text(f"not built: {r['error']}", style="red"))
            continue
        note = "reference" if r["kind"] == "reference" else ("best" if r["variant"] == result.best else
                                                              ("" if r["within_budget"] else "over budget"))
        table.add_row(name, f"{int(r['size_bytes']):,}", f"{int(r['gzip_bytes']):,}",
                      *[f"{num(r.get(f'p50_ms_b{b}'), '.3g')}/{num(r.get(f'p99_ms_b{b}'), '.3g')}"
                        for b in result.batch_sizes],
                      num(r.get(metric), ".4f"), num(r.get(f"{metric}_change"), "+.4f"),
                      num(r.get("valid_drop"), "+.4f"), note)
    return table


#: Fields of the remediation section and the ``modelyard remediate`` flags that set them.
_REMEDIATE_FLAGS = {"methods": "--method", "base": "--base", "constraint": "--constraint", "tolerance": "--tolerance",
                    "seed": "--seed", "sensitive": "--sensitive"}


@app.command("remediate")
def remediate_cmd(
    data: Annotated[str, typer.Argument(help="A CSV or Parquet file, or a built-in tabular data set (adult, compas), "
                                        "with a binary target.")],
    sensitive: Annotated[str | None, typer.Option("--sensitive", "-s", help="The column whose groups are made "
                                                     "fairer (it need not be a feature); default: a built-in set's "
                                                     "first sensitive column (adult: sex).")] = None,
    methods: Annotated[list[str] | None, typer.Option(
        "--method", "-m", help="A remediation method (repeat for several): reweighing (Kamiran-Calders instance "
        "weights), mindiff (MMD penalty in the MLP's loss; needs --base mlp), threshold (Hardt et al.'s per-group "
        "thresholds), lfr (learned fair representations). Default: every method that applies to --base.")] = None,
    target: Annotated[str | None, typer.Option("--target", "-t", help="Target column (required for a file).")]
    = None,
    base: Annotated[str, typer.Option("--base", "-b", help="Base model remediated and measured before: gbm or "
                                      "mlp.")] = "gbm",
    constraint: Annotated[str, typer.Option("--constraint", help="threshold: demographic_parity, equalized_odds, "
                                            "true_positive_rate_parity or false_positive_rate_parity.")]
    = "demographic_parity",
    tolerance: Annotated[float, typer.Option("--tolerance", help="threshold: largest gap between groups allowed "
                                             "on the validation split.")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seeds the split, the base model and the "
                                      "remediation.")] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for remediation.json, remediation.csv and "
                                      "remediation.png.")] = Path("remediation"),
    test: Annotated[float | None, typer.Option("--test", help="Test fraction of a file (default 0.2); built-ins "
                                                  "use their official test file where they have one.")] = None,
    valid: Annotated[float, typer.Option("--valid", help="Validation fraction (early stopping; the thresholds are "
                                         "chosen on it).")] = 0.1,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or table.")] = False,
) -> None:
    """Remediate a binary classifier for group fairness and compare the methods before and after.

    A base model (--base) is fitted on the train split and each method is applied to it;
    every model is measured on the same test rows: accuracy, demographic parity
    difference (DPD: the largest gap in selection rate between the groups of --sensitive)
    and equalized odds difference (EOD: the larger of the largest TPR and FPR gaps).
    Prints the before/after table and writes to OUT: remediation.json (every method's
    figures, the settings and the base model's "before"), remediation.csv (one row per
    method after the "before" row: accuracy, DPD, EOD, accuracy cost, fit time) and
    remediation.png (accuracy against DPD and EOD). Files are written atomically, and
    nothing is written on bad input (an unknown column or method, a target that is not
    binary).

    Example: modelyard remediate adult --sensitive sex --method threshold --method reweighing
    """
    from pydantic import ValidationError

    from modelyard import data as mydata
    from modelyard.errors import DataError
    from modelyard.pipeline._remediation_step import (
        check_binary,
        directory_writer,
        remediation_rows,
        resolve_sensitive,
        run_remediation,
        write_remediation,
    )
    from modelyard.pipeline._spec import RemediationSpec

    try:  # the spec section's own checks: known methods, mindiff only with mlp, constraint, tolerance
        section = RemediationSpec.model_validate({"methods": methods or None, "base": base, "constraint": constraint,
                                                  "tolerance": tolerance, "seed": seed})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        flag = _REMEDIATE_FLAGS.get(str(err["loc"][0]) if err["loc"] else "", "remediate")
        raise SpecError(f"{flag}: {err['msg'].removeprefix('Value error, ')} (got {err.get('input')!r}).") from None
    if not 0 < valid < 1:
        raise SpecError(f"--valid must be a fraction between 0 and 1; got {valid!r}.")
    if out.exists() and not out.is_dir():
        raise SpecError(f"--out {str(out)!r} is a file; give a folder for the three files.")
    if _is_data_file(data) and not Path(data).is_file():
        raise DataError(f"Data file {data!r} does not exist; give a CSV or Parquet file or a built-in data set "
                        f"({', '.join(mydata.DATASETS.names())}).")
    dataset, _ = _tabular_data(
        data, target, valid=valid, test=test, seed=seed, target_words="the binary column to predict",
        image_error="fairness remediation needs tabular rows with a sensitive column. Give a CSV, Parquet or "
                    "tabular built-in data set (adult, compas).")
    check_binary(dataset.schema, fix="Give --target a column with two values.")
    column = resolve_sensitive(dataset.schema, list(dataset.train.frame.columns), sensitive, fix="--sensitive")
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                        TimeElapsedColumn(), console=Console(stderr=True, highlight=False), transient=True,
                        disable=quiet)

    def bar(description: str, total: int | None) -> Any:
        task = progress.add_task(description, total=total, info="")
        return lambda **kw: progress.update(task, **kw)

    with progress:
        doc, _ = run_remediation(dataset.train, dataset.valid, dataset.test, sensitive=column,
                                 methods=list(section.method_names), base=section.base, constraint=section.constraint,
                                 tolerance=section.tolerance, seed=seed, progress=bar, where="--method")
    write_remediation(doc, directory_writer(out))  # only after every method ran: nothing is written on failure
    if not quiet:
        from rich.table import Table
        from rich.text import Text

        def num(v: Any, fmt: str = ".4f") -> str:
            return "–" if v is None else format(v, fmt)

        table = Table(title=Text(f"Fairness remediation on {column!r} · base {section.base} · "
                                 f"{doc['rows']['test']:,} test rows"), title_justify="left")
        for col in ("method", "accuracy", "DPD", "EOD", "accuracy cost", "fit s"):
            table.add_column(col, justify="left" if col == "method" else "right", no_wrap=True)
        for row in remediation_rows(doc):
            before = row["method"] == "before"
            table.add_row(Text(row["method"], style="bold" if before else ""), num(row["accuracy"]),
                          num(row["demographic_parity_difference"]), num(row["equalized_odds_difference"]),
                          "–" if before else num(row["accuracy_cost"], "+.4f"), num(row["fit_time_s"], ".2f"))
        _console().print(table)
    typer.echo(str(out.resolve()))


def _fail(exc: BaseException) -> typer.Exit:
    """Print ``exc`` as one line and return the Exit to raise (a traceback only under --debug)."""
    if isinstance(exc, ModelyardError):
        typer.echo(f"error: {exc}", err=True)
        return typer.Exit(2 if isinstance(exc, SpecError) else 1)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    typer.echo(f"error: {type(exc).__name__}: {first} (run `modelyard --debug ...` for the traceback)", err=True)
    return typer.Exit(1)


def _guarded(command: Any) -> Any:
    """Wrap a command so that errors become one line and a non-zero exit code."""
    import functools

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            typer.echo("Interrupted.", err=True)
            raise typer.Exit(130) from None
        except Exception as exc:
            if _state["debug"]:
                raise
            raise _fail(exc) from None

    return wrapper


for _app in (app, runs_app):
    for _info in _app.registered_commands:
        _info.callback = _guarded(_info.callback)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``modelyard`` command."""
    try:
        app(args=argv, prog_name="modelyard")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

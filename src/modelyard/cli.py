"""The ``modelyard`` command line: a thin layer over the Python API.

Every command explains itself with ``--help``. On failure the error is printed as one
line and the exit code is non-zero (2 for a bad spec or bad usage, 1 otherwise); a
traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import json
import sys
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
    strategy: Annotated[str, typer.Option("--strategy", help="Search strategy of every family.")] = "tpe",
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
    from modelyard import data as mydata
    from modelyard.errors import DataError
    from modelyard.search._automl import automl, check_automl_args

    names = [f.strip() for f in families.split(",") if f.strip()]
    check_automl_args(names, time_budget, ensemble, strategy)
    if not 0 < valid < 1:
        raise SpecError(f"--valid must be a fraction between 0 and 1; got {valid!r}.")
    is_file = data.lower().endswith((".csv", ".tsv", ".gz", ".bz2", ".xz", ".parquet", ".pq")) or "/" in data \
        or Path(data).is_file()
    if is_file:
        if not target:
            raise SpecError(f"--target is required for a file ({data}); name the column to predict.")
        reader = mydata.from_parquet if data.lower().endswith((".parquet", ".pq")) else mydata.from_csv
        dataset = reader(data, target=target, drop=drop or (), valid=valid, test=0.2 if test is None else test,
                         seed=seed)
    else:
        if data not in mydata.DATASETS:
            raise DataError(f"{data!r} is neither an existing file nor a built-in data set; built-ins: "
                            f"{mydata.DATASETS.names()}.")
        dataset = mydata.load(data, valid=valid, test=test, seed=seed)
        if not isinstance(dataset, mydata.TabularData):
            raise DataError(f"{data!r} is an image data set; automl tunes tabular models. Give a CSV, Parquet "
                            "or tabular built-in data set.")
        if target and target != dataset.schema.target:
            raise DataError(f"Built-in data set {data!r} has target {dataset.schema.target!r}, not {target!r}; "
                            "drop --target.")
        if drop:
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

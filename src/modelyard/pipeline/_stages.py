"""The built-in steps of a pipeline: data, features, search, automl, train (one per model), evaluate,
export, report.

Heavy libraries (torch, scikit-learn, matplotlib) are imported inside ``run`` so that a
fully cached re-run never loads them.
"""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path
from typing import Any

from modelyard.errors import DataError, ModelFormatError, SpecError
from modelyard.pipeline._spec import FEATURE_EXTRACTION, PipelineSpec, is_image_source
from modelyard.pipeline._step import ExternalInput, Step, StepContext

__all__ = ["DataStep", "FeaturesStep", "SearchStep", "AutoMLStep", "TrainStep", "EvaluateStep", "ExplainStep",
           "ExportStep", "CompressStep",
           "ReportStep", "build_steps", "resolve_source"]

_SPLITS = ("train", "valid", "test")
_FILE_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".parquet", ".pq")


def _is_file_source(source: str) -> bool:
    return source.lower().endswith(_FILE_SUFFIXES) or "/" in source or "\\" in source


def resolve_source(source: str, spec_dir: Path | None) -> str:
    """A file source as an absolute path (relative to the spec's folder, else the cwd)."""
    if not _is_file_source(source):
        return source
    p = Path(source).expanduser()
    if not p.is_absolute():
        for base in ([spec_dir] if spec_dir else []) + [Path.cwd()]:
            if (base / p).exists():
                return str((base / p).resolve())
        base = spec_dir or Path.cwd()
        p = base / p
    return str(p.resolve())


def _read_split(ctx: StepContext, role: str, schema: Any) -> Any:
    import pandas as pd

    from modelyard.data import TabularSplit

    return TabularSplit(pd.read_parquet(ctx.input(role)), schema)


def _read_schema(ctx: StepContext) -> Any:
    from modelyard.data import Schema

    return Schema.from_dict(ctx.read_json("schema")["schema"])


class DataStep(Step):
    """Load the data set, split it, and write the splits as Parquet plus the schema."""

    kind = "data"
    VERSION = "1"

    def external_inputs(self) -> list[ExternalInput]:
        from modelyard.data import builtin_files, sha256_file

        source = self.config["source"]
        if _is_file_source(source):
            path = Path(source)
            if not path.is_file():
                raise DataError(f"Data file {source!r} does not exist; fix data.source in the spec.")
            return [ExternalInput(path.name, str(path), sha256_file(path), path.stat().st_size)]
        return [ExternalInput(name, str(path), digest, Path(path).stat().st_size)
                for name, path, digest in builtin_files(source)]

    def run(self, ctx: StepContext) -> None:
        import dataclasses

        from modelyard import data as mydata

        cfg = self.config
        split = cfg["split"]
        bar = ctx.progress("loading data", None)
        source = cfg["source"]
        kwargs = dict(valid=split["valid"], seed=split["seed"])
        if _is_file_source(source):
            test = split["test"]
            if test == "official":
                raise SpecError("data.split.test: 'official' is only for built-in data sets that ship a test file; "
                                "give a fraction such as 0.2.")
            if not cfg.get("target"):
                raise SpecError(f"data.target: required for a file source ({source}); name the target column.")
            reader = mydata.from_parquet if source.lower().endswith((".parquet", ".pq")) else mydata.from_csv
            data = reader(source, target=cfg["target"], sensitive=cfg.get("sensitive") or (),
                          drop=cfg.get("drop") or (), categorical=cfg.get("categorical") or (),
                          task=cfg.get("task"), test=0.2 if test is None else test, **kwargs)
        else:
            test = split["test"]
            data = mydata.load(source, test=None if test == "official" else test, **kwargs)
            if not isinstance(data, mydata.TabularData):
                raise SpecError(f"data.source: {source!r} is an image data set; this pipeline trains tabular "
                                "models (mlp, gbm). Use a tabular data set or a CSV/Parquet file.")
            if cfg.get("target") and cfg["target"] != data.schema.target:
                raise SpecError(f"data.target: built-in data set {source!r} has target {data.schema.target!r}, "
                                f"not {cfg['target']!r}; remove data.target.")
            if cfg.get("sensitive") is not None:
                missing = [c for c in cfg["sensitive"] if c not in data.train.frame.columns]
                if missing:
                    raise DataError(f"data.sensitive names unknown columns {missing}; "
                                    f"columns are {list(map(str, data.train.frame.columns))}.")
                data.schema = dataclasses.replace(data.schema, sensitive=tuple(cfg["sensitive"]))
        sub = cfg.get("subsample") or {}
        for name in _SPLITS:  # data.subsample: a seeded sample of each split, stratified for classifiers
            if sub.get(name):
                part = data.splits[name]
                keep = mydata.subsample_indices(part.y, sub[name], seed=sub["seed"],
                                                stratify=data.schema.task != "regression")
                setattr(data, name, mydata.TabularSplit(part.frame.iloc[keep].reset_index(drop=True), data.schema))
        bar(completed=1, total=1)
        for name in _SPLITS:
            frame = data.splits[name].frame.reset_index(drop=True)
            with ctx.output(f"{name}.parquet") as tmp:
                frame.to_parquet(tmp, index=False)
        ctx.write_json("schema.json", {"name": data.name, "schema": data.schema.to_dict(), "sources": data.sources})
        ctx.write_json("rows.json", {name: len(data.splits[name]) for name in _SPLITS})
        ctx.record(rows_train=len(data.train), rows_valid=len(data.valid), rows_test=len(data.test),
                   features=len(data.schema.features), task=data.schema.task)

    def summary(self, figures: dict[str, Any]) -> str:
        return (f"{figures.get('rows_train', 0):,} train · {figures.get('rows_valid', 0):,} valid · "
                f"{figures.get('rows_test', 0):,} test rows, {figures.get('features', 0)} features")


#: Arrays of a feature transform left out of ``features.json`` (they are in ``transform.json``).
_TRANSFORM_ARRAYS = ("format", "design", "center", "divisor", "mean", "components")


class FeaturesStep(Step):
    """Select raw feature columns or extract components; every later step trains on the result.

    Reads the data step's splits and schema and runs
    :func:`~modelyard.compress.select_features` (``mutual_info``, ``anova``, ``chi2``,
    ``rfe``, ``l1``, ``tree``) or :func:`~modelyard.compress.reduce_features` (``pca``,
    ``ica``, ``nmf``): scores come from the train split, ``k`` from the valid split, and
    the test split is only transformed. Writes:

    * ``train.parquet``, ``valid.parquet``, ``test.parquet``: the data step's rows with
      every original column kept (slices may name any column, and the export step checks
      the served model on raw rows); for extraction the component columns come first.
    * ``schema.json``: as the data step writes it; its features are the kept columns, or
      the components (numeric), so the models see nothing else.
    * ``features.json``: the selection's :meth:`~modelyard.compress.SelectionResult.to_dict`,
      or the transform's figures without its arrays, plus ``family`` (selection or
      extraction), ``k``, ``selected`` (kept columns or component names),
      ``input_columns`` and the curve's ``chosen`` point.
    * ``transform.json`` (extraction only): :meth:`~modelyard.compress.FeatureTransform.save`;
      the export step puts it in front of the model (PCA, ICA) or beside it (NMF).
    """

    kind = "features"
    VERSION = "1"

    def run(self, ctx: StepContext) -> None:
        import pandas as pd

        from modelyard.compress import reduce_features, select_features
        from modelyard.data import TabularData

        cfg = self.config
        method = cfg["method"]
        extraction = method in FEATURE_EXTRACTION
        meta = ctx.read_json("schema")
        schema = _read_schema(ctx)
        splits = {name: _read_split(ctx, name, schema) for name in _SPLITS}
        data = TabularData(name=meta["name"], schema=schema, sources=dict(meta.get("sources") or {}), **splits)
        inputs = list(schema.feature_names)
        bar = ctx.progress(f"features ({method}, {len(inputs)} columns)", None)
        try:
            if extraction:
                out, transform = reduce_features(data, method, cfg["k"], variance=cfg["variance"],
                                                 target_size=cfg["target_size"], model=cfg["model"],
                                                 seed=cfg["seed"])
                summary = {k: v for k, v in transform.to_dict().items() if k not in _TRANSFORM_ARRAYS}
                summary.update(family="extraction", kind="extraction", model=cfg["model"], k=transform.n_components,
                               selected=list(transform.columns), tolerance=None, transform="transform.json",
                               onnx_front=method != "nmf")
            else:
                out, result = select_features(data, method, cfg["k"], tolerance=cfg["tolerance"],
                                              model=cfg["model"], seed=cfg["seed"])
                summary = {**result.to_dict(), "family": "selection"}
        except DataError as exc:
            raise DataError(f"features ({method}): {exc}") from exc
        except ValueError as exc:  # a k the data cannot have, a target_size below the smallest model
            raise SpecError(f"features ({method}): {exc}") from exc
        bar(completed=1, total=1)
        k = int(summary["k"])
        chosen = next(p for p in summary["curve"] if p["k"] == k)
        summary.update(input_columns=inputs, chosen=chosen, method=method)
        if extraction:
            clash = [c for c in transform.columns if c in splits["train"].frame.columns]
            if clash:
                raise DataError(f"features ({method}): the data already has columns {clash}, the names of the "
                                "components; rename them in the data.")
        for name in _SPLITS:
            frame = splits[name].frame.reset_index(drop=True)
            if extraction:
                components = out.splits[name].frame[list(transform.columns)].reset_index(drop=True)
                frame = pd.concat([components, frame], axis=1)
            with ctx.output(f"{name}.parquet") as tmp:
                frame.to_parquet(tmp, index=False)
        ctx.write_json("schema.json", {"name": out.name, "schema": out.schema.to_dict(),
                                       "sources": meta.get("sources") or {}})
        if extraction:
            with ctx.output("transform.json") as tmp:
                transform.save(tmp)
        ctx.write_json("features.json", _jsonable(summary))
        baseline = summary["baseline"]
        ctx.record(method=method, k=k, features_in=len(inputs), metric=summary["metric"],
                   valid_score=float(chosen["score"]),
                   baseline_score=None if baseline is None else float(baseline["score"]))

    def summary(self, figures: dict[str, Any]) -> str:
        method, k, n = figures.get("method", "?"), figures.get("k", "?"), figures.get("features_in", "?")
        what = f"{k} components from {n} columns" if method in FEATURE_EXTRACTION else f"kept {k} of {n} columns"
        metric = figures.get("metric", "score")
        score, base = figures.get("valid_score"), figures.get("baseline_score")
        shown = f" · valid {metric} {score:.4f}" if isinstance(score, float) else ""
        if isinstance(base, float):
            shown += f" (all columns {base:.4f})"
        return f"{method}: {what}{shown}"


def _fit_torch(family: str, train: Any, valid: Any, config: Any, ctx: StepContext) -> tuple[Any, dict[str, Any]]:
    from modelyard.models import save_torch
    from modelyard.train import fit_lattice, fit_mlp

    fit = {"mlp": fit_mlp, "lattice": fit_lattice}[family]
    bar = ctx.progress(f"training {family}", config.max_epochs)

    def on_epoch(epoch: int, max_epochs: int, logs: dict[str, float]) -> None:
        info = " ".join(f"{k} {v:.4f}" for k, v in logs.items() if isinstance(v, float))
        bar(completed=epoch, info=info)  # the trainer counts epochs from 1

    predictor = fit(train, valid, config, callback=on_epoch)
    with ctx.output("model.safetensors") as tmp:
        save_torch(predictor, tmp)
    extra = {}
    history = getattr(predictor, "history_", None) or getattr(getattr(predictor, "trainer", None), "history_", None)
    if history:
        extra["history"] = history
    best = getattr(predictor, "best_epoch_", None)
    if best is not None:
        extra["best_epoch"] = best
    return predictor, extra


def _fit_gbm(train: Any, valid: Any, config: Any, ctx: StepContext) -> tuple[Any, dict[str, Any]]:
    from modelyard.compress import export_onnx
    from modelyard.models import fit_gbm

    bar = ctx.progress("training gbm", None)
    predictor = fit_gbm(train, valid, config)
    bar(completed=1, total=1)
    with ctx.output("model.onnx") as tmp:
        result = export_onnx(predictor, tmp, sample=valid.X.head(2000))
    return predictor, {"onnx_max_abs_diff": result.max_abs_diff}


#: Families trained in torch and stored as safetensors (the others are stored as ONNX).
TORCH_FAMILIES = ("mlp", "lattice", "cnn")

_TRAINERS = {
    "mlp": functools.partial(_fit_torch, "mlp"),
    "lattice": functools.partial(_fit_torch, "lattice"),
    "gbm": _fit_gbm,
}


class SearchStep(Step):
    """Search the family's hyperparameters; write every trial, the leaderboard and the best model.

    With one objective the best trial's model is refitted (same seed) and stored like a
    trained model, so it joins the candidates of the evaluate step as ``search``. With
    several objectives the Pareto front is written and no single model is chosen.
    """

    kind = "search"
    VERSION = "1"

    def run(self, ctx: StepContext) -> None:
        from modelyard import search as mysearch
        from modelyard.data import TabularData
        from modelyard.pipeline._spec import model_config_class

        cfg = self.config
        schema = _read_schema(ctx)
        train, valid = _read_split(ctx, "train", schema), _read_split(ctx, "valid", schema)
        data = TabularData(name="search", schema=schema, train=train, valid=valid, test=valid)
        family = cfg["family"]
        objectives = cfg["objectives"] or (["rmse"] if schema.task == "regression" else ["accuracy"])
        base = model_config_class(family).model_validate({"seed": cfg["seed"], **cfg["base"]})
        bar = ctx.progress(f"searching {family} ({cfg['strategy']}, {cfg['workers']} worker(s))", cfg["trials"])
        storage, study_name = cfg["storage"], cfg["study_name"]
        if storage is None and ctx.state_dir is not None:
            # A journal beside the runs, keyed by this step's cache key: a run interrupted
            # mid-search is resumed by the next run of the same spec (finished trials kept).
            ctx.state_dir.mkdir(parents=True, exist_ok=True)
            storage = str(ctx.state_dir / "study.journal")
            study_name = study_name or "search"
        result = mysearch.run(
            cfg["space"] or family, data, family=family, strategy=cfg["strategy"], trials=cfg["trials"],
            objectives=tuple(objectives), early_stopping=cfg["early_stopping"], storage=storage,
            study_name=study_name, seed=cfg["seed"], workers=cfg["workers"], timeout=cfg["timeout"],
            base_config=base,
        )
        bar(completed=cfg["trials"])
        with ctx.output("trials.csv") as tmp:
            result.trials_.to_csv(tmp, index=False)
        with ctx.output("leaderboard.csv") as tmp:
            result.leaderboard().to_csv(tmp, index=False)
        import optuna

        finished = [t for t in result.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        summary: dict[str, Any] = {
            "family": family, "strategy": cfg["strategy"], "objectives": objectives,
            "trials_count": int(len(result.trials_)),
            "maximize": [d == optuna.study.StudyDirection.MAXIMIZE for d in result.study.directions],
            "trials": [{"number": t.number, "values": list(t.values)} for t in finished],
        }
        if len(objectives) == 1 and len(finished) >= 2:
            try:
                summary["importances"] = optuna.importance.get_param_importances(result.study)
            except (RuntimeError, ValueError):  # e.g. every trial had the same parameters
                pass
        if len(objectives) == 1:
            summary.update(best_params=result.best_params_, best_value=result.best_value_,
                           best_trial=result.best_trial_.number)
            t0 = time.perf_counter()
            predictor = result.best_model()
            fit_seconds = time.perf_counter() - t0
            if family == "mlp":
                from modelyard.models import save_torch

                with ctx.output("model.safetensors") as tmp:
                    save_torch(predictor, tmp)
                extra: dict[str, Any] = {}
            else:
                from modelyard.compress import export_onnx

                with ctx.output("model.onnx") as tmp:
                    parity = export_onnx(predictor, tmp, sample=valid.X.head(2000))
                extra = {"onnx_max_abs_diff": parity.max_abs_diff}
            valid_metric = _quick_metric(predictor, valid)
            ctx.write_json("fit.json", {"family": family, "fit_seconds": round(fit_seconds, 3),
                                        "params": result.best_params_, **valid_metric, **_jsonable(extra)})
            ctx.record(best_value=float(result.best_value_), **valid_metric)
        else:
            summary["pareto_front"] = result.pareto_front_
            ctx.record(pareto_size=len(result.pareto_front_))
        ctx.write_json("search.json", _jsonable(summary))
        ctx.record(trials=int(len(result.trials_)))

    def summary(self, figures: dict[str, Any]) -> str:
        return super().summary(figures)


class AutoMLStep(Step):
    """Tune several model families within a time budget, ensemble the best; write the leaderboard and the model.

    The recommended model (the ensemble unless ``ensemble: none`` or a stacked ensemble
    scores below the best single model on the validation split) is written as ONNX and
    joins the candidates of the evaluate step as ``automl``. The step sees the train and
    valid splits only: test figures come from the evaluate step, as for every candidate.
    A time-budgeted search is not reproducible trial for trial (how many trials fit in
    the budget depends on the machine), but the step is cached like any other: an
    unchanged spec reuses its result.
    """

    kind = "automl"
    VERSION = "1"

    def run(self, ctx: StepContext) -> None:
        from modelyard.compress import export_onnx
        from modelyard.data import TabularData, TabularSplit
        from modelyard.search._automl import automl

        cfg = self.config
        schema = _read_schema(ctx)
        train, valid = _read_split(ctx, "train", schema), _read_split(ctx, "valid", schema)
        no_test = TabularSplit(valid.frame.iloc[:0], schema)
        data = TabularData(name="automl", schema=schema, train=train, valid=valid, test=no_test)
        budget = float(cfg["time_budget"])
        bar = ctx.progress(f"automl ({', '.join(cfg['families'])}; {budget:g} s)", math.ceil(budget))

        def progress(event: dict[str, Any]) -> None:
            best = event.get("best")
            info = f"{event['family']}" + (f" · best {best:.4g}" if isinstance(best, float) else "")
            bar(completed=min(event["elapsed"], budget), info=info)

        result = automl(
            data, families=cfg["families"], time_budget=budget, strategy=cfg["strategy"], metric=cfg["metric"],
            ensemble=cfg["ensemble"], seed=cfg["seed"], candidates=cfg["candidates"], max_trials=cfg["max_trials"],
            base_configs=cfg["base"], progress=progress,
        )
        bar(completed=budget)
        with ctx.output("model.onnx") as tmp:
            parity = export_onnx(result.model, tmp, sample=valid.X.head(2000))
        with ctx.output("leaderboard.csv") as tmp:
            result.leaderboard.drop(columns=[f"test_{result.metric}"]).to_csv(tmp, index=False)
        summary = dict(result.summary)
        summary["files"] = {"model": "model.onnx", "onnx_max_abs_diff": float(parity.max_abs_diff)}
        summary["leaderboard_top"] = _jsonable(
            result.leaderboard.drop(columns=[f"test_{result.metric}"]).head(10).to_dict(orient="records"))
        ctx.write_json("automl.json", _jsonable(summary))
        valid_metric = _quick_metric(result.model, valid)
        ctx.write_json("fit.json", {"family": "automl", "fit_seconds": summary["elapsed_s"],
                                    "model": summary["model"], "onnx_max_abs_diff": float(parity.max_abs_diff),
                                    **valid_metric})
        ens = summary.get("ensemble") or {}
        ctx.record(model=summary["model"], best=summary["best"]["model"],
                   trials=int(sum(f["trials"] for f in summary["families"].values())),
                   **({"ensemble_members": len(ens.get("members", []))} if ens else {}), **valid_metric)

    def summary(self, figures: dict[str, Any]) -> str:
        acc = figures.get("valid_accuracy", figures.get("valid_rmse"))
        shown = f" · valid {acc:.4f}" if isinstance(acc, float) else ""
        return f"{figures.get('trials', 0)} trials · model {figures.get('model', '?')}{shown}"


class TrainStep(Step):
    """Fit one model family on the train split (early stopping on valid) and store it safely."""

    kind = "train"
    VERSION = "1"

    def run(self, ctx: StepContext) -> None:
        from modelyard.pipeline._spec import model_config_class

        schema = _read_schema(ctx)
        train, valid = _read_split(ctx, "train", schema), _read_split(ctx, "valid", schema)
        family = self.config["family"]
        config = model_config_class(family).model_validate({k: v for k, v in self.config.items() if k != "family"})
        t0 = time.perf_counter()
        predictor, extra = _TRAINERS[family](train, valid, config, ctx)
        fit_seconds = time.perf_counter() - t0
        valid_metric = _quick_metric(predictor, valid)
        ctx.write_json("fit.json", {"family": family, "fit_seconds": round(fit_seconds, 3), **valid_metric,
                                    **_jsonable(extra)})
        ctx.record(fit_seconds=round(fit_seconds, 2), **valid_metric)


def _quick_metric(predictor: Any, split: Any) -> dict[str, float]:
    import numpy as np

    pred = predictor.predict(split.X)
    if predictor.task == "regression":
        return {"valid_rmse": float(np.sqrt(np.mean((pred - split.y) ** 2)))}
    return {"valid_accuracy": float(np.mean(pred == split.y))}


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=float))


class EvaluateStep(Step):
    """Score every model on valid (for selection) and test (overall and per slice).

    With a ``gate`` in the config, the chosen model is judged on the test split against
    the gate's thresholds and, when ``gate.baseline`` names a model file or run folder
    (a relative path from the spec's folder, else the working folder), against that baseline's values slice by
    slice; ``blessing.json`` lists every check and the verdict (written whether blessed or
    not), and ``blessed`` is recorded in the step's figures and in ``evaluation.json``.
    """

    kind = "evaluate"
    VERSION = "1"

    def _baseline_file(self) -> Path | None:
        gate = self.config.get("gate")
        if not gate or not gate.get("baseline"):
            return None
        from modelyard.evaluate._gate import resolve_model_file

        try:
            return resolve_model_file(Path(gate["baseline"]).expanduser().resolve())
        except DataError as exc:
            raise DataError(f"evaluate.gate.baseline: {exc}") from None

    def external_inputs(self) -> list[ExternalInput]:
        """The gate's baseline model file, so a new baseline re-runs the step."""
        path = self._baseline_file()
        if path is None:
            return []
        from modelyard.data import sha256_file

        return [ExternalInput(f"baseline/{path.name}", str(path), sha256_file(path), path.stat().st_size)]

    def code_version(self) -> str:
        """The fairness module's source (fairness.json) and, with a gate, the gate's are part of the version."""
        import hashlib
        import inspect

        from modelyard.evaluate import _fairness, _gate

        base = super().code_version()
        fair = hashlib.sha256(inspect.getsource(_fairness).encode()).hexdigest()[:12]
        if not self.config.get("gate"):
            return f"{base}/fairness:{fair}"
        digest = hashlib.sha256((inspect.getsource(_gate) + inspect.getsource(_fairness)).encode()).hexdigest()
        return f"{base}/gate:{digest[:12]}"

    def _fairness(self, ctx: StepContext, chosen: str, test: Any, schema: Any, options: dict[str, Any]
                  ) -> dict[str, Any] | None:
        """Fairness indicators of the chosen model over the sensitive columns (and their cross) on test.

        Written to ``fairness.json`` and returned; ``None`` (nothing written) without sensitive
        columns, for a task other than binary, or with ``fairness: false``.
        """
        from modelyard.evaluate import fairness_indicators
        from modelyard.models import load_predictor

        sensitive = [str(c) for c in schema.sensitive]
        if not self.config.get("fairness", True) or not sensitive or schema.task != "binary":
            return None
        groups: list[Any] = [*sensitive, *([tuple(sensitive)] if len(sensitive) > 1 else [])]
        report = fairness_indicators(load_predictor(ctx.input(f"model:{chosen}")), test.frame, sensitive=groups,
                                     **options)
        doc = _jsonable({"model": chosen, "split": "test", **report.to_dict()})
        ctx.write_json("fairness.json", doc)
        return doc

    def _gate(self, ctx: StepContext, chosen: str, test: Any, slices: list[Any]) -> dict[str, Any]:
        """Judge the chosen model on the test split; write blessing.json; return its verdict."""
        from modelyard.data import sha256_file
        from modelyard.evaluate import gate_predictors, parse_gate
        from modelyard.models import load_predictor

        gate = parse_gate(self.config["gate"], where="evaluate.gate")
        src = ctx.input(f"model:{chosen}")
        candidate = load_predictor(src)
        path = self._baseline_file()
        baseline = load_predictor(path) if path is not None else None
        result = gate_predictors(candidate, test.frame, gate, baseline=baseline,
                                 slices=() if gate.slices else slices)
        info = {"candidate": {"model": chosen, "path": src.name, "sha256": sha256_file(src)},
                "baseline": None if path is None else {"path": str(path), "sha256": sha256_file(path)},
                "split": "test"}
        blessing = result.to_dict(**info)
        ctx.write_json("blessing.json", blessing)
        return {k: blessing[k] for k in ("blessed", "summary", "counts", "failed", "checks")}

    def run(self, ctx: StepContext) -> None:
        import math

        from modelyard.evaluate import METRICS, evaluate_predictor, roc_curve_points
        from modelyard.models import load_predictor

        schema = _read_schema(ctx)
        valid, test = _read_split(ctx, "valid", schema), _read_split(ctx, "test", schema)
        slices = self.config["slices"]
        if slices is None:
            slices = list(schema.sensitive)
        metrics = self.config["metrics"]
        models = [role.removeprefix("model:") for role in self.inputs if role.startswith("model:")]
        # Test metrics get Poisson-bootstrap intervals (seeded: the same run gives the same intervals).
        intervals = {"bootstrap": int(self.config.get("bootstrap", 0)),
                     "confidence": float(self.config.get("confidence", 0.95)), "seed": 0}
        bar = ctx.progress("evaluating", len(models))
        out: dict[str, Any] = {}
        for name in models:
            predictor = load_predictor(ctx.input(f"model:{name}"))
            fit = ctx.read_json(f"fit:{name}")
            v = evaluate_predictor(predictor, valid.frame, slices=[], metrics=metrics)
            t = evaluate_predictor(predictor, test.frame, slices=slices, metrics=metrics, **intervals)
            entry: dict[str, Any] = {"family": fit["family"], "fit_seconds": fit["fit_seconds"],
                                     "valid": v.to_dict(), "test": t.to_dict()}
            if schema.task == "binary":
                entry["roc"] = {**roc_curve_points(test.y, predictor.predict_proba(test.X)), "split": "test"}
            out[name] = entry
            bar(advance=1)
        select = self.config["select"]
        metric = select["metric"] or ("rmse" if schema.task == "regression" else "accuracy")
        mode = select.get("mode")
        if mode is None:
            mode = "max" if METRICS.get(metric).greater_is_better else "min"
        scores = {}
        for name, entry in out.items():
            value = entry["valid"]["overall"].get(metric)
            if value is None:
                known = sorted(entry["valid"]["overall"])
                raise SpecError(f"train.select.metric: {metric!r} was not computed on the validation split; "
                                f"choose one of {known}.")
            scores[name] = float(value)
        finite = {k: v for k, v in scores.items() if not math.isnan(v)}
        if not finite:
            raise DataError(f"Every model's validation {metric} is NaN; choose another train.select.metric.")
        chosen = (min if mode == "min" else max)(finite, key=lambda k: (finite[k], -list(finite).index(k)))
        verdict = self._gate(ctx, chosen, test, slices) if self.config.get("gate") else None
        fairness = self._fairness(ctx, chosen, test, schema, intervals)
        ctx.write_json("evaluation.json", _jsonable({
            "models": out,
            "chosen": {"model": chosen, "metric": metric, "mode": mode, "split": "valid", "value": finite[chosen],
                       "family": out[chosen]["family"]},
            **({"gate": verdict} if verdict is not None else {}),
            **({"fairness": fairness} if fairness is not None else {}),
        }))
        ctx.record(chosen=chosen, **{f"test_{metric}_{n}": out[n]["test"]["overall"].get(metric) for n in out})
        if verdict is not None:
            ctx.record(blessed=bool(verdict["blessed"]), gate_checks=verdict["counts"]["checks"],
                       gate_failed=verdict["counts"]["failed"])


class ExplainStep(Step):
    """Explain the chosen model: permutation importance, SHAP, PDP/ICE, per-row explanations, plots.

    The work is :func:`modelyard.explain._step.run_explain_step`; it writes
    ``explain.json`` and one PNG per plot. That module's source is part of the cache key.
    """

    kind = "explain"
    VERSION = "1"

    def code_version(self) -> str:
        import hashlib
        import inspect

        from modelyard.explain import _step

        digest = hashlib.sha256(inspect.getsource(_step).encode()).hexdigest()[:12]
        return f"{super().code_version()}/explain:{digest}"

    def run(self, ctx: StepContext) -> None:
        from modelyard.explain._step import run_explain_step

        run_explain_step(self.config, ctx)

    def summary(self, figures: dict[str, Any]) -> str:
        shap = f" · SHAP {figures['shap_method']}" if figures.get("shap_method") else ""
        top = f" · top feature {figures['top_feature']}" if figures.get("top_feature") else ""
        return f"{figures.get('model', '?')}: {figures.get('methods', '')}{shap}{top}"


class ExportStep(Step):
    """Export the chosen model to ONNX (raw columns in) and check parity on test rows.

    After a ``features`` step with PCA or ICA, the model was trained on components: the
    transform (``transform.json``) is composed in front of it
    (:meth:`~modelyard.compress.FeatureTransform.compose_onnx`), so ``model.onnx`` still
    takes the raw columns, and parity is checked between that file on raw test rows and
    the trained model on the components. NMF has no ONNX form (each row solves a
    non-negative least-squares problem): ``model.onnx`` then takes the components and
    ``transform.json`` is written beside it, to be applied first.
    """

    kind = "export"
    VERSION = "2"
    publish = {"model.onnx": "model.onnx", "transform.json": "transform.json"}

    def run(self, ctx: StepContext) -> None:
        import shutil

        from modelyard.compress import export_onnx
        from modelyard.models import load_predictor

        evaluation = ctx.read_json("evaluation")
        chosen = evaluation["chosen"]["model"]
        schema = _read_schema(ctx)
        test = _read_split(ctx, "test", schema)
        src = ctx.input(f"model:{chosen}")
        transform = None
        if "transform" in ctx.input_paths:
            from modelyard.compress import FeatureTransform

            transform = FeatureTransform.load(ctx.input("transform"))
        compose = transform is not None and transform.method != "nmf"
        bar = ctx.progress(f"exporting {chosen} to ONNX" + (f" behind the {transform.method} transform"
                                                              if compose else ""), 1)
        n_parity = self.config["parity_rows"]
        sample = test.X.head(n_parity)
        predictor = load_predictor(src)
        extra: dict[str, Any] = {}
        if compose:
            max_abs_diff, n_rows, extra = self._compose(ctx, transform, predictor, src, chosen, test)
        elif src.suffix == ".onnx":
            # Already ONNX (exported, with its parity check, when it was trained): check it
            # serves the test rows, then copy it.
            predictor.predict(sample)
            with ctx.output("model.onnx") as tmp:
                shutil.copyfile(src, tmp)
            fit = ctx.read_json(f"fit:{chosen}")
            max_abs_diff = float(fit.get("onnx_max_abs_diff", 0.0))
            n_rows = len(sample)
        else:
            with ctx.output("model.onnx") as tmp:
                result = export_onnx(predictor, tmp, sample=sample, atol=self.config["atol"])
            max_abs_diff, n_rows = float(result.max_abs_diff), int(result.n_rows)
        if transform is not None and not compose:
            with ctx.output("transform.json") as tmp:
                shutil.copyfile(ctx.input("transform"), tmp)
        bar(completed=1)
        size = ctx.outputs["model.onnx"].stat().st_size
        if transform is None:
            inputs, columns = "raw", list(schema.feature_names)
        elif compose:
            inputs, columns = "raw", list(transform.input_schema.feature_names)
        else:
            inputs, columns = "components", list(transform.columns)
        ctx.write_json("export.json", {"model": chosen, "family": evaluation["chosen"]["family"],
                                       "path": "model.onnx", "bytes": size,
                                       "max_abs_diff": max_abs_diff, "parity_rows": n_rows,
                                       "atol": self.config["atol"], "inputs": inputs, "input_columns": columns,
                                       "transform": None if transform is None else {
                                           "method": transform.method, "composed": compose,
                                           "path": None if compose else "transform.json"},
                                       **extra})
        ctx.record(model=chosen, bytes=size, max_abs_diff=max_abs_diff)

    def _compose(self, ctx: StepContext, transform: Any, predictor: Any, src: Path, chosen: str,
                 test: Any) -> tuple[float, int, dict[str, Any]]:
        """Write the transform's ONNX front stage composed with the chosen model; check it on raw rows.

        Returns ``(max_abs_diff, parity_rows, extra figures for export.json)``.
        """
        import tempfile

        import numpy as np
        import onnx

        from modelyard.compress import export_onnx
        from modelyard.models import OnnxPredictor

        atol = self.config["atol"]
        n = self.config["parity_rows"]
        components = test.X.head(n)
        if src.suffix == ".onnx":
            downstream = onnx.load(str(src))
            down_diff = float(ctx.read_json(f"fit:{chosen}").get("onnx_max_abs_diff", 0.0))
        else:
            with tempfile.TemporaryDirectory() as tmpdir:
                result = export_onnx(predictor, Path(tmpdir) / "model.onnx", sample=components, atol=atol)
                downstream = onnx.load(str(result.path))
            down_diff = float(result.max_abs_diff)
        data = transform.compose_onnx(downstream).SerializeToString()
        served = OnnxPredictor(data)
        raw = test.frame.head(n)[transform.input_schema.feature_names]
        if predictor.task == "regression":
            expected, got = predictor.predict(components), served.predict(raw)
            bound = atol * max(1.0, float(np.max(np.abs(expected))))
        else:
            expected, got = predictor.predict_proba(components), served.predict_proba(raw)
            bound = atol
        diff = float(np.max(np.abs(expected - got)))
        if not diff <= bound:  # also catches NaN
            raise ModelFormatError(
                f"The {transform.method} transform composed with model {chosen!r} differs from the trained model by "
                f"{diff:.3g} on {len(raw)} raw test rows (atol {bound:.3g}); nothing was written. Raise export.atol "
                "if the difference is expected."
            )
        with ctx.output("model.onnx") as tmp:
            tmp.write_bytes(data)
        return diff, len(raw), {"downstream_max_abs_diff": down_diff}


class CompressStep(Step):
    """Compress the chosen model several ways; measure every variant on ONNX Runtime; record the best.

    The work is :func:`modelyard.compress._step.run_step`: pruned and quantized variants,
    measured on the test split (size raw and gzip, p50/p99 latency, metrics overall and
    per slice), the best chosen on the validation split under ``max_accuracy_drop``.
    Writes ``compress.json``, ``compress.csv``, ``slices.csv``, two PNG plots,
    ``variants/*.onnx`` and ``best.onnx`` (published as ``model.compressed.onnx``). The
    source of :mod:`modelyard.compress._step` and ``_registry`` is part of the cache key.
    """

    kind = "compress"
    VERSION = "1"
    publish = {"best.onnx": "model.compressed.onnx"}

    def code_version(self) -> str:
        import hashlib

        folder = Path(__file__).resolve().parent.parent / "compress"  # read, not imported: no torch on a cached run
        src = b"".join((folder / name).read_bytes() for name in ("_step.py", "_registry.py"))
        return f"{super().code_version()}/compress:{hashlib.sha256(src).hexdigest()[:12]}"

    def run(self, ctx: StepContext) -> None:
        from modelyard.compress._step import run_step

        run_step(ctx, self.config)

    def summary(self, figures: dict[str, Any]) -> str:
        ratio, drop = figures.get("best_size_ratio"), figures.get("best_valid_drop")
        shown = (f" · size ×{ratio:.3g}" if isinstance(ratio, float) else "") + (
            f" · valid drop {drop:+.4f}" if isinstance(drop, float) else "")
        failed = f" · {figures['failed']} failed" if figures.get("failed") else ""
        return f"{figures.get('variants', '?')} variants of {figures.get('model', '?')} · best " \
               f"{figures.get('best', '?')}{shown}{failed}"


class ReportStep(Step):
    """Write metrics.json, the self-contained report.html and model_card.md."""

    kind = "report"
    VERSION = "1"
    publish = {"metrics.json": "metrics.json", "report.html": "report.html", "model_card.md": "model_card.md"}

    def run(self, ctx: StepContext) -> None:
        import datetime as dt

        from modelyard.report import render_html, render_model_card

        evaluation = ctx.read_json("evaluation")
        export = ctx.read_json("export")
        data = ctx.read_json("schema")
        schema = data["schema"]
        rows = ctx.read_json("rows")
        summary = {
            "run_id": ctx.run_id,
            "pipeline": self.config["pipeline"],
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "spec": self.config["spec"],
            "data": {"name": data["name"], "target": schema["target"], "task": schema["task"],
                     "classes": schema.get("classes", []), "sensitive": schema.get("sensitive", []),
                     "rows": rows, "features": [{"name": c["name"], "kind": c["kind"]} for c in schema["features"]],
                     "sources": data["sources"]},
            "models": evaluation["models"],
            "search": ctx.read_json("search") if "search" in ctx.input_paths else None,
            "automl": ctx.read_json("automl") if "automl" in ctx.input_paths else None,
            "features": None,
            "chosen": {**evaluation["chosen"], "onnx": {"path": "model.onnx", "bytes": export["bytes"],
                                                        "max_abs_diff": export["max_abs_diff"],
                                                        "parity_rows": export["parity_rows"],
                                                        "inputs": export.get("inputs", "raw"),
                                                        "transform": export.get("transform")}},
        }
        if "features" in ctx.input_paths:
            # How the exported model is served after the features step: raw columns (selection,
            # or PCA/ICA composed in front) or components with transform.json beside it (NMF).
            summary["features"] = {**ctx.read_json("features"),
                                   "serving": {"inputs": export.get("inputs", "raw"),
                                               "transform": export.get("transform")}}
        if "explain" in ctx.input_paths:
            summary["explain"] = ctx.read_json("explain")
        if "compress" in ctx.input_paths:
            summary["compress"] = ctx.read_json("compress")
        if "remediation" in ctx.input_paths:
            summary["remediation"] = ctx.read_json("remediation")
        # The evaluate step's fairness indicators (its fairness.json) and gate verdict (from blessing.json).
        for part in ("fairness", "gate"):
            if evaluation.get(part) is not None:
                summary[part] = evaluation[part]
        ctx.write_json("metrics.json", summary)
        if self.config["format"] == "html":
            ctx.write_text("report.html", render_html(summary))
        if self.config["model_card"]:
            ctx.write_text("model_card.md", render_model_card(summary))
        chosen = evaluation["chosen"]["model"]
        ctx.record(chosen=chosen)


def build_steps(spec: PipelineSpec, resolved: dict[str, Any]) -> list[Step]:
    """The steps of ``spec`` in execution order, with their configs and input references.

    With a ``features:`` section, a :class:`FeaturesStep` follows the data step and the
    search, automl, train, evaluate and export steps read its splits and schema instead
    of the data step's; the export step also reads its ``transform.json`` (extraction).

    On a built-in image data set the data, train, evaluate, compress and export steps are
    those of :mod:`modelyard.pipeline._image` (same names and roles, splits as ``.npz``);
    a ``nas:`` section adds the :class:`~modelyard.pipeline._nas_step.NASStep` before the
    train steps, its best network a candidate ``nas``.
    """
    from modelyard.pipeline import _image

    data_cfg = dict(resolved["data"])
    image = is_image_source(data_cfg["source"])
    ext = "npz" if image else "parquet"
    data_step, train_step, evaluate_step, compress_step, export_step = (
        (_image.ImageDataStep, _image.ImageTrainStep, _image.ImageEvaluateStep, _image.ImageCompressStep,
         _image.ImageExportStep) if image else (DataStep, TrainStep, EvaluateStep, CompressStep, ExportStep))
    steps: list[Step] = [data_step("data", data_cfg)]
    source = "data"
    features = resolved.get("features")
    if features is not None:
        steps.append(FeaturesStep("features", dict(features),
                                  {**{name: f"data:{name}.parquet" for name in _SPLITS}, "schema": "data:schema.json"}))
        source = "features"
    data_in = {"train": f"{source}:train.{ext}", "valid": f"{source}:valid.{ext}",
               "schema": f"{source}:schema.json"}
    model_inputs: dict[str, str] = {}
    search = resolved.get("search")
    if search is not None:
        search_cfg = {**search, "study_name": f"{spec.name}-search"}
        steps.append(SearchStep("search", search_cfg, dict(data_in)))
        if len(search["objectives"] or [None]) == 1:
            model_file = "model.safetensors" if search["family"] == "mlp" else "model.onnx"
            model_inputs["model:search"] = f"search:{model_file}"
            model_inputs["fit:search"] = "search:fit.json"
    automl_cfg = resolved.get("automl")
    if automl_cfg is not None:
        steps.append(AutoMLStep("automl", dict(automl_cfg), dict(data_in)))
        model_inputs["model:automl"] = "automl:model.onnx"
        model_inputs["fit:automl"] = "automl:fit.json"
    nas_cfg = resolved.get("nas")
    if nas_cfg is not None:  # image data only (the spec refuses nas on tabular data)
        from modelyard.pipeline._nas_step import NASStep

        steps.append(NASStep("nas", dict(nas_cfg), dict(data_in)))
        model_inputs["model:nas"] = "nas:model.safetensors"
        model_inputs["fit:nas"] = "nas:fit.json"
    for name, model in resolved["train"]["models"].items():
        steps.append(train_step(f"train.{name}", dict(model), dict(data_in)))
        model_file = "model.safetensors" if model["family"] in TORCH_FAMILIES else "model.onnx"
        model_inputs[f"model:{name}"] = f"train.{name}:{model_file}"
        model_inputs[f"fit:{name}"] = f"train.{name}:fit.json"
    eval_cfg = {**resolved["evaluate"], "select": resolved["train"]["select"]}
    steps.append(evaluate_step("evaluate", eval_cfg, {"valid": f"{source}:valid.{ext}",
                                                      "test": f"{source}:test.{ext}",
                                                      "schema": f"{source}:schema.json", **model_inputs}))
    explain_cfg = resolved.get("explain")
    if explain_cfg is not None and image:  # heatmaps of images: the split's .npz, no background table
        steps.append(_image.ImageExplainStep("explain", dict(explain_cfg), {
            "evaluation": "evaluate:evaluation.json", "split": f"{source}:{explain_cfg['split']}.npz",
            **{k: v for k, v in model_inputs.items() if k.startswith("model:")}}))
    elif explain_cfg is not None:
        steps.append(ExplainStep("explain", dict(explain_cfg), {
            "evaluation": "evaluate:evaluation.json", "split": f"{source}:{explain_cfg['split']}.parquet",
            "train": f"{source}:train.parquet", "schema": f"{source}:schema.json",
            **{k: v for k, v in model_inputs.items() if k.startswith("model:")}}))
    compress_cfg = resolved.get("compress")
    if compress_cfg is not None:
        compress_cfg = {**compress_cfg, "slices": resolved["evaluate"]["slices"],
                        "metrics": resolved["evaluate"]["metrics"]}
        steps.append(compress_step("compress", compress_cfg, {
            "evaluation": "evaluate:evaluation.json", "schema": f"{source}:schema.json",
            **{name: f"{source}:{name}.{ext}" for name in _SPLITS},
            **{k: v for k, v in model_inputs.items() if k.startswith("model:")}}))
    export_inputs = {"evaluation": "evaluate:evaluation.json", "test": f"{source}:test.{ext}",
                     "schema": f"{source}:schema.json", **model_inputs}
    if features is not None and features["method"] in FEATURE_EXTRACTION:
        export_inputs["transform"] = "features:transform.json"
    steps.append(export_step("export", dict(resolved["export"]), export_inputs))
    remediation_cfg = resolved.get("remediation")
    if remediation_cfg is not None:  # tabular only (the spec refuses it on image data); the data step's splits
        from modelyard.pipeline._remediation_step import RemediationStep

        steps.append(RemediationStep("remediation", dict(remediation_cfg), {
            **{name: f"data:{name}.parquet" for name in _SPLITS}, "schema": "data:schema.json"}))
    report_inputs = {"evaluation": "evaluate:evaluation.json", "export": "export:export.json",
                     "schema": "data:schema.json", "rows": "data:rows.json"}
    if features is not None:
        report_inputs["features"] = "features:features.json"
    if search is not None:
        report_inputs["search"] = "search:search.json"
    if automl_cfg is not None:
        report_inputs["automl"] = "automl:automl.json"
    if explain_cfg is not None:
        report_inputs["explain"] = "explain:explain.json"
    if compress_cfg is not None:
        report_inputs["compress"] = "compress:compress.json"
    if remediation_cfg is not None:
        report_inputs["remediation"] = "remediation:remediation.json"
    steps.append(ReportStep("report", {**resolved["report"], "pipeline": spec.name, "spec": resolved},
                            report_inputs))
    return steps

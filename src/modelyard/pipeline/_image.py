"""The steps of a pipeline on a built-in image data set (``data: {source: fashion_mnist}``).

:func:`~modelyard.pipeline._stages.build_steps` uses these in place of the tabular
steps when ``data.source`` is an image data set. They keep the tabular steps' names,
folders and artifact roles, so the report step and the metadata store see the same
shapes:

* ``data``: ``train.npz``, ``valid.npz``, ``test.npz`` (uint8 images ``x`` (N, C, H, W) and
  int64 labels ``y``, written by :func:`modelyard.data.save_image_split`: deterministic
  bytes, read back with ``allow_pickle=False``), ``schema.json`` (``kind: image``, the
  class names, the image shape, task multiclass, target ``label``, no columns) and
  ``rows.json``.
* ``train.<name>``: a ``cnn`` family model (:class:`~modelyard.models.ImageNetConfig`,
  :func:`~modelyard.train.fit_image`) as ``model.safetensors``, plus ``fit.json``.
* ``evaluate``: every model on valid (selection) and test, overall and per true class
  (the slice ``class``); the same ``evaluation.json`` shape as for tabular data.
* ``compress``: :func:`~modelyard.compress._step.compress_variants` on the image splits
  (measured per true class); the same outputs as the tabular compress step.
* ``explain``: heatmaps of chosen images of a split for the chosen (or named) model:
  integrated gradients, gradient saliency and LIME on superpixels, one PNG per image
  and ``explain.json`` (:func:`~modelyard.explain._step.explain_model`).
* ``export``: ``model.onnx`` with one input ``image`` (float32 ``[N, C, H, W]`` in
  ``[0, 1]``) and output ``probabilities``, parity checked on test images.

With a ``nas:`` section the ``nas`` step (:mod:`modelyard.pipeline._nas_step`) adds the
candidate ``nas``; these steps load every model with :func:`load_image_model`, which
also reads its ``model.safetensors`` (family ``nas``).

Each step's code version covers this module and :mod:`modelyard.pipeline._stages`.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import time
from typing import Any, ClassVar

from modelyard.errors import DataError, SpecError
from modelyard.pipeline._stages import _SPLITS, CompressStep, DataStep, ExplainStep, _jsonable
from modelyard.pipeline._step import Step, StepContext

__all__ = ["IMAGE_SLICE", "ImageCompressStep", "ImageDataStep", "ImageEvaluateStep", "ImageExplainStep",
           "ImageExportStep", "ImageTrainStep", "image_report", "load_image_model", "read_image_split"]

#: The slice of an image evaluation: one group per true class.
IMAGE_SLICE = "class"
#: Metrics of an image evaluation when ``evaluate.metrics`` is not given (count is always added).
IMAGE_METRICS = ("accuracy", "log_loss")


def read_image_split(ctx: StepContext, role: str) -> Any:
    """The :class:`~modelyard.data.ImageSplit` of input ``role`` (an ``.npz`` of the data step)."""
    from modelyard.data import load_image_split

    return load_image_split(ctx.input(role))


def load_image_model(path: Any) -> Any:
    """A model of an image pipeline: :func:`~modelyard.models.load_predictor`'s, or the nas step's network.

    The nas step's ``model.safetensors`` (family ``nas``, see
    :mod:`modelyard.pipeline._nas_step`) loads as an image predictor like a ``cnn`` model.
    """
    from modelyard.pipeline._nas_step import is_nas_model, load_nas_predictor

    if is_nas_model(path):
        return load_nas_predictor(path)
    from modelyard.models import load_predictor

    return load_predictor(path)


def _classes(ctx: StepContext) -> list[str]:
    meta = ctx.read_json("schema")
    if meta.get("kind") != "image":
        raise DataError("The data step wrote tabular data, but this step trains on images; re-run the pipeline.")
    return [str(c) for c in meta["schema"]["classes"]]


class _ImageStep:
    """Adds the tabular steps' module to the code version (these steps reuse its helpers)."""

    def code_version(self) -> str:
        from modelyard.pipeline import _stages

        base = super().code_version()  # type: ignore[misc]
        digest = hashlib.sha256(inspect.getsource(_stages).encode()).hexdigest()[:12]
        return f"{base}/stages:{digest}"


class ImageDataStep(_ImageStep, DataStep):
    """Load a built-in image data set, split and optionally subsample it, write the splits as ``.npz``."""

    kind = "data"
    VERSION = "1"

    def run(self, ctx: StepContext) -> None:
        from modelyard import data as mydata

        cfg = self.config
        split = cfg["split"]
        source = cfg["source"]
        bar = ctx.progress("loading images", None)
        test = split["test"]
        data = mydata.load(source, test=None if test == "official" else test, valid=split["valid"],
                           seed=split["seed"])
        if not isinstance(data, mydata.ImageData):
            raise SpecError(f"data.source: {source!r} is a tabular data set, not images; use the tabular families "
                            "(mlp, gbm, lattice) on it.")
        splits = dict(data.splits)
        sub = cfg.get("subsample") or {}
        for name in _SPLITS:
            n = sub.get(name)
            if n:
                part = splits[name]
                keep = mydata.subsample_indices(part.y, n, seed=sub.get("seed", 0))
                splits[name] = mydata.ImageSplit(part.x[keep], part.y[keep])
        bar(completed=1, total=1)
        for name in _SPLITS:
            with ctx.output(f"{name}.npz") as tmp:
                mydata.save_image_split(splits[name], tmp)
        shape = [int(v) for v in data.image_shape]
        ctx.write_json("schema.json", {
            "name": data.name, "kind": "image", "sources": data.sources,
            "schema": {"target": "label", "task": "multiclass", "classes": list(data.classes), "sensitive": [],
                       "features": [], "image_shape": shape},
        })
        ctx.write_json("rows.json", {name: len(splits[name]) for name in _SPLITS})
        ctx.record(rows_train=len(splits["train"]), rows_valid=len(splits["valid"]), rows_test=len(splits["test"]),
                   classes=len(data.classes), image_shape="×".join(map(str, shape)), task="multiclass")

    def summary(self, figures: dict[str, Any]) -> str:
        return (f"{figures.get('rows_train', 0):,} train · {figures.get('rows_valid', 0):,} valid · "
                f"{figures.get('rows_test', 0):,} test images of {figures.get('image_shape', '?')}, "
                f"{figures.get('classes', '?')} classes")


class ImageTrainStep(_ImageStep, Step):
    """Fit one image classifier (``family: cnn``, an :class:`~modelyard.models.ImageNetConfig`) and store it safely."""

    kind = "train"
    VERSION = "1"

    def run(self, ctx: StepContext) -> None:
        import numpy as np

        from modelyard.models import ImageNetConfig, save_torch
        from modelyard.train import fit_image

        classes = _classes(ctx)
        train, valid = read_image_split(ctx, "train"), read_image_split(ctx, "valid")
        config = ImageNetConfig.model_validate({k: v for k, v in self.config.items() if k != "family"})
        bar = ctx.progress(f"training {self.config['family']} ({config.arch})", config.max_epochs)

        def on_epoch(epoch: int, max_epochs: int, logs: dict[str, float]) -> None:
            info = " ".join(f"{k} {v:.4f}" for k, v in logs.items() if isinstance(v, float))
            bar(completed=epoch, info=info)

        t0 = time.perf_counter()
        predictor = fit_image(train, valid, config, classes=classes, callback=on_epoch)
        fit_seconds = time.perf_counter() - t0
        with ctx.output("model.safetensors") as tmp:
            save_torch(predictor, tmp)
        valid_accuracy = float(np.mean(predictor.predict(valid.x) == valid.y))
        extra: dict[str, Any] = {"arch": config.arch,
                                 "n_params": int(sum(p.numel() for p in predictor.module.parameters()))}
        if getattr(predictor, "history_", None):
            extra["history"] = predictor.history_
        if getattr(predictor, "best_epoch_", None) is not None:
            extra["best_epoch"] = predictor.best_epoch_
        ctx.write_json("fit.json", {"family": self.config["family"], "fit_seconds": round(fit_seconds, 3),
                                    "valid_accuracy": valid_accuracy, **_jsonable(extra)})
        ctx.record(fit_seconds=round(fit_seconds, 2), valid_accuracy=valid_accuracy)


def image_report(predictor: Any, split: Any, classes: list[str], slices: list[str], metrics: list[str] | None,
                 **intervals: Any) -> Any:
    """A :class:`~modelyard.evaluate.SliceReport` of an image classifier on ``split``.

    ``slices`` is ``["class"]`` (one group per true class, named by the class name) or
    empty; ``metrics`` default to accuracy and log-loss; ``intervals`` (``bootstrap``,
    ``confidence``, ``seed``) go to the report as they do for tabular data.
    """
    import pandas as pd

    from modelyard.evaluate import SliceReport

    proba = predictor.predict_proba(split.x)  # (N, n_classes)
    frame = pd.DataFrame({IMAGE_SLICE: pd.Categorical.from_codes(split.y, categories=list(classes))})
    try:
        return SliceReport(y_true=split.y, y_score=proba, frame=frame, slices=list(slices),
                           metrics=list(metrics) if metrics is not None else list(IMAGE_METRICS), task="multiclass",
                           **intervals)
    except ValueError as exc:  # a metric that does not apply to a multiclass classifier
        raise SpecError(f"evaluate.metrics: {exc}") from None


class ImageEvaluateStep(_ImageStep, Step):
    """Score every image model on valid (for selection) and test (overall and per true class)."""

    kind = "evaluate"
    VERSION = "1"

    def run(self, ctx: StepContext) -> None:
        from modelyard.evaluate import METRICS

        classes = _classes(ctx)
        valid, test = read_image_split(ctx, "valid"), read_image_split(ctx, "test")
        slices = self.config["slices"]
        slices = [IMAGE_SLICE] if slices is None else list(slices)
        metrics = self.config["metrics"]
        models = [role.removeprefix("model:") for role in self.inputs if role.startswith("model:")]
        # Test metrics get seeded Poisson-bootstrap intervals, as in the tabular evaluate step.
        intervals = {"bootstrap": int(self.config.get("bootstrap", 0)),
                     "confidence": float(self.config.get("confidence", 0.95)), "seed": 0}
        bar = ctx.progress("evaluating", len(models))
        out: dict[str, Any] = {}
        for name in models:
            predictor = load_image_model(ctx.input(f"model:{name}"))
            fit = ctx.read_json(f"fit:{name}")
            v = image_report(predictor, valid, classes, [], metrics)
            t = image_report(predictor, test, classes, slices, metrics, **intervals)
            out[name] = {"family": fit["family"], "fit_seconds": fit["fit_seconds"], "valid": v.to_dict(),
                         "test": t.to_dict()}
            if isinstance(fit.get("nas"), dict):  # the nas step's search summary, for the report
                out[name]["nas"] = fit["nas"]
            bar(advance=1)
        select = self.config["select"]
        metric = select["metric"] or "accuracy"
        mode = select.get("mode")
        if metric not in METRICS:
            raise SpecError(f"train.select.metric: unknown metric {metric!r}; known: {METRICS.names()}.")
        if mode is None:
            mode = "max" if METRICS.get(metric).greater_is_better else "min"
        scores = {}
        for name, entry in out.items():
            value = entry["valid"]["overall"].get(metric)
            if value is None:
                raise SpecError(f"train.select.metric: {metric!r} was not computed on the validation split; choose "
                                f"one of {sorted(entry['valid']['overall'])} or add it to evaluate.metrics.")
            scores[name] = float(value)
        finite = {k: v for k, v in scores.items() if not math.isnan(v)}
        if not finite:
            raise DataError(f"Every model's validation {metric} is NaN; choose another train.select.metric.")
        chosen = (min if mode == "min" else max)(finite, key=lambda k: (finite[k], -list(finite).index(k)))
        ctx.write_json("evaluation.json", _jsonable({
            "models": out,
            "chosen": {"model": chosen, "metric": metric, "mode": mode, "split": "valid", "value": finite[chosen],
                       "family": out[chosen]["family"]},
        }))
        ctx.record(chosen=chosen, **{f"test_{metric}_{n}": out[n]["test"]["overall"].get(metric) for n in out})


class ImageExplainStep(_ImageStep, ExplainStep):
    """The explain step on image splits: IG, saliency and LIME heatmaps of the chosen images."""

    def run(self, ctx: StepContext) -> None:
        from modelyard.explain._step import ExplainOptions, explain_model, explained_model, save_figures

        config = self.config
        name, role, family = explained_model(config, ctx)
        split = config.get("split", "test")
        data = read_image_split(ctx, "split")
        predictor = load_image_model(ctx.input(role))  # a cnn, or the nas step's network
        options = ExplainOptions.from_config(config)
        bar = ctx.progress(f"explaining {name} ({len(options.rows)} image(s))", 1)
        result = explain_model(predictor, (data.x, data.y), options=options, model=name, split=split, family=family)
        bar(completed=1)
        result["plots"] = save_figures(result, ".", output=ctx.output)
        ctx.write_json("explain.json", result)
        ctx.record(model=name, methods=",".join(result["methods"]), rows=len(result["rows"]))


class ImageCompressStep(_ImageStep, CompressStep):
    """The compress step on image splits: variants measured on ONNX Runtime per true class."""

    def run(self, ctx: StepContext) -> None:
        import tempfile

        from modelyard.compress._step import compress_variants, write_outputs

        config = self.config
        splits = {n: read_image_split(ctx, n) for n in _SPLITS}
        evaluation = ctx.read_json("evaluation")
        name = evaluation["chosen"]["model"] if config["model"] == "chosen" else config["model"]
        raw = config.get("variants")
        entries = None if raw is None else [{k: v for k, v in e.items() if v is not None} for e in raw]
        bar = ctx.progress(f"compressing {name}", None if entries is None else len(entries) + 2)
        done = [0]

        def progress(message: str) -> None:
            bar(completed=done[0], info=message)
            done[0] += 1

        model = load_image_model(ctx.input(f"model:{name}"))  # a cnn, or the nas step's network
        with tempfile.TemporaryDirectory(prefix="modelyard-compress-") as tmp:
            result = compress_variants(
                model, splits["train"], splits["valid"], splits["test"], tmp, entries,
                metric=config.get("metric"), max_accuracy_drop=config["max_accuracy_drop"], prefer=config["prefer"],
                batch_sizes=tuple(config["batch_sizes"]), repeats=config["repeats"], warmup=config["warmup"],
                threads=config["threads"], calibration_rows=config["calibration_rows"], rows=config.get("rows"),
                seed=config["seed"], progress=progress,
            )
            result.extra.update(model=name, family=evaluation["models"].get(name, {}).get("family"))
            write_outputs(result, ctx.output)
        bar(completed=done[0], total=done[0], info="")
        table = result.table.set_index("variant")
        best = table.loc[result.best]
        ctx.record(model=name, best=result.best, variants=int(len(table) - 1),
                   failed=int((table["error"].fillna("") != "").sum()),
                   best_size_ratio=float(best["size_ratio"]), best_valid_drop=float(best["valid_drop"]),
                   **{f"best_{result.metric}": float(best[result.metric])})


class ImageExportStep(_ImageStep, Step):
    """Export the chosen image model to ONNX (input ``image``) and check parity on test images."""

    kind = "export"
    VERSION = "1"
    publish: ClassVar[dict[str, str]] = {"model.onnx": "model.onnx"}

    def run(self, ctx: StepContext) -> None:
        from modelyard.compress import export_onnx

        evaluation = ctx.read_json("evaluation")
        chosen = evaluation["chosen"]["model"]
        classes = _classes(ctx)
        test = read_image_split(ctx, "test")
        bar = ctx.progress(f"exporting {chosen} to ONNX", 1)
        predictor = load_image_model(ctx.input(f"model:{chosen}"))
        atol = self.config["atol"]
        with ctx.output("model.onnx") as tmp:
            result = export_onnx(predictor, tmp, sample=test.x[: self.config["parity_rows"]], atol=atol)
        bar(completed=1)
        size = ctx.outputs["model.onnx"].stat().st_size
        max_abs_diff = float(result.max_abs_diff)
        ctx.write_json("export.json", {
            "model": chosen, "family": evaluation["chosen"]["family"], "path": "model.onnx", "bytes": size,
            "max_abs_diff": max_abs_diff, "parity_rows": int(result.n_rows), "atol": atol, "inputs": "image",
            "input_columns": [], "image_shape": list(predictor.image_shape), "classes": classes, "transform": None,
        })
        ctx.record(model=chosen, bytes=size, max_abs_diff=max_abs_diff)

"""Objectives of a search: validation metrics and costs.

A named objective is either a metric of :data:`modelyard.evaluate.METRICS` computed on
the validation split (its direction from ``greater_is_better``) or a cost, minimized:

* ``n_params``: parameters of a torch model; for gradient boosting, the total number
  of tree nodes (what the model stores and walks).
* ``latency_ms``: median ONNX Runtime time of ``predict_proba`` (``predict`` for
  regression) on a batch of validation rows, measured on the exported model.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.errors import SpecError

__all__ = ["COSTS", "Objective", "latency_ms", "n_params", "resolve_objectives"]

UNKNOWN_OBJECTIVE = "Unknown objective {name!r} for a {task} task; known: {known}."
UNFIT_OBJECTIVE = (
    "Objective {name!r} cannot be computed for a {task} task; use one of {known}."
)
NO_OBJECTIVES = "A search needs at least one objective, e.g. objectives=('accuracy',)."
DUPLICATE_OBJECTIVE = "Objective {name!r} is given twice; give each objective once."


def n_params(predictor: Any) -> int:
    """Parameter count of a torch model, or total tree nodes of a gradient-boosting model.

    Parameters
    ----------
    predictor : TorchPredictor, SklearnPredictor (HistGradientBoosting), torch.nn.Module

    Returns
    -------
    int
    """
    module = getattr(predictor, "module", predictor)
    if hasattr(module, "parameters") and callable(module.parameters):
        return int(sum(p.numel() for p in module.parameters()))
    estimator = getattr(predictor, "estimator", predictor)
    trees = getattr(
        estimator, "_predictors", None
    )  # HistGradientBoosting: [iteration][class] -> TreePredictor
    if trees is not None:
        return int(sum(len(tree.nodes) for per_iter in trees for tree in per_iter))
    raise TypeError(
        f"n_params needs a torch model or a fitted HistGradientBoosting model; got {type(predictor).__name__}."
    )


def latency_ms(
    predictor: Any, X: Any, *, batch_size: int = 256, repeats: int = 5
) -> float:
    """Median ONNX Runtime latency in milliseconds of the exported model on one batch.

    The model is exported with :func:`modelyard.compress.export_onnx` to a temporary
    file (parity checked), loaded as an :class:`~modelyard.models.OnnxPredictor`, run
    once to warm up and then ``repeats`` times.

    Parameters
    ----------
    predictor : Predictor
        A model with an ONNX exporter.
    X : pandas.DataFrame
        Raw rows; the first ``batch_size`` form the batch.
    batch_size : int, default=256
    repeats : int, default=5

    Returns
    -------
    float
    """
    from modelyard.compress import export_onnx
    from modelyard.models import OnnxPredictor

    batch = X.iloc[:batch_size]
    with tempfile.TemporaryDirectory(prefix="modelyard-latency-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(predictor, path, sample=batch.iloc[:64])
        onnx_model = OnnxPredictor(path)
    run = (
        onnx_model.predict
        if onnx_model.task == "regression"
        else onnx_model.predict_proba
    )
    run(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(batch)
        times.append((time.perf_counter() - start) * 1e3)
    return float(statistics.median(times))


#: Cost objectives (always minimized): name -> fn(predictor, valid_split) -> float.
COSTS: dict[str, Callable[[Any, Any], float]] = {
    "n_params": lambda predictor, split: float(n_params(predictor)),
    "latency_ms": lambda predictor, split: latency_ms(predictor, split.X),
}


@dataclass(frozen=True)
class Objective:
    """One objective of a search.

    Attributes
    ----------
    name : str
    direction : {"maximize", "minimize"}
    kind : {"metric", "cost"}
    """

    name: str
    direction: str
    kind: str

    def compute(self, predictor: Any, split: Any) -> float:
        """The objective's value for ``predictor`` on ``split`` (a ``TabularSplit``, the validation rows)."""
        if self.kind == "cost":
            return COSTS[self.name](predictor, split)
        from modelyard.evaluate import METRICS

        metric = METRICS.get(self.name)
        score = (
            predictor.predict(split.X)
            if split.schema.task == "regression"
            else predictor.predict_proba(split.X)
        )
        return float(metric(split.y, score))


def _fit_names(task: str) -> list[str]:
    from modelyard.evaluate import METRICS

    fit = [
        n
        for n in METRICS.names()
        if task in METRICS.get(n).tasks and METRICS.get(n).greater_is_better is not None
    ]
    return sorted(fit) + list(COSTS)


def resolve_objectives(objectives: str | Sequence[str], task: str) -> list[Objective]:
    """Check objective names against the task and return them with their directions.

    Parameters
    ----------
    objectives : str or sequence of str
    task : {"binary", "multiclass", "regression"}

    Raises
    ------
    SpecError
        An empty list, a repeated name, an unknown name, or a metric the task cannot
        compute (``rmse`` for a classifier, ``auc`` for regression); the message lists
        the objectives the task supports.
    """
    from modelyard.evaluate import METRICS

    names = [objectives] if isinstance(objectives, str) else list(objectives)
    if not names:
        raise SpecError(NO_OBJECTIVES)
    out: list[Objective] = []
    for name in names:
        if name in (o.name for o in out):
            raise SpecError(DUPLICATE_OBJECTIVE.format(name=name))
        if name in COSTS:
            out.append(Objective(name, "minimize", "cost"))
            continue
        if name not in METRICS:
            raise SpecError(
                UNKNOWN_OBJECTIVE.format(name=name, task=task, known=_fit_names(task))
            )
        metric = METRICS.get(name)
        if task not in metric.tasks or metric.greater_is_better is None:
            raise SpecError(
                UNFIT_OBJECTIVE.format(name=name, task=task, known=_fit_names(task))
            )
        out.append(
            Objective(
                name, "maximize" if metric.greater_is_better else "minimize", "metric"
            )
        )
    return out

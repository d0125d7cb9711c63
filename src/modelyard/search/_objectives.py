"""Objectives of a search: validation metrics and costs.

A named objective is either a metric of :data:`modelyard.evaluate.METRICS` computed on
the validation split (its direction from ``greater_is_better``) or a cost, minimized:

* ``n_params``: parameters of a torch model; for gradient boosting, the total number
  of tree nodes (what the model stores and walks).
* ``flops``: multiply-adds to predict one row: counted layer by layer on a forward pass
  for torch models (:func:`module_flops`); for gradient boosting, the node comparisons
  of the longest root-to-leaf path of every tree (an upper bound of the work per row).
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

__all__ = ["COSTS", "Objective", "flops", "latency_ms", "module_flops", "n_params", "resolve_objectives"]

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


def module_flops(module: Any, *inputs: Any) -> int:
    """Multiply-adds of one forward pass of a torch ``module`` on ``inputs``, per input row.

    Counted with forward hooks on the layers that do the arithmetic: ``Linear``
    (in x out per row, over every leading position), ``Conv1d/2d/3d`` (kernel volume x
    in/groups x out per output position), ``ConvTranspose`` likewise per input
    position, and ``MultiheadAttention``'s projections through its ``Linear`` children.
    Bias adds, activations, pooling, normalization and embeddings (lookups) are not
    counted, as is usual for FLOPs tables (e.g. the PNAS and MobileNet papers).

    Parameters
    ----------
    module : torch.nn.Module
    *inputs : torch.Tensor
        A batch; the first dimension is the batch (rows).

    Returns
    -------
    int
        Multiply-adds per row (total over the batch divided by the batch size).
    """
    import torch
    from torch import nn

    total = 0

    def linear(m: nn.Linear, args: tuple[Any, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    def conv(m: nn.modules.conv._ConvNd, args: tuple[Any, ...], out: torch.Tensor) -> None:
        nonlocal total
        per_out = (m.in_channels // m.groups) * int(torch.tensor(m.kernel_size).prod())
        if m.transposed:  # every input position scatters into a kernel-sized window
            x = args[0]
            total += x.numel() * (m.out_channels // m.groups) * int(torch.tensor(m.kernel_size).prod())
        else:
            total += out.numel() * per_out

    handles = []
    for m in module.modules():
        if isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear))
        elif isinstance(m, nn.modules.conv._ConvNd):
            handles.append(m.register_forward_hook(conv))
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            module(*inputs)
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    rows = int(inputs[0].shape[0]) if inputs and hasattr(inputs[0], "shape") else 1
    return total // max(rows, 1)


def flops(predictor: Any, X: Any) -> int:
    """Multiply-adds to predict one row of ``X`` (see the module docstring).

    Parameters
    ----------
    predictor : TorchPredictor or SklearnPredictor (HistGradientBoosting)
    X : pandas.DataFrame
        Raw rows; the first one is run through a torch model.

    Returns
    -------
    int
    """
    module = getattr(predictor, "module", None)
    if module is not None and hasattr(module, "parameters"):
        import torch

        from modelyard.data import encode_frame

        x_num, x_cat = encode_frame(X.iloc[:1], predictor.schema)
        count = module_flops(module, torch.from_numpy(x_num), torch.from_numpy(x_cat))
        if getattr(module, "periodic", False):  # the PLR embedding is an einsum, not a Linear
            n_num, k = module.frequencies.shape
            count += n_num * k + int(module.periodic_weight.numel())  # x*c, then [sin, cos] @ W per column
        return count
    estimator = getattr(predictor, "estimator", predictor)
    trees = getattr(estimator, "_predictors", None)
    if trees is not None:
        return int(sum(tree.get_max_depth() for per_iter in trees for tree in per_iter))
    raise TypeError(
        f"flops needs a torch model or a fitted HistGradientBoosting model; got {type(predictor).__name__}."
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
    "flops": lambda predictor, split: float(flops(predictor, split.X)),
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

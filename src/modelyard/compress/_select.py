"""Accuracy-aware choice of a quantized variant: the fastest one within an accuracy budget.

:func:`select_quantized` quantizes one exported model in several ways (dynamic and
static int8 with each calibration method, per tensor and per channel, float16, and
any variants made elsewhere such as a QAT export), measures every one with
:func:`modelyard.compress.measure` (size, ONNX Runtime latency, metrics), and keeps
the fastest whose metric lies within ``budget`` of the float model's. The rule,
:func:`choose_variant`, is a pure function of the measurement table:

1. a variant is *within budget* if its drop of ``metric`` (float minus variant for
   metrics where higher is better, variant minus float otherwise) is at most ``budget``;
2. it is *not slower* if its p50 latency is at most the float model's divided by
   ``min_speedup`` at every batch size measured: a quantized model that is slower
   than the float one is never chosen (ONNX Runtime falls back to slow kernels for
   some operators, e.g. dynamic int8 convolutions ran 7-12x slower than float). The
   float model is timed before and after the variants and its faster timing counts,
   so a burst of load during one timing cannot make a slow variant pass;
3. among variants both within budget and not slower, the one with the lowest p50 at
   ``batch_size`` wins (with ``batch_size=None``, the lowest geometric mean over the
   measured batch sizes of p50 relative to the float model, so a variant that is fast
   at batch 64 but slow at batch 1 does not win on one number); if there is none, the
   float model is kept, and the reason says which condition failed.

**Per-layer fallback.** When the fastest int8 variant that is not slower misses the
budget, each quantizable layer (Conv, MatMul, Gemm) is quantized alone with that
variant's settings and its metric drop measured; then the most harmful layers are
left in float one at a time (``nodes_to_exclude``) until the variant is within budget
(a layer with outlier weights, which per-tensor int8 cannot resolve, is the typical
culprit). Each attempt is measured and added to the table, so the same rule decides.

Nothing here modifies the source model; every file is written atomically.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelyard._atomic import atomic_write_bytes
from modelyard.compress._measure import Measurement, measure
from modelyard.compress._quantize import (
    CalibrationReader,
    QuantSpec,
    _load,
    prepare_for_quantization,
    quantizable_nodes,
    quantize,
)

__all__ = ["REFERENCE", "Selection", "choose_variant", "default_candidates", "select_quantized"]

#: Name of the float model's row in a selection table.
REFERENCE = "fp32"


def default_candidates() -> list[QuantSpec]:
    """The variants :func:`select_quantized` tries by default.

    Dynamic int8 (per tensor and per channel); static int8 QDQ with uint8 activations
    (U8S8) calibrated by min-max, entropy and percentile, each per tensor and per
    channel; static S8S8 QDQ and U8S8 QOperator with min-max (other kernels, sometimes
    faster on other CPUs); float16.
    """
    specs = [QuantSpec(mode="dynamic"), QuantSpec(mode="dynamic", per_channel=True)]
    for method in ("minmax", "entropy", "percentile"):
        for per_channel in (False, True):
            specs.append(QuantSpec(mode="static", method=method, per_channel=per_channel))
    specs += [
        QuantSpec(mode="static", activation_type="int8"),
        QuantSpec(mode="static", quant_format="qoperator"),
        QuantSpec(mode="fp16"),
    ]
    return specs


def _greater_is_better(metric: str) -> bool:
    from modelyard.evaluate import METRICS

    try:
        fn = METRICS.get(metric)
    except (KeyError, ValueError):
        return True
    flag = getattr(fn, "greater_is_better", None)
    return True if flag is None else bool(flag)


def _latency_columns(table: pd.DataFrame) -> list[str]:
    return sorted((c for c in table.columns if c.startswith("p50_ms_b")), key=lambda c: int(c[len("p50_ms_b"):]))


def choose_variant(
    table: pd.DataFrame,
    *,
    metric: str = "accuracy",
    budget: float = 0.005,
    batch_size: int | None = 64,
    reference: str = REFERENCE,
    greater_is_better: bool | None = None,
    min_speedup: float = 1.0,
) -> tuple[str, pd.DataFrame, str]:
    """Apply the selection rule to a measurement table.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per variant with columns ``variant``, ``metric`` and ``p50_ms_b<B>``
        for each batch size measured (as :meth:`Measurement.row` gives); the row of
        ``reference`` is the float model. Rows with a non-empty ``error`` are ignored.
    metric : str, default="accuracy"
    budget : float, default=0.005
        Largest allowed drop of ``metric`` (0.005 = half a point of accuracy).
    batch_size : int or None, default=64
        The batch size whose p50 latency ranks the variants; None ranks by the
        geometric mean over all measured batch sizes of p50 / reference p50.
    reference : str, default="fp32"
    greater_is_better : bool or None, default=None
        Direction of ``metric``; looked up in :data:`modelyard.evaluate.METRICS` if None.
    min_speedup : float, default=1.0
        A variant must be at least this much faster than the reference at every batch
        size (1.0: not slower).

    Returns
    -------
    chosen : str
        The winning variant, or ``reference``.
    table : pandas.DataFrame
        A copy with columns ``drop``, ``within_budget``, ``not_slower``, ``eligible``
        and ``p50_ratio_b<B>`` (variant / reference) added.
    reason : str
        One sentence saying why.

    Raises
    ------
    ValueError
        No reference row, a missing column, or a bad budget.
    """
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget >= 0):
        raise ValueError(f"budget must be a finite number >= 0 (0.005 = half a point of accuracy); got {budget!r}.")
    if not (isinstance(min_speedup, (int, float)) and min_speedup > 0):
        raise ValueError(f"min_speedup must be > 0; got {min_speedup!r}.")
    if "variant" not in table.columns or reference not in set(table["variant"]):
        raise ValueError(f"The table needs a row for the reference {reference!r} (column 'variant').")
    key = "p50_ratio_gmean" if batch_size is None else f"p50_ms_b{batch_size}"
    for col in (metric, *([] if batch_size is None else [key])):
        if col not in table.columns:
            raise ValueError(f"The table has no column {col!r}; columns are {list(table.columns)}.")
    higher = _greater_is_better(metric) if greater_is_better is None else bool(greater_is_better)
    out = table.copy().reset_index(drop=True)
    if "error" not in out.columns:
        out["error"] = ""
    out["error"] = out["error"].fillna("").astype(str)
    ref = out[out["variant"] == reference].iloc[0]
    lat_cols = _latency_columns(out)
    if not lat_cols:
        raise ValueError(f"The table has no latency column (p50_ms_b<B>); columns are {list(table.columns)}.")
    for col in lat_cols:
        out[col.replace("p50_ms", "p50_ratio")] = out[col] / float(ref[col])
    ratios = out[[c.replace("p50_ms", "p50_ratio") for c in lat_cols]].to_numpy(dtype=float)
    out["p50_ratio_gmean"] = np.exp(np.log(ratios).mean(axis=1))
    drop = (float(ref[metric]) - out[metric]) if higher else (out[metric] - float(ref[metric]))
    out["drop"] = drop.astype(float)
    # A hair of float tolerance, so a budget of 0.005 admits a drop computed as 0.005000000001.
    out["within_budget"] = out["drop"] <= budget + 1e-12
    bound = 1.0 / float(min_speedup)
    out["not_slower"] = np.logical_and.reduce([out[c.replace("p50_ms", "p50_ratio")] <= bound for c in lat_cols])
    ok = out["error"] == ""
    candidates = out[(out["variant"] != reference) & ok]
    out["eligible"] = (out["variant"] != reference) & ok & out["within_budget"] & out["not_slower"]
    eligible = out[out["eligible"]]
    if len(eligible):
        best = eligible.sort_values([key, "drop"]).iloc[0]
        speed = (f"p50 {best['p50_ratio_gmean']:.3g}x of {reference}'s, geometric mean over batch sizes"
                 if batch_size is None else
                 f"p50 at batch {batch_size}: {best[key]:.3g} ms against {float(ref[key]):.3g} ms")
        reason = (
            f"{best['variant']} is the fastest variant within the budget ({metric} drop {best['drop']:+.4f} <= "
            f"{budget:g}) and not slower than {reference} at any batch size ({speed})."
        )
        return str(best["variant"]), out, reason
    if not len(candidates):
        return reference, out, f"No quantized variant could be built; keeping {reference}."
    in_budget = candidates[candidates["within_budget"]]
    faster = candidates[candidates["not_slower"]]
    if not len(in_budget):
        best_drop = candidates["drop"].min()
        reason = (f"No variant meets the {metric} budget of {budget:g} (smallest drop {best_drop:+.4f}); "
                  f"keeping {reference}.")
    elif not len(faster):
        reason = f"Every quantized variant is slower than {reference} at some batch size; keeping {reference}."
    else:
        reason = (f"The variants within the {metric} budget of {budget:g} are slower than {reference}, and the "
                  f"faster ones lose too much {metric}; keeping {reference}.")
    return reference, out, reason


@dataclass
class Selection:
    """What :func:`select_quantized` found.

    Attributes
    ----------
    chosen : str
        The variant written to :attr:`path` (``"fp32"`` when no quantized one qualified).
    path : pathlib.Path
        The chosen model's file.
    table : pandas.DataFrame
        Every variant measured, with the rule's columns (see :func:`choose_variant`).
    reason : str
    measurements : dict of str to Measurement
    variant_paths : dict of str to str
        Where each variant's file lies (the work folder).
    specs : dict of str to dict
        Each quantized variant's :class:`QuantSpec` as a dict.
    fallback : dict
        Per-layer fallback, if it ran: ``base`` (the variant), ``sensitivity``
        (layer -> metric drop when only that layer is quantized) and ``excluded``
        (layers left in float by each attempt, in order).
    report_path : pathlib.Path or None
        The JSON report written beside the model.
    """

    chosen: str
    path: Path
    table: pd.DataFrame
    reason: str
    measurements: dict[str, Measurement]
    variant_paths: dict[str, str]
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    fallback: dict[str, Any] = field(default_factory=dict)
    report_path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the table as a list of rows)."""
        rows = json.loads(self.table.to_json(orient="records"))
        return {
            "chosen": self.chosen,
            "path": str(self.path),
            "reason": self.reason,
            "table": rows,
            "specs": self.specs,
            "fallback": self.fallback,
            "measurements": {k: m.to_dict() for k, m in self.measurements.items()},
        }


def select_quantized(
    model: str | os.PathLike[str],
    data: Any,
    output: str | os.PathLike[str],
    *,
    calibration: Any = None,
    budget: float = 0.005,
    metric: str = "accuracy",
    batch_size: int | None = 64,
    candidates: Sequence[QuantSpec] | None = None,
    extra: Mapping[str, str | os.PathLike[str]] | None = None,
    per_layer_fallback: bool = True,
    first_layer_float: bool = True,
    min_speedup: float = 1.0,
    calibration_rows: int = 512,
    workdir: str | os.PathLike[str] | None = None,
    measure_options: Mapping[str, Any] | None = None,
) -> Selection:
    """Quantize ``model`` several ways, measure each, and write the fastest variant within budget.

    Parameters
    ----------
    model : path
        The float ONNX model (from :func:`modelyard.compress.export_onnx`); not modified.
    data : TabularSplit, DataFrame or ImageSplit
        Labelled rows the variants are scored on (a validation split; keep the test
        split for the final report).
    output : path
        Where the chosen model is written (``.onnx``, atomically); the selection report
        goes beside it as ``<stem>.selection.json``.
    calibration : data or None, default=None
        Calibration rows or images for static quantization; ``data`` if None.
    budget : float, default=0.005
        Largest allowed drop of ``metric`` (0.005 = half a point of accuracy).
    metric : str, default="accuracy"
        A metric :func:`measure` reports (``accuracy``, ``auc``, ``log_loss``, ...).
    batch_size : int or None, default=64
        The batch size whose p50 latency ranks the variants; it must be among the
        measured batch sizes (``measure_options["batch_sizes"]``, default ``(1, 64)``).
        None ranks by the geometric mean of p50 relative to the float model over the
        measured batch sizes.
    candidates : sequence of QuantSpec or None
        :func:`default_candidates` if None.
    extra : dict of str to path or None
        Variants built elsewhere (e.g. ``{"qat": "model.qat.onnx"}`` from
        :func:`modelyard.compress.export_qat_onnx`), measured and judged alike.
    per_layer_fallback : bool, default=True
        Leave the most harmful layers in float when the fastest int8 variant misses the budget.
    first_layer_float : bool, default=True
        Also measure the fastest int8 variant with its first layer left in float. A
        first convolution reads 1 or 3 channels, too few for int8 kernels: on a small
        Fashion-MNIST CNN, ONNX Runtime's QLinearConv ran it 3x slower than float, and
        keeping it in float took the int8 model from 0.74x to 0.52x of float's latency
        at batch 64. Judged by the same rule as every variant.
    min_speedup : float, default=1.0
        A quantized variant must be at least this much faster than the float model at
        every measured batch size (1.0: not slower); raise it to demand a margin over
        timing noise.
    calibration_rows : int, default=512
    workdir : path or None
        Where the variants are written and kept; if None, a temporary folder removed
        afterwards (the paths in the measurements then no longer exist).
    measure_options : dict or None
        Passed to :func:`measure` (``batch_sizes``, ``threads``, ``repeats``, ``warmup``,
        ``slices``, ``metrics``).

    Returns
    -------
    Selection

    Raises
    ------
    ValueError
        A bad budget or output name, ``metric`` not measured, or ``batch_size`` not measured.
    ModelFormatError
        ``model`` is not an ONNX model.
    SchemaMismatchError
        Calibration data whose columns or image shape do not match the model.
    """
    output = Path(output)
    if output.suffix != ".onnx":
        raise ValueError(f"select_quantized writes an .onnx file; got {str(output)!r}.")
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget >= 0):
        raise ValueError(f"budget must be a finite number >= 0 (0.005 = half a point of accuracy); got {budget!r}.")
    options = dict(measure_options or {})
    if batch_size is not None and batch_size not in tuple(options.get("batch_sizes", (1, 64))):
        raise ValueError(
            f"batch_size={batch_size} is not among the measured batch sizes {tuple(options.get('batch_sizes', (1, 64)))}; "
            "add it to measure_options['batch_sizes']."
        )
    source = Path(model)
    _load(source)  # a clear error for a missing file or one that is not ONNX
    specs = list(default_candidates() if candidates is None else candidates)
    bad = [s for s in specs if not isinstance(s, QuantSpec)]
    if bad:
        raise TypeError(f"candidates must be QuantSpec instances; got {bad[:3]}.")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"Two candidates share a name: {sorted({n for n in names if names.count(n) > 1})}; "
                         "drop the duplicates.")

    own_tmp = workdir is None
    work = Path(tempfile.mkdtemp(prefix="modelyard-select-")) if own_tmp else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        measurements: dict[str, Measurement] = {}
        paths: dict[str, str] = {}
        spec_of: dict[str, QuantSpec] = {}
        errors: dict[str, str] = {}

        ref = measure(source, data, name=REFERENCE, **options)
        if metric not in ref.overall:
            raise ValueError(
                f"metric {metric!r} is not measured; measure reports {sorted(ref.overall)}. Choose one of those "
                "or add it with measure_options={'metrics': [...]}."
            )
        measurements[REFERENCE], paths[REFERENCE] = ref, str(source)

        prepared = work / "prepared.onnx"
        prepare_for_quantization(source, prepared)
        layers = quantizable_nodes(prepared)
        reader = None
        if any(s.mode == "static" for s in specs):
            reader = CalibrationReader.from_data(prepared, data if calibration is None else calibration,
                                                 rows=calibration_rows)

        def run(spec: QuantSpec, name: str, **kw: Any) -> Measurement | None:
            target = work / f"{name}.onnx"
            try:
                quantize(prepared, target, spec=spec, calibration=reader, preprocess=False)
                found = measure(target, data, name=name, **{**options, **kw})
            except Exception as exc:  # noqa: BLE001 - one variant ONNX Runtime cannot build must not end the search
                errors[name] = f"{type(exc).__name__}: {exc}"[:500]
                return None
            paths[name], spec_of[name] = str(target), spec
            return found

        for spec in specs:
            found = run(spec, spec.name)
            if found is not None:
                measurements[spec.name] = found
        if first_layer_float and len(layers) > 1:
            fastest = _fastest_int8(measurements, spec_of, ref)
            if fastest is not None and not spec_of[fastest].float_first and layers[0] not in spec_of[fastest].exclude:
                spec = spec_of[fastest].replace(float_first=True)
                if spec.name not in measurements:
                    found = run(spec, spec.name)
                    if found is not None:
                        measurements[spec.name] = found
        for name, path in (extra or {}).items():
            if name in measurements or name in errors:
                raise ValueError(f"Extra variant name {name!r} is already taken; rename it.")
            measurements[name] = measure(Path(path), data, name=name, **options)
            paths[name] = str(path)
        # The float model is timed again after the variants and its faster p50 kept per batch
        # size: a burst of load during its first timing must not make slow variants look fast.
        measurements[REFERENCE] = ref = _faster(ref, measure(source, data, name=REFERENCE, **options))

        def table() -> pd.DataFrame:
            rows = []
            for name, m in measurements.items():
                row = m.row()
                spec = spec_of.get(name)
                row["kind"] = ("fp32" if name == REFERENCE else "extra" if spec is None
                               else "fp16" if spec.mode == "fp16" else "int8")
                row["error"] = ""
                rows.append(row)
            for name, err in errors.items():
                rows.append({"variant": name, "kind": "int8", "error": err})
            return pd.DataFrame(rows)

        def decide() -> tuple[str, pd.DataFrame, str]:
            return choose_variant(table(), metric=metric, budget=budget, batch_size=batch_size,
                                  min_speedup=min_speedup)

        chosen, judged, reason = decide()
        fallback: dict[str, Any] = {}
        if chosen == REFERENCE and per_layer_fallback and len(layers) > 1:
            fast = judged[(judged["kind"] == "int8") & judged["not_slower"] & ~judged["within_budget"]
                          & (judged["error"] == "")]
            if len(fast):
                rank = "p50_ratio_gmean" if batch_size is None else f"p50_ms_b{batch_size}"
                base_name = str(fast.sort_values(rank).iloc[0]["variant"])
                base = spec_of.get(base_name)
                if base is not None:
                    fallback = _per_layer(base, base_name, layers, run, measurements, ref, metric, budget)
                    chosen, judged, reason = decide()
                    kept = spec_of[chosen].exclude if chosen in spec_of else ()
                    if kept:
                        reason += f" Per-layer fallback left {len(kept)} layer(s) in float: {list(kept)}."

        chosen_path = Path(paths[chosen])
        atomic_write_bytes(output, chosen_path.read_bytes())
        selection = Selection(
            chosen=chosen, path=output, table=judged, reason=reason, measurements=measurements,
            variant_paths={} if own_tmp else paths,
            specs={n: s.to_dict() for n, s in spec_of.items() if n in measurements}, fallback=fallback,
        )
        report = output.with_name(f"{output.stem}.selection.json")
        atomic_write_bytes(report, json.dumps(selection.to_dict(), indent=2, default=str).encode())
        selection.report_path = report
        return selection
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)


def _fastest_int8(measurements: Mapping[str, Measurement], spec_of: Mapping[str, QuantSpec],
                  ref: Measurement) -> str | None:
    """The int8 variant with the lowest geometric mean of p50 relative to ``ref`` over its batch sizes."""
    best, best_score = None, math.inf
    for name, m in measurements.items():
        spec = spec_of.get(name)
        if spec is None or spec.mode == "fp16":
            continue
        ratios = [m.latency[b].p50_ms / ref.latency[b].p50_ms for b in m.latency if b in ref.latency]
        if not ratios:
            continue
        score = float(np.exp(np.mean(np.log(ratios))))
        if score < best_score:
            best, best_score = name, score
    return best


def _faster(first: Measurement, second: Measurement) -> Measurement:
    """``first`` with, per batch size, the latency of whichever of the two timings had the lower p50."""
    latency = {b: min(lat, second.latency.get(b, lat), key=lambda x: x.p50_ms) for b, lat in first.latency.items()}
    return replace(first, latency=latency)


def _per_layer(
    base: QuantSpec,
    base_name: str,
    layers: list[str],
    run: Any,
    measurements: dict[str, Measurement],
    ref: Measurement,
    metric: str,
    budget: float,
) -> dict[str, Any]:
    """Leave the layers whose quantization hurts most in float, one more at a time, until within budget.

    Sensitivity of a layer = the metric drop when only that layer is quantized (with
    ``base``'s settings), scored by :func:`measure` with the least timing. Each attempt
    is measured in full and added to ``measurements``; the caller's rule judges them
    (an attempt within budget may still be slower than the float model).
    """
    higher = _greater_is_better(metric)

    def drop(m: Measurement) -> float:
        value = m.overall[metric]
        return (ref.overall[metric] - value) if higher else (value - ref.overall[metric])

    sensitivity: dict[str, float] = {}
    for i, layer in enumerate(layers):
        found = run(base.replace(only=(layer,)), f"{base_name}-only{i}", batch_sizes=(1,), repeats=1, warmup=0)
        if found is not None:
            sensitivity[layer] = drop(found)
    order = sorted(sensitivity, key=lambda k: -sensitivity[k])
    attempts: list[list[str]] = []
    for k in range(1, len(order)):  # leaving every layer in float would be the float model itself
        excluded = order[:k]
        name = f"{base_name}-float{k}"
        found = run(base.replace(exclude=tuple(excluded)), name)
        if found is None:
            continue
        measurements[name] = found
        attempts.append(list(excluded))
        if drop(found) <= budget + 1e-12:
            break
    return {"base": base_name, "sensitivity": sensitivity, "excluded": attempts}

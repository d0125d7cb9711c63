"""Compress one model several ways, measure every variant where it is served, and pick the best.

:func:`compress_variants` is what the pipeline's ``compress:`` step and the
``modelyard compress`` command run:

1. the model is exported to ONNX as the *uncompressed* reference (an ONNX model is used
   as it is);
2. each :class:`Variant` is built: structured pruning, then unstructured pruning (torch,
   fine-tuned on the training rows when asked), exported to ONNX with a parity check
   against the pruned torch model, then post-training quantization on ONNX Runtime
   (static variants calibrated on training rows). A variant that cannot be built (a
   pruner given an ONNX-only model, a quantizer ONNX Runtime cannot apply) becomes a row
   with its ``error``; the others are still measured;
3. every variant is measured by :func:`modelyard.compress.measure` on the **test** split:
   file size raw and gzip, ONNX Runtime p50/p99 latency per batch size, the metrics
   overall and per slice, and the change against the reference (the columns of
   :func:`modelyard.compress.compare`); a variant that cannot be measured (ONNX Runtime
   returns NaN, or lacks a kernel) becomes a row with its ``error``;
4. the metric is also scored on the **validation** split, and the best variant is chosen
   there (the test figures stay an unbiased report): among variants whose validation
   metric drop is at most ``max_accuracy_drop``, the smallest file (``prefer="size"``),
   smallest gzip (``"gzip"``) or lowest p50 at the largest batch size (``"latency"``),
   provided it beats the reference on that measure; otherwise the reference is kept.

:func:`write_outputs` writes the table (``compress.json``, ``compress.csv``,
``slices.csv``), the two plots (``size_accuracy.png``, ``latency_accuracy.png``) and each
variant's ONNX file, through a caller-given atomic writer. :func:`compress_figures`
draws the plots (matplotlib's object-oriented API; pyplot is never touched).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelyard.compress._measure import Measurement, measure
from modelyard.compress._registry import (
    PRUNER_ALIASES,
    PRUNERS,
    QUANTIZERS,
    BasePruner,
    parse_variant,
)
from modelyard._atomic import directory_writer
from modelyard.errors import SpecError

__all__ = [
    "PREFER",
    "REFERENCE_VARIANT",
    "CompressResult",
    "Variant",
    "compress_figures",
    "compress_variants",
    "default_variants",
    "directory_writer",
    "make_variants",
    "pick_best",
    "run_step",
    "slice_rows",
    "write_outputs",
]

#: Name of the uncompressed model's row.
REFERENCE_VARIANT = "uncompressed"
#: What "best" minimizes among the variants within the accuracy budget.
PREFER = ("size", "gzip", "latency")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,99}$")


@dataclass(frozen=True)
class Variant:
    """One compressed variant: optional structured pruning, unstructured pruning and quantization.

    Attributes
    ----------
    name : str
    structured : dict or None
        ``{"criterion": "l1"|"l2", "fraction" | "flops": float, "scope", "epochs", "lr"}``.
    prune : dict or None
        ``{"method": "magnitude"|"obd", "sparsity": float, "scope", "epochs", "lr"}``.
    quantize : str or None
        A name in :data:`~modelyard.compress.QUANTIZERS`.
    """

    name: str
    structured: dict[str, Any] | None = None
    prune: dict[str, Any] | None = None
    quantize: str | None = None

    @property
    def needs_torch(self) -> bool:
        """True if the variant prunes, which needs the torch model (not only its ONNX file)."""
        return self.structured is not None or self.prune is not None

    def pruners(self, seed: int = 0) -> list[BasePruner]:
        """The pruner instances, structured first."""
        out: list[BasePruner] = []
        if self.structured is not None:
            opts = dict(self.structured)
            cls = PRUNERS.get(f"structured_{opts.pop('criterion', 'l2')}")
            out.append(cls(**{k: v for k, v in opts.items() if v is not None}, seed=seed))
        if self.prune is not None:
            opts = dict(self.prune)
            cls = PRUNERS.get(opts.pop("method", "magnitude"))
            out.append(cls(**{k: v for k, v in opts.items() if v is not None}, seed=seed))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "structured": self.structured, "prune": self.prune, "quantize": self.quantize}


def _auto_name(entry: Mapping[str, Any]) -> str:
    parts = []
    s = entry.get("structured")
    if s:
        amount = f"{s['fraction']:g}" if s.get("fraction") is not None else f"flops{s['flops']:g}"
        tuned = f"-ft{s['epochs']}" if s.get("epochs") else ""  # fine-tuned for that many epochs
        parts.append(f"structured_{s.get('criterion', 'l2')}:{amount}{tuned}")
    p = entry.get("prune")
    if p:
        tuned = f"-ft{p['epochs']}" if p.get("epochs") else ""
        parts.append(f"{p.get('method', 'magnitude')}:{p['sparsity']:g}{tuned}")
    if entry.get("quantize"):
        parts.append(str(entry["quantize"]))
    return "+".join(parts)


def _check_entry(entry: Mapping[str, Any], where: str) -> None:
    """Names and amounts of one variant mapping, with a message naming the field."""
    unknown = sorted(set(entry) - {"name", "structured", "prune", "quantize"})
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {unknown}; a variant has name, structured, prune and quantize.")
    if not any(entry.get(k) for k in ("structured", "prune", "quantize")):
        raise SpecError(f"{where}: a variant needs at least one of prune, structured or quantize, "
                        "e.g. {quantize: dynamic_int8}.")
    q = entry.get("quantize")
    if q is not None and q not in QUANTIZERS:
        raise SpecError(f"{where}.quantize: unknown quantizer {q!r}; known: {', '.join(QUANTIZERS.names())}.")
    p = entry.get("prune")
    if p:
        method = PRUNER_ALIASES.get(p.get("method", "magnitude"), p.get("method", "magnitude"))
        known = [n for n in PRUNERS.names() if not PRUNERS.get(n).structured]
        if method not in known:
            raise SpecError(f"{where}.prune.method: unknown pruning method {method!r}; known: {', '.join(known)} "
                            "(use structured: {fraction: ...} to remove whole units).")
        s = p.get("sparsity")
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s < 1:
            raise SpecError(f"{where}.prune.sparsity: must be a number in (0, 1), the share of weights zeroed; "
                            f"got {s!r}.")
    s = entry.get("structured")
    if s:
        crit = s.get("criterion", "l2")
        if f"structured_{crit}" not in PRUNERS:
            known = [n.removeprefix("structured_") for n in PRUNERS.names() if PRUNERS.get(n).structured]
            raise SpecError(f"{where}.structured.criterion: unknown criterion {crit!r}; known: {', '.join(known)}.")
        if (s.get("fraction") is None) == (s.get("flops") is None):
            raise SpecError(f"{where}.structured: give exactly one of fraction (share of units removed, in (0, 1)) "
                            "or flops (share of multiply-adds kept, in (0, 1]).")


def make_variants(entries: Sequence[str | Mapping[str, Any]], *, where: str = "variants") -> list[Variant]:
    """Variants from YAML entries: short strings (``magnitude:0.9+static_int8``) or mappings.

    Raises
    ------
    SpecError
        An unknown quantizer or pruner (the message lists the known ones), an amount out
        of range, an empty variant, or two variants with the same name.
    """
    if isinstance(entries, (str, bytes)) or not isinstance(entries, Sequence):
        raise SpecError(f"{where}: must be a list of variants, e.g. [dynamic_int8, 'magnitude:0.9']; got {entries!r}.")
    if not entries:
        raise SpecError(f"{where}: give at least one variant, e.g. [dynamic_int8].")
    out: list[Variant] = []
    for i, raw in enumerate(entries):
        at = f"{where}[{i}]"
        if isinstance(raw, str):
            try:
                entry = parse_variant(raw)
            except ValueError as exc:
                raise SpecError(f"{at}: {exc}.") from None
        elif isinstance(raw, Mapping):
            entry = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}
        else:
            raise SpecError(f"{at}: a variant is a string such as 'dynamic_int8' or a mapping such as "
                            f"{{prune: {{sparsity: 0.9}}}}; got {raw!r}.")
        _check_entry(entry, at)
        if entry.get("prune"):
            entry["prune"]["method"] = PRUNER_ALIASES.get(entry["prune"].get("method", "magnitude"),
                                                          entry["prune"].get("method", "magnitude"))
        name = entry.get("name") or _auto_name(entry)
        if not isinstance(name, str) or not _NAME.match(name) or name == REFERENCE_VARIANT:
            raise SpecError(f"{at}.name: {name!r} is not a valid variant name; use letters, digits and _.:+- "
                            f"(not {REFERENCE_VARIANT!r}).")
        if any(v.name == name for v in out):
            raise SpecError(f"{at}.name: two variants are named {name!r}; give each a distinct name.")
        out.append(Variant(name=name, structured=entry.get("structured") or None, prune=entry.get("prune") or None,
                           quantize=entry.get("quantize")))
    return out


def default_variants(torch_model: bool, image: bool = False) -> list[str]:
    """Variants tried when none are named: int8 and float16 quantization, plus pruning for a torch model.

    An image model also tries static int8 with its first convolution in float.
    """
    quantized = ["dynamic_int8", "static_int8", *(["static_int8_float_first"] if image else []), "fp16"]
    return (["magnitude:0.5", "structured:0.25", "magnitude:0.5+static_int8"] if torch_model else []) + quantized


# -- running ------------------------------------------------------------------------------------------


@dataclass
class CompressResult:
    """What :func:`compress_variants` found.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per variant, the reference first: ``variant``, ``kind``, sizes, ``p50_ms_b<B>``
        / ``p99_ms_b<B>``, the test metrics, ``size_ratio``, ``gzip_ratio``, ``p50_ratio_b<B>``,
        ``<metric>_change`` (test, variant - reference), ``valid_<metric>``, ``valid_drop``,
        ``within_budget``, ``best``, ``error`` and build figures (``weight_sparsity``,
        ``flops_ratio``) where they apply.
    measurements : dict of str to Measurement
        Test-split measurements (per-slice metrics inside).
    paths : dict of str to pathlib.Path
        Each built variant's ONNX file (the reference's too).
    variants : dict of str to dict
        Each variant's definition and build figures.
    best : str
        The chosen variant, or :data:`REFERENCE_VARIANT`.
    reason : str
    metric, prefer : str
    max_accuracy_drop : float
    """

    table: pd.DataFrame
    measurements: dict[str, Measurement]
    paths: dict[str, Path]
    variants: dict[str, dict[str, Any]]
    best: str
    reason: str
    metric: str
    max_accuracy_drop: float
    prefer: str
    batch_sizes: tuple[int, ...] = (1, 64)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (NaN as null)."""
        return _jsonable({
            "reference": REFERENCE_VARIANT, "best": self.best, "reason": self.reason, "metric": self.metric,
            "max_accuracy_drop": self.max_accuracy_drop, "prefer": self.prefer, "measured_on": "test",
            "selected_on": "valid", "batch_sizes": list(self.batch_sizes),
            "variants": self.variants, "table": self.table.to_dict(orient="records"),
            "measurements": {k: {**m.to_dict(), "path": self.paths[k].name} for k, m in self.measurements.items()},
            **self.extra,
        })


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def _is_torch(predictor: Any) -> bool:
    import torch

    return isinstance(getattr(predictor, "module", None), torch.nn.Module)


def _is_image(split: Any) -> bool:
    from modelyard.data import ImageSplit

    return isinstance(split, ImageSplit)


def _export_sample(split: Any) -> Any:
    return split.x[:256] if _is_image(split) else split.X.head(2000)


def _subset(split: Any, rows: int | None, seed: int) -> Any:
    """At most ``rows`` rows of ``split`` (a seeded sample, original order kept)."""
    if rows is None or len(split) <= rows:
        return split
    keep = np.sort(np.random.default_rng(seed).choice(len(split), size=rows, replace=False))
    if _is_image(split):
        from modelyard.data import ImageSplit

        return ImageSplit(split.x[keep], split.y[keep])
    from modelyard.data import TabularSplit

    return TabularSplit(split.frame.iloc[keep].reset_index(drop=True), split.schema)


def _slug(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.") or "variant"
    slug, k = base, 2
    while slug in taken:
        slug, k = f"{base}-{k}", k + 1
    taken.add(slug)
    return slug


def _greater_is_better(metric: str) -> bool:
    from modelyard.compress._select import _greater_is_better as gib

    return gib(metric)


def _score(path: Path, split: Any, metric: str) -> float:
    """``metric`` of the ONNX model at ``path`` on ``split`` (validation rows; no timing)."""
    from modelyard.evaluate import METRICS, evaluate_predictor
    from modelyard.models import load_predictor

    predictor = load_predictor(path)
    if _is_image(split):
        proba = np.concatenate([predictor.predict_proba(split.x[lo:lo + 4096]) for lo in range(0, len(split), 4096)])
        return float(METRICS.get(metric)(split.y, proba))
    report = evaluate_predictor(predictor, split.frame, slices=[], metrics=[metric])
    return float(report.overall[metric])


def compress_variants(
    model: Any,
    train: Any,
    valid: Any,
    test: Any,
    workdir: str | Path,
    variants: Sequence[Variant | str | Mapping[str, Any]] | None = None,
    *,
    metric: str | None = None,
    max_accuracy_drop: float = 0.01,
    prefer: str = "size",
    slices: Sequence[Any] = (),
    metrics: Sequence[str] | None = None,
    batch_sizes: Sequence[int] = (1, 64),
    repeats: int = 50,
    warmup: int = 5,
    threads: int = 1,
    calibration_rows: int = 512,
    rows: int | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> CompressResult:
    """Build, measure and rank compressed variants of ``model``.

    Parameters
    ----------
    model : path or predictor
        A ``.safetensors`` torch model, an ``.onnx`` model, or a loaded predictor. Pruning
        needs a torch model; an ONNX model can only be quantized.
    train, valid, test : TabularSplit or ImageSplit
        Fine-tuning and calibration rows (train), selection (valid), the reported table (test).
    workdir : path
        Where the ONNX files are written (``uncompressed.onnx`` and one per variant).
    variants : list of Variant, short strings or mappings, or None
        :func:`default_variants` if None.
    metric : str or None
        The metric the budget applies to; ``accuracy`` (classifiers) or ``rmse`` if None.
    max_accuracy_drop : float, default=0.01
        Largest allowed validation drop of ``metric`` (0.01 = one point of accuracy).
    prefer : {"size", "gzip", "latency"}, default="size"
    slices, metrics
        Passed to :func:`modelyard.compress.measure` (tabular only; images are sliced by class).
    batch_sizes, repeats, warmup, threads
        Latency settings of :func:`modelyard.compress.measure`.
    calibration_rows : int, default=512
        Training rows that calibrate static quantization.
    rows : int or None, default=None
        Measure on at most this many test rows (a seeded sample); all if None.
    seed : int, default=0
    progress : callable or None
        Called with a short message before each variant is built.

    Returns
    -------
    CompressResult

    Raises
    ------
    SpecError
        Bad variants, a bad ``prefer``, ``max_accuracy_drop`` or ``metric``.
    """
    from modelyard.compress._export import export_onnx
    from modelyard.compress._quantize import quantize
    from modelyard.models import load_predictor

    if prefer not in PREFER:
        raise SpecError(f"prefer must be one of {list(PREFER)}; got {prefer!r}.")
    if isinstance(max_accuracy_drop, bool) or not isinstance(max_accuracy_drop, (int, float)) \
            or not math.isfinite(max_accuracy_drop) or max_accuracy_drop < 0:
        raise SpecError(f"max_accuracy_drop must be a number >= 0 (0.01 = one point of accuracy); "
                        f"got {max_accuracy_drop!r}.")
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    source = Path(model) if isinstance(model, (str, Path)) else None
    predictor = load_predictor(source) if source is not None else model
    torch_model = _is_torch(predictor)
    image = _is_image(test)
    if variants is None:
        variants = default_variants(torch_model, image=image)
    built = [v for v in variants if isinstance(v, Variant)]
    parsed = built if len(built) == len(variants) else make_variants(list(variants))
    if metric is None:
        metric = "rmse" if getattr(predictor, "task", None) == "regression" else "accuracy"
    say = progress or (lambda _msg: None)

    taken = {REFERENCE_VARIANT}
    ref_path = work / f"{REFERENCE_VARIANT}.onnx"
    if source is not None and source.suffix.lower() == ".onnx":
        shutil.copyfile(source, ref_path)
    else:
        say("exporting the uncompressed model")
        export_onnx(predictor, ref_path, sample=_export_sample(valid))
    paths: dict[str, Path] = {REFERENCE_VARIANT: ref_path}
    info: dict[str, dict[str, Any]] = {REFERENCE_VARIANT: {"name": REFERENCE_VARIANT, "file": ref_path.name}}
    errors: dict[str, str] = {}
    calibration = _subset(train, max(calibration_rows, 1), seed)
    for variant in parsed:
        say(f"building {variant.name}")
        slug = _slug(variant.name, taken)
        entry = {**variant.to_dict(), "file": f"{slug}.onnx"}
        info[variant.name] = entry
        try:
            if variant.needs_torch and not torch_model:
                raise SpecError(f"pruning needs a torch model (mlp, lattice or image); {type(predictor).__name__} "
                                "can only be quantized")
            float_path = ref_path
            if variant.needs_torch:
                current = predictor
                for pruner in variant.pruners(seed):
                    current, figures = pruner.apply(current, train)
                    entry.update(figures)
                float_path = work / f"{slug}.float.onnx" if variant.quantize else work / f"{slug}.onnx"
                export_onnx(current, float_path, sample=_export_sample(valid))
            target = work / f"{slug}.onnx"
            if variant.quantize:
                spec = QUANTIZERS.get(variant.quantize)
                quantize(float_path, target, data=calibration if spec.mode == "static" else None, spec=spec,
                         calibration_rows=calibration_rows)
                if float_path != ref_path:
                    float_path.unlink(missing_ok=True)
            paths[variant.name] = target
        except Exception as exc:  # noqa: BLE001 - one variant that cannot be built must not end the comparison
            errors[variant.name] = f"{type(exc).__name__}: {exc}"[:500]
            entry["error"] = errors[variant.name]
            for leftover in work.glob(f"{slug}.*onnx"):
                leftover.unlink(missing_ok=True)

    say(f"measuring {len(paths)} models")
    measured_on = _subset(test, rows, seed)
    options: dict[str, Any] = {"batch_sizes": tuple(batch_sizes), "threads": threads, "warmup": warmup,
                               "repeats": repeats}
    if not image:
        options.update(slices=list(slices), metrics=None if metrics is None else list(metrics))
    # Each variant is measured on its own (as compare() does), so that one the runtime cannot
    # serve (NaN outputs, a kernel it lacks) becomes a row with its error instead of ending the step.
    measurements: dict[str, Measurement] = {}
    valid_scores: dict[str, float] = {}
    for name, path in list(paths.items()):
        try:
            measurements[name] = measure(path, measured_on, name=name, **options)
            valid_scores[name] = _score(path, valid, metric) if metric in measurements[name].overall else math.nan
        except Exception as exc:  # see above; the reference's failure is re-raised
            if name == REFERENCE_VARIANT:
                raise
            errors[name] = f"measuring failed: {type(exc).__name__}: {exc}"[:500]
            info[name]["error"] = errors[name]
            measurements.pop(name, None)
    if len(measurements) > 1:
        # The reference is timed again after the variants and its faster p50 kept per batch size
        # (as select_quantized does): a burst of load during its first timing must not make the
        # variants look fast.
        from modelyard.compress._select import _faster

        timing_only = options if image else {**options, "slices": []}  # only the latency is kept
        again = measure(ref_path, measured_on, name=REFERENCE_VARIANT, **timing_only)
        measurements[REFERENCE_VARIANT] = _faster(measurements[REFERENCE_VARIANT], again)
    table = _compare_table(measurements, REFERENCE_VARIANT)
    if metric not in table.columns:
        raise SpecError(f"metric {metric!r} is not measured; measure reports "
                        f"{sorted(measurements[REFERENCE_VARIANT].overall)}. Choose one of those as compress.metric "
                        "(--metric), or add it to evaluate.metrics.")
    higher = _greater_is_better(metric)
    ref_valid = valid_scores[REFERENCE_VARIANT]
    table.insert(1, "kind", ["reference" if n == REFERENCE_VARIANT else "variant" for n in table["variant"]])
    table[f"valid_{metric}"] = table["variant"].map(valid_scores)
    drop = (ref_valid - table[f"valid_{metric}"]) if higher else (table[f"valid_{metric}"] - ref_valid)
    table["valid_drop"] = drop.astype(float)
    table["within_budget"] = table["valid_drop"] <= max_accuracy_drop + 1e-12  # float slack only
    for key in ("weight_sparsity", "flops_ratio"):
        values = {n: e.get(key) for n, e in info.items() if e.get(key) is not None}
        if values:
            table[key] = table["variant"].map(values)
    table["error"] = ""
    if errors:
        failed = pd.DataFrame([{"variant": n, "kind": "variant", "error": e, "within_budget": False}
                               for n, e in errors.items()])
        table = pd.concat([table, failed], ignore_index=True)
    order = {REFERENCE_VARIANT: -1, **{v.name: i for i, v in enumerate(parsed)}}
    table = table.sort_values("variant", key=lambda s: s.map(order)).reset_index(drop=True)
    best, reason = pick_best(table, metric=metric, max_accuracy_drop=max_accuracy_drop, prefer=prefer,
                             batch_sizes=tuple(batch_sizes))
    table["best"] = table["variant"] == best
    return CompressResult(table=table, measurements=measurements, paths=paths, variants=info, best=best,
                          reason=reason, metric=metric, max_accuracy_drop=float(max_accuracy_drop), prefer=prefer,
                          batch_sizes=tuple(batch_sizes),
                          extra={"rows_measured": len(measured_on), "rows_valid": len(valid)})


def _compare_table(measurements: Mapping[str, Measurement], reference: str) -> pd.DataFrame:
    """The rows :func:`modelyard.compress.compare` builds: measurements plus ratios and changes against ``reference``."""
    from modelyard.compress._measure import compare_table

    return compare_table(measurements, reference)


def pick_best(
    table: pd.DataFrame,
    *,
    metric: str,
    max_accuracy_drop: float,
    prefer: str = "size",
    batch_sizes: Sequence[int] = (1, 64),
    reference: str = REFERENCE_VARIANT,
) -> tuple[str, str]:
    """The best variant of a measured table, and why.

    Eligible: built without error and ``valid_drop <= max_accuracy_drop``. Among those,
    the lowest ``size_bytes`` (``prefer="size"``), ``gzip_bytes`` (``"gzip"``) or
    ``p50_ms_b<largest batch>`` (``"latency"``), ties broken by the smaller drop and then
    the name; it must be strictly below the reference's value, else the reference is kept.
    """
    key = {"size": "size_bytes", "gzip": "gzip_bytes", "latency": f"p50_ms_b{max(batch_sizes)}"}[prefer]
    what = {"size": "file size", "gzip": "gzip size", "latency": f"p50 latency at batch {max(batch_sizes)}"}[prefer]
    ref = table[table["variant"] == reference].iloc[0]
    errors = table["error"].fillna("").astype(str) if "error" in table.columns else pd.Series("", index=table.index)
    built = table[(table["variant"] != reference) & (errors == "")]
    eligible = built[built["valid_drop"] <= max_accuracy_drop + 1e-12]
    better = eligible[eligible[key] < float(ref[key])]
    if len(better):
        row = better.assign(_name=better["variant"].astype(str)).sort_values([key, "valid_drop", "_name"]).iloc[0]
        return str(row["variant"]), (
            f"{row['variant']} has the lowest {what} ({_fmt(row[key], prefer)} against {_fmt(ref[key], prefer)} "
            f"uncompressed) among the variants whose validation {metric} drop is within {max_accuracy_drop:g} "
            f"(its drop: {row['valid_drop']:+.4f}).")
    if not len(built):
        return reference, f"No variant could be built; keeping the {reference} model."
    if not len(eligible):
        return reference, (f"No variant keeps the validation {metric} drop within {max_accuracy_drop:g} "
                           f"(smallest drop {built['valid_drop'].min():+.4f}); keeping the {reference} model.")
    return reference, (f"No variant within the {metric} budget of {max_accuracy_drop:g} has a lower {what} than the "
                       f"{reference} model; keeping it.")


def _fmt(value: Any, prefer: str) -> str:
    return f"{float(value):.3g} ms" if prefer == "latency" else f"{int(value):,} bytes"


# -- outputs ------------------------------------------------------------------------------------------


def slice_rows(result: CompressResult) -> pd.DataFrame:
    """Per-slice metrics in long form: variant, slice, group, metric, value, change (variant - reference)."""
    ref = result.measurements[REFERENCE_VARIANT].by_slice
    rows = []
    for name, m in result.measurements.items():
        for slice_name, groups in m.by_slice.items():
            for group, values in groups.items():
                for metric, value in values.items():
                    base = ref.get(slice_name, {}).get(group, {}).get(metric)
                    change = None if metric == "count" or base is None else float(value) - float(base)
                    rows.append({"variant": name, "slice": slice_name, "group": group, "metric": metric,
                                 "value": float(value), "change": change})
    return pd.DataFrame(rows, columns=["variant", "slice", "group", "metric", "value", "change"])


def compress_figures(table: pd.DataFrame, *, metric: str = "accuracy", best: str | None = None,
                     batch_size: int | None = None) -> dict[str, Any]:
    """The size-vs-metric and latency-vs-metric plots of a measured table (matplotlib Figures).

    Each built variant is a point (test ``metric`` against file size, and against p50
    latency at ``batch_size``, the largest measured if None), both axes' size and time
    on a log scale; the reference is a black diamond, the best variant a star.

    Returns
    -------
    dict
        ``{"size_accuracy": Figure, "latency_accuracy": Figure}``.
    """
    import matplotlib
    from matplotlib.figure import Figure

    ok = table[(table["error"].fillna("") == "")] if "error" in table.columns else table
    lat_cols = sorted((c for c in ok.columns if c.startswith("p50_ms_b")), key=lambda c: int(c[8:]))
    lat = f"p50_ms_b{batch_size}" if batch_size is not None else (lat_cols[-1] if lat_cols else None)
    palette = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")
    specs = [("size_accuracy", "size_bytes", "model file size (log scale)", "Size against " + metric),
             ("latency_accuracy", lat, f"p50 latency at batch {lat[8:] if lat else '?'} (ms, log scale)",
              "Latency against " + metric)]
    out: dict[str, Any] = {}
    with matplotlib.rc_context({"text.parse_math": False, "font.size": 9, "axes.titlesize": 10}):
        for key, col, xlabel, title in specs:
            fig = Figure(figsize=(6.4, 4.0), layout="constrained")
            ax = fig.add_subplot()
            ax.grid(color="#e4e7eb", zorder=0)
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
            j = 0
            for row in ok.to_dict(orient="records"):
                x, y = row.get(col), row.get(metric)
                if x is None or y is None or not (np.isfinite(x) and np.isfinite(y)) or x <= 0:
                    continue
                name = str(row["variant"])
                if name == REFERENCE_VARIANT:
                    ax.scatter([x], [y], marker="D", s=45, color="#1f2933", zorder=5, label=name)
                    continue
                color = palette[j % len(palette)]
                j += 1
                ax.scatter([x], [y], marker="*" if name == best else "o", s=150 if name == best else 40,
                           color=color, edgecolors="#1f2933", linewidths=0.6, zorder=4,
                           label=name[:40] + (" (best)" if name == best else ""))
            ax.set_xscale("log")
            # Default log tick labels are mathtext, which prints literally with math parsing off.
            unit = _bytes_label if key == "size_accuracy" else (lambda v: f"{v:.3g}")
            ax.xaxis.set_major_formatter(_log_formatter(unit))
            ax.xaxis.set_minor_formatter(_log_formatter(unit))
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"test {metric}")
            ax.set_title(title, loc="left")
            if j or len(ok):
                ax.legend(loc="best", frameon=True, framealpha=0.9, fontsize=7)
            out[key] = fig
    return out


def _bytes_label(n: float) -> str:
    for unit in ("B", "kB", "MB"):
        if abs(n) < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000.0
    return f"{n:.3g} GB"


def _log_formatter(label: Callable[[float], str]) -> Any:
    from matplotlib.ticker import LogFormatter

    class _Formatter(LogFormatter):
        def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
            return label(x)

    return _Formatter(labelOnlyBase=False)


Writer = Callable[[str], "contextlib.AbstractContextManager[Path]"]


def write_outputs(result: CompressResult, put: Writer, *, plots: bool = True, models: bool = True) -> list[str]:
    """Write the comparison through ``put(name)`` (a context manager yielding a temporary path, made final on exit).

    Writes ``compress.json``, ``compress.csv``, ``slices.csv``, ``size_accuracy.png`` and
    ``latency_accuracy.png`` (``plots``), ``variants/<file>.onnx`` for every built variant
    and ``best.onnx`` (``models``). Returns the names written.
    """
    names: list[str] = []

    def text(name: str, content: str) -> None:
        with put(name) as tmp:
            tmp.write_text(content, encoding="utf-8")
        names.append(name)

    summary = result.to_dict()
    text("compress.json", json.dumps(summary, indent=2, sort_keys=True, allow_nan=False) + "\n")
    text("compress.csv", result.table.to_csv(index=False))
    text("slices.csv", slice_rows(result).to_csv(index=False))
    if plots:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        figures = compress_figures(result.table, metric=result.metric, best=result.best,
                                   batch_size=max(result.batch_sizes))
        for key, fig in figures.items():
            FigureCanvasAgg(fig)
            with put(f"{key}.png") as tmp:
                fig.savefig(tmp, format="png", dpi=110, facecolor="white", metadata={"Software": None})
            names.append(f"{key}.png")
    if models:
        for path in result.paths.values():
            with put(f"variants/{path.name}") as tmp:
                shutil.copyfile(path, tmp)
            names.append(f"variants/{path.name}")
        with put("best.onnx") as tmp:
            shutil.copyfile(result.paths[result.best], tmp)
        names.append("best.onnx")
    return names


# -- the pipeline step ----------------------------------------------------------------------------------


def run_step(ctx: Any, config: Mapping[str, Any]) -> None:
    """The pipeline's ``compress`` step (:class:`modelyard.pipeline.CompressStep` calls it).

    Reads the evaluate step's choice (``evaluation``), the model files (``model:<name>``),
    the splits (``train``, ``valid``, ``test``) and ``schema``; writes, through
    ``ctx.output``: ``compress.json``, ``compress.csv``, ``slices.csv``,
    ``size_accuracy.png``, ``latency_accuracy.png``, ``variants/*.onnx`` and ``best.onnx``.
    """
    import tempfile

    from modelyard.data import Schema, TabularSplit

    schema = Schema.from_dict(ctx.read_json("schema")["schema"])
    splits = {n: TabularSplit(pd.read_parquet(ctx.input(n)), schema) for n in ("train", "valid", "test")}
    evaluation = ctx.read_json("evaluation")
    name = evaluation["chosen"]["model"] if config["model"] == "chosen" else config["model"]
    model_path = ctx.input(f"model:{name}")
    raw = config.get("variants")
    entries = None if raw is None else [{k: v for k, v in e.items() if v is not None} for e in raw]
    n_variants = len(entries) if entries is not None else None
    bar = ctx.progress(f"compressing {name}", None if n_variants is None else n_variants + 2)
    done = [0]

    def progress(message: str) -> None:
        bar(completed=done[0], info=message)
        done[0] += 1

    slices = config.get("slices")
    if slices is None:
        slices = list(schema.sensitive)
    with tempfile.TemporaryDirectory(prefix="modelyard-compress-") as tmp:
        result = compress_variants(
            model_path, splits["train"], splits["valid"], splits["test"], tmp, entries,
            metric=config.get("metric"), max_accuracy_drop=config["max_accuracy_drop"], prefer=config["prefer"],
            slices=slices, metrics=config.get("metrics"), batch_sizes=tuple(config["batch_sizes"]),
            repeats=config["repeats"], warmup=config["warmup"], threads=config["threads"],
            calibration_rows=config["calibration_rows"], rows=config.get("rows"), seed=config["seed"],
            progress=progress,
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


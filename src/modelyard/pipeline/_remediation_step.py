"""The ``remediation`` step: fairness remediation methods compared before and after on the test split.

Each method of the spec's ``remediation:`` section is run by
:func:`modelyard.evaluate.remediate` on the data step's train, valid and test splits: the
base model (gradient boosting or the torch MLP) is fitted on train (early-stopped on
valid), remediated, and both are measured on the test rows: accuracy, demographic parity
difference (DPD) and equalized odds difference (EOD) over the groups of the sensitive
column. The step writes

* ``remediation.json``: the settings, the base model's figures (``before``), every
  method's :meth:`~modelyard.evaluate.RemediationResult.as_dict` (``results``) and the
  ``table`` below;
* ``remediation.csv``: the table, one row per method after a first ``before`` row:
  ``method, accuracy, demographic_parity_difference, equalized_odds_difference,
  accuracy_cost, fit_time_s``;
* ``remediation.png``: the trade-off plot, accuracy against DPD and against EOD.

``modelyard remediate`` writes the same three files with the same functions
(:func:`run_remediation`, :func:`write_remediation`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from modelyard._atomic import directory_writer
from modelyard.errors import DataError, ModelyardError, SpecError
from modelyard.pipeline._spec import REMEDIATION_BASES
from modelyard.pipeline._stages import _read_schema, _read_split
from modelyard.pipeline._step import Step, StepContext

__all__ = ["REMEDIATION_FILES", "TABLE_COLUMNS", "RemediationStep", "check_binary", "directory_writer",
           "remediation_rows", "resolve_sensitive", "run_remediation", "write_remediation"]

#: What the step (and ``modelyard remediate``) writes.
REMEDIATION_FILES = ("remediation.json", "remediation.csv", "remediation.png")
#: Columns of remediation.csv and of the doc's ``table``.
TABLE_COLUMNS = ("method", "accuracy", "demographic_parity_difference", "equalized_odds_difference",
                 "accuracy_cost", "fit_time_s")

Progress = Callable[[str, "int | None"], Callable[..., None]]
Writer = Callable[[str], contextlib.AbstractContextManager[Path]]


# -- checks shared with the CLI ---------------------------------------------------------------
def resolve_sensitive(schema: Any, columns: Sequence[str], sensitive: str | None, *, fix: str) -> str:
    """The sensitive column: ``sensitive`` if it is a column, else the data's first sensitive column.

    ``fix`` names where the user sets it (``remediation.sensitive`` or ``--sensitive``).

    Raises
    ------
    DataError
        The column is not in the data (the message lists the columns), or none is given
        and the data declares no sensitive column.
    """
    columns = [str(c) for c in columns]
    if sensitive is None:
        if not schema.sensitive:
            raise DataError(f"{fix}: the data declares no sensitive column; name the column whose groups to make "
                            f"fairer with {fix} (columns: {columns}).")
        sensitive = str(schema.sensitive[0])
    if sensitive not in columns:
        raise DataError(f"{fix}: sensitive column {sensitive!r} is not in the data; columns are {columns}.")
    if sensitive == schema.target:
        raise DataError(f"{fix}: {sensitive!r} is the target; name a sensitive column such as sex or race.")
    return sensitive


def check_binary(schema: Any, *, fix: str) -> None:
    """Raise :class:`DataError` unless the task is binary classification."""
    if schema.task != "binary":
        what = f"multiclass ({len(schema.classes)} classes)" if schema.task == "multiclass" else \
            f"a {schema.task} target"
        raise DataError(f"Fairness remediation needs a binary target; {schema.target!r} is {what}. {fix}")


def _finite(obj: Any) -> Any:
    """``obj`` as JSON data, with NaN and infinities as null."""
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    try:
        value = float(obj)
    except (TypeError, ValueError):
        return str(obj)
    return value if math.isfinite(value) else None


def _figures(summary: Any) -> dict[str, float]:
    return {"accuracy": summary.accuracy, "demographic_parity_difference": summary.demographic_parity_difference,
            "equalized_odds_difference": summary.equalized_odds_difference}


# -- the work ---------------------------------------------------------------------------------
def run_remediation(train: Any, valid: Any, test: Any, *, sensitive: str, methods: Sequence[str], base: str = "gbm",
                    constraint: str = "demographic_parity", tolerance: float = 0.0, seed: int = 0,
                    options: dict[str, dict[str, Any]] | None = None, base_params: dict[str, Any] | None = None,
                    progress: Progress | None = None, where: str = "remediation") -> tuple[dict[str, Any], list[Any]]:
    """Run every method with :func:`modelyard.evaluate.remediate`; return the JSON doc and the results.

    ``progress(description, total)`` starts one bar per method (like
    :meth:`StepContext.progress`). ``where`` prefixes errors in a method's options.
    """
    from modelyard.evaluate import remediate

    groups = train.frame[sensitive].dropna().astype(str)
    if groups.nunique() < 2:
        raise DataError(f"{where}: sensitive column {sensitive!r} has {groups.nunique()} group(s) in the train "
                        "split; remediation compares groups, so it needs at least two.")
    options = options or {}
    results = []
    for method in methods:
        bar = progress(f"remediation · {method}", 1) if progress is not None else (lambda **_: None)
        chosen = {k: v for k, v in (options.get(method) or {}).items() if v is not None}
        try:
            result = remediate(method, train, valid, test, sensitive=sensitive, base=base, constraint=constraint,
                               tolerance=tolerance, seed=seed, base_params=base_params, options=chosen)
        except DataError as exc:  # the data cannot be remediated this way (e.g. a group with one label)
            raise DataError(f"{method}: {exc}") from exc
        except (TypeError, ValueError) as exc:
            if not chosen or isinstance(exc, ModelyardError):
                raise
            raise SpecError(f"{where}.options.{method}: {exc}") from exc  # an option the method refuses
        after = result.after
        bar(completed=1, info=f"DPD {after.demographic_parity_difference:.3f} · EOD "
                              f"{after.equalized_odds_difference:.3f} · acc {after.accuracy:.3f}")
        results.append(result)
    before = results[0].before
    table = [{"method": "before", **_figures(before), "accuracy_cost": 0.0, "fit_time_s": None}]
    table += [{"method": r.method, **_figures(r.after), "accuracy_cost": r.accuracy_cost,
               "fit_time_s": r.fit_time_s} for r in results]
    doc = {
        "sensitive": sensitive, "base": base, "constraint": constraint, "tolerance": tolerance, "seed": seed,
        "split": "test", "methods": list(methods),
        "rows": {"train": len(train), "valid": len(valid), "test": len(test)},
        "groups": sorted(before.selection_rate),
        "before": before.as_dict(),
        "results": {r.method: r.as_dict() for r in results},
        "table": table,
    }
    return _finite(doc), results


def remediation_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The doc's table rows with exactly :data:`TABLE_COLUMNS`."""
    return [{c: row.get(c) for c in TABLE_COLUMNS} for row in doc.get("table") or []]


def write_remediation(doc: dict[str, Any], put: Writer) -> list[str]:
    """Write remediation.json, remediation.csv and remediation.png through ``put(name)`` (atomic writes).

    ``put(name)`` is a context manager yielding a temporary path that becomes ``name``
    on success (:meth:`StepContext.output`, or :func:`directory_writer`).
    """
    import csv

    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from modelyard.report._html import remediation_figure
    from modelyard.report._plots import _style

    text = json.dumps(doc, indent=2, allow_nan=False) + "\n"  # everything is built before the first write
    with matplotlib.rc_context(_style()):
        fig = remediation_figure(remediation_rows(doc), sensitive=doc.get("sensitive"))
    FigureCanvasAgg(fig)
    with put("remediation.json") as tmp:
        tmp.write_text(text, encoding="utf-8")
    with put("remediation.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(TABLE_COLUMNS))
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in remediation_rows(doc))
    with put("remediation.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120, facecolor="white", metadata={"Software": None})
    return list(REMEDIATION_FILES)


# -- the step ---------------------------------------------------------------------------------
class RemediationStep(Step):
    """Run the spec's fairness remediation methods on the data step's splits; write the table and the plot.

    Reads ``train``, ``valid``, ``test`` and ``schema`` of the data step. Config: the
    resolved ``remediation:`` section (see :class:`~modelyard.pipeline.RemediationSpec`).
    The remediation modules' source is part of the cache key.
    """

    kind = "remediation"
    VERSION = "1"

    def code_version(self) -> str:
        folder = Path(__file__).resolve().parent.parent / "evaluate"  # read, not imported: no torch on a cached run
        src = b"".join(p.read_bytes() for p in sorted(folder.glob("_remediation*.py")))
        return f"{super().code_version()}/remediation:{hashlib.sha256(src).hexdigest()[:12]}"

    def run(self, ctx: StepContext) -> None:
        cfg = self.config
        schema = _read_schema(ctx)
        fix = ("Remove the remediation section from the spec, or give a binary target "
               "(data.target, data.task: binary).")
        check_binary(schema, fix=fix)
        train, valid, test = (_read_split(ctx, name, schema) for name in ("train", "valid", "test"))
        sensitive = resolve_sensitive(schema, list(train.frame.columns), cfg.get("sensitive"),
                                      fix="remediation.sensitive")
        methods = cfg.get("methods") or list(REMEDIATION_BASES[cfg["base"]])
        doc, _ = run_remediation(
            train, valid, test, sensitive=sensitive, methods=methods, base=cfg["base"],
            constraint=cfg["constraint"], tolerance=cfg["tolerance"], seed=cfg["seed"],
            options=cfg.get("options") or {}, base_params=cfg.get("base_params") or {}, progress=ctx.progress)
        write_remediation(doc, ctx.output)
        before = doc["before"]
        figures: dict[str, Any] = {
            "sensitive": sensitive, "methods": ", ".join(methods), "before_accuracy": before["accuracy"],
            "before_dpd": before["demographic_parity_difference"], "before_eod": before["equalized_odds_difference"]}
        for row in doc["table"][1:]:
            m = row["method"]
            figures.update({f"{m}_accuracy": row["accuracy"], f"{m}_dpd": row["demographic_parity_difference"],
                            f"{m}_eod": row["equalized_odds_difference"], f"{m}_accuracy_cost": row["accuracy_cost"]})
        ctx.record(**figures)

    def summary(self, figures: dict[str, Any]) -> str:
        methods = [m.strip() for m in str(figures.get("methods", "")).split(",") if m.strip()]
        dpd = figures.get("before_dpd")
        parts = [f"{figures.get('sensitive', '?')}: before DPD {dpd:.3f}" if isinstance(dpd, float)
                 else f"{figures.get('sensitive', '?')}"]
        for m in methods:
            d, cost = figures.get(f"{m}_dpd"), figures.get(f"{m}_accuracy_cost")
            if isinstance(d, float) and isinstance(cost, float):
                parts.append(f"{m} DPD {d:.3f} (accuracy {-cost:+.3f})")
        return " · ".join(parts)

"""The validation gate: thresholds on metric values and on their change against a baseline, per slice.

A gate file (YAML, read with the safe loader) says what a candidate model must reach::

    baseline: runs/2026-11-01-prod/model.onnx   # optional; the CLI's --baseline wins
    slices: [sex, race, [sex, race], {feature: age, buckets: [25, 45, 65]}]
    min_count: 30               # groups with fewer rows are listed as skipped, not judged
    thresholds:                 # absolute bounds
      accuracy: {min: 0.80}                     # overall and in every group of every slice
      auc: {min: 0.85, slices: overall}         # overall only
      log_loss: {max: 0.45, slices: [sex]}      # overall and the groups of `sex`
      demographic_parity_difference: {max: 0.05, over: [sex]}          # fairness, between groups
      equalized_odds_difference: {max: 0.1, over: [[sex, race]], threshold: 0.5}
    change:                     # against the baseline, group by group on the same rows
      accuracy: {max_drop: 0.01}                # may not drop more than 0.01 anywhere
      log_loss: {max_rise: 0.02, slices: overall}
      demographic_parity_difference: {max_rise: 0.01, over: [sex]}

Metric names are those of :data:`~modelyard.evaluate.METRICS`, ``"<metric>@<t>"`` for a
decision metric at threshold ``t``, or a fairness disparity of
:data:`~modelyard.evaluate.DISPARITIES` (binary classifiers; computed over the
sensitive features in ``over``, default: the gate's slices, at decision threshold
``threshold``, default 0.5).

:func:`evaluate_gate` checks every bound on every target and returns a
:class:`GateResult` that lists every check (metric, slice, group, value, baseline value,
threshold, pass/fail/skipped and the reason), so why a model was or was not blessed is
always visible; :meth:`GateResult.write_blessing` writes the blessing artifact (JSON,
atomically) whether the gate passed or not.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from modelyard._atomic import atomic_path
from modelyard.errors import DataError, SchemaMismatchError, SpecError
from modelyard.evaluate._fairness import DISPARITIES, FairnessReport
from modelyard.evaluate._groups import CROSS, parse_slices
from modelyard.evaluate._metrics import (
    METRICS,
    THRESHOLD_METRICS,
    default_metrics,
    lookup_metric,
)
from modelyard.evaluate._slicing import SliceReport

__all__ = [
    "Check",
    "GateConfig",
    "GateResult",
    "check_baseline_schema",
    "evaluate_gate",
    "gate_predictors",
    "known_gate_metrics",
    "load_gate",
    "parse_gate",
    "resolve_model_file",
]

OVERALL = "overall"
_ALL = "all"


def known_gate_metrics() -> list[str]:
    """Every metric name a gate accepts (besides ``"<metric>@<t>"``)."""
    return METRICS.names() + list(DISPARITIES)


def _check_metric_name(name: str) -> str:
    if name in DISPARITIES or name in METRICS:
        return name
    if "@" in name:
        try:
            lookup_metric(name)
        except (ValueError, TypeError) as exc:
            raise ValueError(str(exc)) from None
        return name
    raise ValueError(
        f"unknown metric {name!r}; known metrics: {METRICS.names()}; fairness metrics: {list(DISPARITIES)}; "
        f"a decision metric at a threshold is written like 'precision@0.3' ({', '.join(THRESHOLD_METRICS)})"
    )


def _slice_name(item: Any) -> str:
    """The report name of a slice named in a gate (``[sex, race]`` -> ``"sex × race"``)."""
    if isinstance(item, (list, tuple)):
        return CROSS.join(str(p) for p in item)
    return str(item)


SliceRef = str | list[str]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Target(_Strict):
    slices: Literal["all", "overall"] | list[SliceRef] = Field(
        "all", description="Where a per-slice metric is checked: all (overall and every group of every slice), "
        "overall, or a list of slice names (overall plus their groups).")
    over: list[Any] | None = Field(None, description="Fairness metrics only: the sensitive features (slice specs; "
                                   "[sex, race] for intersectional groups). Default: the gate's slices.")
    threshold: float | None = Field(None, ge=0, le=1, description="Fairness metrics only: the decision threshold "
                                    "(class 1 where P(class 1) > threshold). Default 0.5.")

    @field_validator("over")
    @classmethod
    def _over(cls, v: Any) -> Any:
        if v is not None:
            if not v:
                raise ValueError("must name at least one sensitive feature, e.g. [sex]")
            parse_slices(v)
        return v


class Bounds(_Target):
    """Absolute bounds on a metric: ``min <= value <= max``."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _some(self) -> Bounds:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class Change(_Target):
    """Bounds on the change against the baseline: ``baseline - max_drop <= value <= baseline + max_rise``."""

    max_drop: float | None = Field(None, ge=0, description="How far the value may fall below the baseline's.")
    max_rise: float | None = Field(None, ge=0, description="How far the value may rise above the baseline's.")

    @model_validator(mode="after")
    def _some(self) -> Change:
        if self.max_drop is None and self.max_rise is None:
            raise ValueError("give max_drop, max_rise or both")
        return self


def _check_entries(v: dict[str, Any]) -> dict[str, Any]:
    for name, entry in v.items():
        _check_metric_name(name)
        fair = name in DISPARITIES
        if not fair and (entry.over is not None or entry.threshold is not None):
            raise ValueError(f"{name}: over and threshold are for fairness metrics ({', '.join(DISPARITIES)}); "
                             f"for a decision threshold write '{name}@0.3'")
        if fair and entry.slices != _ALL:
            raise ValueError(f"{name}: a fairness metric is computed between the groups of the features in `over`; "
                             "use over: [...] instead of slices")
    return v


class GateConfig(_Strict):
    """A validation gate, as read from a gate file or a spec's ``evaluate.gate`` section."""

    baseline: str | None = Field(None, description="The baseline model: a .onnx/.safetensors file or a run folder; "
                                 "change checks need one.")
    slices: list[Any] = Field(default_factory=list, description="Slices the per-slice checks run on: columns, "
                              "crosses ([sex, race]), buckets ({feature: age, buckets: [25, 45]}).")
    min_count: int | None = Field(30, ge=1, description="Groups with fewer rows are listed as skipped, not judged.")
    thresholds: dict[str, Bounds] = Field(default_factory=dict, description="Absolute bounds per metric.")
    change: dict[str, Change] = Field(default_factory=dict, description="Bounds on the change against the baseline.")

    @field_validator("slices")
    @classmethod
    def _slices(cls, v: list[Any]) -> list[Any]:
        parse_slices(v)
        return v

    @field_validator("thresholds", "change")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_entries(v)

    def metrics(self) -> list[str]:
        """The non-fairness metrics the checks need, in order of appearance."""
        return list(dict.fromkeys(m for m in [*self.thresholds, *self.change] if m not in DISPARITIES))

    @property
    def n_rules(self) -> int:
        return len(self.thresholds) + len(self.change)


# -- loading ---------------------------------------------------------------------------------
def _path(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def _format(exc: ValidationError, where: str) -> SpecError:
    lines = []
    for err in exc.errors(include_url=False):
        loc = [p for p in err["loc"] if not (isinstance(p, str) and (p.startswith(("literal[", "list[")) or
                                                                       p in ("str", "function-after[_some()]")))]
        path = _path(loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = {"": list(GateConfig.model_fields), "thresholds": ["min", "max", "slices", "over", "threshold"],
                       "change": ["max_drop", "max_rise", "slices", "over", "threshold"]}
            key = str(loc[0]) if len(loc) > 2 else ""
            lines.append(f"{_path(loc[:-1]) or '(top level)'}: unknown key {loc[-1]!r}; allowed keys: "
                         f"{', '.join(allowed.get(key, []))}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "model_type":
            example = "{max_drop: 0.01}" if loc and loc[0] == "change" else "{min: 0.8}"
            msg = f"must be a mapping such as {example}"
        if err["type"] == "value_error":  # our own validators name the bad value
            lines.append(f"{path}: {msg}")
            continue
        shown = json.dumps(err.get("input"), default=str)
        lines.append(f"{path}: {msg} (got {shown[:57] + '...' if len(shown) > 60 else shown})")
    lines = list(dict.fromkeys(lines))
    more = f" (and {len(lines) - 1} more: {'; '.join(lines[1:3])})" if len(lines) > 1 else ""
    return SpecError(f"Invalid {where}: {lines[0]}{more}.")


def parse_gate(data: Any, *, where: str = "gate") -> GateConfig:
    """Validate plain data (as loaded from YAML) into a :class:`GateConfig`.

    Raises
    ------
    SpecError
        One line naming the field's path, the bad value and what is allowed (an unknown
        metric lists the known ones).
    """
    if isinstance(data, GateConfig):
        return data
    if not isinstance(data, Mapping):
        raise SpecError(f"Invalid {where}: the top level must be a mapping with keys thresholds, change, slices, "
                        f"min_count, baseline; got {type(data).__name__}.")
    try:
        return GateConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise _format(exc, where) from None
    except (ValueError, TypeError) as exc:  # raised outside a validator (e.g. a slice spec)
        raise SpecError(f"Invalid {where}: {exc}") from None


def load_gate(path: str | os.PathLike[str]) -> GateConfig:
    """Read and validate a gate file (YAML, safe loader only).

    A relative ``baseline`` in the file is taken relative to the file's folder.

    Raises
    ------
    SpecError
        The file is missing, not YAML, or does not validate.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"Gate file {str(path)!r} does not exist; give the path to a YAML gate such as "
                        "examples/gate.yaml.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"Gate file {str(path)!r} is not valid YAML{at}: "
                        f"{getattr(exc, 'problem', None) or str(exc).splitlines()[0]}.") from None
    except UnicodeDecodeError:
        raise SpecError(f"Gate file {str(path)!r} is not UTF-8 text; save it as UTF-8 YAML.") from None
    if data is None:
        raise SpecError(f"Gate file {str(path)!r} is empty; give at least `thresholds:` or `change:`.")
    gate = parse_gate(data, where=f"gate file {str(path)!r}")
    if gate.baseline is not None and not Path(gate.baseline).expanduser().is_absolute():
        gate = gate.model_copy(update={"baseline": str((path.resolve().parent / gate.baseline).resolve())})
    return gate


# -- checks ----------------------------------------------------------------------------------
@dataclass
class Check:
    """One judged bound on one target.

    Attributes
    ----------
    kind : {"absolute", "change"}
    metric : str
    slice : str
        ``"overall"``, a slice name (``"sex"``, ``"sex × race"``) or, for a fairness
        metric, the sensitive feature it is computed over.
    group : str or None
        The slice's group (``"Female"``); ``None`` overall and for fairness metrics.
    value : float or None
        The candidate's value (``None`` where undefined).
    baseline : float or None
        The baseline's value (change checks).
    delta : float or None
        ``value - baseline`` (change checks).
    threshold : str
        The bound, readable: ``">= 0.8"``, ``"<= 0.05"``, ``"drop <= 0.01"``.
    lower, upper : float or None
        The bound on the value itself (for a change check: on ``value``, from the baseline).
    status : {"pass", "fail", "skipped"}
    reason : str
        Why: the comparison that failed or held, or why the check was skipped.
    count : int or None
        Rows in the group.
    """

    kind: str
    metric: str
    slice: str
    group: str | None
    value: float | None
    baseline: float | None
    delta: float | None
    threshold: str
    lower: float | None
    upper: float | None
    status: str
    reason: str
    count: int | None = None

    @property
    def passed(self) -> bool:
        return self.status != "fail"

    @property
    def where(self) -> str:
        return self.slice if self.group is None else f"{self.slice} = {self.group}"

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def _num(v: Any) -> float | None:
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


def _fmt(v: float) -> str:
    return f"{v:.4g}"


#: Slack of every comparison, for floating-point rounding: a drop of exactly 0.01 computed as
#: 0.75 - 0.74 = 0.010000000000000009 meets ``max_drop: 0.01``.
_EPS = 1e-12


def _judge_absolute(metric: str, where: str, value: float | None, b: Bounds) -> tuple[str, str]:
    if value is None:
        return "skipped", f"{metric} is undefined on {where} (e.g. one class only)"
    if b.min is not None and value < b.min - _EPS:
        return "fail", f"{metric} {_fmt(value)} on {where} is below the minimum {_fmt(b.min)}"
    if b.max is not None and value > b.max + _EPS:
        return "fail", f"{metric} {_fmt(value)} on {where} is above the maximum {_fmt(b.max)}"
    return "pass", f"{metric} {_fmt(value)} on {where} is within {_bound_text(b)}"


def _bound_text(b: Bounds) -> str:
    if b.min is not None and b.max is not None:
        return f"[{_fmt(b.min)}, {_fmt(b.max)}]"
    return f">= {_fmt(b.min)}" if b.min is not None else f"<= {_fmt(b.max)}"


def _change_text(c: Change) -> str:
    parts = []
    if c.max_drop is not None:
        parts.append(f"drop <= {_fmt(c.max_drop)}")
    if c.max_rise is not None:
        parts.append(f"rise <= {_fmt(c.max_rise)}")
    return ", ".join(parts)


def _judge_change(metric: str, where: str, value: float | None, base: float | None, c: Change) -> tuple[str, str]:
    if value is None or base is None:
        who = "the candidate" if value is None else "the baseline"
        return "skipped", f"{metric} is undefined for {who} on {where}"
    delta = value - base
    move = f"{_fmt(base)} -> {_fmt(value)}"
    if c.max_drop is not None and delta < -c.max_drop - _EPS:
        return "fail", f"{metric} on {where} dropped by {_fmt(-delta)} ({move}), more than the allowed {_fmt(c.max_drop)}"
    if c.max_rise is not None and delta > c.max_rise + _EPS:
        return "fail", f"{metric} on {where} rose by {_fmt(delta)} ({move}), more than the allowed {_fmt(c.max_rise)}"
    return "pass", f"{metric} on {where} changed by {delta:+.4g} ({move}), within {_change_text(c)}"


# -- result ----------------------------------------------------------------------------------
@dataclass
class GateResult:
    """Every check of a gate, and whether the candidate is blessed.

    Attributes
    ----------
    blessed : bool
        No check failed (skipped checks do not fail the gate; they are listed).
    checks : list of Check
        Every check, in the gate's order: per metric, overall first, then slice by slice.
    candidate : SliceReport
        The candidate's metrics overall and per slice.
    baseline : SliceReport or None
    fairness : dict
        ``{"candidate": FairnessReport, "baseline": FairnessReport}`` where fairness
        metrics were asked.
    gate : GateConfig
    """

    blessed: bool
    checks: list[Check]
    candidate: SliceReport
    baseline: SliceReport | None
    gate: GateConfig
    fairness: dict[str, FairnessReport] = field(default_factory=dict)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def counts(self) -> dict[str, int]:
        return {"checks": len(self.checks), "passed": sum(c.status == "pass" for c in self.checks),
                "failed": sum(c.status == "fail" for c in self.checks),
                "skipped": sum(c.status == "skipped" for c in self.checks)}

    def summary(self) -> str:
        """One line: blessed or not, and why."""
        n = self.counts
        if not self.gate.n_rules:
            return "no gate: nothing was judged"
        if self.blessed:
            return f"BLESSED: {n['passed']} of {n['checks']} checks passed ({n['skipped']} skipped)"
        first = self.failed[0].reason
        return f"NOT BLESSED: {n['failed']} of {n['checks']} checks failed; first: {first}"

    def to_frame(self) -> pd.DataFrame:
        """One row per check."""
        return pd.DataFrame([asdict(c) for c in self.checks],
                            columns=[f for f in Check.__dataclass_fields__])

    def to_dict(self, **info: Any) -> dict[str, Any]:
        """The blessing document: verdict, counts, failed checks first, every check, the gate and the metrics.

        ``info`` adds keys (``candidate``, ``baseline``: where the models came from).
        """
        out: dict[str, Any] = {
            "blessed": bool(self.blessed),
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "summary": self.summary(),
            "counts": self.counts,
            "failed": [c.to_dict() for c in self.failed],
            "checks": [c.to_dict() for c in self.checks],
            "gate": self.gate.model_dump(mode="json"),
            "metrics": {"candidate": self.candidate.to_dict(),
                        "baseline": None if self.baseline is None else self.baseline.to_dict()},
        }
        if self.fairness:
            out["fairness"] = {k: v.to_dict() for k, v in self.fairness.items()}
        out.update(info)
        return _finite(json.loads(json.dumps(out, default=_json_default)))

    def write_blessing(self, path: str | os.PathLike[str], **info: Any) -> Path:
        """Write :meth:`to_dict` as JSON to ``path`` atomically (whether blessed or not)."""
        path = Path(path)
        text = json.dumps(self.to_dict(**info), indent=2, allow_nan=False) + "\n"
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
        return path


def _finite(v: Any) -> Any:
    """``v`` with every NaN or infinite float replaced by ``None`` (strict JSON)."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.floating, float)):
        return None if not math.isfinite(float(v)) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


# -- evaluation ------------------------------------------------------------------------------
def _targets(report: SliceReport, which: Any, metric: str, where: str) -> list[tuple[str, str | None]]:
    """``(slice, group)`` pairs a per-slice check runs on; overall is ``(overall, None)``."""
    out: list[tuple[str, str | None]] = [(OVERALL, None)]
    if which == OVERALL:
        return out
    names = report.slices if which == _ALL else [_slice_name(s) for s in which]
    for name in names:
        if name not in report.by_slice:
            raise SpecError(f"{where}.{metric}.slices: unknown slice {name!r}; the gate's slices are "
                            f"{report.slices}. Add it to the gate's slices (or --slice) or fix the name.")
        out += [(name, g) for g in report.by_slice[name]]
    return out


def _value(report: SliceReport, metric: str, sl: str, group: str | None) -> tuple[float | None, int]:
    values = report.overall if group is None else report.by_slice[sl][group]
    return _num(values[metric]), int(values["count"])


def evaluate_gate(
    gate: GateConfig | Mapping[str, Any],
    *,
    y_true: Any,
    y_score: Any,
    frame: pd.DataFrame | None,
    task: str,
    baseline_score: Any | None = None,
    slices: Sequence[Any] = (),
    metrics: Sequence[str] | None = None,
    bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
) -> GateResult:
    """Judge a candidate's predictions (and a baseline's, on the same rows) against a gate.

    Parameters
    ----------
    gate : GateConfig or mapping
        A parsed gate, or plain data (validated with :func:`parse_gate`).
    y_true : array-like of shape (n_rows,)
        Class indices (classification) or values (regression).
    y_score : array-like
        The candidate's probabilities ``(n_rows, n_classes)`` (1-D: P(class 1)) or
        predicted values (regression).
    frame : pandas.DataFrame or None
        Holds the slice and sensitive columns, one row per label (by position).
    task : {"binary", "multiclass", "regression"}
    baseline_score : array-like or None
        The baseline's scores on the same rows; needed by ``change`` checks.
    slices : list
        Slices besides the gate's own (the CLI's ``--slice``).
    metrics : list of str or None
        Metrics shown besides those the checks need; default: the task's defaults.
    bootstrap, confidence, seed
        Poisson-bootstrap intervals of the slice table and of the fairness rates (shown,
        not judged).

    Returns
    -------
    GateResult

    Raises
    ------
    SpecError
        A gate metric does not fit the task (the message lists those that do), a check
        names a slice the gate does not have, a fairness metric has no sensitive
        feature, or change checks are given without a baseline.
    DataError
        A slice or sensitive column does not exist (the message lists the columns),
        labels and scores differ in length, or scores are NaN.
    """
    gate = parse_gate(gate)
    if gate.change and baseline_score is None:
        raise SpecError(f"The gate has change checks ({', '.join(gate.change)}) but no baseline model was given; "
                        "pass a baseline (--baseline MODEL, or baseline: in the gate) or remove `change:`.")
    specs = list(gate.slices)
    names = {s.name for s in parse_slices(specs)}
    for extra in slices:
        name = parse_slices([extra])[0].name
        if name not in names:
            specs.append(extra)
            names.add(name)
    wanted = list(metrics) if metrics is not None else list(default_metrics(task))
    for name in gate.metrics():
        fn = lookup_metric(name)
        tasks = getattr(fn, "tasks", None)
        if tasks is not None and task not in tasks:
            fit = [m for m in METRICS.names() if task in getattr(METRICS.get(m), "tasks", ())]
            raise SpecError(f"Gate metric {name!r} does not fit a {task} task; metrics for {task}: {fit}"
                            + (f", fairness: {list(DISPARITIES)}" if task == "binary" else "") + ".")
        if name not in wanted:
            wanted.append(name)
    fair_rules = [(kind, m, e) for kind, rules in (("absolute", gate.thresholds), ("change", gate.change))
                  for m, e in rules.items() if m in DISPARITIES]
    if fair_rules and task != "binary":
        raise SpecError(f"Gate metric {fair_rules[0][1]!r} is a fairness metric for binary classifiers; this is a "
                        f"{task} task. Remove it from the gate.")
    y_arr = np.asarray(y_true)
    if baseline_score is not None and np.shape(baseline_score)[:1] != y_arr.shape[:1]:
        got = np.shape(baseline_score)[0] if np.ndim(baseline_score) else 0
        raise DataError(f"The baseline's predictions have {got} rows but there are {y_arr.shape[0]} labels; "
                        "score the baseline on the same rows.")
    common: dict[str, Any] = {"frame": frame, "slices": specs, "metrics": wanted, "task": task,
                              "bootstrap": bootstrap, "confidence": confidence, "seed": seed,
                              "min_count": gate.min_count}
    candidate = SliceReport(y_true=y_true, y_score=y_score, **common)
    base = None
    if baseline_score is not None:
        try:
            base = SliceReport(y_true=y_true, y_score=baseline_score, **common)
        except DataError as exc:
            raise DataError(f"Baseline model: {exc}") from None
    fairness: dict[str, FairnessReport] = {}
    if fair_rules:
        default_over = specs
        over_all: list[Any] = []
        seen: set[str] = set()
        ts: list[float] = []
        for kind, m, e in fair_rules:
            over = e.over if e.over is not None else default_over
            if not over:
                section = "thresholds" if kind == "absolute" else "change"
                raise SpecError(f"{section}.{m}: a fairness metric needs sensitive features; give over: [sex] "
                                "(for example) or the gate's slices.")
            for item in over:
                name = parse_slices([item])[0].name
                if name not in seen:
                    seen.add(name)
                    over_all.append(item)
            t = 0.5 if e.threshold is None else e.threshold
            if t not in ts:
                ts.append(t)
        opts: dict[str, Any] = {"frame": frame, "sensitive": over_all, "thresholds": ts, "min_count": gate.min_count,
                                "bootstrap": bootstrap, "confidence": confidence, "seed": seed}
        fairness["candidate"] = FairnessReport(y_true=y_true, y_score=y_score, **opts)
        if base is not None and any(kind == "change" for kind, _, _ in fair_rules):
            fairness["baseline"] = FairnessReport(y_true=y_true, y_score=baseline_score, **opts)
    checks: list[Check] = []
    for kind, rules in (("absolute", gate.thresholds), ("change", gate.change)):
        section = "thresholds" if kind == "absolute" else "change"
        for metric, rule in rules.items():
            if metric in DISPARITIES:
                checks += _fair_checks(kind, metric, rule, specs, fairness)
                continue
            for sl, group in _targets(candidate, rule.slices, metric, section):
                value, n = _value(candidate, metric, sl, group)
                where = OVERALL if group is None else f"{sl} = {group}"
                small = gate.min_count is not None and group is not None and n < gate.min_count
                if kind == "absolute":
                    b: Bounds = rule  # type: ignore[assignment]
                    status, reason = _judge_absolute(metric, where, value, b)
                    bv, delta, lo, hi, text = None, None, b.min, b.max, _bound_text(b)
                else:
                    c: Change = rule  # type: ignore[assignment]
                    bv, _ = _value(base, metric, sl, group)  # type: ignore[arg-type]
                    status, reason = _judge_change(metric, where, value, bv, c)
                    delta = None if value is None or bv is None else value - bv
                    lo = None if bv is None or c.max_drop is None else bv - c.max_drop
                    hi = None if bv is None or c.max_rise is None else bv + c.max_rise
                    text = _change_text(c)
                if small:
                    status, reason = "skipped", f"{where} has {n} rows, fewer than min_count {gate.min_count}"
                checks.append(Check(kind, metric, sl, group, value, bv, delta, text, lo, hi, status, reason, n))
    blessed = not any(c.status == "fail" for c in checks)
    return GateResult(blessed=blessed, checks=checks, candidate=candidate, baseline=base, gate=gate,
                      fairness=fairness)


def _fair_checks(kind: str, metric: str, rule: Bounds | Change, specs: Sequence[Any],
                 fairness: dict[str, FairnessReport]) -> list[Check]:
    over = rule.over if rule.over is not None else specs
    t = 0.5 if rule.threshold is None else rule.threshold
    out = []
    for item in over:
        feature = parse_slices([item])[0].name
        label = f"groups of {feature} at threshold {t:g}"
        value = _num(fairness["candidate"].disparity(metric, feature, t))
        if kind == "absolute":
            b: Bounds = rule  # type: ignore[assignment]
            status, reason = _judge_absolute(metric, label, value, b)
            out.append(Check(kind, metric, feature, None, value, None, None, _bound_text(b), b.min, b.max, status,
                             reason, None))
        else:
            c: Change = rule  # type: ignore[assignment]
            bv = _num(fairness["baseline"].disparity(metric, feature, t))
            status, reason = _judge_change(metric, label, value, bv, c)
            delta = None if value is None or bv is None else value - bv
            lo = None if bv is None or c.max_drop is None else bv - c.max_drop
            hi = None if bv is None or c.max_rise is None else bv + c.max_rise
            out.append(Check(kind, metric, feature, None, value, bv, delta, _change_text(c), lo, hi, status,
                             reason, None))
    return out


# -- predictors ------------------------------------------------------------------------------
def check_baseline_schema(candidate: Any, baseline: Any) -> None:
    """Raise :class:`SchemaMismatchError` unless both models take the same inputs and predict the same thing.

    Feature names and kinds, the task and the classes (in order) must agree; the
    message lists every difference.
    """
    a, b = candidate.schema, baseline.schema
    problems = []
    if a.task != b.task:
        problems.append(f"task {b.task!r} instead of {a.task!r}")
    if tuple(a.classes) != tuple(b.classes):
        problems.append(f"classes {list(b.classes)} instead of {list(a.classes)}")
    fa = {c.name: c.kind for c in a.features}
    fb = {c.name: c.kind for c in b.features}
    missing = [n for n in fa if n not in fb]
    extra = [n for n in fb if n not in fa]
    if missing:
        problems.append(f"no input columns {missing}")
    if extra:
        problems.append(f"extra input columns {extra}")
    kinds = [f"{n} ({fb[n]} instead of {fa[n]})" for n in fa if n in fb and fa[n] != fb[n]]
    if kinds:
        problems.append(f"other column kinds: {', '.join(kinds)}")
    if problems:
        raise SchemaMismatchError(
            f"The baseline model has a different input schema from the candidate: {'; '.join(problems)}. "
            "Compare against a baseline trained on the same columns and target."
        )


def resolve_model_file(path: str | os.PathLike[str]) -> Path:
    """The model file behind ``path``: the file itself, or in a folder ``model.onnx`` then ``model.safetensors``.

    A run folder (``runs/<run-id>``) holds the exported ``model.onnx``; a training step's
    folder (``runs/<run-id>/train/mlp``) holds ``model.safetensors`` or ``model.onnx``.

    Raises
    ------
    DataError
        Nothing is there, or the folder holds no model file.
    """
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        for name in ("model.onnx", "model.safetensors"):
            if (p / name).is_file():
                return p / name
        raise DataError(f"Folder {str(p)!r} holds no model.onnx or model.safetensors; give a model file or a run "
                        "folder (runs/<run-id>) whose run finished its export step.")
    raise DataError(f"Model {str(path)!r} does not exist; give a .onnx or .safetensors file or a run folder "
                    "(runs/<run-id>).")


def _scores(predictor: Any, X: pd.DataFrame, who: str) -> np.ndarray:
    out = predictor.predict(X) if predictor.task == "regression" else predictor.predict_proba(X)
    out = np.asarray(out, dtype=np.float64)
    if out.shape[:1] != (len(X),):
        raise DataError(f"The {who} model returned {out.shape[:1][0] if out.ndim else 0} predictions for "
                        f"{len(X)} rows; it must return one per row.")
    bad = ~np.isfinite(out.reshape(len(X), -1)).all(axis=1)
    if bad.any():
        raise DataError(f"The {who} model returned NaN or infinite predictions on {int(bad.sum())} of {len(X)} rows "
                        f"(first at row {int(np.flatnonzero(bad)[0])}); check the model and those rows' inputs.")
    return out


def gate_predictors(
    candidate: Any,
    frame: pd.DataFrame,
    gate: GateConfig | Mapping[str, Any] | None = None,
    *,
    baseline: Any | None = None,
    target: str | None = None,
    slices: Sequence[Any] = (),
    metrics: Sequence[str] | None = None,
    bootstrap: int = 0,
    seed: int = 0,
) -> GateResult:
    """Score a candidate (and a baseline) on raw rows and judge it against a gate.

    Parameters
    ----------
    candidate, baseline : Predictor
        The baseline must have the candidate's input schema (:func:`check_baseline_schema`).
    frame : pandas.DataFrame
        Raw rows: the feature columns, the target and the slice columns.
    gate : GateConfig, mapping or None
        ``None``: no checks (only the slice tables).
    target : str or None
        The target column; default: the candidate's (its labels are encoded with the
        candidate's classes).

    Raises
    ------
    DataError
        The target or a feature column is missing (the message lists the columns),
        labels unseen in training, NaN predictions.
    SchemaMismatchError
        The baseline's schema differs from the candidate's.
    """
    from modelyard.data._schema import encode_target

    gate = parse_gate(gate if gate is not None else {})
    if baseline is not None:
        check_baseline_schema(candidate, baseline)
    schema = candidate.schema
    columns = [str(c) for c in frame.columns]
    target = target or schema.target
    if target not in columns:
        raise DataError(f"Target column {target!r} is not in the data; columns are {columns}. "
                        "Name it with --target (target=...).")
    missing = [c for c in candidate.feature_names if c not in columns]
    if missing:
        raise DataError(f"The data lacks the model's feature columns {missing}; columns are {columns}.")
    if frame[target].isna().any():
        raise DataError(f"Target column {target!r} has {int(frame[target].isna().sum())} missing values; drop those "
                        "rows first.")
    try:
        y_true = encode_target(frame[target], schema)
    except DataError as exc:
        raise DataError(str(exc).replace(f"Target {schema.target!r}", f"Target column {target!r}", 1)) from None
    X = frame[list(candidate.feature_names)]
    y_score = _scores(candidate, X, "candidate")
    base_score = _scores(baseline, X, "baseline") if baseline is not None else None
    return evaluate_gate(gate, y_true=y_true, y_score=y_score, frame=frame, task=candidate.task,
                         baseline_score=base_score, slices=slices, metrics=metrics, bootstrap=bootstrap, seed=seed)

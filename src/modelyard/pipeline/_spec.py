"""The pipeline spec: YAML validated by typed models before anything runs.

A spec names the data, the models to train, and how to evaluate, export and report.
Every error names the field's path (``evaluate.slices[3].buckets``), the bad value
and what is allowed, in one line::

    name: adult-income
    data: {source: adult, sensitive: [sex, race], split: {valid: 0.1, seed: 0}}
    train:
      models:
        mlp: {family: mlp}
        gbm: {family: gbm}
      select: {metric: accuracy}
    evaluate: {slices: [sex, race, [sex, race], {feature: age, buckets: [25, 45, 65]}]}
    features: {method: mutual_info, k: auto}     # optional: select or extract features first
    export: {format: onnx}
    report: {format: html}
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from modelyard.errors import SpecError

__all__ = [
    "PipelineSpec", "DataSpec", "SplitSpec", "TrainSpec", "SelectSpec", "BucketSlice", "EvaluateSpec",
    "ExportSpec", "ReportSpec", "SearchSpec", "AutoMLSpec", "NASSpec", "FeaturesSpec", "FEATURE_SELECTION", "FEATURE_EXTRACTION",
    "CompressSpec", "VariantSpec", "PruneVariantSpec", "StructuredVariantSpec",
    "load_spec", "parse_spec", "MODEL_FAMILY_CONFIGS", "model_config_class", "ExplainSpec", "EXPLAIN_METHODS",
    "SubsampleSpec", "IMAGE_FAMILIES", "IMAGE_SOURCES", "is_image_source",
    "RemediationSpec", "RemediationOptions", "MinDiffOptions", "LFROptions", "REMEDIATION_METHODS",
    "REMEDIATION_CONSTRAINTS", "REMEDIATION_BASES",
]

#: Model families a spec can name, and where their typed config lives. The config
#: modules import no heavy framework, so validating a spec stays fast.
MODEL_FAMILY_CONFIGS: dict[str, str] = {
    "mlp": "modelyard.models._config:MLPConfig",
    "gbm": "modelyard.models._config:GBMConfig",
    "lattice": "modelyard.models._config:LatticeConfig",
    "cnn": "modelyard.models._config:ImageNetConfig",
}

#: Families that train on images (the others train on tabular rows).
IMAGE_FAMILIES = ("cnn",)
#: Built-in data sets of images (:func:`modelyard.data.load` returns ``ImageData``); a
#: pipeline on one of them trains ``cnn`` models and stores its splits as ``.npz``.
IMAGE_SOURCES = ("mnist", "fashion_mnist")


def is_image_source(source: str) -> bool:
    """True if ``source`` names a built-in image data set (``fashion-mnist`` counts)."""
    return source.strip().lower().replace("-", "_") in IMAGE_SOURCES


def model_config_class(family: str) -> type[BaseModel]:
    module, _, attr = MODEL_FAMILY_CONFIGS[family].partition(":")
    return getattr(importlib.import_module(module), attr)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitSpec(_Strict):
    """How rows are split. Splits are seeded and stratified on the target."""

    test: float | Literal["official"] | None = Field(
        None, description="Fraction held out for test, or 'official' for the data set's own test file. "
        "Default: the official test file where the data set has one, else 0.2.")
    valid: float = Field(0.1, gt=0, lt=1, description="Fraction of training rows held out for early stopping "
                         "and model selection.")
    seed: int = Field(0, description="Seed of the split; the same seed gives the same rows.")

    @field_validator("test")
    @classmethod
    def _test_range(cls, v: Any) -> Any:
        if isinstance(v, float) and not 0 < v < 1:
            raise ValueError("must be between 0 and 1 (exclusive) or 'official'")
        return v


class SubsampleSpec(_Strict):
    """At most this many rows (or images) of each split; null keeps the whole split."""

    train: int | None = Field(None, ge=1)
    valid: int | None = Field(None, ge=1)
    test: int | None = Field(None, ge=1)
    seed: int = Field(0, ge=0, description="Seed of the sample (the split has its own seed).")


class DataSpec(_Strict):
    """Where the data comes from: a built-in data set's name or a CSV/Parquet path."""

    source: str = Field(description="Built-in data set (adult, compas, ...) or a path to a .csv or .parquet file, "
                        "relative to the spec's folder.")
    target: str | None = Field(None, description="Target column; built-in data sets have a default.")
    sensitive: list[str] | None = Field(None, description="Columns for slicing and fairness; built-ins have defaults.")
    drop: list[str] = Field(default_factory=list, description="Columns never used as features (ids, leaks).")
    categorical: list[str] = Field(default_factory=list, description="Numeric columns to treat as categorical.")
    task: Literal["binary", "multiclass", "regression"] | None = Field(None, description="Inferred when omitted.")
    split: SplitSpec = Field(default_factory=SplitSpec)
    subsample: SubsampleSpec | None = Field(None, description="Keep at most this many rows (images) per split, a "
                                            "seeded sample stratified on the target: for quick runs.")


class ModelEntry(BaseModel):
    """One model to train: a family plus that family's own config keys."""

    model_config = ConfigDict(extra="allow", frozen=True)
    family: str

    @field_validator("family")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in MODEL_FAMILY_CONFIGS:
            raise ValueError(f"unknown model family {v!r}; known: {sorted(MODEL_FAMILY_CONFIGS)}")
        return v

    def family_config(self) -> BaseModel:
        """The typed config of this entry's family (validated in :func:`parse_spec`)."""
        return model_config_class(self.family).model_validate(self.model_extra or {})


def _default_models() -> dict[str, ModelEntry]:
    return {"mlp": ModelEntry(family="mlp"), "gbm": ModelEntry(family="gbm")}


class SelectSpec(_Strict):
    """Which trained model is chosen for export: the best on the validation split."""

    metric: str | None = Field(None, description="Metric to rank models by, on the validation split. "
                               "Default: accuracy for classifiers, rmse for regression.")
    mode: Literal["max", "min"] | None = Field(None, description="Default: min for losses/errors, else max.")


class TrainSpec(_Strict):
    models: dict[str, ModelEntry] = Field(default_factory=_default_models,
                                          description="Models to train, by name; the name is a folder name.")
    select: SelectSpec = Field(default_factory=SelectSpec)

    @field_validator("models")
    @classmethod
    def _names(cls, v: dict[str, ModelEntry]) -> dict[str, ModelEntry]:
        import re

        if not v:
            raise ValueError("must name at least one model, e.g. {mlp: {family: mlp}}")
        for name in v:
            if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", name):
                raise ValueError(f"model name {name!r} must be lower-case letters, digits, '_' or '-'")
        return v


class BucketSlice(_Strict):
    """Slice a numeric feature into buckets at the given edges."""

    feature: str
    buckets: list[float] = Field(min_length=1, description="Increasing bucket edges, e.g. [25, 45, 65].")

    @field_validator("buckets")
    @classmethod
    def _increasing(cls, v: list[float]) -> list[float]:
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError("must be strictly increasing")
        return v


SliceSpec = Union[str, list[str], BucketSlice]


class EvaluateSpec(_Strict):
    slices: list[SliceSpec] | None = Field(None, description="Columns, crosses ([sex, race]) or buckets; "
                                           "default: the data's sensitive columns.")
    metrics: list[str] | None = Field(None, description="Default by task: accuracy, auc, log_loss, count "
                                      "(classification) or rmse, mae, r2, count (regression).")
    gate: dict[str, Any] | None = Field(None, description="Validation gate for the chosen model on the test split: "
                                        "{baseline: path to a model file or run folder (or null: absolute "
                                        "thresholds only), slices, min_count, thresholds: {accuracy: {min: 0.8}}, "
                                        "change: {accuracy: {max_drop: 0.01}}}; see examples/gate.yaml.")
    bootstrap: int = Field(200, ge=0, le=10000, description="Poisson-bootstrap replicates for the intervals of "
                           "every test metric, overall and per group (0: no intervals).")
    confidence: float = Field(0.95, gt=0, lt=1, description="Level of the bootstrap percentile intervals.")
    fairness: bool = Field(True, description="Fairness indicators of the chosen model over the data's sensitive "
                           "columns (binary tasks): rates per group, disparities; written to fairness.json.")

    @field_validator("gate", mode="before")
    @classmethod
    def _gate(cls, v: Any) -> Any:
        if v is None:
            return v
        # Imported here: numpy and pandas load only when a spec has a gate.
        from modelyard.evaluate._gate import parse_gate

        try:
            gate = parse_gate(v, where="gate")
        except SpecError as exc:
            raise ValueError(str(exc).removeprefix("Invalid gate: ").rstrip(".")) from None
        if gate.change and gate.baseline is None:
            raise ValueError(f"change checks ({', '.join(gate.change)}) need a baseline; give baseline: <path to a "
                             "model or run folder> or remove change")
        return gate.model_dump(mode="json")


class ExportSpec(_Strict):
    format: Literal["onnx"] = "onnx"
    atol: float = Field(1e-5, gt=0, description="Largest allowed |runtime - framework| output difference.")
    parity_rows: int = Field(2000, ge=1, description="Test rows used for the parity check.")


class ReportSpec(_Strict):
    format: Literal["html"] = "html"
    model_card: bool = True


class SearchSpec(_Strict):
    """Hyperparameter search for one model family; the best model joins the candidates as ``search``."""

    family: Literal["mlp", "gbm"] = Field("mlp", description="Model family whose hyperparameters are searched.")
    space: str | dict[str, Any] | None = Field(None, description="A built-in space name (mlp, gbm) or params "
                                               "{name: {type: float|int|categorical, ...}}; default: the family's.")
    strategy: str = Field("auto", description="auto (the default: our GP Bayesian optimization, TPE for several objectives), random, tpe, gp, cmaes, nsga2, evolution or rl.")
    trials: int = Field(20, ge=1, description="Finished trials the study holds at the end.")
    objectives: list[str] | None = Field(None, min_length=1, description="Validation metrics and costs "
                                         "(n_params, flops, latency_ms); default: accuracy (classifiers) or rmse.")
    early_stopping: str = Field("none", description="none, median, asha or hyperband (MLP, one objective).")
    workers: int = Field(1, ge=1, description="Local worker processes sharing the study.")
    storage: str | None = Field(None, description="Optuna storage URL shared by workers on many machines "
                                "(postgresql://...); default: in memory or a private journal file.")
    seed: int = 0
    timeout: float | None = Field(None, gt=0, description="Stop starting trials after this many seconds.")
    base: dict[str, Any] = Field(default_factory=dict, description="Fixed config keys of the family "
                                 "(e.g. max_epochs) that the space does not set.")


class AutoMLSpec(_Strict):
    """Tabular AutoML: tune several families within a time budget and ensemble the best; the
    recommended model (the ensemble, or the best single model) joins the candidates as ``automl``."""

    families: list[Literal["linear", "gbm", "mlp"]] = Field(
        default_factory=lambda: ["linear", "gbm", "mlp"], min_length=1,
        description="Model families to tune, cheapest first: linear, gbm, mlp.")
    time_budget: float = Field(60.0, gt=0, description="Seconds shared by the families' searches.")
    strategy: str = Field("auto", description="Search strategy of every family: auto, random, tpe, gp, cmaes, evolution "
                          "or rl.")
    metric: str | None = Field(None, description="Validation metric to rank and ensemble by; default: log_loss "
                               "(classifiers) or rmse.")
    ensemble: Literal["weighted", "stacked", "none"] = Field(
        "weighted", description="weighted: Caruana ensemble selection; stacked: a linear meta-model; none.")
    seed: int = Field(0, ge=0)
    candidates: int = Field(5, ge=1, description="Best models kept per family as ensemble candidates.")
    max_trials: int | None = Field(None, ge=1, description="Trials per family at most.")
    base: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Fixed config keys per family "
                                            "that the spaces do not set, e.g. {mlp: {max_epochs: 20}}.")


#: Keys of ``search:`` (and ``automl:``) that ``nas:`` does not take, and what to write instead.
_NAS_INSTEAD = {
    "trials": "models (the budget: networks trained)", "budget": "models (the budget: networks trained)",
    "time_budget": "models (the budget is counted in networks trained, not seconds)",
    "max_trials": "models (the budget: networks trained)", "max_epochs": "epochs (training epochs per network)",
    "family": "nothing: nas searches CNN cells; a model family is searched by search: on tabular data",
    "families": "nothing: nas searches CNN cells; families are tuned by automl: on tabular data",
    "space": "n_blocks, n_cells, n_stacks and channels (the cell space is fixed)",
    "objectives": "nothing: nas maximizes validation accuracy", "base": "the network-shape keys themselves",
    "early_stopping": "nothing: every network trains `epochs` epochs", "workers": "nothing: nas runs in one process",
}


class NASSpec(_Strict):
    """Neural architecture search on image data: CNN architectures trained on a budget of models.

    :func:`modelyard.search.nas` on the data step's train and valid splits (seeded subsets
    of them); the most accurate network joins the evaluate step's candidates as ``nas``.
    """

    strategy: str = Field("pnas", description="pnas (progressive NAS, the default: cells grow one block at a time, "
                          "a learned surrogate keeps the top `beam`), morphism (function-preserving transforms, "
                          "children inherit their parent's weights), rl, evolution, random, or another registered "
                          "search strategy.")
    models: int = Field(30, ge=1, description="Budget: networks trained in the search.")
    epochs: int = Field(1, ge=1, description="Training epochs per network.")
    n_blocks: int = Field(3, ge=1, le=5, description="Blocks per cell (PNAS: the most). Not used by morphism.")
    n_cells: int = Field(1, ge=0, description="Normal cells per stack of the cell network.")
    n_stacks: int = Field(2, ge=1, description="Stacks of cells, a reduction cell between consecutive stacks.")
    channels: int = Field(8, ge=1, description="Channels of a block output in the first stack.")
    stem_stride: int = Field(2, ge=1, le=4, description="Stride of the stem convolution; 2 makes the cells work at "
                             "half resolution (a quarter of the compute).")
    train_size: int | None = Field(3000, ge=1, description="Training images of the search (a seeded subset of the "
                                   "train split); null: all of them.")
    valid_size: int | None = Field(1000, ge=1, description="Validation images that score each network (a seeded "
                                   "subset of the valid split); null: all of them.")
    lr: float = Field(3e-3, gt=0, description="Adam learning rate of every network.")
    batch_size: int = Field(64, ge=1, description="Training batch size of every network.")
    beam: int = Field(8, ge=1, description="PNAS: cells trained per round (K).")
    initial: int | None = Field(None, ge=1, description="PNAS: cells of the first round; default: every one-block "
                                "cell the budget allows.")
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the strategy, e.g. "
                                    "{population_size: 10} for evolution or {neighbors: 2} for morphism.")
    seed: int = Field(0, ge=0, description="Seeds the subsets, every network's initialization and data order, and "
                      "the strategy.")

    @model_validator(mode="before")
    @classmethod
    def _not_search_keys(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for key in v:
                if key in _NAS_INSTEAD:
                    raise ValueError(f"unknown key {key!r} (a search:/automl: option); nas: takes "
                                     f"{_NAS_INSTEAD[key]}. Allowed keys: {', '.join(sorted(cls.model_fields))}")
        return v


class PruneVariantSpec(_Strict):
    """Unstructured pruning of a variant: the lowest-scoring weights set to zero."""

    method: str = Field("magnitude", description="A pruner that zeroes weights: magnitude (|w|) or obd "
                        "(Optimal Brain Damage saliency).")
    sparsity: float = Field(gt=0, lt=1, description="Share of the Linear/Conv weights set to zero, in (0, 1).")
    scope: Literal["global", "layer"] = Field("global", description="Rank weights over all layers or per layer.")
    epochs: int = Field(0, ge=0, description="Fine-tuning epochs on the train split along a polynomial-decay "
                        "schedule; 0: one-shot.")
    lr: float = Field(5e-4, gt=0, description="Fine-tuning learning rate.")

    @field_validator("method")
    @classmethod
    def _known_pruner(cls, v: str) -> str:
        from modelyard.compress._registry import PRUNER_ALIASES, PRUNERS

        v = PRUNER_ALIASES.get(v, v)
        known = [n for n in PRUNERS.names() if not PRUNERS.get(n).structured]
        if v not in known:
            raise ValueError(f"unknown pruning method {v!r}; known: {', '.join(known)} "
                             "(use structured: {fraction: ...} to remove whole units)")
        return v


class StructuredVariantSpec(_Strict):
    """Structured pruning of a variant: whole neurons/channels removed, layers rebuilt smaller."""

    fraction: float | None = Field(None, gt=0, lt=1, description="Share of the units removed from each layer.")
    flops: float | None = Field(None, gt=0, le=1, description="Instead of fraction: share of the multiply-adds kept.")
    criterion: Literal["l1", "l2"] = Field("l2", description="Unit importance: norm of its incoming weights.")
    scope: Literal["layer", "global"] = "layer"
    epochs: int = Field(0, ge=0, description="Fine-tuning epochs of the smaller model on the train split.")
    lr: float = Field(5e-4, gt=0)

    @model_validator(mode="after")
    def _one_target(self) -> StructuredVariantSpec:
        if (self.fraction is None) == (self.flops is None):
            raise ValueError("give exactly one of fraction (share of units removed) or flops (share of "
                             "multiply-adds kept)")
        return self


class VariantSpec(_Strict):
    """One compressed variant: structured pruning, then unstructured pruning, then quantization.

    Also written as a short string: ``dynamic_int8``, ``magnitude:0.9``,
    ``structured:0.5``, ``magnitude:0.5+static_int8``.
    """

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,99}$",
                             description="Row name in the table; default: built from the parts.")
    structured: StructuredVariantSpec | None = None
    prune: PruneVariantSpec | None = None
    quantize: str | None = Field(None, description="An ONNX Runtime quantizer: dynamic_int8, static_int8, fp16, ...")

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, v: Any) -> Any:
        if isinstance(v, str):
            from modelyard.compress._registry import parse_variant

            return parse_variant(v)
        return v

    @field_validator("quantize")
    @classmethod
    def _known_quantizer(cls, v: str | None) -> str | None:
        from modelyard.compress._registry import QUANTIZERS

        if v is not None and v not in QUANTIZERS:
            raise ValueError(f"unknown quantizer {v!r}; known: {', '.join(QUANTIZERS.names())}")
        return v

    @model_validator(mode="after")
    def _something(self) -> VariantSpec:
        if self.structured is None and self.prune is None and self.quantize is None:
            raise ValueError("a variant needs at least one of prune, structured or quantize, "
                             "e.g. {quantize: dynamic_int8}")
        return self


class CompressSpec(_Strict):
    """Compress the chosen model several ways, measure every variant on ONNX Runtime, pick the best.

    Every variant is measured on the test split (size raw and gzip, p50/p99 latency per
    batch size, metrics overall and per slice); the best is the smallest (``prefer``)
    among those whose validation ``metric`` drops by at most ``max_accuracy_drop``.
    """

    model: str = Field("chosen", description="The model compressed: 'chosen' (the evaluate step's choice) or a "
                       "trained model's name.")
    variants: list[VariantSpec] | None = Field(None, min_length=1, description="Variants to build; default: "
                                               "int8 and fp16 quantization, plus pruning for a torch model.")
    metric: str | None = Field(None, description="Metric the budget applies to; default accuracy (rmse for "
                               "regression).")
    max_accuracy_drop: float = Field(0.01, ge=0, description="Largest allowed validation drop of the metric.")
    prefer: Literal["size", "gzip", "latency"] = Field("size", description="What the best variant minimizes: "
                                                       "file size, gzip size or p50 latency at the largest batch.")
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 64], min_length=1,
                                   description="Batch sizes timed on ONNX Runtime.")
    repeats: int = Field(50, ge=1, description="Timed runs per batch size.")
    warmup: int = Field(5, ge=0, description="Untimed runs per batch size first.")
    threads: int = Field(1, ge=1, description="ONNX Runtime intra-op threads while timing.")
    calibration_rows: int = Field(512, ge=1, description="Train rows that calibrate static quantization.")
    rows: int | None = Field(None, ge=1, description="Measure on at most this many test rows; default all.")
    seed: int = Field(0, ge=0)

    @field_validator("variants", mode="before")
    @classmethod
    def _short_forms(cls, v: Any) -> Any:
        if isinstance(v, str):
            raise ValueError(f"must be a list of variants, e.g. [{v}]")
        return v

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v) or len(set(v)) != len(v):
            raise ValueError("must be distinct positive integers, e.g. [1, 64]")
        return v


#: Feature-selection methods a spec can name (kept in step with
#: :data:`modelyard.compress.FEATURE_SELECTION_METHODS`; the spec does not import scikit-learn).
FEATURE_SELECTION = ("mutual_info", "anova", "chi2", "rfe", "l1", "tree")
#: Feature-extraction methods (:data:`modelyard.compress.FEATURE_EXTRACTION_METHODS`).
FEATURE_EXTRACTION = ("pca", "ica", "nmf")


class FeaturesSpec(_Strict):
    """Feature selection or extraction as a data step between ``data`` and the models.

    A selection method keeps the raw columns it ranks best; an extraction method replaces
    the raw columns by components fitted on the training split. ``k`` (columns or
    components) is chosen on the validation split unless given.
    """

    method: Literal["mutual_info", "anova", "chi2", "rfe", "l1", "tree", "pca", "ica", "nmf"] = Field(
        description="Selection: mutual_info, anova, chi2, rfe, l1, tree (keep raw columns). "
        "Extraction: pca, ica, nmf (components replace the raw columns).")
    k: int | Literal["auto"] = Field("auto", description="Columns (selection) or components (extraction) to keep; "
                                     "auto: the smallest k within `tolerance` of the best validation score "
                                     "(selection) or reaching `variance` (extraction).")
    variance: float = Field(0.95, gt=0, le=1, description="Extraction with k: auto: explained-variance share to reach.")
    target_size: int | None = Field(None, gt=0, description="Extraction with k: auto: parameter bytes the served "
                                    "model (MLP plus the transform) may have; keeps the largest k that fits.")
    tolerance: float = Field(0.005, ge=0, description="Selection with k: auto: allowed drop of the validation "
                             "score below the best (accuracy or R²).")
    model: Literal["linear", "gbm"] = Field("linear", description="Fast model that scores each k on the "
                                            "validation split.")
    seed: int = Field(0, description="Seeds the scores, the extractors and the fast model.")

    @field_validator("method", mode="before")
    @classmethod
    def _known_method(cls, v: Any) -> Any:
        if isinstance(v, str) and v not in FEATURE_SELECTION + FEATURE_EXTRACTION:
            raise ValueError(f"unknown feature method {v!r}; known: selection {', '.join(FEATURE_SELECTION)}; "
                             f"extraction {', '.join(FEATURE_EXTRACTION)}")
        return v

    @field_validator("k", mode="before")
    @classmethod
    def _positive_k(cls, v: Any) -> Any:
        if isinstance(v, bool) or (isinstance(v, int) and v < 1):
            raise ValueError("must be 'auto' or a positive number of columns or components")
        return v

    @property
    def is_extraction(self) -> bool:
        """True for pca, ica and nmf (components), False for the selection methods (raw columns)."""
        return self.method in FEATURE_EXTRACTION


#: Explanation methods a spec can name (:data:`modelyard.explain._step.EXPLAIN_METHODS`).
EXPLAIN_METHODS = ("permutation", "shap", "pdp", "lime", "ig", "saliency")
#: Methods for image models (:data:`modelyard.explain._step.IMAGE_EXPLAIN_METHODS`).
IMAGE_EXPLAIN_METHODS = ("ig", "saliency", "lime")


def _method_list(v: Any, known: Sequence[str], what: str) -> Any:
    """Check a spec's list of method names: a list, every name known, none twice."""
    if isinstance(v, str):
        raise ValueError(f"must be a list of methods, e.g. [{v}]")  # noqa: TRY004 - pydantic reports ValueError
    if isinstance(v, list):
        unknown = [m for m in v if m not in known]
        if unknown:
            raise ValueError(f"unknown {what} method(s) {unknown}; known: {', '.join(known)}")
        if len(set(v)) != len(v):
            raise ValueError("names a method twice; give each method once")
    return v


class ExplainSpec(_Strict):
    """Explain the chosen model after evaluation: importances, SHAP, PDP/ICE, per-row explanations.

    The defaults run in seconds: rows are sampled from the split, the SHAP background is
    a small k-means summary of training rows.
    """

    methods: list[str] | None = Field(None, min_length=1, description="Tabular: permutation, shap, pdp, lime, ig; "
                                      "default permutation, shap, pdp, and ig for a differentiable (torch) model. "
                                      "Images: ig, saliency, lime (heatmaps per image); default all three.")
    rows: list[int] = Field(default_factory=lambda: [0], description="Positions in the split explained one by "
                            "one (per-row tables and plots), e.g. [0, 5, 9].")
    model: str | None = Field(None, description="Model to explain; default: the one the evaluate step chose.")
    split: Literal["test", "valid"] = Field("test", description="Split whose rows are explained.")
    max_rows: int = Field(500, ge=1, description="Sampled rows for permutation importance and PDP/ICE.")
    shap_rows: int = Field(100, ge=1, description="Sampled rows of the SHAP summary (plus the chosen rows).")
    background: int = Field(20, ge=1, description="k-means background rows for SHAP (cost grows with it).")
    background_pool: int = Field(500, ge=1, description="Training rows the background is summarized from.")
    n_repeats: int = Field(5, ge=2, description="Permutation repeats (at least 2 for an interval).")
    metric: str | None = Field(None, description="Permutation metric; default accuracy (classifiers) or rmse.")
    top_k: int = Field(3, ge=1, description="Most important features that get PDP/ICE and dependence plots.")
    grid_resolution: int = Field(20, ge=2, description="PDP grid points.")
    ice_rows: int = Field(30, ge=0, description="ICE curves kept per feature.")
    kernel_samples: int = Field(512, ge=2, description="Kernel SHAP coalitions per row.")
    exact_max_features: int = Field(8, ge=1, le=14, description="Exact Shapley values up to this many features, "
                                    "Kernel SHAP beyond (Tree SHAP for gradient boosting either way).")
    lime_samples: int = Field(1000, ge=2, description="LIME neighbours per row.")
    ig_steps: int = Field(32, ge=1, description="Integrated-gradients quadrature points.")
    seed: int = Field(0, ge=0, description="Seeds the row samples, background, shuffles and samplers.")

    @field_validator("methods", mode="before")
    @classmethod
    def _known_methods(cls, v: Any) -> Any:
        return _method_list(v, EXPLAIN_METHODS, "explain")

    @field_validator("rows", mode="before")
    @classmethod
    def _row_positions(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            raise ValueError(f"must be a list of row positions, e.g. [{v}]")  # noqa: TRY004 - pydantic reports ValueError
        if isinstance(v, list):
            bad = [r for r in v if isinstance(r, bool) or not isinstance(r, int) or r < 0]
            if bad:
                raise ValueError(f"row positions must be integers >= 0; got {bad}")
            if len(set(v)) != len(v):
                raise ValueError("names a row twice; give each row once")
        return v

    @field_validator("metric")
    @classmethod
    def _score_metric(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from modelyard.evaluate import METRICS

        known = [n for n in METRICS.names() if METRICS.get(n).greater_is_better is not None]
        if v not in known:
            raise ValueError(f"unknown metric {v!r}; known: {known}")
        return v


#: Fairness remediation methods a spec can name (kept in step with
#: :data:`modelyard.evaluate.REMEDIATION_METHODS`; the spec does not import numpy).
REMEDIATION_METHODS = ("reweighing", "mindiff", "threshold", "lfr")
#: Constraints of the ``threshold`` method (:data:`modelyard.evaluate._remediation_threshold.CONSTRAINTS`).
REMEDIATION_CONSTRAINTS = ("demographic_parity", "equalized_odds", "true_positive_rate_parity",
                           "false_positive_rate_parity")
#: Base models of the remediation section, and the methods that apply to each (mindiff is a
#: penalty in the torch MLP's loss, so it needs the MLP).
REMEDIATION_BASES: dict[str, tuple[str, ...]] = {
    "gbm": ("reweighing", "threshold", "lfr"),
    "mlp": ("reweighing", "mindiff", "threshold", "lfr"),
}


class MinDiffOptions(_Strict):
    """Options of ``mindiff`` (:class:`~modelyard.evaluate.MinDiffPenalty`); unset ones keep its defaults."""

    weight: float | None = Field(None, ge=0, description="Multiplies the MMD penalty (default 1.5).")
    bandwidth: float | None = Field(None, gt=0, description="Gaussian kernel bandwidth on probabilities "
                                    "(default 0.1).")
    label: int | None = Field(None, ge=0, le=1, description="Compare the groups' scores on rows of this label "
                              "only (default 0: the negatives, which targets the false-positive-rate gap).")


class LFROptions(_Strict):
    """Options of ``lfr`` (:class:`~modelyard.evaluate.LearnedFairRepresentation`); unset ones keep its defaults."""

    n_prototypes: int | None = Field(None, ge=2, description="Prototypes of the representation (default 10).")
    reconstruction: float | None = Field(None, ge=0, description="Weight A_x of the reconstruction loss "
                                         "(default 0.01).")
    prediction: float | None = Field(None, ge=0, description="Weight A_y of the prediction loss (default 1.0).")
    fairness: float | None = Field(None, ge=0, description="Weight A_z of the parity loss (default 1.0; AIF360 uses 50, which on Adult predicts worse than the majority class).")
    max_iter: int | None = Field(None, ge=1, description="L-BFGS iterations in all (default 150; the cost of "
                                 "the method grows with it).")


class RemediationOptions(_Strict):
    """Per-method options; only ``mindiff`` and ``lfr`` take any."""

    mindiff: MinDiffOptions | None = Field(None, description="Options of the MinDiff penalty.")
    lfr: LFROptions | None = Field(None, description="Options of learning fair representations.")


class RemediationSpec(_Strict):
    """Fairness remediation on the test split: each method's accuracy and group gaps before and after.

    Tabular binary tasks only. Each method is run on the data step's splits by
    :func:`modelyard.evaluate.remediate`; the step writes ``remediation.json``,
    ``remediation.csv`` and the trade-off plot ``remediation.png``, and the report shows them.
    """

    sensitive: str | None = Field(None, description="The sensitive column whose groups are made fairer (it need "
                                  "not be a feature); default: the data's first sensitive column.")
    base: Literal["gbm", "mlp"] = Field("gbm", description="The base model remediated (and the 'before'): "
                                        "gradient boosting or the torch MLP.")
    methods: list[str] | None = Field(None, min_length=1, validate_default=True, description="reweighing, "
                                      "mindiff, threshold, lfr; default: every method that applies to the base "
                                      "(mindiff needs base mlp).")
    constraint: Literal["demographic_parity", "equalized_odds", "true_positive_rate_parity",
                        "false_positive_rate_parity"] = Field(
        "demographic_parity", description="threshold: the parity the per-group thresholds reach on the "
        "validation split.")
    tolerance: float = Field(0.0, ge=0, le=1, description="threshold: the largest gap between groups allowed on "
                             "the validation split.")
    seed: int = Field(0, ge=0, description="Seeds the base model, the remediation and the thresholds' draws.")
    options: RemediationOptions = Field(default_factory=RemediationOptions, description="Per-method options, "
                                        "e.g. {mindiff: {weight: 2.0}, lfr: {max_iter: 50}}.")
    base_params: dict[str, Any] = Field(default_factory=dict, description="Config keys of the base model "
                                        "(GBMConfig or MLPConfig fields, e.g. {max_iter: 100}).")

    @field_validator("methods", mode="before")
    @classmethod
    def _known_methods(cls, v: Any) -> Any:
        return _method_list(v, REMEDIATION_METHODS, "remediation")

    @field_validator("methods")
    @classmethod
    def _default_methods(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        base = info.data.get("base")
        if v is None and base in REMEDIATION_BASES:  # filled in, so the resolved spec names them
            return list(REMEDIATION_BASES[base])
        if v is not None and "mindiff" in v and base != "mlp":
            raise ValueError("mindiff is a penalty in the torch MLP's training loss; set the base to mlp or "
                             "remove mindiff")
        return v

    @model_validator(mode="after")
    def _options_of_named_methods(self) -> RemediationSpec:
        given = [name for name in RemediationOptions.model_fields if getattr(self.options, name) is not None]
        for name in given:
            if name not in self.method_names:
                raise ValueError(f"options.{name} is given but {name} is not among the methods "
                                 f"{list(self.method_names)}; add it to methods or remove options.{name}")
        return self

    @property
    def method_names(self) -> tuple[str, ...]:
        """The methods run: those given, else every method that applies to the base."""
        return tuple(self.methods) if self.methods is not None else REMEDIATION_BASES[self.base]


class PipelineSpec(_Strict):
    """A whole pipeline: data, (features), (search), (automl), train, evaluate, export, report."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    data: DataSpec
    features: FeaturesSpec | None = Field(None, description="Optional feature selection or extraction after the "
                                          "data step; every model trains on its output.")
    search: SearchSpec | None = Field(None, description="Optional hyperparameter search before training.")
    automl: AutoMLSpec | None = Field(None, description="Optional AutoML over several families before training.")
    nas: NASSpec | None = Field(None, description="Optional neural architecture search on image data before "
                                "training; the best network joins the candidates as `nas`.")
    train: TrainSpec = Field(default_factory=TrainSpec)
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)
    explain: ExplainSpec | None = Field(None, description="Optional explanations of the chosen model after "
                                        "evaluation (importances, SHAP, PDP/ICE, per-row).")
    compress: CompressSpec | None = Field(None, description="Optional compression of the chosen model: pruned "
                                          "and quantized variants measured on ONNX Runtime, the best recorded.")
    remediation: RemediationSpec | None = Field(None, description="Optional fairness remediation (tabular binary "
                                                "tasks): methods compared before and after on the test split.")
    export: ExportSpec = Field(default_factory=ExportSpec)
    report: ReportSpec = Field(default_factory=ReportSpec)

    @model_validator(mode="before")
    @classmethod
    def _image_default_models(cls, v: Any) -> Any:
        """On a built-in image data set, the default model is one ``cnn`` (not mlp and gbm)."""
        if not isinstance(v, dict) or not isinstance(v.get("data"), dict):
            return v
        source = v["data"].get("source")
        if not isinstance(source, str) or not is_image_source(source):
            return v
        train = v.get("train")
        if train is None:
            return {**v, "train": {"models": {"cnn": {"family": "cnn"}}}}
        if isinstance(train, dict) and "models" not in train:
            return {**v, "train": {**train, "models": {"cnn": {"family": "cnn"}}}}
        return v

    @model_validator(mode="after")
    def _select_metric(self) -> PipelineSpec:
        return self

    def resolved(self) -> dict[str, Any]:
        """The spec as plain data with every default filled in (model configs included)."""
        out = self.model_dump(mode="json")
        for name, entry in self.train.models.items():
            out["train"]["models"][name] = {"family": entry.family, **entry.family_config().model_dump(mode="json")}
        return out


# -- errors ------------------------------------------------------------------------------
def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # pydantic adds union-member names (str, list[str], BucketSlice) to the location.
    keep = []
    for part in loc:
        if isinstance(part, str) and (part in {"str", "list[str]", "float", "int", "literal['official']", "none"}
                                      or part.startswith(("list[", "function-", "literal[", "BucketSlice"))):
            continue
        keep.append(part)
    return tuple(keep)


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """Field names allowed at ``loc`` (the mapping that holds the unknown key), if found."""
    import typing

    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        elif isinstance(part, int) or isinstance(part, str):
            args = [a for a in typing.get_args(current) if a is not type(None)]
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            if models:
                current = models[-1]
            elif args:
                current = args[-1]
            else:
                return None
        while typing.get_origin(current) is Union or type(current).__name__ == "UnionType":
            args = [a for a in typing.get_args(current) if a is not type(None)]
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            current = models[0] if len(models) == 1 else (args[0] if len(args) == 1 else current)
            if len(models) != 1 and len(args) != 1:
                break
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return None


def _format_errors(exc: ValidationError, *, model: type[BaseModel], prefix: tuple[Any, ...] = (),
                   where: str = "spec") -> SpecError:
    errors = []
    for err in exc.errors(include_url=False):
        errors.append((_clean_loc(tuple(err["loc"])), err))
    # A value that matched no member of a union (a slice entry) yields one error per
    # member; keep the deepest ones, and merge those at the same place with "or".
    locs = [loc for loc, _ in errors]
    errors = [(loc, err) for loc, err in errors
              if not any(other != loc and other[:len(loc)] == loc for other in locs)]
    merged: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for loc, err in errors:
        merged.setdefault(loc, []).append(err)
    lines = []
    for raw_loc, errs in merged.items():
        loc = prefix + raw_loc
        err = errs[0]
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, raw_loc[:-1])
            hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
            lines.append(f"{_path(loc[:-1])}: unknown key {loc[-1]!r}{hint}")
        elif err["type"] == "missing":
            lines.append(f"{_path(loc)}: required field is missing")
        else:
            msg = " or ".join(dict.fromkeys(e["msg"].removeprefix("Value error, ") for e in errs))
            value = err.get("input")
            shown = json.dumps(value, default=str)
            if len(shown) > 60:
                shown = shown[:57] + "..."
            lines.append(f"{_path(loc)}: {msg} (got {shown})")
    more = f" (and {len(lines) - 1} more: {'; '.join(lines[1:3])})" if len(lines) > 1 else ""
    return SpecError(f"Invalid {where}: {lines[0]}{more}.")


def parse_spec(data: Any, *, where: str = "spec") -> PipelineSpec:
    """Validate plain data (as loaded from YAML) into a :class:`PipelineSpec`."""
    if not isinstance(data, dict):
        raise SpecError(f"Invalid {where}: the top level must be a mapping with keys name, data, train, ...; "
                        f"got {type(data).__name__}.")
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        raise _format_errors(exc, model=PipelineSpec, where=where) from None
    _check_data_kind(spec, where)
    if spec.features is not None:
        _check_features(spec.features, where)
    if spec.search is not None:
        _check_search(spec.search, where)
    if spec.search is not None and "search" in spec.train.models:
        raise SpecError(f"Invalid {where}: train.models: the name 'search' is taken by the searched model; "
                        "rename that model.")
    if spec.automl is not None:
        _check_automl(spec.automl, where)
        if "automl" in spec.train.models:
            raise SpecError(f"Invalid {where}: train.models: the name 'automl' is taken by the AutoML model; "
                            "rename that model.")
    if spec.nas is not None:
        _check_nas(spec.nas, where)
        if "nas" in spec.train.models:
            raise SpecError(f"Invalid {where}: train.models: the name 'nas' is taken by the architecture-search "
                            "model; rename that model.")
    if spec.explain is not None and spec.explain.model is not None:
        candidates = list(spec.train.models) + (["search"] if spec.search is not None else []) + (
            ["automl"] if spec.automl is not None else [])
        if spec.explain.model not in candidates:
            raise SpecError(f"Invalid {where}: explain.model: no model {spec.explain.model!r} in this pipeline; "
                            f"models are {candidates} (or leave it out to explain the chosen one).")
    if spec.compress is not None:
        _check_compress(spec, where)
    if spec.remediation is not None:
        _check_remediation(spec, where)
    for name, entry in spec.train.models.items():
        _check_family_config(entry.family, entry.model_extra or {}, ("train", "models", name), where)
    return spec


def _check_data_kind(spec: PipelineSpec, where: str) -> None:
    """Image data takes image families and image options only; tabular data the tabular ones."""
    source = spec.data.source
    if not is_image_source(source) and spec.nas is not None:
        raise SpecError(f"Invalid {where}: nas: searches CNN architectures for images, but data.source {source!r} is "
                        f"tabular; remove nas, use search: (hyperparameters of one family) or automl: for tabular "
                        f"data, or a built-in image data set ({', '.join(IMAGE_SOURCES)}).")
    explain_methods = (spec.explain.methods or []) if spec.explain is not None else []
    if not is_image_source(source):
        if "saliency" in explain_methods:
            raise SpecError(f"Invalid {where}: explain.methods: saliency draws heatmaps of image models, but "
                            f"data.source {source!r} is tabular; use ig (integrated gradients) for a torch model's "
                            "columns, or shap/lime/permutation.")
        for name, entry in spec.train.models.items():
            if entry.family in IMAGE_FAMILIES:
                raise SpecError(f"Invalid {where}: train.models.{name}.family: {entry.family!r} trains on images, but "
                                f"data.source {source!r} is tabular; use a built-in image data set "
                                f"({', '.join(IMAGE_SOURCES)}) or a tabular family (mlp, gbm, lattice).")
        return
    tabular_only = [("features", spec.features), ("search", spec.search), ("automl", spec.automl),
                     ("evaluate.gate", spec.evaluate.gate)]
    for section, value in tabular_only:
        if value is not None:
            hint = " (to search CNN architectures on images, use nas:)" if section in ("search", "automl") else ""
            raise SpecError(f"Invalid {where}: {section}: is tabular-only for now, and data.source {source!r} is an "
                            f"image data set; remove {section} from the spec{hint}.")
    not_image = [m for m in explain_methods if m not in IMAGE_EXPLAIN_METHODS]
    if not_image:
        raise SpecError(f"Invalid {where}: explain.methods: {not_image} explain table columns, but data.source "
                        f"{source!r} is an image data set; give methods among {', '.join(IMAGE_EXPLAIN_METHODS)} "
                        "(heatmaps per image), or omit methods for all three.")
    data = spec.data
    for option in ("target", "sensitive", "task"):
        value = getattr(data, option)
        if value is not None and not (option == "task" and value == "multiclass"):
            raise SpecError(f"Invalid {where}: data.{option}: is a tabular option (got {json.dumps(value)}); image data "
                            f"set {source!r} has its labels as target and no columns; remove data.{option}.")
    for option in ("drop", "categorical"):
        if getattr(data, option):
            raise SpecError(f"Invalid {where}: data.{option}: names columns, but image data set {source!r} has none; "
                            f"remove data.{option}.")
    slices = spec.evaluate.slices
    if slices is not None and any(s != "class" for s in slices):
        bad = next(s for s in slices if s != "class")
        raise SpecError(f"Invalid {where}: evaluate.slices: {json.dumps(bad, default=str)} names a column, but image "
                        f"data set {source!r} has none; images are sliced by true class: give [class] (the default) "
                        "or [] for none.")
    for name, entry in spec.train.models.items():
        if entry.family not in IMAGE_FAMILIES:
            raise SpecError(f"Invalid {where}: train.models.{name}.family: {entry.family!r} trains on tabular rows, "
                            f"but data.source {source!r} is an image data set; use family: cnn (with arch: mlp for "
                            "a dense network on the pixels).")


def _check_remediation(spec: PipelineSpec, where: str) -> None:
    """Remediation needs tabular rows and a binary target (when the spec states the task); check the base config."""
    section = spec.remediation
    assert section is not None
    source = spec.data.source
    if is_image_source(source):
        raise SpecError(f"Invalid {where}: remediation: fairness remediation needs tabular rows with a sensitive "
                        f"column, and data.source {source!r} is an image data set; remove remediation, or use a "
                        "tabular data set (adult, compas, or a CSV/Parquet file).")
    if spec.data.task is not None and spec.data.task != "binary":
        raise SpecError(f"Invalid {where}: remediation: needs a binary target, and data.task is "
                        f"{spec.data.task!r}; remove remediation, or give a binary task.")
    _check_family_config(section.base, section.base_params, ("remediation", "base_params"), where)


def _check_family_config(family: str, params: dict[str, Any], path: tuple[str, ...], where: str) -> None:
    """Validate config keys of a model family; an error names the field under ``path``."""
    cls = model_config_class(family)
    try:
        cls.model_validate(params)
    except ValidationError as exc:
        raise _format_errors(exc, model=cls, prefix=path, where=where) from None


def _check_nas(section: NASSpec, where: str) -> None:
    """Check the nas section: a known strategy (the message lists them) and strategy options nas sets itself."""
    from modelyard.search._nas import _known_strategies

    known = _known_strategies()
    if section.strategy not in known:
        raise SpecError(f"Invalid {where}: nas.strategy: unknown NAS strategy {section.strategy!r}; known: "
                        f"{', '.join(known)}.")
    if "callback" in section.options:
        raise SpecError(f"Invalid {where}: nas.options.callback: is set by the nas step (its progress bar); "
                        "remove it.")


def _check_compress(spec: PipelineSpec, where: str) -> None:
    """Check the compress section: a model of this pipeline, variant names distinct."""
    from modelyard.compress._step import make_variants

    section = spec.compress
    assert section is not None
    candidates = list(spec.train.models) + (["search"] if spec.search is not None else []) + (
        ["automl"] if spec.automl is not None else []) + (["nas"] if spec.nas is not None else [])
    if section.model != "chosen" and section.model not in candidates:
        raise SpecError(f"Invalid {where}: compress.model: no model {section.model!r} in this pipeline; give "
                        f"'chosen' or one of {candidates}.")
    if section.variants is not None:
        try:
            make_variants([v.model_dump(exclude_none=True) for v in section.variants], where="compress.variants")
        except SpecError as exc:
            raise SpecError(f"Invalid {where}: {exc}") from None


def _check_features(section: FeaturesSpec, where: str) -> None:
    """Check the options that only one kind of feature method takes."""
    if section.target_size is not None:
        if not section.is_extraction:
            raise SpecError(f"Invalid {where}: features.target_size: only the extraction methods (pca, ica, nmf) "
                            f"choose k by model size; method {section.method!r} keeps raw columns. Remove "
                            "target_size or use an extraction method.")
        if section.k != "auto":
            raise SpecError(f"Invalid {where}: features.target_size: give k={section.k} or target_size="
                            f"{section.target_size}, not both: target_size chooses k. Set k: auto.")


def _check_search(search: SearchSpec, where: str) -> None:
    """Check the search section with the search package's own validators (names, space, base config)."""
    from modelyard.search import PRUNERS, SEARCH_STRATEGIES, SearchSpace

    checks = [
        ("strategy", search.strategy, SEARCH_STRATEGIES, "search strategy"),
        ("early_stopping", search.early_stopping, PRUNERS, "early stopping rule"),
    ]
    for field, value, registry, kind in checks:
        if value not in registry:
            raise SpecError(f"Invalid {where}: search.{field}: unknown {kind} {value!r}; known: {registry.names()}.")
    if isinstance(search.space, dict):
        try:
            SearchSpace.from_dict(search.space)
        except (SpecError, ValueError, TypeError) as exc:
            raise SpecError(f"Invalid {where}: search.space: {exc}") from None
    elif search.space is not None and search.space not in ("mlp", "gbm"):
        raise SpecError(f"Invalid {where}: search.space: unknown built-in space {search.space!r}; known: "
                        "['gbm', 'mlp'], or give the params as a mapping.")
    _check_family_config(search.family, search.base, ("search", "base"), where)


def _check_automl(section: AutoMLSpec, where: str) -> None:
    """Check the automl section: families once each, a known strategy and metric, base configs."""
    import modelyard.search  # noqa: F401 - registers every strategy (rl included)
    from modelyard.evaluate import METRICS
    from modelyard.search import SEARCH_STRATEGIES
    from modelyard.search._automl import LinearConfig

    for fam in section.families:
        if section.families.count(fam) > 1:
            raise SpecError(f"Invalid {where}: automl.families: {fam!r} is given twice; give each family once.")
    if section.strategy not in SEARCH_STRATEGIES:
        raise SpecError(f"Invalid {where}: automl.strategy: unknown search strategy {section.strategy!r}; "
                        f"known: {SEARCH_STRATEGIES.names()}.")
    if section.metric is not None:
        known = [n for n in METRICS.names() if METRICS.get(n).greater_is_better is not None]
        if section.metric not in known:
            raise SpecError(f"Invalid {where}: automl.metric: unknown metric {section.metric!r}; known: {known}.")
    configs: dict[str, type[BaseModel]] = {"linear": LinearConfig, "gbm": model_config_class("gbm"),
                                           "mlp": model_config_class("mlp")}
    for fam, values in section.base.items():
        if fam not in section.families:
            raise SpecError(f"Invalid {where}: automl.base: {fam!r} is not one of the tuned families "
                            f"{list(section.families)}.")
        try:
            configs[fam].model_validate(values)
        except ValidationError as exc:
            raise _format_errors(exc, model=configs[fam], prefix=("automl", "base", fam), where=where) from None


def load_spec(path: str | Path) -> PipelineSpec:
    """Read and validate a YAML spec (safe loader only).

    Raises
    ------
    SpecError
        The file is missing, not YAML, or does not validate; the message names the
        field's path, the bad value and what is allowed.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"Spec file {str(path)!r} does not exist; give the path to a YAML spec such as examples/adult.yaml.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"Spec {str(path)!r} is not valid YAML{at}: {problem}.") from None
    except UnicodeDecodeError:
        raise SpecError(f"Spec {str(path)!r} is not UTF-8 text; save it as UTF-8 YAML.") from None
    if data is None:
        raise SpecError(f"Spec {str(path)!r} is empty; it needs at least `name` and `data`.")
    return parse_spec(data, where=f"spec {str(path)!r}")

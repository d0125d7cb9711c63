"""Search: spaces, strategies, objectives, early stopping, and local or distributed workers.

Public surface::

    from modelyard.search import run, SearchSpace, Float, Int, Categorical, spaces
    result = run(spaces.mlp(), data, strategy="tpe", trials=30, objectives=("accuracy",))
    model = result.best_model()

Registries for YAML specs and the CLI: :data:`SPACES`, :data:`SEARCH_STRATEGIES`,
:data:`PRUNERS`; objectives are metric names of :data:`modelyard.evaluate.METRICS` plus
the costs in :data:`COSTS`.
"""

from modelyard.search._auto import AutoSearch, GPBOSampler  # registers "auto"
from modelyard.search._automl import (
    AUTOML_FAMILIES,
    AutoMLResult,
    EnsemblePredictor,
    LinearConfig,
    LinearPredictor,
    automl,
    ensemble_selection,
    fit_linear,
    linear_space,
)
from modelyard.search._evolution import RegularizedEvolutionSampler
from modelyard.search._objectives import (
    COSTS,
    Objective,
    flops,
    latency_ms,
    module_flops,
    n_params,
    resolve_objectives,
)
from modelyard.search._pruners import PRUNERS, make_pruner, pruning_callback
from modelyard.search._space import (
    FAMILIES,
    SPACES,
    Categorical,
    Float,
    Int,
    Param,
    SearchSpace,
    gbm_space,
    mlp_space,
    spaces,
    to_config,
)
from modelyard.search._strategies import (
    SEARCH_STRATEGIES,
    BaseSearchStrategy,
    CmaEsSearch,
    EvolutionSearch,
    GPSearch,
    NSGA2Search,
    RandomSearch,
    RLSearch,
    TPESearch,
    resolve_strategy,
)
from modelyard.search._study import SearchResult, TrialObjective, run

__all__ = [
    "AUTOML_FAMILIES",
    "COSTS",
    "FAMILIES",
    "PRUNERS",
    "SEARCH_STRATEGIES",
    "SPACES",
    "AutoMLResult",
    "AutoSearch",
    "BaseSearchStrategy",
    "Categorical",
    "CmaEsSearch",
    "EnsemblePredictor",
    "EvolutionSearch",
    "Float",
    "GPBOSampler",
    "GPSearch",
    "Int",
    "LinearConfig",
    "LinearPredictor",
    "NSGA2Search",
    "Objective",
    "Param",
    "RLSearch",
    "RandomSearch",
    "RegularizedEvolutionSampler",
    "SearchResult",
    "SearchSpace",
    "TPESearch",
    "TrialObjective",
    "automl",
    "ensemble_selection",
    "fit_linear",
    "flops",
    "gbm_space",
    "latency_ms",
    "linear_space",
    "make_pruner",
    "mlp_space",
    "module_flops",
    "n_params",
    "pruning_callback",
    "resolve_objectives",
    "resolve_strategy",
    "run",
    "spaces",
    "to_config",
]

# NAS on images (cells, PNAS, the NAS runner, conv morphisms) imports torch: loaded on first use,
# so validating a spec that names a strategy stays light.
_LAZY = {
    "OPS": "_cells",
    "Block": "_cells",
    "CellNetwork": "_cells",
    "Genotype": "_cells",
    "cell_space": "_cells",
    "count_flops": "_conv_morphism",
    "count_params": "_conv_morphism",
    "INPUT_KINDS": "_pnas",
    "PNASRecord": "_pnas",
    "PNASResult": "_pnas",
    "Surrogate": "_pnas",
    "encode_cell": "_pnas",
    "pnas_search": "_pnas",
    "NAS_STRATEGIES": "_nas",
    "NASRecord": "_nas",
    "NASResult": "_nas",
    "nas": "_nas",
    "subset": "_nas",
    "train_and_score": "_nas",
    "ConvBlock": "_conv_morphism",
    "ConvNet": "_conv_morphism",
    "ConvSkip": "_conv_morphism",
    "add_skip_conv": "_conv_morphism",
    "deepen_conv": "_conv_morphism",
    "evaluate_accuracy": "_conv_morphism",
    "morphism_search": "_conv_morphism",
    "random_morphism": "_conv_morphism",
    "train_convnet": "_conv_morphism",
    "widen_conv": "_conv_morphism",
    "widen_kernel": "_conv_morphism",
}
__all__ += sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modelyard.search' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"modelyard.search.{module}"), name)
    globals()[name] = value
    return value

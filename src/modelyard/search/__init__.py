"""Search: spaces, strategies, objectives, early stopping, and local or distributed workers.

Public surface::

    from modelyard.search import run, SearchSpace, Float, Int, Categorical, spaces
    result = run(spaces.mlp(), data, strategy="tpe", trials=30, objectives=("accuracy",))
    model = result.best_model()

Registries for YAML specs and the CLI: :data:`SPACES`, :data:`SEARCH_STRATEGIES`,
:data:`PRUNERS`; objectives are metric names of :data:`modelyard.evaluate.METRICS` plus
the costs in :data:`COSTS`.
"""

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
    "AutoMLResult",
    "EnsemblePredictor",
    "LinearConfig",
    "LinearPredictor",
    "automl",
    "ensemble_selection",
    "fit_linear",
    "linear_space",
    "COSTS",
    "FAMILIES",
    "PRUNERS",
    "SEARCH_STRATEGIES",
    "SPACES",
    "BaseSearchStrategy",
    "Categorical",
    "CmaEsSearch",
    "EvolutionSearch",
    "Float",
    "GPSearch",
    "Int",
    "NSGA2Search",
    "RLSearch",
    "Objective",
    "Param",
    "RandomSearch",
    "RegularizedEvolutionSampler",
    "SearchResult",
    "SearchSpace",
    "TPESearch",
    "TrialObjective",
    "gbm_space",
    "flops",
    "latency_ms",
    "module_flops",
    "make_pruner",
    "mlp_space",
    "n_params",
    "pruning_callback",
    "resolve_objectives",
    "resolve_strategy",
    "run",
    "spaces",
    "to_config",
]

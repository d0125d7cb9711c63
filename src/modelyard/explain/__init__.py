"""Explain: feature importance, partial dependence and ICE for any Predictor.

Public surface::

    from modelyard.explain import permutation_importance, partial_dependence, model_class_reliance
    imp = permutation_importance(model, data.test.frame, n_repeats=10)
    pdp = partial_dependence(model, data.test.X.sample(2000), "age", kind="both")
"""

from modelyard.explain._counterfactual import Counterfactual, counterfactuals, what_if
from modelyard.explain._explanation import Explanation
from modelyard.explain._gradients import (
    GradientAttribution,
    integrated_gradients,
    quadrature,
    saliency,
)
from modelyard.explain._lime import (
    ImageExplanation,
    lime_image,
    lime_tabular,
    weighted_ridge,
)
from modelyard.explain._masking import (
    Background,
    Game,
    select_rows,
    summarize_background,
)
from modelyard.explain._pdp import PartialDependence, feature_grid, partial_dependence
from modelyard.explain._permutation import (
    ModelClassReliance,
    PermutationImportance,
    model_class_reliance,
    permutation_importance,
)
from modelyard.explain._plots import (
    plot_beeswarm,
    plot_dependence,
    plot_image_heatmap,
    plot_importance,
)
from modelyard.explain._shapley import exact_shapley, kernel_shap
from modelyard.explain._step import (
    ExplainOptions,
    explain_model,
    explanation_figures,
    save_figures,
)
from modelyard.explain._tcav import (
    TCAVResult,
    concept_activation_vector,
    directional_derivatives,
    layer_activations,
    tcav,
)
from modelyard.explain._tree import TreeModel, tree_model, tree_shap

__all__ = [
    "Background",
    "Counterfactual",
    "ExplainOptions",
    "Explanation",
    "Game",
    "GradientAttribution",
    "ImageExplanation",
    "ModelClassReliance",
    "PartialDependence",
    "PermutationImportance",
    "TCAVResult",
    "TreeModel",
    "concept_activation_vector",
    "counterfactuals",
    "directional_derivatives",
    "exact_shapley",
    "explain_model",
    "explanation_figures",
    "feature_grid",
    "integrated_gradients",
    "kernel_shap",
    "layer_activations",
    "lime_image",
    "lime_tabular",
    "model_class_reliance",
    "partial_dependence",
    "permutation_importance",
    "plot_beeswarm",
    "plot_dependence",
    "plot_image_heatmap",
    "plot_importance",
    "quadrature",
    "saliency",
    "save_figures",
    "select_rows",
    "summarize_background",
    "tcav",
    "tree_model",
    "tree_shap",
    "weighted_ridge",
    "what_if",
]

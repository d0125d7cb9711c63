"""Explain: feature importance, partial dependence and ICE for any Predictor.

Public surface::

    from modelyard.explain import permutation_importance, partial_dependence, model_class_reliance
    imp = permutation_importance(model, data.test.frame, n_repeats=10)
    pdp = partial_dependence(model, data.test.X.sample(2000), "age", kind="both")
"""

from modelyard.explain._counterfactual import Counterfactual, counterfactuals, what_if
from modelyard.explain._gradients import (
    GradientAttribution,
    integrated_gradients,
    quadrature,
    saliency,
)
from modelyard.explain._pdp import PartialDependence, feature_grid, partial_dependence
from modelyard.explain._permutation import (
    ModelClassReliance,
    PermutationImportance,
    model_class_reliance,
    permutation_importance,
)
from modelyard.explain._tcav import (
    TCAVResult,
    concept_activation_vector,
    directional_derivatives,
    layer_activations,
    tcav,
)

__all__ = [
    "Counterfactual",
    "GradientAttribution",
    "ModelClassReliance",
    "PartialDependence",
    "PermutationImportance",
    "TCAVResult",
    "concept_activation_vector",
    "counterfactuals",
    "directional_derivatives",
    "feature_grid",
    "integrated_gradients",
    "layer_activations",
    "model_class_reliance",
    "partial_dependence",
    "permutation_importance",
    "quadrature",
    "saliency",
    "tcav",
    "what_if",
]

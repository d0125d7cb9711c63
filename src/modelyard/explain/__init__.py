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

__all__ = [
    "Counterfactual",
    "counterfactuals",
    "what_if",
    "GradientAttribution",
    "ModelClassReliance",
    "PartialDependence",
    "PermutationImportance",
    "feature_grid",
    "integrated_gradients",
    "model_class_reliance",
    "partial_dependence",
    "permutation_importance",
    "quadrature",
    "saliency",
]

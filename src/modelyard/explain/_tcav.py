"""TCAV: testing with concept activation vectors (Kim et al., 1711.11279).

A *concept* is given by examples (images of stripes, say). At a chosen layer, a linear
classifier separates the concept's activations from those of random examples; its
normal vector, pointing toward the concept, is the concept activation vector (CAV).
The *directional derivative* of the target class's logit along the CAV tells whether
moving an input's activation toward the concept raises the class; the TCAV score is
the fraction of the class's inputs for which it does.

A score alone can be luck: a CAV against one random set is partly random. As in the
paper, CAVs are trained against ``n_random`` different random sets, giving a score
distribution, and compared by a two-sided t-test with the scores of random-vs-random
CAVs (the null). The concept matters for the class when the p-value is below ``alpha``
*and* the concept is a concept at that layer: its CAVs separate it from random examples
with held-out accuracy of at least ``min_cav_accuracy``. (Random-vs-random scores at
a layer where every target input has about the same gradient are spread thin; with few
random sets a non-concept can reach a small p-value by chance, but its CAVs sit at
chance accuracy, which exposes it.)
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["TCAVResult", "concept_activation_vector", "directional_derivatives", "layer_activations", "tcav"]


@dataclass
class TCAVResult:
    """What :func:`tcav` found for one concept, class and layer.

    Attributes
    ----------
    concept, layer : str
    target : int
    scores : ndarray
        TCAV score with each concept-vs-random CAV.
    null_scores : ndarray
        Scores of random-vs-random CAVs.
    p_value : float
        Two-sided t-test of ``scores`` against ``null_scores``.
    significant : bool
        ``p_value < alpha`` and mean CAV accuracy ``>= min_cav_accuracy``.
    cav_accuracy : ndarray
        Held-out accuracy of each concept-vs-random linear classifier (a CAV from a
        classifier near 0.5 does not capture the concept at this layer).
    """

    concept: str
    layer: str
    target: int
    scores: np.ndarray
    null_scores: np.ndarray
    p_value: float
    significant: bool
    cav_accuracy: np.ndarray

    @property
    def score(self) -> float:
        """Mean TCAV score over the random sets."""
        return float(self.scores.mean())


def _layer(module: nn.Module, name: str) -> nn.Module:
    layers = dict(module.named_modules())
    if name not in layers or name == "":
        known = [n for n in layers if n]
        raise ValueError(f"Layer {name!r} is not in the model; its layers are {known}.")
    return layers[name]


def _pixels(predictor: Any, x: Any) -> torch.Tensor:
    from modelyard.models._image import as_pixels

    return as_pixels(x, predictor.image_shape)


def layer_activations(predictor: Any, x: Any, layer: str, *, batch_size: int = 256) -> np.ndarray:
    """Flattened activations ``(n, d)`` of ``layer`` (a name of ``predictor.module.named_modules()``) for images ``x``."""
    module = predictor.module
    target = _layer(module, layer)
    pixels = _pixels(predictor, x)
    got: list[torch.Tensor] = []
    handle = target.register_forward_hook(lambda m, i, out: got.append(out.detach().flatten(1)))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            for lo in range(0, len(pixels), batch_size):
                module(pixels[lo : lo + batch_size])
    finally:
        handle.remove()
        module.train(was_training)
    return torch.cat(got).numpy().astype(np.float64)


def concept_activation_vector(concept: np.ndarray, random: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, float]:
    """The unit CAV (toward the concept) of a logistic regression on activations, and its held-out accuracy.

    The classifier is fitted on a seeded two-thirds of the examples and scored on the rest.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    X = np.concatenate([concept, random])
    y = np.r_[np.ones(len(concept)), np.zeros(len(random))]
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=1 / 3, random_state=seed, stratify=y)
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(X_tr, y_tr)
    w = clf.coef_[0]
    norm = np.linalg.norm(w)
    if norm == 0:
        raise ValueError("The concept and random activations are identical at this layer; no CAV separates them.")
    return w / norm, float(clf.score(X_te, y_te))


@contextlib.contextmanager
def _capture(target: nn.Module, store: list[torch.Tensor]) -> Iterator[None]:
    def hook(m: nn.Module, inputs: Any, out: torch.Tensor) -> torch.Tensor:
        out = out.detach().requires_grad_(True)
        store.append(out)
        return out

    handle = target.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def directional_derivatives(predictor: Any, x: Any, layer: str, cav: np.ndarray, target: int) -> np.ndarray:
    """``d logit_target / d activation . cav`` for each image (the quantity TCAV counts the sign of)."""
    module = predictor.module
    pixels = _pixels(predictor, x)
    store: list[torch.Tensor] = []
    was_training = module.training
    module.eval()
    try:
        with _capture(_layer(module, layer), store):
            logits = module(pixels)
        (grad,) = torch.autograd.grad(logits[:, target].sum(), store[0])
    finally:
        module.train(was_training)
    return grad.flatten(1).numpy().astype(np.float64) @ np.asarray(cav, dtype=np.float64)


def tcav(
    predictor: Any,
    inputs: Any,
    concept: Any,
    random_pool: Any,
    *,
    layer: str,
    target: int,
    concept_name: str = "concept",
    n_random: int = 10,
    examples_per_set: int | None = None,
    alpha: float = 0.05,
    min_cav_accuracy: float = 0.7,
    seed: int = 0,
) -> TCAVResult:
    """TCAV score of a concept for a class at a layer, with its significance against random concepts.

    Parameters
    ----------
    predictor : ImagePredictor
        A differentiable image model.
    inputs : ndarray of images
        Examples of the target class.
    concept : ndarray of images
        Examples of the concept.
    random_pool : ndarray of images
        Images random sets are drawn from (without the concept, e.g. other data).
    layer : str
        A module name of ``predictor.module`` (e.g. ``"features.3"``, ``"body.0"``).
    target : int
        Class index whose logit is differentiated.
    n_random : int, default=10
        Random sets (concept-vs-random CAVs, and as many random-vs-random ones).
    examples_per_set : int or None, default=None
        Images per random set; the number of concept examples if None.
    alpha : float, default=0.05
    min_cav_accuracy : float, default=0.7
        Mean held-out accuracy the concept-vs-random classifiers need for the concept to count.
    seed : int, default=0

    Returns
    -------
    TCAVResult

    Raises
    ------
    TypeError
        A model without gradients.
    ValueError
        An unknown layer (the message lists the layers), too few random images, a bad target.
    """
    from scipy import stats

    if not getattr(predictor, "differentiable", False) or not hasattr(predictor, "image_shape"):
        raise TypeError(f"tcav needs a differentiable image model; got {type(predictor).__name__}.")
    if n_random < 2:
        raise ValueError(f"n_random must be at least 2 for a significance test; got {n_random}.")
    concept = np.asarray(concept)
    pool = np.asarray(random_pool)
    k = examples_per_set or len(concept)
    if len(pool) < 2 * k:
        raise ValueError(f"random_pool has {len(pool)} images; give at least {2 * k} (two random sets of {k}).")
    n_classes = len(predictor.classes)
    if not 0 <= target < n_classes:
        raise ValueError(f"target must be a class index in 0..{n_classes - 1}; got {target}.")
    rng = np.random.default_rng(seed)
    sets = [rng.choice(len(pool), size=k, replace=False) for _ in range(n_random + 1)]
    acts_concept = layer_activations(predictor, concept, layer)
    acts_random = [layer_activations(predictor, pool[s], layer) for s in sets]
    scores, null, accs = [], [], []
    for i in range(n_random):
        cav, acc = concept_activation_vector(acts_concept, acts_random[i], seed=seed + i)
        scores.append(float((directional_derivatives(predictor, inputs, layer, cav, target) > 0).mean()))
        accs.append(acc)
        rcav, _ = concept_activation_vector(acts_random[i + 1], acts_random[i], seed=seed + i)
        null.append(float((directional_derivatives(predictor, inputs, layer, rcav, target) > 0).mean()))
    scores_a, null_a = np.asarray(scores), np.asarray(null)
    if np.ptp(np.r_[scores_a, null_a]) == 0:
        p = 1.0
    else:
        with warnings.catch_warnings():  # a constant group (every score 1.0) is a valid, extreme sample
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(stats.ttest_ind(scores_a, null_a, equal_var=False).pvalue)
    acc = np.asarray(accs)
    return TCAVResult(concept_name, layer, int(target), scores_a, null_a, p,
                      bool(p < alpha and acc.mean() >= min_cav_accuracy), acc)


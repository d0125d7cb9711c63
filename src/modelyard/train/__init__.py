"""Training: a seeded trainer with early stopping, and one-call fitting of each model family.

(Distributed training and distillation come later.)
"""

from modelyard.models._gbm import fit_gbm
from modelyard.train._fit import fit_image, fit_lattice, fit_mlp
from modelyard.train._trainer import EpochCallback, Trainer

__all__ = ["EpochCallback", "Trainer", "fit_gbm", "fit_image", "fit_lattice", "fit_mlp"]

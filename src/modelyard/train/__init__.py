"""Training: a seeded trainer with early stopping (distributed and distillation come later)."""

from modelyard.train._trainer import EpochCallback, Trainer

__all__ = ["EpochCallback", "Trainer"]

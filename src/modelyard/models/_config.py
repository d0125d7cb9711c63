"""Typed configs of the model families.

They live apart from the families' code and import no framework (no torch, no
scikit-learn), so validating a pipeline spec, and a fully cached re-run, stay fast.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["GBMConfig", "MLPConfig"]


class MLPConfig(BaseModel):
    """Hyperparameters of the tabular MLP and of its training.

    The defaults were tuned on UCI Adult (trained on ``adult.data`` less a seeded,
    stratified 10% validation split, scored on the official ``adult.test``):
    accuracy 0.860 with seed 0 and 0.856-0.861 over seeds 0-3 (mean 0.859), in
    about 5 s on two CPU cores.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # -- architecture ---------------------------------------------------------------
    hidden_sizes: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        default=(128, 64),
        description="Width of each hidden layer. Two layers suffice for tabular data; on Adult, 256-128 and "
        "512-256 scored no better than 128-64 and train slower.",
    )
    dropout: float = Field(
        default=0.3,
        ge=0.0,
        lt=1.0,
        description="Dropout after every hidden layer, the main regularizer besides early stopping "
        "(on Adult 0.3 did better than 0.1-0.2 without the periodic embedding, and as well with it).",
    )
    activation: Literal["relu", "gelu", "silu", "tanh"] = Field(
        default="relu",
        description="Nonlinearity after every hidden layer. ReLU is the default (fast, and idempotent, so "
        "network morphisms can deepen a ReLU net exactly); GELU, SiLU and tanh are searchable alternatives.",
    )
    numeric_embedding: Literal["periodic", "none"] = Field(
        default="periodic",
        description="How standardized numeric columns enter the MLP. 'periodic': each column x becomes "
        "ReLU(Linear([sin(2 pi c x), cos(2 pi c x)])) with learned frequencies c (the PLR embedding of "
        "Gorishniy et al., 2022, 'On Embeddings for Numerical Features in Tabular Deep Learning'); it lets "
        "the MLP fit sharp thresholds and lifted Adult test accuracy from 0.852 to 0.859 (means over four seeds). "
        "'none': the standardized value itself.",
    )
    n_frequencies: int = Field(
        default=16,
        ge=1,
        description="Frequencies per numeric column in the periodic embedding (16 as in the paper).",
    )
    frequency_scale: float = Field(
        default=0.3,
        gt=0.0,
        description="Standard deviation of the initial frequencies. The paper calls it sigma and tunes it; "
        "0.3 and 1.0 did best on Adult (0.03 gave up 0.003 of accuracy).",
    )
    numeric_embedding_dim: int = Field(
        default=8,
        ge=1,
        description="Output width of each numeric column's periodic embedding.",
    )
    embedding_dim: int | None = Field(
        default=None,
        ge=1,
        description="Width of every categorical embedding. None applies the rule "
        "min(max_embedding_dim, round(1.6 * n_rows_in_table ** 0.56)) (fast.ai's rule of thumb), "
        "so a 2-value column gets a small vector and a 40-value one a larger one.",
    )
    max_embedding_dim: int = Field(
        default=16,
        ge=1,
        description="Upper bound of the embedding-width rule, so a high-cardinality column cannot dominate the input.",
    )
    log_transform: bool = Field(
        default=True,
        description="Apply sign(x) * log1p(|x|) to heavy-tailed non-negative numeric columns before standardizing "
        "(Adult's capital-gain/loss): without it a few huge values squash every other row to about the same input.",
    )
    log_skew_threshold: float = Field(
        default=2.0,
        gt=0.0,
        description="A non-negative numeric column whose training skewness exceeds this is log-transformed. "
        "2.0 catches count- and money-like columns and leaves near-symmetric ones (age, hours) alone.",
    )
    # -- training -------------------------------------------------------------------
    batch_size: int = Field(
        default=256,
        ge=1,
        description="Rows per optimizer step; 256 keeps an epoch of 30k rows well under a second on two cores.",
    )
    lr: float = Field(default=1e-3, gt=0.0, description="AdamW learning rate; Adam's usual default.")
    weight_decay: float = Field(
        default=1e-4,
        ge=0.0,
        description="AdamW's decoupled weight decay, a light regularizer on top of dropout.",
    )
    max_epochs: int = Field(
        default=40,
        ge=1,
        description="Upper bound on passes over the training split; early stopping usually ends training sooner.",
    )
    patience: int = Field(
        default=5,
        ge=1,
        description="Stop after this many epochs without a lower validation loss, then restore the best weights.",
    )
    seed: int = Field(
        default=0,
        ge=0,
        description="Seeds weight initialization, shuffling and dropout: the same seed gives bit-identical weights.",
    )


class GBMConfig(BaseModel):
    """Settings of the gradient-boosting baseline (frozen; unknown fields are errors).

    The defaults were chosen on Adult (see the module docstring): small trees and a
    moderate learning rate, stopped early on the validation split.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_iter: int = Field(
        default=1000,
        ge=1,
        description="Upper bound on boosting rounds. High because early stopping picks the real number "
        "(about 250-450 on Adult); without early stopping, lower it to about 200.",
    )
    learning_rate: float = Field(
        default=0.05,
        gt=0.0,
        le=1.0,
        description="Shrinkage of each tree. 0.05 with early stopping was slightly more accurate and more "
        "stable across seeds than scikit-learn's 0.1, at about twice the rounds (still ~1 s on Adult).",
    )
    max_leaf_nodes: int | None = Field(
        default=15,
        ge=2,
        description="Leaves per tree. 15 beat 31 (scikit-learn's default) and 63 on Adult: tabular targets "
        "are mostly low-order interactions, and smaller trees overfit less. None means unlimited.",
    )
    max_depth: int | None = Field(
        default=None,
        ge=1,
        description="Depth limit per tree. None: max_leaf_nodes alone bounds the tree, as in scikit-learn.",
    )
    min_samples_leaf: int = Field(
        default=20,
        ge=1,
        description="Fewest training rows in a leaf. scikit-learn's 20; larger values (50) cost accuracy on Adult.",
    )
    l2_regularization: float = Field(
        default=0.0,
        ge=0.0,
        description="L2 penalty on leaf values. 0 (scikit-learn's default); 1.0 made no measurable difference "
        "on Adult once early stopping is on.",
    )
    max_features: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="Fraction of features drawn at each split (seeded by `seed`). 1.0 uses every feature, "
        "so training is deterministic.",
    )
    max_bins: int = Field(
        default=255,
        ge=2,
        le=255,
        description="Histogram bins per numeric feature; 255 is scikit-learn's maximum and finest. A categorical "
        "feature with more than max_bins - 1 categories is treated as ordinal codes (native splits need one "
        "bin per code).",
    )
    categorical: Literal["native", "ordinal"] = Field(
        default="native",
        description="'native': split on sets of categories (exactly exportable to ONNX as set-membership "
        "nodes); 'ordinal': treat codes as numbers, ordered alphabetically by category. Native was as accurate "
        "or better on Adult and imposes no arbitrary order.",
    )
    early_stopping: bool = Field(
        default=True,
        description="Stop when the validation split's loss has not improved for n_iter_no_change rounds. "
        "Needs `valid`; set False to train exactly max_iter rounds.",
    )
    n_iter_no_change: int = Field(
        default=20,
        ge=1,
        description="Patience of early stopping in rounds; 20 is long enough for the noisy validation loss at "
        "learning_rate 0.05 (50 gave no gain on Adult).",
    )
    seed: int = Field(
        default=0,
        ge=0,
        description="Random state (feature subsampling when max_features < 1); fixed so fits are reproducible.",
    )


class ImageNetConfig(BaseModel):
    """An image classifier (an MLP on the pixels, or a small CNN) and its training (frozen; unknown fields are errors).

    Defaults: a CNN of two conv stages (32 and 64 channels of 3x3 convolutions, each
    followed by ReLU and 2x2 max pooling) and a 128-unit dense layer. On Fashion-MNIST
    (54,000 training images) four epochs gave 0.907 test accuracy (about 90 s on one
    thread of a busy 2-core machine).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: Literal["cnn", "mlp"] = Field(
        default="cnn",
        description="'cnn': conv stages then dense layers; 'mlp': dense layers on the flattened pixels.",
    )
    channels: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        default=(32, 64),
        description="Output channels of each conv stage (cnn only): conv kernel_size x kernel_size, ReLU, 2x2 max pool.",
    )
    kernel_size: int = Field(default=3, ge=1, description="Side of every convolution kernel (odd keeps the size).")
    hidden_sizes: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        default=(128,),
        description="Dense layers after the conv stages (cnn) or on the pixels (mlp), each followed by ReLU "
        "and dropout. The int8 benchmark's MLP is arch='mlp', hidden_sizes=(2048, 2048).",
    )
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0, description="Dropout after every dense hidden layer.")
    batch_size: int = Field(default=128, ge=1, description="Images per optimizer step.")
    lr: float = Field(default=1e-3, gt=0.0, description="AdamW learning rate.")
    weight_decay: float = Field(default=1e-4, ge=0.0, description="AdamW's decoupled weight decay.")
    max_epochs: int = Field(default=10, ge=1, description="Upper bound on passes over the training images.")
    patience: int = Field(default=3, ge=1, description="Epochs without a lower validation loss before stopping.")
    seed: int = Field(default=0, ge=0, description="Seeds initialization, shuffling and dropout.")


class LatticeConfig(BaseModel):
    """A calibrated lattice model (Gupta et al., JMLR 2016; TensorFlow Lattice) and its training (frozen).

    Every feature passes a piecewise-linear calibrator (numeric: ``n_keypoints`` at
    training quantiles; categorical: one value per category) into ``[0, lattice_size - 1]``;
    a multilinear lattice of ``lattice_size ** n_features`` vertex values interpolates the
    calibrated point. Monotonic features are monotone in the model exactly.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    lattice_size: int = Field(default=2, ge=2, description="Vertices per feature; 2 is a multilinear interpolation "
                              "of the calibrated corners (the TensorFlow Lattice default).")
    n_keypoints: int = Field(default=10, ge=2, description="Calibrator keypoints per numeric feature, at training "
                             "quantiles.")
    monotonic: dict[str, Literal["increasing", "decreasing"]] = Field(
        default_factory=dict,
        description="Features the output must rise (or fall) with, e.g. {hours-per-week: increasing}. Holds for "
        "every input: calibrator steps and lattice vertices satisfy it exactly. Binary and regression tasks only.",
    )
    max_vertices: int = Field(default=65536, ge=2, description="Refuse lattices with more vertices "
                              "(lattice_size ** n_features); select fewer features or use lattice_size 2.")
    batch_size: int = Field(default=256, ge=1, description="Rows per optimizer step.")
    lr: float = Field(default=1e-2, gt=0.0, description="AdamW learning rate (lattices like larger steps than MLPs).")
    weight_decay: float = Field(default=0.0, ge=0.0, description="AdamW's decoupled weight decay.")
    max_epochs: int = Field(default=30, ge=1, description="Upper bound on passes over the training split.")
    patience: int = Field(default=5, ge=1, description="Epochs without a lower validation loss before stopping.")
    seed: int = Field(default=0, ge=0, description="Seeds initialization and shuffling.")

"""Network morphism: function-preserving widen, deepen and skip transforms with weight inheritance.

Wei, Wang, Rui & Chen, "Network Morphism", ICML 2016 (arXiv:1603.01670), and the
Net2WiderNet / Net2DeeperNet operators of Chen, Goodfellow & Shlens, "Net2Net:
Accelerating Learning via Knowledge Transfer", ICLR 2016 (arXiv:1511.05641). Each
transform returns a *new* module (the parent is deep-copied, never changed) that
computes the parent's function before any training, so a search can train the child
from its parent's weights instead of from scratch.

The transforms act on the hidden stack of :class:`~modelyard.models.TabularMLP`:
``module.body`` is an ``nn.Sequential`` of blocks ``[Linear, activation, Dropout]``
and ``module.head`` the output ``Linear``. Hidden layer ``i`` is ``body[3 * i]``;
index ``len(hidden layers)`` names the head where a transform accepts it. Preprocessing
buffers, the periodic numeric embedding and the categorical embeddings are copied
untouched.

* :func:`widen` and :func:`deepen` keep ``body`` an ``nn.Sequential`` of the same
  layout and update ``config.hidden_sizes``, so the child is a plain ``TabularMLP``:
  ``TabularMLP(schema, child.config).load_state_dict(child.state_dict())`` rebuilds it.
* :func:`add_skip` cannot be expressed by ``MLPConfig``; it replaces ``body`` with a
  :class:`SkipBody` wrapper (the original blocks plus zero-initialized projections), so
  its child is saved as a state dict of a different layout.

Dropout must be in eval mode for the equality to be exact: in training mode dropout
masks the replicated units of :func:`widen` independently, and the block inserted by
:func:`deepen` adds its own dropout. The weight arithmetic only uses dimension 0
(output units / channels) and dimension 1 (input units / channels), so it applies
unchanged to ``nn.Conv*d`` weights ``(out, in, *kernel)``; a convolutional version
needs only its own block layout (and BatchNorm statistics replicated with the units).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["SkipBody", "SkipConnection", "add_skip", "deepen", "widen"]

#: Activations ``f`` with ``f(f(x)) == f(x)``: an identity layer after them changes nothing.
IDEMPOTENT_ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6)


class SkipConnection(nn.Module):
    """A projection of hidden layer ``from_layer``'s output added to the input of layer ``to_layer``.

    Parameters
    ----------
    from_layer : int
        Hidden layer whose block output (after activation and dropout) is the source.
    to_layer : int
        Layer whose ``Linear`` input receives the projection (the number of hidden
        layers means the head).
    in_features, out_features : int
        Widths of the source and of the receiving layer's input.
    """

    def __init__(
        self, from_layer: int, to_layer: int, in_features: int, out_features: int
    ) -> None:
        super().__init__()
        self.from_layer = from_layer
        self.to_layer = to_layer
        self.proj = nn.Linear(in_features, out_features, bias=False)
        nn.init.zeros_(self.proj.weight)  # zero: the parent's function is unchanged

    def extra_repr(self) -> str:
        return f"from_layer={self.from_layer}, to_layer={self.to_layer}"

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h)  # (B, in_features) -> (B, out_features)


class SkipBody(nn.Module):
    """The MLP's hidden blocks plus skip connections; a drop-in replacement for ``TabularMLP.body``.

    ``forward`` runs the blocks in order, adding to the input of block ``j`` (and, for
    ``to_layer == len(blocks) // 3``, to the output handed to the head) the sum of the
    projections of every skip that ends there.

    Parameters
    ----------
    blocks : nn.Sequential
        The ``[Linear, activation, Dropout] * n`` stack taken from the parent.
    skips : list of SkipConnection, default=()
    """

    def __init__(
        self, blocks: nn.Sequential, skips: list[SkipConnection] | tuple[()] = ()
    ) -> None:
        super().__init__()
        self.blocks = blocks
        self.skips = nn.ModuleList(skips)

    def __iter__(self):  # TabularMLP.reset_parameters iterates its body's layers
        return iter(self.blocks)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n = len(self.blocks) // 3
        outputs: list[torch.Tensor] = []
        x = h  # (B, input width)
        for i in range(n + 1):
            for s in self.skips:
                if s.to_layer == i:
                    x = x + s(outputs[s.from_layer])  # (B, input width of layer i)
            if i == n:
                break
            x = self.blocks[3 * i + 2](
                self.blocks[3 * i + 1](self.blocks[3 * i](x))
            )  # (B, width_i)
            outputs.append(x)
        return x  # (B, width of the last hidden layer)


# -- layout helpers --------------------------------------------------------------------


def _blocks(module: nn.Module) -> nn.Sequential:
    """The ``[Linear, activation, Dropout] * n`` stack of ``module.body``, checked."""
    body = getattr(module, "body", None)
    blocks = body.blocks if isinstance(body, SkipBody) else body
    if not isinstance(blocks, nn.Sequential) or not isinstance(
        getattr(module, "head", None), nn.Linear
    ):
        raise TypeError(
            f"Morphisms need a TabularMLP-like module (body: nn.Sequential, head: nn.Linear); got {type(module).__name__}."
        )
    if len(blocks) % 3 or not all(
        isinstance(blocks[k], nn.Linear) and isinstance(blocks[k + 2], nn.Dropout)
        for k in range(0, len(blocks), 3)
    ):
        raise TypeError(
            "Morphisms need body blocks [Linear, activation, Dropout]; this body has another layout."
        )
    return blocks


def _skips(module: nn.Module) -> list[SkipConnection]:
    return list(module.body.skips) if isinstance(module.body, SkipBody) else []


def _linear(module: nn.Module, index: int) -> nn.Linear:
    """Hidden layer ``index``'s Linear, or the head for ``index == number of hidden layers``."""
    blocks = _blocks(module)
    return module.head if index == len(blocks) // 3 else blocks[3 * index]  # type: ignore[return-value]


def _set_weights(
    layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None
) -> None:
    """Give ``layer`` new weights (and matching size attributes): Linear or Conv*d."""
    layer.weight = nn.Parameter(weight.contiguous())
    if bias is not None:
        layer.bias = nn.Parameter(bias.contiguous())
    if isinstance(layer, nn.Linear):
        layer.out_features, layer.in_features = weight.shape[0], weight.shape[1]
    elif isinstance(layer, nn.modules.conv._ConvNd):
        layer.out_channels, layer.in_channels = (
            weight.shape[0],
            weight.shape[1] * layer.groups,
        )
    else:
        raise TypeError(f"Cannot resize a {type(layer).__name__}.")


def _with_hidden_sizes(module: nn.Module, sizes: list[int]) -> None:
    """Keep ``module.config.hidden_sizes`` in step with the body (pydantic configs are frozen: copy)."""
    config = getattr(module, "config", None)
    if (
        config is not None
        and hasattr(config, "hidden_sizes")
        and hasattr(config, "model_copy")
    ):
        module.config = config.model_copy(update={"hidden_sizes": tuple(sizes)})


def _check_layer(index: int, n: int, what: str, *, allow_head: bool = False) -> None:
    top = n if allow_head else n - 1
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= top:
        raise IndexError(
            f"{what}={index!r} is out of range: valid indices are 0..{top} ({n} hidden layers)."
        )


# -- transforms ------------------------------------------------------------------------


@torch.no_grad()
def widen(
    module: nn.Module,
    layer_index: int,
    new_width: int,
    *,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """A copy of ``module`` whose hidden layer ``layer_index`` has ``new_width`` units, same function.

    Net2WiderNet (Chen et al. 2016, arXiv:1511.05641; the width morphism of Wei et al.
    2016, arXiv:1603.01670): unit ``j < old width`` keeps itself, each new unit copies
    a uniformly drawn existing unit ``g(j)`` (incoming weights and bias), and every
    outgoing weight of a unit copied ``c`` times is divided by ``c``, in the next
    layer and in any skip projection leaving this layer. A skip projection *into* the
    next layer has its rows copied like the units.

    Parameters
    ----------
    module : TabularMLP
        The parent; not modified.
    layer_index : int
        Hidden layer to widen, ``0 <= layer_index < number of hidden layers``.
    new_width : int
        Units after widening; must exceed the current width.
    noise : float, default=0.0
        Symmetry breaking that keeps the function: for each new unit, ``noise *
        std(outgoing weights) * N(0, 1)`` is added to its outgoing weights and
        subtracted from its source unit's (the two units compute the same activation,
        so their sum is unchanged). Without it copies get identical gradients forever.
    generator : torch.Generator or None, default=None
        Draws the unit mapping and the noise (``None``: torch's global generator).

    Returns
    -------
    nn.Module
        The child; ``config.hidden_sizes`` updated.
    """
    blocks = _blocks(module)
    n = len(blocks) // 3
    _check_layer(layer_index, n, "layer_index")
    old = blocks[3 * layer_index].out_features
    if isinstance(new_width, bool) or not isinstance(new_width, int):
        raise TypeError(f"new_width must be an int; got {new_width!r}.")
    if new_width <= old:
        raise ValueError(
            f"new_width={new_width} must be > the current width {old} of hidden layer {layer_index}."
        )
    if noise < 0:
        raise ValueError(f"noise must be >= 0; got {noise}.")
    child = copy.deepcopy(module)
    layer, nxt = _linear(child, layer_index), _linear(child, layer_index + 1)
    extra = torch.randint(
        0, old, (new_width - old,), generator=generator
    )  # (new - old,)
    g = torch.cat([torch.arange(old), extra])  # (new,) source unit of each unit
    counts = torch.bincount(g, minlength=old).to(layer.weight.dtype)  # (old,)
    # Incoming side: rows (dim 0) copied.
    _set_weights(
        layer, layer.weight[g], layer.bias[g] if layer.bias is not None else None
    )  # (new, in)

    def outgoing(w: torch.Tensor) -> torch.Tensor:
        """Columns (dim 1) copied and divided by the copy counts: (out, old, ...) -> (out, new, ...)."""
        scale = counts[g].reshape(1, -1, *([1] * (w.dim() - 2)))  # (1, new, 1...)
        w = w[:, g] / scale  # (out, new, ...)
        if noise > 0:
            eps = (
                noise
                * w.std()
                * torch.randn(
                    w.shape[0], new_width - old, *w.shape[2:], generator=generator
                )
            )
            w[:, old:] += eps  # new units
            w.index_add_(1, extra, -eps)  # their sources: the pair's sum is unchanged
        return w

    _set_weights(nxt, outgoing(nxt.weight), None)
    for s in _skips(child):
        if s.from_layer == layer_index:
            s.proj.weight = nn.Parameter(outgoing(s.proj.weight))  # (out, new)
            s.proj.in_features = new_width
        if s.to_layer == layer_index + 1:
            s.proj.weight = nn.Parameter(s.proj.weight[g].contiguous())  # (new, in)
            s.proj.out_features = new_width
    _with_hidden_sizes(child, [_blocks(child)[3 * i].out_features for i in range(n)])
    return child


@torch.no_grad()
def deepen(
    module: nn.Module,
    after_layer_index: int,
    *,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """A copy of ``module`` with a new hidden block after ``after_layer_index``, same function.

    Net2DeeperNet (Chen et al. 2016, arXiv:1511.05641; the depth morphism of Wei et
    al. 2016, arXiv:1603.01670): the new block is ``[Linear(w, w) = identity, the same
    activation, Dropout(same p)]``. Its input is the output of an activation ``f``;
    the block computes ``f(I h + 0) = f(f(z)) = f(z) = h`` exactly when ``f`` is
    idempotent (ReLU, ReLU6). Other activations (tanh, GELU, ...) are refused rather
    than approximated: for them a function-preserving insertion would have to be a
    purely linear layer, which adds no depth.

    Parameters
    ----------
    module : TabularMLP
        The parent; not modified.
    after_layer_index : int
        The new block goes after hidden layer ``after_layer_index``.
    noise : float, default=0.0
        Standard deviation of Gaussian noise added to the identity weights (Net2Net's
        symmetry breaking); with ``noise > 0`` the function changes by ``O(noise)``.
    generator : torch.Generator or None, default=None
        Draws the noise.

    Returns
    -------
    nn.Module
        The child; ``config.hidden_sizes`` gains the width at ``after_layer_index + 1``
        and skip connections keep their endpoints (indices past the insertion shift by one).

    Raises
    ------
    ValueError
        If the activation after that layer is not idempotent.
    """
    blocks = _blocks(module)
    n = len(blocks) // 3
    _check_layer(after_layer_index, n, "after_layer_index")
    if noise < 0:
        raise ValueError(f"noise must be >= 0; got {noise}.")
    act, drop = blocks[3 * after_layer_index + 1], blocks[3 * after_layer_index + 2]
    if not isinstance(act, IDEMPOTENT_ACTIVATIONS):
        raise ValueError(  # noqa: TRY004 -- a property of the model, not a wrong argument type
            f"deepen needs an idempotent activation (ReLU, ReLU6) after hidden layer {after_layer_index}; "
            f"got {type(act).__name__}, for which an identity layer would not preserve the function."
        )
    child = copy.deepcopy(module)
    cblocks = _blocks(child)
    width = cblocks[3 * after_layer_index].out_features
    ref = cblocks[3 * after_layer_index].weight
    new = nn.Linear(width, width, dtype=ref.dtype, device=ref.device)
    weight = torch.eye(width, dtype=ref.dtype, device=ref.device)  # (w, w)
    if noise > 0:
        weight += noise * torch.randn(width, width, generator=generator).to(weight)
    _set_weights(new, weight, torch.zeros(width, dtype=ref.dtype, device=ref.device))
    layers = list(cblocks)
    at = 3 * (after_layer_index + 1)
    block = [new, copy.deepcopy(act), nn.Dropout(drop.p)]
    for m in block:
        m.train(
            drop.training
        )  # same mode as the parent's block: a fresh Dropout would be in training mode
    layers[at:at] = block
    seq = nn.Sequential(*layers)
    skips = _skips(child)
    for s in skips:  # endpoints past the insertion move one layer up
        s.from_layer += s.from_layer > after_layer_index
        s.to_layer += s.to_layer > after_layer_index
    child.body = SkipBody(seq, skips) if isinstance(child.body, SkipBody) else seq
    _with_hidden_sizes(child, [seq[3 * i].out_features for i in range(n + 1)])
    return child


@torch.no_grad()
def add_skip(module: nn.Module, from_layer: int, to_layer: int) -> nn.Module:
    """A copy of ``module`` with a zero-initialized skip from ``from_layer`` into ``to_layer``, same function.

    The skip morphism of Wei et al. 2016 (arXiv:1603.01670), as a projection: the
    output of hidden block ``from_layer`` (after activation and dropout) times a
    weight matrix initialized to zero is added to the input of layer ``to_layer``'s
    Linear. The output is unchanged, and the gradient of the zero weights is
    ``dL/d(input of to_layer) @ h_from^T``, generally nonzero, so the skip learns.
    ``TabularMLP.body`` becomes a :class:`SkipBody`.

    Parameters
    ----------
    module : TabularMLP
        The parent; not modified.
    from_layer : int
        Source hidden layer, ``0 <= from_layer``.
    to_layer : int
        Receiving layer, ``from_layer + 2 <= to_layer <= number of hidden layers``
        (the last value is the head). ``from_layer + 1`` is refused: that layer
        already receives ``h_from``, so the skip would only reparametrize its weights.

    Returns
    -------
    nn.Module
        The child.
    """
    blocks = _blocks(module)
    n = len(blocks) // 3
    _check_layer(from_layer, n, "from_layer")
    _check_layer(to_layer, n, "to_layer", allow_head=True)
    if to_layer < from_layer + 2:
        raise ValueError(
            f"to_layer={to_layer} must be >= from_layer + 2 = {from_layer + 2}: a skip must jump a layer."
        )
    if any(
        s.from_layer == from_layer and s.to_layer == to_layer for s in _skips(module)
    ):
        raise ValueError(
            f"A skip from layer {from_layer} to layer {to_layer} exists already."
        )
    child = copy.deepcopy(module)
    cblocks = _blocks(child)
    ref = cblocks[3 * from_layer].weight
    skip = SkipConnection(
        from_layer,
        to_layer,
        cblocks[3 * from_layer].out_features,
        _linear(child, to_layer).in_features,
    )
    skip.to(dtype=ref.dtype, device=ref.device).train(child.training)
    if isinstance(child.body, SkipBody):
        child.body.skips.append(skip)
    else:
        child.body = SkipBody(cblocks, [skip])
    return child

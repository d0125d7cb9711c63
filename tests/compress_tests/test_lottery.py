"""Lottery tickets: rewinding restores theta_k on the survivors, masks shrink monotonically, rates compound."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from modelyard.compress._lottery import find_ticket, reinitialized_control
from modelyard.compress._prune import effective_weight, prunable_layers


def _problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()  # 3 classes
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))
    return net, x, y


class Spy:
    """A fine_tune(module, epochs) doing SGD steps, recording the weights it starts from and ends with."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y
        self.starts: list[dict[str, torch.Tensor]] = []
        self.ends: list[dict[str, torch.Tensor]] = []

    def _weights(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {n: effective_weight(m).clone() for n, m in prunable_layers(module).items()}

    def __call__(self, module: nn.Module, epochs: int) -> None:
        self.starts.append(self._weights(module))
        opt = torch.optim.SGD(module.parameters(), lr=0.5)
        module.train()
        for _ in range(epochs * 5):
            loss = F.cross_entropy(module(self.x), self.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        module.eval()
        self.ends.append(self._weights(module))


def _accuracy(x: torch.Tensor, y: torch.Tensor):
    def evaluate(module: nn.Module) -> float:
        with torch.no_grad():
            return float((module(x).argmax(1) == y).float().mean())

    return evaluate


@pytest.mark.parametrize("rewind_epoch", [0, 1])
def test_rounds_restart_from_the_rewind_weights_on_the_survivors(rewind_epoch: int) -> None:
    net, x, y = _problem()
    init = {n: m.weight.detach().clone() for n, m in prunable_layers(net).items()}
    spy = Spy(x, y)
    result = find_ticket(net, spy, _accuracy(x, y), rounds=3, epochs=3, rate=0.3, rewind_epoch=rewind_epoch)
    # Calls: [rewind_epoch epochs,] the rest of the dense run, then one per round.
    assert len(spy.starts) == (1 if rewind_epoch else 0) + 1 + 3
    theta_k = init if rewind_epoch == 0 else spy.ends[0]
    for name, w in theta_k.items():
        torch.testing.assert_close(result.rewind_state[f"{name}.weight"], w, rtol=0, atol=0)
    for r in range(1, 4):
        start = spy.starts[-4 + r]
        mask = result.rounds[r].masks
        for name, w in theta_k.items():
            # Survivors start at their theta_k value, pruned weights at zero.
            torch.testing.assert_close(start[name], w * mask[name], rtol=0, atol=0, msg=f"round {r} {name}")
    assert all(torch.equal(p, q) for p, q in zip(net.state_dict().values(), net.state_dict().values(), strict=True))
    assert torch.equal(net[0].weight, init["0"])  # the caller's model was not trained


def test_masks_shrink_monotonically_and_rates_compound() -> None:
    net, x, y = _problem()
    result = find_ticket(net, Spy(x, y), _accuracy(x, y), rounds=4, epochs=1, rate={"0": 0.3, "2": 0.3, "4": 0.15})
    layers = prunable_layers(net)
    for prev, cur in zip(result.rounds, result.rounds[1:], strict=False):
        for name in layers:
            assert not (cur.masks[name] & ~prev.masks[name]).any(), f"{name} revived in round {cur.round}"
    last = result.rounds[-1]
    for name, rate in {"0": 0.3, "2": 0.3, "4": 0.15}.items():
        n = layers[name].weight.numel()
        assert int(last.masks[name].sum()) == n - round((1 - (1 - rate) ** 4) * n), name
    assert [r.round for r in result.rounds] == [0, 1, 2, 3, 4]
    assert result.rounds[0].remaining == 1.0 and result.rounds[-1].remaining < 0.45
    final = result.model
    assert all((final.get_submodule(n).weight != 0).eq(last.masks[n]).all() for n in layers)  # folded, same mask
    assert 0 <= result.dense_score <= 1 and result.table()[0]["score"] == result.dense_score


def test_global_scope_and_reinit_control() -> None:
    net, x, y = _problem()
    result = find_ticket(net, Spy(x, y), _accuracy(x, y), rounds=2, epochs=1, rate=0.5, scope="global")
    total = sum(m.weight.numel() for m in prunable_layers(net).values())
    assert result.rounds[-1].n_weights == total - round(0.75 * total)
    assert result.sparsest_within(1.0) is result.rounds[-1]
    torch.manual_seed(1)
    fresh = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))
    control = reinitialized_control(result, fresh)
    for name in prunable_layers(net):
        assert torch.equal(control.get_submodule(name).weight != 0, result.rounds[-1].masks[name])


def test_bad_arguments() -> None:
    net, x, y = _problem()
    spy, ev = Spy(x, y), _accuracy(x, y)
    with pytest.raises(ValueError, match="rounds"):
        find_ticket(net, spy, ev, rounds=0, epochs=1)
    with pytest.raises(ValueError, match="rewind_epoch"):
        find_ticket(net, spy, ev, rounds=1, epochs=2, rewind_epoch=2)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        find_ticket(net, spy, ev, rounds=1, epochs=1, rate=1.0)
    with pytest.raises(TypeError, match="callable"):
        find_ticket(net, None, ev, rounds=1, epochs=1)
    with pytest.raises(ValueError, match="no prunable layers"):
        find_ticket(nn.Sequential(nn.ReLU()), spy, ev, rounds=1, epochs=1)

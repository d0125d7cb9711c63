"""Search spaces: validation messages, conditions, YAML round trip, bounds of suggested values."""

from __future__ import annotations

import optuna
import pytest

from modelyard.errors import SpecError
from modelyard.models import GBMConfig, MLPConfig
from modelyard.search import (
    SPACES,
    Categorical,
    Float,
    Int,
    SearchSpace,
    spaces,
    to_config,
)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {},
            "Search space is empty; give at least one parameter, e.g. {'lr': Float(1e-4, 1e-1, log=True)}.",
        ),
        (
            {"lr": Float(0.1, 0.01)},
            "Search space parameter 'lr': low 0.1 is greater than high 0.01; give low <= high.",
        ),
        (
            {"n": Int(5, 2)},
            "Search space parameter 'n': low 5 is greater than high 2; give low <= high.",
        ),
        (
            {"lr": Float(0.0, 0.1, log=True)},
            "Search space parameter 'lr': a log-scale range must be positive, got low=0.0; "
            "give low > 0 or set log=False.",
        ),
        (
            {"wd": Float(-1.0, 0.1, log=True)},
            "Search space parameter 'wd': a log-scale range must be positive, got low=-1.0; "
            "give low > 0 or set log=False.",
        ),
        (
            {"w": Int(0, 8, log=True)},
            "Search space parameter 'w': a log-scale range must be positive, got low=0; give low > 0 or set log=False.",
        ),
        (
            {"lr": Float(1e-3, 1.0, log=True, step=0.1)},
            "Search space parameter 'lr': log=True cannot be combined with step=0.1; drop step or set log=False.",
        ),
        (
            {"n": Int(1, 9, step=0)},
            "Search space parameter 'n': step must be positive, got 0.",
        ),
        (
            {"n": Int(1.5, 9)},
            "Search space parameter 'n': low must be an integer, got 1.5.",
        ),
        (
            {"act": Categorical([])},
            "Search space parameter 'act': choices is empty; give at least one choice.",
        ),
        (
            {"act": Categorical([(1, 2)])},
            "Search space parameter 'act': choice (1, 2) is a tuple; choices must be None, bool, int, float or str.",
        ),
        (
            {"h2": Int(8, 64, when={"depth": {">=": 2}})},
            "Search space parameter 'h2': its condition names unknown parameter 'depth'; known: ['h2'].",
        ),
        (
            {"a": Int(1, 2, when={"b": 1}), "b": Int(1, 2, when={"a": 1})},
            "Search space parameter 'a': its condition depends on itself through a -> b -> a; remove the cycle.",
        ),
        (
            {"n": Int(1, 3), "h": Int(1, 3, when={"n": {"~": 2}})},
            "Search space parameter 'h': unknown condition operator '~'; use one of "
            "['!=', '<', '<=', '==', '>', '>=', 'in'].",
        ),
    ],
)
def test_bad_space_messages_are_exact(params: dict, message: str) -> None:
    with pytest.raises(SpecError) as err:
        SearchSpace(params)
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"x": {"type": "normal"}},
            "Search space parameter 'x': unknown type 'normal'; use one of float, int, categorical.",
        ),
        (
            {"x": {"type": "float", "low": 1}},
            "Search space parameter 'x': type 'float' needs 'high'.",
        ),
        (
            {"x": {"type": "int", "low": 1, "high": 2, "lg": True}},
            "Search space parameter 'x': unknown key(s) ['lg'] for type 'int'; allowed: ['high', 'log', 'low', 'step', 'when'].",
        ),
        (
            {},
            "Search space is empty; give at least one parameter, e.g. {'lr': Float(1e-4, 1e-1, log=True)}.",
        ),
    ],
)
def test_bad_yaml_messages_are_exact(spec: dict, message: str) -> None:
    with pytest.raises(SpecError) as err:
        SearchSpace.from_dict(spec)
    assert str(err.value) == message


YAML_SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "n_layers": {"type": "int", "low": 1, "high": 3},
    "hidden_2": {
        "type": "int",
        "low": 16,
        "high": 256,
        "log": True,
        "when": {"n_layers": {">=": 2}},
    },
    "act": {"type": "categorical", "choices": ["relu", "gelu"]},
    "slope": {
        "type": "float",
        "low": 0.0,
        "high": 0.3,
        "step": 0.1,
        "when": {"act": ["gelu"]},
    },
}


def test_from_dict_round_trip() -> None:
    space = SearchSpace.from_dict(YAML_SPACE)
    assert space.to_dict() == YAML_SPACE
    assert SearchSpace.from_dict(space.to_dict()) == space
    assert space["lr"] == Float(1e-4, 1e-2, log=True)


def test_conditional_params_only_when_active_and_values_in_bounds() -> None:
    """Property over 300 random trials: active set follows the conditions; every value is in its range."""
    space = SearchSpace.from_dict(YAML_SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_layers = set()
    for _ in range(300):
        trial = study.ask()
        p = space.suggest(trial)
        study.tell(trial, 0.0)
        seen_layers.add(p["n_layers"])
        assert ("hidden_2" in p) == (p["n_layers"] >= 2)
        assert ("slope" in p) == (p["act"] == "gelu")
        assert 1e-4 <= p["lr"] <= 1e-2
        assert 1 <= p["n_layers"] <= 3 and isinstance(p["n_layers"], int)
        if "hidden_2" in p:
            assert 16 <= p["hidden_2"] <= 256
        if "slope" in p:
            assert p["slope"] in (0.0, 0.1, 0.2, 0.30000000000000004, 0.3)
        assert space.active(p) == list(p)
    assert seen_layers == {1, 2, 3}


def test_builtin_spaces_map_to_configs() -> None:
    assert set(SPACES.names()) == {"gbm", "mlp"}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(50):
        p = spaces.mlp().suggest(study.ask())
        config = to_config(p, "mlp", MLPConfig(max_epochs=3))
        assert len(config.hidden_sizes) == p["n_layers"]
        assert config.hidden_sizes[0] == p["hidden_1"] and config.max_epochs == 3
        g = to_config(spaces.gbm().suggest(study.ask()), "gbm")
        assert isinstance(g, GBMConfig)
    with pytest.raises(
        SpecError, match="Search space parameter 'act' is not a field of MLPConfig"
    ):
        to_config({"act": "relu"}, "mlp")

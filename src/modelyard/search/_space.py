"""Declarative search spaces: float, int (linear or log scale), categorical, conditional.

A :class:`SearchSpace` maps parameter names to :class:`Float`, :class:`Int` and
:class:`Categorical` declarations. Any parameter may carry a condition ``when=...``
that names other parameters; it is suggested only when the condition holds (a
conditional space in Optuna's define-by-run sense). Spaces are validated when built,
so a bad range fails before any trial runs, and they round-trip through plain dicts
(the YAML form)::

    lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    n_layers: {type: int, low: 1, high: 3}
    hidden_2: {type: int, low: 16, high: 256, log: true, when: {n_layers: {">=": 2}}}
    act: {type: categorical, choices: [relu, gelu]}

A condition maps each parameter it names to a value (equality), a list of values
(membership) or a mapping of comparisons (``{">=": 2}``; operators ``==``, ``!=``,
``<``, ``<=``, ``>``, ``>=``, ``in``). All named parameters must satisfy their test,
and be active themselves.
"""

from __future__ import annotations

import abc

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelyard.errors import SpecError

__all__ = ["Categorical", "Float", "Int", "Param", "SearchSpace"]

# Messages, kept as constants and tested exactly.
EMPTY_SPACE = "Search space is empty; give at least one parameter, e.g. {'lr': Float(1e-4, 1e-1, log=True)}."
LOW_ABOVE_HIGH = "Search space parameter {name!r}: low {low!r} is greater than high {high!r}; give low <= high."
LOG_NOT_POSITIVE = (
    "Search space parameter {name!r}: a log-scale range must be positive, got low={low!r}; "
    "give low > 0 or set log=False."
)
LOG_WITH_STEP = "Search space parameter {name!r}: log=True cannot be combined with step={step!r}; drop step or set log=False."
BAD_STEP = "Search space parameter {name!r}: step must be positive, got {step!r}."
NOT_A_NUMBER = (
    "Search space parameter {name!r}: {what} must be a finite number, got {value!r}."
)
NOT_AN_INT = (
    "Search space parameter {name!r}: {what} must be an integer, got {value!r}."
)
EMPTY_CHOICES = (
    "Search space parameter {name!r}: choices is empty; give at least one choice."
)
BAD_CHOICE = "Search space parameter {name!r}: choice {value!r} is a {kind}; choices must be None, bool, int, float or str."
UNKNOWN_CONDITION = "Search space parameter {name!r}: its condition names unknown parameter {other!r}; known: {known}."
BAD_OPERATOR = "Search space parameter {name!r}: unknown condition operator {op!r}; use one of {ops}."
CYCLE = "Search space parameter {name!r}: its condition depends on itself through {path}; remove the cycle."
BAD_NAME = "Search space parameter names must be non-empty strings; got {name!r}."
NOT_A_PARAM = (
    "Search space parameter {name!r}: expected Float, Int or Categorical, got {kind}."
)
UNKNOWN_TYPE = "Search space parameter {name!r}: unknown type {kind!r}; use one of float, int, categorical."
BAD_KEYS = "Search space parameter {name!r}: unknown key(s) {keys} for type {kind!r}; allowed: {allowed}."
MISSING_KEY = "Search space parameter {name!r}: type {kind!r} needs {key!r}."

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "in": lambda value, allowed: value in allowed,
}


def _normalize_condition(
    name: str, when: Mapping[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """``{param: test}`` with each test as ``{op: operand}``."""
    out: dict[str, dict[str, Any]] = {}
    for other, test in (when or {}).items():
        if isinstance(test, Mapping):
            for op in test:
                if op not in _OPS:
                    raise SpecError(
                        BAD_OPERATOR.format(name=name, op=op, ops=sorted(_OPS))
                    )
            out[other] = {op: (list(v) if op == "in" else v) for op, v in test.items()}
        elif isinstance(test, (list, tuple, set, frozenset)):
            out[other] = {"in": list(test)}
        else:
            out[other] = {"==": test}
    return out


@dataclass(frozen=True)
class Param(abc.ABC):
    """Base of the parameter declarations; ``when`` is an optional condition (see the module docstring)."""

    when: Mapping[str, Any] | None = field(default=None, kw_only=True)

    def is_active(self, params: Mapping[str, Any], name: str = "?") -> bool:
        """Whether the condition holds for the already-suggested ``params`` (a missing one is inactive)."""
        for other, test in _normalize_condition(name, self.when).items():
            if other not in params:
                return False
            value = params[other]
            try:
                if not all(_OPS[op](value, operand) for op, operand in test.items()):
                    return False
            except TypeError:  # e.g. "relu" >= 2: the condition does not hold
                return False
        return True

    @abc.abstractmethod
    def _validate(self, name: str) -> None:
        """Implemented by each parameter kind."""

    @abc.abstractmethod
    def _suggest(self, trial: Any, name: str) -> Any:
        """Implemented by each parameter kind."""

    @abc.abstractmethod
    def distribution(self) -> Any:
        """The equivalent :mod:`optuna.distributions` object."""

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Implemented by each parameter kind."""


def _check_number(name: str, what: str, value: Any, *, integer: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(
            (NOT_AN_INT if integer else NOT_A_NUMBER).format(
                name=name, what=what, value=value
            )
        )
    if integer and not isinstance(value, int):
        raise SpecError(NOT_AN_INT.format(name=name, what=what, value=value))
    if not math.isfinite(value):
        raise SpecError(NOT_A_NUMBER.format(name=name, what=what, value=value))


def _with_when(d: dict[str, Any], when: Mapping[str, Any] | None) -> dict[str, Any]:
    if when:
        d["when"] = {
            k: (list(v) if isinstance(v, (tuple, set, frozenset)) else v)
            for k, v in when.items()
        }
    return d


@dataclass(frozen=True)
class Float(Param):
    """A float in ``[low, high]``, on a log scale if ``log``, on a grid of ``step`` if given.

    Parameters
    ----------
    low, high : float
        Bounds, both included; ``low > 0`` when ``log``.
    log : bool, default=False
        Sample ``log(x)`` uniformly (learning rates, weight decay).
    step : float or None, default=None
        Discretization step (not with ``log``).
    when : mapping or None, default=None
        Condition under which the parameter exists.
    """

    low: float
    high: float
    log: bool = False
    step: float | None = None

    def _validate(self, name: str) -> None:
        _check_number(name, "low", self.low, integer=False)
        _check_number(name, "high", self.high, integer=False)
        if self.low > self.high:
            raise SpecError(
                LOW_ABOVE_HIGH.format(name=name, low=self.low, high=self.high)
            )
        if self.step is not None:
            if self.log:
                raise SpecError(LOG_WITH_STEP.format(name=name, step=self.step))
            _check_number(name, "step", self.step, integer=False)
            if self.step <= 0:
                raise SpecError(BAD_STEP.format(name=name, step=self.step))
        if self.log and self.low <= 0:
            raise SpecError(LOG_NOT_POSITIVE.format(name=name, low=self.low))

    def _suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(
            name, self.low, self.high, log=self.log, step=self.step
        )

    def distribution(self) -> Any:
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "float", "low": self.low, "high": self.high}
        if self.log:
            d["log"] = True
        if self.step is not None:
            d["step"] = self.step
        return _with_when(d, self.when)


@dataclass(frozen=True)
class Int(Param):
    """An integer in ``[low, high]``, on a log scale if ``log``, every ``step``-th value otherwise.

    Parameters
    ----------
    low, high : int
        Bounds, both included; ``low >= 1`` when ``log``.
    log : bool, default=False
        Sample on a log scale (layer widths).
    step : int, default=1
        Spacing of the values; must be 1 with ``log`` (Optuna's rule).
    when : mapping or None, default=None
        Condition under which the parameter exists.
    """

    low: int
    high: int
    log: bool = False
    step: int = 1

    def _validate(self, name: str) -> None:
        _check_number(name, "low", self.low, integer=True)
        _check_number(name, "high", self.high, integer=True)
        _check_number(name, "step", self.step, integer=True)
        if self.low > self.high:
            raise SpecError(
                LOW_ABOVE_HIGH.format(name=name, low=self.low, high=self.high)
            )
        if self.step <= 0:
            raise SpecError(BAD_STEP.format(name=name, step=self.step))
        if self.log and self.step != 1:
            raise SpecError(LOG_WITH_STEP.format(name=name, step=self.step))
        if self.log and self.low <= 0:
            raise SpecError(LOG_NOT_POSITIVE.format(name=name, low=self.low))

    def _suggest(self, trial: Any, name: str) -> int:
        return trial.suggest_int(
            name, self.low, self.high, log=self.log, step=self.step
        )

    def distribution(self) -> Any:
        from optuna.distributions import IntDistribution

        return IntDistribution(self.low, self.high, log=self.log, step=self.step)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "int", "low": self.low, "high": self.high}
        if self.log:
            d["log"] = True
        if self.step != 1:
            d["step"] = self.step
        return _with_when(d, self.when)


@dataclass(frozen=True)
class Categorical(Param):
    """One of ``choices`` (None, bool, int, float or str, as Optuna stores them).

    Parameters
    ----------
    choices : sequence
        The values, in a fixed order.
    when : mapping or None, default=None
        Condition under which the parameter exists.
    """

    choices: tuple[Any, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", tuple(self.choices))

    def _validate(self, name: str) -> None:
        if not self.choices:
            raise SpecError(EMPTY_CHOICES.format(name=name))
        for c in self.choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise SpecError(
                    BAD_CHOICE.format(name=name, value=c, kind=type(c).__name__)
                )

    def _suggest(self, trial: Any, name: str) -> Any:
        return trial.suggest_categorical(name, self.choices)

    def distribution(self) -> Any:
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(self.choices)

    def to_dict(self) -> dict[str, Any]:
        return _with_when(
            {"type": "categorical", "choices": list(self.choices)}, self.when
        )


_TYPES: dict[str, tuple[type[Param], tuple[str, ...], tuple[str, ...]]] = {
    # type name: (class, required keys, optional keys)
    "float": (Float, ("low", "high"), ("log", "step", "when")),
    "int": (Int, ("low", "high"), ("log", "step", "when")),
    "categorical": (Categorical, ("choices",), ("when",)),
}


class SearchSpace:
    """A validated, ordered mapping of parameter names to declarations.

    Parameters
    ----------
    params : mapping of str to Param
        The parameters. Conditions may name any other parameter; parameters are
        suggested in an order where each one comes after those its condition names.

    Raises
    ------
    SpecError
        On an empty space, a bad range or step, empty choices, or a condition that
        names an unknown parameter or forms a cycle.

    Examples
    --------
    >>> space = SearchSpace({"n_layers": Int(1, 3), "hidden_2": Int(8, 64, when={"n_layers": {">=": 2}})})
    >>> sorted(space.names)
    ['hidden_2', 'n_layers']
    """

    def __init__(self, params: Mapping[str, Param]) -> None:
        if not isinstance(params, Mapping) or not params:
            raise SpecError(EMPTY_SPACE)
        self._params: dict[str, Param] = {}
        for name, p in params.items():
            if not isinstance(name, str) or not name:
                raise SpecError(BAD_NAME.format(name=name))
            if not isinstance(p, Param):
                raise SpecError(NOT_A_PARAM.format(name=name, kind=type(p).__name__))
            p._validate(name)
            self._params[name] = p
        known = sorted(self._params)
        for name, p in self._params.items():
            for other in _normalize_condition(name, p.when):
                if other not in self._params:
                    raise SpecError(
                        UNKNOWN_CONDITION.format(name=name, other=other, known=known)
                    )
        self._order = self._topological_order()

    def _topological_order(self) -> list[str]:
        order: list[str] = []
        state: dict[str, int] = {}  # 1 visiting, 2 done

        def visit(name: str, path: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                raise SpecError(
                    CYCLE.format(name=name, path=" -> ".join([*path, name]))
                )
            state[name] = 1
            for other in _normalize_condition(name, self._params[name].when):
                visit(other, [*path, name])
            state[name] = 2
            order.append(name)

        for name in self._params:
            visit(name, [])
        return order

    # -- mapping-like access -------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Parameter names in declaration order."""
        return list(self._params)

    @property
    def params(self) -> dict[str, Param]:
        """A copy of the name-to-declaration mapping."""
        return dict(self._params)

    def __getitem__(self, name: str) -> Param:
        return self._params[name]

    def __contains__(self, name: object) -> bool:
        return name in self._params

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and self._params == other._params

    def __repr__(self) -> str:
        return f"SearchSpace({self._params!r})"

    # -- use ---------------------------------------------------------------------------
    def suggest(self, trial: Any) -> dict[str, Any]:
        """Suggest every active parameter through an Optuna trial.

        Parameters
        ----------
        trial : optuna.trial.BaseTrial
            Any object with ``suggest_float``, ``suggest_int`` and ``suggest_categorical``.

        Returns
        -------
        dict
            The active parameters only, in declaration order.
        """
        values: dict[str, Any] = {}
        for name in self._order:
            p = self._params[name]
            if p.is_active(values, name):
                values[name] = p._suggest(trial, name)
        return {n: values[n] for n in self._params if n in values}

    def active(self, params: Mapping[str, Any]) -> list[str]:
        """Names that are active given ``params`` (evaluated in dependency order)."""
        seen: dict[str, Any] = {}
        for name in self._order:
            if self._params[name].is_active(seen, name) and name in params:
                seen[name] = params[name]
        return [n for n in self._params if n in seen]

    def distributions(self) -> dict[str, Any]:
        """Name to :mod:`optuna.distributions` object, for every parameter (active or not)."""
        return {n: p.distribution() for n, p in self._params.items()}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The plain-dict (YAML) form; ``SearchSpace.from_dict(space.to_dict()) == space``."""
        return {n: p.to_dict() for n, p in self._params.items()}

    @classmethod
    def from_dict(cls, spec: Mapping[str, Mapping[str, Any]]) -> SearchSpace:
        """Build a space from its YAML form (see the module docstring).

        Raises
        ------
        SpecError
            On an unknown type or key, a missing key, or any check of :class:`SearchSpace`.
        """
        if not isinstance(spec, Mapping) or not spec:
            raise SpecError(EMPTY_SPACE)
        params: dict[str, Param] = {}
        for name, d in spec.items():
            if not isinstance(d, Mapping):
                raise SpecError(NOT_A_PARAM.format(name=name, kind=type(d).__name__))
            kind = d.get("type")
            if kind not in _TYPES:
                raise SpecError(UNKNOWN_TYPE.format(name=name, kind=kind))
            klass, required, optional = _TYPES[kind]
            extra = sorted(set(d) - {"type", *required, *optional})
            if extra:
                raise SpecError(
                    BAD_KEYS.format(
                        name=name,
                        keys=extra,
                        kind=kind,
                        allowed=sorted({*required, *optional}),
                    )
                )
            for key in required:
                if key not in d:
                    raise SpecError(MISSING_KEY.format(name=name, kind=kind, key=key))
            kwargs = {k: v for k, v in d.items() if k != "type"}
            if kind == "categorical" and not isinstance(kwargs["choices"], Sequence):
                raise SpecError(EMPTY_CHOICES.format(name=name))
            params[name] = klass(**kwargs)
        return cls(params)


# -- built-in spaces --------------------------------------------------------------------
#: The model families a search can train, and their config classes' import paths.
FAMILIES = ("mlp", "gbm")

UNKNOWN_FAMILY = "Unknown model family {family!r} for a search; use one of {families}."
NOT_A_FIELD = (
    "Search space parameter {name!r} is not a field of {config}; rename it to one of {known} "
    "(an MLP space may also use n_layers and hidden_1, hidden_2, ...)."
)


def mlp_space(
    *, max_layers: int = 3, min_width: int = 16, max_width: int = 512
) -> SearchSpace:
    """The tabular MLP's space: depth, widths, activation, dropout, numeric embedding, lr, batch size, weight decay.

    ``n_layers`` in ``1..max_layers`` and one width ``hidden_i`` per layer, each present
    only when ``n_layers >= i`` (log scale in ``[min_width, max_width]``); the periodic
    embedding's frequency scale only when that embedding is chosen. :func:`to_config`
    maps a point to an :class:`~modelyard.models.MLPConfig`.

    Parameters
    ----------
    max_layers : int, default=3
    min_width, max_width : int, default=16, 512

    Returns
    -------
    SearchSpace
    """
    params: dict[str, Param] = {"n_layers": Int(1, max_layers)}
    for i in range(1, max_layers + 1):
        params[f"hidden_{i}"] = Int(
            min_width,
            max_width,
            log=True,
            when=None if i == 1 else {"n_layers": {">=": i}},
        )
    params.update(
        activation=Categorical(["relu", "gelu", "silu"]),
        dropout=Float(0.0, 0.5),
        numeric_embedding=Categorical(["periodic", "none"]),
        frequency_scale=Float(
            0.03, 3.0, log=True, when={"numeric_embedding": "periodic"}
        ),
        lr=Float(1e-4, 1e-2, log=True),
        batch_size=Categorical([64, 128, 256, 512]),
        weight_decay=Float(1e-6, 1e-2, log=True),
    )
    return SearchSpace(params)


def gbm_space() -> SearchSpace:
    """The gradient-boosting baseline's space (fields of :class:`~modelyard.models.GBMConfig`).

    Returns
    -------
    SearchSpace
    """
    return SearchSpace(
        {
            "learning_rate": Float(0.01, 0.3, log=True),
            "max_leaf_nodes": Int(4, 128, log=True),
            "min_samples_leaf": Int(2, 200, log=True),
            "l2_regularization": Float(1e-6, 10.0, log=True),
            "max_features": Float(0.3, 1.0),
            "max_iter": Int(50, 1000, log=True),
        }
    )


def _config_class(family: str) -> type:
    from modelyard.models._config import GBMConfig, MLPConfig

    if family == "mlp":
        return MLPConfig
    if family == "gbm":
        return GBMConfig
    raise SpecError(UNKNOWN_FAMILY.format(family=family, families=list(FAMILIES)))


def _is_width(name: str) -> bool:
    return name.startswith("hidden_") and name[len("hidden_") :].isdigit()


def check_config_fields(space: SearchSpace, family: str) -> None:
    """Raise :class:`SpecError` if a parameter of ``space`` does not map to the family's config."""
    klass = _config_class(family)
    fields = set(klass.model_fields) - {"seed"}
    for name in space.names:
        if name in fields or (
            family == "mlp" and (name == "n_layers" or _is_width(name))
        ):
            continue
        raise SpecError(
            NOT_A_FIELD.format(name=name, config=klass.__name__, known=sorted(fields))
        )


def to_config(params: Mapping[str, Any], family: str = "mlp", base: Any = None) -> Any:
    """Map a point of a space to the family's config.

    ``n_layers`` and ``hidden_1 .. hidden_n`` become ``hidden_sizes`` (the first
    ``n_layers`` widths; without ``n_layers``, every ``hidden_i`` given); every other
    parameter is a config field of the same name. Fields not in ``params`` keep
    ``base``'s values (the family's defaults when ``base`` is None).

    Parameters
    ----------
    params : mapping
        A point, e.g. ``SearchResult.best_params_``.
    family : {"mlp", "gbm"}, default="mlp"
    base : MLPConfig, GBMConfig or None, default=None
        Fixed settings (epochs, patience, seed) the search does not vary.

    Returns
    -------
    MLPConfig or GBMConfig
    """
    klass = _config_class(family)
    base = klass() if base is None else base
    if not isinstance(base, klass):
        raise TypeError(
            f"base must be a {klass.__name__} for family {family!r}; got {type(base).__name__}."
        )
    values = dict(base.model_dump())
    fields = set(klass.model_fields)
    widths = {
        int(n[len("hidden_") :]): v
        for n, v in params.items()
        if family == "mlp" and _is_width(n)
    }
    for name, v in params.items():
        if name in fields:
            values[name] = v
        elif not (family == "mlp" and (name == "n_layers" or _is_width(name))):
            raise SpecError(
                NOT_A_FIELD.format(
                    name=name, config=klass.__name__, known=sorted(fields)
                )
            )
    if widths or "n_layers" in params:
        n = int(params.get("n_layers", max(widths, default=0)))
        missing = [i for i in range(1, n + 1) if i not in widths]
        if missing:
            raise SpecError(
                f"MLP point has n_layers={n} but no hidden_{missing[0]}; give a width for every layer."
            )
        values["hidden_sizes"] = tuple(int(widths[i]) for i in range(1, n + 1))
    return klass(**values)


class spaces:
    """The built-in spaces by name, and the point-to-config mapping."""

    mlp = staticmethod(mlp_space)
    gbm = staticmethod(gbm_space)
    to_config = staticmethod(to_config)

    @staticmethod
    def get(name: str) -> SearchSpace:
        """The built-in space registered as ``name`` (see :data:`SPACES`)."""
        return SPACES.get(name)()


def _make_registry() -> Any:
    from modelyard._registry import Registry

    reg: Registry[Callable[[], SearchSpace]] = Registry("search space")
    reg.register("mlp")(mlp_space)
    reg.register("gbm")(gbm_space)
    return reg


#: Name -> function returning a built-in :class:`SearchSpace`, for YAML specs (``search.space: mlp``).
SPACES = _make_registry()

__all__ += [
    "FAMILIES",
    "SPACES",
    "check_config_fields",
    "gbm_space",
    "mlp_space",
    "spaces",
    "to_config",
]

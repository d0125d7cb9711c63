"""Shapley values of raw features: exact enumeration, and Kernel SHAP with an interaction surrogate.

Both explain the interventional value function ``v(S) = E_b[f(x_S, b_{not S})]``
(:mod:`modelyard.explain._masking`) over a weighted background, and both satisfy
efficiency exactly: for every row, ``sum_j phi_j = f(x) - E_b[f(b)]``.

Exact
-----
:func:`exact_shapley` evaluates all ``2^M`` coalitions and applies the Shapley formula
``phi_j = sum_{S not containing j} |S|! (M-|S|-1)! / M! (v(S + j) - v(S))``. It costs
up to ``2^M`` times the background size in model rows per explained row (fewer where
composite rows repeat: each distinct one is predicted once), so it stops at
``max_features`` (14 by default) and names the methods to use beyond.

Kernel SHAP
-----------
Lundberg & Lee (2017) showed that the Shapley values solve a weighted least-squares
problem: the additive function of the coalition indicators ``z`` closest to ``v``
under the Shapley kernel ``(M-1) / (C(M,|S|) |S| (M-|S|))``, with ``v(empty)`` and
``v(all)`` matched exactly. :func:`kernel_shap` estimates it from a budget of
coalitions the way shap's ``KernelExplainer`` does (coalition sizes in pairs ``s`` and
``M-s``, whole size tiers enumerated when the budget covers them, the rest sampled by
the kernel with each subset paired with its complement, efficiency imposed as an exact
constraint), with two changes measured to lower the error per model call:

* **Interaction surrogate.** Instead of fitting an additive function to the sampled
  values, fit one with interaction terms up to third order (same weights, same exact
  constraints) and return *its* Shapley values (an interaction term over ``T``
  gives each member ``1/|T|`` of its coefficient). The Shapley value of ``v`` equals the
  Shapley value of its kernel-weighted projection onto any function space that
  contains the additive functions (projections nest), so this is exact at full
  enumeration, like Kernel SHAP; but with a sample the richer fit captures the
  model's low-order interactions instead of leaving them as noise in the additive
  fit. It is a regression-adjusted estimator (the surrogate acts as a control
  variate). Second-order terms alone change nothing: on complement-paired coalitions
  the additive fit already gets every pairwise interaction right, so the surrogate
  is third order or additive. On a 12-feature MLP of Adult it needs a fraction of
  shap's model calls for the same error (``bench/explain/RESULTS_shap_lime.md``).
* **Hierarchical shrinkage at small budgets.** Below about 3 coalitions per
  third-order term (894 for M = 12) the plain third-order fit pays in variance (below
  1.5 per term it was worse than the additive fit). There, while the coalitions still
  number 1.5 times the first- and second-order terms, the third-order fit is kept with
  a ridge penalty on its third-order coefficients only (``SHRINK_THIRD_ORDER`` times
  the mean diagonal of the weighted Gram matrix; main effects and pairs unpenalized),
  a bias towards the lower-order surrogate that the data can overrule. On the Adult
  MLP it lowered the error at 128 to 512 coalitions 1.5 to 3 times below the additive
  fit, and at 448 to 768 below the plain third-order fit.
* **Stratified, de-duplicated sampling.** Each sampled size tier gets the kernel mass
  of that tier spread over its distinct coalitions, so a tier that the sampling
  exhausts gets exactly its kernel weights and the estimate converges to the exact
  values.

Both drop *null players* per row first: a feature whose value equals every
background row's cannot change ``v``, gets 0, and leaves the game (each one halves
the coalitions; shap's KernelExplainer does the same). Rows with the same remaining
players share one set of coalitions (one design matrix, one least-squares solve for
all of them and every output); the coalitions are drawn from ``random_state`` and
that set of players only, so a row's result does not depend on which other rows are
explained with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from modelyard.explain._explanation import Explanation
from modelyard.explain._masking import (
    Background,
    Game,
    check_features,
    check_players,
    coalition_values,
    resolve_background,
    same_as_background,
    select_rows,
)

__all__ = ["exact_shapley", "kernel_shap"]

#: Largest number of players :func:`exact_shapley` enumerates by default (2^14 = 16,384 coalitions).
MAX_EXACT_FEATURES = 14
#: Most surrogate terms kernel_shap(order="auto") will fit.
MAX_SURROGATE_TERMS = 1500
#: order="auto" fits the third-order surrogate from this many coalitions per term on
#: (below, its extra variance outweighs what it explains; measured on Adult, bench/explain).
AUTO_TERMS_FACTOR = 1.5
#: Ridge weight on the third-order coefficients of the shrunk surrogate, relative to the mean
#: diagonal of the kernel-weighted Gram matrix. Measured on the 12-feature Adult MLP at 128 to
#: 512 coalitions: 0.003 to 0.03 gave errors within 10% of each other (0.01 best), and leaving
#: the pairs unpenalized beat penalizing them (1.25e-3 against 2.23e-3 at 256 coalitions).
SHRINK_THIRD_ORDER = 0.01
#: The shrunk fit is used below this many coalitions per third-order term (plain fit above).
SHRINK_BELOW_FACTOR = 3.0


def _setup(predictor, X, rows, background, n_background, features, output, link, random_state):
    model_features = check_features(predictor, X, "X")
    idx = select_rows(X, rows)
    players = check_players(model_features, features)
    game = Game(predictor, output, link)
    bg = resolve_background(predictor, background, X, n_background, random_state)
    x_frame = X.iloc[idx][model_features].reset_index(drop=True)
    return model_features, idx, players, game, bg, x_frame


def varying_players(x_cols: list[np.ndarray], bg_cols: list[np.ndarray], pos: np.ndarray) -> np.ndarray:
    """``(n, m)`` bool: does player ``j`` of row ``i`` differ from some background row?

    A player whose value equals every background row's is a null player (``v`` does not
    change when it joins a coalition), so its Shapley value is 0 and it can leave the
    game: each such player halves the coalitions to evaluate (shap's KernelExplainer
    drops them too).
    """
    if len(pos) == 0:
        return np.zeros((len(x_cols[0]), 0), dtype=bool)
    same = same_as_background([x_cols[col] for col in pos], [bg_cols[col] for col in pos])  # (n, B, m)
    return ~same.all(axis=1)


def _groups(vary: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(players that vary, rows)`` for each distinct pattern of varying players."""
    patterns, inverse = np.unique(vary, axis=0, return_inverse=True)
    return [(np.flatnonzero(p), np.flatnonzero(inverse.reshape(-1) == g)) for g, p in enumerate(patterns)]


def _seed(random_state: int | None, active: np.ndarray) -> np.random.Generator:
    """A generator for one pattern of varying players: a row's result depends on the seed and its own pattern only."""
    return np.random.default_rng(None if random_state is None else [int(random_state), len(active), *active.tolist()])


def _shape(phi: np.ndarray, base: np.ndarray, n_outputs: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop the output axis when there is one output."""
    if n_outputs == 1:
        return phi[..., 0], base[..., 0]
    return phi, base


def exact_shapley(
    predictor: Any,
    X: pd.DataFrame,
    *,
    rows: int | Sequence[int] | None = None,
    background: Background | pd.DataFrame | None = None,
    n_background: int = 20,
    features: Sequence[str] | None = None,
    output: int | str | None = None,
    link: str = "identity",
    max_features: int = MAX_EXACT_FEATURES,
    random_state: int | None = 0,
    max_rows_per_call: int = 200_000,
) -> Explanation:
    """Exact interventional Shapley values by enumerating every coalition of features.

    Parameters
    ----------
    predictor : Predictor
        Any model on raw rows (torch, scikit-learn, ONNX).
    X : pandas.DataFrame
        Rows holding the model's features (other columns are ignored).
    rows : int, sequence of int or None, default=None
        Positions in ``X`` of the rows to explain; all rows if None.
    background : Background, pandas.DataFrame or None, default=None
        What an absent feature is replaced by: a :class:`Background`, or raw rows
        (summarized by k-means to ``n_background`` rows if there are more); ``X``
        summarized the same way if None.
    n_background : int, default=20
    features : sequence of str or None, default=None
        The players; all the model's features if None. Features that are not players
        keep the explained row's value in every coalition (the base value then
        depends on the row).
    output : int, str or None, default=None
        Which output to explain: the positive class's probability (binary), every
        class (multiclass) or the prediction (regression) if None; a class index or
        name to explain one class.
    link : {"identity", "logit"}, default="identity"
        ``logit`` explains the log-odds of the probability instead.
    max_features : int, default=14
        Refuse more players than this (``2^M`` coalitions times the background size
        per row).
    random_state : int or None, default=0
        Seeds the k-means summary of the background.
    max_rows_per_call : int, default=200000

    Returns
    -------
    Explanation
        ``method="exact"``; ``info["model_rows"]`` is the number of rows predicted
        (each distinct composite row once: rows and coalitions that build the same
        input share it), ``info["coalitions"]`` the coalitions enumerated per row.

    Raises
    ------
    ValueError
        More players than ``max_features`` (the message names the methods to use
        instead), an unknown feature or output.
    DataError
        A row position out of range.
    SchemaMismatchError
        ``X`` or the background without the model's features, or a background with
        other columns.
    """
    model_features = check_features(predictor, X, "X")
    players = check_players(model_features, features)
    m = len(players)
    if m > max_features:
        raise ValueError(
            f"Exact Shapley values enumerate 2^M coalitions: {m} features means {2 ** m:,} coalitions times the "
            f"background size per row, more than max_features={max_features} allows. Use kernel_shap(...) for any "
            "model (or tree_shap(...) for tree ensembles), or pass features=[...] naming at most "
            f"{max_features} features to explain."
        )
    model_features, idx, players, game, bg, x_frame = _setup(
        predictor, X, rows, background, n_background, features, output, link, random_state)
    pos = np.array([model_features.index(f) for f in players])
    x_cols, bg_cols = game.columns(x_frame), game.columns(bg.frame)
    n, n_out = len(idx), game.n_outputs
    phi, base = np.zeros((n, m, n_out)), np.zeros((n, n_out))
    model_rows, coalitions = 0, np.zeros(n, dtype=np.int64)
    for active, rows_g in _groups(varying_players(x_cols, bg_cols, pos)):
        k = len(active)
        codes = np.arange(2**k)
        bits = ((codes[:, None] >> np.arange(k)) & 1).astype(bool)  # (2^k, k)
        masks = np.ones((2**k, len(model_features)), dtype=bool)
        masks[:, pos] = False  # null players: absent (they equal every background row)
        masks[:, pos[active]] = bits
        v, used = coalition_values(game, [c[rows_g] for c in x_cols], bg, bg_cols, masks,
                                   max_rows_per_call=max_rows_per_call)  # (n_g, 2^k, out)
        model_rows += used
        coalitions[rows_g] = 2**k
        base[rows_g] = v[:, 0]
        size = bits.sum(axis=1)
        weight = np.array([math.factorial(t) * math.factorial(k - t - 1) / math.factorial(k) for t in range(k)])
        for jj, j in enumerate(active):
            without = codes[~bits[:, jj]]
            phi[rows_g, j] = np.einsum("k,nko->no", weight[size[without]], v[:, without | (1 << jj)] - v[:, without])
    values, base = _shape(phi, base, n_out)
    info = {"model_rows": model_rows, "coalitions": coalitions, "background_rows": len(bg), "link": link}
    return Explanation(values, base, X.iloc[idx].reset_index(drop=True)[model_features], players,
                       game.output_names, "exact", idx, info)


# -- Kernel SHAP -----------------------------------------------------------------------


def _tiers(m: int) -> list[tuple[int, int, float]]:
    """``(s, pool, mass)`` per size tier ``{s, m - s}``: how many coalitions, and the kernel mass they carry."""
    out = []
    for s in range(1, m // 2 + 1):
        paired = s != m - s
        pool = math.comb(m, s) * (2 if paired else 1)
        out.append((s, pool, (m - 1) / (s * (m - s)) * (2 if paired else 1)))
    return out


def _tier_coalitions(m: int, s: int) -> np.ndarray:
    """All coalitions of sizes ``s`` and ``m - s`` as bool rows."""
    sets = np.zeros((math.comb(m, s), m), dtype=bool)
    for i, c in enumerate(combinations(range(m), s)):
        sets[i, list(c)] = True
    return sets if 2 * s == m else np.vstack([sets, ~sets])


def coalition_plan(m: int, budget: int, rng: np.random.Generator, *, surrogate: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Coalitions to evaluate and their least-squares weights (summing to 1).

    Size tiers ``{s, m - s}`` are enumerated from the outside in while the budget
    covers them (shap's rule: the tier's share of the remaining budget, by kernel
    mass, holds all of it; with a surrogate, also when the tier fits in half the
    remaining budget). The rest of the budget is sampled: a tier by kernel mass, a
    subset of size ``s`` uniformly, and its complement with it; repeats are dropped.
    An enumerated tier's coalitions weigh their kernel weight; a sampled tier's mass is
    shared equally by its distinct coalitions.

    Returns
    -------
    masks : ndarray of bool, shape (K, m)
    weights : ndarray of shape (K,)
    """
    tiers = _tiers(m)
    total_pool = sum(t[1] for t in tiers)
    budget = min(budget, total_pool)
    masks, weights = [], []
    left, mass_left = budget, sum(t[2] for t in tiers)
    t = 0
    while t < len(tiers):
        s, pool, mass = tiers[t]
        if pool <= left * mass / mass_left + 1e-8 or (surrogate and pool <= left / 2):
            masks.append(_tier_coalitions(m, s))
            weights.append(np.full(pool, mass / pool))
            left -= pool
            mass_left -= mass
            t += 1
        else:
            break
    rest = tiers[t:]
    if rest and left > 0:
        if left >= sum(r[1] for r in rest):  # the budget covers every remaining tier
            for s, pool, mass in rest:
                masks.append(_tier_coalitions(m, s))
                weights.append(np.full(pool, mass / pool))
        else:
            p = np.array([r[2] for r in rest])
            p /= p.sum()
            seen: set[bytes] = set()
            drawn: list[list[np.ndarray]] = [[] for _ in rest]
            count = 0
            while count < left:
                batch = max(16, 2 * (left - count))
                tier = rng.choice(len(rest), size=batch, p=p)
                sizes = np.array([rest[i][0] for i in tier])
                ranks = rng.random((batch, m)).argsort(axis=1).argsort(axis=1)
                subsets = ranks < sizes[:, None]
                for i in range(batch):
                    key = np.packbits(subsets[i]).tobytes()
                    if key in seen:
                        continue
                    comp = ~subsets[i]
                    seen.add(key)
                    seen.add(np.packbits(comp).tobytes())
                    drawn[tier[i]].append(subsets[i])
                    count += 1
                    if count < left:
                        drawn[tier[i]].append(comp)
                        count += 1
                    if count >= left:
                        break
            for (s, pool, mass), got in zip(rest, drawn, strict=True):
                if got:
                    masks.append(np.array(got))
                    weights.append(np.full(len(got), mass / len(got)))
    z = np.vstack(masks)
    w = np.concatenate(weights)
    return z, w / w.sum()


def _terms(m: int, order: int) -> list[tuple[int, ...]]:
    return [t for r in range(1, order + 1) for t in combinations(range(m), r)]


def _n_terms(m: int, order: int) -> int:
    return sum(math.comb(m, r) for r in range(1, order + 1))


def _design(z: np.ndarray, terms: list[tuple[int, ...]]) -> np.ndarray:
    """``A[k, t] = prod_{j in T_t} z[k, j]``, float64."""
    zf = z.astype(np.float64)
    cols = []
    for r in range(1, max(len(t) for t in terms) + 1):
        idx = np.array([t for t in terms if len(t) == r], dtype=np.int64).reshape(-1, r)
        if len(idx):
            cols.append(np.prod(zf[:, idx], axis=2))
    return np.hstack(cols)


def surrogate_shapley(z: np.ndarray, w: np.ndarray, y: np.ndarray, delta: np.ndarray, order: int,
                      shrink: float = 0.0) -> np.ndarray:
    """Shapley values of the kernel-weighted least-squares fit of order ``order`` to coalition values.

    Fits ``g(z) = sum_T theta_T prod_{j in T} z_j`` over interaction terms ``T`` of up
    to ``order`` features, minimizing ``sum_k w_k (y_k - g(z_k))^2`` subject to
    ``sum_T theta_T = delta`` (``g`` matches ``v(all) - v(empty)``), and returns
    ``phi_j = sum_{T containing j} theta_T / |T|``. With ``shrink > 0`` the fit adds
    ``shrink * mean(diag(A' W A)) * sum_{|T| >= 3} theta_T^2`` (a ridge on the terms of
    third and higher order only), still under the exact constraint.

    Parameters
    ----------
    z : ndarray of bool, shape (K, m)
    w : ndarray of shape (K,)
    y : ndarray of shape (K, R)
        ``v(S_k) - v(empty)`` for ``R`` right-hand sides (rows times outputs).
    delta : ndarray of shape (R,)
        ``v(all) - v(empty)``.
    order : int

    Returns
    -------
    ndarray of shape (m, R)
    """
    m = z.shape[1]
    terms = _terms(m, order)
    p = len(terms)
    share = np.zeros((p, m))
    for i, t in enumerate(terms):
        share[i, list(t)] = 1.0 / len(t)
    if p == 1:
        return share.T @ delta[None, :]
    a = _design(z, terms)  # (K, p)
    if shrink > 0:
        return share.T @ _shrunk_fit(a, w, y, delta, np.array([len(t) >= 3 for t in terms]), shrink)
    # theta = delta/p * 1 + Q beta, Q an orthonormal basis of the sum-zero subspace (a Householder reflection)
    u = np.full(p, 1.0 / math.sqrt(p))
    u[0] -= 1.0
    aq = (a - 2.0 * np.outer(a @ u, u) / (u @ u))[:, 1:]  # (K, p - 1)
    rhs = y - np.outer(a.sum(axis=1) / p, delta)
    sw = np.sqrt(w)[:, None]
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):  # small problems: threads only contend (10x slower here)
        beta, *_ = np.linalg.lstsq(aq * sw, rhs * sw, rcond=None)  # (p - 1, R)
    qb = np.vstack([np.zeros((1, beta.shape[1])), beta])
    qb = qb - 2.0 * np.outer(u, u @ qb) / (u @ u)  # Q beta = H [0; beta]
    theta = delta[None, :] / p + qb
    return share.T @ theta


def _shrunk_fit(a: np.ndarray, w: np.ndarray, y: np.ndarray, delta: np.ndarray, penalized: np.ndarray,
               shrink: float) -> np.ndarray:
    """``theta`` of the ridge-penalized, sum-constrained weighted fit, from its KKT system."""
    from threadpoolctl import threadpool_limits

    p = a.shape[1]
    wn = w / w.sum()
    gram = (a * wn[:, None]).T @ a
    kkt = np.zeros((p + 1, p + 1))
    kkt[:p, :p] = gram + np.diag(penalized * (shrink * np.trace(gram) / p))
    kkt[:p, p] = kkt[p, :p] = 1.0
    rhs = np.vstack([(a * wn[:, None]).T @ y, delta[None, :]])
    with threadpool_limits(limits=1, user_api="blas"):  # small problems: threads only contend
        sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
    return sol[:p]


def kernel_shap(
    predictor: Any,
    X: pd.DataFrame,
    *,
    rows: int | Sequence[int] | None = None,
    background: Background | pd.DataFrame | None = None,
    n_background: int = 20,
    n_samples: int | str = "auto",
    order: int | str = "auto",
    features: Sequence[str] | None = None,
    output: int | str | None = None,
    link: str = "identity",
    random_state: int | None = 0,
    max_rows_per_call: int = 200_000,
) -> Explanation:
    """Kernel SHAP: Shapley values estimated from a budget of coalitions (see the module docstring).

    Parameters
    ----------
    predictor, X, rows, background, n_background, features, output, link, max_rows_per_call
        As in :func:`exact_shapley`.
    n_samples : int or "auto", default="auto"
        Coalitions to evaluate per row (each costs the background size in model rows;
        the empty and the full coalition are evaluated on top). ``auto``:
        ``2 * M + 1024``. A budget of ``2^M - 2`` or more enumerates every coalition
        and gives the exact values.
    order : int or "auto", default="auto"
        Highest interaction order of the surrogate: 1 is the classic additive Kernel
        SHAP fit; ``auto`` takes 3 when the coalitions number at least 1.5 times the
        first- and second-order terms (``M + C(M,2)``), the third-order terms are at
        most 1,500 and the coalitions do not already enumerate every coalition, with
        its third-order terms shrunk below 3 coalitions per term
        (``M + C(M,2) + C(M,3)``; module docstring); else 1.
    random_state : int or None, default=0
        Seeds the coalition sampling and the background summary.

    Returns
    -------
    Explanation
        ``method="kernel"``; ``info`` holds per row ``coalitions``, ``order``,
        ``shrunk`` (third-order terms shrunk) and ``exact`` (whether every coalition was
        enumerated), and the total ``model_rows`` (distinct composite rows sent to
        the model, as in :func:`exact_shapley`).

    Raises
    ------
    ValueError
        A bad ``n_samples`` or ``order``, an unknown feature or output.
    DataError, SchemaMismatchError
        As in :func:`exact_shapley`.
    """
    if n_samples != "auto" and (isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer) or n_samples < 1):
        raise ValueError(f"n_samples must be a positive integer or 'auto'; got {n_samples!r}.")
    if order != "auto" and (isinstance(order, bool) or not isinstance(order, int | np.integer) or order < 1):
        raise ValueError(f"order must be a positive integer or 'auto'; got {order!r}.")
    model_features, idx, players, game, bg, x_frame = _setup(
        predictor, X, rows, background, n_background, features, output, link, random_state)
    m = len(players)
    pos = np.array([model_features.index(f) for f in players])
    budget = int(2 * m + 1024 if n_samples == "auto" else n_samples)
    x_cols, bg_cols = game.columns(x_frame), game.columns(bg.frame)
    n, n_out = len(idx), game.n_outputs
    phi, v0 = np.zeros((n, m, n_out)), np.zeros((n, n_out))
    model_rows = 0
    coalitions, orders = np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.int64)
    exact, shrunk = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    for active, rows_g in _groups(varying_players(x_cols, bg_cols, pos)):
        mg = len(active)
        total = 2**mg - 2 if mg < 63 else budget + 1
        if mg >= 2:
            z, w = coalition_plan(mg, min(budget, total), _seed(random_state, active), surrogate=order != 1)
        else:
            z, w = np.zeros((0, mg), dtype=bool), np.zeros(0)
        k = len(z)
        shrink = 0.0
        if order == "auto":  # order 2 adds nothing to order 1 on complement-paired coalitions, so 3 or 1
            terms = _n_terms(mg, 3)
            og = 3 if mg >= 3 and k < total and AUTO_TERMS_FACTOR * _n_terms(mg, 2) <= k and terms <= MAX_SURROGATE_TERMS else 1
            if og == 3 and SHRINK_BELOW_FACTOR * terms > k:  # too few coalitions for the plain third-order fit
                shrink = SHRINK_THIRD_ORDER
        else:
            og = int(min(order, max(mg, 1)))
        masks = np.zeros((k + 2, len(model_features)), dtype=bool)
        masks[:, np.setdiff1d(np.arange(len(model_features)), pos)] = True  # non-players keep the row's value
        masks[1 : k + 1, pos[active]] = z
        masks[-1] = True
        v, used = coalition_values(game, [c[rows_g] for c in x_cols], bg, bg_cols, masks,
                                   max_rows_per_call=max_rows_per_call)  # (n_g, K + 2, out)
        model_rows += used
        coalitions[rows_g], orders[rows_g], exact[rows_g], shrunk[rows_g] = k, og, k >= total, shrink > 0
        v0[rows_g] = v[:, 0]
        delta = (v[:, -1] - v[:, 0]).reshape(-1)  # (n_g * out,)
        if mg == 1:
            phi[rows_g, active[0]] = delta.reshape(len(rows_g), n_out)
        elif mg >= 2:
            y = (v[:, 1:-1] - v[:, :1]).transpose(1, 0, 2).reshape(k, -1)  # (K, n_g * out)
            est = surrogate_shapley(z, w, y, delta, og, shrink=shrink)  # (mg, n_g * out)
            phi[rows_g[:, None], active[None, :]] = est.reshape(mg, len(rows_g), n_out).transpose(1, 0, 2)
    values, base = _shape(phi, v0, n_out)
    info = {"coalitions": coalitions, "order": orders, "shrunk": shrunk, "model_rows": model_rows, "exact": exact,
            "background_rows": len(bg), "link": link}
    return Explanation(values, base, X.iloc[idx].reset_index(drop=True)[model_features], players,
                       game.output_names, "kernel", idx, info)

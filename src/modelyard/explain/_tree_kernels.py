"""Compiled (numba) kernels of :mod:`modelyard.explain._tree`; imported on first use of Tree SHAP.

Arrays follow :class:`modelyard.explain._tree.TreeModel`: internal nodes numbered across
trees, root-to-leaf paths with one element per feature, and each element's split
conditions ``(node, goes_left)``. Each kernel is compiled on first use and cached on disk
(``cache=True``). The two Shapley kernels run rows in parallel (``numba.prange``); the
cheap ones stay serial, which compiles faster (a parallel kernel costs a few seconds to
compile).
"""

import numba
import numpy as np

__all__ = ["decide", "fill_tables", "interventional", "leaf_sums", "path_dependent"]


@numba.njit(cache=True)
def decide(x, feature, threshold, default_left, missing, kind, cat_set, known_set, left_sets,
           known_sets):
    """Whether each row goes left at each internal node, by the node's split rule (``(n, n_nodes)`` bool)."""
    n, n_nodes, width = x.shape[0], feature.shape[0], left_sets.shape[1]
    out = np.empty((n, n_nodes), dtype=np.bool_)
    for i in range(n):
        for j in range(n_nodes):
            v = x[i, feature[j]]
            isnan = np.isnan(v)
            if kind[j] == 0:  # numeric threshold
                if missing[j] == 2:  # LightGBM missing type None: NaN counts as 0
                    out[i, j] = (0.0 if isnan else v) <= threshold[j]
                elif isnan or (missing[j] == 1 and abs(v) <= 1e-35):
                    out[i, j] = default_left[j]
                else:
                    out[i, j] = v <= threshold[j]
            elif kind[j] == 1:  # scikit-learn HGB categories: missing, negative or unknown -> missing direction
                if isnan or v < 0 or v >= width:
                    out[i, j] = default_left[j]
                else:
                    c = int(v)
                    if left_sets[cat_set[j], c]:
                        out[i, j] = True
                    elif known_set[j] >= 0 and known_sets[known_set[j], c]:
                        out[i, j] = False
                    else:
                        out[i, j] = default_left[j]
            else:  # LightGBM categories: negative -> right; NaN -> right (type NaN) or category 0
                if isnan:
                    out[i, j] = False if missing[j] == 0 else left_sets[cat_set[j], 0]
                elif v < 0 or v >= width:
                    out[i, j] = False
                else:
                    out[i, j] = left_sets[cat_set[j], int(v)]
    return out

@numba.njit(cache=True)
def weights(z, o, d, pz, po, pw, out):
    """Path-dependent Tree SHAP weight of each of the ``d`` features of a path: EXTEND then UNWIND."""
    pz[0], po[0], pw[0] = 1.0, 1.0, 1.0
    for e in range(d):
        depth = e + 1
        pz[depth], po[depth], pw[depth] = z[e], o[e], 0.0
        for j in range(depth - 1, -1, -1):
            pw[j + 1] += o[e] * pw[j] * (j + 1.0) / (depth + 1.0)
            pw[j] = z[e] * pw[j] * (depth - j) / (depth + 1.0)
    for k in range(1, d + 1):
        ok, zk = po[k], pz[k]
        total = 0.0
        if ok == zk:
            out[k - 1] = 0.0
            continue
        if ok != 0.0:
            nxt = pw[d]
            for j in range(d - 1, -1, -1):
                tmp = nxt * (d + 1.0) / ((j + 1.0) * ok)
                total += tmp
                nxt = pw[j] - tmp * zk * ((d - j) / (d + 1.0))
        elif zk != 0.0:
            for j in range(d - 1, -1, -1):
                total += (pw[j] / zk) / ((d - j) / (d + 1.0))
        out[k - 1] = total * (ok - zk)

@numba.njit(cache=True)
def fill_tables(path_start, path_len, elem_zero, offsets, size):
    """Every path's weight table over the 2^d patterns of satisfied features (flat, at ``offsets``)."""
    flat = np.zeros(size)
    max_len = 1
    for p in range(path_len.shape[0]):
        max_len = max(max_len, path_len[p])
    for p in range(path_len.shape[0]):
        if offsets[p] < 0:
            continue
        d, e0 = path_len[p], path_start[p]
        z = elem_zero[e0 : e0 + d].copy()
        o = np.empty(d)
        pz, po, pw = np.empty(d + 1), np.empty(d + 1), np.empty(d + 1)
        w = np.empty(d)
        for pattern in range(2**d):
            for e in range(d):
                o[e] = 1.0 if (pattern >> e) & 1 else 0.0
            weights(z, o, d, pz, po, pw, w)
            base = offsets[p] + pattern * d
            for k in range(d):
                flat[base + k] = w[k]
    return flat

@numba.njit(cache=True, parallel=True)
def path_dependent(dec, path_start, path_len, path_value, elem_player, elem_zero, cond_start, cond_len,
                   cond_node, cond_left, n_players, max_len, offsets, tables):
    """Path-dependent Tree SHAP values ``(n, n_players, n_outputs)`` from split decisions."""
    n, n_out = dec.shape[0], path_value.shape[1]
    phi = np.zeros((n, n_players, n_out))
    for i in numba.prange(n):
        z = np.empty(max_len + 1)
        o = np.empty(max_len + 1)
        pz, po, pw = np.empty(max_len + 1), np.empty(max_len + 1), np.empty(max_len + 1)
        w = np.empty(max_len + 1)
        for p in range(path_start.shape[0]):
            e0, d = path_start[p], path_len[p]
            if d == 0:
                continue
            pattern = 0
            for e in range(d):
                sat = True
                for c in range(cond_start[e0 + e], cond_start[e0 + e] + cond_len[e0 + e]):
                    if dec[i, cond_node[c]] != cond_left[c]:
                        sat = False
                        break
                if sat:
                    pattern |= 1 << e
                o[e] = 1.0 if sat else 0.0
                z[e] = elem_zero[e0 + e]
            if offsets[p] >= 0:
                base = offsets[p] + pattern * d
                for k in range(d):
                    w[k] = tables[base + k]
            else:
                weights(z, o, d, pz, po, pw, w)
            for k in range(d):
                if w[k] != 0.0:
                    player = elem_player[e0 + k]
                    for q in range(n_out):
                        phi[i, player, q] += w[k] * path_value[p, q]
    return phi
@numba.njit(cache=True, parallel=True)
def interventional(dx, db, wb, path_start, path_len, path_value, elem_player, cond_start, cond_len,
                   cond_node, cond_left, n_players, max_len, fact):
    """Interventional Tree SHAP values ``(n, n_players, n_outputs)`` against weighted background rows."""
    n, nb, n_out = dx.shape[0], db.shape[0], path_value.shape[1]
    phi = np.zeros((n, n_players, n_out))
    for i in numba.prange(n):
        flag = np.empty(max_len + 1, dtype=np.int8)
        for b in range(nb):
            for p in range(path_start.shape[0]):
                e0, ln = path_start[p], path_len[p]
                a, c, ok = 0, 0, True
                for e in range(ln):
                    ox, ob = True, True
                    for q in range(cond_start[e0 + e], cond_start[e0 + e] + cond_len[e0 + e]):
                        node, want = cond_node[q], cond_left[q]
                        if dx[i, node] != want:
                            ox = False
                        if db[b, node] != want:
                            ob = False
                    if not ox and not ob:
                        ok = False
                        break
                    if ox and not ob:
                        flag[e] = 1
                        a += 1
                    elif ob and not ox:
                        flag[e] = 2
                        c += 1
                    else:
                        flag[e] = 0
                if not ok or a + c == 0:
                    continue
                pos = fact[a - 1] * fact[c] / fact[a + c] if a > 0 else 0.0
                neg = fact[a] * fact[c - 1] / fact[a + c] if c > 0 else 0.0
                for e in range(ln):
                    if flag[e] == 0:
                        continue
                    s = wb[b] * (pos if flag[e] == 1 else -neg)
                    player = elem_player[e0 + e]
                    for q in range(n_out):
                        phi[i, player, q] += s * path_value[p, q]
    return phi

@numba.njit(cache=True)
def leaf_sums(d, path_start, path_len, path_value, cond_start, cond_len, cond_node,
              cond_left):
    """The ensemble's raw output ``(n, n_outputs)`` without the offset: the sum of the reached leaves."""
    n, n_out = d.shape[0], path_value.shape[1]
    out = np.zeros((n, n_out))
    for i in range(n):
        for p in range(path_start.shape[0]):
            e0, ln = path_start[p], path_len[p]
            ok = True
            for e in range(ln):
                for c in range(cond_start[e0 + e], cond_start[e0 + e] + cond_len[e0 + e]):
                    if d[i, cond_node[c]] != cond_left[c]:
                        ok = False
                        break
                if not ok:
                    break
            if ok:
                for q in range(n_out):
                    out[i, q] += path_value[p, q]
    return out

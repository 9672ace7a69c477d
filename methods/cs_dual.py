"""Crammer–Singer multi-class linear SVM, solved in the dual: the engine of DualDA.

Problem (Crammer & Singer, JMLR 2001; the form liblinear and scikit-learn's
``LinearSVC(multi_class="crammer_singer")`` solve). Training points ``x_i`` in R^d, labels
``y_i`` in {0..k-1}, ``z_i = [x_i, s]`` the point with a constant bias feature ``s``
(``bias_scale``; 0 disables the bias). The primal is

    min_W  1/2 sum_m ||W_m||^2 + C sum_i max_m (e_i^m + W_m . z_i - W_{y_i} . z_i),

with ``e_i^m = 1 - [m == y_i]``; the bias is regularised like any weight (liblinear with
``intercept_scaling = s``). Its dual (DualXDA paper, ../shared/reference/dualxda-paper.md) is

    min_alpha  f(alpha) = 1/2 sum_m ||W_m||^2 + sum_i sum_m e_i^m alpha_i^m,   W_m = sum_i alpha_i^m z_i
    s.t.       sum_m alpha_i^m = 0,   alpha_i^m <= C [m == y_i]   for every i,

so ``alpha_i^{y_i}`` lies in [0, C] and every other ``alpha_i^m`` is <= 0. The primal optimum W is
unique; alpha need not be.

Algorithm: the sequential dual method (Keerthi, Sundararajan, Chang, Hsieh, Lin, KDD 2008). Each
pass visits the training points in a seeded random order and solves the k-variable sub-problem of
one point exactly, with W kept up to date. With ``G_i^m = W_m . z_i + e_i^m`` (the gradient of f
in alpha_i^m), alpha_i is optimal for its sub-problem iff for some beta every class below its bound
has ``G_i^m = beta`` and every class at its bound has ``G_i^m <= beta``; the *violation* of point i
is ``max_m G_i^m - min_{m: alpha_i^m < C_m} G_i^m`` (<= 0 when optimal). The solver stops when the
largest violation of a pass over all points is below ``tol`` (scikit-learn's ``tol`` means the same)
AND, checked once more at the final alpha, still is: a pass checks each point before later points
move W, so liblinear's rule alone can stop with a final violation above ``tol``.

Sub-problem (derived here): with ``A = ||z_i||^2``, ``B_m = G_i^m - A alpha_i^m`` and the
classes S still active for point i (the others sit at their bound), minimise
``sum_{m in S} A/2 a_m^2 + B_m a_m`` subject to ``a_m <= C_m`` and ``sum_{m in S} a_m = T`` (T =
minus the sum over the shrunk classes, so the row sums to 0). Stationarity gives
``a_m = min(C_m, (beta - B_m) / A)``; with ``D_m = B_m + A C_m`` the constraint reads
``sum_S min(D_m, beta) = A T + sum_S B_m``, a piecewise-linear increasing equation in beta. With D
sorted in decreasing order and exactly the r largest D above beta,
``beta_r = (A T + sum_S B_m - sum_{j >= r} D_(j)) / r``; the answer is the first r with
``beta_r >= D_(r)``.

Shrinking (on by default; the same fixed point without it): a class at its bound whose gradient
is below the free classes' minimum is dropped from that point's sub-problem, and a point with one
active class is dropped from the pass. When a pass over the shrunk problem meets a loosened
tolerance, everything is reactivated and checked again; the solver only stops after a pass over
ALL points and classes meets ``tol``.

The loops are compiled with numba (``cache=True``: compiled once per machine). Features may be
float32 or float64; every dot product, W and alpha are float64.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
from numba import njit

from harness.protocols import DataError

log = logging.getLogger(__name__)

_UPDATE_FLOOR = 1e-14  # alpha changes smaller than this leave W untouched
# Reassociation lets LLVM vectorise the dot products; no "nnan"/"ninf": the loops use +-inf sentinels.
_FAST = {"reassoc", "contract", "nsz"}
_BLOCK_BYTES = 128 * 1024  # rows visited together in a pass (see _sdm): about an L2 cache's share
# After a shrunk phase meets its loose tolerance, everything is reactivated and the tolerance is
# divided by this (liblinear halves it; 4 saves full passes, measured 1.3-1.8x faster at C <= 1e-3).
_LOOSEN = 4.0
_CACHE_BYTES = 4 * 1024 * 1024  # active rows that fit in cache are visited in a fully random order


@dataclass(frozen=True)
class CSDualSolution:
    """What :func:`solve_cs_dual` returns.

    Attributes
    ----------
    alpha: (n, k) float64 dual variables; row i sums to 0, ``alpha[i, y_i]`` in [0, C], others <= 0.
    weights: (k, d) float64 primal weights ``W_m = sum_i alpha_i^m x_i`` (bias column excluded).
    bias: (k,) float64 ``bias_scale * sum_i alpha_i^m`` (the bias' weight times its feature value).
    iterations: passes over the (active) training points.
    max_violation: largest KKT violation over all points and classes at the returned alpha.
    primal_objective, dual_objective: P(W) and -f(alpha); ``duality_gap = P - (-f) >= 0``.
    converged: ``max_violation < tol`` before ``max_iter`` passes.
    seconds: wall time of the solve (compilation excluded after the first call).
    """

    alpha: np.ndarray
    weights: np.ndarray
    bias: np.ndarray
    iterations: int
    max_violation: float
    primal_objective: float
    dual_objective: float
    converged: bool
    seconds: float
    C: float
    tol: float
    bias_scale: float

    @property
    def duality_gap(self) -> float:
        return self.primal_objective - self.dual_objective

    @property
    def n_support(self) -> int:
        """Training points with a non-zero alpha row (the only ones DualDA attributes to)."""
        return int(np.count_nonzero(np.any(self.alpha != 0.0, axis=1)))

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """``(n, k)`` scores ``x W^T + bias`` of the surrogate SVM."""
        return np.asarray(x, dtype=np.float64) @ self.weights.T + self.bias


def solve_cs_dual(
    x: np.ndarray,
    y: np.ndarray,
    *,
    C: float,
    num_classes: int | None = None,
    tol: float = 1e-4,
    max_iter: int = 100_000,
    shrinking: bool = True,
    bias_scale: float = 1.0,
    seed: int = 0,
) -> CSDualSolution:
    """Solve the Crammer–Singer dual (see the module docstring).

    Parameters
    ----------
    x:
        ``(n, d)`` float32 or float64 features (copied to C order if they are not).
    y:
        ``(n,)`` integer labels in ``0..num_classes-1``.
    C:
        Box bound of ``alpha_i^{y_i}`` (scikit-learn's ``C``); must be > 0.
    num_classes:
        k; ``max(y) + 1`` when omitted. Classes without points are allowed (their W_m is 0 up to the
        pushes from other points' alphas).
    tol:
        Stop when the largest KKT violation of a full pass is below this.
    max_iter:
        Most passes; on reaching it, ``converged`` is False and a warning is logged.
    shrinking:
        Drop bound classes and settled points from passes (faster, same optimum).
    bias_scale:
        Value of the appended constant feature (liblinear's ``intercept_scaling``); 0 = no bias.
    seed:
        Seeds the visiting order: the same inputs and seed give bit-identical results.
    """
    x, y, k = _validated(
        x, y, C=C, num_classes=num_classes, tol=tol, max_iter=max_iter, bias_scale=bias_scale
    )
    n, d = x.shape
    start = time.perf_counter()
    # The passes visit rows block by block (see _sdm), so the rows are shuffled once, physically.
    perm = np.random.default_rng(seed).permutation(n)
    xp, yp = x[perm], y[perm]
    alpha_p = np.zeros((n, k), dtype=np.float64)
    weights = np.zeros((k, d), dtype=np.float64)
    bias_w = np.zeros(k, dtype=np.float64)
    sq_norms = _row_sq_norms(xp) + bias_scale * bias_scale
    block_rows = max(16, _BLOCK_BYTES // (d * x.itemsize))
    cache_rows = max(block_rows, _CACHE_BYTES // (d * x.itemsize))
    iterations, converged = _sdm(
        xp, yp, k, float(C), float(tol), int(max_iter), bool(shrinking), float(bias_scale),
        np.uint64(seed & 0xFFFFFFFFFFFFFFFF), block_rows, cache_rows, sq_norms, alpha_p, weights, bias_w,
    )  # fmt: skip
    del xp, yp
    alpha = np.empty_like(alpha_p)
    alpha[perm] = alpha_p
    seconds = time.perf_counter() - start
    violation = float(_max_violation(x, y, float(C), float(bias_scale), alpha, weights, bias_w))
    primal, dual = _objectives(x, y, float(C), float(bias_scale), alpha, weights, bias_w)
    if not converged:
        log.warning(
            "Crammer-Singer dual: no convergence in %d passes (largest KKT violation %.3g > tol %.3g); "
            "raise max_iter or loosen tol",
            iterations,
            violation,
            tol,
        )
    return CSDualSolution(
        alpha=alpha,
        weights=weights,
        bias=bias_w * bias_scale,
        iterations=int(iterations),
        max_violation=violation,
        primal_objective=float(primal),
        dual_objective=float(dual),
        converged=bool(converged),
        seconds=seconds,
        C=float(C),
        tol=float(tol),
        bias_scale=float(bias_scale),
    )


def compile_kernels() -> None:
    """Compile (or load from numba's on-disk cache) every kernel the solver runs, for float32 and
    float64 features, by solving a tiny fixed problem: the one-off cost of the first solve in a
    process, paid outside any timed fit (:meth:`methods.dualda.DualDA.warm_up`)."""
    rng = np.random.default_rng(0)
    y = np.arange(12, dtype=np.int64) % 3
    x = rng.normal(size=(12, 4)) + y[:, None]
    for dtype in (np.float32, np.float64):
        for shrinking in (True, False):
            solve_cs_dual(x.astype(dtype), y, C=1e-3, num_classes=3, shrinking=shrinking)  # ~15 passes


def _validated(
    x: np.ndarray,
    y: np.ndarray,
    *,
    C: float,
    num_classes: int | None,
    tol: float,
    max_iter: int,
    bias_scale: float,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Checked, contiguous inputs; every error names the problem and the fix."""
    if not (isinstance(C, int | float) and math.isfinite(C) and C > 0):
        raise ValueError(f"C must be a finite number > 0 (the paper's grid: 1e-5, 1e-3, 1e-1), got {C!r}")
    if not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be > 0, got {tol!r}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter!r}")
    if not (bias_scale >= 0 and math.isfinite(bias_scale)):
        raise ValueError(f"bias_scale must be >= 0 (0 = no bias), got {bias_scale!r}")
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 2:
        raise DataError(f"features must be a 2-D (n, d) array, got shape {x.shape}; flatten them first")
    if x.shape[0] == 0:
        raise DataError("the training set is empty: the SVM needs at least one point of two classes")
    if y.shape != (x.shape[0],):
        raise DataError(f"labels must have shape ({x.shape[0]},) to match the features, got {y.shape}")
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise DataError(
            f"features hold NaN or inf in {bad.size} row(s) (first: {bad[:5].tolist()}); "
            "check the feature extractor (a diverged model?) before fitting the SVM"
        )
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise DataError(f"labels must be integers 0..k-1, got dtype {y.dtype}")
    k = int(num_classes) if num_classes is not None else int(y.max()) + 1
    if y.min() < 0 or y.max() >= k:
        raise DataError(
            f"labels must lie in 0..{k - 1} (num_classes={k}), found values in [{y.min()}, {y.max()}]; "
            "map them to consecutive integers from 0"
        )
    if np.unique(y).size < 2:
        raise DataError(
            f"all {y.size} training labels are {int(y[0])}: a classifier needs at least two classes"
        )
    return np.ascontiguousarray(x), np.ascontiguousarray(y, dtype=np.int64), k


# =============================================================================================
# Compiled kernels
# =============================================================================================
@njit(cache=True, fastmath=_FAST)
def _row_sq_norms(x):  # pragma: no cover - compiled
    n, d = x.shape
    out = np.empty(n, dtype=np.float64)
    for i in range(n):
        acc = 0.0
        for j in range(d):
            v = np.float64(x[i, j])
            acc += v * v
        out[i] = acc
    return out


@njit(cache=True, fastmath=_FAST)
def _splitmix64(state):  # pragma: no cover - compiled
    """One step of splitmix64: (new state, 64 random bits)."""
    state = state + np.uint64(0x9E3779B97F4A7C15)
    z = state
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return state, z ^ (z >> np.uint64(31))


@njit(cache=True, fastmath=_FAST)
def _shuffle(order, count, state):  # pragma: no cover - compiled
    """Fisher–Yates on order[:count]; returns the new generator state."""
    for i in range(count - 1, 0, -1):
        state, bits = _splitmix64(state)
        j = np.int64(bits % np.uint64(i + 1))
        order[i], order[j] = order[j], order[i]
    return state


@njit(cache=True, fastmath=_FAST)
def _gradient(x, i, m, yi, weights, bias_w, bias_scale):  # pragma: no cover - compiled
    """G_i^m = W_m . z_i + e_i^m."""
    acc = bias_w[m] * bias_scale
    row = x[i]
    wm = weights[m]
    for j in range(row.shape[0]):
        acc += wm[j] * row[j]
    if m != yi:
        acc += 1.0
    return acc


@njit(cache=True, fastmath=_FAST)
def _solve_sub_problem(a_norm, classes, n_active, yi, C, grad, alpha_i, new_alpha, d_buf):  # pragma: no cover
    """Exact minimiser of the point's sub-problem over its active classes (module docstring)."""
    # T, the sum the active classes must keep: minus that of the shrunk ones (recomputed, not carried
    # over from the previous solve, so rounding errors do not accumulate in the row sums)
    total = 0.0
    for s in range(n_active, classes.shape[0]):
        total -= alpha_i[classes[s]]
    sum_b = 0.0
    for s in range(n_active):
        m = classes[s]
        b = grad[s] - a_norm * alpha_i[m]
        bound = C if m == yi else 0.0
        d_buf[s] = b + a_norm * bound
        sum_b += b
    # insertion sort, decreasing (k is small)
    for s in range(1, n_active):
        v = d_buf[s]
        t = s - 1
        while t >= 0 and d_buf[t] < v:
            d_buf[t + 1] = d_buf[t]
            t -= 1
        d_buf[t + 1] = v
    rest = 0.0  # sum of D_(j) for j >= r
    for s in range(n_active):
        rest += d_buf[s]
    target = a_norm * total + sum_b
    beta = 0.0
    for r in range(1, n_active + 1):
        rest -= d_buf[r - 1]
        beta = (target - rest) / r
        if r == n_active or beta >= d_buf[r]:
            break
    for s in range(n_active):
        m = classes[s]
        b = grad[s] - a_norm * alpha_i[m]
        bound = C if m == yi else 0.0
        value = min(bound, (beta - b) / a_norm)
        # alpha_i^{y_i} >= 0 follows from the other constraints; hold it exactly, not up to rounding
        new_alpha[s] = max(0.0, value) if m == yi else value
    # (beta - B_m) / A carries a rounding error of order eps |B_m| / A, large for a point of small
    # norm; put the row's residual on the class farthest from its bound so the row sums to 0 up to
    # one rounding of numbers of size C.
    residual = -total
    best = -1
    room = -1.0
    for s in range(n_active):
        residual += new_alpha[s]
        m = classes[s]
        gap = (C if m == yi else 0.0) - new_alpha[s]
        if gap > room:
            room = gap
            best = s
    if best >= 0:
        m = classes[best]
        value = min(C if m == yi else 0.0, new_alpha[best] - residual)
        new_alpha[best] = max(0.0, value) if m == yi else value


@njit(cache=True, fastmath=_FAST)
def _visit(
    x,
    y,
    k,
    C,
    shrinking,
    bias_scale,
    i,
    sq_norms,
    classes,
    n_active,
    alpha,
    weights,
    bias_w,
    grad,
    new_alpha,
    d_buf,
):  # pragma: no cover - compiled
    """Check point i, shrink its settled classes, solve its sub-problem: (violation, still active)."""
    yi = y[i]
    a_norm = sq_norms[i]
    cls = classes[i]
    na = n_active[i]
    if a_norm <= 0.0:  # all-zero point without bias: W never moves; alpha_i^y = C is optimal
        alpha[i, yi] = C
        for m in range(k):
            if m != yi:
                alpha[i, m] = -C / (k - 1)
        return 0.0, False
    max_g = -np.inf
    min_g = np.inf
    for s in range(na):
        m = cls[s]
        g = _gradient(x, i, m, yi, weights, bias_w, bias_scale)
        grad[s] = g
        if g > max_g:
            max_g = g
        bound = C if m == yi else 0.0
        if alpha[i, m] < bound and g < min_g:
            min_g = g
    if shrinking:
        s = 0
        while s < na:
            m = cls[s]
            bound = C if m == yi else 0.0
            if alpha[i, m] >= bound and grad[s] < min_g:
                na -= 1
                cls[s], cls[na] = cls[na], cls[s]
                grad[s], grad[na] = grad[na], grad[s]
            else:
                s += 1
        n_active[i] = na
        if na <= 1:
            return -np.inf, False
    violation = max_g - min_g
    if violation > 1e-12:
        _solve_sub_problem(a_norm, cls, na, yi, C, grad, alpha[i], new_alpha, d_buf)
        row = x[i]
        for s in range(na):
            m = cls[s]
            delta = new_alpha[s] - alpha[i, m]
            alpha[i, m] = new_alpha[s]
            if abs(delta) > _UPDATE_FLOOR:
                wm = weights[m]
                for j in range(row.shape[0]):
                    wm[j] += delta * row[j]
                bias_w[m] += delta * bias_scale
    return violation, True


@njit(cache=True, fastmath=_FAST)
def _sdm(
    x,
    y,
    k,
    C,
    tol,
    max_iter,
    shrinking,
    bias_scale,
    seed,
    block_rows,
    cache_rows,
    sq_norms,
    alpha,
    weights,
    bias_w,
):  # pragma: no cover - compiled
    """The passes. Each visits the active points (kept in increasing row order) block by block:
    blocks of ``block_rows`` consecutive active points in random order, and the points of a block
    in random order. The rows arrive pre-shuffled, so this is as random as a full shuffle for the
    optimisation, while each block's rows stay in cache (a full shuffle triples the pass time)."""
    n, d = x.shape
    classes = np.empty((n, k), dtype=np.int64)
    n_active = np.full(n, k, dtype=np.int64)
    for i in range(n):
        for m in range(k):
            classes[i, m] = m
    active = np.arange(n)
    removed = np.zeros(n, dtype=np.bool_)
    block_order = np.empty(n, dtype=np.int64)
    local = np.empty(n, dtype=np.int64)
    grad = np.empty(k)
    new_alpha = np.empty(k)
    d_buf = np.empty(k)
    state = seed
    active_points = n
    pass_tol = tol
    loose_tol = max(10.0 * tol, 1.0) if shrinking else tol
    all_active = True
    iterations = 0
    converged = False
    while iterations < max_iter:
        rows = block_rows if active_points > cache_rows else max(active_points, 1)
        n_blocks = (active_points + rows - 1) // rows
        for b in range(n_blocks):
            block_order[b] = b
        state = _shuffle(block_order, n_blocks, state)
        worst = -np.inf
        n_removed = 0
        for bb in range(n_blocks):
            start = block_order[bb] * rows
            count = min(rows, active_points - start)
            for t in range(count):
                local[t] = active[start + t]
            state = _shuffle(local, count, state)
            for t in range(count):
                i = local[t]
                violation, keep = _visit(
                    x, y, k, C, shrinking, bias_scale, i, sq_norms, classes, n_active, alpha, weights,
                    bias_w, grad, new_alpha, d_buf,
                )  # fmt: skip
                if violation > worst:
                    worst = violation
                if not keep:
                    removed[i] = True
                    n_removed += 1
        if n_removed:
            kept = 0
            for s in range(active_points):
                i = active[s]
                if removed[i]:
                    removed[i] = False
                else:
                    active[kept] = i
                    kept += 1
            active_points = kept
        iterations += 1
        if worst < loose_tol:
            if worst < pass_tol and all_active:
                # A pass checks each point before later points move W, so its worst violation
                # can understate the final one: confirm at the final alpha before stopping, and
                # demand more of the passes when the confirmation fails.
                if _max_violation(x, y, C, bias_scale, alpha, weights, bias_w) < tol:
                    converged = True
                    break
                pass_tol /= 2.0
            # reactivate everything and check the whole problem
            for i in range(n):
                active[i] = i
                n_active[i] = k
            active_points = n
            loose_tol = max(loose_tol / _LOOSEN, pass_tol)
            all_active = True
        elif shrinking:
            all_active = False  # the next pass starts from the shrunk problem
    return iterations, converged


@njit(cache=True, fastmath=_FAST)
def _max_violation(x, y, C, bias_scale, alpha, weights, bias_w):  # pragma: no cover - compiled
    n = x.shape[0]
    k = weights.shape[0]
    worst = -np.inf
    for i in range(n):
        yi = y[i]
        max_g = -np.inf
        min_g = np.inf
        for m in range(k):
            g = _gradient(x, i, m, yi, weights, bias_w, bias_scale)
            if g > max_g:
                max_g = g
            bound = C if m == yi else 0.0
            if alpha[i, m] < bound and g < min_g:
                min_g = g
        if max_g - min_g > worst:
            worst = max_g - min_g
    return worst


@njit(cache=True, fastmath=_FAST)
def _objectives(x, y, C, bias_scale, alpha, weights, bias_w):  # pragma: no cover - compiled
    """(primal P(W), dual -f(alpha)); P >= -f with equality at the optimum."""
    n = x.shape[0]
    k = weights.shape[0]
    half_sq = 0.5 * (np.sum(weights * weights) + np.sum(bias_w * bias_w))
    hinge = 0.0
    sum_alpha_y = 0.0
    for i in range(n):
        yi = y[i]
        g_y = _gradient(x, i, yi, yi, weights, bias_w, bias_scale)
        worst = 0.0
        for m in range(k):
            if m != yi:
                v = _gradient(x, i, m, yi, weights, bias_w, bias_scale) - g_y
                if v > worst:
                    worst = v
        hinge += worst
        sum_alpha_y += alpha[i, yi]
    # f(alpha) = 1/2 ||W||^2 + sum_i sum_{m != y_i} alpha_i^m = 1/2 ||W||^2 - sum_i alpha_i^{y_i}
    return half_sq + C * hinge, -(half_sq - sum_alpha_y)

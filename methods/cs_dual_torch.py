"""Crammer–Singer multi-class SVM dual in torch, on the features' device: DualDA's GPU solver.

Same problem, same stopping rule and same :class:`~methods.cs_dual.CSDualSolution` as the numba
solver (:mod:`methods.cs_dual`, whose docstring states the problem, the sub-problem of one point and
its closed form). Notation as there: ``z_i = [x_i, s]``, ``W_m = sum_i alpha_i^m z_i``, ``f(alpha)``
the dual objective, ``G_i^m = W_m . z_i + e_i^m`` its gradient, ``A_i = ||z_i||^2``, ``U_i^m = C
[m == y_i]`` the upper bounds; the violation of point i is ``max_m G_i^m - min_{m: alpha_i^m <
U_i^m} G_i^m``. The numba solver visits one point at a time, which a GPU cannot do fast (a pass
would be n tiny kernels); this one moves many points per step and is exact in the same sense: it
returns only when the largest violation over ALL points, at the returned alpha, is below ``tol``.

Algorithm (derived here). Each *pass* (``iterations`` counts them):

1. Check. ``W = alpha^T Z`` is recomputed from alpha (no drift), then every point's gradient and
   violation. If the largest is below ``tol``, stop: this is the returned alpha and W.
2. Block sweep. The points that violate (above ``tol / 2`` with ``shrinking``; all points without)
   are visited in a seeded random order, ``block_size`` at a time. For a block B, every point's
   sub-problem is solved in closed form in parallel (sorted ``D`` and ``beta_r`` of the numba
   solver, vectorised with ``torch.sort`` and ``cumsum``) with ``A_i`` replaced by ``gamma A_i``,
   ``gamma >= 1``: the minimiser ``d`` of the separable model
   ``q(d) = g . d + gamma/2 sum_i A_i ||d_i||^2`` over the feasible set. Points interact only
   through W: ``f(alpha + d) = f(alpha) + g . d + 1/2 ||sum_i d_i z_i^T||^2``. So if the step
   passes the check ``||sum_i d_i z_i^T||^2 <= gamma sum_i A_i ||d_i||^2``, then
   ``f(alpha + d) <= f(alpha) + q(d) <= f(alpha) - gamma/2 sum_i A_i ||d_i||^2`` (q is
   ``gamma A``-strongly convex, minimal over the feasible steps at d, and ``q(0) = 0``): a
   sufficient decrease. A step that fails the check is not taken. The next ``gamma`` is a little
   above the step's coupling ``||sum_i d_i z_i^T||^2 / sum_i A_i ||d_i||^2`` (1 for one point,
   at most ``|B|``), at least doubled after a refused step and at most halved after a taken one.
   Every taken step is a full step to the sub-problem minimisers, so the bounds are met exactly
   (a fractional line-search step would leave coordinates at ``1e-90`` from their bound, still
   "free" for the violation).
   With one point per block ``gamma`` stays 1 and this is the numba solver's step.
3. Face phase: the bound coordinates fixed, conjugate gradients (preconditioned by ``1 / A_i``)
   on the free coordinates, whose rows keep summing to 0 (the gradient is projected by
   subtracting each row's mean over its free coordinates), for at most ``face_steps`` steps or
   until the violations among free coordinates are below ``tol / 2``. A step that would cross a
   bound is cut at the bound (the reached coordinate joins the bound set; CG restarts), unless
   projecting the uncut step (or its half, or its quarter) onto the feasible set lowers f more;
   all are feasible, and the best is taken only if it lowers f (f is quadratic: the changes are
   computed exactly). Block steps alone crawl near the optimum (on a block of correlated points
   they make the progress of damped Jacobi); CG converges on a face in few steps, and its cut
   steps put coordinates on their bounds one or (projected) many at a time. On MNIST features
   most face steps are cut steps: the phase finds the face as much as it solves on it.

   Two roundings matter at ``tol = 1e-9``: near the optimum the gradients are ~1 while their
   differences within a row, the signal, are ~1e-8, so the slope ``g . d`` is computed as
   ``-(P g) . d`` (equal for d on the face) and the projection P is applied twice (one
   subtraction of the row mean leaves row sums of ~1e-16, large next to ``P g``).

Why it is exact: every step keeps alpha feasible (the sub-problem minimisers are feasible; a CG
step is cut at the first bound; a projection is feasible; rows sum to 0 up to rounding, which is
put back on the coordinate farthest from its bound as in the numba solver) and no step raises f.
The block steps are the block coordinate gradient descent of Tseng & Yun (Math. Programming 117,
2009) with the diagonal scaling ``gamma A_i`` and an acceptance test that implies their Armijo
rule; f is bounded below on the feasible set (``f >= -n C``), the decreases sum to a finite
number, so the block steps of violating points shrink to 0, and a point whose step is 0 satisfies
its sub-problem's optimality conditions, i.e. has violation <= 0 (Tseng & Yun prove convergence to
a stationary point, which for this convex problem is an optimum; for quadratic programs the rate
is linear). The face phase only adds decrease. The stopping test is the numba solver's, evaluated
on the returned alpha and on W recomputed from it.

Cost per pass: two ``(n, d) x (d, k)`` products for the check, two per block and two per CG step
(on the rows with at least two free coordinates only), plus sorts of ``(block, k)``. Everything is
float64 (the features are converted once: ``n (d + 1)`` doubles on the device); a GPU runs each
step as a few dozen kernels whatever the block size.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from harness.protocols import DataError
from methods.cs_dual import CSDualSolution, _validated

log = logging.getLogger(__name__)

_ACCEPT_SLACK = 1e-12  # the majorisation check tolerates rounding of this relative size
_SNAP = 1e-12  # a coordinate a cut CG step brings this close (relative) to its bound is put on it
_TINY = 1e-300
_PROJECTED = (1.0, 0.5, 0.25)  # shares of a cut CG step's full length whose projections are tried


@dataclass
class _Counts:
    """Work done by one solve (logged at DEBUG level)."""

    block_steps: int = 0
    rejected: Tensor | int = 0  # block steps that failed the majorisation check (kept on the device)
    face_steps: int = 0
    face_cuts: int = 0  # face steps that reached a bound


@dataclass
class _Problem:
    """The fixed tensors of one solve, on the solver's device (n points, k classes, p = d (+ 1))."""

    z: Tensor  # (n, p) float64: features, with the constant bias feature appended when it is > 0
    sq_norms: Tensor  # (n,) float64: A_i = ||z_i||^2
    upper: Tensor  # (n, k) float64: C at the label, 0 elsewhere
    is_label: Tensor  # (n, k) bool
    cost: Tensor  # (n, k) float64: e_i^m = 1 - [m == y_i]


def solve_cs_dual_torch(
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    *,
    C: float,
    num_classes: int | None = None,
    tol: float = 1e-4,
    max_iter: int = 100_000,
    shrinking: bool = True,
    bias_scale: float = 1.0,
    seed: int = 0,
    block_size: int = 1024,
    face_steps: int = 100,
) -> CSDualSolution:
    """Solve the Crammer–Singer dual on ``x``'s device (see the module docstring).

    The arguments up to ``seed`` are those of :func:`methods.cs_dual.solve_cs_dual`, with the same
    meaning; the result is the same optimum to the stopping tolerance (W is unique, alpha need not
    be) with every field of :class:`~methods.cs_dual.CSDualSolution` meaning the same
    (``iterations`` counts passes as described in the module docstring).

    Parameters
    ----------
    x:
        ``(n, d)`` features: a tensor (the solve runs on its device) or an array (on the CPU).
        float32 or float64; other dtypes are converted to float64.
    y:
        ``(n,)`` integer labels in ``0..num_classes-1`` (tensor on any device, or array).
    C, num_classes, tol, max_iter, bias_scale:
        As in :func:`methods.cs_dual.solve_cs_dual`.
    shrinking:
        Sweep only the points whose violation exceeds ``tol / 2`` (False: every point, every pass).
        The stopping check always covers all points.
    seed:
        Seeds the visiting order; the same inputs and seed give the same result on the same device.
    block_size:
        Points moved together by one block step.
    face_steps:
        Conjugate-gradient steps on the current face per pass (0: block steps only).

    Returns
    -------
    CSDualSolution
        ``alpha`` ``(n, k)``, ``weights`` ``(k, d)``, ``bias`` ``(k,)``: float64 numpy arrays.
    """
    if not (isinstance(block_size, int) and block_size >= 1):
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    if not (isinstance(face_steps, int) and face_steps >= 0):
        raise ValueError(f"face_steps must be an integer >= 0, got {face_steps!r}")
    features, labels, k = _validated_tensors(
        x, y, C=C, num_classes=num_classes, tol=tol, max_iter=max_iter, bias_scale=bias_scale
    )
    device = features.device
    start = _clock(device)
    problem = _problem(features, labels, k, float(C), float(bias_scale))
    del features
    n = problem.z.shape[0]
    alpha = torch.zeros(n, k, dtype=torch.float64, device=device)
    # All-zero points without bias never move W: alpha_i^{y_i} = C is optimal (as the numba solver sets it)
    flat = problem.sq_norms <= 0.0
    if bool(flat.any()):
        alpha[flat] = problem.upper[flat] - problem.cost[flat] * (C / (k - 1))
    movable = ~flat
    generator = torch.Generator().manual_seed(int(seed))
    gamma = torch.ones((), dtype=torch.float64, device=device)
    counts = _Counts()
    iterations = 0
    converged = False
    while True:
        weights = alpha.T @ problem.z  # (k, p), exact for the current alpha
        grad = problem.z @ weights.T + problem.cost
        point_violation = _violations(grad, alpha, problem.upper)
        violation = float(point_violation.max())
        log.debug("cs-dual (torch) pass %d: largest KKT violation %.3g", iterations, violation)
        if violation < tol:
            converged = True
            break
        if iterations >= max_iter:
            break
        iterations += 1
        sweep = movable & (point_violation > 0.5 * tol) if shrinking else movable
        order = torch.nonzero(sweep).flatten()
        order = order[torch.randperm(order.numel(), generator=generator).to(device)]
        for first in range(0, order.numel(), block_size):
            gamma = _block_step(problem, alpha, weights, order[first : first + block_size], gamma, counts)
        if face_steps:
            _face_phase(problem, alpha, weights, face_steps, tol, counts)
    seconds = _clock(device) - start
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "cs-dual (torch): %d passes, %d block steps (%d rejected), %d face steps (%d at a bound), %.3g s",
            iterations,
            counts.block_steps,
            int(counts.rejected),
            counts.face_steps,
            counts.face_cuts,
            seconds,
        )
    primal, dual = _objectives(problem, alpha, weights, float(C))
    if not converged:
        log.warning(
            "Crammer-Singer dual (torch): no convergence in %d passes (largest KKT violation %.3g > tol "
            "%.3g); raise max_iter or loosen tol",
            iterations,
            violation,
            tol,
        )
    d = problem.z.shape[1] - (1 if bias_scale > 0 else 0)
    weights_np = weights.cpu().numpy()
    bias_w = weights_np[:, d].copy() if bias_scale > 0 else np.zeros(k)
    return CSDualSolution(
        alpha=alpha.cpu().numpy(),
        weights=np.ascontiguousarray(weights_np[:, :d]),
        bias=bias_w * bias_scale,
        iterations=int(iterations),
        max_violation=violation,
        primal_objective=primal,
        dual_objective=dual,
        converged=converged,
        seconds=seconds,
        C=float(C),
        tol=float(tol),
        bias_scale=float(bias_scale),
    )


def prepare(device: torch.device | str) -> None:
    """Run every kernel of the solver once on ``device`` on a tiny fixed problem (CUDA context,
    cuBLAS handles, sort kernels), so that the first real solve pays none of it inside a timed fit
    (:meth:`methods.dualda.DualDA.warm_up`)."""
    rng = np.random.default_rng(0)
    y = np.arange(12, dtype=np.int64) % 3
    x = rng.normal(size=(12, 4)) + y[:, None]
    for dtype in (torch.float32, torch.float64):
        features = torch.as_tensor(x, dtype=dtype, device=device)
        solve_cs_dual_torch(features, torch.as_tensor(y, device=device), C=1e-3, num_classes=3, block_size=4)


# =============================================================================================
# Input
# =============================================================================================
def _validated_tensors(
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    *,
    C: float,
    num_classes: int | None,
    tol: float,
    max_iter: int,
    bias_scale: float,
) -> tuple[Tensor, Tensor, int]:
    """``(features, labels, k)`` on the features' device, checked with the numba solver's messages.

    The options, sizes and labels go through :func:`methods.cs_dual._validated` itself (the
    features by a zero-width stand-in of their shape, so they are not copied off the device); the
    features' values are checked here, where they are.
    """
    features = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    labels = y.detach().cpu().numpy() if isinstance(y, Tensor) else np.asarray(y)
    stand_in = np.empty(tuple(features.shape[:1]) + (0,) * (features.dim() - 1))
    _, labels_np, k = _validated(
        stand_in, labels, C=C, num_classes=num_classes, tol=tol, max_iter=max_iter, bias_scale=bias_scale
    )
    features = features.detach()
    if features.dtype not in (torch.float32, torch.float64):
        features = features.to(torch.float64)
    finite = torch.isfinite(features).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten().cpu().numpy()
        raise DataError(
            f"features hold NaN or inf in {bad.size} row(s) (first: {bad[:5].tolist()}); "
            "check the feature extractor (a diverged model?) before fitting the SVM"
        )
    return features, torch.as_tensor(labels_np, device=features.device), k


def _problem(features: Tensor, labels: Tensor, k: int, C: float, bias_scale: float) -> _Problem:
    z = features.to(torch.float64)
    if bias_scale > 0:
        z = torch.cat([z, torch.full((z.shape[0], 1), bias_scale, dtype=torch.float64, device=z.device)], 1)
    z = z.contiguous()
    is_label = torch.nn.functional.one_hot(labels, k).bool()
    return _Problem(
        z=z,
        sq_norms=(z * z).sum(dim=1),
        upper=is_label.to(torch.float64) * C,
        is_label=is_label,
        cost=(~is_label).to(torch.float64),
    )


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# =============================================================================================
# Steps
# =============================================================================================
def _row_minimisers(a_norm: Tensor, linear: Tensor, upper: Tensor, is_label: Tensor) -> Tensor:
    """Per row, ``argmin_a sum_m a_norm/2 a_m^2 + linear_m a_m`` s.t. ``sum_m a_m = 0``, ``a <= upper``.

    The numba solver's closed form (its module docstring), over all classes of a row at once and
    over all rows in parallel: ``D = linear + a_norm upper`` sorted in decreasing order,
    ``beta_r = (sum_m linear_m - sum_{j >= r} D_(j)) / r`` for the first r with ``beta_r >= D_(r)``, then
    ``a = min(upper, (beta - linear) / a_norm)``. The rounding residual of the row sum goes on the
    coordinate farthest from its bound.

    Parameters
    ----------
    a_norm: (b,) > 0.  linear, upper: (b, k) float64.  is_label: (b, k) bool.

    Returns
    -------
    Tensor
        (b, k) float64 feasible rows.
    """
    scale = a_norm[:, None]
    bound_point = linear + scale * upper  # D_m
    ordered = torch.sort(bound_point, dim=1, descending=True).values
    k = ordered.shape[1]
    prefix = ordered.cumsum(dim=1)
    tail = prefix[:, -1:] - prefix  # sum_{j >= r} D_(j), for r = 1..k
    counts = torch.arange(1, k + 1, dtype=ordered.dtype, device=ordered.device)
    betas = (linear.sum(dim=1, keepdim=True) - tail) / counts
    following = torch.cat([ordered[:, 1:], torch.full_like(ordered[:, :1], -math.inf)], dim=1)
    first = (betas >= following).to(torch.int8).argmax(dim=1, keepdim=True)
    beta = betas.gather(1, first)
    new = torch.minimum(upper, (beta - linear) / scale)
    # alpha_i^{y_i} >= 0 follows from the other constraints; hold it exactly, not up to rounding
    new = torch.where(is_label, new.clamp_min(0.0), new)
    return _settle_rows(new, upper, is_label)


def _settle_rows(alpha: Tensor, upper: Tensor, is_label: Tensor) -> Tensor:
    """Put each row's sum residual on its coordinate farthest from its bound (in place; returned)."""
    residual = alpha.sum(dim=1, keepdim=True)
    best = (upper - alpha).argmax(dim=1, keepdim=True)
    value = torch.minimum(upper.gather(1, best), alpha.gather(1, best) - residual)
    value = torch.where(is_label.gather(1, best), value.clamp_min(0.0), value)
    return alpha.scatter_(1, best, value)


def _violations(grad: Tensor, alpha: Tensor, upper: Tensor) -> Tensor:
    """``(n,)``: ``max_m G_i^m - min_{m: alpha_i^m < U_i^m} G_i^m`` (<= 0 at the optimum)."""
    can_rise = torch.where(alpha < upper, grad, torch.full_like(grad, math.inf))
    return grad.max(dim=1).values - can_rise.min(dim=1).values


def _block_step(
    problem: _Problem, alpha: Tensor, weights: Tensor, rows: Tensor, gamma: Tensor, counts: _Counts
) -> Tensor:
    """One block step (module docstring, 2.) on ``rows``; updates alpha and W in place.

    Returns the next ``gamma``. No host synchronisation: a rejected step is masked out on the device.
    """
    z = problem.z[rows]
    old = alpha[rows]
    sq_norms = problem.sq_norms[rows]
    grad = z @ weights.T + problem.cost[rows]
    scaled = gamma * sq_norms
    new = _row_minimisers(scaled, grad - scaled[:, None] * old, problem.upper[rows], problem.is_label[rows])
    step = new - old
    moved = step.T @ z  # (k, p): the change of W
    separable = (sq_norms * (step * step).sum(dim=1)).sum()
    coupling = (moved * moved).sum() / separable.clamp_min(_TINY)  # 1 for one point; up to |B|
    accept = coupling <= gamma * (1.0 + _ACCEPT_SLACK)
    alpha[rows] = torch.where(accept, new, old)
    weights.add_(moved * accept.to(moved.dtype))
    counts.block_steps += 1
    counts.rejected = counts.rejected + (~accept).to(torch.int64)
    # next gamma: a little above this step's coupling (equal to it at 1), at most halving after a
    # taken step and at least doubling after a refused one
    target = 1.2 * coupling - 0.2
    eased = torch.maximum(torch.clamp(0.5 * gamma, min=1.0), target)
    grown = torch.maximum(2.0 * gamma, target)
    return torch.where(accept, eased, grown)


def _free(alpha: Tensor, upper: Tensor, is_label: Tensor) -> Tensor:
    """Coordinates strictly inside their bounds (alpha_i^{y_i} < C; the others < 0)."""
    return torch.where(is_label, alpha < upper, alpha < 0.0)


def _on_face(vector: Tensor, free: Tensor) -> Tensor:
    """Projection onto the face's directions: zero off ``free``, rows summing to 0 over ``free``;
    rows with fewer than two free coordinates cannot move.

    Applied twice: a gradient's entries are ~1 and their differences ~1e-8 near the optimum, so
    one subtraction of the mean leaves row sums of ~1e-16, large next to the result; the second
    brings them to the rounding of the result itself (else alpha's rows would drift from 0).
    """
    count = free.sum(dim=1, keepdim=True)
    movable = free & (count >= 2)
    for _ in range(2):
        mean = torch.where(free, vector, 0.0).sum(dim=1, keepdim=True) / count.clamp_min(1)
        vector = torch.where(movable, vector - mean, 0.0)
    return vector


def _face_phase(
    problem: _Problem, alpha: Tensor, weights: Tensor, steps: int, tol: float, counts: _Counts
) -> None:
    """Conjugate gradients on the current face (module docstring, 3.); alpha and W in place.

    Stops after ``steps`` steps, or when the face's own violations (between free coordinates of
    a row) are below ``tol / 2``: what is left to fix then is which coordinates sit at a bound,
    the block steps' work. One host synchronisation per step (the step's scalars are read together).
    """
    free = _free(alpha, problem.upper, problem.is_label)
    rows = torch.nonzero(free.sum(dim=1) >= 2).flatten()
    if rows.numel() == 0:
        return
    z = problem.z[rows]
    upper, is_label = problem.upper[rows], problem.is_label[rows]
    sq_norms = problem.sq_norms[rows]
    precondition = torch.where(sq_norms > 0, 1.0 / sq_norms.clamp_min(_TINY), 0.0)[:, None]
    current = alpha[rows]
    free = free[rows]
    movable = free.sum(dim=1) >= 2
    grad = z @ weights.T + problem.cost[rows]
    residual = -_on_face(grad, free)
    direction = residual * precondition
    rz = (residual * direction).sum()
    shares = torch.tensor(_PROJECTED, dtype=current.dtype, device=current.device)
    for _ in range(steps):
        moved = direction.T @ z  # (k, p): the change of W per unit step
        rising = direction > 0
        room_each = torch.where(rising, (upper - current) / torch.where(rising, direction, 1.0), math.inf)
        # g . d for d on the face is computed as -(P g) . d: g . d itself would lose the answer to
        # cancellation (gradients are ~1 where their differences, the signal, are ~1e-8)
        spread = (
            torch.where(free, grad, -math.inf).max(dim=1).values
            - torch.where(free, grad, math.inf).min(dim=1).values
        )
        face_violation = torch.where(movable, spread, 0.0).max()
        scalars = [rz, -(residual * direction).sum(), (moved * moved).sum(), room_each.min(), face_violation]
        rz_now, slope, curvature, room, worst = torch.stack(scalars).tolist()
        if rz_now <= _TINY or worst < 0.5 * tol:
            break
        counts.face_steps += 1
        if slope >= 0.0:  # rounding has spoilt conjugacy: restart from the projected gradient
            direction = residual * precondition
            rz = (residual * direction).sum()
            continue
        length = -slope / curvature if curvature > 0.0 else math.inf
        if room > length:  # an interior CG step
            current.add_(length * direction)
            weights.add_(length * moved)
            grad.add_(length * (z @ moved.T))
            residual = -_on_face(grad, free)
            preconditioned = residual * precondition
            rz_next = (residual * preconditioned).sum()
            direction = preconditioned + (rz_next / rz) * direction
            rz = rz_next
            continue
        if not math.isfinite(room):  # nothing rises: nothing left to move (up to rounding)
            break
        counts.face_cuts += 1
        # the step reaches a bound: cut it there, or project the uncut step (or a half or quarter
        # of it) onto the feasible set, whichever lowers f most
        cut = current + room * direction
        cut = torch.where(rising & (upper - cut <= _SNAP * (1.0 + upper.abs())), upper, cut)
        candidates = _settle_rows(cut, upper, is_label)[None]
        if math.isfinite(length):
            targets = current + (length * shares)[:, None, None] * direction  # (c, r, k)
            c = len(_PROJECTED)
            projected = _row_minimisers(
                torch.ones_like(sq_norms).repeat(c),
                -targets.flatten(0, 1),
                upper.repeat(c, 1),
                is_label.repeat(c, 1),
            ).view_as(targets)
            # rows that do not move are kept as they are (not re-rounded by the projection)
            projected = torch.where((direction != 0).any(dim=1, keepdim=True), projected, current)
            candidates = torch.cat([candidates, projected])
        # the exact change of f; a change's rows sum to 0, so each row's gradient is centred first
        centred = grad - grad.mean(dim=1, keepdim=True)
        changes = candidates - current
        changes_w = torch.einsum("crk,rp->ckp", changes, z)
        gains = ((centred * changes).sum(dim=(1, 2)) + 0.5 * (changes_w * changes_w).sum(dim=(1, 2))).tolist()
        best = min(range(len(gains)), key=gains.__getitem__)
        if gains[best] >= 0.0:
            break
        current.copy_(candidates[best])
        weights.add_(changes_w[best])
        grad.add_(z @ changes_w[best].T)
        free = _free(current, upper, is_label)
        movable = free.sum(dim=1) >= 2
        residual = -_on_face(grad, free)
        direction = residual * precondition
        rz = (residual * direction).sum()
    alpha[rows] = _settle_rows(current, upper, is_label)


# =============================================================================================
# Objectives
# =============================================================================================
def _objectives(problem: _Problem, alpha: Tensor, weights: Tensor, C: float) -> tuple[float, float]:
    """(primal P(W), dual -f(alpha)) as the numba solver reports them."""
    half_sq = 0.5 * float((weights * weights).sum())
    scores = problem.z @ weights.T  # (n, k): W_m . z_i
    own = (scores * problem.is_label).sum(dim=1, keepdim=True)
    margins = torch.where(problem.is_label, 0.0, scores + 1.0 - own)
    hinge = float(margins.max(dim=1).values.clamp_min(0.0).sum())
    sum_alpha_y = float((alpha * problem.is_label).sum())
    return half_sq + C * hinge, -(half_sq - sum_alpha_y)

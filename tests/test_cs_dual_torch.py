"""Exactness of DualDA's torch Crammer–Singer dual solver (methods/cs_dual_torch.py), on the CPU.

The kinds of checks tests/test_cs_dual.py makes of the numba solver, against references computed
here in float64 numpy from the returned alpha alone:

- the KKT violation at the returned alpha, over all points, is below ``tol`` (the stopping rule);
- feasibility: bounds hold exactly, rows sum to 0 up to rounding; ``W = alpha^T Z`` as returned;
- the duality gap ``P(W) + f(alpha)`` is at most ``2 n C tol``, which the KKT tolerance implies: in
  a row with violation ``eps`` each free ``alpha_i^m < 0`` has ``G_i^y - G_i^m <= eps`` and the
  hinge is ``<= eps`` when ``alpha_i^y < C``, so the row adds at most ``2 C eps`` (``C eps`` when
  ``alpha_i^y = C``);
- the primal optimum W is unique and ``||W(alpha) - W*||^2 <= 2 (f(alpha) - f*) <= 2 gap`` (f is
  ``1/2 ||W||^2`` plus a linear term, and the gradient at the optimum is >= 0 on feasible
  directions), so two solutions' W differ by at most ``sqrt(2 gap_1) + sqrt(2 gap_2)``: the
  tolerance of every comparison with the numba solver, derived from the gaps, not chosen;
- the dual objective equals cvxpy's optimum (an interior-point QP solver).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cs_dual import assert_feasible, clusters

from harness.cache import Cache
from harness.config import ConfigError
from harness.protocols import DataError
from methods.cs_dual import CSDualSolution, solve_cs_dual
from methods.cs_dual_torch import solve_cs_dual_torch
from methods.dualda import SOLVER_ENV, DualDA, DualDAConfig, cs_solver

TIGHT = {"tol": 1e-9, "max_iter": 1_000_000}


def reference(sol: CSDualSolution, x: np.ndarray, y: np.ndarray) -> dict[str, float | np.ndarray]:
    """Independent float64 numbers of ``sol.alpha``: W with the bias weight, KKT violation, P, f, gap."""
    x = np.asarray(x, dtype=np.float64)
    n, k = sol.alpha.shape
    z = np.hstack([x, np.full((n, 1), sol.bias_scale)]) if sol.bias_scale > 0 else x
    weights = sol.alpha.T @ z  # (k, p)
    is_label = np.arange(k)[None, :] == y[:, None]
    cost = (~is_label).astype(np.float64)
    grad = z @ weights.T + cost
    upper = np.where(is_label, sol.C, 0.0)
    can_rise = np.where(sol.alpha < upper, grad, np.inf)
    violation = float((grad.max(axis=1) - can_rise.min(axis=1)).max())
    own = grad[np.arange(n), y]
    hinge = np.maximum(0.0, np.where(is_label, -np.inf, grad - own[:, None]).max(axis=1)).sum()
    half_sq = 0.5 * float(np.sum(weights * weights))
    f = half_sq + float(np.sum(cost * sol.alpha))
    primal = half_sq + sol.C * hinge
    return {"weights": weights, "violation": violation, "primal": primal, "f": f, "gap": primal + f}


def assert_exact(sol: CSDualSolution, x: np.ndarray, y: np.ndarray) -> dict:
    """The stopping rule, feasibility, W and the objectives, checked independently (module docstring)."""
    ref = reference(sol, x, y)
    assert sol.converged, f"no convergence in {sol.iterations} passes"
    assert ref["violation"] < sol.tol + 1e-12, f"KKT violation {ref['violation']:.3g} above tol {sol.tol}"
    assert abs(sol.max_violation - ref["violation"]) < 1e-12
    assert_feasible(sol, y)
    w = ref["weights"]
    scale = max(1.0, np.abs(w).max())
    d = sol.weights.shape[1]
    np.testing.assert_allclose(sol.weights, w[:, :d], rtol=0, atol=1e-10 * scale)
    bias = w[:, d] * sol.bias_scale if sol.bias_scale > 0 else np.zeros(w.shape[0])
    np.testing.assert_allclose(sol.bias, bias, rtol=0, atol=1e-10 * scale)
    n = len(y)
    assert -1e-12 <= ref["gap"] <= 2 * n * sol.C * sol.tol + 1e-12, f"duality gap {ref['gap']:.3g}"
    assert abs(sol.primal_objective - ref["primal"]) < 1e-10 * max(1.0, abs(ref["primal"]))
    assert abs(sol.dual_objective + ref["f"]) < 1e-10 * max(1.0, abs(ref["f"]))
    return ref


def assert_same_optimum(a: CSDualSolution, b: CSDualSolution, x: np.ndarray, y: np.ndarray) -> None:
    """W (with the bias weight) of two solutions within ``sqrt(2 gap_a) + sqrt(2 gap_b)`` (Frobenius)."""
    ref_a, ref_b = reference(a, x, y), reference(b, x, y)
    bound = math.sqrt(2 * max(ref_a["gap"], 0.0)) + math.sqrt(2 * max(ref_b["gap"], 0.0))
    distance = float(np.linalg.norm(ref_a["weights"] - ref_b["weights"]))
    assert distance <= bound + 1e-12, f"W differ by {distance:.3g} > {bound:.3g}, more than the gaps allow"


# =============================================================================================
# Against the numba solver and the KKT conditions
# =============================================================================================
@pytest.mark.parametrize(
    ("C", "bias_scale", "dtype", "n", "d", "k"),
    [
        (1e-5, 1.0, np.float64, 600, 12, 4),
        (1e-3, 1.0, np.float64, 600, 12, 4),
        (1e-1, 1.0, np.float64, 600, 12, 4),
        (1e-1, 0.0, np.float64, 400, 10, 3),
        (1e-3, 1.0, np.float32, 600, 12, 4),
        (1e-1, 0.0, np.float32, 600, 12, 4),
        (1e-1, 1.0, np.float64, 800, 16, 10),
    ],
)
def test_exact_and_at_the_numba_solvers_optimum(C, bias_scale, dtype, n, d, k) -> None:
    x, y = clusters(n, d, k, seed=k)
    x = x.astype(dtype)
    ours = solve_cs_dual_torch(x, y, C=C, bias_scale=bias_scale, **TIGHT)
    numba = solve_cs_dual(x, y, C=C, bias_scale=bias_scale, **TIGHT)
    assert_exact(ours, x, y)
    assert_exact(numba, x, y)
    assert_same_optimum(ours, numba, x, y)
    assert (ours.bias == 0.0).all() if bias_scale == 0 else (ours.bias != 0.0).any()
    if C == 1e-5:  # every point violates the margin: all alpha_i^{y_i} at their bound C
        assert (ours.alpha[np.arange(n), y] == C).all()
    assert ours.n_support == int(np.count_nonzero(np.abs(ours.alpha).sum(axis=1)))


def test_float32_features_give_the_float64_solution() -> None:
    x, y = clusters(400, 10, 3, seed=2)
    x32 = x.astype(np.float32)
    a = solve_cs_dual_torch(x32, y, C=0.1, **TIGHT)
    b = solve_cs_dual_torch(x32.astype(np.float64), y, C=0.1, **TIGHT)
    assert_same_optimum(a, b, x32, y)


def test_dual_objective_equals_a_generic_qp_solver() -> None:
    import cvxpy as cp

    x, y = clusters(60, 5, 3, seed=3)
    C, n, k = 0.5, 60, 3
    z = np.hstack([x, np.ones((n, 1))])
    e = (np.arange(k)[None, :] != y[:, None]).astype(float)
    alpha = cp.Variable((n, k))
    objective = 0.5 * cp.sum_squares(z.T @ alpha) + cp.sum(cp.multiply(e, alpha))
    problem = cp.Problem(cp.Minimize(objective), [cp.sum(alpha, axis=1) == 0, alpha <= C * (1.0 - e)])
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    assert problem.status == cp.OPTIMAL
    sol = solve_cs_dual_torch(x, y, C=C, **TIGHT)
    ref = assert_exact(sol, x, y)
    assert abs(ref["f"] - problem.value) < 1e-6
    assert abs(-sol.dual_objective - problem.value) < 1e-6
    assert abs(sol.primal_objective + problem.value) < 1e-6  # strong duality


# =============================================================================================
# Inputs, options, determinism
# =============================================================================================
def test_tensor_and_array_inputs_give_the_same_solution() -> None:
    x, y = clusters(300, 8, 3, seed=4)
    x32 = x.astype(np.float32)
    from_array = solve_cs_dual_torch(x32, y, C=0.1)
    from_tensor = solve_cs_dual_torch(torch.from_numpy(x32), torch.from_numpy(y), C=0.1)
    assert np.array_equal(from_array.alpha, from_tensor.alpha)
    assert np.array_equal(from_array.weights, from_tensor.weights)
    assert from_tensor.alpha.dtype == from_tensor.weights.dtype == np.float64


def test_same_seed_is_bit_identical_and_any_seed_reaches_the_same_optimum() -> None:
    x, y = clusters(300, 8, 4, seed=5)
    options = {"C": 0.1, "block_size": 64, "tol": 1e-7}
    a = solve_cs_dual_torch(x, y, seed=7, **options)
    b = solve_cs_dual_torch(x, y, seed=7, **options)
    c = solve_cs_dual_torch(x, y, seed=8, **options)
    assert np.array_equal(a.alpha, b.alpha) and np.array_equal(a.weights, b.weights)
    assert not np.array_equal(a.alpha, c.alpha)  # the seed does change the visiting order
    assert_same_optimum(a, c, x, y)


@pytest.mark.parametrize(
    "options",
    [
        {"shrinking": False},
        {"block_size": 1},  # one point per step: the numba solver's step (gamma stays 1)
        {"block_size": 7},
        {"face_steps": 0},  # block steps only (slow near the optimum, hence the looser tol)
        {"face_steps": 3},
    ],
)
def test_options_reach_the_same_optimum(options) -> None:
    x, y = clusters(120, 6, 3, seed=6)
    tol = 1e-6
    ours = solve_cs_dual_torch(x, y, C=0.1, tol=tol, max_iter=100_000, **options)
    numba = solve_cs_dual(x, y, C=0.1, tol=tol, max_iter=100_000)
    assert_exact(ours, x, y)
    assert_same_optimum(ours, numba, x, y)


def test_max_iter_reached_is_reported_not_hidden(caplog: pytest.LogCaptureFixture) -> None:
    x, y = clusters(300, 8, 4, seed=6)
    sol = solve_cs_dual_torch(x, y, C=1.0, tol=1e-12, max_iter=2)
    assert not sol.converged and sol.iterations == 2 and sol.max_violation > 1e-12
    assert abs(sol.max_violation - reference(sol, x, y)["violation"]) < 1e-12
    assert "no convergence in 2 passes" in caplog.text


# =============================================================================================
# Degenerate inputs
# =============================================================================================
def test_duplicate_points_with_equal_and_different_labels() -> None:
    x, y = clusters(150, 6, 3, seed=7)
    x = np.vstack([x, x[:40], x[40:60]])
    y = np.concatenate([y, y[:40], (y[40:60] + 1) % 3])  # 40 exact copies, 20 copies relabelled
    ours = solve_cs_dual_torch(x, y, C=0.1, **TIGHT)
    numba = solve_cs_dual(x, y, C=0.1, **TIGHT)
    assert_exact(ours, x, y)
    assert_same_optimum(ours, numba, x, y)


def test_all_zero_points_are_handled_as_the_numba_solver_handles_them() -> None:
    x, y = clusters(200, 6, 3, seed=8)
    x[:5] = 0.0
    # without bias a zero point never moves W: alpha_i^{y_i} = C, the rest split evenly (numba's choice)
    ours = solve_cs_dual_torch(x, y, C=0.1, bias_scale=0.0, **TIGHT)
    numba = solve_cs_dual(x, y, C=0.1, bias_scale=0.0, **TIGHT)
    assert_exact(ours, x, y)
    assert_same_optimum(ours, numba, x, y)
    assert np.array_equal(ours.alpha[:5], numba.alpha[:5])
    assert (ours.alpha[np.arange(5), y[:5]] == 0.1).all()
    # with the bias feature they are ordinary points
    with_bias = solve_cs_dual_torch(x, y, C=0.1, **TIGHT)
    assert_exact(with_bias, x, y)
    assert_same_optimum(with_bias, solve_cs_dual(x, y, C=0.1, **TIGHT), x, y)


def test_points_of_tiny_norm_keep_their_rows_summing_to_zero() -> None:
    """Without bias, ``(beta - B_m) / A`` carries a rounding error of ``eps |B_m| / A``: for a point of
    norm 1e-5 it is far above the feasibility check's ``4 k eps C`` unless it is put back on a class."""
    x, y = clusters(200, 6, 3, seed=8)
    x[:20] *= 1e-5
    ours = solve_cs_dual_torch(x, y, C=0.1, bias_scale=0.0, **TIGHT)
    assert_exact(ours, x, y)
    assert_same_optimum(ours, solve_cs_dual(x, y, C=0.1, bias_scale=0.0, **TIGHT), x, y)


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "error", "match"),
    [
        (np.ones((4, 2)), np.array([0, 1, 0, 1]), {"C": 0.0}, ValueError, "C must be a finite number > 0"),
        (np.ones((4, 2)), np.array([0, 1, 0, 1]), {"C": float("nan")}, ValueError, "C must be"),
        (np.ones((4, 2)), np.array([0, 1, 0, 5]), {"C": 1.0, "num_classes": 3}, DataError, r"lie in 0\.\.2"),
        (np.ones((4, 2)), np.array([0, -1, 0, 1]), {"C": 1.0}, DataError, "consecutive integers"),
        (np.ones((4, 2)), np.array([1, 1, 1, 1]), {"C": 1.0}, DataError, "at least two classes"),
        (np.ones((0, 2)), np.array([], dtype=int), {"C": 1.0}, DataError, "training set is empty"),
        (np.array([[1.0, np.nan], [0, 1]]), np.array([0, 1]), {"C": 1.0}, DataError, "NaN or inf in 1 row"),
        (torch.tensor([[1.0, 0], [0, np.inf]]), torch.tensor([0, 1]), {"C": 1.0}, DataError, "NaN or inf"),
        (np.ones((4, 2)), np.array([0, 1, 0]), {"C": 1.0}, DataError, "labels must have shape"),
        (np.ones(4), np.array([0, 1, 0, 1]), {"C": 1.0}, DataError, "2-D"),
        (torch.ones(4, 2, 2), torch.tensor([0, 1, 0, 1]), {"C": 1.0}, DataError, "2-D"),
        (np.ones((4, 2)), np.array([0.5, 1, 0, 1]), {"C": 1.0}, DataError, "integers"),
        (np.ones((4, 2)), np.array([0, 1, 0, 1]), {"C": 1.0, "tol": 0.0}, ValueError, "tol must be > 0"),
        (np.ones((4, 2)), np.array([0, 1, 0, 1]), {"C": 1.0, "max_iter": 0}, ValueError, "max_iter"),
        (np.ones((4, 2)), np.array([0, 1, 0, 1]), {"C": 1.0, "block_size": 0}, ValueError, "block_size"),
        (np.ones((4, 2)), np.array([0, 1, 0, 1]), {"C": 1.0, "face_steps": -1}, ValueError, "face_steps"),
    ],
)
def test_bad_input_is_a_clear_error(x, y, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        solve_cs_dual_torch(x, y, **kwargs)


# =============================================================================================
# DualDA picks the solver
# =============================================================================================
def test_solver_follows_the_device_unless_the_environment_forces_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SOLVER_ENV, raising=False)
    assert cs_solver(torch.device("cpu")) == "numba"
    assert cs_solver(torch.device("cuda", 0)) == "torch"  # a device object needs no GPU
    monkeypatch.setenv(SOLVER_ENV, "torch")
    assert cs_solver(torch.device("cpu")) == "torch"
    monkeypatch.setenv(SOLVER_ENV, " Numba ")
    assert cs_solver(torch.device("cuda", 0)) == "numba"
    monkeypatch.setenv(SOLVER_ENV, "auto")
    assert cs_solver(torch.device("cpu")) == "numba"
    monkeypatch.setenv(SOLVER_ENV, "cuda")
    with pytest.raises(ConfigError, match="DABENCH_CS_SOLVER must be one of auto, numba, torch"):
        cs_solver(torch.device("cpu"))


def test_warm_up_prepares_only_the_solver_that_will_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import methods.cs_dual as cs_dual
    import methods.cs_dual_torch as cs_dual_torch

    calls: list[str] = []
    monkeypatch.setattr(cs_dual, "compile_kernels", lambda: calls.append("numba"))
    monkeypatch.setattr(cs_dual_torch, "prepare", lambda device: calls.append(f"torch:{device}"))
    monkeypatch.setenv(SOLVER_ENV, "torch")
    DualDA().warm_up(torch.device("cpu"))
    monkeypatch.delenv(SOLVER_ENV)
    DualDA().warm_up(torch.device("cpu"))
    assert calls == ["torch:cpu", "numba"]


def test_the_real_torch_warm_up_runs() -> None:
    from methods.cs_dual_torch import prepare

    prepare(torch.device("cpu"))


def _fitted(model, train, cache: Cache, monkeypatch: pytest.MonkeyPatch, solver: str, **config) -> DualDA:
    monkeypatch.setenv(SOLVER_ENV, solver)
    method = DualDA(DualDAConfig(**config))
    method.fit(model, train, cache=cache)
    return method


def test_dualda_with_the_torch_solver_explains_as_with_numba(
    toy_setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, data, model = toy_setup
    config = {"C": 0.1, "tol": 1e-9}
    numba = _fitted(model, data.train, Cache(tmp_path / "a"), monkeypatch, "numba", **config)
    ours = _fitted(model, data.train, Cache(tmp_path / "b"), monkeypatch, "torch", **config)
    assert not numba.from_cache_ and not ours.from_cache_
    assert numba.diagnostics()["solver"] == "numba" and ours.diagnostics()["solver"] == "torch"
    assert ours.diagnostics()["converged"] and ours.diagnostics()["max_kkt_violation"] < 1e-9
    # alpha is unique on this problem (48 points, 17 dimensions): the explanations agree, not only W
    assert torch.equal(numba.support_.cpu(), ours.support_.cpu())
    assert torch.allclose(ours.alpha_, numba.alpha_, rtol=0, atol=1e-5 * config["C"])
    with torch.no_grad():
        targets = model(data.test.materialise()).argmax(dim=1)
    expected = numba.explain(data.test.materialise(), targets)
    got = ours.explain(data.test.materialise(), targets)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
    assert torch.allclose(ours.self_influence(), numba.self_influence(), rtol=1e-4, atol=1e-7)


def test_solver_choice_changes_no_cache_key_or_config(
    toy_setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry solved by numba is a hit for the torch solver: the choice is not part of the identity."""
    _, data, model = toy_setup
    cache = Cache(tmp_path)
    numba = _fitted(model, data.train, cache, monkeypatch, "numba", C=0.1)
    ours = _fitted(model, data.train, cache, monkeypatch, "torch", C=0.1)
    assert not numba.from_cache_ and ours.from_cache_
    assert ours.diagnostics()["solver"] == "numba"  # the solver that computed the cached alpha
    assert numba.cache_key(model, data.train) == ours.cache_key(model, data.train)
    assert "solver" not in DualDAConfig().to_dict()


# =============================================================================================
# GPU
# =============================================================================================
@pytest.mark.gpu
def test_cuda_solution_equals_the_cpu_solutions() -> None:
    x, y = clusters(2000, 32, 10, seed=9)
    x32 = x.astype(np.float32)
    on_gpu = solve_cs_dual_torch(torch.from_numpy(x32).cuda(), torch.from_numpy(y).cuda(), C=0.1, **TIGHT)
    on_cpu = solve_cs_dual_torch(x32, y, C=0.1, **TIGHT)
    numba = solve_cs_dual(x32, y, C=0.1, **TIGHT)
    assert_exact(on_gpu, x32, y)
    assert_same_optimum(on_gpu, on_cpu, x32, y)
    assert_same_optimum(on_gpu, numba, x32, y)

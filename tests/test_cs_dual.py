"""Exactness of DualDA's Crammer–Singer dual solver (methods/cs_dual.py), in float64.

Independent references: scikit-learn's LinearSVC(multi_class="crammer_singer") for the primal
weights (unique at the optimum), and cvxpy's interior-point solver for the dual objective.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.protocols import DataError, feature_split
from methods.cs_dual import CSDualSolution, solve_cs_dual

TIGHT = {"tol": 1e-9, "max_iter": 1_000_000}


def clusters(n: int, d: int, k: int, seed: int = 0, spread: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Post-ReLU Gaussian class clusters that overlap (like penultimate features)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centers = rng.normal(size=(k, d))
    x = np.maximum(centers[y] + spread * rng.normal(size=(n, d)), 0.0)
    return x, y


def sklearn_cs(x: np.ndarray, y: np.ndarray, C: float, fit_intercept: bool = True):
    from sklearn.svm import LinearSVC

    clf = LinearSVC(
        multi_class="crammer_singer", C=C, tol=1e-10, max_iter=1_000_000, fit_intercept=fit_intercept
    )
    return clf.fit(x, y)


def assert_matches_sklearn(sol: CSDualSolution, clf, rel: float = 1e-4) -> None:
    scale = np.abs(clf.coef_).max()
    w_err = np.abs(sol.weights - clf.coef_).max() / scale
    b_err = np.abs(sol.bias - clf.intercept_).max() / scale
    assert w_err < rel, f"weights differ from LinearSVC by {w_err:.2e} (relative)"
    assert b_err < rel, f"bias differs from LinearSVC by {b_err:.2e} (relative to max |w|)"


def assert_feasible(sol: CSDualSolution, y: np.ndarray) -> None:
    alpha, C = sol.alpha, sol.C
    n, k = alpha.shape
    own = alpha[np.arange(n), y]
    others = np.where(np.arange(k)[None, :] == y[:, None], 0.0, alpha)
    assert own.min() >= 0.0 and own.max() <= C, "alpha_i^{y_i} must lie in [0, C]"
    assert others.max() <= 0.0, "alpha_i^m for m != y_i must be <= 0"
    # The bounds hold exactly; a row sum is 0 up to the rounding of adding k numbers of size <= C.
    assert np.abs(alpha.sum(axis=1)).max() <= 4 * k * np.finfo(np.float64).eps * C


def weights_from_alpha(sol: CSDualSolution, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return sol.alpha.T @ x, sol.alpha.sum(axis=0) * sol.bias_scale**2


# =============================================================================================
# Against scikit-learn
# =============================================================================================
@pytest.mark.parametrize("C", [1e-3, 1e-1, 1.0])
def test_matches_sklearn_on_synthetic_clusters(C: float) -> None:
    x, y = clusters(600, 12, 4)
    sol = solve_cs_dual(x, y, C=C, **TIGHT)
    assert sol.converged and sol.max_violation < 1e-7
    assert_matches_sklearn(sol, sklearn_cs(x, y, C))
    assert_feasible(sol, y)
    w, b = weights_from_alpha(sol, x)
    np.testing.assert_allclose(w, sol.weights, rtol=0, atol=1e-10 * max(1.0, np.abs(w).max()))
    np.testing.assert_allclose(b, sol.bias, rtol=0, atol=1e-10 * max(1.0, np.abs(b).max()))
    assert sol.duality_gap >= -1e-9 and sol.duality_gap < 1e-6 * max(1.0, abs(sol.primal_objective))


@pytest.mark.parametrize("C", [1e-5, 1e-3, 1e-1])
def test_matches_sklearn_on_real_mnist_features(mnist_small_setup, C: float) -> None:
    _, data, model = mnist_small_setup
    features, _ = feature_split(model)
    with torch.no_grad():
        phi = features(data.train.materialise()).double().numpy()
    y = data.train.y.numpy()
    sol = solve_cs_dual(phi, y, C=C, **TIGHT)
    assert sol.converged
    assert_matches_sklearn(sol, sklearn_cs(phi, y, C))
    assert_feasible(sol, y)


def test_matches_sklearn_without_bias() -> None:
    x, y = clusters(400, 10, 3, seed=1)
    sol = solve_cs_dual(x, y, C=0.1, bias_scale=0.0, **TIGHT)
    assert np.all(sol.bias == 0.0)
    clf = sklearn_cs(x, y, 0.1, fit_intercept=False)
    scale = np.abs(clf.coef_).max()
    assert np.abs(sol.weights - clf.coef_).max() / scale < 1e-4


def test_float32_features_give_the_float64_solution() -> None:
    x, y = clusters(500, 10, 3, seed=2)
    x32 = x.astype(np.float32)
    a = solve_cs_dual(x32, y, C=0.1, **TIGHT)
    b = solve_cs_dual(x32.astype(np.float64), y, C=0.1, **TIGHT)
    np.testing.assert_allclose(a.weights, b.weights, rtol=0, atol=1e-6 * np.abs(b.weights).max())


# =============================================================================================
# Against a generic QP solver
# =============================================================================================
def test_dual_objective_equals_a_generic_qp_solver() -> None:
    import cvxpy as cp

    x, y = clusters(60, 5, 3, seed=3)
    C = 0.5
    n, k = 60, 3
    z = np.hstack([x, np.ones((n, 1))])
    e = (np.arange(k)[None, :] != y[:, None]).astype(float)
    upper = C * (1.0 - e)
    alpha = cp.Variable((n, k))
    objective = 0.5 * cp.sum_squares(z.T @ alpha) + cp.sum(cp.multiply(e, alpha))
    problem = cp.Problem(cp.Minimize(objective), [cp.sum(alpha, axis=1) == 0, alpha <= upper])
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    assert problem.status == cp.OPTIMAL
    sol = solve_cs_dual(x, y, C=C, **TIGHT)
    ours = 0.5 * np.sum((z.T @ sol.alpha) ** 2) + np.sum(e * sol.alpha)
    assert abs(ours - problem.value) < 1e-6
    assert abs(-sol.dual_objective - problem.value) < 1e-6  # the solver's own report agrees
    assert abs(sol.primal_objective - problem.value * -1) < 1e-6  # strong duality


# =============================================================================================
# Options and determinism
# =============================================================================================
def test_same_seed_is_bit_identical_and_any_seed_reaches_the_same_optimum() -> None:
    x, y = clusters(500, 8, 4, seed=4)
    a = solve_cs_dual(x, y, C=0.1, seed=7, **TIGHT)
    b = solve_cs_dual(x, y, C=0.1, seed=7, **TIGHT)
    c = solve_cs_dual(x, y, C=0.1, seed=8, **TIGHT)
    assert np.array_equal(a.alpha, b.alpha) and np.array_equal(a.weights, b.weights)
    assert not np.array_equal(a.alpha, c.alpha)  # the seed does change the visiting order
    np.testing.assert_allclose(a.weights, c.weights, rtol=0, atol=1e-5 * np.abs(a.weights).max())


def test_shrinking_off_reaches_the_same_optimum() -> None:
    x, y = clusters(500, 8, 4, seed=5)
    on = solve_cs_dual(x, y, C=0.1, shrinking=True, **TIGHT)
    off = solve_cs_dual(x, y, C=0.1, shrinking=False, **TIGHT)
    assert on.converged and off.converged
    np.testing.assert_allclose(on.weights, off.weights, rtol=0, atol=1e-5 * np.abs(on.weights).max())
    assert abs(on.primal_objective - off.primal_objective) < 1e-7 * on.primal_objective


def test_max_iter_reached_is_reported_not_hidden(caplog: pytest.LogCaptureFixture) -> None:
    x, y = clusters(500, 8, 4, seed=6)
    sol = solve_cs_dual(x, y, C=1.0, tol=1e-12, max_iter=2)
    assert not sol.converged and sol.iterations == 2 and sol.max_violation > 1e-12
    assert "no convergence in 2 passes" in caplog.text


def test_all_zero_points_without_bias_are_handled() -> None:
    x, y = clusters(200, 6, 3, seed=7)
    x[:5] = 0.0
    sol = solve_cs_dual(x, y, C=0.1, bias_scale=0.0, **TIGHT)
    assert sol.converged and sol.max_violation < 1e-7
    assert_feasible(sol, y)
    clf = sklearn_cs(x, y, 0.1, fit_intercept=False)
    assert np.abs(sol.weights - clf.coef_).max() / np.abs(clf.coef_).max() < 1e-4


def test_support_vectors_are_a_minority_at_large_c() -> None:
    x, y = clusters(2000, 10, 4, seed=8, spread=0.5)
    sol = solve_cs_dual(x, y, C=0.1, **TIGHT)
    assert sol.n_support == int(np.count_nonzero(np.abs(sol.alpha).sum(axis=1)))
    assert 0 < sol.n_support < 0.5 * len(y)  # well-separated clusters: most points get alpha = 0


# =============================================================================================
# Bad input
# =============================================================================================
@pytest.mark.parametrize(
    ("x", "y", "kwargs", "error", "match"),
    [
        (np.ones((4, 2)), np.array([0, 1, 0, 1]), {"C": 0.0}, ValueError, "C must be a finite number > 0"),
        (np.ones((4, 2)), np.array([0, 1, 0, 1]), {"C": -1.0}, ValueError, "C must be"),
        (np.ones((4, 2)), np.array([0, 1, 0, 1]), {"C": float("nan")}, ValueError, "C must be"),
        (np.ones((4, 2)), np.array([0, 1, 0, 5]), {"C": 1.0, "num_classes": 3}, DataError, r"lie in 0\.\.2"),
        (np.ones((4, 2)), np.array([0, -1, 0, 1]), {"C": 1.0}, DataError, "consecutive integers"),
        (np.ones((4, 2)), np.array([1, 1, 1, 1]), {"C": 1.0}, DataError, "at least two classes"),
        (np.ones((0, 2)), np.array([], dtype=int), {"C": 1.0}, DataError, "training set is empty"),
        (np.array([[1.0, np.nan], [0, 1]]), np.array([0, 1]), {"C": 1.0}, DataError, "NaN or inf in 1 row"),
        (np.array([[1.0, np.inf], [0, 1]]), np.array([0, 1]), {"C": 1.0}, DataError, "NaN or inf"),
        (np.ones((4, 2)), np.array([0, 1, 0]), {"C": 1.0}, DataError, "labels must have shape"),
        (np.ones(4), np.array([0, 1, 0, 1]), {"C": 1.0}, DataError, "2-D"),
        (np.ones((4, 2)), np.array([0.5, 1, 0, 1]), {"C": 1.0}, DataError, "integers"),
        (np.ones((4, 2)), np.array([0, 1, 0, 1]), {"C": 1.0, "tol": 0.0}, ValueError, "tol must be > 0"),
        (np.ones((4, 2)), np.array([0, 1, 0, 1]), {"C": 1.0, "max_iter": 0}, ValueError, "max_iter"),
    ],
)
def test_bad_input_is_a_clear_error(x, y, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        solve_cs_dual(x, y, **kwargs)


def test_compile_kernels_compiles_the_solver_for_both_feature_dtypes() -> None:
    """DualDA's warm-up: after it, the solver's kernels exist for float32 and float64 features, so
    the first real solve in a process compiles nothing inside the timed fit."""
    from methods import cs_dual

    cs_dual.compile_kernels()
    dtypes = {str(signature[0].dtype) for signature in cs_dual._sdm.signatures}
    assert {"float32", "float64"} <= dtypes
    checked = {str(signature[0].dtype) for signature in cs_dual._max_violation.signatures}
    assert {"float32", "float64"} <= checked

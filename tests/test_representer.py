"""The `representer` method (Yeh et al. 2018): representer theorem, optimum, formulas, cache, bad input.

References are computed here independently in float64 from the model's features and outputs: the
targets ``T`` (``softmax(model(x))``, or one-hot labels), the gradient and
``alpha = (softmax(phi W^T) - T) / (-2 lam N)`` from their closed forms, and the surrogate's optimum
by other solvers (SciPy's L-BFGS-B on a NumPy objective with the soft targets, on the toy task and on
MNIST features; scikit-learn's multinomial logistic regression for the one-hot option).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from harness.cache import Cache
from harness.config import ConfigError
from harness.protocols import CapabilityError, DataError, NotFittedError, Split, feature_split
from methods.representer import RepresenterConfig, RepresenterPoints

LAM = 3e-3


def _phi(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    features, _ = feature_split(model)
    with torch.no_grad():
        return features(x).flatten(start_dim=1).double().cpu()


def _fit(model: nn.Module, train: Split, tmp_path: Path, **config) -> RepresenterPoints:
    method = RepresenterPoints(RepresenterConfig(**config))
    method.fit(model, train, cache=Cache(tmp_path))
    return method


def _targets(model: nn.Module, train: Split, kind: str = "model") -> torch.Tensor:
    """``(N, k)`` float64 targets: the model's own softmax outputs (the full forward pass), or one-hot."""
    with torch.no_grad():
        logits = model(train.materialise()).double().cpu()
    if kind == "labels":
        return torch.nn.functional.one_hot(train.y, logits.shape[1]).double()
    return torch.softmax(logits, dim=1)


def _alpha(phi: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, lam: float) -> torch.Tensor:
    """``(N, k)`` alpha from its closed form, float64."""
    probs = torch.softmax(phi @ weights.T, dim=1)
    return (probs - targets) / (-2 * lam * len(targets))


def _gradient(phi: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, lam: float) -> torch.Tensor:
    """``(k, d)`` gradient of ``mean_i CE(W phi_i, T_i) + lam ||W||^2``, float64."""
    probs = torch.softmax(phi @ weights.T, dim=1)
    return (probs - targets).T @ phi / len(targets) + 2 * lam * weights


def _predicted(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


@pytest.fixture(scope="module")
def toy_fitted(toy_setup, tmp_path_factory):
    _, data, model = toy_setup
    method = _fit(model, data.train, tmp_path_factory.mktemp("representer-toy"), lam=LAM)
    return data, model, method


@pytest.fixture(scope="module")
def toy_labels_fitted(toy_setup, tmp_path_factory):
    _, data, model = toy_setup
    folder = tmp_path_factory.mktemp("representer-toy-labels")
    method = _fit(model, data.train, folder, lam=LAM, targets="labels")
    return data, model, method


@pytest.fixture(scope="module")
def mnist_fitted(mnist_small_setup, tmp_path_factory):
    _, data, model = mnist_small_setup
    method = _fit(model, data.train, tmp_path_factory.mktemp("representer-mnist"), lam=LAM)
    return data, model, method


@pytest.fixture(params=["toy", "mnist", "toy_labels"])
def fitted(request):
    return request.getfixturevalue(f"{request.param}_fitted")


def test_contract_and_presets() -> None:
    assert RepresenterPoints.supports == {"cache", "self_influence", "feature_decomposition"}
    assert RepresenterPoints.attributes_through.startswith("last layer")
    assert RepresenterPoints.self_influence_definition
    assert "training label" in RepresenterPoints.self_influence_definition
    paper = RepresenterConfig.paper()
    assert (paper.lam, paper.epochs, paper.targets) == (3e-3, 3000, "model")
    assert RepresenterConfig.quick() == paper
    assert RepresenterConfig.from_dict({"lam": "1e-2"}).lam == 1e-2
    assert RepresenterConfig.from_dict({"targets": "labels"}).targets == "labels"


# ----- (1) representer theorem --------------------------------------------------------------
def test_attributions_sum_to_the_surrogate_logit(fitted) -> None:
    data, model, method = fitted
    assert method.diagnostics()["converged"]
    phi = _phi(model, data.test.materialise())
    targets = _predicted(model, data.test.materialise())
    scores = method.explain_features(phi, targets)  # float64 path
    assert scores.dtype == torch.float64
    logits = (phi @ method.weights_.T).gather(1, targets[:, None].cpu()).squeeze(1)
    scale = logits.abs().max()
    assert (scores.sum(dim=1).cpu() - logits).abs().max() <= 1e-6 * scale
    # and W itself is the representer sum over the training points
    phi_train = _phi(model, data.train.materialise())
    representer_w = method.alpha_.T @ phi_train
    assert (representer_w - method.weights_).norm() <= 1e-6 * method.weights_.norm()
    assert method.diagnostics()["representer_residual"] <= 1e-6
    # the float32 explain agrees at float32 precision
    float_sums = method.explain(data.test.materialise(), targets).double().sum(dim=1).cpu()
    assert (float_sums - logits).abs().max() <= 1e-3 * scale


def test_short_refit_is_flagged_and_breaks_the_theorem(mnist_small_setup, tmp_path: Path) -> None:
    _, data, model = mnist_small_setup
    method = _fit(model, data.train, tmp_path, lam=LAM, epochs=5)
    diag = method.diagnostics()
    assert diag["epochs_run"] == 5 and not diag["converged"] and diag["grad_norm"] > 1e-10
    assert diag["representer_residual"] > 1e-6


# ----- (2) stationary point, matching independent solvers -----------------------------------
def test_surrogate_is_a_stationary_point(fitted) -> None:
    data, model, method = fitted
    phi = _phi(model, data.train.materialise())
    grad = _gradient(phi, _targets(model, data.train, method.config.targets), method.weights_, LAM)
    diag = method.diagnostics()
    assert diag["targets"] == method.config.targets
    assert grad.norm() <= 1e-9 and diag["grad_norm"] <= method.config.tol
    assert 0 < diag["epochs_run"] < method.config.epochs
    assert diag["objective"] <= diag["initial_objective"]
    for key in ("argmax_agreement", "logit_correlation", "weight_cosine", "line_search_trials"):
        assert key in diag, key
    assert 0.5 < diag["argmax_agreement"] <= 1.0 and diag["logit_correlation"] > 0.5


def test_toy_label_surrogate_matches_sklearn(toy_labels_fitted) -> None:
    from sklearn.linear_model import LogisticRegression

    data, model, method = toy_labels_fitted
    phi, labels = _phi(model, data.train.materialise()).numpy(), data.train.y.numpy()
    n = len(labels)
    # sklearn: C sum_i CE + 1/2 ||W||^2  ==  C N [ mean_i CE + 1/(2 C N) ||W||^2 ]
    reference = LogisticRegression(C=1 / (2 * LAM * n), fit_intercept=False, tol=1e-12, max_iter=10_000)
    reference.fit(phi, labels)
    w, ref = method.weights_.numpy(), reference.coef_
    assert ref.shape == w.shape
    assert np.linalg.norm(w - ref) <= 1e-4 * np.linalg.norm(ref)


@pytest.mark.parametrize("name", ["toy", "mnist"])
def test_surrogate_on_the_models_outputs_matches_lbfgs(request, name: str) -> None:
    """The paper's refit: soft targets softmax(model(x_i)), solved independently by L-BFGS-B."""
    from scipy.optimize import minimize
    from scipy.special import logsumexp, softmax

    data, model, method = request.getfixturevalue(f"{name}_fitted")
    assert method.config.targets == "model"
    phi = _phi(model, data.train.materialise()).numpy()
    targets = _targets(model, data.train).numpy()
    n, k, d = len(targets), *method.weights_.shape
    assert np.abs(targets - np.eye(k)[data.train.y.numpy()]).max() > 1e-3  # soft, not one-hot

    def objective(flat: np.ndarray) -> tuple[float, np.ndarray]:
        w = flat.reshape(k, d)
        z = phi @ w.T
        value = np.mean(logsumexp(z, axis=1) - np.sum(targets * z, axis=1)) + LAM * np.sum(w * w)
        grad = (softmax(z, axis=1) - targets).T @ phi / n + 2 * LAM * w
        return value, grad.ravel()

    result = minimize(
        objective,
        np.zeros(k * d),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 20_000, "maxcor": 30, "gtol": 1e-11, "ftol": 0.0},
    )
    ref = result.x.reshape(k, d)
    assert np.linalg.norm(objective(result.x)[1]) < 1e-7  # the reference itself converged
    w = method.weights_.numpy()
    assert np.linalg.norm(w - ref) <= 1e-4 * np.linalg.norm(ref)
    # and the one-hot fit is another surrogate (1.2% off on MNIST, whose model is confident; 22% on the toy)
    labels_fit = _fit(model, data.train, request.getfixturevalue("tmp_path"), lam=LAM, targets="labels")
    assert np.linalg.norm(labels_fit.weights_.numpy() - ref) > 2e-3 * np.linalg.norm(ref)


# ----- (3) attributions ---------------------------------------------------------------------
def test_explain_equals_the_direct_float64_formula(fitted) -> None:
    data, model, method = fitted
    phi_train = _phi(model, data.train.materialise())
    alpha = _alpha(phi_train, _targets(model, data.train, method.config.targets), method.weights_, LAM)
    assert torch.allclose(method.alpha_, alpha, rtol=1e-10, atol=1e-14)
    targets = _predicted(model, data.test.materialise())
    scores = method.explain(data.test.materialise(), targets)
    assert scores.dtype == torch.float32 and scores.shape == (len(data.test), len(data.train))
    assert scores.device == next(model.parameters()).device and torch.isfinite(scores).all()
    reference = alpha.T[targets.cpu()] * (_phi(model, data.test.materialise()) @ phi_train.T)
    assert (scores.double().cpu() - reference).abs().max() <= 1e-5 * reference.abs().max()
    other = (targets + 1) % method.weights_.shape[0]  # a different target class gives other scores
    assert not torch.allclose(method.explain(data.test.materialise(), other), scores)


# ----- (4) self-influence -------------------------------------------------------------------
def test_self_influence_is_the_self_attribution(fitted) -> None:
    data, model, method = fitted
    phi = _phi(model, data.train.materialise())
    n, rows = len(data.train), torch.arange(len(data.train))
    own_prob = torch.softmax(phi @ method.weights_.T, dim=1)[rows, data.train.y]
    own_target = _targets(model, data.train, method.config.targets)[rows, data.train.y]
    expected = (own_target - own_prob) * (phi**2).sum(dim=1) / (2 * LAM * n)
    scores = method.self_influence()
    assert scores.shape == (n,) and scores.dtype == torch.float32
    tol = 1e-5 * float(expected.abs().max())
    assert torch.allclose(scores.double(), expected, rtol=1e-5, atol=tol)
    if method.config.targets == "labels":  # (1 - p_i) ||phi_i||^2 / (2 lam N)
        assert (scores >= 0).all()
    m = min(n, 40)
    self_attr = method.explain(data.train.inputs[:m], data.train.y[:m]).double().cpu()
    diag = self_attr[torch.arange(m), torch.arange(m)]
    assert torch.allclose(diag, scores[:m].double(), rtol=1e-4, atol=1e-9)


# ----- (5) cache ----------------------------------------------------------------------------
def test_cache_hit_is_identical_and_keyed_by_config(toy_setup, tmp_path: Path) -> None:
    _, data, model = toy_setup
    cache = Cache(tmp_path)
    targets = _predicted(model, data.test.materialise())
    first = RepresenterPoints(RepresenterConfig(lam=LAM))
    first.fit(model, data.train, cache=cache)
    assert (cache.stats.hits, cache.stats.misses) == (0, 1)
    second = RepresenterPoints(RepresenterConfig(lam=LAM))
    second.fit(model, data.train, cache=cache)
    assert (cache.stats.hits, cache.stats.misses) == (1, 1)
    assert torch.equal(
        first.explain(data.test.materialise(), targets), second.explain(data.test.materialise(), targets)
    )
    assert torch.equal(first.self_influence(), second.self_influence())
    assert first.diagnostics() == second.diagnostics()
    RepresenterPoints(RepresenterConfig(lam=1e-2)).fit(model, data.train, cache=cache)
    RepresenterPoints(RepresenterConfig(lam=LAM, epochs=10)).fit(model, data.train, cache=cache)
    RepresenterPoints(RepresenterConfig(lam=LAM, targets="labels")).fit(model, data.train, cache=cache)
    assert cache.stats.misses == 4
    other_train = Split("train", data.train.inputs[:-1], data.train.y[:-1])
    RepresenterPoints(RepresenterConfig(lam=LAM)).fit(model, other_train, cache=cache)
    assert cache.stats.misses == 5


# ----- (6) bad input ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"lam": 0.0}, "lam must be a finite number > 0"),
        ({"lam": -3e-3}, "lam must be"),
        ({"lam": float("nan")}, "lam must be"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"epochs": 2.5}, "epochs must be a positive integer"),
        ({"tol": -1.0}, "tol must be"),
        ({"batch_size": 0}, "batch_size"),
        ({"targets": "onehot"}, r"targets must be one of \['model', 'labels'\]"),
    ],
)
def test_bad_config_is_a_clear_error(values: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RepresenterConfig(**values)


def test_unknown_config_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown config key"):
        RepresenterConfig.from_dict({"lambda": 1e-3})


def test_bad_input_is_a_clear_error(toy_fitted, tmp_path: Path) -> None:
    data, model, method = toy_fitted
    fresh = RepresenterPoints()
    with pytest.raises(NotFittedError):
        fresh.explain(data.test.materialise(), torch.zeros(len(data.test), dtype=torch.long))
    with pytest.raises(NotFittedError):
        fresh.self_influence()
    with pytest.raises(CapabilityError, match="features`/`classifier` split"):
        fresh.fit(nn.Sequential(nn.Linear(8, 3)), data.train, cache=Cache(tmp_path))
    with pytest.raises(DataError, match="training set is empty"):
        fresh.fit(model, Split("train", data.train.inputs[:0], data.train.y[:0]), cache=Cache(tmp_path))
    with pytest.raises(DataError, match="labels must lie in 0..2"):
        fresh.fit(model, Split("train", data.train.materialise(), data.train.y + 5), cache=Cache(tmp_path))
    bad_x = data.train.materialise().clone()
    bad_x[3] = float("nan")
    with pytest.raises(DataError, match="NaN or inf"):
        fresh.fit(model, Split("train", bad_x, data.train.y), cache=Cache(tmp_path))
    with pytest.raises(DataError, match="targets must be classes in 0..2"):
        method.explain(data.test.materialise(), torch.full((len(data.test),), 7))
    with pytest.raises(DataError, match="targets must be classes"):
        method.explain(data.test.materialise(), torch.full((len(data.test),), -1))
    with pytest.raises(DataError, match="targets"):
        method.explain(data.test.materialise(), torch.zeros(3, dtype=torch.long))

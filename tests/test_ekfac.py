"""EK-FAC through kronfluence (methods/ekfac.py) against independent float64 references.

References: the closed-form EK-FAC/KFAC/diagonal preconditioner of a single linear layer built here
from exact per-sample gradients (``_closed_form``), the exact damped Hessian of
tests/convex_reference.py, and plain per-sample gradient dot products (identity strategy).

Measured on convex_problem() (80 training points, 5 features, 3 classes, l2 = damping = 1e-2), per
test point Spearman against the exact damped Hessian (exact_attributions), min / mean over 12 points:
kronfluence EK-FAC with the paper's true Fisher (1 label draw) 0.37 / 0.62, with 64 draws 0.30 / 0.63,
empirical Fisher 0.30 / 0.59, identity (gradient dot products) 0.13 / 0.51; the closed-form EK-FAC of
the EXPECTED Fisher gives 0.33 / 0.65 (KFAC 0.54 / 0.72). So the 0.95 target against the exact
Hessian is out of reach for EK-FAC itself: the Kronecker factorisation of E[a a^T (x) S] is the limit,
not kronfluence. Exactness is therefore asserted against the closed-form EK-FAC/KFAC/diagonal (to the
float32 output's precision; true Fisher with 64 draws: Spearman min 0.98 against its expectation), and
the exact Hessian checks the sign, the 1/N scale and that EK-FAC ranks better than no curvature.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from convex_reference import ConvexProblem, convex_problem, exact_attributions, per_sample_grads
from scipy.stats import spearmanr

from harness.cache import FILES, Cache
from harness.config import ConfigError
from harness.measures import model_fingerprint
from harness.protocols import DataError, NotFittedError
from methods.ekfac import EKFAC, EKFACConfig

log = logging.getLogger(__name__)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # kronfluence's GradScaler notice


@pytest.fixture(scope="module", autouse=True)
def _frozen_heap() -> Iterator[None]:
    """kronfluence calls gc.collect() around every stage; freezing the test process' existing heap
    keeps each collection from walking all of pytest's, torch's and scipy's objects (about 0.3 s each)."""
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="module")
def problem() -> ConvexProblem:
    return convex_problem()


@pytest.fixture(scope="module")
def true_fisher_scores(
    problem: ConvexProblem, targets: torch.Tensor, tmp_path_factory: pytest.TempPathFactory
) -> torch.Tensor:
    """``(n_test, n_train)`` float64: EK-FAC with the true Fisher, 64 label draws per training point."""
    method = _fit(problem, tmp_path_factory.mktemp("true-fisher"), fisher_samples=64, factor_batch_size=1024)
    return method.explain(problem.test.materialise(), targets).double()


@pytest.fixture(scope="module")
def identity_scores(
    problem: ConvexProblem, targets: torch.Tensor, tmp_path_factory: pytest.TempPathFactory
) -> torch.Tensor:
    """``(n_test, n_train)`` float64 scores of the identity strategy (no curvature)."""
    method = _fit(problem, tmp_path_factory.mktemp("identity"), strategy="identity")
    return method.explain(problem.test.materialise(), targets).double()


@pytest.fixture(scope="module")
def targets(problem: ConvexProblem) -> torch.Tensor:
    with torch.no_grad():
        return problem.model(problem.test.materialise()).argmax(dim=1)


def _fit(problem: ConvexProblem, tmp_path: Path, **options: object) -> EKFAC:
    method = EKFAC(EKFACConfig(damping=problem.l2, **options))
    method.fit(problem.model, problem.train, cache=Cache(tmp_path))
    return method


def _spearman(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    return [float(spearmanr(a[j].numpy(), b[j].numpy()).statistic) for j in range(a.shape[0])]


def _closed_form(
    problem: ConvexProblem, x: torch.Tensor, targets: torch.Tensor, damping: float, strategy: str, fisher: str
) -> torch.Tensor:
    """``(n_test, n_train)`` float64 ``g^T (G + damping I)^{-1} g_i / N`` with G fitted by hand.

    The layer's per-sample gradient is ``s a^T``: ``a = [x, 1]`` the activation, ``s = p - e_y`` the
    logit gradient. ``A = E[a a^T]``; ``S = E[s s^T]`` (empirical Fisher: training labels) or
    ``E[diag(p) - p p^T]`` (true Fisher, expectation over the model's labels). KFAC eigenvalues are
    ``eig(S) x eig(A)``; EK-FAC refits them as ``E[(Q_S^T s a^T Q_A)^2]``; diagonal uses
    ``E[(s a^T)^2]`` per parameter.
    """
    weight = problem.model.classifier.weight.detach()
    bias = problem.model.classifier.bias.detach()
    xt, yt = problem.train.materialise(), problem.train.y
    n, k = len(yt), weight.shape[0]

    def parts(xx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        act = torch.cat([xx, torch.ones(len(xx), 1, dtype=xx.dtype)], dim=1)
        return act, torch.softmax(xx @ weight.T + bias, dim=1)

    act, prob = parts(xt)
    onehot = torch.nn.functional.one_hot(yt, k).double()
    if fisher == "empirical":  # one (label, weight) per point: the training label, weight 1
        labels_weights = [(prob - onehot, torch.ones(n, dtype=torch.float64))]
    else:  # every class c, weighted by p_c
        eye = torch.eye(k, dtype=torch.float64)
        labels_weights = [(prob - eye[c], prob[:, c]) for c in range(k)]
    per_sample = [(s[:, :, None] * act[:, None, :], w) for s, w in labels_weights]  # (n, k, d+1)

    a_cov = act.T @ act / n
    s_cov = sum(((s * w[:, None]).T @ s) for s, w in labels_weights) / n
    eig_a, q_a = torch.linalg.eigh(a_cov)
    eig_s, q_s = torch.linalg.eigh(s_cov)
    if strategy == "kfac":
        lam = eig_s[:, None] * eig_a[None, :]
    elif strategy == "ekfac":
        lam = sum((w[:, None, None] * (q_s.T @ g @ q_a) ** 2).sum(0) for g, w in per_sample) / n
    else:  # diagonal
        lam = sum((w[:, None, None] * g**2).sum(0) for g, w in per_sample) / n

    act_q, prob_q = parts(x)
    g_test = (prob_q - torch.nn.functional.one_hot(targets, k).double())[:, :, None] * act_q[:, None, :]
    g_train = (prob - onehot)[:, :, None] * act[:, None, :]
    if strategy == "diagonal":
        pre = g_test / (lam + damping)
    else:
        pre = q_s @ ((q_s.T @ g_test @ q_a) / (lam + damping)) @ q_a.T
    return torch.einsum("qkd,nkd->qn", pre, g_train) / n


# ----- configuration and lifecycle ------------------------------------------------------------
def test_unknown_strategy_lists_choices() -> None:
    with pytest.raises(ConfigError, match=r"choose one of \['ekfac', 'kfac', 'diagonal', 'identity'\]"):
        EKFACConfig(strategy="ekfca")
    with pytest.raises(ConfigError, match="unknown config key"):
        EKFACConfig.from_dict({"dampening": 1e-3})
    with pytest.raises(ConfigError, match="damping"):
        EKFACConfig(damping=-1.0)
    with pytest.raises(ConfigError, match="fisher_samples"):
        EKFACConfig(fisher_samples=0)
    assert EKFACConfig.from_dict({"strategy": "kfac", "damping": "none"}).damping is None
    assert EKFACConfig.paper().covariance_max_examples == 100_000 == EKFACConfig.paper().lambda_max_examples
    assert EKFACConfig.quick().covariance_max_examples == 5_000


def test_explain_before_fit_raises(problem: ConvexProblem, targets: torch.Tensor) -> None:
    method = EKFAC()
    with pytest.raises(NotFittedError, match="call fit"):
        method.explain(problem.test.materialise(), targets)
    with pytest.raises(NotFittedError):
        method.self_influence()


# ----- exactness ------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["ekfac", "kfac", "diagonal"])
def test_matches_closed_form(
    problem: ConvexProblem, targets: torch.Tensor, tmp_path: Path, strategy: str
) -> None:
    """Deterministic empirical Fisher: kronfluence's scores / N equal the hand-built preconditioner."""
    method = _fit(problem, tmp_path, strategy=strategy, fisher="empirical")
    scores = method.explain(problem.test.materialise(), targets)
    assert scores.dtype == torch.float32 and scores.shape == (len(problem.test), len(problem.train))
    reference = _closed_form(problem, problem.test.materialise(), targets, problem.l2, strategy, "empirical")
    torch.testing.assert_close(scores.double(), reference, rtol=1e-5, atol=1e-6 * reference.abs().max())


def test_true_fisher_matches_expected_fisher_closed_form(
    problem: ConvexProblem, targets: torch.Tensor, true_fisher_scores: torch.Tensor
) -> None:
    """Sampled labels (the paper's true Fisher) converge to the expected-Fisher EK-FAC."""
    scores = true_fisher_scores
    reference = _closed_form(problem, problem.test.materialise(), targets, problem.l2, "ekfac", "true")
    rho = _spearman(scores, reference)
    log.info("true-Fisher EK-FAC vs expected-Fisher closed form: Spearman min %.4f", min(rho))
    assert min(rho) >= 0.95, rho


def test_closer_to_exact_hessian_than_identity(
    problem: ConvexProblem,
    targets: torch.Tensor,
    true_fisher_scores: torch.Tensor,
    identity_scores: torch.Tensor,
) -> None:
    """Against the exact damped Hessian: right sign and scale, and better rankings than no curvature.

    Measured (see the module docstring): EK-FAC min 0.30, mean 0.63 vs mean 0.51 for gradient dot products.
    """
    exact = exact_attributions(problem, problem.test.materialise(), targets, damping=problem.l2)
    scores, identity = true_fisher_scores, identity_scores
    rho_ekfac, rho_identity = _spearman(scores, exact), _spearman(identity, exact)
    mean_ekfac, mean_identity = sum(rho_ekfac) / len(rho_ekfac), sum(rho_identity) / len(rho_identity)
    log.info(
        "vs exact Hessian: EK-FAC Spearman min %.3f mean %.3f; identity min %.3f mean %.3f",
        min(rho_ekfac),
        mean_ekfac,
        min(rho_identity),
        mean_identity,
    )
    assert min(rho_ekfac) > 0.2 and mean_ekfac > mean_identity + 0.05
    # same sign convention and scale as the exact influence (positive = proponent, 1/N up-weighting)
    ratio = float((scores * exact).sum() / (exact * exact).sum())
    assert 0.5 < ratio < 2.0, ratio


def test_identity_is_gradient_dot_product(
    problem: ConvexProblem, targets: torch.Tensor, identity_scores: torch.Tensor
) -> None:
    """No curvature: the scores are per-sample gradient dot products / N (damping adds nothing)."""
    scores = identity_scores
    g_test = per_sample_grads(problem.model, problem.test.materialise(), targets)
    g_train = per_sample_grads(problem.model, problem.train.materialise(), problem.train.y)
    reference = g_test @ g_train.T / len(problem.train)
    torch.testing.assert_close(scores, reference, rtol=1e-5, atol=1e-6 * reference.abs().max())


def test_self_influence_is_diagonal_of_pairwise(problem: ConvexProblem, tmp_path: Path) -> None:
    """kronfluence's self-scores / N = the diagonal of training-vs-training scores at the labels."""
    method = _fit(problem, tmp_path, fisher="empirical")
    assert "self_influence" in method.supports
    self_scores = method.self_influence()
    assert self_scores.shape == (len(problem.train),) and self_scores.dtype == torch.float32
    pairwise = method.explain(problem.train.materialise(), problem.train.y)
    torch.testing.assert_close(self_scores, torch.diagonal(pairwise), rtol=1e-5, atol=1e-7)
    closed = _closed_form(
        problem, problem.train.materialise(), problem.train.y, problem.l2, "ekfac", "empirical"
    )
    torch.testing.assert_close(self_scores.double(), torch.diagonal(closed), rtol=1e-5, atol=1e-8)
    assert bool((self_scores > 0).all())


# ----- cache ----------------------------------------------------------------------------------
def test_cache_hit_reuses_factors(problem: ConvexProblem, targets: torch.Tensor, tmp_path: Path) -> None:
    """A cold fit stores kronfluence's files under <entry>/files; a second fit reads them, bitwise equal."""
    cache = Cache(tmp_path)
    first = EKFAC(EKFACConfig(damping=problem.l2))
    first.fit(problem.model, problem.train, cache=cache)
    assert (cache.stats.hits, cache.stats.misses) == (0, 1)
    assert first.diagnostics()["factors_from_cache"] is False
    entries = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(entries) == 1 and not entries[0].name.startswith("."), entries  # no temp dir left
    entry = entries[0]
    assert {"key.json", "meta.json", FILES} <= {p.name for p in entry.iterdir()}
    factors = entry / FILES / "kronfluence" / "factors_ekfac"
    files = sorted(p for p in (entry / FILES).rglob("*.safetensors"))
    assert files and all(factors in p.parents for p in files), files  # kronfluence's own layout
    assert first._factors_dir == factors  # the miss reads the entry's copy too (the scratch is moved)
    stamps = {p: p.stat().st_mtime_ns for p in files}
    scores, self_scores = first.explain(problem.test.materialise(), targets), first.self_influence()

    second = EKFAC(EKFACConfig(damping=problem.l2))
    second.fit(problem.model, problem.train, cache=cache)
    assert (cache.stats.hits, cache.stats.misses) == (1, 1)
    assert second.diagnostics()["factors_from_cache"] is True
    assert second.diagnostics()["lambda_examples"] == len(problem.train)  # meta read back
    assert {p: p.stat().st_mtime_ns for p in (entry / FILES).rglob("*.safetensors")} == stamps  # not refitted
    assert torch.equal(second.explain(problem.test.materialise(), targets), scores)
    assert torch.equal(second.self_influence(), self_scores)

    # damping acts at scoring time only: the same factors serve another damping
    third = EKFAC(EKFACConfig(damping=10 * problem.l2))
    third.fit(problem.model, problem.train, cache=cache)
    assert (cache.stats.hits, cache.stats.misses) == (2, 1)
    assert not torch.equal(third.explain(problem.test.materialise(), targets), scores)
    # an option that changes the factors is another entry (a miss), never a silent hit
    EKFAC(EKFACConfig(damping=problem.l2, strategy="kfac")).fit(problem.model, problem.train, cache=cache)
    assert (cache.stats.hits, cache.stats.misses) == (2, 2)


def test_cache_key(problem: ConvexProblem, tmp_path: Path) -> None:
    """The base class' key: factor options in the config, scoring options left out, library version."""
    method = EKFAC(EKFACConfig(damping=problem.l2))
    method.fit(problem.model, problem.train, cache=Cache(tmp_path))
    key = method.cache_key(problem.model, problem.train)
    assert (
        key["method"] == (EKFAC.name or "EKFAC") and key["kronfluence"] and key["generator_device"] == "cpu"
    )
    assert not {"damping", "train_batch_size", "query_batch_size"} & set(key["config"])
    assert key["config"]["strategy"] == "ekfac" and key["config"]["fisher_samples"] == 1


# ----- a real (tiny) network ------------------------------------------------------------------
def test_toy_model_contract(toy_setup, tmp_path: Path) -> None:
    _, data, model = toy_setup
    fingerprint = model_fingerprint(model)
    x, n_test = data.test.inputs[:5], 5
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    method = EKFAC(EKFACConfig(train_batch_size=1000, query_batch_size=1000))
    method.fit(model, data.train, cache=Cache(tmp_path))
    scores = method.explain(x, targets)
    device = next(model.parameters()).device
    assert scores.shape == (n_test, len(data.train)) and scores.dtype == torch.float32
    assert scores.device == device and bool(torch.isfinite(scores).all())
    assert len(method.diagnostics()["tracked_modules"]) >= 2  # every Linear layer of the MLP
    # the harness' model is untouched (kronfluence wraps a copy)
    assert model_fingerprint(model) == fingerprint
    assert all(p.requires_grad for p in model.parameters())
    assert not any("TrackedModule" in type(m).__name__ for m in model.modules())
    # deterministic under the config's seed (fresh cache: refits, same label draws)
    again = EKFAC(EKFACConfig(train_batch_size=1000, query_batch_size=1000))
    again.fit(model, data.train, cache=Cache(tmp_path / "other"))
    torch.testing.assert_close(again.explain(x, targets), scores, rtol=0, atol=0)
    # proponents of a prediction share its class more often than chance (1/3); measured 0.64 with
    # the paper's damping 1e-8 (near-singular curvature of a 2-layer MLP on tens of points)
    top = scores.topk(5, dim=1).indices
    assert float((data.train.y[top.cpu()] == targets.cpu()[:, None]).double().mean()) >= 0.5
    self_scores = method.self_influence()
    assert self_scores.shape == (len(data.train),) and bool(torch.isfinite(self_scores).all())


def test_modules_option(toy_setup, tmp_path: Path) -> None:
    _, data, model = toy_setup
    last = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    method = EKFAC(EKFACConfig(modules=(last,)))
    assert method.attributes_through == f"modules {last}"
    method.fit(model, data.train, cache=Cache(tmp_path))
    assert method.diagnostics()["tracked_modules"] == [last]
    with pytest.raises(ConfigError, match="cannot track"):
        EKFAC(EKFACConfig(modules=("no_such_layer",))).fit(model, data.train, cache=Cache(tmp_path))


def test_max_module_params_tracks_only_small_modules(toy_setup, tmp_path: Path) -> None:
    _, data, model = toy_setup
    sizes = {name: m.weight.numel() for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert sizes == {"features.0": 128, "classifier": 48}  # the toy MLP: 8 -> 16 -> 3
    method = EKFAC(EKFACConfig(max_module_params=100))
    method.fit(model, data.train, cache=Cache(tmp_path))
    assert method.diagnostics()["tracked_modules"] == ["classifier"]
    assert method.attributes_through == "modules classifier"
    everything = EKFAC(EKFACConfig(max_module_params=128))
    everything.fit(model, data.train, cache=Cache(tmp_path))
    assert everything.diagnostics()["tracked_modules"] == ["features.0", "classifier"]
    with pytest.raises(DataError, match="raise it or set it to None"):
        EKFAC(EKFACConfig(max_module_params=10)).fit(model, data.train, cache=Cache(tmp_path))
    assert EKFACConfig.quick().max_module_params == 100_000 and EKFACConfig.paper().max_module_params is None

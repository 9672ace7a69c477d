"""The `dualda` method: attributions, sparsity, self-influence, cache, record, bad input.

References are computed independently here in float64 from the features and the solver's alpha:
``a_i(x) = alpha_i^c <phi(x), phi(x_i)>`` (DualXDA paper).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from harness.cache import Cache
from harness.config import ConfigError
from harness.protocols import CapabilityError, DataError, NotFittedError, Split, feature_split
from harness.registry import METHODS
from harness.runner import ComponentSpec, RunSpec, TimingConfig, run_one
from methods.dualda import C_GRID, DualDA, DualDAConfig


def _phi(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    features, _ = feature_split(model)
    with torch.no_grad():
        return features(x).flatten(start_dim=1).double()


def _fit(model, train, tmp_path: Path, **config) -> DualDA:
    method = DualDA(DualDAConfig(**config))
    method.fit(model, train, cache=Cache(tmp_path))
    return method


@pytest.fixture(scope="module")
def mnist_fitted(mnist_small_setup, tmp_path_factory):
    _, data, model = mnist_small_setup
    method = _fit(model, data.train, tmp_path_factory.mktemp("dualda"), C=1e-3)
    with torch.no_grad():
        targets = model(data.test.materialise()).argmax(dim=1)
    return data, model, method, targets


def test_registered_under_its_paper_name() -> None:
    assert METHODS.get("dualda") is DualDA
    assert DualDA.supports == {"self_influence", "sparse", "cache", "feature_decomposition"}
    assert [c.C for c in DualDAConfig.grid()] == list(C_GRID) == [1e-5, 1e-3, 1e-1]
    assert DualDAConfig.sweep() == ({"C": 1e-5}, {"C": 1e-3}, {"C": 1e-1})
    assert DualDA.cheap and DualDA.cache_ignores == {"self_influence"}
    from harness.suites import get_suite

    std_specs = [s for s in get_suite("quick") if dict(s.task.overrides)["variant"] == "std"]
    in_suite = [dict(s.method.overrides)["C"] for s in std_specs if s.method.name == "dualda"]
    assert in_suite == list(C_GRID)


def test_attributions_equal_the_dual_formula(mnist_fitted) -> None:
    data, model, method, targets = mnist_fitted
    scores = method.explain(data.test.materialise(), targets)
    reference = method.alpha_.T[targets] * (
        _phi(model, data.test.materialise()) @ _phi(model, data.train.materialise()).T
    )
    scale = reference.abs().max()
    assert (scores.double() - reference).abs().max() <= 1e-5 * scale


def test_attributions_sum_to_the_surrogate_logit_without_bias(mnist_fitted) -> None:
    data, model, method, targets = mnist_fitted
    scores = method.explain(data.test.materialise(), targets).double()
    logits = _phi(model, data.test.materialise()) @ method.weights_.T  # w_c . phi(x), no bias
    expected = logits.gather(1, targets[:, None]).squeeze(1)
    assert torch.allclose(scores.sum(dim=1), expected, rtol=1e-4, atol=1e-4 * expected.abs().max())


def test_non_support_vectors_get_exact_zeros_and_forms_agree(mnist_fitted) -> None:
    data, _, method, targets = mnist_fitted
    dense = method.explain(data.test.materialise(), targets)
    non_support = torch.ones(len(data.train), dtype=torch.bool)
    non_support[method.support_] = False
    assert non_support.any() and (dense[:, non_support] == 0).all()
    assert method.diagnostics()["n_support"] == len(method.support_) < len(data.train)
    sparse = method.explain_sparse(data.test.materialise(), targets)
    assert torch.equal(sparse.to_dense(), dense)
    values, indices = method.explain_topk(data.test.materialise(), targets, k=5)
    dense_values, _ = torch.topk(dense, 5, dim=1)
    assert torch.equal(values, dense_values)
    assert torch.equal(dense.gather(1, indices), values)
    opp_values, opp_indices = method.explain_topk(data.test.materialise(), targets, k=5, largest=False)
    assert torch.equal(opp_values, torch.topk(dense, 5, dim=1, largest=False).values)
    assert torch.equal(dense.gather(1, opp_indices), opp_values)


def test_topk_beyond_the_support_pads_with_zeros(toy_setup, tmp_path: Path) -> None:
    _, data, model = toy_setup
    method = _fit(model, data.train, tmp_path, C=10.0)
    with torch.no_grad():
        targets = model(data.test.materialise()).argmax(dim=1)
    n_support = len(method.support_)
    values, indices = method.explain_topk(data.test.materialise(), targets, k=len(data.train))
    assert values.shape == (len(data.test), len(data.train))
    assert (values == 0).sum(dim=1).min() >= len(data.train) - n_support
    with pytest.raises(ValueError, match="k must lie in 1.."):
        method.explain_topk(data.test.materialise(), targets, k=0)


@pytest.mark.parametrize(("kind", "power"), [("sq_norm", 2.0), ("norm", 1.0), ("alpha", 0.0)])
def test_self_influence_definitions(mnist_fitted, tmp_path: Path, kind: str, power: float) -> None:
    data, model, fitted, _ = mnist_fitted
    method = DualDA(replace(fitted.config, self_influence=kind))
    method.fit(model, data.train, cache=Cache(tmp_path))
    phi = _phi(model, data.train.materialise())
    own = method.alpha_[torch.arange(len(data.train)), data.train.y]
    expected = phi.norm(dim=1) ** power * own
    assert torch.allclose(method.self_influence().double(), expected, rtol=1e-5, atol=1e-12)
    if kind == "sq_norm":  # the self-attribution: explain a training point against its own label
        self_attr = method.explain(data.train.inputs[:50], data.train.y[:50]).double()
        diag = self_attr[torch.arange(50), torch.arange(50)]
        assert torch.allclose(diag, method.self_influence()[:50].double(), rtol=1e-4, atol=1e-9)


def test_record_carries_solver_and_faithfulness_numbers(tmp_path: Path) -> None:
    spec = RunSpec(
        task=ComponentSpec("toy"),
        method=ComponentSpec.parse("dualda:C=0.1"),
        metrics=(ComponentSpec("class_detection"), ComponentSpec("sparsity")),
        results_dir=str(tmp_path / "results"),
        cache_dir=str(tmp_path / "cache"),
        timing=TimingConfig(repeats=2, batch_size=8),
    )
    record = run_one(spec)
    assert record["status"] == "ok", record.get("error")
    diag = record["diagnostics"]
    for key in (
        "n_support",
        "solver_seconds",
        "iterations",
        "max_kkt_violation",
        "duality_gap",
        "weight_cosine",
        "logit_correlation",
        "argmax_agreement",
    ):
        assert key in diag, key
    assert diag["converged"] and diag["max_kkt_violation"] < 1e-4 and diag["C"] == 0.1
    assert 0 < diag["n_support"] <= record["task"]["n_train"]
    assert 0.5 < diag["argmax_agreement"] <= 1.0  # the toy model's SVM surrogate agrees on most points
    assert record["sparsity"]["exact_zero_share"] > 0
    assert record["timings"]["self_influence_s"] is None  # no metric of this run reads self-influence


def test_cache_is_keyed_by_solver_options_not_by_self_influence(toy_setup, tmp_path: Path) -> None:
    _, data, model = toy_setup
    cache = Cache(tmp_path)
    DualDA(DualDAConfig(C=0.1)).fit(model, data.train, cache=cache)
    assert cache.stats.misses == 1
    DualDA(DualDAConfig(C=0.1, self_influence="alpha")).fit(model, data.train, cache=cache)
    assert (cache.stats.hits, cache.stats.misses) == (1, 1)
    DualDA(DualDAConfig(C=0.01)).fit(model, data.train, cache=cache)
    DualDA(DualDAConfig(C=0.1, tol=1e-6)).fit(model, data.train, cache=cache)
    assert cache.stats.misses == 3


# ----- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"C": 0.0}, "C must be a finite number > 0"),
        ({"C": -1e-3}, "C must be"),
        ({"tol": 0.0}, "tol must be > 0"),
        ({"max_iter": 0}, "max_iter must be a positive integer"),
        ({"self_influence": "squared"}, "self_influence must be one of"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_config_is_a_clear_error(values: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        DualDAConfig(**values)


def test_bad_input_is_a_clear_error(toy_setup, tmp_path: Path) -> None:
    _, data, model = toy_setup
    with pytest.raises(NotFittedError):
        DualDA().explain(data.test.materialise(), torch.zeros(len(data.test), dtype=torch.long))
    with pytest.raises(CapabilityError, match="features`/`classifier` split"):
        DualDA().fit(nn.Sequential(nn.Linear(8, 3)), data.train, cache=Cache(tmp_path))
    one_class = Split("train", data.train.materialise(), torch.zeros_like(data.train.y))
    with pytest.raises(DataError, match="at least two classes"):
        DualDA().fit(model, one_class, cache=Cache(tmp_path))
    empty = Split("train", data.train.inputs[:0], data.train.y[:0])
    with pytest.raises(DataError, match="training set is empty"):
        DualDA().fit(model, empty, cache=Cache(tmp_path))
    bad_x = data.train.materialise().clone()
    bad_x[3] = float("nan")
    with pytest.raises(DataError, match="NaN or inf"):
        DualDA().fit(model, Split("train", bad_x, data.train.y), cache=Cache(tmp_path))
    method = _fit(model, data.train, tmp_path)
    with pytest.raises(DataError, match="targets must be classes in 0..2"):
        method.explain(data.test.materialise(), torch.full((len(data.test),), 7))
    with pytest.raises(DataError, match="targets"):
        method.explain(data.test.materialise(), torch.zeros(3, dtype=torch.long))
    assert np.isfinite(method.self_influence().numpy()).all()


# ----- the shared feature-kernel base (DualDA and Representer Points) --------------------------
@pytest.mark.parametrize(
    ("name", "config"), [("dualda", {"C": 0.1}), ("representer", {}), ("representer", {"targets": "labels"})]
)
def test_feature_kernel_cache_hit_equals_cold_fit_bitwise(
    toy_setup, tmp_path: Path, name: str, config
) -> None:
    from methods._feature_kernel import FeatureKernelMethod

    _, data, model = toy_setup
    method_cls = METHODS.get(name)
    assert issubclass(method_cls, FeatureKernelMethod) and method_cls.cheap
    assert {"cache", "feature_decomposition", "self_influence"} <= method_cls.supports
    fresh = method_cls(method_cls.Config(**config))
    targets = torch.zeros(len(data.test), dtype=torch.long)
    with pytest.raises(NotFittedError):
        fresh.explain(data.test.materialise(), targets)
    with pytest.raises(NotFittedError):
        fresh.feature_relevance(data.test.inputs[:1], 0, torch.arange(3))
    with pytest.raises(NotFittedError):
        fresh.self_influence()

    cache = Cache(tmp_path)
    cold, warm = (method_cls(method_cls.Config(**config)) for _ in range(2))
    cold.fit(model, data.train, cache=cache)
    warm.fit(model, data.train, cache=cache)
    assert (cache.stats.hits, cache.stats.misses) == (1, 1)
    assert not cold.from_cache_ and warm.from_cache_
    assert cold.cache_key(model, data.train)["method"] == name
    with torch.no_grad():
        targets = model(data.test.materialise()).argmax(dim=1)
    scores = cold.explain(data.test.materialise(), targets)
    assert scores.dtype == torch.float32 and scores.shape == (len(data.test), len(data.train))
    assert torch.equal(scores, warm.explain(data.test.materialise(), targets))
    assert torch.equal(cold.self_influence(), warm.self_influence())
    index = torch.arange(len(data.train))
    for j in (0, len(data.test) - 1):
        x, c = data.test.inputs[j : j + 1], int(targets[j])
        terms = cold.feature_relevance(x, c, index)
        assert terms.dtype == torch.float64 and torch.equal(terms, warm.feature_relevance(x, c, index))
        assert torch.allclose(terms.sum(dim=1).float(), scores[j], rtol=1e-4, atol=1e-6)
    assert cold.diagnostics() == warm.diagnostics()
    assert {"feature_dim", "n_train", "argmax_agreement", "logit_correlation", "weight_cosine"} <= set(
        cold.diagnostics()
    )
    with pytest.raises(DataError, match="one input"):
        cold.feature_relevance(data.test.inputs[:2], 0, index)
    with pytest.raises(DataError, match="training indices must lie in"):
        cold.feature_relevance(data.test.inputs[:1], 0, torch.tensor([len(data.train)]))

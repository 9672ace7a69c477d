"""The random and similarity baselines on a tiny model: shapes, determinism, references, cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from harness.cache import Cache
from harness.config import ConfigError
from harness.protocols import NotFittedError, Split
from harness.registry import METHODS
from harness.runner import ComponentSpec

N_TRAIN, N_TEST, D_IN, N_CLASSES = 30, 5, 4, 3


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(D_IN, 8), nn.ReLU())
        self.classifier = nn.Linear(8, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@pytest.fixture()
def setup() -> tuple[nn.Module, Split, torch.Tensor, torch.Tensor]:
    """(model, train split, test x (N_TEST, D_IN), targets (N_TEST,)) from a fixed generator."""
    gen = torch.Generator().manual_seed(123)
    torch.manual_seed(0)
    model = _Tiny().eval()
    train = Split(
        "train",
        torch.randn(N_TRAIN, D_IN, generator=gen),
        torch.randint(0, N_CLASSES, (N_TRAIN,), generator=gen),
    )
    x = torch.randn(N_TEST, D_IN, generator=gen)
    # Fixed targets covering every class, so each row has both signs (a weak sign test otherwise).
    targets = torch.tensor([0, 1, 2, 0, 1])
    assert all(0 < int((train.y == t).sum()) < N_TRAIN for t in targets)
    return model, train, x, targets


def _fitted(name: str, model: nn.Module, train: Split, cache: Cache, **config):
    cls = METHODS.get(name)
    method = cls(cls.Config(**config))
    method.fit(model, train, cache=cache)
    return method


def _sign(train: Split, targets: torch.Tensor) -> torch.Tensor:
    """(n_test, n_train) +1 where the training label equals the target, else -1 (float64)."""
    same = train.y.to(torch.float64)[None, :] == targets.to(torch.float64)[:, None]
    return same.to(torch.float64) * 2.0 - 1.0


# ----- contract ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["random", "feature_similarity", "input_similarity"])
def test_shapes_dtype_finite_and_explain_before_fit(name: str, setup, tmp_path: Path) -> None:
    model, train, x, targets = setup
    cls = METHODS.get(name)
    with pytest.raises(NotFittedError, match="call fit"):
        cls(cls.Config()).explain(x, targets)
    scores = _fitted(name, model, train, Cache(tmp_path)).explain(x, targets)
    assert scores.shape == (N_TEST, N_TRAIN)
    assert scores.dtype == torch.float32
    assert torch.isfinite(scores).all()
    assert scores.device == x.device


# ----- random ---------------------------------------------------------------------------------
@pytest.mark.parametrize("distribution", ["uniform", "normal"])
def test_random_is_a_function_of_seed_and_row(distribution: str, setup, tmp_path: Path) -> None:
    model, train, x, targets = setup
    method = _fitted("random", model, train, Cache(tmp_path), distribution=distribution)
    full = method.explain(x, targets)
    # Batch-invariant and order-invariant: rows depend on the row's content only.
    assert torch.equal(method.explain(x[:2], targets[:2]), full[:2])
    assert torch.equal(method.explain(x.flip(0), targets.flip(0)), full.flip(0))
    # Independent of the global seed and of the target class.
    torch.manual_seed(999)
    again = _fitted("random", model, train, Cache(tmp_path), distribution=distribution)
    assert torch.equal(again.explain(x, (targets + 1) % N_CLASSES), full)
    # A different seed or a different input changes the scores; distinct rows differ.
    other = _fitted("random", model, train, Cache(tmp_path), distribution=distribution, seed=1)
    assert not torch.equal(other.explain(x, targets), full)
    assert not torch.equal(method.explain(x + 1e-3, targets), full)
    assert not torch.equal(full[0], full[1])
    if distribution == "uniform":
        assert full.min() >= -1.0 and full.max() < 1.0 and full.min() < 0 < full.max()


def test_random_distributions_have_their_moments(setup, tmp_path: Path) -> None:
    model, _, _, _ = setup
    big = Split("train", torch.zeros(20_000, D_IN), torch.zeros(20_000, dtype=torch.long))
    x = torch.randn(2, D_IN, generator=torch.Generator().manual_seed(5))
    targets = torch.zeros(2, dtype=torch.long)
    uniform = _fitted("random", model, big, Cache(tmp_path)).explain(x, targets).double()
    normal = (
        _fitted("random", model, big, Cache(tmp_path), distribution="normal").explain(x, targets).double()
    )
    assert abs(uniform.mean()) < 0.03 and abs(uniform.var() - 1 / 3) < 0.02
    assert abs(normal.mean()) < 0.05 and abs(normal.var() - 1.0) < 0.05


def test_random_self_influence_is_seeded_and_uniform(setup, tmp_path: Path) -> None:
    model, train, _, _ = setup
    method = _fitted("random", model, train, Cache(tmp_path))
    scores = method.self_influence()
    assert scores.shape == (len(train),) and scores.dtype == torch.float32
    torch.manual_seed(123)  # the global seed plays no part
    assert torch.equal(_fitted("random", model, train, Cache(tmp_path)).self_influence(), scores)
    assert not torch.equal(_fitted("random", model, train, Cache(tmp_path), seed=1).self_influence(), scores)
    big = Split("train", torch.zeros(20_000, D_IN), torch.zeros(20_000, dtype=torch.long))
    draws = _fitted("random", model, big, Cache(tmp_path)).self_influence().double()
    assert draws.min() >= -1 and draws.max() < 1 and abs(draws.mean()) < 0.03


# ----- similarity against independent references ------------------------------------------------
def _reference(metric: str, z_test: torch.Tensor, z_train: torch.Tensor) -> torch.Tensor:
    """(n_test, n_train) float64 similarity computed without the method's matmul formulation."""
    u, v = z_test.double()[:, None, :], z_train.double()[None, :, :]
    if metric == "cos":
        return nn.functional.cosine_similarity(u, v, dim=2)
    if metric == "dot":
        return (u * v).sum(dim=2)
    return 1.0 / (1.0 + (u - v).pow(2).sum(dim=2).sqrt())


@pytest.mark.parametrize("metric", ["cos", "dot", "l2"])
@pytest.mark.parametrize("name", ["feature_similarity", "input_similarity"])
def test_similarity_matches_reference(name: str, metric: str, setup, tmp_path: Path) -> None:
    model, train, x, targets = setup
    scores = _fitted(name, model, train, Cache(tmp_path), metric=metric).explain(x, targets)
    if name == "feature_similarity":
        with torch.no_grad():
            z_test, z_train = model.features(x), model.features(train.materialise())
    else:
        z_test, z_train = x, train.materialise()
    expected = _reference(metric, z_test, z_train) * _sign(train, targets)
    torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-5)
    # l2 similarities are positive, so the sign alone must tell same-class from other-class points.
    if metric == "l2":
        assert torch.equal(scores > 0, _sign(train, targets) > 0)


def test_similarity_batch_size_does_not_change_scores(setup, tmp_path: Path) -> None:
    model, train, x, targets = setup
    a = _fitted("feature_similarity", model, train, Cache(tmp_path / "a"), batch_size=7)
    b = _fitted("feature_similarity", model, train, Cache(tmp_path / "b"), batch_size=1000)
    torch.testing.assert_close(a.explain(x, targets), b.explain(x, targets), rtol=1e-6, atol=1e-6)


def test_similarity_leaves_model_mode_alone(setup, tmp_path: Path) -> None:
    model, train, x, targets = setup
    model.train()
    method = _fitted("feature_similarity", model, train, Cache(tmp_path))
    method.explain(x, targets)
    assert model.training


# ----- cache ---------------------------------------------------------------------------------
def test_feature_similarity_cache_hit_is_bit_identical(setup, tmp_path: Path) -> None:
    model, train, x, targets = setup
    cache = Cache(tmp_path)
    cold = _fitted("feature_similarity", model, train, cache, metric="l2")
    assert (cache.stats.hits, cache.stats.misses) == (0, 1)
    cold_scores = cold.explain(x, targets)

    warm_cache = Cache(tmp_path)
    warm = _fitted("feature_similarity", model, train, warm_cache, metric="l2")
    assert (warm_cache.stats.hits, warm_cache.stats.misses) == (1, 0)
    assert torch.equal(warm.explain(x, targets), cold_scores)

    # The metric is not part of the key (cos reuses the entry); the model is.
    _fitted("feature_similarity", model, train, warm_cache, metric="cos")
    assert (warm_cache.stats.hits, warm_cache.stats.misses) == (2, 0)
    with torch.no_grad():
        model.classifier.weight.add_(1.0)  # changes the state_dict (not the features)
    _fitted("feature_similarity", model, train, warm_cache)
    assert warm_cache.stats.misses == 1
    relabelled = Split("train", train.materialise(), (train.y + 1) % N_CLASSES)
    _fitted("feature_similarity", model, relabelled, warm_cache)
    assert warm_cache.stats.misses == 2


def test_input_similarity_keeps_no_cache(setup, tmp_path: Path) -> None:
    model, train, x, targets = setup
    cache = Cache(tmp_path)
    method = _fitted("input_similarity", model, train, cache)
    assert "cache" not in method.supports
    assert (cache.stats.hits, cache.stats.misses) == (0, 0)
    assert not any(tmp_path.iterdir())


# ----- config ----------------------------------------------------------------------------------
def test_bad_configs_raise_config_error() -> None:
    sim = METHODS.get("feature_similarity")
    with pytest.raises(ConfigError, match=r"\['dot', 'cos', 'l2'\]"):
        sim.Config(metric="euclid")
    with pytest.raises(ConfigError, match="'metric': cannot read 'manhattan'"):
        sim.Config.from_dict({"metric": "manhattan"})
    spec = ComponentSpec.parse("feature_similarity:metric=manhattan")
    with pytest.raises(ConfigError, match="^method 'feature_similarity': config key 'metric'"):
        spec.build_config(sim.Config, "method")
    with pytest.raises(ConfigError, match="batch_size"):
        sim.Config(batch_size=0)
    with pytest.raises(ConfigError, match="unknown config key"):
        sim.Config.from_dict({"metrc": "cos"})
    rnd = METHODS.get("random")
    with pytest.raises(ConfigError, match=r"\['uniform', 'normal'\]"):
        rnd.Config(distribution="gaussian")
    assert rnd.Config.from_dict({"seed": "3"}).seed == 3
    with pytest.raises(ConfigError, match="takes a"):
        rnd(sim.Config())
    with pytest.raises(ConfigError, match="takes a"):  # the two similarity configs are distinct
        sim(METHODS.get("input_similarity").Config())

"""The `lissa` and `arnoldi` influence methods: exactness on a convex problem, contract, bad input.

Reference: :mod:`convex_reference` (float64 multinomial logistic regression, closed-form
``g_test^T (H + damping I)^{-1} g_train / N``, positive for proponents). Each method is compared per
test point by Spearman correlation at the damping it uses: LiSSA's ``scale * damping`` and
Arnoldi's ``hessian_reg / N_h``.

Single-threaded torch for this module: the recursions are thousands of tiny ops, which two threads on
a shared 2-core machine only slow down.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from convex_reference import convex_problem, exact_attributions
from scipy.stats import spearmanr
from torch import nn

from harness.cache import Cache
from harness.config import ConfigError
from harness.protocols import CapabilityError, NotFittedError, Split
from methods.arnoldi import ArnoldiConfig, ArnoldiIF
from methods.lissa import LiSSA, LiSSAConfig


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def problem():
    pb = convex_problem()
    with torch.no_grad():
        targets = pb.model(pb.test.materialise()).argmax(dim=1)
    return pb, targets


@pytest.fixture()
def toy(toy_setup):
    _, data, model = toy_setup
    x = data.test.inputs[:6]
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    return model, data.train, x, targets


def _spearman_rows(scores: torch.Tensor, reference: torch.Tensor) -> list[float]:
    return [
        float(spearmanr(s.numpy(), r.numpy())[0]) for s, r in zip(scores.double(), reference, strict=True)
    ]


def _fit(method, model, train, path: Path):
    method.fit(model, train, cache=Cache(path))
    return method


# ----- exactness on the convex problem -----------------------------------------------------------
def test_lissa_matches_closed_form(problem, tmp_path: Path) -> None:
    pb, targets = problem
    # scale 2 and damping l2/2: damping on H = l2 (the training objective's), and the recursion
    # contracts 5x faster than at scale 10; large batches keep the stationary noise small.
    config = LiSSAConfig(depth=600, repeats=2, scale=2.0, damping=pb.l2 / 2, hvp_batch_size=512)
    assert config.effective_damping == pytest.approx(pb.l2)
    method = _fit(LiSSA(config), pb.model, pb.train, tmp_path)
    scores = method.explain(pb.test.materialise(), targets)
    reference = exact_attributions(pb, pb.test.materialise(), targets, damping=config.effective_damping)
    rho = _spearman_rows(scores, reference)
    assert min(rho) >= 0.95, rho
    # sign and scale, not only ranks: within a few percent of the largest attribution
    assert (scores.double() - reference).abs().max() <= 0.1 * reference.abs().max()


def test_arnoldi_full_rank_matches_closed_form_and_captum(problem, tmp_path: Path) -> None:
    pb, targets = problem
    n = len(pb.train)
    n_params = sum(p.numel() for p in pb.model.parameters())  # 18
    # Full rank: captum keeps arnoldi_dim - 1 Krylov vectors, and drops one more when it stops early;
    # the softmax Hessian is singular (6 null directions here), so only a vanishing tol keeps all 18.
    config = ArnoldiConfig(
        projection_dim=n_params,
        arnoldi_dim=n_params + 1,
        arnoldi_tol=1e-300,
        hessian_reg=pb.l2 * n,  # on the SUMMED Hessian: l2 on the mean one
        hessian_points=None,
    )
    method = _fit(ArnoldiIF(config), pb.model, pb.train, tmp_path)
    assert method.diagnostics()["effective_damping"] == pytest.approx(pb.l2)
    assert method.diagnostics()["n_eigenpairs"] == n_params
    scores = method.explain(pb.test.materialise(), targets)
    reference = exact_attributions(pb, pb.test.materialise(), targets, damping=pb.l2)
    rho = _spearman_rows(scores, reference)
    assert min(rho) >= 0.95, rho
    torch.testing.assert_close(scores.double(), reference, rtol=0, atol=1e-5 * float(reference.abs().max()))
    # Our embedding path equals captum's own influence() (sign kept, times N_h / N = 1 here)
    captum_scores = method._captum.influence((pb.test.materialise(), targets))
    torch.testing.assert_close(scores.double(), captum_scores.double(), rtol=1e-6, atol=1e-9)
    # Self-influence is the diagonal of the training set's attributions
    diagonal = method.explain(pb.train.materialise(), pb.train.y).diagonal()
    torch.testing.assert_close(method.self_influence(), diagonal, rtol=1e-5, atol=1e-9)


def test_arnoldi_hessian_subset_rescales_to_the_mean_hessian(problem, tmp_path: Path) -> None:
    pb, targets = problem
    config = ArnoldiConfig(projection_dim=18, arnoldi_dim=19, arnoldi_tol=1e-300, hessian_points=40)
    method = _fit(ArnoldiIF(config), pb.model, pb.train, tmp_path)
    assert method.hessian_indices_.numel() == 40 and method.hessian_indices_.unique().numel() == 40
    scores = method.explain(pb.test.materialise(), targets)
    raw = method._captum.influence((pb.test.materialise(), targets))
    torch.testing.assert_close(scores.double(), raw.double() * 40 / len(pb.train), rtol=1e-6, atol=1e-12)


# ----- contract ---------------------------------------------------------------------------------
def _lissa_small(**kw) -> LiSSA:
    return LiSSA(LiSSAConfig(**({"depth": 30, "repeats": 2, "hvp_batch_size": 8} | kw)))


def _arnoldi_small(**kw) -> ArnoldiIF:
    return ArnoldiIF(ArnoldiConfig(**({"projection_dim": 8, "arnoldi_dim": 12, "hessian_points": 20} | kw)))


@pytest.mark.parametrize("make", [_lissa_small, _arnoldi_small], ids=["lissa", "arnoldi"])
def test_shapes_dtype_device_and_explain_before_fit(make, toy, tmp_path: Path) -> None:
    model, train, x, targets = toy
    with pytest.raises(NotFittedError, match="call fit"):
        make().explain(x, targets)
    method = _fit(make(), model, train, tmp_path)
    scores = method.explain(x, targets)
    assert scores.shape == (len(x), len(train))
    assert scores.dtype == torch.float32 and scores.device == x.device
    assert torch.isfinite(scores).all() and scores.abs().max() > 0
    assert method.explain(x[:0], targets[:0]).shape == (0, len(train))
    assert method.attributes_through and isinstance(method.self_influence_definition, str)


def test_class_attributes() -> None:
    assert LiSSA.supports == {"cache", "self_influence"} and LiSSA.self_influence_definition
    assert "last layer" in LiSSA.attributes_through
    assert ArnoldiIF.supports == {"cache", "self_influence"} and ArnoldiIF.self_influence_definition
    with pytest.raises(NotFittedError):
        LiSSA().self_influence()
    paper = LiSSAConfig.paper()
    assert (paper.depth, paper.repeats, paper.scale, paper.damping, paper.hvp_batch_size) == (
        6000,
        10,
        10,
        1e-3,
        32,
    )
    a = ArnoldiConfig.paper()
    assert (a.projection_dim, a.arnoldi_dim, a.arnoldi_tol, a.hessian_reg, a.hessian_points, a.layers) == (
        128,
        150,
        0.1,
        1e-3,
        10_000,
        None,
    )


def test_lissa_deterministic_under_seed_and_row_independent(toy, tmp_path: Path) -> None:
    model, train, x, targets = toy
    torch.manual_seed(1)
    state = torch.get_rng_state()
    a = _fit(_lissa_small(), model, train, tmp_path / "a").explain(x, targets)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not touched
    b = _fit(_lissa_small(), model, train, tmp_path / "b").explain(x, targets)
    assert torch.equal(a, b)
    other = _fit(_lissa_small(seed=1), model, train, tmp_path / "c").explain(x, targets)
    assert not torch.equal(a, other)
    method = _fit(_lissa_small(), model, train, tmp_path / "d")
    torch.testing.assert_close(method.explain(x[:2], targets[:2]), a[:2], rtol=1e-5, atol=1e-7)


def test_lissa_self_influence_is_the_diagonal_of_explain_on_the_training_set(toy, tmp_path: Path) -> None:
    model, train, _, _ = toy
    method = _fit(_lissa_small(self_influence_chunk=7), model, train, tmp_path)  # chunks of 7 rows
    diagonal = method.explain(train.materialise(), train.y).diagonal()
    self_scores = method.self_influence()
    assert self_scores.shape == (len(train),) and self_scores.dtype == torch.float32
    torch.testing.assert_close(self_scores, diagonal, rtol=1e-5, atol=1e-6 * float(diagonal.abs().max()))
    assert (self_scores > 0).all()  # g^T (H + damping I)^{-1} g with H positive semi-definite


def test_lissa_self_influence_matches_closed_form(problem, tmp_path: Path) -> None:
    pb, _ = problem
    config = LiSSAConfig(depth=600, repeats=2, scale=2.0, damping=pb.l2 / 2, hvp_batch_size=512)
    method = _fit(LiSSA(config), pb.model, pb.train, tmp_path)
    exact = exact_attributions(
        pb, pb.train.materialise(), pb.train.y, damping=config.effective_damping
    ).diagonal()
    rho = float(spearmanr(method.self_influence().double().numpy(), exact.numpy())[0])
    assert rho >= 0.95, rho


def test_lissa_linear_head_hvp_equals_autograd(toy, tmp_path: Path) -> None:
    model, train, x, targets = toy
    method = _fit(_lissa_small(), model, train, tmp_path)
    g = torch.randn(5, method.theta_.numel(), generator=torch.Generator().manual_seed(3))
    fast = method._inverse_hvp(g)
    generic = method._inverse_hvp(g, generic_hvp=True)
    torch.testing.assert_close(fast, generic, rtol=1e-4, atol=1e-6 * float(generic.abs().max()))


def test_lissa_recomputing_features_gives_the_same_outputs(toy, tmp_path: Path) -> None:
    model, train, x, targets = toy
    method = _fit(_lissa_small(), model, train, tmp_path)
    fast = method.explain(x, targets)
    naive = method._explain_recomputing_features(x, targets)
    torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-6 * float(fast.abs().max()))


def test_arnoldi_deterministic_under_seed(toy, tmp_path: Path) -> None:
    model, train, x, targets = toy
    torch.manual_seed(1)
    state = torch.get_rng_state()
    a = _fit(_arnoldi_small(), model, train, tmp_path / "a").explain(x, targets)
    assert torch.equal(torch.get_rng_state(), state)  # captum's manual_seed is undone
    b = _fit(_arnoldi_small(), model, train, tmp_path / "b").explain(x, targets)
    assert torch.equal(a, b)
    other = _fit(_arnoldi_small(seed=1), model, train, tmp_path / "c").explain(x, targets)
    assert not torch.equal(a, other)


@pytest.mark.parametrize("make", [_lissa_small, _arnoldi_small], ids=["lissa", "arnoldi"])
def test_cache_hit_gives_identical_scores(make, toy, tmp_path: Path) -> None:
    """A warm fit reads the cold fit's entry and gives bitwise the same explanations and self-influence."""
    model, train, x, targets = toy
    cache = Cache(tmp_path)
    cold = make()
    cold.fit(model, train, cache=cache)
    cold_scores, cold_self = cold.explain(x, targets), cold.self_influence()
    warm = make()
    warm.fit(model, train, cache=Cache(tmp_path))  # a fresh handle on the same folder
    assert not cold.from_cache_ and warm.from_cache_
    assert torch.equal(warm.explain(x, targets), cold_scores)
    assert torch.equal(warm.self_influence(), cold_self)
    assert warm.diagnostics() == cold.diagnostics()


def test_lissa_recursion_settings_share_the_feature_entry(toy, tmp_path: Path) -> None:
    """Only ``batch_size`` (of the features' forward pass) is in LiSSA's key: other depths, seeds and
    scales read the same features, and the hit gives what a cold fit with those settings gives."""
    model, train, x, targets = toy
    cache = Cache(tmp_path / "shared")
    _lissa_small().fit(model, train, cache=cache)
    other = {"depth": 12, "repeats": 1, "seed": 3, "scale": 20.0, "damping": 1e-2, "hvp_batch_size": 4}
    hit = _lissa_small(**other, self_influence_chunk=5, explain_batch=2)
    hit.fit(model, train, cache=cache)
    assert hit.from_cache_ and (cache.stats.misses, cache.stats.hits) == (1, 1)
    cold = _fit(_lissa_small(**other), model, train, tmp_path / "cold")
    assert torch.equal(hit.explain(x, targets), cold.explain(x, targets))
    _lissa_small(batch_size=7).fit(model, train, cache=cache)
    assert cache.stats.misses == 2


def test_arnoldi_every_option_is_in_the_key(toy, tmp_path: Path) -> None:
    model, train, _, _ = toy
    cache = Cache(tmp_path)
    for kw in ({}, {"hessian_reg": 1e-2}, {"batch_size": 7}, {"embeddings": "captum"}):
        _arnoldi_small(**kw).fit(model, train, cache=cache)
    assert (cache.stats.misses, cache.stats.hits) == (4, 0)


def test_for_dataset_holds_the_papers_per_dataset_settings() -> None:
    """LiSSA's depth 6000 / 5000 / 3700 on MNIST / CIFAR-10 / AwA2 and Arnoldi's AwA2 modules, applied on
    top of the paper preset as the paper suite does."""
    assert LiSSAConfig.paper().depth == 6000
    assert [LiSSAConfig.for_dataset(d) for d in ("mnist", "cifar10", "awa2", "toy")] == [
        {},
        {"depth": 5000},
        {"depth": 3700},
        {},
    ]
    assert ArnoldiConfig.for_dataset("awa2") == {"layers": ("classifier", "features.layer4.2.conv2")}
    assert [ArnoldiConfig.for_dataset(d) for d in ("mnist", "cifar10", "toy")] == [{}, {}, {}]
    for config_cls, dataset, field, value in [
        (LiSSAConfig, "mnist", "depth", 6000),
        (LiSSAConfig, "cifar10", "depth", 5000),
        (LiSSAConfig, "awa2", "depth", 3700),
        (ArnoldiConfig, "awa2", "layers", ("classifier", "features.layer4.2.conv2")),
        (ArnoldiConfig, "mnist", "layers", None),
    ]:
        paper = config_cls.preset("paper")
        config = config_cls.from_dict(config_cls.for_dataset(dataset), base=paper)
        assert getattr(config, field) == value
        # the rest stays the paper's
        assert {k: v for k, v in config.to_dict().items() if k != field} == {
            k: v for k, v in paper.to_dict().items() if k != field
        }


def test_smoke_presets() -> None:
    """LiSSA's smoke preset is quick with 2 x 100 HVP steps; Arnoldi's is quick (seconds on the toy)."""
    assert LiSSAConfig.preset("smoke") == replace(LiSSAConfig.quick(), depth=100, repeats=2)
    assert ArnoldiConfig.preset("smoke") == ArnoldiConfig.quick()


def test_arnoldi_layers_option(toy, tmp_path: Path) -> None:
    model, train, x, targets = toy
    method = _fit(_arnoldi_small(layers=("classifier",)), model, train, tmp_path)
    assert method.diagnostics()["n_params"] == sum(p.numel() for p in model.classifier.parameters())
    assert method.explain(x, targets).shape == (len(x), len(train))


# ----- bad input ----------------------------------------------------------------------------------
def test_unknown_layer_lists_the_model_layers(toy, tmp_path: Path) -> None:
    model, train, _, _ = toy
    with pytest.raises(ConfigError, match=r"'fc9'.*choose from \['features', 'features.0', 'classifier'\]"):
        _fit(_arnoldi_small(layers=("fc9",)), model, train, tmp_path)
    with pytest.raises(ConfigError, match="'features.1'"):  # the ReLU has no parameters
        _fit(_arnoldi_small(layers=("features.1",)), model, train, tmp_path)


def test_lissa_needs_a_feature_classifier_split(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    train = Split("train", torch.randn(10, 4), torch.arange(10) % 3)
    with pytest.raises(CapabilityError, match="features`/`classifier"):
        _fit(_lissa_small(), model, train, tmp_path)


@pytest.mark.parametrize(
    ("cls", "values", "match"),
    [
        (LiSSAConfig, {"damping": -1e-3}, "damping"),
        (LiSSAConfig, {"depth": 0}, "depth"),
        (LiSSAConfig, {"repeats": 0}, "repeats"),
        (LiSSAConfig, {"scale": 0.0}, "scale"),
        (LiSSAConfig, {"hvp_batch_size": 0}, "hvp_batch_size"),
        (ArnoldiConfig, {"hessian_reg": -1.0}, "hessian_reg"),
        (ArnoldiConfig, {"arnoldi_dim": 1}, "arnoldi_dim"),
        (ArnoldiConfig, {"layers": ()}, "layers"),
        (ArnoldiConfig, {"hessian_points": 0}, "hessian_points"),
    ],
)
def test_bad_configs_raise_config_error(cls, values, match) -> None:
    with pytest.raises(ConfigError, match=match):
        cls(**values)
    with pytest.raises(ConfigError, match="unknown config key"):
        cls.from_dict({"dampin": 1.0})


def test_lissa_divergence_is_reported(toy, tmp_path: Path) -> None:
    model, train, x, targets = toy
    method = _fit(_lissa_small(scale=1e-4, depth=600, repeats=1), model, train, tmp_path)
    with pytest.raises(RuntimeError, match="increase scale"):
        method.explain(x, targets)


def test_arnoldi_func_embeddings_equal_captums(toy, tmp_path: Path) -> None:
    """The vmapped embedding path gives captum's own embeddings (its per-example loop)."""
    model, train, x, targets = toy
    fitted = {
        path: _fit(_arnoldi_small(embeddings=path), model, train, tmp_path / path)
        for path in ("func", "captum")
    }
    torch.testing.assert_close(fitted["func"].train_emb_, fitted["captum"].train_emb_, rtol=1e-4, atol=1e-6)
    func, captum = (fitted[p].explain(x, targets) for p in ("func", "captum"))
    torch.testing.assert_close(func, captum, rtol=1e-4, atol=1e-6)
    # and for a layer subset, where the other parameters stay frozen
    sub = {
        path: _fit(
            _arnoldi_small(embeddings=path, layers=("classifier",)), model, train, tmp_path / f"s{path}"
        )
        for path in ("func", "captum")
    }
    torch.testing.assert_close(sub["func"].explain(x, targets), sub["captum"].explain(x, targets))

"""TRAK: equality with a plain traker run and with the formula, cache, determinism, targets, bad input.

Two references. (1) traker's own staged API written out here (TRAKer with its default CPU
projector, featurize, finalize_features, start_scoring_checkpoint, score, finalize_scores), on a
copy of the same model with the same seed and proj_dim; :mod:`methods.trak` reaches the scores
through its own code path (cached features, traker's components at explain time), so the two can
disagree. (2) The TRAK formula written out in float64 (per-sample margin gradients by plain
autograd, one sample at a time; the inverse by hand), with only traker's random matrix taken from
traker: it checks traker and the method alike, and the out_to_loss=false ablation.

The toy task has 48 training points and 195 parameters, fewer than any allowed proj_dim (> 100):
``Phi^T Phi`` is singular there, so the toy tests use ``lambda_reg > 0``.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from harness.cache import FILES, Cache
from harness.config import ConfigError
from harness.protocols import DataError, NotFittedError, Split
from methods.trak import TRAK, TRAKConfig

TOY = TRAKConfig(proj_dim=128, lambda_reg=1e-2, batch_size=32)
#: for the float64 formula: the float32 method's error grows like 1 / lambda (measured: 7e-4, 9e-5,
#: 8e-6 of the largest score at lambda 1e-2, 1e-1, 1), so the comparison uses a well-conditioned lambda
FORMULA = replace(TOY, lambda_reg=1.0)


# ----- helpers ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy(toy_setup):
    """(model, train, x, targets): the toy model, its training split, 10 test points, predictions."""
    _, data, model = toy_setup
    x = data.test.inputs[:10]
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    return model, data.train, x, targets


def _fit(config: TRAKConfig, model: nn.Module, train: Split, root: Path, cache: Cache | None = None) -> TRAK:
    method = TRAK(config)
    method.fit(model, train, cache=cache if cache is not None else Cache(root))
    return method


def _direct_traker(
    model: nn.Module, train: Split, x: torch.Tensor, targets: torch.Tensor, cfg: TRAKConfig, save_dir: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    """traker's pipeline as its README shows it: ``(scores (n_test, n_train), self-scores (n_train,))``."""
    from trak import TRAKer

    model = copy.deepcopy(model).cpu().eval()
    traker = TRAKer(
        model=model,
        task="image_classification",
        train_set_size=len(train),
        save_dir=str(save_dir),
        device="cpu",
        proj_dim=cfg.proj_dim,
        projector_seed=cfg.seed,
        use_half_precision=False,
        lambda_reg=cfg.lambda_reg,
        logging_level=logging.WARNING,
    )
    traker.load_checkpoint(model.state_dict(), model_id=0)
    batch = 16  # not the method's batch size: per-sample results must not depend on it
    for i in range(0, len(train), batch):
        xb, yb = train.inputs[i : i + batch], train.y[i : i + batch]
        traker.featurize(batch=(xb, yb), num_samples=len(yb))
    traker.finalize_features()

    traker.start_scoring_checkpoint(
        exp_name="test", checkpoint=model.state_dict(), model_id=0, num_targets=len(x)
    )
    traker.score(batch=(x, targets), num_samples=len(x))
    scores = torch.from_numpy(np.array(traker.finalize_scores(exp_name="test"))).T  # (n_test, n_train)

    traker.start_scoring_checkpoint(
        exp_name="train", checkpoint=model.state_dict(), model_id=0, num_targets=len(train)
    )
    traker.score(batch=(train.materialise(), train.y), num_samples=len(train))
    self_scores = torch.from_numpy(np.array(traker.finalize_scores(exp_name="train"))).diagonal()
    return scores, self_scores


def _formula(
    model: nn.Module, train: Split, x: torch.Tensor, targets: torch.Tensor, cfg: TRAKConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The TRAK formula in float64: ``(A (n_test, n_train), self-scores (n_train,), Q (n_train,))``.

    ``A[j, i] = [Phi (Phi^T Phi + lambda I)^{-1} phi(x_j, c_j)]_i`` and the self-score
    ``[Phi (Phi^T Phi + lambda I)^{-1}]_i . phi_i``, both BEFORE the factor ``Q_ii = 1 - p_i``;
    ``phi = P^T grad f / sqrt(n_params)`` with ``f`` the margin ``logit_c - logsumexp_{k != c} logit_k``.
    The inverse is rescaled by the mean of its absolute entries, as traker does (a positive factor).
    """
    from trak.projectors import BasicProjector, ProjectionType

    net = copy.deepcopy(model).cpu().double().eval()
    params = list(net.parameters())
    n_params = sum(p.numel() for p in params)

    def margin_grad(xi: torch.Tensor, c: int) -> torch.Tensor:
        logits = net(xi[None].double())[0]
        margin = logits[c] - torch.logsumexp(torch.cat([logits[:c], logits[c + 1 :]]), dim=0)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(margin, params)])

    grads = torch.stack([margin_grad(xi, int(c)) for xi, c in zip(train.materialise(), train.y, strict=True)])
    target_grads = torch.stack([margin_grad(xi, int(c)) for xi, c in zip(x, targets, strict=True)])
    # traker's random matrix, read off by projecting the identity: the only part taken from traker
    projector = BasicProjector(
        grad_dim=n_params, proj_dim=cfg.proj_dim, seed=cfg.seed, proj_type=ProjectionType.normal, device="cpu"
    )
    matrix = projector.project(torch.eye(n_params), model_id=0).double()  # (n_params, proj_dim)
    phi = grads @ matrix / n_params**0.5
    phi_x = target_grads @ matrix / n_params**0.5
    inverse = torch.linalg.inv(phi.T @ phi + cfg.lambda_reg * torch.eye(cfg.proj_dim, dtype=torch.float64))
    features = phi @ (inverse / inverse.abs().mean())
    with torch.no_grad():
        probs = torch.softmax(net(train.materialise().double()), dim=1)
    q = 1 - probs[torch.arange(len(train)), train.y]
    return phi_x @ features.T, (features * phi).sum(dim=1), q


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    """Equal up to ``rel`` times the largest entry (float32 rounding of the matmuls)."""
    scale = float(expected.abs().max())
    assert scale > 0
    torch.testing.assert_close(actual.double().cpu(), expected.double(), rtol=rel, atol=rel * scale)


# ----- (1) equality with traker ---------------------------------------------------------------
def test_equals_direct_traker_run(toy, tmp_path: Path) -> None:
    model, train, x, targets = toy
    method = _fit(TOY, model, train, tmp_path / "cache")
    expected, expected_self = _direct_traker(model, train, x, targets, TOY, tmp_path / "trak")
    _assert_close(method.explain(x, targets), expected)
    _assert_close(method.self_influence(), expected_self)


def test_equals_the_formula_in_float64(toy, tmp_path: Path) -> None:
    """Scores and self-influence are ``A * Q`` and ``self-score * Q`` of the formula, Q = 1 - p_i."""
    model, train, x, targets = toy
    scores, self_scores, q = _formula(model, train, x, targets, FORMULA)
    assert q.max() / q.min() > 10  # Q reweights the training points: the test could see it missing
    method = _fit(FORMULA, model, train, tmp_path)
    _assert_close(method.explain(x, targets), scores * q, rel=1e-4)
    _assert_close(method.self_influence(), self_scores * q, rel=1e-4)


def test_without_out_to_loss_drops_q_and_shares_the_cache(toy, tmp_path: Path) -> None:
    """out_to_loss=false (the ablation) gives the formula without Q, from the same cache entry."""
    model, train, x, targets = toy
    scores, self_scores, _ = _formula(model, train, x, targets, FORMULA)
    cache = Cache(tmp_path)
    with_q = _fit(FORMULA, model, train, tmp_path, cache)
    without_q = _fit(replace(FORMULA, out_to_loss=False), model, train, tmp_path, cache)
    assert (cache.stats.hits, cache.stats.misses) == (1, 1)
    _assert_close(without_q.explain(x, targets), scores, rel=1e-4)
    _assert_close(without_q.self_influence(), self_scores, rel=1e-4)
    assert not torch.allclose(without_q.explain(x, targets), with_q.explain(x, targets), rtol=1e-2, atol=0)
    assert without_q.diagnostics()["out_to_loss"] is False


# ----- (2) shapes, dtype, finiteness ------------------------------------------------------------
def test_shapes_dtype_finite(toy, tmp_path: Path) -> None:
    model, train, x, targets = toy
    method = _fit(TOY, model, train, tmp_path)
    device = next(model.parameters()).device
    scores = method.explain(x, targets)
    assert scores.shape == (len(x), len(train))
    assert scores.dtype == torch.float32 and scores.device == device
    assert torch.isfinite(scores).all() and scores.abs().max() > 0
    self_influence = method.self_influence()
    assert self_influence.shape == (len(train),) and self_influence.dtype == torch.float32
    assert torch.isfinite(self_influence).all()
    assert method.explain(x[:0], targets[:0]).shape == (0, len(train))
    # one explain call over all points equals per-point calls (batching does not mix rows)
    _assert_close(method.explain(x[3:4], targets[3:4]), scores[3:4])
    diagnostics = method.diagnostics()
    assert diagnostics["proj_dim"] == 128 and diagnostics["n_params"] == sum(
        p.numel() for p in model.parameters()
    )


# ----- (3) cache ----------------------------------------------------------------------------------
def test_cache_hit_reuses_features_and_gives_identical_scores(
    toy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, train, x, targets = toy
    scratch: list[Path] = []
    scratch_dir = TRAK.scratch_dir

    def recorded_scratch_dir(self: TRAK) -> Path:
        scratch.append(scratch_dir(self))
        return scratch[-1]

    monkeypatch.setattr(TRAK, "scratch_dir", recorded_scratch_dir)
    cache = Cache(tmp_path)
    first = _fit(TOY, model, train, tmp_path, cache)
    assert (cache.stats.hits, cache.stats.misses) == (0, 1)
    assert first.diagnostics()["features_from_cache"] is False
    scores = first.explain(x, targets)
    # traker's save_dir was a scratch folder, removed once its arrays were copied into the artefact
    assert len(scratch) == 1 and not scratch[0].exists()

    def no_featurizing(*args, **kwargs):
        raise AssertionError("a cache hit must not featurize again")

    monkeypatch.setattr(TRAK, "compute", no_featurizing)
    second = _fit(TOY, model, train, tmp_path, Cache(tmp_path, stats=cache.stats))
    assert (cache.stats.hits, cache.stats.misses) == (1, 1)
    assert second.diagnostics()["features_from_cache"] is True
    assert second.diagnostics()["n_params"] == first.diagnostics()["n_params"]  # meta read back
    assert torch.equal(second.explain(x, targets), scores)
    assert torch.equal(second.self_influence(), first.self_influence())
    assert torch.equal(second.features_, first.features_)

    # the entry is complete: tensors, no library folder
    entries = [p for p in tmp_path.rglob("*") if p.is_dir() and (p / "key.json").exists()]
    assert len(entries) == 1
    names = {p.name for p in entries[0].iterdir()}
    assert {"key.json", "meta.json", "tensors.safetensors"} <= names and FILES not in names

    # another option is another entry (a miss), never a silent hit
    monkeypatch.undo()
    _fit(replace(TOY, seed=1), model, train, tmp_path, Cache(tmp_path, stats=cache.stats))
    assert cache.stats.misses == 2


def test_cache_key(toy, tmp_path: Path) -> None:
    """The base class' key: every option but out_to_loss, traker's version and the generator's device."""
    model, train, _, _ = toy
    method = _fit(TOY, model, train, tmp_path)
    key = method.cache_key(model, train)
    assert key["method"] == (TRAK.name or "TRAK") and key["traker"]
    assert key["device"] == next(model.parameters()).device.type
    assert "out_to_loss" not in key["config"] and key["config"]["proj_dim"] == TOY.proj_dim


# ----- (4) determinism ------------------------------------------------------------------------------
def test_deterministic_under_seed(toy, tmp_path: Path) -> None:
    model, train, x, targets = toy
    a = _fit(TOY, model, train, tmp_path / "a").explain(x, targets)
    b = _fit(TOY, model, train, tmp_path / "b").explain(x, targets)
    assert torch.equal(a, b)
    c = _fit(replace(TOY, seed=7), model, train, tmp_path / "c").explain(x, targets)
    assert not torch.allclose(a, c, rtol=1e-3, atol=0)


# ----- (5) the target class -------------------------------------------------------------------------
def test_target_class_matters(toy, tmp_path: Path) -> None:
    model, train, x, targets = toy
    method = _fit(TOY, model, train, tmp_path / "cache")
    num_classes = int(model(x[:1]).shape[1])
    other = (targets + 1) % num_classes
    predicted, moved = method.explain(x, targets), method.explain(x, other)
    for j in range(len(x)):  # every row changes, not just some
        assert not torch.allclose(predicted[j], moved[j], rtol=1e-3, atol=0)
    # and the other target is what traker itself gives for that target
    expected, _ = _direct_traker(model, train, x, other, TOY, tmp_path / "trak")
    _assert_close(moved, expected)


# ----- (6) bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize("proj_dim", [1, 64, 100])
def test_proj_dim_too_small_for_traker(proj_dim: int) -> None:
    with pytest.raises(ConfigError, match=r"proj_dim >= 101"):
        TRAKConfig(proj_dim=proj_dim)
    TRAKConfig(proj_dim=101)


@pytest.mark.parametrize(
    "values",
    [
        {"lambda_reg": -1.0},
        {"batch_size": 0},
        {"seed": -1},
        {"projection": "sparse"},
        {"model_output": "clip"},
        {"out_to_loss": "maybe"},
    ],
)
def test_bad_config_values(values: dict) -> None:
    with pytest.raises(ConfigError):
        TRAKConfig.from_dict(values)


def test_unknown_config_key() -> None:
    with pytest.raises(ConfigError, match="unknown config key"):
        TRAKConfig.from_dict({"proj_dims": 512})


def test_explain_before_fit() -> None:
    method = TRAK(TOY)
    with pytest.raises(NotFittedError):
        method.explain(torch.zeros(2, 8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(NotFittedError):
        method.self_influence()


def test_singular_kernel_without_ridge(toy, tmp_path: Path) -> None:
    model, train, x, targets = toy
    with pytest.raises(DataError, match="lambda_reg > 0 or proj_dim <= 48"):
        _fit(replace(TOY, lambda_reg=0.0), model, train, tmp_path)
    with pytest.raises(DataError, match="lambda_reg > 0"):  # quick(): proj_dim 512 on 48 points
        _fit(TRAKConfig.quick(), model, train, tmp_path)
    smoke = _fit(TRAKConfig.smoke(), model, train, tmp_path)  # its ridge makes the 48-point toy work
    assert bool(torch.isfinite(smoke.explain(x, targets)).all())
    assert bool(torch.isfinite(smoke.self_influence()).all())


def test_bad_targets(toy, tmp_path: Path) -> None:
    model, train, x, targets = toy
    method = _fit(TOY, model, train, tmp_path)
    with pytest.raises(DataError, match="targets"):
        method.explain(x, targets[:-1])
    with pytest.raises(DataError, match="classes"):
        method.explain(x, torch.full_like(targets, 99))


def test_presets_and_declarations() -> None:
    assert TRAKConfig.paper().proj_dim == 2048 and TRAKConfig.paper().lambda_reg == 0.0
    assert TRAKConfig.smoke() == replace(TRAKConfig.quick(), lambda_reg=1e-3)
    assert TRAKConfig.paper().out_to_loss and TRAKConfig.quick().out_to_loss  # Q is part of TRAK
    assert 100 < TRAKConfig.quick().proj_dim < 2048
    assert TRAK.attributes_through == "all parameters"
    assert TRAK.supports == {"self_influence", "cache"}


# ----- real data: why TRAK's top-5 rarely share the predicted class ---------------------------------
@pytest.mark.slow
def test_mnist_top5_taken_by_least_confident_points(mnist_small_setup, tmp_path: Path) -> None:
    """On MNIST the factor Q = 1 - p_i decides TRAK's top-5, not the similarity to the test point.

    The model fits its training set (quick: trained to the loss plateau), so Q spans orders of
    magnitude; its top-5 then come from the few least confident training points, whatever their
    class. The same scores without Q (the out_to_loss=false ablation) pick same-class points.
    """
    _, data, model = mnist_small_setup
    train = data.train.subset(300)
    x = data.test.inputs[:40]
    device = next(model.parameters()).device
    with torch.no_grad():
        targets = model(x.to(device)).argmax(dim=1)
    config = TRAKConfig(proj_dim=128, batch_size=100)  # 300 > 128: no ridge
    cache = Cache(tmp_path)
    with_q = _fit(config, model, train, tmp_path, cache)
    without_q = _fit(replace(config, out_to_loss=False), model, train, tmp_path, cache)
    q = with_q.out_to_loss_[:, 0].cpu().double()
    labels, predicted = train.y, targets.cpu()[:, None]
    top_q = with_q.explain(x, targets).topk(5, dim=1).indices.cpu()
    top_plain = without_q.explain(x, targets).topk(5, dim=1).indices.cpu()
    share_q = float((labels[top_q] == predicted).double().mean())
    share_plain = float((labels[top_plain] == predicted).double().mean())
    chance = float(torch.bincount(labels, minlength=10).double().div(len(train)).square().sum())
    # the top-5 with Q sit in the training set's least confident tail
    q_rank = q.argsort().argsort().double() / (len(q) - 1)  # 0 = most confident, 1 = least
    stats = (share_q, share_plain, chance, float(q_rank[top_q].median()), float(q_rank[top_plain].median()))
    # measured: shares 0.14 with Q, 0.70 without, chance 0.104; median Q quantile of the picks 0.98
    # with Q (the least confident 2%), 0.49 without (typical points)
    assert float(q_rank[top_q].median()) > 0.9, stats
    assert share_plain > 0.6 and share_plain > share_q + 0.3, stats

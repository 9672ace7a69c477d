"""GradDot, GradCos and TracIn: exactness against independent references, projection, cache, bad input.

Exactness checks run in float64 on a copy of the toy model (its checkpoints are cast on the fly).
The reference gradients are taken with plain ``torch.autograd.grad``, one sample at a time, with
no ``torch.func`` and no projection.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from harness.cache import Cache
from harness.config import ConfigError
from harness.protocols import CHECKPOINTS_ATTR, CapabilityError, Checkpoint, DataError, NotFittedError, Split
from methods import _gradients
from methods._gradients import GaussianProjector
from methods.graddot import GradCos, GradCosConfig, GradDot, GradDotConfig
from methods.tracin import TracIn, TracInConfig, select_checkpoints

EXACT = {"proj_dim": None}


# ----- fixtures and helpers ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy64(toy_setup):
    """(model64, train64, x64, targets): the toy model and data in float64, targets = predictions."""
    _, data, model = toy_setup
    model64 = copy.deepcopy(model).double().eval()
    train = Split("train", data.train.materialise().double(), data.train.y)
    x = data.test.inputs[:7].double()
    with torch.no_grad():
        targets = model64(x).argmax(dim=1)
    return model64, train, x, targets


def _fit(method, model: nn.Module, train: Split, path: Path):
    method.fit(model, train, cache=Cache(path))
    return method


def _with_checkpoints(model: nn.Module, checkpoints: list[Checkpoint]) -> nn.Module:
    clone = copy.deepcopy(model)
    setattr(clone, CHECKPOINTS_ATTR, checkpoints)
    return clone


def _at_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    clone = copy.deepcopy(model)
    clone.load_state_dict(state)  # copies into the float64 parameters
    setattr(clone, CHECKPOINTS_ATTR, [])
    return clone.eval()


def _reference_grads(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, kind: str) -> torch.Tensor:
    """``(n, P)`` float64 gradients, one ``torch.autograd.grad`` call per sample."""
    params = list(model.parameters())
    rows = []
    for xi, ci in zip(x, classes, strict=True):
        logits = model(xi[None])
        if kind == "loss":
            out = nn.functional.cross_entropy(logits, ci[None])
        else:
            out = logits[0, ci]
        grads = torch.autograd.grad(out, params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-6) -> None:
    """Equal up to float32 rounding of the output: ``rel`` times the largest entry."""
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rel, atol=rel * scale)


# ----- exactness ---------------------------------------------------------------------------------
def test_tracin_one_checkpoint_lr1_equals_graddot(toy64, tmp_path):
    model, train, x, targets = toy64
    state = {k: v.clone() for k, v in model.state_dict().items()}
    one = _with_checkpoints(model, [Checkpoint(epoch=1, lr=1.0, state=state)])
    for proj_dim in (None, 16):
        tracin = _fit(TracIn(TracInConfig(proj_dim=proj_dim)), one, train, tmp_path / f"t{proj_dim}")
        dot_cfg = GradDotConfig(
            proj_dim=proj_dim, test_gradient="loss", train_gradient="loss", normalise_test=False
        )
        dot = _fit(GradDot(dot_cfg), one, train, tmp_path / f"d{proj_dim}")
        a, b = tracin.explain(x, targets), dot.explain(x, targets)
        assert a.shape == (len(x), len(train)) and a.dtype == torch.float32
        assert torch.count_nonzero(a) > 0
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6 * float(b.abs().max()))
        torch.testing.assert_close(tracin.self_influence(), dot.self_influence(), rtol=1e-6, atol=0.0)


@pytest.mark.parametrize(
    ("test_gradient", "train_gradient", "normalise_test", "sign"),
    [
        ("loss", "loss", False, 1.0),
        ("logit", "logit", False, 1.0),
        ("logit", "loss", False, -1.0),
        ("logit", "loss", True, -1.0),  # the paper's setting
        ("loss", "logit", True, -1.0),
    ],
)
def test_graddot_exact_equals_per_sample_autograd(
    toy64, tmp_path, test_gradient, train_gradient, normalise_test, sign
):
    model, train, x, targets = toy64
    cfg = GradDotConfig(
        proj_dim=None,
        test_gradient=test_gradient,
        train_gradient=train_gradient,
        normalise_test=normalise_test,
    )
    method = _fit(GradDot(cfg), model, train, tmp_path)
    g_test = _reference_grads(model, x, targets, test_gradient)
    g_train = _reference_grads(model, train.materialise(), train.y, train_gradient)
    assert g_train.shape == (len(train), sum(p.numel() for p in model.parameters()))
    if normalise_test:
        g_test = g_test / torch.linalg.vector_norm(g_test, dim=1, keepdim=True)
    _assert_close(method.explain(x, targets), sign * g_test @ g_train.T)
    _assert_close(method.self_influence(), (g_train * g_train).sum(dim=1))


def test_graddot_paper_preset_is_loss_train_unit_logit_test(toy64, tmp_path):
    """paper(): CE-loss training gradients, unit predicted-logit test gradients, sign -1 (proponents > 0)."""
    model, train, x, targets = toy64
    cfg = GradDotConfig.paper()
    assert (cfg.train_gradient, cfg.test_gradient, cfg.normalise_test, cfg.projection) == (
        "loss",
        "logit",
        True,
        128,
    )
    assert GradDotConfig() == cfg and GradCosConfig.paper().train_gradient == "loss"
    method = _fit(GradDot(replace(cfg, proj_dim=None)), model, train, tmp_path)
    g_test = _reference_grads(model, x, targets, "logit")
    g_train = _reference_grads(model, train.materialise(), train.y, "loss")
    unit = g_test / torch.linalg.vector_norm(g_test, dim=1, keepdim=True)
    _assert_close(method.explain(x, targets), -unit @ g_train.T)
    _assert_close(method.self_influence(), (g_train * g_train).sum(dim=1))
    assert "CE-loss" in method.attributes_through and "exact" in method.attributes_through


def test_graddot_normalise_test_rescales_each_test_point_only(toy64, tmp_path):
    model, train, x, targets = toy64
    fields = {"proj_dim": 16, "seed": 2}
    unit = _fit(GradDot(GradDotConfig(**fields)), model, train, tmp_path / "unit")
    raw = _fit(GradDot(GradDotConfig(**fields, normalise_test=False)), model, train, tmp_path / "raw")
    a, b = unit.explain(x, targets).double(), raw.explain(x, targets).double()
    ratio = b / a  # one factor per test point: ||R^T g_test(x, c)||
    factor = ratio[:, :1]
    _assert_close(ratio, factor.expand_as(ratio), rel=1e-4)
    # a positive factor per row keeps each test point's ranking; it differs across test points
    assert float(factor.min()) > 0 and float(factor.max() / factor.min()) > 1.05


def test_graddot_self_influence_sees_wrong_labels(toy_setup, tmp_path):
    """Loss gradients at the training label grow where the model contradicts the label: wrong labels rank
    high. The old logit-gradient setting ranked them no better than chance (mislabel detection 0.22)."""
    _, data, model = toy_setup
    train = data.train
    generator = torch.Generator().manual_seed(0)
    flipped = torch.randperm(len(train), generator=generator)[: len(train) // 5]
    n_classes = int(train.y.max()) + 1
    y = train.y.clone()
    y[flipped] = (
        y[flipped] + 1 + torch.randint(n_classes - 1, (len(flipped),), generator=generator)
    ) % n_classes
    corrupt = Split("train", train.materialise(), y)
    is_flipped = torch.zeros(len(train), dtype=torch.bool)
    is_flipped[flipped] = True

    def auc(scores: torch.Tensor) -> float:
        """Probability that a flipped point outranks a clean one."""
        pos, neg = scores[is_flipped].double(), scores[~is_flipped].double()
        return float((pos[:, None] > neg[None, :]).double().mean())

    paper = _fit(GradDot(GradDotConfig.paper()), model, corrupt, tmp_path / "paper")
    old = GradDotConfig(train_gradient="logit", normalise_test=False)
    logit = _fit(GradDot(old), model, corrupt, tmp_path / "logit")
    assert auc(paper.self_influence()) > 0.9
    assert auc(logit.self_influence()) < 0.75


def test_gradcos_is_graddot_with_unit_gradients(toy64, tmp_path):
    model, train, x, targets = toy64
    for kind in ("logit", "loss"):
        fields = {
            "proj_dim": 32,
            "seed": 3,
            "test_gradient": kind,
            "train_gradient": kind,
            "normalise_test": False,
        }
        dot = _fit(GradDot(GradDotConfig(**fields)), model, train, tmp_path / f"dot-{kind}")
        cos = _fit(GradCos(GradCosConfig(**fields)), model, train, tmp_path / f"cos-{kind}")
        # ||R^T g_test||^2: GradDot's self-influence on the test points labelled with their targets
        on_test = _fit(
            GradDot(GradDotConfig(**fields)), model, Split("t", x, targets), tmp_path / f"t-{kind}"
        )
        test_norms = on_test.self_influence().double().sqrt()
        train_norms = dot.self_influence().double().sqrt()
        expected = dot.explain(x, targets).double() / test_norms[:, None] / train_norms[None, :]
        scores = cos.explain(x, targets)
        _assert_close(scores, expected, rel=1e-5)
        assert float(scores.abs().max()) <= 1.0 + 1e-6
        assert not torch.allclose(scores.double(), dot.explain(x, targets).double())


def test_tracin_two_checkpoints_is_lr_weighted_sum_of_graddots(toy64, tmp_path):
    model, train, x, targets = toy64
    saved = getattr(model, CHECKPOINTS_ATTR)
    assert len(saved) >= 2
    early, late = saved[len(saved) // 4], saved[-1]
    lrs = (0.5, 2.0)
    two = _with_checkpoints(
        model,
        [
            Checkpoint(epoch=early.epoch, lr=lrs[0], state=early.state),
            Checkpoint(epoch=late.epoch, lr=lrs[1], state=late.state),
        ],
    )
    tracin = _fit(TracIn(TracInConfig(proj_dim=24, seed=5)), two, train, tmp_path / "tracin")
    expected = torch.zeros(len(x), len(train), dtype=torch.float64)
    expected_si = torch.zeros(len(train), dtype=torch.float64)
    for i, (lr, ck) in enumerate(zip(lrs, (early, late), strict=True)):
        cfg = GradDotConfig(
            proj_dim=24, seed=5, test_gradient="loss", train_gradient="loss", normalise_test=False
        )
        dot = _fit(GradDot(cfg), _at_state(model, ck.state), train, tmp_path / f"dot{i}")
        expected += lr / 2 * dot.explain(x, targets).double()  # the mean over the 2 checkpoints
        expected_si += lr / 2 * dot.self_influence().double()
    _assert_close(tracin.explain(x, targets), expected, rel=1e-5)
    _assert_close(tracin.self_influence(), expected_si, rel=1e-5)
    # the checkpoints differ, so the weighting matters: equal weights give another answer
    equal = _with_checkpoints(model, [Checkpoint(c.epoch, 1.0, c.state) for c in (early, late)])
    other = _fit(TracIn(TracInConfig(proj_dim=24, seed=5)), equal, train, tmp_path / "equal")
    assert not torch.allclose(other.explain(x, targets).double(), expected, rtol=1e-3)


def test_tracin_uses_every_saved_checkpoint(toy_setup, tmp_path):
    _, data, model = toy_setup
    method = _fit(TracIn(TracInConfig.paper()), model, data.train, tmp_path)
    n_saved = len(getattr(model, CHECKPOINTS_ATTR))
    assert method.diagnostics()["n_checkpoints"] == n_saved
    assert method.train_grads_.shape == (len(data.train), n_saved * 128)
    x = data.test.inputs[:5]
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    scores = method.explain(x, targets)
    assert scores.shape == (5, len(data.train)) and torch.isfinite(scores).all()
    assert (method.self_influence() > 0).all()


def test_tracin_averages_over_checkpoints(toy64, tmp_path):
    """The reference divides the learning-rate-weighted sum by the number of checkpoints: the same
    checkpoint twice gives the scores of that checkpoint once (the old sum gave twice as much)."""
    model, train, x, targets = toy64
    last = getattr(model, CHECKPOINTS_ATTR)[-1]
    once = _with_checkpoints(model, [Checkpoint(last.epoch, 0.3, last.state)])
    twice = _with_checkpoints(model, [Checkpoint(last.epoch, 0.3, last.state)] * 2)
    a = _fit(TracIn(TracInConfig(proj_dim=8)), once, train, tmp_path / "once")
    b = _fit(TracIn(TracInConfig(proj_dim=8)), twice, train, tmp_path / "twice")
    _assert_close(b.explain(x, targets), a.explain(x, targets), rel=1e-6)
    _assert_close(b.self_influence(), a.self_influence(), rel=1e-6)


def test_select_checkpoints():
    assert select_checkpoints(10, None) == list(range(10))
    assert select_checkpoints(4, 4) == select_checkpoints(4, 9) == [0, 1, 2, 3]
    assert select_checkpoints(10, 3) == [3, 6, 9]
    assert select_checkpoints(4, 3) == [1, 2, 3]
    assert select_checkpoints(20, 3) == [6, 13, 19]
    assert select_checkpoints(7, 1) == [6]
    for n in range(1, 30):
        for k in range(1, n + 1):
            picks = select_checkpoints(n, k)
            assert len(picks) == k and picks[-1] == n - 1 and picks == sorted(set(picks))
            gaps = [q - p for p, q in zip([-1, *picks], picks, strict=False)]
            assert max(gaps) - min(gaps) <= 1  # evenly spaced


def test_tracin_max_checkpoints_uses_the_selected_ones(toy64, tmp_path):
    model, train, x, targets = toy64
    saved = getattr(model, CHECKPOINTS_ATTR)
    assert len(saved) > 3
    picks = select_checkpoints(len(saved), 3)
    quick = _fit(TracIn(replace(TracInConfig.quick(), proj_dim=8)), model, train, tmp_path / "quick")
    info = quick.diagnostics()
    assert info["n_checkpoints"] == 3 and info["n_checkpoints_available"] == len(saved)
    assert info["checkpoint_epochs"] == [saved[i].epoch for i in picks]
    assert info["checkpoint_epochs"][-1] == saved[-1].epoch  # the final model is always used
    assert f"3 of {len(saved)} checkpoints" in quick.attributes_through
    only = _with_checkpoints(model, [saved[i] for i in picks])
    same = _fit(TracIn(TracInConfig(proj_dim=8)), only, train, tmp_path / "only")
    assert torch.equal(quick.explain(x, targets), same.explain(x, targets))
    every = _fit(TracIn(TracInConfig(proj_dim=8)), model, train, tmp_path / "all")
    assert every.diagnostics()["n_checkpoints"] == len(saved)
    assert not torch.allclose(every.explain(x, targets), quick.explain(x, targets))


def test_graddot_train_gradients_are_tracins_final_block(toy_setup, tmp_path):
    """Same projection seed and dimension: GradDot's training gradients equal TracIn's block for the final
    checkpoint (stored unweighted; TracIn weights it by eta_T / T), computed apart (no shared cache)."""
    _, data, model = toy_setup
    cache = Cache(tmp_path)
    tracin = TracIn(TracInConfig(proj_dim=16, seed=4))
    tracin.fit(model, data.train, cache=cache)
    for cls in (GradDot, GradCos):
        dot = cls(cls.Config(proj_dim=16, seed=4))
        dot.fit(model, data.train, cache=cache)
        assert torch.equal(dot.train_grads_, tracin.train_grads_[:, -16:])
    # every method missed the cache once: each cold fit is that method's own cost
    assert (cache.stats.misses, cache.stats.hits) == (3, 0)
    # the final block with its weight: TracIn on the final checkpoint alone is GradDot's loss-loss product
    last = getattr(model, CHECKPOINTS_ATTR)[-1]
    final = _with_checkpoints(model, [Checkpoint(last.epoch, 0.25, last.state)])
    one = _fit(TracIn(TracInConfig(proj_dim=16, seed=4)), final, data.train, tmp_path / "one")
    loss = GradDotConfig(proj_dim=16, seed=4, test_gradient="loss", normalise_test=False)
    dot = _fit(GradDot(loss), model, data.train, tmp_path / "dot")
    x = data.test.inputs[:5]
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    _assert_close(one.explain(x, targets), 0.25 * dot.explain(x, targets).double(), rel=1e-5)


# ----- projection -------------------------------------------------------------------------------
def test_projection_preserves_inner_products(toy64, tmp_path):
    model, train, x, targets = toy64
    kinds = {"test_gradient": "loss", "train_gradient": "loss", "normalise_test": False}
    exact = _fit(GradDot(GradDotConfig(proj_dim=None, **kinds)), model, train, tmp_path / "exact")
    wide = _fit(GradDot(GradDotConfig(proj_dim=2048, **kinds)), model, train, tmp_path / "wide")
    narrow = _fit(GradDot(GradDotConfig(proj_dim=4, **kinds)), model, train, tmp_path / "narrow")
    reference = exact.explain(x, targets).double().flatten()

    def corr(method: GradDot) -> float:
        scores = method.explain(x, targets).double().flatten()
        return float(torch.corrcoef(torch.stack([scores, reference]))[0, 1])

    assert corr(wide) > 0.9
    assert corr(narrow) < corr(wide)  # the bound tightens with the dimension: the check can fail


def test_projection_is_deterministic_under_its_seed(toy64, tmp_path):
    model, train, x, targets = toy64
    runs = [
        _fit(GradDot(GradDotConfig(proj_dim=16, seed=s)), model, train, tmp_path / f"{i}")
        for i, s in enumerate((7, 7, 8))
    ]
    a, b, c = (m.explain(x, targets) for m in runs)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_projector_chunks_and_budget(monkeypatch):
    monkeypatch.setattr(_gradients, "CHUNK_BYTES", 4 * 16 * 50)  # 50 rows per chunk at proj_dim 16
    full = GaussianProjector(195, 16, seed=1, device=torch.device("cpu"), dtype=torch.float64)
    none_kept = GaussianProjector(
        195, 16, seed=1, device=torch.device("cpu"), dtype=torch.float64, memory_mb=0
    )
    assert full.n_chunks == 4 and none_kept.kept_chunks == 0
    matrix = full.matrix()
    assert matrix.shape == (195, 16)
    assert torch.equal(matrix, none_kept.matrix())
    # chunks are distinct draws (no repeated seed) with variance 1 / proj_dim
    assert not torch.allclose(matrix[:50], matrix[50:100])
    assert abs(float(matrix.var()) * 16 - 1.0) < 0.15
    u = torch.randn(3, 195, dtype=torch.float64)
    torch.testing.assert_close(none_kept.project(u), u @ matrix)
    assert none_kept.regenerated > 0
    other = GaussianProjector(195, 16, seed=2, device=torch.device("cpu"), dtype=torch.float64)
    assert not torch.allclose(matrix, other.matrix())


# ----- cache ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method_cls", [GradDot, GradCos, TracIn])
def test_cache_hit_gives_identical_scores(toy_setup, tmp_path, method_cls):
    """A warm fit reads the cold fit's entry and gives bitwise the same explanations and self-influence."""
    _, data, model = toy_setup
    x = data.test.inputs[:6]
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    cache = Cache(tmp_path)
    cold = method_cls(method_cls.Config.paper())
    cold.fit(model, data.train, cache=cache)
    warm = method_cls(method_cls.Config.paper())
    warm.fit(model, data.train, cache=cache)
    assert (cache.stats.misses, cache.stats.hits) == (1, 1)
    assert not cold.from_cache_ and warm.from_cache_
    assert torch.equal(cold.explain(x, targets), warm.explain(x, targets))
    assert warm.attributes_through == cold.attributes_through
    if "self_influence" in method_cls.supports:
        assert torch.equal(cold.self_influence(), warm.self_influence())
    # another seed is another entry, never a silent hit
    method_cls(method_cls.Config(seed=1)).fit(model, data.train, cache=cache)
    assert cache.stats.misses == 2


@pytest.mark.parametrize(
    ("method_cls", "shared"),
    [
        (GradDot, {"test_gradient": "loss", "normalise_test": False, "projection_memory_mb": 0.5}),
        (GradCos, {"test_gradient": "loss", "projection_memory_mb": 0.5}),
        (TracIn, {"max_checkpoints": 100, "min_checkpoints": 2, "projection_memory_mb": 0.5}),
    ],
)
def test_settings_that_only_change_explain_share_the_entry(toy_setup, tmp_path, method_cls, shared):
    """Options outside the training-side artefact (``cache_ignores``) hit the paper config's entry, and
    the hit gives the scores a cold fit with those options gives."""
    _, data, model = toy_setup
    x = data.test.inputs[:6]
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    config = method_cls.Config.from_dict(shared, base=method_cls.Config.paper())
    cache = Cache(tmp_path / "shared")
    method_cls(method_cls.Config.paper()).fit(model, data.train, cache=cache)
    hit = method_cls(config)
    hit.fit(model, data.train, cache=cache)
    assert hit.from_cache_ and (cache.stats.misses, cache.stats.hits) == (1, 1)
    cold = _fit(method_cls(config), model, data.train, tmp_path / "cold")
    assert not cold.from_cache_
    assert torch.equal(hit.explain(x, targets), cold.explain(x, targets))
    # a training-side option is another entry
    method_cls(replace(config, batch_size=7)).fit(model, data.train, cache=cache)
    assert cache.stats.misses == 2


def test_tracin_checkpoint_selection_is_part_of_the_key(toy_setup, tmp_path):
    """``max_checkpoints`` is left out of the key but the checkpoints it selects are in it."""
    _, data, model = toy_setup
    assert len(getattr(model, CHECKPOINTS_ATTR)) > 2
    cache = Cache(tmp_path)
    TracIn(TracInConfig(proj_dim=8)).fit(model, data.train, cache=cache)
    TracIn(TracInConfig(proj_dim=8, max_checkpoints=2)).fit(model, data.train, cache=cache)
    assert (cache.stats.misses, cache.stats.hits) == (2, 0)


def test_graddot_and_gradcos_keep_their_own_entries(toy_setup, tmp_path):
    _, data, model = toy_setup
    keys = {}
    for cls in (GradDot, GradCos, TracIn):
        method = cls(cls.Config.paper())
        method.fit(model, data.train, cache=Cache(tmp_path / cls.__name__))
        keys[cls] = method.cache_key(model, data.train)
    assert [keys[cls]["method"] for cls in (GradDot, GradCos)] == ["graddot", "gradcos"]
    assert keys[TracIn]["method"] not in {"graddot", "gradcos"}
    assert "test_gradient" not in keys[GradDot]["config"] and keys[GradDot]["config"]["seed"] == 0
    assert keys[GradDot]["generator_device"] == "cpu"
    assert [ck["epoch"] for ck in keys[TracIn]["checkpoints"]] == [
        ck.epoch for ck in getattr(model, CHECKPOINTS_ATTR)
    ]


# ----- bad input --------------------------------------------------------------------------------
def test_config_errors():
    for cls in (GradDotConfig, GradCosConfig, TracInConfig):
        with pytest.raises(ConfigError, match="proj_dim"):
            cls(proj_dim=-1)
        with pytest.raises(ConfigError, match="proj_dim"):
            cls(proj_dim=2.5)
        with pytest.raises(ConfigError, match="batch_size"):
            cls(batch_size=0)
        with pytest.raises(ConfigError, match="unknown config key"):
            cls.from_dict({"projection_dim": 3})
        assert cls(proj_dim=0).projection is None and cls().projection == 128
    with pytest.raises(ConfigError, match="test_gradient must be one of"):
        GradDotConfig(test_gradient="hessian")
    with pytest.raises(ConfigError, match="train_gradient"):
        GradCosConfig.from_dict({"train_gradient": "margin"})
    with pytest.raises(ConfigError, match="min_checkpoints"):
        TracInConfig(min_checkpoints=0)
    for bad in (0, 2.0, True):
        with pytest.raises(ConfigError, match="max_checkpoints"):
            TracInConfig(max_checkpoints=bad)
    with pytest.raises(ConfigError, match="normalise_test"):
        GradDotConfig(normalise_test="yes")
    assert TracInConfig.paper().max_checkpoints is None and TracInConfig.quick().max_checkpoints == 3
    assert GradDotConfig.paper().test_gradient == "logit"
    assert GradDotConfig.from_dict({"test_gradient": "loss"}).test_gradient == "loss"


def test_tracin_checkpoint_errors(toy_setup, tmp_path):
    _, data, model = toy_setup
    with pytest.raises(CapabilityError, match="checkpoints.*graddot"):
        _fit(TracIn(), _with_checkpoints(model, []), data.train, tmp_path)
    saved = getattr(model, CHECKPOINTS_ATTR)
    with pytest.raises(DataError, match="train the model for at least 50 epochs"):
        _fit(TracIn(TracInConfig(min_checkpoints=50)), model, data.train, tmp_path)
    assert len(saved) >= 2  # the default minimum of 1 accepts the toy model (other tests fit it)
    zero_lr = _with_checkpoints(model, [Checkpoint(1, 0.0, saved[-1].state)])
    with pytest.raises(DataError, match="learning rate"):
        _fit(TracIn(), zero_lr, data.train, tmp_path)
    wrong = {k: v for k, v in saved[-1].state.items() if not k.startswith("classifier")}
    with pytest.raises(DataError, match="does not fit model"):
        _fit(TracIn(), _with_checkpoints(model, [Checkpoint(1, 0.1, wrong)]), data.train, tmp_path)


@pytest.mark.parametrize("method_cls", [GradDot, GradCos, TracIn])
def test_lifecycle_errors(toy_setup, tmp_path, method_cls):
    _, data, model = toy_setup
    x = data.test.inputs[:3]
    method = method_cls(method_cls.Config(proj_dim=8))
    with pytest.raises(NotFittedError):
        method.explain(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ConfigError):
        method_cls(TracInConfig() if method_cls is not TracIn else GradDotConfig())
    method.fit(model, data.train, cache=Cache(tmp_path))
    with pytest.raises(DataError, match="targets"):
        method.explain(x, torch.tensor([0, 1, 99]))
    with pytest.raises(DataError, match="targets"):
        method.explain(x, torch.tensor([0, 1]))
    if "self_influence" not in method_cls.supports:
        with pytest.raises(CapabilityError):
            method.self_influence()
    bad_labels = Split("train", data.train.materialise(), data.train.y + 10)
    with pytest.raises(DataError, match="training labels"):
        method_cls(method_cls.Config(proj_dim=8)).fit(model, bad_labels, cache=Cache(tmp_path / "bad"))


# ----- a real model -----------------------------------------------------------------------------
@pytest.mark.slow
def test_runs_on_mnist_basicconv(mnist_small_setup, tmp_path):
    """Paper settings on the real BasicConv (1.26 M parameters): GradDot regenerates most projection
    chunks per batch (a 256 MiB budget), TracIn keeps the whole matrix (the default 1024 MiB)."""
    _, data, model = mnist_small_setup
    train = data.train.subset(32)
    x = data.test.inputs[:20]
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    configs = [
        (GradDot, replace(GradDotConfig.paper(), projection_memory_mb=256.0)),
        (TracIn, TracInConfig.paper()),
    ]
    for method_cls, config in configs:
        method = _fit(method_cls(config), model, train, tmp_path / method_cls.__name__)
        scores = method.explain(x, targets)
        assert scores.shape == (20, 32) and scores.dtype == torch.float32
        assert torch.isfinite(scores).all() and torch.count_nonzero(scores) > 0
        info = method.diagnostics()
        assert info["n_params"] > 1_000_000
        assert (info["projection_chunks_regenerated"] > 0) == (method_cls is GradDot)

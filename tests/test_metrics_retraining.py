"""Metrics that retrain or refit (LDS, coreset selection, data pruning, model randomization), the
harness' Retrainer behind them, and a malformed explanation matrix in a run.

Each metric is checked against a direct computation written here (scipy / numpy, not quanda) with a
stand-in retraining service whose "retrained models" are known linear maps, so the right answer is
known exactly; the Retrainer is checked on the toy task against training by hand.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from harness.cache import Cache
from harness.config import ConfigError
from harness.model_store import Retrainer, get_or_train_model, select_device, train_artefact
from harness.protocols import (
    CHECKPOINTS_ATTR,
    Checkpoint,
    Counterfactuals,
    DataError,
    MetricContext,
    Split,
    TaskData,
)
from harness.runner import ComponentSpec, RunSpec, TimingConfig, run_one
from tasks.metrics.coreset import CoresetSelection, DataPruning, RetrainCurveConfig, importance_order
from tasks.metrics.lds import LDS, LDSConfig
from tasks.metrics.model_randomization import ModelRandomization

N_TRAIN, N_TEST, D, K = 30, 6, 4, 3


@pytest.fixture(scope="module", autouse=True)
def _quanda_imported_once() -> None:
    """Import quanda (about 10 s) once for this module rather than inside the first test."""
    import quanda  # noqa: F401  (a hard dependency: a failed import must fail, not skip)


class Known(Counterfactuals):
    """Stand-in retraining: the model of subset S is ``x -> x @ W_S`` with ``W_S`` a fixed function of S."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []
        self.epochs: list[int | None] = []
        basis = torch.randn(N_TRAIN, D, K, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        self.basis = basis

    def weights(self, subset: torch.Tensor) -> torch.Tensor:
        return self.basis[subset].sum(dim=0) / 3

    def model(self, subset: torch.Tensor) -> nn.Module:
        layer = nn.Linear(D, K, bias=False).double()
        with torch.no_grad():
            layer.weight.copy_(self.weights(subset).T)
        return layer

    def evaluate(self, subsets, evaluate, *, purpose, epochs=None):  # noqa: ANN001
        self.seen.extend(subsets)
        self.epochs.append(epochs)
        return [evaluate(self.model(s)) for s in subsets]


def _context(
    explanations: torch.Tensor, retrain: Counterfactuals | None, tmp_path: Path, **kw
) -> MetricContext:
    g = torch.Generator().manual_seed(1)
    train = Split(
        "train", torch.randn(N_TRAIN, D, generator=g, dtype=torch.float64), torch.arange(N_TRAIN) % K
    )
    test = Split("test", torch.randn(N_TEST, D, generator=g, dtype=torch.float64), torch.arange(N_TEST) % K)
    data = TaskData(train=train, val=test, test=test, num_classes=K, variant="std", input_shape=(D,))
    model = nn.Linear(D, K).double()
    targets = torch.tensor([0, 1, 2, 2, 1, 0])
    return MetricContext(
        data=data,
        model=model,
        explanations=explanations,
        targets=targets,
        self_influence=None,
        cache=Cache(tmp_path),
        retrain=retrain,
        **kw,
    )


# ----- LDS -------------------------------------------------------------------------------------
@pytest.mark.parametrize("output", ["log_softmax", "margin"])
def test_lds_equals_direct_spearman(output: str, tmp_path: Path) -> None:
    explanations = torch.randn(N_TEST, N_TRAIN, generator=torch.Generator().manual_seed(2))
    known = Known()
    ctx = _context(explanations, known, tmp_path)
    result = LDS(LDSConfig(m=12, output=output, epochs=2)).compute(ctx)
    assert known.epochs == [2] and len(known.seen) == 12
    assert all(len(s) == N_TRAIN // 2 for s in known.seen)

    x, c = ctx.data.test.materialise(), ctx.targets
    rows = []
    for j in range(N_TEST):
        predicted, actual = [], []
        for subset in known.seen:
            predicted.append(float(explanations[j, subset].sum()))
            logits = (x[j] @ known.weights(subset)).numpy()
            if output == "log_softmax":
                actual.append(logits[c[j]] - np.log(np.exp(logits).sum()))
            else:
                others = np.delete(logits, int(c[j]))
                actual.append(logits[c[j]] - np.log(np.exp(others).sum()))
        rows.append(spearmanr(predicted, actual)[0])
    assert result.value == pytest.approx(float(np.mean(rows)), abs=1e-5)
    assert result.per_point == pytest.approx(rows, abs=1e-5)


def test_lds_is_one_when_attributions_predict_the_outputs_exactly(tmp_path: Path) -> None:
    """Attributions that are the exact linear effect of each point give LDS 1 (and -1 negated)."""
    known = Known()
    ctx = _context(torch.zeros(N_TEST, N_TRAIN), known, tmp_path)
    # the "model" is linear in the subset, so the logit of class c for x_j is sum_i x_j . basis_i[:, c] / 3;
    # with only the chosen logit mattering, use output on a 1-class view: attributions = per-point logits
    x = ctx.data.test.materialise()
    per_point = torch.einsum("jd,idk->jik", x, known.basis) / 3  # (n_test, n_train, K)
    exact = per_point[torch.arange(N_TEST), :, ctx.targets]
    # a 1-class stand-in: with K = 1 the log-softmax is constant, so score the raw logit via margin-free
    # route: check monotone agreement through quanda with a model whose output is that logit
    ctx = replace(ctx, explanations=exact.float())

    class OneLogit(Known):
        def evaluate(self, subsets, evaluate, *, purpose, epochs=None):  # noqa: ANN001
            self.seen.extend(subsets)
            return [(x @ self.weights(s))[torch.arange(N_TEST), ctx.targets].double() for s in subsets]

    ctx = replace(ctx, retrain=OneLogit())
    assert LDS(LDSConfig(m=10)).compute(ctx).value == pytest.approx(1.0, abs=1e-6)
    assert LDS(LDSConfig(m=10)).compute(replace(ctx, explanations=-exact.float())).value == pytest.approx(
        -1.0, abs=1e-6
    )


def test_lds_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="m >= 3"):
        LDSConfig(m=2)
    with pytest.raises(ConfigError, match="alpha"):
        LDSConfig(alpha=1.0)
    with pytest.raises(ConfigError, match="output"):
        LDSConfig(output="probability")
    ctx = _context(torch.zeros(N_TEST, N_TRAIN - 1), Known(), tmp_path)
    with pytest.raises(DataError, match=r"\(n_test, n_train\) = \(6, 30\)"):
        LDS(LDSConfig(m=5)).compute(ctx)
    with pytest.raises(DataError, match="through the harness"):
        LDS(LDSConfig(m=5)).compute(_context(torch.zeros(N_TEST, N_TRAIN), None, tmp_path))
    assert LDSConfig.paper().m == 100 and LDSConfig.quick().m == 20


# ----- coreset selection and data pruning ------------------------------------------------------
def test_coreset_and_pruning_retrain_on_the_top_and_bottom_shares(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(3)
    explanations = torch.randn(N_TEST, N_TRAIN, generator=g)
    explanations[:, 5:9] = 0.0  # ties (zero importance) are broken by index
    importance = explanations.abs().double().sum(dim=0).numpy()
    top = np.lexsort((np.arange(N_TRAIN), -importance))  # descending, ties by index
    bottom = np.lexsort((np.arange(N_TRAIN), importance))
    config = RetrainCurveConfig(fractions=(0.1, 0.5, 1.0))
    for cls, order in ((CoresetSelection, top), (DataPruning, bottom)):
        known = Known()
        ctx = _context(explanations, known, tmp_path)
        assert not torch.equal(ctx.targets, ctx.data.test.y)  # the two label sets must disagree here
        result = cls(config).compute(ctx)
        assert [s.tolist() for s in known.seen] == [order[:3].tolist(), order[:15].tolist(), order.tolist()]
        losses, acc, acc_true = [], [], []
        for subset in known.seen:
            logits = ctx.data.test.materialise() @ known.weights(subset)
            # against the ORIGINAL model's predictions (ctx.targets), not the true labels
            losses.append(float(nn.functional.cross_entropy(logits, ctx.targets)))
            acc.append(float((logits.argmax(dim=1) == ctx.targets).double().mean()))
            acc_true.append(float((logits.argmax(dim=1) == ctx.data.test.y).double().mean()))
        assert result.details["cross_entropy"] == pytest.approx(losses, rel=1e-9)
        assert result.value == pytest.approx(np.mean(losses), rel=1e-9)
        assert result.details["accuracy"] == pytest.approx(acc)
        assert result.details["accuracy_true_labels"] == pytest.approx(acc_true)
        assert result.details["mean_accuracy"] == pytest.approx(np.mean(acc))
        assert result.details["sizes"] == [3, 15, 30]
        labels = ctx.data.train.y
        k = int(max(labels.max(), ctx.targets.max())) + 1
        expected_counts = [np.bincount(labels[order[:m]].numpy(), minlength=k).tolist() for m in (3, 15, 30)]
        assert result.details["class_counts"] == expected_counts  # classes of each retained share
        assert known.epochs == [None]  # the retraining service picks the length (the full model's steps)
    assert importance_order(explanations, descending=True)[:4].tolist() == top[:4].tolist()


def test_retraining_metrics_directions() -> None:
    # Pruning the most important points first should hurt most: a higher loss is the better ranking.
    assert CoresetSelection.direction == "lower"
    assert DataPruning.direction == "higher"
    assert LDS.direction == "higher"
    assert CoresetSelection.version == DataPruning.version == LDS.version == "2"


def test_coreset_loss_is_measured_against_the_original_predictions(tmp_path: Path) -> None:
    # A hand-made case: every retrained model predicts class 0 with certainty-like logits. The
    # original model predicted class 0 for every test point, so the loss against its predictions is
    # small, while the true labels (mostly not 0) would give a large one.
    class Constant(Counterfactuals):
        def evaluate(self, subsets, evaluate, *, purpose, epochs=None):  # noqa: ANN001
            layer = nn.Linear(D, K).double()
            with torch.no_grad():
                layer.weight.zero_()
                layer.bias.copy_(torch.tensor([5.0, 0.0, 0.0], dtype=torch.float64))
            return [evaluate(layer) for _ in subsets]

    ctx = _context(torch.ones(N_TEST, N_TRAIN), Constant(), tmp_path)
    ctx.targets = torch.zeros(N_TEST, dtype=torch.long)
    expected = float(-torch.log_softmax(torch.tensor([5.0, 0.0, 0.0], dtype=torch.float64), 0)[0])
    for cls in (CoresetSelection, DataPruning):
        result = cls(RetrainCurveConfig(fractions=(0.5, 1.0))).compute(ctx)
        assert result.value == pytest.approx(expected, rel=1e-12)  # ~0.013; vs true labels ~3.4
        assert result.details["accuracy"] == [1.0, 1.0]
        assert result.details["accuracy_true_labels"] == pytest.approx([2 / 6, 2 / 6])
    ctx.targets = torch.zeros(N_TEST + 1, dtype=torch.long)
    with pytest.raises(DataError, match="targets"):
        CoresetSelection(RetrainCurveConfig(fractions=(1.0,))).compute(ctx)


def test_retrain_curve_config() -> None:
    assert RetrainCurveConfig.paper().fractions == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    assert RetrainCurveConfig.from_dict({"fractions": "0.25;0.5;1"}).fractions == (0.25, 0.5, 1.0)
    for bad in ((), (0.0, 0.5), (0.5, 1.5), "a;b"):
        with pytest.raises(ConfigError, match="fractions"):
            RetrainCurveConfig(fractions=bad)


# ----- model randomization ---------------------------------------------------------------------
def test_model_randomization_equals_direct_spearman_on_a_randomized_model(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(4)
    explanations = torch.randn(N_TEST, N_TRAIN, generator=g)
    other = explanations + 0.7 * torch.randn(N_TEST, N_TRAIN, generator=g)
    seen: list[nn.Module] = []

    def explain_with(model: nn.Module) -> torch.Tensor:
        seen.append(model)
        return other

    ctx = _context(explanations, None, tmp_path, explain_with=explain_with)
    original = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    setattr(ctx.model, CHECKPOINTS_ATTR, [Checkpoint(1, 0.1, original), Checkpoint(2, 0.05, original)])
    result = ModelRandomization().compute(ctx)
    direct = [spearmanr(a, b)[0] for a, b in zip(explanations.numpy(), other.numpy(), strict=True)]
    assert result.value == pytest.approx(float(np.mean(direct)), abs=1e-5)
    assert ModelRandomization.direction == "lower"
    # the refit saw a randomized copy, its checkpoints replaced by the random weights (lr kept)
    (randomized,) = seen
    assert randomized is not ctx.model
    assert not torch.equal(randomized.weight, ctx.model.weight)
    assert all(torch.equal(v, ctx.model.state_dict()[k]) for k, v in original.items())  # untouched
    checkpoints = getattr(randomized, CHECKPOINTS_ATTR)
    assert [c.lr for c in checkpoints] == [0.1, 0.05]
    assert torch.equal(checkpoints[0].state["weight"], randomized.weight.detach())


# ----- the Retrainer on the toy task -----------------------------------------------------------
def test_retrainer_trains_each_set_once_and_matches_training_by_hand(toy_setup, tmp_path: Path) -> None:
    task, data, _ = toy_setup
    device = select_device()
    retrainer = Retrainer(task, data, seed=3, cache=Cache(tmp_path), device=device)
    subset = torch.tensor([7, 1, 30, 2, 11, 5, 40, 3])
    weights = retrainer.evaluate(
        [subset, subset.flip(0)], lambda m: m.classifier.weight.detach().clone(), purpose="test"
    )
    assert retrainer.trained == 1  # the same set in another order: one model
    assert torch.equal(weights[0], weights[1])
    index = torch.unique(subset)
    # by hand: the task's recipe with the full model's step budget
    counterfactual = type(task)(replace(task.config, steps=retrainer.full_steps))
    by_hand = train_artefact(
        counterfactual,
        replace(data, train=Split("train", data.train.inputs[index], data.train.y[index])),
        3,
        device,
    )
    assert torch.equal(weights[0], by_hand.tensors["model.classifier.weight"])
    again = Retrainer(task, data, seed=3, cache=Cache(tmp_path), device=device)
    again.evaluate([subset], lambda m: m.classifier.weight, purpose="test")
    assert again.trained == 0  # from the cache
    other_epochs = again.evaluate(
        [subset], lambda m: m.classifier.weight.detach().clone(), purpose="t", epochs=1
    )
    assert again.trained == 1 and not torch.equal(other_epochs[0], weights[0])


def _stored_history(retrainer: Retrainer, subset: torch.Tensor, epochs: int | None) -> dict:
    steps = None if epochs is not None else retrainer.full_steps
    key = retrainer.key(subset, epochs, steps)
    assert retrainer.store.contains(key)
    return retrainer.store.get_or_create(key, lambda: pytest.fail("not cached")).meta["history"]


def test_counterfactual_models_take_as_many_steps_as_the_full_model(toy_setup, tmp_path: Path) -> None:
    task, data, _ = toy_setup
    cache = Cache(tmp_path)
    _, info = get_or_train_model(task, data, 3, cache, select_device())
    full_steps = info["history"]["steps"]
    assert full_steps == task.config.epochs * 3  # 48 points in batches of 16
    retrainer = Retrainer(task, data, seed=3, cache=cache, device=select_device())
    tenth = torch.arange(0, len(data.train), 10)  # 10% of the data (5 points: one batch an epoch)
    half = torch.arange(0, len(data.train), 2)
    retrainer.evaluate([tenth, half], lambda m: m.classifier.weight, purpose="t")
    assert retrainer.full_steps == full_steps  # read from the cached full model's history
    for subset in (tenth, half):
        history = _stored_history(retrainer, subset, None)
        assert history["steps"] == full_steps and history["max_steps"] == full_steps
    assert _stored_history(retrainer, tenth, None)["epochs_run"] == full_steps  # one batch an epoch
    # An explicit epoch count keeps the old rule: that many epochs, however few steps they are.
    retrainer.evaluate([tenth], lambda m: m.classifier.weight, purpose="t", epochs=2)
    history = _stored_history(retrainer, tenth, 2)
    assert history["epochs_run"] == 2 and history["steps"] == 2


def test_retrainer_takes_the_step_budget_as_a_keyword_and_keys_the_cache_by_it(
    toy_setup, tmp_path: Path
) -> None:
    task, data, _ = toy_setup
    cache = Cache(tmp_path)
    subset = torch.arange(10)
    read = lambda m: m.classifier.weight.detach().clone()  # noqa: E731
    short = Retrainer(task, data, 0, cache, select_device(), full_steps=4)
    long = Retrainer(task, data, 0, cache, select_device(), full_steps=40)
    a, b = short.evaluate([subset], read, purpose="t"), long.evaluate([subset], read, purpose="t")
    assert short.trained == long.trained == 1  # different budgets are different models
    assert not torch.equal(a[0], b[0])
    assert _stored_history(short, subset, None)["steps"] == 4
    assert not (tmp_path / "models").exists()  # a given budget needs no full model
    with pytest.raises(ConfigError, match="full_steps"):
        Retrainer(task, data, 0, cache, select_device(), full_steps=0)


@pytest.mark.slow  # two worker processes, each importing torch and training: about 30 s
def test_retrainer_worker_processes_give_the_same_models(toy_setup, tmp_path: Path) -> None:
    task, data, _ = toy_setup
    subsets = [torch.arange(0, 20), torch.arange(10, 40), torch.arange(5, 45, 2)]
    read = lambda m: torch.cat([p.detach().flatten().clone() for p in m.parameters()])  # noqa: E731
    inline = Retrainer(task, data, 0, Cache(tmp_path / "a"), select_device()).evaluate(
        subsets, read, purpose="t"
    )
    pool = Retrainer(task, data, 0, Cache(tmp_path / "b"), select_device(), workers=2)
    parallel = pool.evaluate(subsets, read, purpose="t")
    assert pool.trained == 3
    for a, b in zip(inline, parallel, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_retrainer_bad_input(toy_setup, tmp_path: Path) -> None:
    task, data, _ = toy_setup
    with pytest.raises(ConfigError, match="workers"):
        Retrainer(task, data, 0, Cache(tmp_path), select_device(), workers=0)
    retrainer = Retrainer(task, data, 0, Cache(tmp_path), select_device())
    with pytest.raises(DataError, match="must lie in 0..47"):
        retrainer.evaluate([torch.tensor([0, 48])], lambda m: m, purpose="t")
    with pytest.raises(DataError, match="non-empty"):
        retrainer.evaluate([torch.tensor([], dtype=torch.long)], lambda m: m, purpose="t")


# ----- end to end through the runner ------------------------------------------------------------
@pytest.mark.slow  # trains the toy model and 16 counterfactual models, refits on a random one: 30-50 s
def test_retraining_metrics_in_a_run(tmp_path: Path) -> None:
    spec = RunSpec(
        task=ComponentSpec("toy"),
        method=ComponentSpec("feature_similarity"),
        metrics=tuple(
            ComponentSpec.parse(m)
            for m in ("lds:m=4", "coreset_selection:fractions=0.5;1", "data_pruning", "model_randomization")
        ),
        results_dir=str(tmp_path / "results"),
        cache_dir=str(tmp_path / "cache"),
        timing=TimingConfig(repeats=1, batch_size=8),
    )
    record = run_one(spec)
    assert record["status"] == "ok", record["error"]
    for name in ("lds", "coreset_selection", "data_pruning", "model_randomization"):
        entry = record["metrics"][name]
        assert entry["status"] == "ok", entry["error"]
        assert np.isfinite(entry["value"])
    assert record["metrics"]["coreset_selection"]["details"]["sizes"] == [24, 48]
    assert len(record["metrics"]["data_pruning"]["details"]["sizes"]) == 10
    # feature similarity depends on the model: randomizing it changes the ranking
    assert record["metrics"]["model_randomization"]["value"] < 0.9
    assert (tmp_path / "cache" / "counterfactuals" / "toy").is_dir()

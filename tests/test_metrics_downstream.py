"""Subclass, shortcut and mislabel detection and top-k cardinality (through quanda) against direct
numpy / scikit-learn computations, on hand-made matrices with known answers and on random ones."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn

from harness.cache import Cache
from harness.config import ConfigError
from harness.protocols import CapabilityError, DataError, MetricContext, Split, TaskData
from harness.registry import METRICS
from harness.runner import ComponentSpec, RunSpec, TimingConfig, run_one

SEEDS = [0, 1, 2, 3]


@pytest.fixture(scope="module", autouse=True)
def _quanda_imported_once() -> None:
    """Import quanda (about 10 s) once for this module rather than inside the first test."""
    import quanda  # noqa: F401  (a hard dependency: a failed import must fail, not skip)


def _context(
    explanations: torch.Tensor,
    targets: torch.Tensor,
    tmp_path: Path,
    *,
    train_y: torch.Tensor | None = None,
    test_y: torch.Tensor | None = None,
    train_meta: dict[str, Any] | None = None,
    test_meta: dict[str, Any] | None = None,
    variant: str = "std",
    num_classes: int | None = None,
    self_influence: torch.Tensor | None = None,
) -> MetricContext:
    """A hand-built context: dummy inputs of 2 features, a tiny linear model."""
    n_test, n_train = explanations.shape
    train_y = torch.zeros(n_train, dtype=torch.long) if train_y is None else train_y
    test_y = targets.clone() if test_y is None else test_y
    train = Split("train", torch.zeros(n_train, 2), train_y, dict(train_meta or {}))
    test = Split("test", torch.zeros(n_test, 2), test_y, dict(test_meta or {}))
    if num_classes is None:
        num_classes = int(max(train_y.max(), test_y.max(), targets.max())) + 1
    data = TaskData(
        train=train, val=test, test=test, num_classes=num_classes, variant=variant, input_shape=(2,)
    )
    return MetricContext(
        data=data,
        model=nn.Linear(2, num_classes),
        explanations=explanations,
        targets=targets,
        self_influence=self_influence,
        cache=Cache(tmp_path),
    )


def _metric(name: str, **options: Any):
    cls = METRICS.get(name)
    return cls(cls.Config(**options))


# ----- direct computations (numpy / scikit-learn, no quanda) ------------------------------------
def _top(explanations: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest (signed) scores per row; needs no ties at place k."""
    return np.argsort(-explanations, axis=1, kind="stable")[:, : min(k, explanations.shape[1])]


def _direct_subclass(a: np.ndarray, train_fine: np.ndarray, test_fine: np.ndarray, k: int) -> float:
    return float((train_fine[_top(a, k)] == test_fine[:, None]).mean(axis=1).mean())


def _direct_topk_cardinality(a: np.ndarray, k: int) -> float:
    top = _top(a, k)
    return len(np.unique(top)) / top.size


def _direct_shortcut(
    a: np.ndarray, targets: np.ndarray, test_y: np.ndarray, marked: np.ndarray, c: int
) -> tuple[float, list[float]]:
    rows = np.flatnonzero((targets == c) & (test_y != c))
    aps = [float(average_precision_score(marked, a[j])) for j in rows]
    return float(np.mean(aps)), aps


def _direct_mislabel(si: np.ndarray, flipped: np.ndarray) -> tuple[float, np.ndarray, float]:
    """(paper's min-max normalised area, curve d_1..d_N, quanda's trapezoid / N) for the ranking by
    descending self-influence with ties broken by the lower index; best and worst by explicit
    orderings."""
    n, f = len(si), flipped.sum()
    order = np.argsort(-si, kind="stable")

    def area(ranked: np.ndarray) -> float:
        return float((np.cumsum(ranked) / f).sum())

    best, worst = area(np.sort(flipped)[::-1]), area(np.sort(flipped))
    curve = np.cumsum(flipped[order]) / f
    quanda = (curve.sum() - (curve[0] + curve[-1]) / 2) / n
    return (area(flipped[order]) - worst) / (best - worst), curve, float(quanda)


# ----- subclass detection ------------------------------------------------------------------------
#: Fine labels of 6 training points; the model sees their superclasses fine // 2.
SUB_TRAIN_FINE = torch.tensor([0, 0, 0, 1, 1, 2])
SUB_TEST_FINE = torch.tensor([0, 1, 2])
#: Top 3 of row 0: points 0, 1, 2 (fine 0, 0, 0: 3/3 match fine 0); row 1: 3, 4, 0 (fine 1, 1, 0:
#: 2/3 match fine 1); row 2: 5, 3, 2 (fine 2, 1, 0: 1/3 match fine 2). Mean 2/3. The large NEGATIVE
#: scores make a ranking by |a| wrong; comparing superclasses instead of fine labels gives 7/9.
SUB_A = torch.tensor(
    [
        [9.0, 8.0, 7.0, -50.0, -60.0, -100.0],
        [7.0, -50.0, -60.0, 9.0, 8.0, -100.0],
        [-50.0, -60.0, 7.0, 8.0, -100.0, 9.0],
    ]
)


def _group_context(
    a: torch.Tensor, train_fine: torch.Tensor, test_fine: torch.Tensor, tmp_path: Path, **kw: Any
) -> MetricContext:
    return _context(
        a,
        test_fine // 2,  # predicted superclass = true superclass here
        tmp_path,
        train_y=train_fine // 2,
        test_y=test_fine // 2,
        train_meta={"fine_labels": train_fine},
        test_meta={"fine_labels": test_fine},
        variant="group",
        **kw,
    )


@pytest.mark.parametrize(("k", "expected"), [(3, 2 / 3), (1, 1.0), (6, (3 + 2 + 1) / 18), (50, 1 / 3)])
def test_subclass_detection_known_answer(k: int, expected: float, tmp_path: Path) -> None:
    result = _metric("subclass_detection", top_k=k).compute(
        _group_context(SUB_A, SUB_TRAIN_FINE, SUB_TEST_FINE, tmp_path)
    )
    assert result.value == pytest.approx(expected, abs=1e-6)  # quanda averages in float32
    assert result.details == {"top_k": min(k, 6), "n_test": 3, "superclass_accuracy": 1.0}
    direct = _direct_subclass(SUB_A.numpy(), SUB_TRAIN_FINE.numpy(), SUB_TEST_FINE.numpy(), k)
    assert direct == pytest.approx(expected, abs=1e-12)


def test_subclass_detection_uses_fine_not_superclass_labels(tmp_path: Path) -> None:
    superclass_answer = _direct_subclass(
        SUB_A.numpy(), (SUB_TRAIN_FINE // 2).numpy(), (SUB_TEST_FINE // 2).numpy(), 3
    )
    assert superclass_answer == pytest.approx(7 / 9)
    result = _metric("subclass_detection", top_k=3).compute(
        _group_context(SUB_A, SUB_TRAIN_FINE, SUB_TEST_FINE, tmp_path)
    )
    assert result.value == pytest.approx(2 / 3, abs=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [1, 5, 12])
def test_subclass_detection_matches_direct_computation(seed: int, k: int, tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(seed)
    n_test, n_train, fine_classes = 30, 40, 6
    a = torch.randn(n_test, n_train, generator=gen)  # continuous: no ties
    train_fine = torch.randint(0, fine_classes, (n_train,), generator=gen)
    test_fine = torch.randint(0, fine_classes, (n_test,), generator=gen)
    ctx = _group_context(a, train_fine, test_fine, tmp_path)
    ctx.targets = torch.randint(0, fine_classes // 2, (n_test,), generator=gen)  # some wrong
    result = _metric("subclass_detection", top_k=k).compute(ctx)
    expected = _direct_subclass(a.numpy(), train_fine.numpy(), test_fine.numpy(), k)
    assert result.value == pytest.approx(expected, abs=1e-6)
    assert 0.0 < expected < 1.0
    accuracy = float((ctx.targets == test_fine // 2).double().mean())
    assert result.details["superclass_accuracy"] == pytest.approx(accuracy)


def test_subclass_detection_errors(tmp_path: Path) -> None:
    metric = _metric("subclass_detection")
    assert metric.direction == "higher" and metric.requires_variant == "group"
    with pytest.raises(CapabilityError, match="--variant group"):
        metric.check_applicable("std", frozenset())
    metric.check_applicable("group", frozenset())
    with pytest.raises(ConfigError, match="top_k"):
        METRICS.get("subclass_detection").Config(top_k=0)
    with pytest.raises(ConfigError, match="top_k"):
        METRICS.get("subclass_detection").Config(top_k=True)

    ctx = _group_context(SUB_A, SUB_TRAIN_FINE, SUB_TEST_FINE, tmp_path)
    with pytest.raises(DataError, match=r"\(n_test, n_train\) = \(3, 6\).*got \(3, 5\)"):
        metric.compute(dataclasses.replace(ctx, explanations=SUB_A[:, :5]))
    with pytest.raises(DataError, match=r"targets of shape \(n_test,\) = \(3,\).*\(2,\)"):
        metric.compute(dataclasses.replace(ctx, targets=ctx.targets[:2]))
    nan = SUB_A.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(DataError, match="finite"):
        metric.compute(dataclasses.replace(ctx, explanations=nan))
    for split in ("train", "test"):
        ctx = _group_context(SUB_A, SUB_TRAIN_FINE, SUB_TEST_FINE, tmp_path)
        del getattr(ctx.data, split).meta["fine_labels"]
        with pytest.raises(DataError, match=f"fine_labels.*{split} split.*'group' variant"):
            metric.compute(ctx)
    ctx = _group_context(SUB_A, SUB_TRAIN_FINE, SUB_TEST_FINE, tmp_path)
    ctx.data.train.meta["fine_labels"] = SUB_TRAIN_FINE[:5]
    with pytest.raises(DataError, match=r"shape \(6,\)"):
        metric.compute(ctx)
    ctx.data.train.meta["fine_labels"] = SUB_TRAIN_FINE.float()
    with pytest.raises(DataError, match="integer"):
        metric.compute(ctx)


# ----- shortcut detection ------------------------------------------------------------------------
SC_TRAIN_Y = torch.tensor([2, 2, 2, 0, 1, 1])
SC_MARKED = torch.tensor([True, True, False, False, False, False])  # marked: class-2 points 0, 1
SC_TEST_Y = torch.tensor([0, 1, 2, 0])
SC_TARGETS = torch.tensor([2, 2, 2, 0])  # rows 0 and 1 qualify; row 2 is truly 2, row 3 predicted 0
#: Row 0 ranks the marked points 1st and 3rd: AP = (1/1 + 2/3) / 2 = 5/6. Row 1 ranks them 2nd and
#: 4th: AP = (1/2 + 2/4) / 2 = 1/2. Mean 2/3. Rows 2 and 3 (not counted) rank them first (AP 1), so
#: counting all rows gives 5/6 and ignoring the true-label filter 7/9.
SC_A = torch.tensor(
    [
        [6.0, 4.0, 5.0, 3.0, 2.0, 1.0],
        [5.0, 3.0, 2.0, 6.0, 4.0, 1.0],
        [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],
        [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],
    ]
)


def _mark_context(
    a: torch.Tensor,
    targets: torch.Tensor,
    test_y: torch.Tensor,
    train_y: torch.Tensor,
    marked: torch.Tensor,
    tmp_path: Path,
    **kw: Any,
) -> MetricContext:
    test_meta = {"marked": torch.ones(len(test_y), dtype=torch.bool)}
    return _context(
        a,
        targets,
        tmp_path,
        train_y=train_y,
        test_y=test_y,
        train_meta={"marked": marked},
        test_meta=test_meta,
        variant="mark",
        **kw,
    )


def test_shortcut_detection_known_answer(tmp_path: Path) -> None:
    ctx = _mark_context(SC_A, SC_TARGETS, SC_TEST_Y, SC_TRAIN_Y, SC_MARKED, tmp_path)
    result = _metric("shortcut_detection").compute(ctx)
    assert result.value == pytest.approx(2 / 3, abs=1e-6)
    assert result.per_point == pytest.approx([5 / 6, 1 / 2], abs=1e-6)
    assert result.details["n_points"] == 2
    assert result.details["test_indices"] == [0, 1]
    assert result.details["random_auprc"] == pytest.approx(1 / 3)
    assert result.details["n_marked_train"] == 2
    assert result.details["shortcut_prediction_rate"] == pytest.approx(2 / 3)  # 2 of rows 0, 1, 3
    value, aps = _direct_shortcut(SC_A.numpy(), SC_TARGETS.numpy(), SC_TEST_Y.numpy(), SC_MARKED.numpy(), 2)
    assert value == pytest.approx(2 / 3) and aps == pytest.approx([5 / 6, 1 / 2])


def test_shortcut_detection_constant_row_scores_the_marked_share(tmp_path: Path) -> None:
    """All scores tied: one threshold, precision 2/6 at recall 1, so AP = the random baseline."""
    a = torch.full((1, 6), 0.5)
    ctx = _mark_context(a, torch.tensor([2]), torch.tensor([0]), SC_TRAIN_Y, SC_MARKED, tmp_path)
    result = _metric("shortcut_detection").compute(ctx)
    assert result.value == pytest.approx(1 / 3, abs=1e-6)
    assert result.value == pytest.approx(result.details["random_auprc"], abs=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_shortcut_detection_matches_scikit_learn(seed: int, ties: bool, tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(seed)
    n_test, n_train, classes, c = 40, 50, 4, 1
    train_y = torch.randint(0, classes, (n_train,), generator=gen)
    marked = (train_y == c) & (torch.rand(n_train, generator=gen) < 0.5)
    marked[torch.nonzero(train_y == c)[0]] = True  # at least one
    test_y = torch.randint(0, classes, (n_test,), generator=gen)
    targets = torch.randint(0, classes, (n_test,), generator=gen)
    a = torch.randn(n_test, n_train, generator=gen)
    if ties:  # few distinct values: the tie handling of AP is compared too
        a = torch.round(a * 2) / 2
    ctx = _mark_context(a, targets, test_y, train_y, marked, tmp_path)
    result = _metric("shortcut_detection", shortcut_class=c).compute(ctx)
    value, aps = _direct_shortcut(a.numpy(), targets.numpy(), test_y.numpy(), marked.numpy(), c)
    assert result.value == pytest.approx(value, abs=1e-6)
    assert result.per_point == pytest.approx(aps, abs=1e-6)
    assert result.details["test_indices"] == np.flatnonzero((targets == c) & (test_y != c)).tolist()
    assert result.details["random_auprc"] == pytest.approx(float(marked.double().mean()))


def test_shortcut_detection_errors(tmp_path: Path) -> None:
    metric = _metric("shortcut_detection")
    assert metric.direction == "higher" and metric.requires_variant == "mark"
    assert metric.config.shortcut_class == 2
    with pytest.raises(CapabilityError, match="--variant mark"):
        metric.check_applicable("group", frozenset())
    metric.check_applicable("mark", frozenset())
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="shortcut_class"):
            METRICS.get("shortcut_detection").Config(shortcut_class=bad)

    def ctx(**kw: Any) -> MetricContext:
        args = {
            "a": SC_A,
            "targets": SC_TARGETS,
            "test_y": SC_TEST_Y,
            "train_y": SC_TRAIN_Y,
            "marked": SC_MARKED,
            **kw,
        }
        return _mark_context(tmp_path=tmp_path, **args)

    with pytest.raises(DataError, match=r"\(n_test, n_train\) = \(4, 6\).*got \(4, 7\)"):
        metric.compute(dataclasses.replace(ctx(), explanations=torch.zeros(4, 7)))
    with pytest.raises(DataError, match=r"targets of shape \(n_test,\) = \(4,\).*\(4, 1\)"):
        metric.compute(dataclasses.replace(ctx(), targets=SC_TARGETS[:, None]))
    # No qualifying test point: nothing predicted as 2 with another label.
    with pytest.raises(DataError, match="no test point predicted as the shortcut class 2.*did not learn"):
        metric.compute(ctx(targets=torch.tensor([0, 1, 2, 0])))
    missing = ctx()
    del missing.data.train.meta["marked"]
    with pytest.raises(DataError, match="marked.*'mark' variant"):
        metric.compute(missing)
    with pytest.raises(DataError, match="bool tensor"):
        metric.compute(ctx(marked=SC_MARKED.long()))
    with pytest.raises(DataError, match="bool tensor"):
        metric.compute(ctx(marked=SC_MARKED[:5]))
    with pytest.raises(DataError, match="has none"):
        metric.compute(ctx(marked=torch.zeros(6, dtype=torch.bool)))
    with pytest.raises(DataError, match=r"labelled shortcut_class = 2.*\[0, 2\]"):
        metric.compute(ctx(marked=torch.tensor([True, False, False, True, False, False])))
    with pytest.raises(DataError, match="not a class"):
        _metric("shortcut_detection", shortcut_class=9).compute(ctx())


# ----- mislabel detection ------------------------------------------------------------------------
def _corrupt_context(si: torch.Tensor | None, flipped: torch.Tensor, tmp_path: Path) -> MetricContext:
    n = len(flipped)
    return _context(
        torch.zeros(2, n),
        torch.zeros(2, dtype=torch.long),
        tmp_path,
        train_y=torch.arange(n) % 3,
        train_meta={"flipped": flipped},
        variant="corrupt",
        self_influence=si,
    )


def test_mislabel_detection_known_answer(tmp_path: Path) -> None:
    """Ranking [1, 0, 4, 2, 3, 5], flipped {1, 4}: d = 1/2, 1/2, 1, 1, 1, 1, area S = 5; worst
    (F + 1) / 2 = 3/2, best - worst = N - F = 4: MD = 7/8. Quanda: (5 - (1/2 + 1) / 2) / 6 = 17/24."""
    si = torch.tensor([5.0, 6.0, 3.0, 2.0, 4.0, 1.0])
    flipped = torch.tensor([False, True, False, False, True, False])
    result = _metric("mislabel_detection").compute(_corrupt_context(si, flipped, tmp_path))
    assert result.value == pytest.approx(7 / 8, abs=1e-12)
    assert result.details["quanda_score"] == pytest.approx(17 / 24, abs=1e-6)
    assert result.details["value_ties_averaged"] == pytest.approx(7 / 8, abs=1e-12)
    assert result.details["tied_points"] == 0
    assert (result.details["n_flipped"], result.details["n_train"]) == (2, 6)
    assert result.details["flipped_share"] == pytest.approx(1 / 3)
    curve = result.details["curve"]
    assert curve["x"] == pytest.approx([i / 6 for i in range(7)])
    assert curve["y"] == pytest.approx([0, 0.5, 0.5, 1, 1, 1, 1])
    assert roc_auc_score(flipped.numpy(), si.numpy()) == pytest.approx(7 / 8)
    value, _, quanda = _direct_mislabel(si.numpy(), flipped.numpy())
    assert (value, quanda) == pytest.approx((7 / 8, 17 / 24))


def test_mislabel_detection_best_and_worst_orderings(tmp_path: Path) -> None:
    flipped = torch.tensor([True, False, True, False, False, False, False, True])
    si = flipped.double() + torch.linspace(0, 0.1, 8, dtype=torch.float64)
    best = _metric("mislabel_detection").compute(_corrupt_context(si, flipped, tmp_path))
    worst = _metric("mislabel_detection").compute(_corrupt_context(-si, flipped, tmp_path))
    assert best.value == pytest.approx(1.0, abs=1e-12)
    assert worst.value == pytest.approx(0.0, abs=1e-12)
    # Quanda's raw area is not min-max scaled: neither 1 nor 0 at the extremes.
    assert 0.5 < best.details["quanda_score"] < 1.0
    assert 0.0 < worst.details["quanda_score"] < 0.5


def test_mislabel_detection_ties(tmp_path: Path) -> None:
    """Scores [1, 1, 0, 0, 0, 0], flipped {1, 2}. Ties by lower index: order 0..5, d = 0, 1/2, 1, 1,
    1, 1, S = 4.5, MD = (4.5 - 1.5) / 4 = 3/4. Averaged over tie orders: mean ranks 1.5 and 4.5,
    S = 7 - 3 = 4, MD = 5/8 = the ROC AUC with ties counted half."""
    si = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    flipped = torch.tensor([False, True, True, False, False, False])
    result = _metric("mislabel_detection").compute(_corrupt_context(si, flipped, tmp_path))
    assert result.value == pytest.approx(3 / 4, abs=1e-12)
    assert result.details["value_ties_averaged"] == pytest.approx(5 / 8, abs=1e-12)
    assert roc_auc_score(flipped.numpy(), si.numpy()) == pytest.approx(5 / 8)
    assert result.details["tied_points"] == 6
    assert _direct_mislabel(si.numpy(), flipped.numpy())[0] == pytest.approx(3 / 4)


def test_mislabel_detection_is_not_reordered_by_quanda_tie_break(tmp_path: Path) -> None:
    """Quanda adds 1e-4 * index to every score before sorting. Scores falling by 1e-6 per index put
    the 10 flipped points (indices 0..9) first: MD = 1. Sorting quanda's perturbed scores would
    reverse the ranking (MD = 0)."""
    n = 50
    si = -torch.arange(n, dtype=torch.float32) * 1e-6
    flipped = torch.arange(n) < 10
    result = _metric("mislabel_detection").compute(_corrupt_context(si, flipped, tmp_path))
    assert result.value == pytest.approx(1.0, abs=1e-12)
    _, _, quanda = _direct_mislabel(si.numpy(), flipped.numpy())
    assert result.details["quanda_score"] == pytest.approx(quanda, abs=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [7, 120, 1000])
def test_mislabel_detection_matches_direct_computation(seed: int, n: int, tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(seed)
    flipped = torch.rand(n, generator=gen) < 0.3
    flipped[0], flipped[1] = True, False  # both kinds present
    si = torch.randn(n, generator=gen, dtype=torch.float64) + 0.8 * flipped  # continuous: no ties
    result = _metric("mislabel_detection").compute(_corrupt_context(si, flipped, tmp_path))
    value, curve, quanda = _direct_mislabel(si.numpy(), flipped.numpy())
    assert result.value == pytest.approx(value, abs=1e-6)
    assert result.value == pytest.approx(roc_auc_score(flipped.numpy(), si.numpy()), abs=1e-6)
    assert result.details["value_ties_averaged"] == pytest.approx(value, abs=1e-9)
    assert result.details["quanda_score"] == pytest.approx(quanda, abs=1e-6)
    # The curve: at most 201 points from (0, 0) to (1, 1), each on the full direct curve.
    x, y = np.array(result.details["curve"]["x"]), np.array(result.details["curve"]["y"])
    assert len(x) == len(y) == min(n + 1, 201)
    assert (x[0], y[0], x[-1], y[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(x) > 0) and np.all(np.diff(y) >= 0)
    full = np.concatenate([[0.0], curve])
    np.testing.assert_allclose(y, full[np.rint(x * n).astype(int)], atol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_mislabel_detection_ties_averaged_matches_roc_auc(seed: int, tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(seed)
    n = 200
    flipped = torch.rand(n, generator=gen) < 0.3
    flipped[0], flipped[1] = True, False
    si = torch.randint(0, 5, (n,), generator=gen).float() + flipped.float()  # many ties
    result = _metric("mislabel_detection").compute(_corrupt_context(si, flipped, tmp_path))
    assert result.details["value_ties_averaged"] == pytest.approx(
        roc_auc_score(flipped.numpy(), si.numpy()), abs=1e-9
    )
    assert result.value == pytest.approx(_direct_mislabel(si.numpy(), flipped.numpy())[0], abs=1e-6)
    assert result.details["tied_points"] == n  # 6 distinct values for 200 points


def test_mislabel_detection_errors(tmp_path: Path) -> None:
    metric = _metric("mislabel_detection")
    assert metric.direction == "higher" and metric.requires_variant == "corrupt"
    assert metric.needs == frozenset({"self_influence"})
    with pytest.raises(CapabilityError, match="--variant corrupt"):
        metric.check_applicable("std", frozenset({"self_influence"}))
    with pytest.raises(CapabilityError, match="self-influence"):
        metric.check_applicable("corrupt", frozenset({"sparse"}))
    metric.check_applicable("corrupt", frozenset({"self_influence"}))

    si = torch.tensor([5.0, 6.0, 3.0, 2.0, 4.0, 1.0])
    flipped = torch.tensor([False, True, False, False, True, False])
    with pytest.raises(CapabilityError, match="self-influence"):
        metric.compute(_corrupt_context(None, flipped, tmp_path))
    with pytest.raises(DataError, match=r"\(n_train,\) = \(6,\), got \(5,\)"):
        metric.compute(_corrupt_context(si[:5], flipped, tmp_path))
    with pytest.raises(DataError, match=r"\(n_train,\) = \(6,\), got \(6, 1\)"):
        metric.compute(_corrupt_context(si[:, None], flipped, tmp_path))
    with pytest.raises(DataError, match="finite"):
        metric.compute(_corrupt_context(torch.tensor([1.0, float("inf"), 0, 0, 0, 0]), flipped, tmp_path))
    ctx = _corrupt_context(si, flipped, tmp_path)
    with pytest.raises(DataError, match=r"\(n_test, n_train\) = \(2, 6\).*got \(2, 4\)"):
        metric.compute(dataclasses.replace(ctx, explanations=torch.zeros(2, 4)))
    del ctx.data.train.meta["flipped"]
    with pytest.raises(DataError, match="flipped.*'corrupt' variant"):
        metric.compute(ctx)
    with pytest.raises(DataError, match="bool tensor"):
        ctx = _corrupt_context(si, flipped, tmp_path)
        ctx.data.train.meta["flipped"] = torch.tensor([1, 4])  # indices, not flags
        metric.compute(ctx)
    for none_or_all in (torch.zeros(6, dtype=torch.bool), torch.ones(6, dtype=torch.bool)):
        with pytest.raises(DataError, match="some flipped and some clean"):
            metric.compute(_corrupt_context(si, none_or_all, tmp_path))


# ----- top-k cardinality -------------------------------------------------------------------------
#: Row tops: row 0 -> 0, 1; row 1 -> 1, 0; row 2 -> 2, 3. k = 1: {0, 1, 2} of 3 -> 1. k = 2: {0, 1, 2,
#: 3} of 6 -> 2/3. k = 6: 6 of 18 -> 1/3 = 1/n_test. Negative scores of large magnitude elsewhere.
TK_A = torch.tensor(
    [
        [9.0, 8.0, -20.0, -30.0, -40.0, -50.0],
        [8.0, 9.0, -50.0, -40.0, -30.0, -20.0],
        [-20.0, -30.0, 9.0, 8.0, -40.0, -50.0],
    ]
)


@pytest.mark.parametrize(("k", "expected"), [(1, 1.0), (2, 2 / 3), (6, 1 / 3), (50, 1 / 3)])
def test_topk_cardinality_known_answer(k: int, expected: float, tmp_path: Path) -> None:
    ctx = _context(TK_A, torch.zeros(3, dtype=torch.long), tmp_path)
    result = _metric("topk_cardinality", top_k=k).compute(ctx)
    assert result.value == pytest.approx(expected, abs=1e-12)
    assert result.details["top_k"] == min(k, 6)
    assert result.details["n_distinct"] == round(expected * 3 * min(k, 6))
    assert _direct_topk_cardinality(TK_A.numpy(), k) == pytest.approx(expected)


def test_topk_cardinality_identical_rows_give_one_over_n_test(tmp_path: Path) -> None:
    a = torch.randn(1, 20, generator=torch.Generator().manual_seed(0)).repeat(8, 1)
    result = _metric("topk_cardinality").compute(_context(a, torch.zeros(8, dtype=torch.long), tmp_path))
    assert result.value == pytest.approx(1 / 8)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [1, 5, 17])
def test_topk_cardinality_matches_direct_computation(seed: int, k: int, tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(seed)
    # A few globally strong training points plus noise: the tops overlap partly.
    a = torch.randn(25, 60, generator=gen) + 3.0 * (torch.arange(60) < 8)
    result = _metric("topk_cardinality", top_k=k).compute(
        _context(a, torch.zeros(25, dtype=torch.long), tmp_path)
    )
    expected = _direct_topk_cardinality(a.numpy(), k)
    assert result.value == pytest.approx(expected, abs=1e-9)
    assert 1 / 25 < expected < 1.0


def test_topk_cardinality_errors_and_any_variant(tmp_path: Path) -> None:
    metric = _metric("topk_cardinality")
    assert metric.direction == "higher" and metric.requires_variant is None
    assert metric.config.top_k == 5
    for variant in ("std", "group", "corrupt", "mark"):
        metric.check_applicable(variant, frozenset())
    for bad in (0, -3, 2.0, False):
        with pytest.raises(ConfigError, match="top_k"):
            METRICS.get("topk_cardinality").Config(top_k=bad)
    ctx = _context(TK_A, torch.zeros(3, dtype=torch.long), tmp_path)
    with pytest.raises(DataError, match=r"\(n_test, n_train\) = \(3, 6\).*got \(6, 3\)"):
        metric.compute(dataclasses.replace(ctx, explanations=TK_A.T.contiguous()))
    with pytest.raises(DataError, match=r"targets of shape \(n_test,\) = \(3,\).*\(4,\)"):
        metric.compute(dataclasses.replace(ctx, targets=torch.zeros(4, dtype=torch.long)))
    inf = TK_A.clone()
    inf[1, 2] = float("inf")
    with pytest.raises(DataError, match="finite"):
        metric.compute(dataclasses.replace(ctx, explanations=inf))


# ----- through the runner ------------------------------------------------------------------------
def test_runner_records_topk_cardinality(tmp_path: Path) -> None:
    """Toy task (48 training, 24 test points): with top_k = 48 every test point's top k is the whole
    training set, so the value is exactly 1 / 24 whatever the method."""
    spec = RunSpec(
        task=ComponentSpec("toy"),
        method=ComponentSpec("random"),
        metrics=(ComponentSpec.parse("topk_cardinality:top_k=48"),),
        results_dir=str(tmp_path / "results"),
        cache_dir=str(tmp_path / "cache"),
        timing=TimingConfig(repeats=1, batch_size=8),
    )
    everything = run_one(spec)
    assert everything["status"] == "ok", everything["error"]
    entry = everything["metrics"]["topk_cardinality"]
    assert entry["status"] == "ok", entry["error"]
    assert entry["direction"] == "higher" and entry["version"] == "1"
    assert entry["config"] == {"top_k": 48}
    assert entry["value"] == pytest.approx(1 / 24)
    assert entry["details"] == {"top_k": 48, "n_test": 24, "n_distinct": 48}

    default = run_one(dataclasses.replace(spec, metrics=(ComponentSpec("topk_cardinality"),)))
    entry = default["metrics"]["topk_cardinality"]
    assert entry["status"] == "ok", entry["error"]
    assert entry["config"] == {"top_k": 5}
    details = entry["details"]
    assert (details["top_k"], details["n_test"]) == (5, 24)
    assert 5 <= details["n_distinct"] <= 48
    assert entry["value"] == pytest.approx(details["n_distinct"] / (24 * 5))

"""Class detection (through quanda) and sparsity on hand-made attribution matrices."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from harness.cache import Cache
from harness.config import ConfigError
from harness.protocols import DataError, MetricContext, Split, TaskData
from harness.registry import METRICS


@pytest.fixture(scope="module", autouse=True)
def _quanda_imported_once() -> None:
    """Import quanda (about 10 s) once for this module rather than inside the first test."""
    import quanda  # noqa: F401  (a hard dependency: a failed import must fail, not skip)


def _context(
    explanations: torch.Tensor, targets: torch.Tensor, train_y: torch.Tensor, tmp_path: Path
) -> MetricContext:
    n_test, n_train = explanations.shape
    train = Split("train", torch.zeros(n_train, 2), train_y)
    test = Split("test", torch.zeros(n_test, 2), targets.clone())
    data = TaskData(
        train=train,
        val=test,
        test=test,
        num_classes=int(train_y.max()) + 1,
        variant="std",
        input_shape=(2,),
    )
    return MetricContext(
        data=data,
        model=nn.Linear(2, data.num_classes),
        explanations=explanations,
        targets=targets,
        self_influence=None,
        cache=Cache(tmp_path),
    )


def _direct_class_detection(
    explanations: np.ndarray, targets: np.ndarray, train_y: np.ndarray, k: int
) -> float:
    """Paper definition: mean over test points of the share of the top-k (highest signed)
    attributions whose training label equals the prediction. Needs rows without ties at place k."""
    k = min(k, explanations.shape[1])
    top = np.argsort(-explanations, axis=1, kind="stable")[:, :k]
    return float((train_y[top] == targets[:, None]).mean(axis=1).mean())


# ----- class detection -------------------------------------------------------------------------
def _hand_made() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """6 test points, 10 training points (0-4 class 0, 5-9 class 1); test point m predicts class
    0 and its top 5 holds exactly m class-0 points. The other 5 points get large NEGATIVE scores,
    so a metric ranking by |a| (or ascending) would give a different answer."""
    train_y = torch.tensor([0] * 5 + [1] * 5)
    rows = []
    for m in range(6):
        row = torch.empty(10)
        chosen = list(range(m)) + list(range(5, 10 - m))  # m of class 0, 5 - m of class 1
        for rank, i in enumerate(chosen):
            row[i] = 10.0 - rank
        row[[i for i in range(10) if i not in chosen]] = -100.0 - torch.arange(5.0)
        rows.append(row)
    return torch.stack(rows), torch.zeros(6, dtype=torch.long), train_y


def test_class_detection_on_known_answer(tmp_path: Path) -> None:
    explanations, targets, train_y = _hand_made()
    metric = METRICS.get("class_detection")()
    result = metric.compute(_context(explanations, targets, train_y, tmp_path))
    assert result.value == pytest.approx(sum(m / 5 for m in range(6)) / 6)  # 0.5
    assert result.details == {"top_k": 5, "n_test": 6}
    # Predictions of class 1 turn every share m/5 into (5 - m)/5: still 0.5 on average, but a
    # single row tells them apart.
    one = METRICS.get("class_detection")().compute(
        _context(explanations[1:2], torch.ones(1, dtype=torch.long), train_y, tmp_path)
    )
    assert one.value == pytest.approx(4 / 5)
    assert metric.direction == "higher"


@pytest.mark.parametrize("k", [1, 3, 5, 50])
def test_class_detection_matches_direct_computation(k: int, tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(k)
    n_test, n_train, classes = 40, 30, 4
    explanations = torch.randn(n_test, n_train, generator=gen)  # continuous: no ties
    targets = torch.randint(0, classes, (n_test,), generator=gen)
    train_y = torch.randint(0, classes, (n_train,), generator=gen)
    cls = METRICS.get("class_detection")
    result = cls(cls.Config(top_k=k)).compute(_context(explanations, targets, train_y, tmp_path))
    expected = _direct_class_detection(explanations.numpy(), targets.numpy(), train_y.numpy(), k)
    assert result.value == pytest.approx(expected, abs=1e-6)
    assert result.details["top_k"] == min(k, n_train)
    assert 0.0 < expected < 1.0


def test_class_detection_rejects_bad_input(tmp_path: Path) -> None:
    cls = METRICS.get("class_detection")
    with pytest.raises(ConfigError, match="top_k"):
        cls.Config(top_k=0)
    explanations, targets, train_y = _hand_made()
    with pytest.raises(ValueError, match="n_train"):  # 10 columns, 9 training points
        cls().compute(_context(explanations, targets, train_y[:9], tmp_path))


# ----- sparsity ----------------------------------------------------------------------------------
N = 10
ONE_HOT = [0.0] * 9 + [-3.0]
CONSTANT = [2.0] * N
ZERO = [0.0] * N
TWO_EQUAL = [1.0, -1.0] + [0.0] * 8
# max |a| = 4: 2e-6 / 4 = 5e-7 < 1e-6 counts as zero, 8e-6 / 4 = 2e-6 does not, and neither
# does -4e-6, exactly at the threshold (strict "<"; 4 * 1e-6 == 4e-6 in float64); 0 counts.
NEAR_ZERO = [4.0, 2e-6, -2e-6, 8e-6, 0.0, -4e-6, 1.0, 1.0, 1.0, 1.0]

EXPECTED = {  # row: (l0_eps, hoyer, exact_zero_share)
    "one_hot": (9 / 10, 1.0, 9 / 10),
    "constant": (0.0, 0.0, 0.0),
    "zero": (1.0, 1.0, 1.0),
    "two_equal": (8 / 10, (math.sqrt(N) - math.sqrt(2)) / (math.sqrt(N) - 1), 8 / 10),
}
ROWS = {"one_hot": ONE_HOT, "constant": CONSTANT, "zero": ZERO, "two_equal": TWO_EQUAL}


def _hoyer(row: list[float]) -> float:
    l1 = sum(abs(v) for v in row)
    l2 = math.sqrt(sum(v * v for v in row))
    return (math.sqrt(len(row)) - l1 / l2) / (math.sqrt(len(row)) - 1)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_sparsity_of_single_known_rows(name: str, tmp_path: Path) -> None:
    a = torch.tensor([ROWS[name]], dtype=torch.float32)
    result = METRICS.get("sparsity")().compute(
        _context(a, torch.zeros(1, dtype=torch.long), torch.arange(N) % 2, tmp_path)
    )
    l0, hoyer, exact = EXPECTED[name]
    assert result.value == pytest.approx(l0, abs=1e-12)
    assert result.details["l0_eps"] == pytest.approx(l0, abs=1e-12)
    assert result.details["hoyer"] == pytest.approx(hoyer, abs=1e-12)
    assert result.details["exact_zero_share"] == pytest.approx(exact, abs=1e-12)


def test_sparsity_threshold_and_averaging_over_many_rows(tmp_path: Path) -> None:
    rows = [ONE_HOT, CONSTANT, ZERO, TWO_EQUAL, NEAR_ZERO] * 120  # 600 rows: several chunks
    a = torch.tensor(rows, dtype=torch.float64)
    ctx = _context(a, torch.zeros(len(rows), dtype=torch.long), torch.arange(N) % 2, tmp_path)
    result = METRICS.get("sparsity")().compute(ctx)
    near = (3 / 10, _hoyer(NEAR_ZERO), 1 / 10)  # 2e-6, -2e-6 and the exact 0
    per_row = [
        EXPECTED["one_hot"],
        EXPECTED["constant"],
        EXPECTED["zero"],
        EXPECTED["two_equal"],
        near,
    ]
    means = [sum(r[i] for r in per_row) / 5 for i in range(3)]
    assert result.details["l0_eps"] == pytest.approx(means[0], abs=1e-12)
    assert result.details["hoyer"] == pytest.approx(means[1], abs=1e-12)
    assert result.details["exact_zero_share"] == pytest.approx(means[2], abs=1e-12)
    # A looser threshold (eps = 1e-5) also counts 8e-6 / 4 and 4e-6 / 4.
    cls = METRICS.get("sparsity")
    loose = cls(cls.Config(eps=1e-5)).compute(ctx)
    assert loose.value == pytest.approx(means[0] + (2 / 10) / 5, abs=1e-12)


def test_sparsity_rejects_non_finite_and_bad_eps(tmp_path: Path) -> None:
    a = torch.tensor([ONE_HOT, CONSTANT])
    a[1, 3] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        METRICS.get("sparsity")().compute(
            _context(a, torch.zeros(2, dtype=torch.long), torch.arange(N) % 2, tmp_path)
        )
    with pytest.raises(ConfigError, match="eps"):
        METRICS.get("sparsity").Config(eps=-1.0)

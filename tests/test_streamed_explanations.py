"""Explanations are streamed (issue 18, section 3): a run explains the test points one chunk at a time,
every metric keeps only what it reads (its reader), and the run's peak memory does not grow with
n_test x n_train.

- every metric's reader, fed the matrix in chunks, gives the result of the whole matrix, on random
  matrices with ties and exact zeros (as a sparse method gives them);
- the generic readers equal the dense computation they replace;
- a run's metric values and sparsity equal those computed on its dense matrix, and its record says
  what each metric kept;
- a run whose dense matrix would take 1.6 GB explains with a small fraction of that.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from harness import records
from harness.cache import Cache
from harness.measures import SparsityRows, sparsity_per_row, sparsity_summary
from harness.model_store import predict
from harness.protocols import (
    Counterfactuals,
    DataError,
    Metric,
    MetricContext,
    MetricResult,
    Reader,
    Split,
    TaskData,
    WholeMatrix,
)
from harness.registry import METRICS
from harness.runner import ComponentSpec, RunSpec, TimingConfig, _stream, explain_all, run_one, set_up
from tasks.metrics.coreset import AbsColumnSums
from tasks.metrics.lds import SubsetSums

N_TEST, N_TRAIN, CLASSES, D = 40, 60, 4, 3
#: Uneven chunks, none of one row (a single row is summed in another order by torch: see test below).
CHUNKS = (7, 13, 2, 16, 2)


@pytest.fixture(scope="module", autouse=True)
def _quanda_imported_once() -> None:
    """Import quanda (about 10 s) once for this module rather than inside the first test."""
    import quanda  # noqa: F401  (a hard dependency: a failed import must fail, not skip)


def _chunks(n: int, sizes: tuple[int, ...] = CHUNKS) -> Iterator[slice]:
    assert sum(sizes) == n
    start = 0
    for size in sizes:
        yield slice(start, start + size)
        start += size


def _matrix(seed: int) -> torch.Tensor:
    """Random attributions with what sparse methods give: exact zeros, tied rows, an all-zero column."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(N_TEST, N_TRAIN, generator=gen)
    a[torch.rand(N_TEST, N_TRAIN, generator=gen) < 0.6] = 0.0  # ties at zero, some in the top 5
    a[:, 7] = 0.0
    a[5] = a[4]
    a[:, 11] = torch.round(a[:, 11] * 2) / 2
    return a


class _Linear(Counterfactuals):
    """Stand-in retraining: the model of subset S is ``x -> x @ W_S`` (known, cheap)."""

    def __init__(self) -> None:
        self.basis = torch.randn(N_TRAIN, D, CLASSES, generator=torch.Generator().manual_seed(5)).double()

    def evaluate(self, subsets, evaluate, *, purpose, epochs=None):  # noqa: ANN001
        models = []
        for subset in subsets:
            layer = nn.Linear(D, CLASSES, bias=False).double()
            with torch.no_grad():
                layer.weight.copy_(self.basis[subset].sum(dim=0).T / 3)
            models.append(layer)
        return [evaluate(model) for model in models]


def _context(explanations: torch.Tensor, seed: int, variant: str, cache: Path) -> MetricContext:
    gen = torch.Generator().manual_seed(100 + seed)
    train_y = torch.randint(0, CLASSES, (N_TRAIN,), generator=gen)
    test_y = torch.randint(0, CLASSES, (N_TEST,), generator=gen)
    targets = torch.where(torch.rand(N_TEST, generator=gen) < 0.7, test_y, (test_y + 1) % CLASSES)
    train_meta: dict[str, Any] = {}
    test_meta: dict[str, Any] = {}
    if variant == "group":
        train_meta["fine_labels"] = train_y * 2 + torch.randint(0, 2, (N_TRAIN,), generator=gen)
        test_meta["fine_labels"] = test_y * 2 + torch.randint(0, 2, (N_TEST,), generator=gen)
    if variant == "mark":
        train_meta["marked"] = (train_y == 2) & (torch.rand(N_TRAIN, generator=gen) < 0.5)
        train_meta["marked"][torch.nonzero(train_y == 2)[0]] = True
        test_meta["marked"] = torch.ones(N_TEST, dtype=torch.bool)
        targets[:4], test_y[:4] = 2, 0  # some test points predicted through the shortcut
    train = Split("train", torch.randn(N_TRAIN, D, generator=gen).double(), train_y, train_meta)
    test = Split("test", torch.randn(N_TEST, D, generator=gen).double(), test_y, test_meta)
    data = TaskData(train=train, val=test, test=test, num_classes=CLASSES, variant=variant, input_shape=(D,))
    model = nn.Linear(D, CLASSES).double()
    return MetricContext(
        data=data,
        model=model,
        explanations=explanations,
        targets=targets,
        self_influence=None,
        cache=Cache(cache),
        retrain=_Linear(),
        explain_with=lambda other: explanations.flip(1) + 0.1,  # a "refit" that differs
    )


METRIC_CASES = [
    ("class_detection", "std", {}),
    ("class_detection", "std", {"top_k": 1}),
    ("subclass_detection", "group", {}),
    ("shortcut_detection", "mark", {}),
    ("topk_cardinality", "std", {}),
    ("sparsity", "std", {}),
    ("sparsity", "std", {"eps": 1e-2}),
    ("lds", "std", {"m": 6}),
    ("coreset_selection", "std", {"fractions": (0.1, 0.5, 1.0)}),
    ("data_pruning", "std", {"fractions": (0.1, 0.5, 1.0)}),
    ("model_randomization", "std", {}),
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("name", "variant", "options"), METRIC_CASES)
def test_a_metric_fed_in_chunks_equals_the_metric_on_the_whole_matrix(
    name: str, variant: str, options: dict[str, Any], seed: int, tmp_path: Path
) -> None:
    cls = METRICS.get(name)
    metric = cls(cls.Config(**options))
    dense_ctx = _context(_matrix(seed), seed, variant, tmp_path)
    dense = metric.compute(dense_ctx)

    streamed_ctx = dataclasses.replace(dense_ctx, explanations=None)
    reader = metric.reader(streamed_ctx)
    assert reader is not None
    for rows in _chunks(N_TEST):
        reader.update(rows, _matrix(seed)[rows].clone())  # each chunk a fresh tensor, as a run's
    if isinstance(reader, WholeMatrix):  # the runner passes a kept whole matrix on as well
        streamed_ctx = dataclasses.replace(streamed_ctx, explanations=reader.matrix)
    streamed = metric.compute(dataclasses.replace(streamed_ctx, streamed=reader))

    assert streamed.value == dense.value  # bitwise: the same arithmetic, row by row
    assert streamed.per_point == dense.per_point
    assert streamed.details == dense.details
    assert math.isfinite(dense.value)
    assert isinstance(reader.kept(), str) and reader.kept()
    if name != "model_randomization":  # the one metric that keeps the whole matrix
        assert reader.nbytes() < _matrix(seed).element_size() * N_TEST * N_TRAIN


def test_only_model_randomization_keeps_the_whole_matrix(tmp_path: Path) -> None:
    kept = {}
    for name in METRICS.names():
        metric = METRICS.get(name)()
        ctx = _context(_matrix(0), 0, metric.requires_variant or "std", tmp_path)
        kept[name] = metric.reader(dataclasses.replace(ctx, explanations=None))
    assert {name for name, reader in kept.items() if isinstance(reader, WholeMatrix)} == {
        "model_randomization"
    }
    assert kept["mislabel_detection"] is None  # reads self-influence only


# ----- the generic readers against the dense computations they replace --------------------------
def test_sparsity_rows_equal_the_rows_of_the_whole_matrix() -> None:
    a = _matrix(2)
    reader = SparsityRows()
    for rows in _chunks(N_TEST):
        reader.update(rows, a[rows])
    whole = sparsity_per_row(a, 1e-6)
    for key, values in reader.rows().items():
        assert torch.equal(values, whole[key]), key
    assert reader.summary() == sparsity_summary(a)
    # A chunk of one row is reduced in another order (torch splits a lone row across threads):
    # Hoyer may move in the last bit of float64; the counts do not.
    single = SparsityRows()
    for rows in _chunks(N_TEST, (1,) * N_TEST):
        single.update(rows, a[rows])
    torch.testing.assert_close(single.rows()["hoyer"], whole["hoyer"], rtol=1e-15, atol=1e-15)
    assert torch.equal(single.rows()["l0_eps"], whole["l0_eps"])
    with pytest.raises(ValueError, match="NaN"):
        SparsityRows().update(slice(0, 1), torch.tensor([[1.0, float("nan")]]))


def test_subset_sums_are_quandas_sums_of_the_whole_matrix() -> None:
    a = _matrix(3)
    ids = [
        torch.randperm(N_TRAIN, generator=torch.Generator().manual_seed(k))[:30].tolist() for k in range(5)
    ]
    reader = SubsetSums(ids, N_TEST)
    for rows in _chunks(N_TEST):
        reader.update(rows, a[rows])
    expected = torch.stack([a.float()[:, subset].sum(dim=1) for subset in ids], dim=1)  # quanda's update
    assert torch.equal(reader.sums, expected)


def test_column_sums_equal_the_sum_over_the_whole_matrix_to_round_off() -> None:
    a = _matrix(4)
    reader = AbsColumnSums()
    for rows in _chunks(N_TEST):
        reader.update(rows, a[rows])
    whole = a.abs().double().sum(dim=0)
    assert reader.sums is not None
    torch.testing.assert_close(reader.sums, whole, rtol=1e-15, atol=0.0)
    assert torch.equal(reader.sums[7], whole[7]) and float(whole[7]) == 0.0  # exact zeros stay exact


def test_whole_matrix_reassembles_the_chunks() -> None:
    a = _matrix(5)
    reader = WholeMatrix(N_TEST)
    for rows in _chunks(N_TEST):
        reader.update(rows, a[rows].clone())
    assert torch.equal(reader.matrix, a) and reader.nbytes() == a.numel() * 4
    with pytest.raises(DataError, match="no explanations"):
        _ = WholeMatrix(3).matrix


def test_a_context_without_explanations_says_how_to_get_them(tmp_path: Path) -> None:
    ctx = dataclasses.replace(_context(_matrix(0), 0, "std", tmp_path), explanations=None)
    with pytest.raises(DataError, match="run it through the harness"):
        METRICS.get("class_detection")().compute(ctx)


# ----- the runner's stream ----------------------------------------------------------------------
def test_the_stream_counts_every_non_finite_value_and_feeds_no_chunk_after_one() -> None:
    chunks = [torch.zeros(4, 5), torch.zeros(4, 5), torch.zeros(3, 5)]
    chunks[1][2, 1] = float("nan")
    chunks[2][0, 0] = float("inf")
    seen: list[slice] = []
    parts = ((slice(s, s + len(c)), c) for s, c in zip((0, 4, 8), chunks, strict=True))
    problem = _stream(parts, 11, 5, "m", [lambda rows, chunk: seen.append(rows)])
    assert problem == "method 'm': explain returned 2 non-finite value(s) (NaN or inf) of 55, e.g. in row 6"
    assert seen == [slice(0, 4)]
    wrong = _stream(iter([(slice(0, 4), torch.zeros(4, 6))]), 4, 5, "m", [])
    assert wrong is not None and "explain returned 4x6, expected 4x5 (n_test x n_train)" in wrong


def _spec(tmp_path: Path, method: str, metrics: tuple[str, ...], task: str, timing: TimingConfig) -> RunSpec:
    return RunSpec(
        task=ComponentSpec.parse(task),
        method=ComponentSpec.parse(method),
        metrics=tuple(ComponentSpec.parse(m) for m in metrics),
        results_dir=str(tmp_path / "results"),
        cache_dir=str(tmp_path / "cache"),
        timing=timing,
    )


@pytest.mark.parametrize("method", ["random", "dualda"])
def test_a_run_gives_the_metrics_of_its_dense_matrix(method: str, tmp_path: Path) -> None:
    """Toy task, 60 test points in chunks of 16 (the last of 12): every metric value, per-point
    score and detail, and the record's sparsity, equal those computed on the whole matrix."""
    metrics = ("class_detection", "topk_cardinality", "sparsity:eps=0.001")
    spec = _spec(
        tmp_path,
        method,
        metrics,
        "toy:n_points_test=60",
        TimingConfig(repeats=2, batch_size=16, timed_points=16),
    )
    record = run_one(spec)
    assert record["status"] == "ok", record["error"]

    resolved = spec.resolve()
    setup = set_up(resolved.task, spec.seed, spec.cache_dir)
    targets = predict(setup.model, setup.data.test.materialise(), spec.timing.batch_size)
    fitted = resolved.method
    fitted.fit(setup.model, setup.data.train, cache=setup.method_cache(fitted))
    batch = fitted.preferred_batch_size() or spec.timing.batch_size
    dense = explain_all(fitted, setup.data.test.materialise(), targets, batch, setup.device)
    assert dense.shape == (60, 48)
    ctx = MetricContext(
        data=setup.data,
        model=setup.model,
        explanations=dense,
        targets=targets,
        self_influence=None,
        cache=Cache(tmp_path / "cache").scope("metrics"),
        device=setup.device,
    )
    for metric in resolved.metrics:
        expected = metric.compute(ctx)
        entry = record["metrics"][metric.name]
        assert entry["status"] == "ok", entry["error"]
        assert entry["value"] == expected.value, metric.name
        assert entry["per_point"] == expected.per_point, metric.name
        assert entry["details"] == expected.details, metric.name
    assert record["sparsity"] == sparsity_summary(dense, device=setup.device)

    kept = record["explanations_kept"]
    assert kept is not None and kept["chunk_rows"] == batch
    assert kept["dense_mb"] == pytest.approx(60 * 48 * 4 / 2**20)
    assert set(kept["metrics"]) == {"class_detection", "topk_cardinality", "sparsity"}
    assert "top-5 indices" in kept["metrics"]["topk_cardinality"]["kept"]
    assert all(0 < entry["mb"] < kept["dense_mb"] for entry in kept["metrics"].values())


def test_a_metric_whose_reader_breaks_fails_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(Reader):
        def update(self, rows: slice, chunk: torch.Tensor) -> None:
            if rows.start > 0:
                raise RuntimeError("reader broke on the second chunk")

        def kept(self) -> str:
            return "nothing useful"

        def nbytes(self) -> int:
            return 0

    class BreaksWhileStreaming(Metric):
        def reader(self, ctx: MetricContext) -> Reader:
            return Broken()

        def compute(self, ctx: MetricContext) -> MetricResult:
            raise AssertionError("never reached: its reader failed")

    METRICS.names()  # import the catalogue first, so the undo below leaves it whole
    monkeypatch.setattr(METRICS, "_entries", dict(METRICS._entries))
    METRICS.add("breaks_while_streaming_test_metric", BreaksWhileStreaming, "for a test")
    spec = _spec(
        tmp_path,
        "random",
        ("breaks_while_streaming_test_metric", "subclass_detection", "class_detection"),
        "toy",
        TimingConfig(repeats=1, batch_size=8),
    )
    record = run_one(spec)
    assert record["status"] == "ok", record["error"]
    broken = record["metrics"]["breaks_while_streaming_test_metric"]
    assert broken["status"] == "failed" and broken["error"] is not None
    assert "second chunk" in broken["error"]["message"]
    assert record["metrics"]["subclass_detection"]["status"] == "failed"  # toy has no group variant
    assert record["metrics"]["class_detection"]["status"] == "ok"
    assert record["timings"]["metrics_s"]["breaks_while_streaming_test_metric"] is None
    kept = record["explanations_kept"]
    assert kept is not None and kept["metrics"]["subclass_detection"] == {"kept": "nothing", "mb": 0.0}


def test_records_written_before_streaming_read_with_nothing_kept(tmp_path: Path) -> None:
    record = run_one(_spec(tmp_path, "random", ("sparsity",), "toy", TimingConfig(repeats=1)))
    older = {key: value for key, value in record.items() if key != "explanations_kept"}
    assert records.upgrade(older)["explanations_kept"] is None


# ----- memory -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_peak_memory_of_a_run_does_not_grow_with_n_test_times_n_train(tmp_path: Path) -> None:
    """20,000 test x 20,000 training points: the whole float32 matrix would take 1,526 MiB. Streamed in
    chunks of 500 test points (38 MiB), the explain phase (a quanda metric, whose state grows chunk by
    chunk, and the record's sparsity included) stays far below it: about 220 MiB here, most of it the
    sparsity's float64 temporaries of one chunk. (About 35 s on two cores.)"""
    n = 20_000
    spec = _spec(
        tmp_path,
        "random",
        ("topk_cardinality",),
        f"toy:n_points_train={n},n_points_test={n},epochs=1,batch_size=5000",
        TimingConfig(repeats=1, warmup=0, batch_size=500),
    )
    record = run_one(spec)
    assert record["status"] == "ok", record["error"]
    memory = record["memory"]["explain"]
    if memory["rss_peak_scope"] != "phase":
        pytest.skip("this system does not let the peak resident memory be reset (/proc/self/clear_refs)")
    kept = record["explanations_kept"]
    assert kept is not None and kept["chunk_rows"] == 500
    dense_mb = kept["dense_mb"]
    assert dense_mb == pytest.approx(n * n * 4 / 2**20)
    increase = memory["rss_increase_mb"]
    assert increase is not None and increase < dense_mb / 4, (increase, dense_mb)
    assert kept["metrics"]["topk_cardinality"]["mb"] < 1.0  # 5 indices per test point
    assert record["metrics"]["topk_cardinality"]["status"] == "ok"
    assert record["sparsity"] is not None

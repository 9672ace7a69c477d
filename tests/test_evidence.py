"""The report's evidence (harness/evidence.py): blocks, intervals, ties, ranks, health, paper agreement.

The frames here are built by hand, in the shape :func:`harness.runs.load_runs` gives, so every
expected number can be computed on paper.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from harness import evidence
from harness.protocols import DataError, MetricResult
from harness.runner import _check_metric_result

SETTING = "mnist, n_train=100, n_test=4"


def _row(method: str, seed: int, metrics: dict, per_point: dict | None = None, **extra) -> dict:
    return {
        "setting": SETTING,
        "task": "mnist",
        "n_train": 100,
        "n_test": 4,
        "variant": extra.pop("variant", "std"),
        "method": method,
        "paper_name": extra.pop("paper_name", None),
        "seed": seed,
        "metrics": metrics,
        "directions": {m: extra.get("direction", "higher") for m in metrics},
        "per_point": per_point or {m: None for m in metrics},
        "created_utc": f"2026-01-01T00:00:0{seed}",
        "fit_cold_s": extra.get("fit", math.nan),
        "explain_s_per_point": extra.get("per_point_s", math.nan),
    }


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def test_block_means_over_seeds_and_bootstraps_points_and_seeds() -> None:
    a0, a1 = [1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 1.0]
    b0, b1 = [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]
    rows = [
        _row("a", 0, {"class_detection": np.mean(a0)}, {"class_detection": a0}),
        _row("a", 1, {"class_detection": np.mean(a1)}, {"class_detection": a1}),
        _row("b", 0, {"class_detection": np.mean(b0)}, {"class_detection": b0}),
        _row("b", 1, {"class_detection": np.mean(b1)}, {"class_detection": b1}),
    ]
    (block,) = evidence.blocks(_frame(rows), n_boot=4000)
    assert block.resampled == "test points within seeds, and seeds"
    assert block.value("a") == pytest.approx(0.75) and block.value("b") == pytest.approx(0.25)
    low, high = block.interval("a")
    assert 0.0 <= low < 0.75 < high <= 1.0
    sd, seed_low, seed_high = block.seed_interval("a")
    assert sd == 0.0 and seed_low == pytest.approx(0.75) and seed_high == pytest.approx(0.75)
    assert block.best == "a" and block.tied["a"]


def test_identical_methods_tie_and_a_clearly_worse_one_does_not() -> None:
    good = [1.0] * 30 + [0.0] * 2
    same = list(good)
    bad = [0.0] * 30 + [1.0] * 2
    rows = [
        _row("good", 0, {"class_detection": np.mean(good)}, {"class_detection": good}),
        _row("same", 0, {"class_detection": np.mean(same)}, {"class_detection": same}),
        _row("bad", 0, {"class_detection": np.mean(bad)}, {"class_detection": bad}),
    ]
    (block,) = evidence.blocks(_frame(rows))
    assert block.resampled == "test points (one seed)"
    assert block.tied == {"bad": False, "good": True, "same": True}


def test_one_seed_without_per_point_scores_has_no_interval() -> None:
    rows = [_row("a", 0, {"mislabel_detection": 0.8}, variant="corrupt"),
            _row("b", 0, {"mislabel_detection": 0.6}, variant="corrupt")]  # fmt: skip
    (block,) = evidence.blocks(_frame(rows))
    assert block.resampled == "nothing (one seed, no per-point scores)"
    assert all(math.isnan(v) for v in block.interval("a"))
    health = evidence.health_row(block)
    assert health["n_random_level"] is not None  # no random baseline: not judged
    assert math.isnan(health["n_random_level"])


def test_seed_only_interval_for_metrics_without_per_point_scores() -> None:
    rows = [_row("a", s, {"mislabel_detection": v}, variant="corrupt") for s, v in enumerate([0.7, 0.8, 0.9])]
    (block,) = evidence.blocks(_frame(rows))
    assert block.resampled == "seeds (no per-point scores)"
    low, high = block.interval("a")
    assert 0.7 - 1e-9 <= low <= high <= 0.9 + 1e-9
    sd, seed_low, seed_high = block.seed_interval("a")
    half = 4.302653 * 0.1 / math.sqrt(3)  # t_{0.975, 2} * sd / sqrt(3)
    assert sd == pytest.approx(0.1) and (seed_low, seed_high) == pytest.approx((0.8 - half, 0.8 + half))


def test_metric_read_from_its_variant_only() -> None:
    rows = [
        _row("a", 0, {"class_detection": 0.5}),
        _row("a", 0, {"class_detection": 0.0, "subclass_detection": 0.3}, variant="group"),
    ]
    names = {(b.metric, b.value("a")) for b in evidence.blocks(_frame(rows))}
    assert names == {("class_detection", 0.5), ("subclass_detection", 0.3)}


def test_health_flags_saturation_random_level_and_random_not_floor() -> None:
    n = 40
    ones = [1.0] * n
    rows = [
        _row("x", 0, {"class_detection": 1.0}, {"class_detection": ones}),
        _row("y", 0, {"class_detection": 1.0}, {"class_detection": ones}),
        _row("z", 0, {"class_detection": 0.1}, {"class_detection": [1.0] * 4 + [0.0] * (n - 4)}),
        _row("random", 0, {"class_detection": 0.1}, {"class_detection": [0.0] * (n - 4) + [1.0] * 4}),
    ]
    (block,) = evidence.blocks(_frame(rows))
    health = evidence.health_row(block)
    assert health["saturated"] and health["n_at_ceiling"] == 2
    assert health["random_level_methods"] == "z" and health["n_random_level"] == 1
    assert health["random_not_floor"] is False
    # random better than the median method: flagged
    rows[0]["metrics"]["class_detection"] = 0.0
    rows[0]["per_point"]["class_detection"] = [0.0] * n
    rows[1]["metrics"]["class_detection"] = 0.0
    rows[1]["per_point"]["class_detection"] = [0.0] * n
    (block,) = evidence.blocks(_frame(rows))
    health = evidence.health_row(block)
    assert health["random_not_floor"] is True and "random not the floor" in health["flags"]
    assert not health["saturated"]


def test_lower_is_better_metric_has_no_ceiling_and_ranks_reverse() -> None:
    rows = [
        _row("a", 0, {"coreset_selection": 0.5}, {"coreset_selection": [0.5] * 5}, direction="lower"),
        _row("b", 0, {"coreset_selection": 2.0}, {"coreset_selection": [2.0] * 5}, direction="lower"),
    ]
    blocks = evidence.blocks(_frame(rows))
    assert blocks[0].best == "a"
    assert evidence.health_row(blocks[0])["saturated"] is None
    ranks = evidence.average_ranks(blocks)
    assert list(ranks.point) == [1.0, 2.0]


def test_average_ranks_hand_computed_with_ties_and_missing_metrics() -> None:
    rows = [
        _row("a", 0, {"class_detection": 0.9, "lds": 0.1}, {"class_detection": [0.9] * 3, "lds": [0.1] * 3}),
        _row("b", 0, {"class_detection": 0.9, "lds": 0.3}, {"class_detection": [0.9] * 3, "lds": [0.3] * 3}),
        _row("c", 0, {"class_detection": 0.2}, {"class_detection": [0.2] * 3}),
    ]
    ranks = evidence.average_ranks(evidence.blocks(_frame(rows)))
    point = dict(zip(ranks.methods, ranks.point, strict=True))
    # class detection: a, b tie at 1.5, c 3; LDS: b 1, a 2 (c has none)
    assert point == pytest.approx({"a": (1.5 + 2) / 2, "b": (1.5 + 1) / 2, "c": 3.0})
    assert list(ranks.n_metrics) == [2, 2, 1]
    low, high = ranks.interval("c")
    assert low == high == 3.0  # constant scores: the replicates cannot move it


def test_critical_difference_drops_metrics_not_every_method_has() -> None:
    rows = []
    for seed in range(3):
        for method, cd, lds in (("a", 0.9, 0.5), ("b", 0.5, 0.4), ("c", 0.1, None)):
            metrics = {"class_detection": cd + 0.01 * seed}
            if lds is not None:
                metrics["lds"] = lds
            rows.append(_row(method, seed, metrics))
    result = evidence.critical_difference(evidence.blocks(_frame(rows)))
    assert result.dropped_metrics == ("lds",) and result.metrics == ("class_detection",)
    assert result.result.n_blocks == 3 and list(result.result.avg_ranks) == [1.0, 2.0, 3.0]


def _agreement_rows(n_seeds: int) -> list[dict]:
    rows = []
    for seed in range(n_seeds):
        for c, l0 in ((1e-5, 0.2), (1e-3, 0.5), (1e-1, 0.9)):
            name = f"DualDA C={'1e-5' if c == 1e-5 else '1e-3' if c == 1e-3 else '1e-1'}"
            points = [l0 - 0.05, l0, l0 + 0.05, l0]
            rows.append(
                _row(
                    f"dualda(C={c})",
                    seed,
                    {"sparsity": l0},
                    {"sparsity": points},
                    paper_name=name,
                    fit=0.1,
                    per_point_s=1e-4,
                )  # fmt: skip
            )
        rows.append(_row("lissa", seed, {"sparsity": 0.0}, {"sparsity": [0.0] * 4}, paper_name="LiSSA",
                         fit=0.1, per_point_s=1.0))  # fmt: skip
        rows.append(_row("trak", seed, {"sparsity": 0.0}, {"sparsity": [0.0] * 4}, paper_name="TRAK",
                         fit=1.0, per_point_s=1e-3))  # fmt: skip
        rows.append(_row("graddot", seed, {"sparsity": 0.0}, {"sparsity": [0.0] * 4}, paper_name="GradDot",
                         fit=1.0, per_point_s=1e-3))  # fmt: skip
    return rows


def test_paper_findings_reproduced_with_two_seeds_and_inconclusive_with_one() -> None:
    frame = _frame(_agreement_rows(2))
    rows = {
        r["finding"]: r
        for r in evidence.paper_agreement_rows(SETTING, "mnist", evidence.blocks(frame), frame)
    }
    assert rows["DualDA's sparsity rises with C"]["verdict"] == evidence.REPRODUCED
    fastest = "DualDA is the fastest of the paper's methods (2,000 test points, fit included)"
    assert rows[fastest]["verdict"] == evidence.REPRODUCED
    # LiSSA: 2,000.1 s against a median of 3 s for the others: slowest by orders of magnitude
    assert rows["LiSSA is the slowest by orders of magnitude"]["verdict"] == evidence.REPRODUCED
    frame = _frame(_agreement_rows(1))
    rows = {
        r["finding"]: r
        for r in evidence.paper_agreement_rows(SETTING, "mnist", evidence.blocks(frame), frame)
    }
    assert rows[fastest]["verdict"] == evidence.INCONCLUSIVE  # one seed: one timing, no verdict


def test_paper_finding_contradicted_when_sparsity_falls_with_c() -> None:
    rows = _agreement_rows(2)
    for row in rows:
        if row["method"].startswith("dualda"):
            row["per_point"]["sparsity"] = [1.0 - v for v in row["per_point"]["sparsity"]]
            row["metrics"]["sparsity"] = float(np.mean(row["per_point"]["sparsity"]))
    frame = _frame(rows)
    found = {
        r["finding"]: r
        for r in evidence.paper_agreement_rows(SETTING, "mnist", evidence.blocks(frame), frame)
    }
    assert found["DualDA's sparsity rises with C"]["verdict"] == evidence.CONTRADICTED


def test_runner_refuses_non_finite_values_and_per_point_scores_that_do_not_average_to_the_value() -> None:
    _check_metric_result("ok", MetricResult(value=0.5, per_point=[0.0, 1.0]))
    _check_metric_result("ok", MetricResult(value=0.5))
    with pytest.raises(DataError, match="non-finite"):
        _check_metric_result("m", MetricResult(value=math.nan))
    with pytest.raises(DataError, match="not the mean"):
        _check_metric_result("m", MetricResult(value=0.6, per_point=[0.0, 1.0]))
    with pytest.raises(DataError, match="empty or not finite"):
        _check_metric_result("m", MetricResult(value=0.5, per_point=[math.nan, 1.0]))


def _ranks(point: list[float], jitter: float) -> evidence.RankEvidence:
    rng = np.random.default_rng(0)
    point_arr = np.array(point, dtype=float)
    draws = point_arr + jitter * rng.standard_normal((500, len(point)))
    names = tuple(evidence_names())
    return evidence.RankEvidence(SETTING, names, ("class_detection",), point_arr, draws, np.ones(len(point)))


def evidence_names() -> list[str]:
    from harness.paper_numbers import FIGURE1

    return list(FIGURE1["mnist"])


def test_spearman_verdict_needs_a_stable_ranking_and_a_significant_correlation() -> None:
    from harness.paper_numbers import FIGURE1

    names = {m: m for m in evidence_names()}  # method labels = the paper's names here
    paper = [FIGURE1["mnist"][m][1] for m in names]
    agree = evidence._spearman_row("mnist", _ranks(paper, 0.05), names)
    assert agree["verdict"] == evidence.REPRODUCED and agree["value"] == pytest.approx(1.0)
    reverse = evidence._spearman_row("mnist", _ranks([12 - p for p in paper], 0.05), names)
    assert reverse["verdict"] == evidence.CONTRADICTED
    # a weak positive correlation, stable over the replicates, is still not evidence of agreement
    weak_point = [5.2, 5.3, 6.2, 7.0, 6.6, 6.8, 6.6, 4.1, 4.55, 5.8, 5.0]
    weak = evidence._spearman_row("mnist", _ranks(weak_point, 0.01), names)
    assert 0 < weak["value"] < 0.5 and weak["ci_low"] > 0 and weak["verdict"] == evidence.INCONCLUSIVE


def test_non_finite_per_point_scores_fall_back_to_the_per_seed_values() -> None:
    rows = [
        _row("a", s, {"class_detection": v}, {"class_detection": [v, math.nan] if s == 0 else [v, v]})
        for s, v in enumerate([0.5, 0.7])
    ]
    (block,) = evidence.blocks(_frame(rows))
    assert block.resampled == "seeds (no per-point scores)" and block.value("a") == pytest.approx(0.6)

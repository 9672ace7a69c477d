"""The evidence behind the report's verdicts: intervals, ties with the best, ranks with intervals,
metric health, the critical-difference test and the agreement with the paper.

Everything here is computed from the run records (:class:`harness.runs.Runs`), never from a method
or a task. The statistics are :mod:`harness.stats`; this module decides what they are applied to.

- A *block* is one metric in one setting (task, sizes, task config): the values of every method for
  that metric, per model seed, and, where the metric is a mean over test points, the per-point
  scores it averages (``per_point`` in the records). A metric is read from the variant the paper
  computes it on (:data:`harness.paper_numbers.METRIC_VARIANT`).
- Intervals (95%): a two-stage bootstrap (:func:`harness.stats.joint_bootstrap`): model seeds are
  resampled, then test points within each drawn seed, the same draws for every method of the block
  (paired). A metric without per-point scores (mislabel detection, top-k cardinality) resamples
  seeds only; with one seed it has no interval. What was resampled is stated per value
  (``resampled``). For coreset selection and data pruning the test points are resampled for fixed
  retrained models: the retraining's own noise enters through the seeds only. Beside it, the
  Student-t interval over the per-seed values (``seed_ci_*``), the across-seed interval alone.
- Tied with the best: the paired bootstrap interval of the difference to the best method contains 0.
- Average ranks: tie-aware ranks per metric (equal values share the mean rank), averaged over the
  paper's metrics; their interval ranks the methods in every bootstrap replicate (each metric
  resampled independently).
- Metric health per block: *saturated* (at least half the methods' intervals reach the metric's
  ceiling), *random-level* methods (interval overlaps the random baseline's), *random not the floor*
  (the random baseline is better than the median method).
- Critical difference (Demsar 2006): Friedman's test over the methods with blocks = (metric, model
  seed), the Nemenyi critical difference of average ranks.
- Agreement with the paper: Spearman between our average ranks of the paper's methods and the
  paper's Figure-1 MNIST ranks (interval from the rank replicates), and the paper's qualitative
  findings marked reproduced / contradicted / inconclusive.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from harness import stats
from harness.paper_numbers import METRIC_VARIANT, PAPER_METRICS, PAPER_N_TEST, figure1

if TYPE_CHECKING:
    import pandas as pd

STD = "std"
#: The baseline every real method must beat (its interval is the floor of the health flags).
RANDOM_METHOD = "random"
#: The best value a metric can take, where it has one (saturation is judged against it).
CEILINGS: dict[str, float] = {
    "class_detection": 1.0,
    "subclass_detection": 1.0,
    "shortcut_detection": 1.0,
    "mislabel_detection": 1.0,
    "lds": 1.0,
    "sparsity": 1.0,
    "topk_cardinality": 1.0,
}
#: Reproduced / contradicted thresholds of a bootstrap share (a finding that holds in at least 95% of
#: the replicates is reproduced, in at most 5% contradicted).
SURE = 0.95

REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive"


# =============================================================================================
# Blocks: one metric in one setting, every method's per-seed (and per-point) scores
# =============================================================================================
@dataclass
class Block:
    """One metric in one setting, with its joint bootstrap and the tie-with-best verdicts."""

    setting: str
    metric: str
    variant: str
    direction: str
    seeds: tuple[int, ...]
    #: method -> seed -> the record's value.
    seed_values: dict[str, dict[int, float]]
    paper_names: dict[str, str | None]
    #: The joint (paired) bootstrap over the methods that have every seed of the block.
    sample: stats.BootstrapSample
    #: Methods that miss a seed: bootstrapped on their own (no tie verdict, no rank interval).
    separate: dict[str, stats.BootstrapSample] = field(default_factory=dict)
    resampled: str = ""
    best: str = ""
    tied: dict[str, bool] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return [*self.sample.methods, *self.separate]

    def value(self, method: str) -> float:
        sample = self.separate.get(method, self.sample)
        return float(sample.values[sample.methods.index(method)])

    def interval(self, method: str) -> tuple[float, float]:
        """95% interval of ``method``'s value (NaN, NaN where nothing could be resampled)."""
        sample = self.separate.get(method, self.sample)
        if not _has_spread(sample):
            return math.nan, math.nan
        low, high = stats.percentile_interval(sample.draws)
        j = sample.methods.index(method)
        return float(low[j]), float(high[j])

    def seed_interval(self, method: str) -> tuple[float, float, float]:
        """``(sd, low, high)`` over the per-seed values (NaN with fewer than two seeds)."""
        values = list(self.seed_values[method].values())
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
        _, low, high = stats.t_interval(values)
        return sd, low, high


def _has_spread(sample: stats.BootstrapSample) -> bool:
    return sample.per_point or sample.n_seeds > 1


def _resampled(per_point: bool, n_seeds: int) -> str:
    if per_point:
        return "test points within seeds, and seeds" if n_seeds > 1 else "test points (one seed)"
    return "seeds (no per-point scores)" if n_seeds > 1 else "nothing (one seed, no per-point scores)"


def _block_seed(setting: str, metric: str) -> int:
    return zlib.crc32(f"{setting}|{metric}".encode())


def blocks(frame: pd.DataFrame, n_boot: int = stats.N_BOOT) -> list[Block]:
    """Every (setting, metric) block of :attr:`harness.runs.Runs.frame`, in a stable order.

    ``frame`` needs the columns ``setting``, ``variant``, ``method``, ``paper_name``, ``seed``,
    ``metrics``, ``directions``, ``per_point`` and ``created_utc``. Where one method has two records
    of the same seed (a rerun), the newer one counts.
    """
    collected: dict[tuple[str, str], dict[str, Any]] = {}
    for _, run in frame.sort_values("created_utc", kind="stable").iterrows():
        for metric, value in run["metrics"].items():
            if run["variant"] != METRIC_VARIANT.get(metric, STD):
                continue
            entry = collected.setdefault(
                (run["setting"], metric),
                {"variant": run["variant"], "direction": run["directions"][metric], "runs": {}, "names": {}},
            )
            points = (run.get("per_point") or {}).get(metric)
            entry["runs"].setdefault(run["method"], {})[int(run["seed"])] = (float(value), points)
            name = run["paper_name"]
            entry["names"][run["method"]] = name if isinstance(name, str) and name else None
    out = []
    for (setting, metric), entry in sorted(collected.items()):
        out.append(_block(setting, metric, entry, n_boot))
    return out


def _block(setting: str, metric: str, entry: dict[str, Any], n_boot: int) -> Block:
    runs: dict[str, dict[int, tuple[float, list[float] | None]]] = entry["runs"]
    seeds = tuple(sorted(set().union(*(set(r) for r in runs.values()))))
    joint = [m for m in sorted(runs) if set(runs[m]) == set(seeds)]
    others = [m for m in sorted(runs) if m not in joint]
    per_point = _aligned_points(runs, joint, seeds)
    seed = _block_seed(setting, metric)

    def scores(method: str, its_seeds: Sequence[int], points: bool) -> list[Any]:
        return [
            np.asarray(runs[method][s][1], dtype=float) if points else runs[method][s][0] for s in its_seeds
        ]

    sample = stats.joint_bootstrap({m: scores(m, seeds, per_point) for m in joint}, n_boot=n_boot, seed=seed)
    separate = {}
    for method in others:
        mine = tuple(sorted(runs[method]))
        points = _aligned_points(runs, [method], mine)
        separate[method] = stats.joint_bootstrap(
            {method: scores(method, mine, points)}, n_boot=n_boot, seed=seed
        )
    block = Block(
        setting=setting,
        metric=metric,
        variant=entry["variant"],
        direction=entry["direction"],
        seeds=seeds,
        seed_values={m: {s: v for s, (v, _) in r.items()} for m, r in runs.items()},
        paper_names=dict(entry["names"]),
        sample=sample,
        separate=separate,
        resampled=_resampled(per_point, len(seeds)),
    )
    if joint:
        best, tied = stats.tied_with_best(sample, block.direction)
        block.best = best
        block.tied = {m: bool(t) for m, t in zip(sample.methods, tied, strict=True)}
    return block


def _aligned_points(
    runs: dict[str, dict[int, tuple[float, Any]]], methods: Sequence[str], seeds: Sequence[int]
) -> bool:
    """True when every method has per-point scores for every seed, of one length per seed."""
    if not methods:
        return False
    for s in seeds:
        lengths = set()
        for m in methods:
            points = runs[m][s][1]
            if points is None or len(points) == 0 or not np.all(np.isfinite(np.asarray(points, dtype=float))):
                return False  # e.g. a hand-edited record: fall back to the per-seed values
            lengths.add(len(points))
        if len(lengths) != 1:
            return False
    return True


# =============================================================================================
# Values with intervals (the long table behind the metrics table)
# =============================================================================================
def interval_rows(all_blocks: Sequence[Block]) -> list[dict[str, Any]]:
    """One row per (setting, metric, method): value, interval, seed interval, tie with the best."""
    rows = []
    for block in all_blocks:
        for method in block.methods:
            low, high = block.interval(method)
            sd, seed_low, seed_high = block.seed_interval(method)
            rows.append(
                {
                    "setting": block.setting,
                    "method": method,
                    "paper_name": block.paper_names.get(method),
                    "metric": block.metric,
                    "variant": block.variant,
                    "direction": block.direction,
                    "value": block.value(method),
                    "ci_low": low,
                    "ci_high": high,
                    "resampled": block.resampled
                    if method not in block.separate
                    else _resampled(block.separate[method].per_point, block.separate[method].n_seeds),
                    "n_seeds": len(block.seed_values[method]),
                    "seed_sd": sd,
                    "seed_ci_low": seed_low,
                    "seed_ci_high": seed_high,
                    "tied_with_best": block.tied.get(method),
                    "best": block.best or None,
                }
            )
    return rows


# =============================================================================================
# Average ranks with intervals
# =============================================================================================
@dataclass
class RankEvidence:
    """Average ranks over the paper's metrics of one setting: point estimates and replicates."""

    setting: str
    methods: tuple[str, ...]
    metrics: tuple[str, ...]
    point: np.ndarray  # (k,) average rank
    draws: np.ndarray  # (n_boot, k) replicate average ranks (NaN for a method outside the joint samples)
    n_metrics: np.ndarray  # (k,) metrics each average is over
    #: False when some metric had nothing to resample (one seed, no per-point scores): no intervals.
    complete: bool = True

    def interval(self, method: str) -> tuple[float, float]:
        """95% interval of ``method``'s average rank (NaN when the replicates cannot give one)."""
        if not self.complete:
            return math.nan, math.nan
        j = self.methods.index(method)
        column = self.draws[:, j]
        if np.isnan(column).any():
            return math.nan, math.nan
        low, high = stats.percentile_interval(column)
        return float(low), float(high)


def average_ranks(
    setting_blocks: Sequence[Block], methods: Sequence[str] | None = None
) -> RankEvidence | None:
    """Average rank (1 = best) over the paper's metrics among ``methods`` (default: all), with replicates.

    In each block the methods present are ranked among themselves (tie-aware); a method's average is
    over the blocks it is present in. Replicate ``b`` ranks every block's ``b``-th bootstrap values.
    """
    chosen = [b for b in setting_blocks if b.metric in PAPER_METRICS]
    if not chosen:
        return None
    pool = sorted({m for b in chosen for m in b.methods if methods is None or m in methods})
    if not pool:
        return None
    n_boot = chosen[0].sample.draws.shape[0]
    sums, counts = np.zeros(len(pool)), np.zeros(len(pool))
    draw_sums, draw_counts = np.zeros((n_boot, len(pool))), np.zeros(len(pool))
    outside = np.zeros(len(pool), dtype=bool)
    complete = True
    for block in chosen:
        present = [m for m in block.methods if m in pool]
        if not present:
            continue
        values = np.array([block.value(m) for m in present])
        ranks = stats.tie_aware_ranks(values, block.direction)
        for m, r in zip(present, ranks, strict=True):
            sums[pool.index(m)] += r
            counts[pool.index(m)] += 1
        joint = [m for m in block.sample.methods if m in pool]
        complete = complete and _has_spread(block.sample)
        for m in present:
            if m not in joint:
                outside[pool.index(m)] = True
        if len(joint) == 0:
            continue
        columns = [block.sample.methods.index(m) for m in joint]
        replicate = block.sample.draws[:, columns]
        # Methods outside the joint sample enter each replicate at their point value.
        fixed = [m for m in present if m not in joint]
        if fixed:
            replicate = np.hstack([replicate, np.tile([block.value(m) for m in fixed], (n_boot, 1))])
        order = joint + fixed
        replicate_ranks = np.vstack([stats.tie_aware_ranks(row, block.direction) for row in replicate])
        for j, m in enumerate(order):
            draw_sums[:, pool.index(m)] += replicate_ranks[:, j]
            draw_counts[pool.index(m)] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        point = sums / counts
        draws = draw_sums / draw_counts
    draws[:, outside] = np.nan
    return RankEvidence(
        setting=chosen[0].setting,
        methods=tuple(pool),
        metrics=tuple(b.metric for b in chosen),
        point=point,
        draws=draws,
        n_metrics=counts,
        complete=complete,
    )


# =============================================================================================
# Metric health
# =============================================================================================
def health_row(block: Block, random_method: str = RANDOM_METHOD) -> dict[str, Any]:
    """Saturation, random-level methods and whether random is the floor, for one block."""
    others = [m for m in block.methods if m != random_method]
    values = {m: block.value(m) for m in block.methods}
    intervals = {m: block.interval(m) for m in block.methods}
    ceiling = CEILINGS.get(block.metric) if block.direction == "higher" else None
    at_ceiling = None
    saturated = None
    if ceiling is not None and block.methods:
        at_ceiling = sum(1 for m in block.methods if _upper(values[m], intervals[m]) >= ceiling - 1e-9)
        saturated = at_ceiling >= len(block.methods) / 2
    random_value = values.get(random_method, math.nan)
    random_level: list[str] | None = None
    random_not_floor = None
    median = float(np.median([values[m] for m in others])) if others else math.nan
    if random_method in values and others:
        r_low, r_high = _bounds(random_value, intervals[random_method])
        bounds = {m: _bounds(values[m], intervals[m]) for m in others}
        random_level = [m for m in others if bounds[m][0] <= r_high and bounds[m][1] >= r_low]
        better = random_value > median if block.direction == "higher" else random_value < median
        random_not_floor = bool(better)
    flags = []
    if saturated:
        flags.append("saturated")
    if random_level:
        flags.append(f"random-level: {len(random_level)} of {len(others)}")
    if random_not_floor:
        flags.append("random not the floor")
    return {
        "setting": block.setting,
        "metric": block.metric,
        "direction": block.direction,
        "n_methods": len(block.methods),
        "n_seeds": len(block.seeds),
        "resampled": block.resampled,
        "ceiling": ceiling if ceiling is not None else math.nan,
        "n_at_ceiling": at_ceiling if at_ceiling is not None else math.nan,
        "saturated": saturated,
        "random_value": random_value,
        "median_method_value": median,
        "n_random_level": len(random_level) if random_level is not None else math.nan,
        "random_level_methods": ", ".join(random_level) if random_level else "",
        "random_not_floor": random_not_floor,
        "n_tied_with_best": sum(block.tied.values()) if block.tied else math.nan,
        "flags": "; ".join(flags) if flags else "ok",
    }


def _bounds(value: float, interval: tuple[float, float]) -> tuple[float, float]:
    low, high = interval
    return (value, value) if math.isnan(low) else (low, high)


def _upper(value: float, interval: tuple[float, float]) -> float:
    return _bounds(value, interval)[1]


# =============================================================================================
# Critical difference
# =============================================================================================
@dataclass
class CriticalDifference:
    setting: str
    result: stats.FriedmanResult
    metrics: tuple[str, ...]
    dropped_metrics: tuple[str, ...]
    n_seeds: int


def critical_difference(setting_blocks: Sequence[Block], alpha: float = 0.05) -> CriticalDifference | None:
    """Friedman + Nemenyi over every method of the setting, blocks = (paper metric, model seed).

    A metric that some method of the setting has no value for (e.g. mislabel detection for methods
    without self-influence) is dropped, so that every method is ranked on the same blocks.
    """
    chosen = [b for b in setting_blocks if b.metric in PAPER_METRICS]
    if not chosen:
        return None
    methods = sorted({m for b in chosen for m in b.methods})
    kept = [b for b in chosen if set(b.methods) == set(methods)]
    dropped = tuple(b.metric for b in chosen if b not in kept)
    rows, directions = [], []
    for block in kept:
        common = sorted(set.intersection(*(set(block.seed_values[m]) for m in methods)))
        for s in common:
            rows.append([block.seed_values[m][s] for m in methods])
            directions.append(block.direction)
    if len(methods) < 2 or len(rows) < 2:
        return None
    result = stats.friedman_nemenyi(np.array(rows), methods, directions, alpha=alpha)
    n_seeds = max((len(b.seeds) for b in kept), default=0)
    return CriticalDifference(chosen[0].setting, result, tuple(b.metric for b in kept), dropped, n_seeds)


# =============================================================================================
# Agreement with the paper
# =============================================================================================
def paper_agreement_rows(
    setting: str,
    task: str,
    setting_blocks: Sequence[Block],
    std_runs: pd.DataFrame,
) -> list[dict[str, Any]]:
    """The paper-agreement rows of one MNIST setting (see the module docstring).

    ``std_runs``: the setting's std-variant rows of :attr:`Runs.frame` (timings per seed).
    """
    names = {}
    for block in setting_blocks:
        names.update({m: n for m, n in block.paper_names.items() if n is not None})
    rows: list[dict[str, Any]] = []
    ranks = average_ranks(setting_blocks, methods=list(names))
    rows.append(_spearman_row(task, ranks, names))
    rows.append(_fastest_row(std_runs))
    rows.append(_sparsity_row(setting_blocks, names))
    rows.append(_best_half_row(ranks, names))
    rows.append(_top_three_row(ranks, names))
    rows.append(_lissa_row(std_runs))
    return [{"setting": setting, **row} for row in rows]


def _row(
    finding: str,
    paper: str,
    measured: str,
    verdict: str,
    value: float = math.nan,
    low: float = math.nan,
    high: float = math.nan,
) -> dict[str, Any]:
    return {
        "finding": finding,
        "paper": paper,
        "measured": measured,
        "value": value,
        "ci_low": low,
        "ci_high": high,
        "verdict": verdict,
    }


def _spearman_row(task: str, ranks: RankEvidence | None, names: dict[str, str]) -> dict[str, Any]:
    finding = "average ranks of the paper's methods agree with Figure 1 (Spearman)"
    pairs = []
    if ranks is not None:
        for j, m in enumerate(ranks.methods):
            figure = figure1(task, names.get(m))
            if figure is not None and not math.isnan(ranks.point[j]):
                pairs.append((j, figure[1]))
    if ranks is None or len(pairs) < 3:
        return _row(finding, "Figure 1 ranks", f"{len(pairs)} methods with both ranks", INCONCLUSIVE)
    columns = [j for j, _ in pairs]
    draws = ranks.draws[:, columns]
    usable = ranks.complete and not np.isnan(draws).any()
    if not usable:  # the point estimate alone (no interval)
        draws = ranks.point[columns][None, :]
    rho, low, high, p = stats.spearman_with_ci(draws, ranks.point[columns], [f for _, f in pairs])
    if not usable:
        low = high = math.nan
    # Reproduced: our ranking is stable enough that the correlation stays positive over the replicates
    # AND the correlation itself is unlikely under random rank orders (p < 0.05); contradicted:
    # the same, negative. A NaN interval compares False: inconclusive.
    significant = p < 1 - SURE
    verdict = (
        REPRODUCED if low > 0 and significant else CONTRADICTED if high < 0 and significant else INCONCLUSIVE
    )
    interval = f" [{low:.2f}, {high:.2f}]" if not math.isnan(low) else " (no interval: nothing to resample)"
    measured = f"Spearman {rho:.2f}{interval}, p = {p:.2g}, over {len(pairs)} entries"
    return _row(finding, "rank order of Figure 1", measured, verdict, rho, low, high)


def _paper_totals(std_runs: pd.DataFrame) -> dict[int, dict[str, float]]:
    """seed -> paper name -> seconds to explain the paper's 2,000 test points (cold fit + per point)."""
    out: dict[int, dict[str, float]] = {}
    for _, run in std_runs.iterrows():
        name = run["paper_name"]
        if name is None or (isinstance(name, float) and math.isnan(name)):
            continue
        fit, per_point = run["fit_cold_s"], run["explain_s_per_point"]
        if math.isnan(fit) or math.isnan(per_point):
            continue
        out.setdefault(int(run["seed"]), {})[name] = fit + per_point * PAPER_N_TEST
    return out


def _fastest_row(std_runs: pd.DataFrame) -> dict[str, Any]:
    finding = "DualDA is the fastest of the paper's methods (2,000 test points, fit included)"
    holds, lines = [], []
    for seed, totals in sorted(_paper_totals(std_runs).items()):
        dual = {n: t for n, t in totals.items() if n.startswith("DualDA")}
        other = {n: t for n, t in totals.items() if not n.startswith("DualDA")}
        if not dual or not other:
            continue
        slowest_dual = max(dual.values())
        fastest = min(other, key=other.__getitem__)
        holds.append(slowest_dual < other[fastest])
        lines.append(
            f"seed {seed}: slowest DualDA {slowest_dual:.3g} s, "
            f"fastest other {fastest} {other[fastest]:.3g} s"
        )
    return _row(
        finding,
        "DualDA 10-11 s, next Representer Points 19 s (GPU)",
        "; ".join(lines) or "no cold fits",
        _seed_verdict(holds),
    )


def _lissa_row(std_runs: pd.DataFrame) -> dict[str, Any]:
    finding = "LiSSA is the slowest by orders of magnitude"
    verdicts, lines = [], []
    for seed, totals in sorted(_paper_totals(std_runs).items()):
        if "LiSSA" not in totals or len(totals) < 3:
            continue
        others = {n: t for n, t in totals.items() if n != "LiSSA"}
        ratio = totals["LiSSA"] / float(np.median(list(others.values())))
        slowest = totals["LiSSA"] > max(others.values())
        verdicts.append(
            REPRODUCED
            if slowest and ratio >= 100
            else CONTRADICTED
            if not slowest or ratio < 10
            else INCONCLUSIVE
        )
        lines.append(
            f"seed {seed}: LiSSA {totals['LiSSA']:.3g} s, {ratio:.3g}x the median other method"
            + ("" if slowest else f", slower: {max(others, key=others.__getitem__)}")
        )
    agree = len(verdicts) >= MIN_TIMING_SEEDS and len(set(verdicts)) == 1
    verdict = verdicts[0] if agree else INCONCLUSIVE
    return _row(
        finding,
        "1.06e6 s, 42x the next (Arnoldi), ~4,000x the median",
        "; ".join(lines) or "no LiSSA timing",
        verdict,
    )


#: Timing findings need this many model seeds (each a separately timed fit) for a verdict.
MIN_TIMING_SEEDS = 2


def _seed_verdict(holds: Sequence[bool]) -> str:
    if len(holds) < MIN_TIMING_SEEDS:
        return INCONCLUSIVE
    return REPRODUCED if all(holds) else CONTRADICTED if not any(holds) else INCONCLUSIVE


def _sparsity_row(setting_blocks: Sequence[Block], names: dict[str, str]) -> dict[str, Any]:
    finding = "DualDA's sparsity rises with C"
    block = next((b for b in setting_blocks if b.metric == "sparsity"), None)
    dual = sorted(((_c_of(n), m) for m, n in names.items() if n.startswith("DualDA C=")), key=lambda t: t[0])
    if block is None or len(dual) < 2 or any(m not in block.sample.methods for _, m in dual):
        return _row(finding, "sparser with larger C", "no sparsity values for two DualDA C", INCONCLUSIVE)
    if not _has_spread(block.sample):
        values = ", ".join(f"C={c:g} {block.value(m):.4g}" for c, m in dual)
        return _row(
            finding,
            "sparser with larger C",
            f"l0_eps {values}; no interval (one seed, no per-point scores)",
            INCONCLUSIVE,
        )
    columns = [block.sample.methods.index(m) for _, m in dual]
    draws = block.sample.draws[:, columns]
    verdicts, parts = [], []
    for j in range(len(dual) - 1):
        diff = draws[:, j + 1] - draws[:, j]
        interval = stats.percentile_interval(diff)
        low, high = float(interval[0]), float(interval[1])
        verdicts.append(REPRODUCED if low > 0 else CONTRADICTED if high < 0 else INCONCLUSIVE)
        parts.append(f"C={dual[j + 1][0]:g} minus C={dual[j][0]:g}: [{low:.3g}, {high:.3g}]")
    verdict = (
        CONTRADICTED
        if CONTRADICTED in verdicts
        else REPRODUCED
        if set(verdicts) == {REPRODUCED}
        else INCONCLUSIVE
    )
    values = ", ".join(f"C={c:g} {block.value(m):.4g}" for c, m in dual)
    return _row(finding, "sparsity grows with C", f"l0_eps {values}; differences {'; '.join(parts)}", verdict)


def _c_of(name: str) -> float:
    return float(name.split("C=", 1)[1])


def _best_half_row(ranks: RankEvidence | None, names: dict[str, str]) -> dict[str, Any]:
    finding = "DualDA C=1e-3 ranks within the best half of the paper's methods"
    method = next((m for m, n in names.items() if n == "DualDA C=1e-3"), None)
    if ranks is None or method is None or method not in ranks.methods:
        return _row(finding, "5.3 of 11", "no rank for DualDA C=1e-3", INCONCLUSIVE)
    k = int(np.sum(~np.isnan(ranks.point)))
    half = (k + 1) / 2
    point = float(ranks.point[ranks.methods.index(method)])
    low, high = ranks.interval(method)
    if math.isnan(low):
        verdict = INCONCLUSIVE
    else:
        verdict = REPRODUCED if high < half else CONTRADICTED if low > half else INCONCLUSIVE
    interval = f" [{low:.2f}, {high:.2f}]" if not math.isnan(low) else " (no interval)"
    measured = f"average rank {point:.2f}{interval} of {k}; the middle is {half:g}"
    return _row(finding, "5.3 of 11 (middle 6)", measured, verdict, point, low, high)


def _top_three_row(ranks: RankEvidence | None, names: dict[str, str]) -> dict[str, Any]:
    finding = "EK-FAC, TracIn and Representer Points are the best-ranked on MNIST"
    wanted = {"EK-FAC", "TracIn", "Representer Points"}
    members = [m for m, n in names.items() if n in wanted]
    if ranks is None or len(members) < 3 or any(m not in ranks.methods for m in members):
        return _row(finding, "ranks 4.55, 4.1, 4.0", "not all three ranked", INCONCLUSIVE)
    order = np.argsort(ranks.point, kind="stable")
    ours = [ranks.methods[j] for j in order[:3]]
    columns = [ranks.methods.index(m) for m in members]
    share = math.nan
    if ranks.complete and not np.isnan(ranks.draws).any():
        third = np.sort(ranks.draws, axis=1)[:, 2]
        share = float(np.mean(np.all(ranks.draws[:, columns] <= third[:, None], axis=1)))
    if math.isnan(share):
        verdict = INCONCLUSIVE
    else:
        verdict = REPRODUCED if share >= SURE else CONTRADICTED if share <= 1 - SURE else INCONCLUSIVE
    lead = (
        f"the paper's three lead in {share:.0%} of the replicates"
        if not math.isnan(share)
        else "no replicates"
    )
    measured = f"our best three: {', '.join(names.get(m, m) for m in ours)}; {lead}"
    return _row(finding, "Representer 4.0, TracIn 4.1, EK-FAC 4.55 of 11", measured, verdict, share)

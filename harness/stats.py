"""How sure the benchmark is: bootstrap intervals, ties with the best, rank statistics.

Pure numpy/scipy (no torch, no other harness module), so the report code can call it on loaded records.

- :func:`joint_bootstrap`: the two-stage (hierarchical) bootstrap over model seeds and, within each
  drawn seed, over test points (Davison & Hinkley 1997, *Bootstrap Methods and their Application*,
  section 3.8, "hierarchical data"; the resampling of both stages is their strategy 1). Every method is
  resampled with the *same* seeds and test points, so differences between methods are paired.
- :func:`percentile_interval` / :func:`bootstrap_ci`: Efron's percentile interval (Efron & Tibshirani
  1993, *An Introduction to the Bootstrap*, section 13.3).
- :func:`t_interval`: Student-t interval of a mean over seeds.
- :func:`tied_with_best`: methods whose paired bootstrap difference to the best is not significant.
- :func:`tie_aware_ranks` / :func:`rank_draws`: average ranks over metrics ("blocks") and their
  bootstrap replicates.
- :func:`friedman_from_ranks`, :func:`nemenyi_cd`, :func:`friedman_nemenyi`: the Friedman test with the
  Iman-Davenport correction and the Nemenyi critical difference, in the notation of Demsar (2006),
  "Statistical comparisons of classifiers over multiple data sets", JMLR 7:1-30, section 3.2.2:
  ``k`` methods, ``N`` blocks (``n_blocks``), ``R_j`` average ranks (``avg_ranks``), ``chi2_F``
  (``chi2``), ``F_F`` (``f_stat``), ``q_alpha`` (:func:`nemenyi_q`), ``CD`` (``cd``).
- :func:`spearman_with_ci`: rank agreement with a reference ranking (e.g. the paper's), with a
  bootstrap interval over the replicates of :func:`rank_draws`.

Directions are ``"higher"`` (higher is better) or ``"lower"`` (lower is better), as in the records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

LEVEL = 0.95
N_BOOT = 2000
DIRECTIONS = ("higher", "lower")

# at most this many cells in one resampling-count matrix (rows x test points): 32 MiB of float64
_MAX_CELLS = 1 << 22


# --- bootstrap ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BootstrapSample:
    """Joint bootstrap replicates of several methods' values of one metric in one setting.

    Attributes
    ----------
    methods:
        ``(k,)`` method names, the column order of ``values`` and ``draws``.
    values:
        ``(k,)`` point estimates: mean over seeds of the mean over test points (or of the per-seed
        scalar).
    draws:
        ``(n_boot, k)`` replicates; the same resampled seeds and test points for every method (paired).
    n_seeds:
        Number of model seeds ``S``.
    per_point:
        True: test points were resampled within seeds; False: only seeds (per-seed scalars).
    """

    methods: tuple[str, ...]
    values: np.ndarray
    draws: np.ndarray
    n_seeds: int
    per_point: bool

    def __post_init__(self) -> None:
        methods = tuple(self.methods)
        values = np.array(self.values, dtype=np.float64)
        draws = np.array(self.draws, dtype=np.float64)
        k = len(methods)
        if k == 0:
            raise ValueError("BootstrapSample needs at least one method")
        if len(set(methods)) != k:
            raise ValueError(f"BootstrapSample: duplicate method names in {methods}")
        if values.shape != (k,):
            raise ValueError(f"BootstrapSample: values must have shape ({k},), got {values.shape}")
        if draws.ndim != 2 or draws.shape[1] != k or draws.shape[0] < 1:
            raise ValueError(f"BootstrapSample: draws must have shape (n_boot >= 1, {k}), got {draws.shape}")
        if self.n_seeds < 1:
            raise ValueError(f"BootstrapSample: n_seeds must be >= 1, got {self.n_seeds}")
        values.setflags(write=False)
        draws.setflags(write=False)
        object.__setattr__(self, "methods", methods)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "draws", draws)

    @property
    def n_boot(self) -> int:
        """Number of bootstrap replicates (rows of ``draws``)."""
        return int(self.draws.shape[0])


def _seed_matrix(method: str, seed: int, entry: object) -> np.ndarray:
    """One method's scores of one seed as float64 (0-d for a scalar, 1-D for per-point scores)."""
    arr = np.asarray(entry, dtype=np.float64)
    if arr.ndim > 1:
        raise ValueError(f"method {method!r}, seed {seed}: scores must be 1-D or a scalar, got {arr.shape}")
    if arr.ndim == 1 and arr.size == 0:
        raise ValueError(f"method {method!r}, seed {seed}: no test-point scores")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"method {method!r}, seed {seed}: NaN or infinite scores")
    return arr


def _is_0d(x: object) -> bool:
    return isinstance(x, np.ndarray) and x.ndim == 0


def _collect(scores: Mapping[str, Sequence[np.ndarray | float]]) -> tuple[list[np.ndarray], bool]:
    """Validate ``scores`` and stack them per seed: ``S`` arrays of shape ``(k, n_s)`` or ``(k,)``."""
    if len(scores) == 0:
        raise ValueError("joint_bootstrap needs at least one method")
    methods = list(scores)
    first = methods[0]
    n_seeds = len(scores[first])
    if n_seeds == 0:
        raise ValueError(f"method {first!r}: no seeds")
    per_seed: list[list[np.ndarray]] = [[] for _ in range(n_seeds)]
    per_point: bool | None = None
    for method in methods:
        entries = scores[method]
        if isinstance(entries, str | bytes) or not hasattr(entries, "__len__") or _is_0d(entries):
            raise ValueError(f"method {method!r}: expected a sequence of per-seed scores, got {entries!r}")
        if len(entries) != n_seeds:
            raise ValueError(
                f"method {method!r} has {len(entries)} seeds, method {first!r} has {n_seeds}: "
                "all methods need the same seeds"
            )
        for s, entry in enumerate(entries):
            arr = _seed_matrix(method, s, entry)
            if per_point is None:
                per_point = arr.ndim == 1
            if (arr.ndim == 1) != per_point:
                raise ValueError(
                    f"method {method!r}, seed {s}: mixes per-test-point arrays and per-seed scalars"
                )
            if per_point and per_seed[s] and arr.shape != per_seed[s][0].shape:
                raise ValueError(
                    f"method {method!r}, seed {s}: {arr.size} test points, method {first!r} has "
                    f"{per_seed[s][0].size}: all methods need the same test points per seed"
                )
            per_seed[s].append(arr)
    return [np.stack(arrs) for arrs in per_seed], bool(per_point)


def _resampled_means(x: np.ndarray, n_rep: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_rep`` resamples (with replacement) of the columns of ``x``, shared by its rows.

    Parameters
    ----------
    x:
        ``(k, n)`` scores of ``k`` methods at ``n`` test points.
    n_rep:
        Number of resamples.
    rng:
        Source of the ``(n_rep, n)`` resampled indices.

    Returns
    -------
    np.ndarray
        ``(n_rep, k)``: ``out[r, m] = mean_i x[m, idx[r, i]]``.
    """
    k, n = x.shape
    out = np.empty((n_rep, k))
    chunk = max(1, _MAX_CELLS // n)
    for start in range(0, n_rep, chunk):
        m = min(chunk, n_rep - start)
        idx = rng.integers(0, n, size=(m, n))
        # how often each test point was drawn, per resample (a row of counts sums to n)
        flat = (idx + n * np.arange(m)[:, None]).ravel()
        counts = np.bincount(flat, minlength=m * n).reshape(m, n).astype(np.float64)
        for j in range(k):  # one matrix-vector product per method: identical scores, identical draws
            out[start : start + m, j] = counts @ x[j]
    return out / n


def joint_bootstrap(
    scores: Mapping[str, Sequence[np.ndarray | float]], *, n_boot: int = N_BOOT, seed: int = 0
) -> BootstrapSample:
    """Paired two-stage bootstrap of several methods' values of one metric.

    Each replicate draws ``S`` seeds with replacement from the ``S`` seeds; for each drawn seed it
    draws ``n_s`` test-point indices with replacement (shared by all methods); a method's replicate
    is the mean over the drawn seeds of the mean of its scores at the drawn indices. With ``S == 1``
    this is the plain bootstrap over test points; with per-seed scalars only seeds are resampled.

    Parameters
    ----------
    scores:
        ``scores[method][s]``: the ``(n_s,)`` per-test-point scores of model seed ``s``, or a float
        when the metric has one number per seed. All methods need the same number of seeds and, per
        seed, the same test points in the same order.
    n_boot:
        Number of replicates.
    seed:
        Seed of :func:`numpy.random.default_rng`; the result is deterministic.

    Returns
    -------
    BootstrapSample
        ``values`` ``(k,)`` and ``draws`` ``(n_boot, k)`` in the order of ``scores``.

    Raises
    ------
    ValueError
        Mismatched numbers of seeds or test points, NaN or infinite scores, arrays mixed with
        scalars, or no scores (the message names the method).
    """
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot}")
    n_boot = int(n_boot)
    stacked, per_point = _collect(scores)
    n_seeds, k = len(stacked), stacked[0].shape[0]
    rng = np.random.default_rng(seed)
    drawn_seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    if per_point:
        values = np.mean([x.mean(axis=1) for x in stacked], axis=0)
        total = np.zeros((n_boot, k))
        for slot in range(n_seeds):
            for s, x in enumerate(stacked):
                rows = np.flatnonzero(drawn_seeds[:, slot] == s)
                if rows.size:
                    total[rows] += _resampled_means(x, rows.size, rng)
        draws = total / n_seeds
    else:
        per_seed = np.stack(stacked)  # (S, k)
        values = per_seed.mean(axis=0)
        draws = per_seed[drawn_seeds].mean(axis=1)
    return BootstrapSample(
        methods=tuple(scores), values=values, draws=draws, n_seeds=n_seeds, per_point=per_point
    )


def _check_level(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return float(level)


def percentile_interval(draws: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval per column.

    Parameters
    ----------
    draws:
        ``(n_boot, k)`` (or ``(n_boot,)``) bootstrap replicates.
    level:
        Coverage, e.g. 0.95 for the 2.5 % and 97.5 % quantiles (numpy's linear interpolation).

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        ``(low, high)``, each ``(k,)`` (0-d float64 for 1-D ``draws``).
    """
    level = _check_level(level)
    draws = np.asarray(draws, dtype=np.float64)
    if draws.ndim not in (1, 2) or draws.shape[0] == 0:
        raise ValueError(f"draws must be (n_boot,) or (n_boot, k) with n_boot >= 1, got {draws.shape}")
    if np.isnan(draws).any():
        raise ValueError("draws contain NaN")
    alpha = 1.0 - level
    low, high = np.quantile(draws, [alpha / 2, 1.0 - alpha / 2], axis=0)
    return low, high


def bootstrap_ci(
    scores: np.ndarray, *, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of a 1-D sample and the percentile bootstrap interval of that mean.

    Parameters
    ----------
    scores:
        ``(n,)`` sample, finite.
    n_boot, level, seed:
        Number of replicates, coverage, seed of :func:`numpy.random.default_rng`.

    Returns
    -------
    tuple[float, float, float]
        ``(mean, low, high)``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"bootstrap_ci needs a 1-D sample, got shape {scores.shape}")
    sample = joint_bootstrap({"sample": [scores]}, n_boot=n_boot, seed=seed)
    low, high = percentile_interval(sample.draws[:, 0], level)
    return float(sample.values[0]), float(low), float(high)


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """Student-t interval of the mean over seeds.

    Parameters
    ----------
    values:
        ``(S,)`` one value per seed, finite.
    level:
        Coverage.

    Returns
    -------
    tuple[float, float, float]
        ``(mean, low, high)`` with half width ``t_{(1+level)/2, S-1} * sd / sqrt(S)`` (``sd`` with
        ``ddof=1``); ``low`` and ``high`` are NaN when ``S < 2``.
    """
    level = _check_level(level)
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"t_interval needs a non-empty 1-D sequence, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("t_interval: NaN or infinite values")
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    half = float(sps.t.ppf((1.0 + level) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def _check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'higher' or 'lower', got {direction!r}")
    return direction


def tied_with_best(sample: BootstrapSample, direction: str, level: float = LEVEL) -> tuple[str, np.ndarray]:
    """The best method and the methods not significantly worse than it.

    Parameters
    ----------
    sample:
        Paired replicates of ``k`` methods.
    direction:
        ``"higher"`` or ``"lower"`` is better.
    level:
        Coverage of the interval of the paired differences.

    Returns
    -------
    tuple[str, np.ndarray]
        ``(best, tied)``: ``best`` has the best point estimate (the first in ``sample.methods`` on
        equal estimates); ``tied`` ``(k,)`` bool is True where the percentile interval of
        ``draws[:, best] - draws[:, m]`` (sign flipped for ``"lower"``) has ``low <= 0``, and for
        the best itself.
    """
    sign = 1.0 if _check_direction(direction) == "higher" else -1.0
    best = int(np.argmax(sign * sample.values))  # argmax: the first of equal maxima
    diff = sign * (sample.draws[:, [best]] - sample.draws)  # (n_boot, k), >= 0 where best is better
    low, _ = percentile_interval(diff, level)
    tied = np.asarray(low <= 0.0)
    tied[best] = True
    return sample.methods[best], tied


# --- ranks ----------------------------------------------------------------------------------------


def _round_significant(x: np.ndarray, digits: int) -> np.ndarray:
    """``x`` rounded to ``digits`` significant digits (zeros and non-finite values unchanged)."""
    out = np.array(x, dtype=np.float64)
    ok = np.isfinite(out) & (out != 0.0)
    if ok.any():
        v = out[ok]
        with np.errstate(all="ignore"):
            scale = 10.0 ** np.floor(np.log10(np.abs(v)))
            rounded = np.round(v / scale, digits - 1) * scale
        out[ok] = np.where(np.isfinite(rounded) & (scale > 0), rounded, v)
    return out


def _ranks(values: np.ndarray, direction: str, digits: int) -> np.ndarray:
    """Tie-aware ranks along the last axis (1 = best)."""
    sign = -1.0 if _check_direction(direction) == "higher" else 1.0
    return sps.rankdata(sign * _round_significant(values, digits), method="average", axis=-1)


def tie_aware_ranks(values: np.ndarray, direction: str, digits: int = 12) -> np.ndarray:
    """Ranks with 1 = best; equal values share the mean of their ranks.

    Parameters
    ----------
    values:
        ``(k,)`` one value per method.
    direction:
        ``"higher"`` or ``"lower"`` is better.
    digits:
        Values equal after rounding to this many significant digits are tied (so ``0.1 + 0.2``
        ties with ``0.3``).

    Returns
    -------
    np.ndarray
        ``(k,)`` float64 ranks in ``[1, k]`` (:func:`scipy.stats.rankdata`, ``method="average"``).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"tie_aware_ranks needs a 1-D array, got shape {x.shape}")
    if np.isnan(x).any():
        raise ValueError("tie_aware_ranks: values contain NaN")
    if digits < 1:
        raise ValueError(f"digits must be >= 1, got {digits}")
    return _ranks(x, direction, digits)


def rank_draws(
    samples: Sequence[BootstrapSample], directions: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Average rank over blocks (metrics) per method, with bootstrap replicates.

    Parameters
    ----------
    samples:
        ``N`` blocks, each with the same methods in the same order and the same ``n_boot``.
    directions:
        ``(N,)`` ``"higher"`` or ``"lower"`` per block.

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        ``point`` ``(k,)``: the mean over blocks of :func:`tie_aware_ranks` of the blocks' point
        estimates; ``draws`` ``(n_boot, k)``: the same for each replicate row.
    """
    if len(samples) == 0:
        raise ValueError("rank_draws needs at least one block")
    if isinstance(directions, str) or len(directions) != len(samples):
        raise ValueError(
            f"rank_draws needs one direction per block: {len(samples)} blocks, directions={directions!r}"
        )
    first = samples[0]
    for i, sample in enumerate(samples):
        if sample.methods != first.methods:
            raise ValueError(f"block {i}: methods {sample.methods} differ from block 0's {first.methods}")
        if sample.n_boot != first.n_boot:
            raise ValueError(f"block {i}: n_boot {sample.n_boot} differs from block 0's {first.n_boot}")
    point = np.mean([tie_aware_ranks(s.values, d) for s, d in zip(samples, directions, strict=True)], axis=0)
    for i, sample in enumerate(samples):
        if np.isnan(sample.draws).any():
            raise ValueError(f"block {i}: draws contain NaN")
    draws = np.mean([_ranks(s.draws, d, 12) for s, d in zip(samples, directions, strict=True)], axis=0)
    return point, draws


# --- Friedman test and Nemenyi critical difference (Demsar 2006) ---------------------------------


@dataclass(frozen=True)
class FriedmanResult:
    """Friedman test, Iman-Davenport correction and Nemenyi critical difference (Demsar 2006).

    Attributes
    ----------
    methods:
        ``(k,)`` method names.
    avg_ranks:
        ``(k,)`` average ranks ``R_j`` over the blocks (1 = best).
    n_blocks:
        Number of blocks ``N``.
    chi2, p_chi2:
        Friedman's ``chi2_F`` and its p-value (chi-square, ``k - 1`` degrees of freedom).
    f_stat, p_f:
        Iman-Davenport ``F_F`` and its p-value (F with ``k - 1`` and ``(k - 1)(N - 1)`` degrees).
    cd, alpha:
        Nemenyi critical difference at level ``alpha``.
    cliques:
        Maximal groups (in order of average rank) whose average ranks differ by less than ``cd``;
        only groups of two or more methods.
    """

    methods: tuple[str, ...]
    avg_ranks: np.ndarray
    n_blocks: int
    chi2: float
    p_chi2: float
    f_stat: float
    p_f: float
    cd: float
    alpha: float
    cliques: tuple[tuple[str, ...], ...]


def friedman_from_ranks(avg_ranks: Sequence[float], n_blocks: int) -> tuple[float, float, float, float]:
    """Friedman's statistic and the Iman-Davenport F from average ranks (Demsar 2006, 3.2.2).

    ``chi2_F = 12 N / (k (k+1)) * (sum_j R_j^2 - k (k+1)^2 / 4)`` and
    ``F_F = (N - 1) chi2_F / (N (k - 1) - chi2_F)``; no correction for tied ranks.

    Parameters
    ----------
    avg_ranks:
        ``(k,)`` average ranks ``R_j`` over the blocks (each in ``[1, k]``, summing to
        ``k (k+1) / 2``).
    n_blocks:
        Number of blocks ``N``.

    Returns
    -------
    tuple[float, float, float, float]
        ``(chi2_F, p_chi2, F_F, p_F)``; ``F_F`` is infinite (``p_F = 0``) when every block ranks
        the methods the same way.
    """
    r = np.asarray(avg_ranks, dtype=np.float64)
    k, n = r.size, int(n_blocks)
    if r.ndim != 1 or k < 2:
        raise ValueError(f"friedman_from_ranks needs >= 2 average ranks, got shape {r.shape}")
    if n != n_blocks or n < 2:
        raise ValueError(f"n_blocks must be an integer >= 2, got {n_blocks}")
    if not np.all(np.isfinite(r)):
        raise ValueError("average ranks contain NaN or infinite values")
    if abs(r.sum() - k * (k + 1) / 2) > 0.01 * k or r.min() < 1 - 1e-9 or r.max() > k + 1e-9:
        raise ValueError(
            f"average ranks {r.tolist()} are not ranks 1..{k} (they must sum to {k * (k + 1) / 2})"
        )
    chi2 = 12.0 * n / (k * (k + 1)) * (float(np.sum(r**2)) - k * (k + 1) ** 2 / 4.0)
    chi2 = max(chi2, 0.0)
    p_chi2 = float(sps.chi2.sf(chi2, k - 1))
    denom = n * (k - 1) - chi2
    df1, df2 = k - 1, (k - 1) * (n - 1)
    if denom <= 1e-12 * n * (k - 1):
        return chi2, p_chi2, math.inf, 0.0
    f_stat = (n - 1) * chi2 / denom
    return chi2, p_chi2, float(f_stat), float(sps.f.sf(f_stat, df1, df2))


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """Demsar's ``q_alpha``: the studentized range quantile ``q(1 - alpha; k, inf)`` over ``sqrt(2)``."""
    if int(k) != k or k < 2:
        raise ValueError(f"k must be an integer >= 2, got {k}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return float(sps.studentized_range.ppf(1.0 - alpha, int(k), np.inf) / math.sqrt(2.0))


def nemenyi_cd(k: int, n_blocks: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference ``CD = q_alpha * sqrt(k (k+1) / (6 N))`` (Demsar 2006, 3.2.2).

    Parameters
    ----------
    k:
        Number of methods.
    n_blocks:
        Number of blocks ``N``.
    alpha:
        Significance level.

    Returns
    -------
    float
        Two methods whose average ranks differ by at least ``CD`` differ significantly.
    """
    if int(n_blocks) != n_blocks or n_blocks < 1:
        raise ValueError(f"n_blocks must be a positive integer, got {n_blocks}")
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6.0 * n_blocks))


def cliques_from_ranks(
    methods: Sequence[str], avg_ranks: Sequence[float], cd: float
) -> tuple[tuple[str, ...], ...]:
    """Maximal runs of methods, in order of average rank, whose ranks differ by less than ``cd``.

    Parameters
    ----------
    methods:
        ``(k,)`` names.
    avg_ranks:
        ``(k,)`` average ranks; equal ranks keep the order of ``methods``.
    cd:
        Critical difference.

    Returns
    -------
    tuple[tuple[str, ...], ...]
        Groups of two or more methods, best group first; no group is contained in another.
    """
    r = np.asarray(avg_ranks, dtype=np.float64)
    if r.shape != (len(methods),):
        raise ValueError(f"{len(methods)} methods but average ranks of shape {r.shape}")
    order = np.argsort(r, kind="stable")
    sorted_r = r[order]
    groups: list[tuple[str, ...]] = []
    last_end = -1
    for i in range(len(order)):
        end = i
        while end + 1 < len(order) and sorted_r[end + 1] - sorted_r[i] < cd:
            end += 1
        if end > i and end > last_end:  # a run ending where an earlier one ends lies inside it
            groups.append(tuple(methods[j] for j in order[i : end + 1]))
            last_end = end
    return tuple(groups)


def friedman_nemenyi(
    scores: np.ndarray, methods: Sequence[str], directions: Sequence[str], alpha: float = 0.05
) -> FriedmanResult:
    """Friedman test and Nemenyi critical difference over a block-by-method score matrix.

    Parameters
    ----------
    scores:
        ``(N, k)``: row = block (metric, setting), column = method; complete (no NaN: the caller
        drops incomplete blocks).
    methods:
        ``(k,)`` unique method names.
    directions:
        ``(N,)`` ``"higher"`` or ``"lower"`` per row.
    alpha:
        Significance level of the critical difference.

    Returns
    -------
    FriedmanResult
        Each row ranked with :func:`tie_aware_ranks`, then :func:`friedman_from_ranks`,
        :func:`nemenyi_cd` and :func:`cliques_from_ranks`.
    """
    x = np.asarray(scores, dtype=np.float64)
    methods = tuple(methods)
    if x.ndim != 2:
        raise ValueError(f"scores must be (n_blocks, k), got shape {x.shape}")
    n, k = x.shape
    if k < 2 or n < 2:
        raise ValueError(f"Friedman needs k >= 2 methods and N >= 2 blocks, got N={n}, k={k}")
    if len(methods) != k or len(set(methods)) != k:
        raise ValueError(f"need {k} unique method names, got {methods}")
    if isinstance(directions, str) or len(directions) != n:
        raise ValueError(f"need one direction per block ({n}), got {directions!r}")
    if np.isnan(x).any():
        rows = np.flatnonzero(np.isnan(x).any(axis=1)).tolist()
        raise ValueError(f"scores contain NaN in blocks {rows}: drop incomplete blocks first")
    ranks = np.stack([tie_aware_ranks(row, d) for row, d in zip(x, directions, strict=True)])
    avg = ranks.mean(axis=0)
    chi2, p_chi2, f_stat, p_f = friedman_from_ranks(avg, n)
    cd = nemenyi_cd(k, n, alpha)
    avg.setflags(write=False)
    return FriedmanResult(
        methods=methods,
        avg_ranks=avg,
        n_blocks=n,
        chi2=chi2,
        p_chi2=p_chi2,
        f_stat=f_stat,
        p_f=p_f,
        cd=cd,
        alpha=float(alpha),
        cliques=cliques_from_ranks(methods, avg, cd),
    )


# --- agreement with a reference ranking -----------------------------------------------------------


def spearman_with_ci(
    rank_draws: np.ndarray, point: np.ndarray, reference: Sequence[float], level: float = LEVEL
) -> tuple[float, float, float, float]:
    """Spearman correlation of our average ranks with a reference ranking, with a bootstrap interval.

    Parameters
    ----------
    rank_draws:
        ``(n_boot, k)`` replicates of our average ranks (:func:`rank_draws`).
    point:
        ``(k,)`` our average ranks.
    reference:
        ``(k,)`` the reference ranks (e.g. the paper's), same method order.
    level:
        Coverage of the interval.

    Returns
    -------
    tuple[float, float, float, float]
        ``(rho, low, high, p)``: ``rho`` and two-sided ``p`` from :func:`scipy.stats.spearmanr` on
        ``point``; ``(low, high)`` the percentile interval of Spearman's rho over the replicate rows
        (rows where all methods tie, whose rho is undefined, are left out; NaN if all are).
    """
    point = np.asarray(point, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    draws = np.asarray(rank_draws, dtype=np.float64)
    if point.ndim != 1 or point.size < 2 or ref.shape != point.shape:
        raise ValueError(f"point and reference must be (k,) with k >= 2, got {point.shape} and {ref.shape}")
    if draws.ndim != 2 or draws.shape[1] != point.size or draws.shape[0] == 0:
        raise ValueError(f"rank_draws must be (n_boot, {point.size}), got {draws.shape}")
    if np.isnan(point).any() or np.isnan(ref).any() or np.isnan(draws).any():
        raise ValueError("spearman_with_ci: NaN ranks")
    res = sps.spearmanr(point, ref)
    # Spearman = Pearson on ranks, one row at a time
    a = sps.rankdata(draws, axis=1)
    a -= a.mean(axis=1, keepdims=True)
    b = sps.rankdata(ref)
    b -= b.mean()
    norm = np.sqrt((a**2).sum(axis=1) * (b**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        rhos = np.clip(a @ b / norm, -1.0, 1.0)
    rhos = rhos[np.isfinite(rhos)]
    low, high = percentile_interval(rhos, level) if rhos.size else (math.nan, math.nan)
    return float(res.statistic), float(low), float(high), float(res.pvalue)

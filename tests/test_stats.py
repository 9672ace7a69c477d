"""harness.stats against hand computations, the literature (Demsar 2006) and scipy; the CD figure."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from harness.stats import (
    BootstrapSample,
    bootstrap_ci,
    cliques_from_ranks,
    friedman_from_ranks,
    friedman_nemenyi,
    joint_bootstrap,
    nemenyi_cd,
    percentile_interval,
    rank_draws,
    spearman_with_ci,
    t_interval,
    tie_aware_ranks,
    tied_with_best,
)

N_MC = 20_000


# --- exact bootstrap distributions ---------------------------------------------------------------


def _exact_mean_distribution(sample: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """All n**n equally likely resamples of ``sample``: the atoms of the resample mean and their mass."""
    n = len(sample)
    means = np.array([sum(c) / n for c in itertools.product(sample, repeat=n)])
    atoms, counts = np.unique(np.round(means, 12), return_counts=True)
    return atoms, counts / means.size


def _exact_quantile(atoms: np.ndarray, mass: np.ndarray, q: float, n_mc: int) -> float:
    """The q-quantile of a discrete distribution, checked to be far (> 6 Monte Carlo sd) from a jump.

    An empirical quantile of ``n_mc`` draws equals the exact atom unless the empirical CDF crosses
    ``q`` at another atom; the empirical CDF at ``v`` has sd ``sqrt(F(v)(1 - F(v)) / n_mc)``.
    """
    cdf = np.cumsum(mass)
    i = int(np.searchsorted(cdf, q))  # first atom with F >= q
    for f in cdf[max(i - 1, 0) : i + 1]:
        sd = math.sqrt(f * (1 - f) / n_mc) if 0 < f < 1 else 0.0
        assert f == pytest.approx(1.0) or abs(f - q) > 6 * sd + 1e-12, "quantile too close to a jump"
    return float(atoms[i])


def _assert_frequencies(draws: np.ndarray, atoms: np.ndarray, mass: np.ndarray) -> None:
    """Every draw is an atom, and each atom's frequency is within 5 binomial sd of its mass."""
    n = draws.size
    matched = np.isclose(draws[:, None], atoms[None, :], rtol=0, atol=1e-12)
    assert matched.any(axis=1).all(), "a draw is not a possible value of the exact distribution"
    freq = matched.sum(axis=0) / n
    sd = np.sqrt(mass * (1 - mass) / n)
    np.testing.assert_array_less(np.abs(freq - mass), 5 * sd + 1e-12)


@pytest.mark.parametrize("level", [0.95, 0.5])
def test_bootstrap_ci_matches_exact_distribution_of_three_points(level: float) -> None:
    sample = [0.0, 1.0, 2.0]
    atoms, mass = _exact_mean_distribution(sample)
    # 27 resamples: sums 0..6 with counts 1, 3, 6, 7, 6, 3, 1
    np.testing.assert_allclose(mass * 27, [1, 3, 6, 7, 6, 3, 1])
    np.testing.assert_allclose(atoms, np.arange(7) / 3)
    assert float(atoms @ mass) == pytest.approx(1.0)
    alpha = 1 - level
    want_low = _exact_quantile(atoms, mass, alpha / 2, N_MC)
    want_high = _exact_quantile(atoms, mass, 1 - alpha / 2, N_MC)
    if level == 0.95:
        assert (want_low, want_high) == (0.0, 2.0)
    else:
        assert (want_low, want_high) == pytest.approx((2 / 3, 4 / 3))
    mean, low, high = bootstrap_ci(np.array(sample), n_boot=N_MC, level=level, seed=1)
    assert mean == 1.0
    assert low == pytest.approx(want_low, abs=1e-12)
    assert high == pytest.approx(want_high, abs=1e-12)


def test_bootstrap_draws_follow_exact_distribution() -> None:
    sample = [0.0, 1.0, 2.0]
    atoms, mass = _exact_mean_distribution(sample)
    draws = joint_bootstrap({"x": [np.array(sample)]}, n_boot=N_MC, seed=2).draws[:, 0]
    _assert_frequencies(draws, atoms, mass)
    # the bootstrap distribution's mean is the sample mean; sd of the mean of the draws: sqrt(2/9 / n)
    assert draws.mean() == pytest.approx(1.0, abs=5 * math.sqrt(2 / 9 / N_MC))


def test_bootstrap_two_points() -> None:
    atoms, mass = _exact_mean_distribution([0.0, 1.0])
    np.testing.assert_allclose(atoms, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(mass, [0.25, 0.5, 0.25])
    mean, low, high = bootstrap_ci(np.array([0.0, 1.0]), n_boot=N_MC, seed=3)
    assert (mean, low, high) == (0.5, 0.0, 1.0)
    # S == 1: joint_bootstrap is the plain bootstrap over test points
    sample = joint_bootstrap({"x": [np.array([0.0, 1.0])]}, n_boot=N_MC, seed=4)
    assert sample.n_seeds == 1 and sample.per_point
    _assert_frequencies(sample.draws[:, 0], atoms, mass)


def test_bootstrap_ci_agrees_with_scipy() -> None:
    rng = np.random.default_rng(5)
    x = rng.gamma(2.0, 1.5, size=50)
    mean, low, high = bootstrap_ci(x, n_boot=N_MC, seed=6)
    ref = sps.bootstrap(
        (x,), np.mean, n_resamples=N_MC, method="percentile", confidence_level=0.95, random_state=7
    ).confidence_interval
    # Monte Carlo sd of a 2.5 % quantile of n draws of an ~normal mean with sd s:
    # sqrt(q(1-q)/n) / phi(1.96) * s = 0.019 s; the difference of two independent estimates 0.027 s
    s = x.std(ddof=1) / math.sqrt(x.size)
    assert mean == pytest.approx(x.mean())
    assert low == pytest.approx(ref.low, abs=0.15 * s)
    assert high == pytest.approx(ref.high, abs=0.15 * s)
    assert low < mean < high


def test_percentile_interval_columns_and_errors() -> None:
    draws = np.column_stack([np.arange(101.0), -np.arange(101.0)])
    low, high = percentile_interval(draws, 0.9)
    np.testing.assert_allclose(low, [5.0, -95.0])
    np.testing.assert_allclose(high, [95.0, -5.0])
    with pytest.raises(ValueError, match="level"):
        percentile_interval(draws, 1.5)
    with pytest.raises(ValueError, match="NaN"):
        percentile_interval(np.array([1.0, np.nan]))


# --- joint bootstrap -----------------------------------------------------------------------------


def test_joint_bootstrap_is_paired() -> None:
    rng = np.random.default_rng(8)
    a = [rng.normal(size=n) for n in (30, 40, 25)]
    sample = joint_bootstrap(
        {"a": a, "same": [x.copy() for x in a], "shifted": [x + 0.7 for x in a]}, n_boot=500
    )
    assert sample.methods == ("a", "same", "shifted")
    assert sample.draws.shape == (500, 3) and sample.n_seeds == 3 and sample.per_point
    np.testing.assert_array_equal(sample.draws[:, 0], sample.draws[:, 1])
    np.testing.assert_allclose(sample.draws[:, 2] - sample.draws[:, 0], 0.7, rtol=0, atol=1e-12)
    assert sample.draws[:, 0].std() > 0.01  # the draws do vary
    np.testing.assert_allclose(sample.values[0], np.mean([x.mean() for x in a]))
    np.testing.assert_allclose(sample.values[2] - sample.values[0], 0.7)


def test_joint_bootstrap_is_deterministic() -> None:
    rng = np.random.default_rng(9)
    scores = {"a": [rng.normal(size=20), rng.normal(size=20)]}
    first = joint_bootstrap(scores, n_boot=200, seed=11)
    np.testing.assert_array_equal(first.draws, joint_bootstrap(scores, n_boot=200, seed=11).draws)
    assert not np.array_equal(first.draws, joint_bootstrap(scores, n_boot=200, seed=12).draws)


def test_joint_bootstrap_resamples_seeds_then_points() -> None:
    # constant scores within a seed: only the seed stage matters, draws in {0, 1/2, 1} ~ (1/4, 1/2, 1/4)
    sample = joint_bootstrap({"m": [np.zeros(3), np.ones(2)]}, n_boot=N_MC, seed=13)
    _assert_frequencies(sample.draws[:, 0], np.array([0.0, 0.5, 1.0]), np.array([0.25, 0.5, 0.25]))
    # two seeds with scores [0, 1]: each drawn seed draws its own points, so the replicate is the
    # average of two independent resample means of {0: 1/4, 1/2: 1/2, 1: 1/4}
    sample = joint_bootstrap({"m": [np.array([0.0, 1.0]), np.array([0.0, 1.0])]}, n_boot=N_MC, seed=14)
    _assert_frequencies(sample.draws[:, 0], np.arange(5) / 4, np.array([1, 4, 6, 4, 1]) / 16)


def test_joint_bootstrap_per_seed_scalars() -> None:
    sample = joint_bootstrap({"a": [1.0, 2.0, 3.0], "b": [2.0, 2.0, 2.0]}, n_boot=2000, seed=15)
    assert not sample.per_point and sample.n_seeds == 3
    np.testing.assert_allclose(sample.values, [2.0, 2.0])
    possible = np.arange(3, 10) / 3  # 1, 4/3, ..., 3
    matched = np.isclose(sample.draws[:, 0][:, None], possible[None, :], rtol=0, atol=1e-12)
    assert matched.any(axis=1).all()
    assert matched.any(axis=0).all()  # each of the 7 values has probability >= 1/27
    np.testing.assert_allclose(sample.draws[:, 1], 2.0)


@pytest.mark.parametrize(
    ("scores", "match"),
    [
        ({"a": [np.ones(3), np.ones(3)], "bad": [np.ones(3)]}, "'bad'.*seeds"),
        ({"a": [np.ones(3), np.ones(4)], "bad": [np.ones(3), np.ones(5)]}, "'bad', seed 1.*test points"),
        ({"a": [np.ones(3)], "bad": [np.array([1.0, np.nan, 2.0])]}, "'bad'.*NaN"),
        ({"a": [1.0, 2.0], "bad": [1.0, float("nan")]}, "'bad'.*NaN"),
        ({"a": [np.ones(3)], "bad": [1.0]}, "'bad'.*mixes"),
        ({"bad": [np.ones((2, 2))]}, "'bad'.*1-D"),
        ({"bad": []}, "'bad'.*no seeds"),
        ({}, "at least one method"),
    ],
)
def test_joint_bootstrap_rejects_bad_scores(scores: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        joint_bootstrap(scores, n_boot=10)


def test_bootstrap_sample_validates_shapes() -> None:
    with pytest.raises(ValueError, match="values"):
        BootstrapSample(("a", "b"), np.zeros(3), np.zeros((5, 2)), 1, True)
    with pytest.raises(ValueError, match="draws"):
        BootstrapSample(("a", "b"), np.zeros(2), np.zeros((5, 3)), 1, True)


# --- t interval, ties with the best, ranks -------------------------------------------------------


def test_t_interval_hand_computed() -> None:
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    half = 4.302653 / math.sqrt(3)  # t_{0.975, 2} = 4.302653, sd = 1
    assert mean == 2.0
    assert low == pytest.approx(2.0 - half, rel=1e-6)
    assert high == pytest.approx(2.0 + half, rel=1e-6)
    mean, low, high = t_interval([4.0])
    assert mean == 4.0 and math.isnan(low) and math.isnan(high)
    with pytest.raises(ValueError, match="NaN"):
        t_interval([1.0, float("nan")])


def _tie_example(sign: float) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(16)
    base = [rng.normal(size=200) for _ in range(2)]
    noise = [rng.normal(scale=0.05, size=200) for _ in range(2)]
    noise = [e - e.mean() for e in noise]  # "close" is behind by exactly 0.001, ~0.4 sd of the difference
    return {
        "best": [sign * (b + 1.0) for b in base],
        "identical": [sign * (b + 1.0) for b in base],
        "close": [sign * (b + 1.0 - 0.001 + e) for b, e in zip(base, noise, strict=True)],
        # behind by 0.02 at every point: within the spread of either method's mean (sd ~0.05) but
        # significantly behind once paired
        "shifted": [sign * (b + 1.0 - 0.02) for b in base],
        "far": [sign * (b - 1.0) for b in base],
    }


@pytest.mark.parametrize(("sign", "direction"), [(1.0, "higher"), (-1.0, "lower")])
def test_tied_with_best(sign: float, direction: str) -> None:
    sample = joint_bootstrap(_tie_example(sign), n_boot=1000, seed=17)
    best, tied = tied_with_best(sample, direction)
    assert best == "best"  # equal point estimates: the first in order
    np.testing.assert_array_equal(tied, [True, True, True, False, False])
    # the opposite direction makes "far" the best, clearly ahead of the rest
    best, tied = tied_with_best(sample, "lower" if direction == "higher" else "higher")
    assert best == "far"
    np.testing.assert_array_equal(tied, [False, False, False, False, True])


def test_tied_with_best_first_of_equal_is_best() -> None:
    draws = np.array([[1.0, 1.0], [2.0, 2.0]])
    sample = BootstrapSample(("b", "a"), np.array([1.5, 1.5]), draws, 1, True)
    assert tied_with_best(sample, "higher")[0] == "b"
    with pytest.raises(ValueError, match="direction"):
        tied_with_best(sample, "up")


def test_tie_aware_ranks() -> None:
    np.testing.assert_array_equal(tie_aware_ranks(np.array([0.9, 0.5, 0.9, 0.1]), "higher"), [1.5, 3, 1.5, 4])
    np.testing.assert_array_equal(tie_aware_ranks(np.array([0.9, 0.5, 0.9, 0.1]), "lower"), [3.5, 2, 3.5, 1])
    assert 0.1 + 0.2 != 0.3
    np.testing.assert_array_equal(tie_aware_ranks(np.array([0.1 + 0.2, 0.3, 0.2]), "higher"), [1.5, 1.5, 3])
    np.testing.assert_array_equal(tie_aware_ranks(np.array([0.3 + 1e-9, 0.3, 0.2]), "higher"), [1, 2, 3])
    np.testing.assert_array_equal(tie_aware_ranks(np.array([-1e-20, 0.0, 1e-20]), "lower"), [1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        tie_aware_ranks(np.array([1.0, np.nan]), "higher")
    with pytest.raises(ValueError, match="direction"):
        tie_aware_ranks(np.array([1.0, 2.0]), "best")


def test_rank_draws() -> None:
    methods = ("a", "b", "c")
    higher = BootstrapSample(
        methods, np.array([3.0, 2.0, 1.0]), np.array([[3.0, 2, 1], [1, 2, 3], [1, 1, 2]]), 1, True
    )
    lower = BootstrapSample(
        methods, np.array([1.0, 2.0, 3.0]), np.array([[1.0, 2, 3], [1, 2, 3], [1, 2, 3]]), 1, True
    )
    point, draws = rank_draws([higher, lower], ["higher", "lower"])
    np.testing.assert_array_equal(point, [1, 2, 3])
    # row 0: both blocks rank a, b, c; row 1: reversed in the first; row 2: a and b tie for 2nd in the first
    np.testing.assert_array_equal(draws, [[1, 2, 3], [2, 2, 2], [1.75, 2.25, 2]])
    with pytest.raises(ValueError, match="methods"):
        rank_draws(
            [higher, BootstrapSample(("a", "c", "b"), lower.values, lower.draws, 1, True)], ["higher"] * 2
        )
    with pytest.raises(ValueError, match="n_boot"):
        rank_draws([higher, BootstrapSample(methods, lower.values, lower.draws[:2], 1, True)], ["higher"] * 2)
    with pytest.raises(ValueError, match="direction"):
        rank_draws([higher, lower], ["higher"])


# --- Friedman and Nemenyi (Demsar 2006) ----------------------------------------------------------


def test_friedman_demsar_example() -> None:
    # Demsar (2006), section 3.2.2: four classifiers on 14 data sets
    chi2, p_chi2, f_stat, p_f = friedman_from_ranks([3.143, 2.000, 2.893, 1.964], 14)
    assert chi2 == pytest.approx(9.28, abs=0.005)
    assert f_stat == pytest.approx(3.69, abs=0.005)
    # "F_F is distributed according to the F distribution with 4 - 1 = 3 and (4 - 1)(14 - 1) = 39
    # degrees of freedom. The critical value of F(3, 39) for alpha = 0.05 is 2.85"
    assert p_f == pytest.approx(sps.f.sf(f_stat, 3, 39))
    assert sps.f.ppf(0.95, 3, 39) == pytest.approx(2.85, abs=0.005)
    assert p_f < 0.05
    assert p_chi2 == pytest.approx(sps.chi2.sf(chi2, 3))


def test_nemenyi_cd_demsar() -> None:
    assert nemenyi_cd(4, 14) == pytest.approx(2.569 * math.sqrt(4 * 5 / (6 * 14)), abs=1e-3)
    assert nemenyi_cd(4, 14) == pytest.approx(1.25, abs=0.005)
    # Demsar's Table 5(a), q_0.05 for k = 2..10. The table divides 3-decimal studentized range
    # quantiles by sqrt(2) and rounds again, so it can be off by up to 0.0005/sqrt(2) + 0.0005.
    table = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]
    for k, q in zip(range(2, 11), table, strict=True):
        n = 7
        got = nemenyi_cd(k, n) / math.sqrt(k * (k + 1) / (6 * n))
        assert got == pytest.approx(q, abs=0.00086), k
    # q_0.10 from Demsar's Table 5(a), second row, k = 2..4
    for k, q in zip(range(2, 5), [1.645, 2.052, 2.291], strict=True):
        assert nemenyi_cd(k, 1, alpha=0.10) / math.sqrt(k * (k + 1) / 6) == pytest.approx(q, abs=0.00086)


def test_friedman_nemenyi_matches_scipy() -> None:
    rng = np.random.default_rng(18)
    scores = rng.normal(size=(10, 5)) + np.linspace(0, 1, 5)
    directions = ["higher", "lower"] * 5
    result = friedman_nemenyi(scores, list("abcde"), directions)
    # "lower" rows ranked as "higher" rows of the negated scores; scipy takes columns as treatments
    signed = scores * np.where(np.array(directions) == "higher", 1.0, -1.0)[:, None]
    ref = sps.friedmanchisquare(*signed.T)
    assert result.chi2 == pytest.approx(ref.statistic, rel=1e-10)
    assert result.p_chi2 == pytest.approx(ref.pvalue, rel=1e-8)
    ranks = sps.rankdata(-signed, axis=1)
    np.testing.assert_allclose(result.avg_ranks, ranks.mean(axis=0))
    assert result.n_blocks == 10 and result.methods == tuple("abcde")
    assert result.cd == pytest.approx(nemenyi_cd(5, 10))


def test_friedman_nemenyi_perfect_agreement_and_errors() -> None:
    scores = np.array([[3.0, 2.0, 1.0], [30.0, 20.0, 10.0]])
    result = friedman_nemenyi(scores, ["a", "b", "c"], ["higher", "higher"])
    np.testing.assert_array_equal(result.avg_ranks, [1, 2, 3])
    assert result.chi2 == pytest.approx(4.0)  # N (k - 1): every block agrees
    assert result.f_stat == math.inf and result.p_f == 0.0
    # CD = 2.343 * sqrt(3 * 4 / (6 * 2)) = 2.34 > 2: no pair differs
    assert result.cliques == (("a", "b", "c"),)
    with pytest.raises(ValueError, match="NaN"):
        friedman_nemenyi(np.array([[1.0, np.nan], [1.0, 2.0]]), ["a", "b"], ["higher"] * 2)
    with pytest.raises(ValueError, match="N >= 2"):
        friedman_nemenyi(np.array([[1.0, 2.0]]), ["a", "b"], ["higher"])
    with pytest.raises(ValueError, match="k >= 2"):
        friedman_nemenyi(np.array([[1.0], [2.0]]), ["a"], ["higher"] * 2)
    with pytest.raises(ValueError, match="direction"):
        friedman_nemenyi(scores, ["a", "b", "c"], "hi")


def test_cliques_hand_made() -> None:
    # sorted: a 1.0, b 1.5, c 2.4, d 3.0, e 4.5; given in shuffled order
    methods = ["d", "a", "e", "c", "b"]
    ranks = [3.0, 1.0, 4.5, 2.4, 1.5]
    assert cliques_from_ranks(methods, ranks, 1.0) == (("a", "b"), ("b", "c"), ("c", "d"))
    # a run inside a longer one is not a clique of its own
    assert cliques_from_ranks(["x", "y", "z"], [1.0, 1.2, 1.4], 1.0) == (("x", "y", "z"),)
    # a difference of exactly CD is significant
    assert cliques_from_ranks(["x", "y"], [1.0, 2.0], 1.0) == ()
    assert cliques_from_ranks(["x", "y", "z"], [1.0, 2.0, 3.0], 1.5) == (("x", "y"), ("y", "z"))


# --- Spearman with an interval -------------------------------------------------------------------


def test_spearman_with_ci() -> None:
    point = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    rng = np.random.default_rng(19)
    draws = point + rng.uniform(-0.4, 0.4, size=(300, 6))  # order unchanged in every replicate
    rho, low, high, p = spearman_with_ci(draws, point, [1, 2, 3, 4, 5, 6])
    assert (rho, low, high) == pytest.approx((1.0, 1.0, 1.0))
    assert p < 0.01
    rho, low, high, p = spearman_with_ci(draws, point, [6, 5, 4, 3, 2, 1])
    assert (rho, low, high) == pytest.approx((-1.0, -1.0, -1.0))
    assert p < 0.01
    # half the replicates reversed: the interval spans [-1, 1]
    mixed = np.concatenate([draws[:150], draws[150:, ::-1]])
    _, low, high, _ = spearman_with_ci(mixed, point, point)
    assert (low, high) == pytest.approx((-1.0, 1.0))
    with pytest.raises(ValueError, match="rank_draws"):
        spearman_with_ci(draws[:, :5], point, point)


# --- the figure ----------------------------------------------------------------------------------


def test_plot_critical_difference(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from paper_figures.critical_difference import plot_critical_difference

    rng = np.random.default_rng(20)
    scores = rng.normal(size=(8, 5)) + np.arange(5)
    result = friedman_nemenyi(scores, ["DualDA", "TRAK", "EK-FAC", "Representer", "random"], ["higher"] * 8)
    paths = plot_critical_difference(result, tmp_path / "cd_test", "test figure")
    assert [p.name for p in paths] == ["cd_test.png", "cd_test.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    assert all(p.stat().st_size > 1000 for p in paths)

"""LiSSA's explain with cached training features against the naive path that recomputes them.

The feature extractor is frozen, so :class:`methods.lissa.LiSSA` runs it once over the training set
in ``fit`` and computes every HVP on the classifier from the cached features; the naive path
(``LiSSA._explain_recomputing_features``, same outputs: tests/test_influence_methods.py) runs each
HVP batch through the full BasicConv. Both explain the same 32 test points of MNIST (2,000 training
points, the ``mnist_small_setup`` fixture) with a short recursion (depth 50, 1 repeat, batch 32):
the cost per HVP step is what differs, and it scales linearly with depth.

Run: ``.venv/bin/python -m pytest tests/benchmarks --benchmark-only -k lissa``.
"""

from __future__ import annotations

import statistics
import time

import torch

from harness.cache import Cache
from methods.lissa import LiSSA, LiSSAConfig

ROUNDS = 3


def test_lissa_cached_features_vs_recomputed(benchmark, report_ratio, mnist_small_setup, tmp_path) -> None:
    _, data, model = mnist_small_setup
    x = data.test.inputs[:32]
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    method = LiSSA(LiSSAConfig(depth=50, repeats=1, hvp_batch_size=32))
    method.fit(model, data.train, cache=Cache(tmp_path))

    fast = benchmark.pedantic(method.explain, args=(x, targets), rounds=ROUNDS, warmup_rounds=1)
    naive_times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        naive = method._explain_recomputing_features(x, targets)
        naive_times.append(time.perf_counter() - start)
    torch.testing.assert_close(fast, naive, rtol=1e-4, atol=1e-5 * float(fast.abs().max()))
    fast_s = benchmark.stats.stats.median
    naive_s = statistics.median(naive_times)
    report_ratio(benchmark, cached_s=fast_s, recomputed_s=naive_s, ratio=fast_s / naive_s)

"""`dabench check`: the method contract over the whole registry, and what it says about broken methods.

The contract test of every registered method is this file's first test: it runs the same code as
`dabench check NAME` (harness/check.py), so a method added to the repo or loaded as a plug-in passes
exactly the checks the suites rely on.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.check import check_method, format_table, passed
from harness.registry import METHODS
from methods.random_baseline import RandomAttribution

PROJECT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS.names())
def test_every_registered_method_passes_the_contract(name: str, tmp_path: Path) -> None:
    results = check_method(name, workdir=tmp_path)
    assert passed(results), format_table(name, results)
    checks = {r.name: r for r in results}
    assert {"presets", "explain before fit", "fit", "shape and dtype", "finite", "deterministic"} <= set(
        checks
    )
    if "cache" in METHODS.get(name).supports:
        assert checks["cache hit"].ok is True
    if "self_influence" in METHODS.get(name).supports:
        assert checks["self-influence"].ok is True


# ----- broken methods: each failure is named, with its fix ------------------------------------
class _NaNScores(RandomAttribution):
    def explain(self, x, targets):  # noqa: ANN001, ANN201
        scores = super().explain(x, targets)
        scores[0, 0] = float("nan")
        return scores


class _NoFitCheck(RandomAttribution):
    def explain(self, x, targets):  # noqa: ANN001, ANN201
        return torch.zeros(len(x), self.n_train_ or 1)


class _Unseeded(RandomAttribution):
    def explain(self, x, targets):  # noqa: ANN001, ANN201
        self._require_fitted()
        return torch.from_numpy(
            __import__("numpy").random.default_rng().random((len(x), self.n_train_))
        ).float()


class _WrongShape(RandomAttribution):
    def explain(self, x, targets):  # noqa: ANN001, ANN201
        return super().explain(x, targets)[:, :-1].double()


class _UndeclaredCacheMiss(RandomAttribution):
    supports = frozenset({"cache", "self_influence"})

    def cache_key_extra(self, model, train):  # noqa: ANN001, ANN201
        import time

        return {"when": time.time_ns()}  # a key that is never the same twice: every fit misses


@pytest.mark.parametrize(
    ("cls", "failing", "fix"),
    [
        (_NaNScores, "finite", "guard divisions"),
        (_NoFitCheck, "explain before fit", "_require_fitted"),
        (_Unseeded, "deterministic", "generator"),
        (_WrongShape, "shape and dtype", "float32"),
        (_UndeclaredCacheMiss, "cache hit", "pure function"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else str(v),
)
def test_a_broken_method_fails_the_named_check_with_its_fix(
    cls: type, failing: str, fix: str, tmp_path: Path, monkeypatch
) -> None:
    METHODS.names()
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))
    monkeypatch.setattr(METHODS, "_loaded", dict(METHODS._loaded))
    METHODS.add("broken_test_method", cls, "for a test")
    results = check_method("broken_test_method", workdir=tmp_path)
    assert not passed(results)
    failed = {r.name: r for r in results if r.ok is False}
    assert failing in failed, format_table("broken_test_method", results)
    assert fix in failed[failing].fix
    assert "fix: " in format_table("broken_test_method", results)


def test_check_command_prints_the_table_and_exits_1_on_a_failure(tmp_path: Path) -> None:
    plugin = tmp_path / "nan_method.py"
    plugin.write_text(
        "from harness.registry import register_method\n"
        "from methods.random_baseline import RandomAttribution\n\n\n"
        '@register_method("nan_method", "returns NaN")\n'
        "class NaNMethod(RandomAttribution):\n"
        "    def explain(self, x, targets):\n"
        "        return super().explain(x, targets) * float('nan')\n"
    )
    cmd = [sys.executable, "-m", "harness", "check"]
    bad = subprocess.run(
        [*cmd, "nan_method", "--plugin", str(plugin)], capture_output=True, text=True, cwd=PROJECT
    )
    assert bad.returncode == 1, bad.stderr
    assert "finite" in bad.stdout and "FAIL" in bad.stdout and "fix:" in bad.stdout
    good = subprocess.run([*cmd, "random"], capture_output=True, text=True, cwd=PROJECT)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "random: all checks passed" in good.stdout
    unknown = subprocess.run([*cmd, "randm"], capture_output=True, text=True, cwd=PROJECT)
    assert unknown.returncode == 2 and "did you mean 'random'" in unknown.stderr

"""A wrong explanation is a failure (issue 16, section 4): NaN, inf, the wrong shape, not a tensor or
integer-valued explanations give a failed record with one line saying what was wrong, exit code 1,
no number in any table, and `--retry-failed` reruns the run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent

PLUGIN = """
import torch
from harness.registry import register_method
from methods.random_baseline import RandomAttribution


@register_method("broken_{kind}", "explanations that cannot be attributions, for a test")
class Broken(RandomAttribution):
    supports = frozenset({{"self_influence"}})

    def explain(self, x, targets):
        scores = super().explain(x, targets)
        kind = "{kind}"
        if kind == "nan":
            scores[0, 3] = float("nan")
        elif kind == "inf":
            scores[-1, 0] = float("inf")
        elif kind == "shape":
            scores = scores[:, :-1]
        elif kind == "list":
            scores = scores.tolist()
        elif kind == "integer":
            scores = (scores * 10).long()
        return scores
"""

EXPECTED = {
    "nan": "explain returned 1 non-finite value(s) (NaN or inf) of 1152",
    "inf": "explain returned 1 non-finite value(s)",
    "shape": "explain returned 24x47, expected 24x48 (n_test x n_train)",
    "list": "explain returned a list, expected a torch.Tensor",
    "integer": "explain returned int64 values; attributions are floating point",
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_wrong_explanations_fail_the_run_with_one_line(kind: str, tmp_path: Path) -> None:
    plugin = tmp_path / f"broken_{kind}.py"
    plugin.write_text(PLUGIN.format(kind=kind))
    results = tmp_path / "results"
    run = [
        sys.executable, "-m", "harness", "run", "--task", "toy", "--methods", f"broken_{kind},random",
        "--metrics", "class_detection,sparsity", "--plugin", str(plugin),
        "--results-dir", str(results), "--cache-dir", str(tmp_path / "cache"), "--repeats", "1",
    ]  # fmt: skip
    first = subprocess.run(run, capture_output=True, text=True, cwd=PROJECT)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "1 failed" in first.stdout
    from harness.records import scan_records

    good, bad = scan_records(results / "records")
    assert not bad
    failed = [r for r in good if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["error"]["type"] == "ExplanationError"
    assert EXPECTED[kind] in failed[0]["error"]["message"]
    assert "\n" not in failed[0]["error"]["message"]

    report = subprocess.run(
        [sys.executable, "-m", "harness", "report", "--results-dir", str(results), "--no-figures"],
        capture_output=True,
        text=True,
        cwd=PROJECT,
    )
    assert report.returncode == 0, report.stderr
    for table in ("metrics", "ranks", "speedup", "summary"):
        path = results / "tables" / f"{table}.csv"
        if path.exists():
            assert f"broken_{kind}" not in path.read_text(), f"{table} lists the failed run"
    printed = " ".join(report.stdout.split())  # the list of failures wraps at 100 columns
    assert f"broken_{kind} on toy/std" in printed and EXPECTED[kind] in printed
    assert all(len(line) <= 100 for line in report.stdout.splitlines())

    again = subprocess.run([*run, "--retry-failed"], capture_output=True, text=True, cwd=PROJECT)
    assert again.returncode == 1 and "1 already recorded" in again.stdout  # random was kept
    assert (
        "1 failed" in again.stdout and EXPECTED[kind] in again.stderr + again.stdout
    )  # it reran, failed again

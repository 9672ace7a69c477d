"""`dabench report` beside the reference: pairing by run_id, differences, flags, ratios; short labels;
the console summary fits 100 columns.

One toy grid (random, feature similarity, DualDA at two C; class detection via sparsity, two seeds) is
the reference; the "run" is a copy of its records with one record's values and timings perturbed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dabench.report import build_report
from harness import records
from harness.reference_comparison import _ratio_text
from harness.runs import short_labels
from harness.stats import joint_bootstrap, percentile_interval

SEEDS = (0, 1)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from harness.grid import run_grid
    from harness.runner import ComponentSpec, RunSpec, TimingConfig

    root = tmp_path_factory.mktemp("reference")
    methods = [ComponentSpec("random"), ComponentSpec("feature_similarity")]
    methods += [ComponentSpec("dualda", (("C", c),)) for c in (1e-5, 1e-3)]
    specs = [
        RunSpec(
            task=ComponentSpec("toy"),
            method=method,
            metrics=(ComponentSpec("sparsity"),),
            seed=seed,
            results_dir=str(root / "suite"),
            cache_dir=str(root / "cache"),
            timing=TimingConfig(repeats=1, batch_size=8),
        )
        for method in methods
        for seed in SEEDS
    ]
    outcome = run_grid(specs, progress=False)
    assert not outcome.failed
    return root / "suite"


def _copy_run(reference: Path, target: Path) -> Path:
    shutil.copytree(reference / "records", target / "records")
    return target


def _dualda_record(folder: Path, seed: int) -> Path:
    for path in (folder / "records").glob("*.json"):
        rec = json.loads(path.read_text())
        if rec["method"]["label"] == "dualda" and rec["task"]["seed"] == seed:
            return path
    raise AssertionError("no dualda record")


@pytest.fixture(scope="module")
def perturbed(reference: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """This run: the reference's records, DualDA C=1e-3's sparsity raised and its times scaled."""
    run = _copy_run(reference, tmp_path_factory.mktemp("run"))
    changes = {}
    for seed in SEEDS:
        path = _dualda_record(run, seed)
        rec = json.loads(path.read_text())
        entry = rec["metrics"]["sparsity"]
        before = np.asarray(entry["per_point"], dtype=float)
        shift = 0.05 + 0.01 * np.arange(len(before)) / len(before)  # all positive: the interval excludes 0
        entry["per_point"] = (before + shift).tolist()
        entry["value"] = float(np.mean(before + shift))
        rec["timings"]["explain"]["per_point_median_s"] *= 2.0 if seed == 0 else 4.0
        if rec["timings"]["fit"]["cold_s"] is not None:
            rec["timings"]["fit"]["cold_s"] *= 3.0
        changes[seed] = shift
        path.write_text(json.dumps(rec))  # the test edits the copy in place
    return run, changes


def test_difference_flag_and_ratios_against_a_hand_computation(reference: Path, perturbed, tmp_path: Path):
    run, shifts = perturbed
    report = build_report(run, tmp_path / "tables", figures=False, html=False, reference_dir=reference)
    assert report.reference is not None and report.reference.table is not None
    frame = report.table("vs_reference").frame
    row = frame[(frame["method"] == "DualDA C=1e-3") & (frame["metric"] == "sparsity")].iloc[0]
    # hand computation: the differences of the per-point scores, two-stage bootstrap over seeds and points
    diffs = [shifts[s] for s in SEEDS]
    assert row["difference"] == pytest.approx(np.mean([d.mean() for d in diffs]))
    sample = joint_bootstrap({"d": diffs}, seed=0)
    assert row["ci_low"] > 0.05 - 1e-9 and row["ci_high"] < 0.06 + 1e-9  # within the shifts' range
    low, high = percentile_interval(sample.draws[:, 0])
    assert row["ci_high"] - row["ci_low"] == pytest.approx(float(high - low), rel=0.5)
    assert row["differs"] is True or row["differs"] == True  # noqa: E712 (numpy bool)
    assert row["n_metric_seeds"] == 2 and row["resampled"] == "test points within seeds, and seeds"
    assert row["reference_value"] + row["difference"] == pytest.approx(row["this_value"])

    # explain ratio: ratio of the means over the paired seeds, (2 a + 4 b) / (a + b)
    ref = {s: json.loads(_dualda_record(reference, s).read_text()) for s in SEEDS}
    a, b = (ref[s]["timings"]["explain"]["per_point_median_s"] for s in SEEDS)
    assert row["explain_ratio"] == pytest.approx((2 * a + 4 * b) / (a + b))
    colds = [ref[s]["timings"]["fit"]["cold_s"] for s in SEEDS]
    if all(c is not None for c in colds):
        assert row["fit_cold_ratio"] == pytest.approx(3.0)

    # every other method computed the same thing: difference 0, interval [0, 0], not flagged
    others = frame[frame["method"] != "DualDA C=1e-3"]
    assert len(others) and (others["difference"] == 0).all() and not others["differs"].any()
    assert (others["explain_ratio"] == 1).all()
    lines = dict((method, line) for _, method, line in report.reference.lines)
    assert lines["DualDA C=1e-3"].startswith(f"explain x{_ratio_text(row['explain_ratio'])}, cold fit x3.0")
    assert lines["DualDA C=1e-3"].endswith("1 of 1 metrics differ: sparsity")
    assert lines["Random"].endswith("0 of 1 metrics differ")
    assert "1 of 4 values differ" in report.reference.overall
    for ext in ("csv", "md", "tex"):
        assert (tmp_path / "tables" / f"vs_reference.{ext}").stat().st_size > 0


def test_one_seed_without_per_point_scores_has_no_interval(reference: Path, tmp_path: Path) -> None:
    run = _copy_run(reference, tmp_path / "run")
    for path in (run / "records").glob("*.json"):
        rec = json.loads(path.read_text())
        if rec["task"]["seed"] != 0:
            path.unlink()  # one paired seed
            continue
        rec["metrics"]["sparsity"]["per_point"] = None
        rec["metrics"]["sparsity"]["value"] += 0.1
        path.write_text(json.dumps(rec))  # the test edits the copy in place
    report = build_report(run, tmp_path / "tables", figures=False, html=False, reference_dir=reference)
    frame = report.table("vs_reference").frame
    assert np.allclose(frame["difference"], 0.1)
    assert frame["ci_low"].isna().all() and frame["differs"].isna().all()
    assert (frame["resampled"] == "no interval: one paired seed, no per-point scores").all()


def test_unmatched_runs_give_one_note_and_no_table(reference: Path, tmp_path: Path) -> None:
    run = _copy_run(reference, tmp_path / "run")
    for path in (run / "records").glob("*.json"):
        rec = json.loads(path.read_text())
        rec["run_id"] = "other-" + rec["run_id"]
        rec["record_id"] = "other-" + rec["record_id"]
        rec["task"]["n_train"] = 96  # another size
        path.unlink()
        records.write_record(rec, path.parent)
    report = build_report(run, tmp_path / "tables", figures=False, html=False, reference_dir=reference)
    assert report.reference is not None and report.reference.table is None
    assert not any(t.name == "vs_reference" for t in report.tables)
    notes = [n for n in report.missing if "no comparison with the reference" in n]
    assert len(notes) == 1 and str(reference) in notes[0] and "another size" in notes[0]
    assert not (tmp_path / "tables" / "vs_reference.csv").exists()


def test_results_inside_the_reference_are_not_compared(reference: Path, tmp_path: Path) -> None:
    report = build_report(reference, tmp_path, figures=False, html=False, reference_dir=reference.parent)
    assert report.reference is None and "inside the reference folder" in report.reference_skipped


def test_console_fits_100_columns_and_html_has_the_section(
    reference: Path, perturbed, tmp_path: Path, capsys
):
    from dabench.cli import main

    run, _ = perturbed
    html = tmp_path / "r.html"
    argv = ["report", "--results-dir", str(run), "--out", str(tmp_path / "t"), "--figures-out", str(tmp_path)]
    assert main([*argv, "--html", str(html), "--reference", str(reference)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 100, max(lines, key=len)
    assert "this run vs the reference" in out and "1 of 1 metrics differ: sparsity" in out
    assert any(line.strip().startswith("overall:") for line in lines)
    assert "speed-up" in out and "html:" in out
    page = html.read_text()
    assert 'id="vs_reference"' in page and "1 of 1 metrics differ" in page
    assert "dualda(C=1e-05)" in page  # the full label, in the footnotes


def test_short_labels_are_unique_and_short(reference: Path) -> None:
    from harness.runs import load_runs

    runs = load_runs(reference / "records")
    assert set(runs.frame["method"]) == {
        "Random",
        "Similarity (features, cos)",
        "DualDA C=1e-5",
        "DualDA C=1e-3",
    }
    labels = short_labels(
        [
            ("ekfac", "ekfac(covariance_max_examples=5000,lambda_max_examples=5000,max_module_params=100000)",
             {"covariance_max_examples": 5000, "lambda_max_examples": 5000, "max_module_params": 100000}),
            ("tracin", "tracin(max_checkpoints=3)", {"max_checkpoints": 3}),
            ("tracin", "tracin(max_checkpoints=3,proj_dim=256)", {"max_checkpoints": 3, "proj_dim": 256}),
            ("dualda", "dualda(C=1e-05)", {"C": 1e-5}),
            ("dualda", "dualda(C=1e-05,tol=0.001)", {"C": 1e-5, "tol": 1e-3}),
            ("feature_similarity", "feature_similarity(metric=dot)", {"metric": "dot"}),
            ("my_plugin", "my_plugin(alpha=2)", {"alpha": 2}),
        ]
    )  # fmt: skip
    assert labels[
        "ekfac(covariance_max_examples=5000,lambda_max_examples=5000,max_module_params=100000)"
    ] == ("EK-FAC")
    assert labels["tracin(max_checkpoints=3)"] == "TracIn"
    assert labels["tracin(max_checkpoints=3,proj_dim=256)"] == "TracIn proj_dim=256"
    assert labels["dualda(C=1e-05)"] == "DualDA C=1e-5"
    assert labels["dualda(C=1e-05,tol=0.001)"] == "DualDA C=1e-5, tol=1e-3"
    assert labels["feature_similarity(metric=dot)"] == "Similarity (features, dot)"
    assert labels["my_plugin(alpha=2)"] == "my_plugin(alpha=2)"  # not registered: its own label
    assert len(set(labels.values())) == len(labels)
    assert max(len(v) for k, v in labels.items() if not k.startswith("my_")) <= 30


def test_short_labels_never_collapse_two_configs() -> None:
    # two configs that differ only in a key the name already states would share "DualDA C=1e-3"
    labels = short_labels([("dualda", "dualda", {"C": 1e-3}), ("dualda", "dualda(C=0.001)", {"C": 0.001})])
    assert len(set(labels.values())) == 2

"""`dabench report`: tables checked against hand-computed values, figures, and the HTML page in Chromium.

One results folder per module: real records of a small grid on the toy task (five methods, one
training-set size, the sparsity metric), plus synthetic records made by copying a real one and
editing it: an "mnist" setting with the paper's methods (so the paper's numbers apply), three of
the four variants (no mark), two seeds of one method, failed metrics, a failed record, and std
records at four training-set sizes with known growth.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dabench.report import build_report
from harness import records
from harness.paper_numbers import FIGURE1, format_c, paper_name
from harness.quality_tables import rank_metric
from harness.report import Report, write_report
from harness.table_format import latex_escape

# --- the synthetic "mnist" setting (n_train 48, the toy records' size): hand-set values -----------
#: label -> (method name, config, std class_detection, lds, coreset_selection or None (failed))
METHODS = {
    "dualda": ("dualda", {"C": 1e-3}, 0.9, 0.3, 1.0),
    "dualda(C=1e-05)": ("dualda", {"C": 1e-5}, 0.9 + 1e-15, 0.1, 1.2),  # ties with dualda to 12 digits
    "dualda(C=0.1)": ("dualda", {"C": 0.1}, 0.7, 0.2, 1.0),
    "lissa": ("lissa", {}, 0.8, 0.4, 0.9),
    "random": ("random", {}, 0.95, 0.0, None),
}
#: label -> [(cold fit s or None, warm fit s, explain s per point)] per seed
TIMES = {
    "dualda": [(2.0, 0.1, 1e-3)],
    "dualda(C=1e-05)": [(1.0, 0.1, 0.5e-3)],
    "dualda(C=0.1)": [(3.0, 0.1, 1.5e-3)],
    "lissa": [(None, 0.5, 0.02)],
    "random": [(0.1, 0.01, 0.05e-3), (0.3, 0.01, 0.15e-3)],
}
WARMUP = {"dualda": 0.75, "lissa": 2.5}  # one-off process costs: in the notes, never in cache_s
BATCH = {"lissa": 5}  # LiSSA's explain batch (the paper's); the others the harness' 8
SUBCLASS = {"dualda": 0.6, "lissa": 0.6, "random": 0.1}  # group variant; the others have none
MISLABEL = {"dualda": 0.55, "lissa": 0.95}  # corrupt variant; random's failed
SIZES = (48, 96, 192, 384)  # std records for the scaling figure: lissa grows like n, dualda like sqrt(n)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _metric(value: float | None, direction: str, details: dict | None = None) -> dict:
    return {
        "value": value,
        "direction": direction,
        "version": "1",
        "config": {},
        "details": details or {},
        "status": "ok" if value is not None else "failed",
        "error": None if value is not None else {"type": "DataError", "message": "synthetic failure"},
    }


def _synthetic(template: dict, label: str, *, variant: str, seed: int = 0, n_train: int = 48) -> dict:
    name, config, *_ = METHODS[label]
    rec = copy.deepcopy(template)
    rec["run_id"] = (
        f"syn-{label}-{variant}-{seed}-{n_train}".replace("(", "").replace(")", "").replace("=", "")
    )
    rec["record_id"] = f"{rec['run_id']}-synthetic"
    rec["task"].update(name="mnist", variant=variant, seed=seed, n_train=n_train)
    rec["task"]["config"] = {**rec["task"]["config"], "variant": variant}
    rec["method"].update(name=name, label=label, config=dict(config), config_hash=label)
    rec["diagnostics"] = {}
    rec["metrics"] = {}
    cold, warm, per_point = TIMES[label][seed]
    rec["timings"]["fit"] = {"cold_s": cold, "warm_s": warm, "cache_used": True}
    rec["timings"]["explain"].update(
        per_point_median_s=per_point, n_points=24, n_test_total=24, extrapolated=False
    )
    rec["timings"]["warmup_s"] = WARMUP.get(label, 0.0)
    rec["timings"]["explain"]["batch_size"] = BATCH.get(label, 8)
    return rec


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from harness.grid import run_grid
    from harness.runner import ComponentSpec, RunSpec, TimingConfig

    root = tmp_path_factory.mktemp("report")
    methods = [ComponentSpec("random"), ComponentSpec("feature_similarity")]
    methods += [ComponentSpec("dualda", (("C", c),)) for c in (1e-5, 1e-3, 1e-1)]
    specs = [
        RunSpec(
            task=ComponentSpec("toy"),
            method=method,
            metrics=(ComponentSpec("sparsity"),),  # class_detection would import quanda: 10+ s
            results_dir=str(root),
            cache_dir=str(root / "cache"),
            timing=TimingConfig(repeats=1, batch_size=8),
        )
        for method in methods
    ]
    outcome = run_grid(specs, progress=False)
    assert not outcome.failed
    real = [records.read_record(p) for p in outcome.written]
    template = next(r for r in real if r["method"]["name"] == "dualda")
    out = root / "records"

    for label, (_, _, class_detection, lds, coreset) in METHODS.items():
        for seed in range(len(TIMES[label])):
            rec = _synthetic(template, label, variant="std", seed=seed)
            value = class_detection if seed == 0 else 1.0  # random: mean over its two seeds = 0.95
            if label == "random":
                value = 0.9 if seed == 0 else 1.0
            rec["metrics"] = {
                "class_detection": _metric(value, "higher"),
                "lds": _metric(lds, "higher"),
                "coreset_selection": _metric(coreset, "lower"),
            }
            if label.startswith("dualda"):
                c = METHODS[label][1]["C"]
                rec["diagnostics"] = {"C": c, "n_support": {1e-5: 36, 1e-3: 12, 0.1: 6}[c]}
                rec["sparsity"] = {"l0_eps": 1 - c, "hoyer": 0.5 + c, "exact_zero_share": 1 - c}
            records.write_record(rec, out)
        if label in SUBCLASS:
            rec = _synthetic(template, label, variant="group")
            # class detection of the group model must NOT reach the table (it comes from std)
            rec["metrics"] = {
                "subclass_detection": _metric(SUBCLASS[label], "higher"),
                "class_detection": _metric(0.0, "higher"),
            }
            records.write_record(rec, out)
        if label in ("dualda", "lissa", "random"):
            rec = _synthetic(template, label, variant="corrupt")
            score = MISLABEL.get(label)
            curve = {"x": [0.0, 0.5, 1.0], "y": [0.0, score or 0.5, 1.0]}
            rec["metrics"] = {"mislabel_detection": _metric(score, "higher", {"curve": curve})}
            records.write_record(rec, out)
    for n in SIZES[1:]:
        for label, exponent in (("lissa", 1.0), ("dualda", 0.5)):
            rec = _synthetic(template, label, variant="std", n_train=n)
            rec["timings"]["explain"]["per_point_median_s"] = TIMES[label][0][2] * (n / SIZES[0]) ** exponent
            records.write_record(rec, out)
    failed = copy.deepcopy(template)
    failed.update(
        run_id="syn-failed",
        record_id="syn-failed-1",
        status="failed",
        error={"type": "RuntimeError", "message": "x"},
    )
    records.write_record(failed, out)
    return root


@pytest.fixture(scope="module")
def report(results: Path) -> Report:
    return build_report(results, compare_reference=False)  # tests/test_reference_comparison.py has that


def _rows(table, setting_prefix: str) -> dict:
    """Rows by the records' full label (the ``method`` column holds the short one)."""
    frame = table.frame[table.frame["setting"].str.startswith(setting_prefix)]
    return {row["method_label"]: row for _, row in frame.iterrows()}


# --- tables ---------------------------------------------------------------------------------
def test_speedup_table_against_hand_computed_totals(report: Report) -> None:
    rows = _rows(report.table("speedup"), "mnist, n_train=48,")
    expected_total = {
        "dualda": 2.0 + 1e-3 * 2000,
        "dualda(C=1e-05)": 1.0 + 0.5e-3 * 2000,
        "dualda(C=0.1)": 3.0 + 1.5e-3 * 2000,
        "lissa": 0.5 + 0.02 * 2000,  # warm fit: no cold one was measured
        "random": 0.2 + 0.1e-3 * 2000,  # means over two seeds: fit 0.2 s, 0.1 ms per point
    }
    assert set(rows) == set(expected_total)
    for label, total in expected_total.items():
        assert rows[label]["total_2000_s"] == pytest.approx(total)
        assert rows[label]["speedup"] == pytest.approx(total / 4.0)  # reference: dualda (C=1e-3), 4 s
        assert rows[label]["reference"] == "DualDA C=1e-3"
        assert rows[label]["extrapolated"]  # 24 points explained, the total is for 2,000
        assert rows[label]["n_explained"] == 24
    assert rows["lissa"]["cache_from"] == "warm" and rows["dualda"]["cache_from"] == "cold"
    assert rows["lissa"]["explain_batch"] == 5 and rows["dualda"]["explain_batch"] == 8
    warm_note = next(n for n in report.table("speedup").notes if "one-off process costs" in n)
    assert "LiSSA 2.5 s" in warm_note and "DualDA C=1e-3 0.75 s" in warm_note and "Random" not in warm_note
    assert rows["random"]["n_seeds"] == 2 and rows["random"]["cache_s"] == pytest.approx(0.2)
    # the paper's Figure 1 on MNIST: LiSSA 1.06e6 s, DualDA C=1e-3 10.6 s, C=1e-5 10.5 s
    assert rows["lissa"]["paper_total_s"] == 1.06e6
    assert rows["lissa"]["paper_speedup"] == pytest.approx(1.06e6 / 10.6)
    assert rows["dualda(C=1e-05)"]["paper_speedup"] == pytest.approx(10.5 / 10.6)
    assert math.isnan(rows["random"]["paper_total_s"]) and not isinstance(rows["random"]["paper_name"], str)
    assert rows["dualda(C=0.1)"]["paper_name"] == "DualDA C=1e-1"
    # sorted fastest first
    totals = [
        r["total_2000_s"] for r in report.table("speedup").frame.to_dict("records") if r["task"] == "mnist"
    ]
    assert totals[:5] == sorted(totals[:5])
    markdown = (report.table_paths[0].parent / "speedup.md").read_text()
    assert "4*" in markdown and "totals marked * are extrapolated" in markdown
    headings = [markdown.index(f"### mnist, n_train={n}, n_test=24") for n in SIZES]
    assert headings == sorted(headings)  # settings by size, not by text ("192" < "48")


def test_metric_table_joins_variants_by_label(report: Report) -> None:
    rows = _rows(report.table("metrics"), "mnist, n_train=48,")
    assert set(rows) == set(METHODS)
    assert rows["dualda"]["class_detection"] == pytest.approx(0.9)  # std, not the group model's 0.0
    assert rows["random"]["class_detection"] == pytest.approx(0.95)  # mean of two seeds
    assert rows["dualda"]["subclass_detection"] == 0.6 and math.isnan(
        rows["dualda(C=0.1)"]["subclass_detection"]
    )
    assert rows["lissa"]["mislabel_detection"] == 0.95 and math.isnan(rows["random"]["mislabel_detection"])
    assert math.isnan(rows["random"]["coreset_selection"])  # failed metric: empty cell
    columns = list(report.table("metrics").frame.columns)
    assert columns.index("class_detection") < columns.index("subclass_detection") < columns.index("lds")
    assert columns.index("class_detection") + 1 == columns.index("class_detection_ci_low")
    shown = list(report.table("metrics").display.columns)
    assert "class_detection ↑" in shown and "coreset_selection ↓" in shown
    assert "no mark-variant records: shortcut_detection not shown (mnist, n_train=48, n_test=24" in "\n".join(
        report.missing
    )


def test_rank_table_ties_missing_metrics_and_pools(report: Report) -> None:
    rows = _rows(report.table("ranks"), "mnist, n_train=48,")
    # class (higher): random .95 | dualda .9 = C=1e-5 .9(+1e-15) | lissa .8 | C=0.1 .7
    assert rows["random"]["rank class_detection"] == 1
    assert rows["dualda"]["rank class_detection"] == rows["dualda(C=1e-05)"]["rank class_detection"] == 2.5
    # coreset (lower), random failed: lissa .9 | dualda 1.0 = C=0.1 1.0 | C=1e-5 1.2
    assert rows["lissa"]["rank coreset_selection"] == 1 and rows["dualda"]["rank coreset_selection"] == 2.5
    assert math.isnan(rows["random"]["rank coreset_selection"])
    expected = {  # label: (avg over all methods, n_metrics, avg among the paper's methods)
        "dualda": ((2.5 + 2 + 2.5 + 1.5 + 2) / 5, 5, (1.5 + 2 + 2.5 + 1.5 + 2) / 5),
        "lissa": ((4 + 1 + 1 + 1.5 + 1) / 5, 5, (3 + 1 + 1 + 1.5 + 1) / 5),
        "dualda(C=1e-05)": ((2.5 + 4 + 4) / 3, 3, (1.5 + 4 + 4) / 3),
        "dualda(C=0.1)": ((5 + 3 + 2.5) / 3, 3, (4 + 3 + 2.5) / 3),
        "random": ((1 + 5 + 3) / 3, 3, math.nan),
    }
    for label, (avg, n, paper_pool) in expected.items():
        assert rows[label]["avg_rank"] == pytest.approx(avg), label
        assert rows[label]["n_metrics"] == n
        assert rows[label]["avg_rank_paper_methods"] == pytest.approx(paper_pool, nan_ok=True), label
    assert rows["lissa"]["paper_avg_rank"] == FIGURE1["mnist"]["LiSSA"][1]
    ordered = [r["method"] for r in report.table("ranks").frame.to_dict("records") if r["task"] == "mnist"]
    assert ordered[0] == "LiSSA"  # best average first


def test_rank_metric_direction_and_ties() -> None:
    import pandas as pd

    values = pd.Series({"a": 0.5, "b": 0.7, "c": 0.7, "d": 0.1})
    assert rank_metric(values, "higher").to_dict() == {"a": 3.0, "b": 1.5, "c": 1.5, "d": 4.0}
    assert rank_metric(values, "lower").to_dict() == {"a": 2.0, "b": 3.5, "c": 3.5, "d": 1.0}


def test_sparsity_table(report: Report) -> None:
    frame = report.table("sparsity").frame
    mnist = frame[(frame["task"] == "mnist") & (frame["n_train"] == 48) & (frame["variant"] == "std")]
    rows = {r["method_label"]: r for r in mnist.to_dict("records")}
    assert rows["dualda(C=1e-05)"]["n_support"] == 36
    assert rows["dualda(C=1e-05)"]["support_share"] == pytest.approx(36 / 48)  # from n_support / n_train
    assert rows["dualda"]["l0_eps"] == pytest.approx(1 - 1e-3) and rows["dualda"]["hoyer"] == pytest.approx(
        0.501
    )
    assert math.isnan(rows["lissa"]["n_support"])
    toy = frame[(frame["task"] == "toy") & frame["C"].notna()]
    assert sorted(toy["C"]) == [1e-5, 1e-3, 1e-1]  # the real DualDA records
    assert toy["support_share"].between(0, 1).all() and toy["l0_eps"].between(0, 1).all()


def test_models_table_has_one_row_per_trained_model(report: Report) -> None:
    """Every record of one variant and seed shares the model; its fit comes from the record."""
    table = report.table("models").frame
    toy = table[table["task"] == "toy"]
    assert len(toy) == 1 and toy.iloc[0]["n_runs"] == 5  # five methods explained one model
    real = next(r for r in report.runs.records if r["task"]["name"] == "toy")
    history = real["task"]["model"]["history"]
    assert toy.iloc[0]["train_accuracy"] == pytest.approx(history["train_accuracy_final"])
    assert toy.iloc[0]["test_accuracy"] == pytest.approx(real["task"]["model"]["test_accuracy"])
    assert toy.iloc[0]["epochs"] == history["epochs_run"] and toy.iloc[0]["steps"] == history["steps"]
    mnist = table[(table["task"] == "mnist") & (table["n_train"] == 48)]
    # std: seeds 0 and 1 (random ran both), group, corrupt: one row each, std first
    assert list(zip(mnist["variant"], mnist["seed"], strict=True)) == [
        ("std", 0),
        ("std", 1),
        ("group", 0),
        ("corrupt", 0),
    ]


def test_every_table_is_written_as_csv_markdown_and_latex(report: Report) -> None:
    tables = report.table_paths[0].parent
    names = ("summary", "speedup", "metrics", "ranks", "sparsity", "models", "metric_health",
             "paper_agreement", "intervals", "costs")  # fmt: skip
    for name in names:
        for ext in ("csv", "md", "tex"):
            assert (tables / f"{name}.{ext}").stat().st_size > 0, f"{name}.{ext}"
    tex = (tables / "metrics.tex").read_text()
    assert r"class\_detection $\uparrow$" in tex and r"coreset\_selection $\downarrow$" in tex
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") >= 2
    assert latex_escape("a_b & 50% {x} ~") == r"a\_b \& 50\% \{x\} \textasciitilde{}"
    assert "failed run, not shown: dualda(C=1e-05) on toy/std" in "\n".join(report.missing)


def test_write_report_keeps_its_contract(results: Path, tmp_path: Path) -> None:
    csv_path, md_path, markdown = write_report(results, tmp_path)
    assert csv_path == tmp_path / "summary.csv" and md_path.read_text().strip() == markdown.strip()
    assert (tmp_path / "ranks.tex").exists() and not (tmp_path / "figures").exists()


def test_paper_names() -> None:
    assert [format_c(c) for c in (1e-5, 1e-3, 0.1, 0.25)] == ["1e-5", "1e-3", "1e-1", "0.25"]
    assert paper_name("dualda", {"C": 1e-5}) == "DualDA C=1e-5"
    assert paper_name("ekfac", {}) == "EK-FAC" and paper_name("random", {}) is None
    assert all(len(methods) == 11 for methods in FIGURE1.values())


# --- figures ----------------------------------------------------------------------------------
def test_figures_exist_as_valid_png_and_pdf(report: Report) -> None:
    from PIL import Image

    stems = {p.stem for p in report.figure_paths}
    for expected in (
        "runtime_vs_rank_mnist_n48_t24",
        "sparsity_vs_c_mnist_n48_t24",
        "scaling_mnist",
        "mislabel_curves_mnist_n48_t24",
        "sparsity_vs_c_toy_n48_t24",
        "scaling_toy",
        "critical_difference_mnist_n48_t24",
    ):
        assert expected in stems
    for path in report.figure_paths:
        data = path.read_bytes()
        if path.suffix == ".png":
            assert data.startswith(b"\x89PNG\r\n\x1a\n")
            with Image.open(path) as image:
                image.verify()
            with Image.open(path) as image:
                assert image.size[0] > 300 and image.size[1] > 200
        else:
            assert path.suffix == ".pdf" and data.startswith(b"%PDF-") and b"%%EOF" in data[-1024:]
    assert sum(p.suffix == ".png" for p in report.figure_paths) == sum(
        p.suffix == ".pdf" for p in report.figure_paths
    )


def test_scaling_growth_exponents_and_missing_sizes(report: Report) -> None:
    from paper_figures.scaling import growth_exponents

    slopes = growth_exponents(report.runs)
    assert slopes[("mnist", "LiSSA")] == pytest.approx(1.0)
    assert slopes[("mnist", "DualDA C=1e-3")] == pytest.approx(0.5)
    assert math.isnan(slopes[("mnist", "Random")])  # one size only
    missing = "\n".join(report.missing)
    assert "scaling (toy): the scaling suite has not been run" in missing
    assert "scaling (mnist): fewer than 4 training-set sizes for" in missing  # the methods at one size
    assert "scaling (mnist): the scaling suite has not been run" not in missing


def test_scaling_cache_time_never_averages_a_cold_fit_with_a_cache_hit() -> None:
    """Two records of one size: one measured a cold fit (3 s), the other hit the cache (0.01 s warm):
    the figure's cache time is the cold 3 s, not their mean."""
    import pandas as pd

    from harness.runs import Runs
    from paper_figures.scaling import scaling_frame

    base = {"task": "mnist", "variant": "std", "method": "arnoldi", "method_name": "arnoldi", "n_train": 1000}
    frame = pd.DataFrame(
        [
            {**base, "fit_cold_s": 3.0, "fit_warm_s": 0.02, "explain_s_per_point": 0.002},
            {**base, "fit_cold_s": math.nan, "fit_warm_s": 0.01, "explain_s_per_point": 0.004},
            {
                **base,
                "n_train": 2000,
                "fit_cold_s": math.nan,
                "fit_warm_s": 0.5,
                "explain_s_per_point": 0.004,
            },
        ]
    )
    table = scaling_frame(Runs(frame=frame, records=[])).set_index("n_train")
    assert table.loc[1000, "cache_s"] == pytest.approx(3.0)
    assert table.loc[2000, "cache_s"] == pytest.approx(0.5)  # no cold fit at that size: the warm one
    assert table.loc[1000, "explain_ms_per_point"] == pytest.approx(3.0)


# --- the HTML page in headless Chromium --------------------------------------------------------
PROBE = """<script>
window.addEventListener("load", function () {
  var images = Array.from(document.images);
  var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
  document.title = "probe images=" + images.length + " broken=" + broken
    + " tables=" + document.querySelectorAll("table").length;
});
</script>"""


def _chromium() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    message = f"no headless browser found (looked for {', '.join(CHROMIUM_NAMES)}); apt-get install chromium"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}: CI must run the HTML rendering test (.ci/run installs it)")
    pytest.skip(message)


def _render(browser: str, page: Path, tmp_path: Path) -> dict[str, int]:
    """Open ``page`` (with the probe script added) in headless Chromium; the probe's counts."""
    probed = tmp_path / f"probed-{page.name}"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probed.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    title = re.search(r"<title>probe images=(\d+) broken=(\d+) tables=(\d+)</title>", result.stdout)
    assert title, f"the page did not load in Chromium (rc {result.returncode}): {result.stderr[-2000:]}"
    return dict(zip(("images", "broken", "tables"), map(int, title.groups()), strict=True))


def test_html_report_is_self_contained_and_renders_in_chromium(report: Report, tmp_path: Path) -> None:
    page = report.html_path
    assert page == report.table_paths[0].parent.parent / "report.html"
    text = page.read_text()
    sources = re.findall(r'(?:src|href)="([^"#]*)"', text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)  # nothing external
    assert "<link" not in text and "<style>" in text
    for fragment in ("Environment and commits", records.environment()["python"], "What is missing"):
        assert fragment in text
    commit = report.runs.records[0]["git"]["commit"]
    if commit:
        assert commit in text
    n_png = sum(p.suffix == ".png" for p in report.figure_paths)

    browser = _chromium()
    seen = _render(browser, page, tmp_path)
    assert seen["images"] == n_png >= 6
    assert seen["broken"] == 0
    assert seen["tables"] >= 10
    # the probe itself can fail: the same page with one image's data cut short shows one broken image
    damaged = tmp_path / "damaged.html"
    damaged.write_text(re.sub(r"base64,[A-Za-z0-9+/=]{200}", "base64,AAAA", text, count=1))
    assert _render(browser, damaged, tmp_path)["broken"] == 1


def test_cli_report_tables_only(results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dabench.cli import main

    argv = ["report", "--results-dir", str(results), "--out", str(tmp_path), "--no-figures", "--no-reference"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert str(tmp_path) in out and "html:" not in out and "figures (" not in out
    assert "average rank over the paper's metrics" in out and "=== mnist, n_train=48, n_test=24 ===" in out
    assert "metric health:" in out and "agreement with the paper" in out
    assert "not compared with the reference (--no-reference)" in out
    assert "failed runs (1; in no table" in out
    assert "dualda(C=1e-05) on toy/std" in out.split("failed runs (")[1]
    assert max(len(line) for line in out.splitlines()) <= 100
    speedup = (tmp_path / "speedup.csv").read_text()
    assert "LiSSA" in speedup and "method_label" in speedup.splitlines()[0]


def test_health_agreement_and_cost_tables_read_the_records(report: Report) -> None:
    health = _rows_by(report.table("metric_health"), "mnist, n_train=48,", "metric")
    # class detection: random (0.95 over two seeds) beats the median method (0.9): flagged
    assert (
        health["class_detection"]["random_not_floor"]
        and "random not the floor" in health["class_detection"]["flags"]
    )
    assert health["lds"]["random_not_floor"] is False or health["lds"]["random_not_floor"] == 0
    agreement = report.table("paper_agreement").frame
    mnist = agreement[agreement["setting"].str.startswith("mnist, n_train=48,")]
    assert len(mnist) == 6 and set(mnist["verdict"]) <= {"reproduced", "contradicted", "inconclusive"}
    costs = report.table("costs").frame
    total = costs[(costs["method"] == "all methods") & costs["setting"].str.startswith("mnist, n_train=48,")]
    part = costs[(costs["method"] != "all methods") & costs["setting"].str.startswith("mnist, n_train=48,")]
    assert float(total["fit_s"].iloc[0]) == pytest.approx(float(part["fit_s"].sum()))
    # the toy records ran the sparsity metric through the runner: per-point scores, bootstrap intervals
    intervals = report.table("intervals").frame
    toy = intervals[intervals["setting"].str.startswith("toy") & (intervals["metric"] == "sparsity")]
    assert (toy["resampled"] == "test points (one seed)").all()
    assert (toy["ci_low"] <= toy["value"] + 1e-12).all() and (toy["value"] <= toy["ci_high"] + 1e-12).all()


def _rows_by(table, setting_prefix: str, key: str) -> dict:
    frame = table.frame[table.frame["setting"].str.startswith(setting_prefix)]
    return {row[key]: row for row in frame.to_dict("records")}


def test_a_non_finite_value_marked_ok_never_reaches_a_table(results: Path, tmp_path: Path) -> None:
    copy_dir = tmp_path / "results"
    shutil.copytree(results / "records", copy_dir / "records")
    path = next(p for p in (copy_dir / "records").glob("syn-lissa-std-0-48*.json"))
    rec = records.read_record(path)
    rec["metrics"]["class_detection"]["value"] = math.nan  # hand-edited or corrupt, still "ok"
    path.write_text(json.dumps(rec))
    report = build_report(copy_dir, tmp_path / "tables", figures=False, html=False)
    rows = _rows(report.table("metrics"), "mnist, n_train=48,")
    assert math.isnan(rows["lissa"]["class_detection"])  # an empty cell, not NaN shown as a value
    assert rows["lissa"]["lds"] == pytest.approx(0.4)  # the record's other metrics still count
    assert any(
        "not a finite number are not shown" in line and "class_detection" in line for line in report.missing
    )


def test_speedup_at_scale_extrapolates_what_it_did_not_measure(results: Path, tmp_path: Path) -> None:
    """LiSSA's record at the largest size (384) removed: its cost comes from its power law over 48-192.

    The synthetic times follow exact power laws (LiSSA's explain time ~ n, its warm fit constant), so
    the extrapolation must give back the removed record's numbers; DualDA is measured at 384.
    """
    from harness.cost_tables import fit_power_law

    copy_dir = tmp_path / "results"
    shutil.copytree(results / "records", copy_dir / "records")
    (removed,) = (copy_dir / "records").glob("syn-lissa-std-0-384*.json")
    removed.unlink()
    report = build_report(copy_dir, tmp_path / "tables", figures=False, html=False)
    table = report.table("speedup_at_scale")
    rows = {row["method"]: row for row in table.frame.to_dict("records")}
    lissa, dualda = rows["LiSSA"], rows["DualDA C=1e-3"]
    assert (lissa["how"], lissa["from_sizes"]) == ("extrapolated", "48, 96, 192")
    assert lissa["explain_exponent"] == pytest.approx(1.0) and lissa["cache_exponent"] == pytest.approx(0.0)
    assert lissa["explain_ms_per_point"] == pytest.approx(1e3 * 0.02 * 384 / 48)
    assert lissa["cache_s"] == pytest.approx(0.5)
    # measured at 384 training points, but on 24 test points: the 2,000-point total scales them
    assert (dualda["how"], dualda["from_sizes"]) == ("measured, explain extrapolated", "384")
    assert dualda["n_explained"] == 24 and lissa["n_explained"] == 24
    assert dualda["total_2000_s"] == pytest.approx(2.0 + 2000 * 1e-3 * math.sqrt(384 / 48))
    assert lissa["speedup"] == pytest.approx(lissa["total_2000_s"] / dualda["total_2000_s"])
    assert set(table.frame["n_train"]) == {384}
    # methods measured at one smaller size only are named, not guessed
    assert any("Random: measured at 48 points only" in note for note in table.notes)
    assert fit_power_law([10, 100], [2.0, 20.0]) == pytest.approx((math.log(2.0) - math.log(10.0), 1.0))
    with pytest.raises(ValueError, match="two or more distinct sizes"):
        fit_power_law([10, 10], [1.0, 2.0])


def test_console_summary_lists_the_extrapolated_methods(
    results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A method measured only at smaller sizes gets one line under the speed-up table, marked ``~``."""
    from dabench.cli import WIDTH, _print_summary

    copy_dir = tmp_path / "results"
    shutil.copytree(results / "records", copy_dir / "records")
    (removed,) = (copy_dir / "records").glob("syn-lissa-std-0-384*.json")
    removed.unlink()
    _print_summary(build_report(copy_dir, tmp_path / "tables", figures=False, html=False))
    lines = capsys.readouterr().out.splitlines()
    heading = "  extrapolated from smaller training sets (speedup_at_scale: cache time ~ n^b over sizes):"
    at = lines.index(heading)
    lissa = lines[at + 1].split()
    assert lissa[:2] == ["LiSSA", "0.5"] and lissa[3].endswith("~")
    assert lines[at + 1].endswith("n^0.00, 48-192")
    assert all(len(line) <= WIDTH for line in lines)

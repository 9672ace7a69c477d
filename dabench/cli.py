"""The ``dabench`` command line (also ``python -m dabench`` and ``python -m harness``).

Start-up imports only argparse and the lazy registries, so ``dabench list`` and ``--help`` answer
at once; torch, quanda and the method modules load when a run needs them.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dabench import xda_command
from harness import load_memory
from harness.cache import CacheConflictError
from harness.config import ConfigError, parse_key_values
from harness.kept_models import KeptModelError, keep_models, restore_models
from harness.protocols import CapabilityError, DataError
from harness.records import RecordError
from harness.registry import METHODS, METRICS, TASKS, RegistryError, load_installed_plugins, load_plugin

USER_ERRORS = (
    ConfigError,
    RegistryError,
    DataError,
    CapabilityError,
    CacheConflictError,
    FileNotFoundError,
    RecordError,
    KeptModelError,
)
REGISTRIES = {"methods": METHODS, "tasks": TASKS, "metrics": METRICS}
DEFAULT_METRICS = "class_detection,sparsity"


PLUGIN_HELP = (
    "load a plugin first: a path to a .py file or a module importable from the current folder "
    "(it may register extra methods/tasks/metrics); repeatable"
)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results-dir",
        default=os.environ.get("DABENCH_RESULTS", "results"),
        help="where records/ and tables/ go (default: results, or $DABENCH_RESULTS)",
    )
    parser.add_argument(
        "--cache-dir",
        default=os.environ.get("DABENCH_CACHE", "cache"),
        help="content-addressed cache of models and method artefacts (default: cache, or $DABENCH_CACHE)",
    )
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="PLUGIN",
        help=PLUGIN_HELP,
    )
    parser.add_argument(
        "--force", action="store_true", help="rerun specs whose finished record exists (default: skip them)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed passes over the test points (default 3)"
    )
    parser.add_argument(
        "--timed-points",
        type=int,
        default=None,
        metavar="N",
        help="repeats after the first pass over all test points time only the first N, rounded up to whole "
        "explain batches (default: all)",
    )
    parser.add_argument(
        "--explain-limit",
        type=int,
        default=None,
        metavar="N",
        help="explain only the first N test points (slow methods); the record marks the total time as "
        "extrapolated to all test points and the metrics as computed on those N",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="also rerun specs whose record failed (default: only specs without a record run)",
    )
    parser.add_argument(
        "--keep-models",
        action="store_true",
        help="copy the trained model of each record written into RESULTS_DIR/models, so that a later "
        "resume (another day or machine) uses the same weights; kept models there are always copied "
        "into the cache before the runs",
    )
    group = parser.add_argument_group("dispatch (where the runs execute)")
    group.add_argument(
        "--executor",
        default="inline",
        help="inline (this process, default), local (one process per run through submitit) or slurm "
        "(a submitit job array)",
    )
    group.add_argument(
        "--parallelism", type=int, default=1, help="local: runs at a time; slurm: the array's parallelism"
    )
    group.add_argument("--partition", default=None, help="slurm partition (default: the cluster's)")
    group.add_argument("--gpus-per-job", type=int, default=0, help="GPUs per job (default 0)")
    group.add_argument("--cpus-per-job", type=int, default=2, help="CPUs per job (default 2)")
    group.add_argument(
        "--time-limit", type=int, default=60, metavar="MIN", help="minutes per job (default 60)"
    )
    group.add_argument(
        "--mem-gb", type=float, default=None, help="memory per job in GB (default: the cluster's)"
    )
    group.add_argument(
        "--jobs-dir",
        default=None,
        help="submitit's job folder (default RESULTS/jobs: scripts, pickles, logs)",
    )
    parser.add_argument(
        "--retrain-workers",
        type=int,
        default=1,
        metavar="W",
        help="processes that train counterfactual models for lds/coreset_selection/data_pruning in "
        "parallel (default 1: in the run's process); changes no result",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dabench",
        description="Benchmark data attribution methods on equal terms (DualXDA reproduction).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p_list = sub.add_parser("list", help="list registered methods, tasks or metrics")
    p_list.add_argument("kind", choices=sorted(REGISTRIES))
    p_list.add_argument(
        "--verbose", action="store_true", help="also show each config's options (imports the modules)"
    )
    p_list.add_argument("--plugin", action="append", default=[], metavar="PLUGIN", help=PLUGIN_HELP)

    p_run = sub.add_parser("run", help="run methods on one task and write one record per run")
    p_run.add_argument("--task", required=True, help="task name (see `dabench list tasks`)")
    p_run.add_argument("--variant", default=None, help="dataset variant (std, group, corrupt, mark)")
    p_run.add_argument("--n-train", type=int, default=None, help="use the first N training points")
    p_run.add_argument("--n-test", type=int, default=None, help="explain the first N test points")
    p_run.add_argument("--data-root", default=None, help="directory of an on-disk dataset")
    p_run.add_argument(
        "--task-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="task config override, e.g. epochs=1 (repeatable)",
    )
    p_run.add_argument(
        "--methods", default="", metavar="A,B", help="comma-separated method names with default configs"
    )
    p_run.add_argument(
        "--method",
        action="append",
        default=[],
        metavar="NAME[:K=V,K=V]",
        help="a method with config overrides, e.g. feature_similarity:metric=l2 (repeatable)",
    )
    p_run.add_argument(
        "--metrics",
        default=DEFAULT_METRICS,
        metavar="A,B",
        help=f"comma-separated metric names (default {DEFAULT_METRICS})",
    )
    p_run.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="NAME[:K=V]",
        help="a metric with config overrides, e.g. class_detection:top_k=10",
    )
    p_run.add_argument("--seeds", default="0", metavar="S,S", help="comma-separated seeds")
    p_run.add_argument(
        "--preset",
        default="default",
        choices=["default", "quick", "paper"],
        help="config preset of task, methods and metrics before overrides",
    )
    _common(p_run)

    p_suite = sub.add_parser("suite", help="run a named suite (harness/suites.py), then report")
    p_suite.add_argument(
        "name", help="default, quick, full, scaling, methods, paper or gpu (harness/suites.py)"
    )
    p_suite.add_argument("--data-root", default=None, help="folder of CIFAR-10 / AwA2 (the paper suite)")
    p_suite.add_argument("--n-train", type=int, default=None, help="override every task's training-set size")
    p_suite.add_argument("--n-test", type=int, default=None, help="override every task's test points")
    p_suite.add_argument("--methods", default="", metavar="A,B", help="run only these methods of the suite")
    p_suite.add_argument("--datasets", default="", metavar="A,B", help="run only these datasets of the suite")
    p_suite.add_argument(
        "--metrics", default="", metavar="A,B", help="compute only these metrics of the suite"
    )
    p_suite.add_argument(
        "--task-option", action="append", default=[], metavar="KEY=VALUE", help="task config override"
    )
    p_suite.add_argument(
        "--seeds", default=None, metavar="S,S", help="model seeds (default: the suite's own; default: 0,1,2)"
    )
    _common(p_suite)

    p_suite.add_argument(
        "--list",
        action="store_true",
        help="print the grid, one line per run marked done, failed or to run, and run nothing",
    )

    p_check = sub.add_parser(
        "check",
        help="run the method contract on a method (plug-ins too) on the toy task; exit 1 on a failure",
    )
    p_check.add_argument("name", help="a registered method (dabench list methods)")
    p_check.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="method config override"
    )
    p_check.add_argument(
        "--preset",
        default="smoke",
        choices=["smoke", "quick", "paper", "default"],
        help="config preset before the overrides (default smoke: the method's toy-task settings)",
    )
    p_check.add_argument("--plugin", action="append", default=[], metavar="PLUGIN", help=PLUGIN_HELP)
    p_check.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")

    p_report = sub.add_parser(
        "report",
        help="tables (CSV, Markdown, LaTeX), figures (PNG, PDF) and one HTML page from the records",
    )
    p_report.add_argument("--results-dir", default=os.environ.get("DABENCH_RESULTS", "results"))
    p_report.add_argument("--out", default=None, help="folder of the tables (default RESULTS/tables)")
    p_report.add_argument(
        "--figures-out", default=None, help="folder of the figures (default RESULTS/figures)"
    )
    p_report.add_argument("--html", default=None, help="the HTML page (default RESULTS/report.html)")
    p_report.add_argument(
        "--no-figures", action="store_true", help="tables only (no figures, no HTML page): about a second"
    )
    p_report.add_argument(
        "--reference",
        default=None,
        metavar="DIR",
        help="reference results to set this run beside, records matched by run_id "
        "(default: results/reference of the project; skipped when RESULTS lies inside it)",
    )
    p_report.add_argument(
        "--no-reference", action="store_true", help="no comparison with the reference results"
    )

    p_bench = sub.add_parser(
        "bench", help="measure the hot paths (pytest-benchmark) into results/benchmarks/ for `compare`"
    )
    p_bench.add_argument("--out", default="results/benchmarks", help="folder of benchmark files")
    p_bench.add_argument(
        "-k", dest="select", default=None, metavar="EXPR", help="only benchmarks matching EXPR (pytest -k)"
    )
    p_bench.add_argument(
        "--all", action="store_true", help="every benchmark in tests/benchmarks (default: test_hot_paths.py)"
    )

    p_compare = sub.add_parser(
        "compare", help="ratios HEAD / BASE over run records or benchmark files; flags regressions"
    )
    p_compare.add_argument(
        "base", nargs="?", help="results dir, records dir, record or benchmark JSON (or folder)"
    )
    p_compare.add_argument("head", nargs="?", help="the same kind as BASE")
    p_compare.add_argument(
        "--threshold", type=float, default=0.2, help="a time ratio above 1 + T is a regression (default 0.2)"
    )
    p_compare.add_argument(
        "--metric-tolerance",
        type=float,
        default=0.01,
        help="a metric worse (against its direction) by more than this is a regression (default 0.01)",
    )
    p_compare.add_argument("--fail-on-regression", action="store_true", help="exit 1 when anything regressed")
    p_compare.add_argument("--csv", default=None, help="also write the table to this CSV file")
    p_compare.add_argument(
        "--history",
        default=None,
        metavar="FOLDER",
        help="instead: one figure per benchmark across every benchmark file in FOLDER (FOLDER/history/)",
    )
    p_doctor = sub.add_parser(
        "doctor",
        help="what this machine offers; with --gpu, the GPU check (GPU tests, then `dabench suite gpu`)",
    )
    p_doctor.add_argument(
        "--gpu",
        action="store_true",
        help="run the tests marked gpu, then the gpu suite (the paper's MNIST speed-up grid, 20 explained "
        "test points per method) into --results-dir, with its report",
    )
    p_doctor.add_argument("--results-dir", default="results/gpu-check", help="default results/gpu-check")
    p_doctor.add_argument(
        "--cache-dir",
        default=os.environ.get("DABENCH_CACHE", "cache"),
        help="default cache (or $DABENCH_CACHE)",
    )
    p_memory = sub.add_parser(
        "memory",
        help="peak memory of loading each dataset at its size, each load in a fresh process",
        description="Peak RSS of loading each task's data, in fresh processes; MiB per image and the "
        "estimate at the paper's size (see harness/load_memory.py). CIFAR-10 and AwA2 read --data-root, "
        "or fakes in their on-disk formats that --fake-data writes.",
    )
    load_memory.add_arguments(p_memory)
    xda_command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        load_installed_plugins()  # entry points of installed packages; a broken one only warns
        for plugin in getattr(args, "plugin", []):
            load_plugin(plugin)
        return COMMANDS[args.command](args)
    except USER_ERRORS as err:
        print(f"dabench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dabench: interrupted; finished records are kept, rerun to resume", file=sys.stderr)
        return 130


def cmd_list(args: argparse.Namespace) -> int:
    registry = REGISTRIES[args.kind]
    entries = list(registry.entries())
    width = max(len(e.name) for e in entries)
    for entry in entries:
        print(f"{entry.name:<{width}}  {entry.description}")
        if args.verbose:
            cls = registry.get(entry.name)
            for key, text in cls.Config.help().items():
                default = getattr(cls.Config(), key)
                print(f"{'':<{width}}    {key}={default!r}: {text}")
    return 0


def _seeds(text: str) -> list[int]:
    """``--seeds 0,1,2`` as integers; empty, repeated or non-integer seeds are errors."""
    try:
        seeds = [int(s) for s in _split(text)]
    except ValueError as err:
        raise ConfigError(f"--seeds {text!r}: give comma-separated integers, e.g. --seeds 0,1,2") from err
    if not seeds:
        raise ConfigError(f"--seeds {text!r}: give at least one seed, e.g. --seeds 0")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: a seed is given twice")
    return seeds


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _specs_from_args(args: argparse.Namespace) -> list[Any]:
    from harness.runner import ComponentSpec, TimingConfig, expand

    task_overrides: list[tuple[str, Any]] = []
    for key in ("variant", "n_train", "n_test", "data_root"):
        value = getattr(args, key)
        if value is not None:
            task_overrides.append((key, value))
    task_overrides += parse_key_values(args.task_option, "--task-option")
    task = ComponentSpec(args.task, tuple(task_overrides), args.preset)
    TASKS.check_name(task.name)

    methods = [ComponentSpec(name, preset=args.preset) for name in _split(args.methods)]
    methods += [ComponentSpec.parse(text, args.preset) for text in args.method]
    if not methods:
        raise ConfigError("no method given: pass --methods random,... or --method NAME[:K=V]")
    metrics = [ComponentSpec(name, preset=args.preset) for name in _split(args.metrics)]
    metrics += [ComponentSpec.parse(text, args.preset) for text in args.metric]
    for spec in methods:
        METHODS.check_name(spec.name)
    for spec in metrics:
        METRICS.check_name(spec.name)
    seeds = _seeds(args.seeds)
    timing = TimingConfig(**_timing_overrides(args))
    return expand(
        task, methods, metrics, seeds, timing=timing, results_dir=args.results_dir, cache_dir=args.cache_dir
    )


def _run_specs(specs: list[Any], args: argparse.Namespace) -> int:

    from harness.grid import run_grid

    if args.retrain_workers < 1:
        raise ConfigError("--retrain-workers must be at least 1")
    specs = [dataclasses.replace(s, retrain_workers=args.retrain_workers) for s in specs]

    written: list[Any] = []

    def show(record: dict[str, Any], path: Any) -> None:
        written.append(record)
        print(_one_line(record), flush=True)

    def announce(index: int, total: int, what: str) -> None:
        if not sys.stderr.isatty():  # a terminal has the progress bar; a log file gets one line per run
            print(f"[{index}/{total}] {what} ...", file=sys.stderr, flush=True)

    from harness.dispatch import DispatchConfig

    dispatch = DispatchConfig(
        executor=args.executor,
        folder=args.jobs_dir or os.path.join(args.results_dir, "jobs"),
        parallelism=args.parallelism,
        partition=args.partition,
        gpus_per_job=args.gpus_per_job,
        cpus_per_job=args.cpus_per_job,
        time_limit_min=args.time_limit,
        mem_gb=args.mem_gb,
    )
    folders = sorted({(s.results_dir, s.cache_dir) for s in specs})
    for results_dir, cache_dir in folders:
        for entry in restore_models(results_dir, cache_dir):
            print(f"model {entry.parent.name}/{entry.name}: restored from {results_dir}/models", flush=True)
    try:
        outcome = run_grid(
            specs,
            force=args.force,
            retry_failed=args.retry_failed,
            dispatch=dispatch,
            on_record=show,
            on_start=announce,
        )
    finally:  # an interrupted suite keeps the models of the records it wrote
        if args.keep_models:
            for results_dir, cache_dir in folders:
                for entry in keep_models(written, results_dir, cache_dir):
                    print(f"model {entry.parent.name}/{entry.name}: kept in {results_dir}/models", flush=True)
    print(
        f"records: {len(outcome.written)} written, {len(outcome.skipped)} already recorded "
        f"(skipped; --force reruns all, --retry-failed the failed ones), {len(outcome.failed)} failed -> "
        f"{os.path.join(args.results_dir, 'records')}"
    )
    return 1 if outcome.failed else 0


def _one_line(record: dict[str, Any]) -> str:
    head = f"{record['method']['label']:<36} {record['task']['name']}/{record['task']['variant']}"
    if record["status"] != "ok":
        return f"{head}  FAILED: {record['error']['type']}: {record['error']['message']}"
    metrics = "  ".join(
        f"{name}={entry['value']:.4g}" if entry["status"] == "ok" else f"{name}=FAILED"
        for name, entry in record["metrics"].items()
    )
    explain = record["timings"]["explain"]
    explain_ms = 1e3 * explain["per_point_median_s"]
    subset = ""
    if explain.get("extrapolated"):
        subset = (
            f" (first {explain['n_points']} of {explain['n_test_total']} test points; total extrapolated)"
        )
    return f"{head}  {metrics}  explain={explain_ms:.3g} ms/pt{subset}"


def _timing_overrides(args: argparse.Namespace) -> dict[str, int]:
    """The timing options given on the command line (checked: one-line errors)."""
    overrides = {}
    if args.repeats is not None:
        if args.repeats < 1:
            raise ConfigError("--repeats must be at least 1")
        overrides["repeats"] = args.repeats
    if args.timed_points is not None:
        if args.timed_points < 1:
            raise ConfigError("--timed-points must be a positive number of test points")
        overrides["timed_points"] = args.timed_points
    if args.explain_limit is not None:
        if args.explain_limit < 1:
            raise ConfigError("--explain-limit must be a positive number of test points")
        overrides["explain_limit"] = args.explain_limit
    return overrides


def cmd_run(args: argparse.Namespace) -> int:
    return _run_specs(_specs_from_args(args), args)


def cmd_suite(args: argparse.Namespace) -> int:
    from harness.suites import SuiteOptions, get_suite

    task_options = parse_key_values(args.task_option, "--task-option")
    seeds = tuple(_seeds(args.seeds)) if args.seeds is not None else ()
    options = SuiteOptions(
        seeds=seeds,
        data_root=args.data_root,
        n_train=args.n_train,
        n_test=args.n_test,
        methods=tuple(_split(args.methods)),
        datasets=tuple(_split(args.datasets)),
        metrics=tuple(_split(args.metrics)),
        task_options=task_options,
    )
    specs = get_suite(args.name, options, results_dir=args.results_dir, cache_dir=args.cache_dir)
    overrides = _timing_overrides(args)  # before --list: --explain-limit changes which runs are planned
    if overrides:
        specs = [dataclasses.replace(s, timing=dataclasses.replace(s.timing, **overrides)) for s in specs]
    if args.list:
        return _list_suite(args.name, specs)
    report = ReportOptions(results_dir=args.results_dir)
    report.check_folders()  # before the runs, not after
    status = _run_specs(specs, args)
    write_report(report)
    return status


def _list_suite(name: str, specs: list[Any]) -> int:
    """One line per run of the suite: done / failed / to run, setting, method, seed, metrics."""
    from harness.grid import existing_status
    from harness.runner import method_label

    counts = {"done": 0, "failed": 0, "to run": 0}
    lines = []
    for spec in specs:
        resolved = spec.resolve()
        status = existing_status(resolved)
        mark = {"ok": "done", "failed": "failed"}.get(status or "", "to run")
        counts[mark] += 1
        task = resolved.task.config
        sizes = f"n_train={task.n_train or 'all'} n_test={task.n_test or 'all'}"
        setting = f"{resolved.task.name}/{task.variant} {sizes}"
        metrics = ",".join(m.name for m in resolved.metrics)
        lines.append(f"{mark:<7} {setting}  {method_label(resolved.method)}  seed={spec.seed}  [{metrics}]")
    print("\n".join(lines))
    records = os.path.join(specs[0].results_dir, "records") if specs else "records"
    print(
        f"suite {name}: {len(specs)} runs: {counts['done']} done, {counts['failed']} failed, "
        f"{counts['to run']} to run (records in {records})"
    )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from harness.check import check_method, format_table, passed

    overrides = dict(parse_key_values(args.option, "--option"))
    METHODS.check_name(args.name)
    results = check_method(args.name, overrides, preset=args.preset)
    print(format_table(args.name, results))
    return 0 if passed(results) else 1


#: The console summary of `dabench report` fits this many columns.
WIDTH = 100
#: At most this many "missing" notes are printed (all are in report.html and the Markdown tables).
MAX_NOTES = 12


def _fit(text: str, width: int = WIDTH) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    text = str(text)
    lead = "\n" * (len(text) - len(text.lstrip("\n")))
    line = re.sub(r"\s*\n\s*", " ", text.strip("\n"))
    return lead + (line if len(line) <= width else line[: width - 1] + "…")


def _cell(text: str, width: int) -> str:
    return _fit(text, width).ljust(width)


def _number(value: Any, spec: str = ".3g") -> str:
    from harness.runs import fmt

    return fmt(value.item() if hasattr(value, "item") else value, spec)


def _method_width(labels: Any) -> int:
    return min(max([len("method"), *(len(str(m)) for m in labels)]), 30)


def _print_speedup(report: Any, setting: str) -> None:
    """Method, cache s, explain ms per point, total for 2,000 test points and the factor vs DualDA."""
    frame = report.table("speedup").frame
    part = frame[frame["setting"] == setting]
    if part.empty:
        return
    width = _method_width(part["method"])
    extrapolated = bool(part["extrapolated"].any())
    print(f"\nspeed-up: cost of 2,000 test points{' (* extrapolated)' if extrapolated else ''}")
    print(f"  {'method':<{width}} {'cache s':>9} {'explain ms/pt':>13} {'total s':>10} {'x DualDA':>9}")
    for row in part.itertuples():
        total = _number(row.total_2000_s) + ("*" if row.extrapolated else "")
        print(
            _fit(
                f"  {_cell(row.method, width)} {_number(row.cache_s):>9} "
                f"{_number(row.explain_ms_per_point):>13} {total:>10} {_number(row.speedup):>9}"
            )
        )


def _print_extrapolated(report: Any, setting: str) -> None:
    """The methods that ``speedup_at_scale`` extrapolates to ``setting``'s size, one line each."""
    frame = report.table("speedup_at_scale").frame
    if frame.empty:
        return
    part = frame[(frame["setting"] == setting) & (frame["how"] == "extrapolated")]
    if part.empty:
        return
    print("  extrapolated from smaller training sets (speedup_at_scale: cache time ~ n^b over sizes):")
    measured = report.table("speedup").frame
    width = _method_width([*part["method"], *measured[measured["setting"] == setting]["method"]])
    for row in part.itertuples():
        exponent = _number(row.cache_exponent, ".2f")
        sizes = str(row.from_sizes).split(", ")
        print(
            _fit(
                f"  {_cell(row.method, width)} {_number(row.cache_s):>9} "
                f"{_number(row.explain_ms_per_point):>13} {_number(row.total_2000_s) + '~':>10} "
                f"{_number(row.speedup):>9}  n^{exponent}, {sizes[0]}-{sizes[-1]}"
            )
        )


def _rank_text(value: Any, low: Any, high: Any) -> str:
    text = _number(value)
    if text != "—" and _number(low) != "—":
        text += f" [{_number(low)}, {_number(high)}]"
    return text


def _print_ranks(report: Any, setting: str) -> None:
    """Average rank over the paper's metrics with its 95% interval, all methods and the paper's."""
    frame = report.table("ranks").frame
    part = frame[frame["setting"] == setting]
    if part.empty:
        return
    width = _method_width(part["method"])
    print("\naverage rank over the paper's metrics (1 = best; 95% interval)")
    print(f"  {'method':<{width}} {'all methods':<20} {'paper methods':<20} {'paper':>5} {'tied':>4}")
    for row in part.itertuples():
        mine = _rank_text(row.avg_rank, row.avg_rank_ci_low, row.avg_rank_ci_high)
        pool = _rank_text(
            row.avg_rank_paper_methods, row.avg_rank_paper_methods_ci_low, row.avg_rank_paper_methods_ci_high
        )
        tied = f"{row.n_tied_best}/{row.n_metrics}"
        paper = _number(row.paper_avg_rank)
        print(_fit(f"  {_cell(row.method, width)} {mine:<20} {pool:<20} {paper:>5} {tied:>4}"))


def _print_verdicts(report: Any, setting: str) -> None:
    """The metric-health flags (flagged metrics only) and the paper-agreement verdicts, one line each."""
    health = report.table("metric_health").frame
    part = health[health["setting"] == setting]
    flagged = [row for row in part.itertuples() if row.flags != "ok"]
    if len(part):
        ok = len(part) - len(flagged)
        print(f"\nmetric health: {ok} of {len(part)} metrics ok")
        for row in flagged:
            print(_fit(f"  {row.metric}: {row.flags}"))
    agreement = report.table("paper_agreement").frame
    part = agreement[agreement["setting"] == setting]
    if len(part):
        print("\nagreement with the paper")
        for row in part.itertuples():
            print(_fit(f"  {row.verdict:<12} {row.finding}"))


def _print_reference(report: Any) -> None:
    """This run beside the reference: one line per method and an overall line."""
    comparison = report.reference
    if comparison is None:
        print(_fit(f"\nreference: {report.reference_skipped}"))
        return
    if comparison.table is None:
        print(_fit(f"\nreference: {comparison.note}"))
        return
    print(
        "\nthis run vs the reference (times: multiples of the reference's; differ: 95% interval excludes 0)"
    )
    print(f"  reference: {_short_path(str(comparison.reference_dir))}")
    width = _method_width(method for _, method, _ in comparison.lines)
    settings = {setting for setting, _, _ in comparison.lines}
    for setting, method, line in comparison.lines:
        where = f" [{setting}]" if len(settings) > 1 else ""
        print(_fit(f"  {_cell(method, width)} {line}{where}"))
    print(_fit(f"  overall: {comparison.overall}"))


def _print_paths(report: Any) -> None:
    tables = sorted({str(p.parent) for p in report.table_paths})
    print(f"\ntables ({len(report.table_paths)} files: CSV, Markdown, LaTeX):")
    for folder in tables:
        print(f"  {_short_path(folder)}")
    if report.figure_paths:
        figures = sorted({str(p.parent) for p in report.figure_paths})
        print(f"figures ({len(report.figure_paths)} files: PNG, PDF):")
        for folder in figures:
            print(f"  {_short_path(folder)}")
    if report.html_path is not None:
        print(f"html:\n  {_short_path(str(report.html_path))}")


def _short_path(path: str) -> str:
    """``path`` relative to the working folder where that is shorter (paths are never cut)."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive
        return path
    return relative if len(relative) < len(path) else path


def _print_summary(report: Any) -> None:
    """The console summary of a report: every line fits :data:`WIDTH` columns."""
    from harness.runs import settings_of

    runs = report.runs
    settings = settings_of(runs.frame)
    print(
        _fit(
            f"dabench report: {len(runs.records)} successful record(s), {runs.n_failed} failed, "
            f"{len(settings)} setting(s)"
        )
    )
    for setting in settings:
        print(_fit(f"\n=== {setting} ==="))
        _print_speedup(report, setting)
        _print_extrapolated(report, setting)
        _print_ranks(report, setting)
        _print_verdicts(report, setting)
    _print_reference(report)
    _print_failures(report)
    notes = [line for line in report.missing if not line.startswith(FAILED_NOTE)]
    if notes:
        print(f"\nmissing ({len(notes)}; in full in report.html and the tables' notes):")
        for line in notes[:MAX_NOTES]:
            print(_fit(f"- {line}"))
        if len(notes) > MAX_NOTES:
            print(f"- ... and {len(notes) - MAX_NOTES} more")
    _print_paths(report)


#: The prefix of the report's note for a failed run (printed in full in its own section instead).
FAILED_NOTE = "failed run, not shown:"


def _print_failures(report: Any) -> None:
    """Every failed run with what broke, wrapped (never cut) to 100 columns: no table shows them."""
    import textwrap

    from harness.runs import failure_line

    failed = report.runs.failed
    if not failed:
        return
    print(f"\nfailed runs ({len(failed)}; in no table; rerun them with --retry-failed):")
    for rec in failed:
        print(textwrap.fill(failure_line(rec), width=100, initial_indent="- ", subsequent_indent="    "))


@dataclasses.dataclass(frozen=True)
class ReportOptions:
    """Where ``dabench report`` (and the report at the end of ``dabench suite``) reads and writes."""

    results_dir: str
    out: str | None = None  #: the tables' folder (None: <results>/tables)
    figures_out: str | None = None  #: the figures' folder (None: <results>/figures)
    html: str | None = None  #: the HTML page (None: <results>/report.html)
    figures: bool = True  #: figures and the HTML page (False: tables only)
    reference: str | None = None  #: the reference results (None: results/reference/default)
    compare_reference: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ReportOptions:
        return cls(
            results_dir=args.results_dir,
            out=args.out,
            figures_out=args.figures_out,
            html=args.html,
            figures=not args.no_figures,
            reference=args.reference,
            compare_reference=not args.no_reference,
        )

    def check_folders(self) -> None:
        """The report's output folders are writable folders (one-line error, exit 2, before any work)."""
        from harness.grid import check_writable_folder

        results = Path(self.results_dir)
        check_writable_folder(self.out or results / "tables", "report")
        if self.figures:
            check_writable_folder(self.figures_out or results / "figures", "report")
            check_writable_folder(Path(self.html).parent if self.html else results, "report")


def write_report(options: ReportOptions) -> int:
    """Build the report of ``options.results_dir`` and print its console summary; returns 0."""
    from dabench.report import build_report

    options.check_folders()
    report = build_report(
        options.results_dir,
        options.out,
        figures_dir=options.figures_out,
        html_path=options.html,
        figures=options.figures,
        html=options.figures,
        reference_dir=options.reference,
        compare_reference=options.compare_reference,
    )
    _print_summary(report)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    return write_report(ReportOptions.from_args(args))


def cmd_bench(args: argparse.Namespace) -> int:
    import datetime
    import platform
    import subprocess

    from harness.records import git_info

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    commit = (git_info().get("commit") or "nogit")[:8]
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H%M%S")
    target = out / f"{stamp}_{commit}_{platform.node() or 'machine'}.json"
    root = Path(__file__).resolve().parent.parent
    tests = root / "tests" / "benchmarks" / ("" if args.all else "test_hot_paths.py")
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(tests),
        "--benchmark-only",
        f"--benchmark-json={target}",
        "-q",
    ]
    if args.select:
        command += ["-k", args.select]
    print("measuring:", " ".join(command), flush=True)
    status = subprocess.call(command, cwd=root)
    if status == 0:
        print(f"benchmark file: {target}\ncompare with: dabench compare {out}/OLDER.json {target}")
    return status


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.compare import compare, history

    if args.history:
        paths = history(args.history)
        print(f"{len(paths)} history figures and history.csv in {paths[0].parent if paths else args.history}")
        return 0
    if not args.base or not args.head:
        raise ConfigError("give BASE and HEAD (or --history FOLDER)")
    result = compare(args.base, args.head, threshold=args.threshold, metric_tolerance=args.metric_tolerance)
    frame = result.to_frame()
    print(f"{result.kind}: {args.head} vs base {args.base}")
    print(frame.to_markdown(index=False, floatfmt=".4g") if len(frame) else "(nothing to compare)")
    if args.csv:
        frame.to_csv(args.csv, index=False)
    regressions = result.regressions
    print(f"\n{len(regressions)} regression(s) beyond the threshold of {args.threshold:g}")
    return 1 if regressions and args.fail_on_regression else 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Print the machine's facts; with ``--gpu``, the GPU tests and the ``gpu`` suite (1 on a failure)."""
    import subprocess

    import torch

    from harness.records import environment

    facts = environment()
    print(
        f"python {facts['python']}, torch {facts['torch']}, {facts['cpu_count']} CPU cores ({facts['cpu']})"
    )
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            print(f"cuda:{index} {props.name}, {props.total_memory / 2**30:.0f} GiB")
    else:
        print("no CUDA device: methods run on the CPU")
    print(f"methods: {', '.join(METHODS.names())}")
    if not args.gpu:
        print("on a machine with a GPU, `dabench doctor --gpu` runs the GPU check")
        return 0
    if not torch.cuda.is_available():
        raise ConfigError("--gpu needs a CUDA device and torch built with CUDA; this machine has none")
    tests = Path(__file__).resolve().parent.parent / "tests"
    status = 0
    if tests.is_dir():
        print(f"GPU tests: {sys.executable} -m pytest -m gpu {tests}", flush=True)
        status = subprocess.call([sys.executable, "-m", "pytest", "-q", "-m", "gpu", str(tests)])
    else:
        print("GPU tests: skipped (no tests/ folder beside this installation)")
    suite = main(["suite", "gpu", "--results-dir", args.results_dir, "--cache-dir", args.cache_dir])
    return 1 if status or suite else 0


def cmd_memory(args: argparse.Namespace) -> int:
    """``dabench memory``: :func:`harness.load_memory.run`; a failed load exits 1 with its error."""
    try:
        return load_memory.run(args)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    except load_memory.MeasurementError as err:
        print(f"dabench: error: {err}", file=sys.stderr)
        return 1


COMMANDS = {
    "list": cmd_list,
    "run": cmd_run,
    "suite": cmd_suite,
    "check": cmd_check,
    "report": cmd_report,
    "bench": cmd_bench,
    "compare": cmd_compare,
    "doctor": cmd_doctor,
    "memory": cmd_memory,
    "xda": xda_command.run,
}


if __name__ == "__main__":
    raise SystemExit(main())

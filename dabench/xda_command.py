"""``dabench xda``: the XDA figure and record of one test point (DualXDA, section "XDA").

    dabench xda --task mnist --variant std --test-index 7 --top 3
    dabench xda --task mnist --mark --n-train 1000        # the watermark (shortcut) case

Builds the task and the method as a run does (:class:`harness.specs.RunSpec`), takes the run's
set-up (:func:`harness.runner.set_up`: the cached model of a ``dabench run`` with the same task
options and seed is reused; :meth:`harness.runner.RunSetup.fit` fits the method through
``cache/methods/<name>/``), runs :func:`xda.xda_for_test_point`, and writes into ``--out``

- ``<stem>.json``: :func:`xda.build_document`'s document (:class:`xda.XDADocument`: task, method,
  test point, prediction, attributions of the proponents and opponents, relevance sums and
  conservation errors, the watermark shares, git, environment, machine);
- ``<stem>.npz``: the inputs and heatmaps the figure is drawn from (:meth:`xda.XDAResult.to_arrays`);
- ``<stem>.png`` and ``<stem>.pdf``: the figure (:mod:`paper_figures.xda_figure`),

with ``stem = <task>-<variant>-<method>-test<index>-<composite>`` (plus ``-biases`` with
``--keep-biases``). The LRP rules treat the biases as zero unless ``--keep-biases`` is given; the
document says which (``xda.biases_zeroed``).

The mark case (``--mark`` = ``--variant mark``): the watermark region and the shortcut class are
read off the data (:func:`xda.mark_facts`: the training images flagged in ``meta["marked"]``);
without ``--test-index`` the first test point predicted as the shortcut class whose true label is
another class is explained.

Only argparse is imported at start-up; torch, zennit and matplotlib load in :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING, Any

from harness.config import ConfigError, parse_key_values
from harness.protocols import CapabilityError, DataError

if TYPE_CHECKING:
    from xda import XDADocument

PRESETS = ("default", "quick", "paper")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``xda`` subcommand to ``subparsers`` (from ``parser.add_subparsers()``)."""
    p = subparsers.add_parser(
        "xda",
        help="XDA figure: why the top proponents/opponents matter for one test prediction (LRP heatmaps)",
        description="LRP heatmaps on the training and the test image for the strongest proponents and "
        "opponents of one test prediction (DualXDA's XDA figure), with a JSON record beside it.",
    )
    p.add_argument("--task", required=True, help="task name (see `dabench list tasks`)")
    p.add_argument("--variant", default=None, help="dataset variant (std, group, corrupt, mark)")
    p.add_argument(
        "--mark",
        action="store_true",
        help="the watermark case: --variant mark, and (without --test-index) the first test point "
        "predicted as the shortcut class whose true label differs",
    )
    p.add_argument("--test-index", type=int, default=None, help="position in the test split (default 0)")
    p.add_argument("--top", type=int, default=3, help="proponents and opponents shown each (default 3)")
    p.add_argument(
        "--method",
        default="dualda",
        help="a method with the feature_decomposition capability (default dualda; or representer)",
    )
    p.add_argument(
        "--method-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method config override, e.g. C=0.001 (repeatable)",
    )
    p.add_argument(
        "--composite",
        default="EpsilonPlusFlat",
        help="zennit LRP composite: EpsilonPlusFlat (default), EpsilonPlus, EpsilonAlpha2Beta1Flat, "
        "EpsilonAlpha2Beta1, EpsilonGammaBox",
    )
    p.add_argument(
        "--keep-biases",
        action="store_true",
        help="keep the layers' biases in the LRP rules (default: zeroed, zennit's zero_params='bias', as "
        "the paper's code; the input relevance then sums to a_i)",
    )
    p.add_argument("--n-train", type=int, default=None, help="use the first N training points")
    p.add_argument("--n-test", type=int, default=None, help="keep the first N test points")
    p.add_argument(
        "--preset", default="quick", choices=PRESETS, help="config preset of task and method (default quick)"
    )
    p.add_argument("--data-root", default=None, help="directory of an on-disk dataset")
    p.add_argument("--out", default="results/xda", help="output folder (default results/xda)")
    p.add_argument(
        "--cache-dir",
        default=os.environ.get("DABENCH_CACHE", "cache"),
        help="content-addressed cache of models and method artefacts (default: cache, or $DABENCH_CACHE)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the model (default 0)")
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="PLUGIN",
        help="load a plugin first: a path to a .py file or a module importable from the current folder",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    return p


def methods_with(capability: str) -> list[str]:
    """Names of the registered methods that declare ``capability`` (imports their modules)."""
    from harness.registry import METHODS

    return [name for name in METHODS.names() if capability in METHODS.get(name).supports]


def run(args: argparse.Namespace) -> int:
    """Run ``dabench xda``; prints what it wrote and the conservation numbers. Returns 0."""
    import torch

    import xda
    from harness.model_store import load_task_data, predict
    from harness.runner import ComponentSpec, RunSpec, set_up

    variant = _variant(args)
    if isinstance(args.top, bool) or args.top < 1:
        raise ConfigError(f"--top must be a positive number of training points, got {args.top}")
    composite = xda.resolve_composite_name(args.composite)  # one-line error listing the composites
    task_overrides = [
        (key, value)
        for key, value in (
            ("variant", variant),
            ("n_train", args.n_train),
            ("n_test", args.n_test),
            ("data_root", args.data_root),
        )
        if value is not None
    ]
    method_options = parse_key_values(args.method_option, "--method-option", "C=0.001")
    spec = RunSpec(
        task=ComponentSpec(args.task, tuple(task_overrides), args.preset),
        method=ComponentSpec(args.method, method_options, args.preset),
        metrics=(),
        seed=args.seed,
        cache_dir=args.cache_dir,
    )
    resolved = spec.resolve()
    task, method = resolved.task, resolved.method
    if xda.FEATURE_DECOMPOSITION not in method.supports:
        raise CapabilityError(
            f"method {args.method!r} has no feature decomposition, which XDA needs; methods that have one: "
            f"{', '.join(methods_with(xda.FEATURE_DECOMPOSITION))}"
        )
    n_test = len(load_task_data(task).test)  # loaded once per process: set_up reuses it
    if args.test_index is not None and not 0 <= args.test_index < n_test:
        raise DataError(
            f"--test-index {args.test_index} is out of range: the test split has {n_test} points "
            f"(valid: 0..{n_test - 1}; --n-test changes its size)"
        )

    setup = set_up(task, spec.seed, spec.cache_dir)  # the model of a `dabench run` with these options
    setup.fit(method, spec.seed)
    data, model = setup.data, setup.model
    predictions = predict(model, data.test.inputs, spec.timing.batch_size)

    region = shortcut = None
    if data.variant == "mark":
        region, shortcut = xda.mark_facts(data)
    index = args.test_index
    if index is None:
        index = 0
        if args.mark:
            hits = torch.nonzero((predictions == shortcut) & (data.test.y != shortcut)).flatten()
            if hits.numel() == 0:
                raise DataError(
                    f"no test point is predicted as the shortcut class {shortcut} with another true label; "
                    "the model did not learn the watermark on this setting (try more --n-train, or "
                    "pick a point with --test-index)"
                )
            index = int(hits[0])

    result = xda.xda_for_test_point(
        model,
        method,
        data.test.inputs[index : index + 1],
        data.train.inputs,
        top=args.top,
        composite=composite,
        bounds=xda.input_range(data.train.inputs),
        zero_bias=not args.keep_biases,
        region=region,
        train_labels=data.train.y,
    )

    stem = f"{task.name}-{data.variant}-{method.name}-test{index}-{composite}"
    if args.keep_biases:
        stem += "-biases"
    files: xda.document.FileNames = {
        "json": f"{stem}.json",
        "arrays": f"{stem}.npz",
        "png": f"{stem}.png",
        "pdf": f"{stem}.pdf",
    }
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    paths = {key: os.path.join(out, str(name)) for key, name in files.items()}
    document = xda.build_document(
        result,
        task=task,
        method=method,
        data=data,
        seed=spec.seed,
        model_info=setup.model_info,
        test_accuracy=float((predictions == data.test.y).double().mean()),
        test_index=index,
        top=args.top,
        shortcut=shortcut,
        files=files,
    )
    arrays = result.to_arrays()
    _write_atomically(paths["arrays"], _npz_bytes(arrays))
    _write_atomically(paths["json"], json.dumps(document, indent=1, sort_keys=True).encode())

    from paper_figures.xda_figure import draw_xda_figure

    draw_xda_figure(document, arrays, os.path.join(out, stem))
    _report(document, paths)
    return 0


# ----- helpers -------------------------------------------------------------------------------
def _variant(args: argparse.Namespace) -> str | None:
    if args.mark:
        if args.variant not in (None, "mark"):
            raise ConfigError(f"--mark is the mark variant; drop --variant {args.variant} or --mark")
        return "mark"
    return args.variant


def _npz_bytes(arrays: dict[str, Any]) -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def _write_atomically(path: str, content: bytes) -> None:
    """Write ``path`` through a temporary file beside it and ``os.replace`` (never half a file)."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=".xda.", suffix=os.path.splitext(path)[1], dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _report(document: XDADocument, paths: dict[str, str]) -> None:
    test, res = document["test"], document["xda"]
    cons = res["conservation"]
    print(
        f"test #{test['index']}: true label {test['true_label']}, predicted {test['prediction']} "
        f"(logit {res['logit']:.4g}); composite {res['composite']}"
        + (f" with {', '.join(res['canonizers'])}" if res["canonizers"] else "")
        + ("; biases zeroed" if res["biases_zeroed"] else "; biases kept")
    )
    for side in ("proponents", "opponents"):
        items = ", ".join(
            f"#{p['train_index']} (label {p['train_label']}) a={p['attribution']:+.3g}" for p in res[side]
        )
        print(f"{side}: {items or 'none with a non-zero attribution'}")

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2g}"

    print(
        f"conservation: feature layer max |sum R - a_i| = {fmt(cons['feature_max_abs_error'])}; input "
        f"max |sum R - a_i|/|a_i| = {fmt(cons['train_input_max_rel_error'])} (training images), "
        f"{fmt(cons['test_input_max_rel_error'])} (test image)"
    )
    if res["region"] is not None:
        shares = [p["test_region_share"] for p in res["proponents"] if p["test_region_share"] is not None]
        print(
            f"watermark: {100 * res['region']['pixel_share']:.1f}% of the pixels; share of positive "
            f"relevance inside it: LRP heatmap {fmt(res['region']['test_heatmap_share'])}, XDA on the "
            f"test image for the proponents {', '.join(fmt(s) for s in shares) or 'n/a'}"
        )
    print(f"wrote {paths['png']}, {paths['pdf']}, {paths['json']} (+ {os.path.basename(paths['arrays'])})")

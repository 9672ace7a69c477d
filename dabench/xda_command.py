"""``dabench xda``: the XDA figure and record of one test point (DualXDA, section "XDA").

    dabench xda --task mnist --variant std --test-index 7 --top 3
    dabench xda --task mnist --mark --n-train 1000        # the watermark (shortcut) case

Loads the task and its cached model (:func:`harness.model_store.get_or_train_model`: the model of a
``dabench run`` with the same task options and seed is reused), fits the method with the cache
(``cache/methods/<name>/``), runs :func:`harness.xda.xda_for_test_point`, and writes into ``--out``

- ``<stem>.json``: the record (task, method, test point, prediction, attributions of the
  proponents and opponents, relevance sums and conservation errors, the watermark shares);
- ``<stem>.npz``: the inputs and heatmaps the figure is drawn from;
- ``<stem>.png`` and ``<stem>.pdf``: the figure (:mod:`paper_figures.xda_figure`),

with ``stem = <task>-<variant>-<method>-test<index>-<composite>`` (plus ``-biases`` with
``--keep-biases``). The LRP rules treat the biases as zero unless ``--keep-biases`` is given; the
record says which (``xda.biases_zeroed``).

The mark case (``--mark`` = ``--variant mark``): the watermark region is read off the data
(:func:`harness.xda.watermark_region` on the training images flagged in ``meta["marked"]``) and the
shortcut class is the label of the marked training images; without ``--test-index`` the first test
point predicted as the shortcut class whose true label is another class is explained.

Only argparse is imported at start-up; torch, zennit and matplotlib load in :func:`run`.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from harness.config import ConfigError, parse_key_values
from harness.protocols import CapabilityError, DataError

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

    from harness import records, xda
    from harness.cache import Cache
    from harness.model_store import (
        get_or_train_model,
        load_task_data,
        predict,
        seed_everything,
        select_device,
    )
    from harness.registry import METHODS, TASKS
    from harness.runner import ComponentSpec

    variant = _variant(args)
    if isinstance(args.top, bool) or args.top < 1:
        raise ConfigError(f"--top must be a positive number of training points, got {args.top}")
    composite = xda.resolve_composite_name(args.composite)  # one-line error listing the composites

    method_cls = METHODS.get(args.method)
    if xda.FEATURE_DECOMPOSITION not in method_cls.supports:
        raise CapabilityError(
            f"method {args.method!r} has no feature decomposition, which XDA needs; methods that have one: "
            f"{', '.join(methods_with(xda.FEATURE_DECOMPOSITION))}"
        )
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
    task_cls = TASKS.get(args.task)
    task = task_cls(
        ComponentSpec(args.task, tuple(task_overrides), args.preset).build_config(task_cls.Config, "task")
    )
    method_options = parse_key_values(args.method_option, "--method-option", "C=0.001")
    method_spec = ComponentSpec(args.method, method_options, args.preset)
    method = method_cls(method_spec.build_config(method_cls.Config, "method"))

    data = load_task_data(task)
    n_test = len(data.test)
    if args.test_index is not None and not 0 <= args.test_index < n_test:
        raise DataError(
            f"--test-index {args.test_index} is out of range: the test split has {n_test} points "
            f"(valid: 0..{n_test - 1}; --n-test changes its size)"
        )
    device = select_device()
    cache = Cache(args.cache_dir)
    model, model_info = get_or_train_model(task, data, args.seed, cache, device)
    seed_everything(args.seed)
    method.fit(model, data.train, cache=cache.scope("methods", method.name))
    predictions = predict(model, data.test.x, 256)

    region = shortcut = None
    if data.variant == "mark":
        region, shortcut = _mark_facts(data, xda.watermark_region)
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

    input_x = data.train.x
    reduce = [0, *range(2, input_x.dim())]
    bounds = (input_x.amin(dim=reduce, keepdim=True), input_x.amax(dim=reduce, keepdim=True))
    result = xda.xda_for_test_point(
        model,
        method,
        data.test.x[index : index + 1],
        data.train.x,
        top=args.top,
        composite=composite,
        bounds=bounds,
        zero_bias=not args.keep_biases,
        region=region,
        train_labels=data.train.y,
    )

    stem = f"{task.name}-{data.variant}-{method.name}-test{index}-{composite}"
    if args.keep_biases:
        stem += "-biases"
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    paths = {
        "json": os.path.join(out, f"{stem}.json"),
        "arrays": os.path.join(out, f"{stem}.npz"),
        "png": os.path.join(out, f"{stem}.png"),
        "pdf": os.path.join(out, f"{stem}.pdf"),
    }
    true_label = int(data.test.y[index])
    record = {
        "kind": "xda",
        "schema_version": 1,
        "created_utc": records.utc_now(),
        "task": {
            "name": task.name,
            "version": task.version,
            "variant": data.variant,
            "config": task.config.to_dict(),
            "n_train": len(data.train),
            "n_test": n_test,
            "seed": args.seed,
            "model": {
                "key": model_info["key"],
                "cached": model_info["cached"],
                "test_accuracy": float((predictions == data.test.y).double().mean()),
            },
        },
        "method": {
            "name": method.name,
            "version": method.version,
            "config": method.config.to_dict(),
            "config_hash": method.config.config_hash(),
        },
        "test": {
            "index": index,
            "true_label": true_label,
            "prediction": result.prediction,
            "correct": result.prediction == true_label,
        },
        "top": args.top,
        "shortcut": (
            None
            if shortcut is None
            else {
                "class": shortcut,
                "predicted_as_shortcut": result.prediction == shortcut,
                "true_label_differs": true_label != shortcut,
            }
        ),
        "xda": result.to_record(),
        "files": {key: os.path.basename(path) for key, path in paths.items()},
        "git": records.git_info(),
        "environment": records.environment(),
    }
    if record["shortcut"] is not None:
        marked = data.train.meta["marked"]
        for side in ("proponents", "opponents"):
            for entry in record["xda"][side]:
                entry["train_marked"] = bool(marked[entry["train_index"]])
    arrays = _arrays(result)
    _write_arrays(arrays, paths["arrays"])
    _write_json(record, paths["json"])

    from paper_figures.xda_figure import draw_xda_figure

    draw_xda_figure(record, arrays, os.path.join(out, stem))
    _report(record, paths)
    return 0


# ----- helpers -------------------------------------------------------------------------------
def _variant(args: argparse.Namespace) -> str | None:
    if args.mark:
        if args.variant not in (None, "mark"):
            raise ConfigError(f"--mark is the mark variant; drop --variant {args.variant} or --mark")
        return "mark"
    return args.variant


def _mark_facts(data: Any, find_region: Any) -> tuple[Any, int]:
    """``(region, shortcut_class)`` of the mark variant, read off ``meta["marked"]`` of the training split."""
    import torch

    train, test = data.train, data.test
    marked = train.meta.get("marked")
    if marked is None or int(marked.sum()) < 1 or bool(marked.all()):
        raise DataError(
            "the mark variant's training split must flag watermarked and clean images in meta['marked']; "
            "use a larger --n-train"
        )
    labels = train.y[marked].unique()
    if labels.numel() != 1:
        raise DataError(f"watermarked training images carry several labels {labels.tolist()}; expected one")
    test_marked = test.meta.get("marked", torch.zeros(len(test), dtype=torch.bool))
    with_mark = torch.cat([train.x[marked], test.x[test_marked]])
    return find_region(with_mark, train.x[~marked]), int(labels[0])


def _arrays(result: Any) -> dict[str, Any]:
    import numpy as np
    import torch

    pairs = result.pairs
    empty = torch.empty(0, *result.test_input.shape)
    arrays = {
        "test_input": result.test_input.numpy(),
        "test_heatmap": result.test_heatmap.numpy(),
        "train_inputs": result.train_inputs.numpy(),
        "train_heatmaps": (torch.stack([p.train_heatmap for p in pairs]) if pairs else empty).numpy(),
        "test_heatmaps": (torch.stack([p.test_heatmap for p in pairs]) if pairs else empty).numpy(),
    }
    if result.region is not None:
        arrays["region"] = result.region.numpy().astype(np.bool_)
    return arrays


def _write_arrays(arrays: dict[str, Any], path: str) -> None:
    import tempfile

    import numpy as np

    fd, tmp = tempfile.mkstemp(prefix=".xda.", suffix=".npz", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez_compressed(handle, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_json(record: dict[str, Any], path: str) -> None:
    import json
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=".xda.", suffix=".json", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _report(record: dict[str, Any], paths: dict[str, str]) -> None:
    test, res = record["test"], record["xda"]
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

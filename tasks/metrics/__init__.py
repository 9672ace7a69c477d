"""The metric catalogue: one line per metric (name, "module:Class", one-line description)."""

from harness.registry import METRICS

METRICS.add(
    "class_detection",
    "tasks.metrics.class_detection:ClassDetection",
    "Share of the top-5 attributed training points labelled as the prediction (quanda).",
)
METRICS.add(
    "sparsity",
    "tasks.metrics.sparsity:Sparsity",
    "l0_eps share (|a|/max|a| < 1e-6), Hoyer measure and share of exact zeros per test point.",
)
METRICS.add(
    "subclass_detection",
    "tasks.metrics.subclass_detection:SubclassDetection",
    "Group model: share of the top-5 attributed training points of the test point's fine class (quanda).",
)
METRICS.add(
    "shortcut_detection",
    "tasks.metrics.shortcut_detection:ShortcutDetection",
    "Mark model: mean AUPRC of watermarked training points for shortcut-predicted test points (quanda).",
)
METRICS.add(
    "mislabel_detection",
    "tasks.metrics.mislabel_detection:MislabelDetection",
    "Corrupt model: min-max normalised area under the flipped-label detection curve of self-influence.",
)
METRICS.add(
    "topk_cardinality",
    "tasks.metrics.topk_cardinality:TopKCardinality",
    "Distinct training points among all test points' top-5, over n_test * 5 (quanda).",
)
METRICS.add(
    "lds",
    "tasks.metrics.lds:LDS",
    "Linear datamodeling score: Spearman of summed attributions vs models retrained on 50% subsets (quanda).",
)
METRICS.add(
    "coreset_selection",
    "tasks.metrics.coreset:CoresetSelection",
    "Mean test cross-entropy of models retrained on the top 10%..100% by summed |attribution| "
    "(lower: better).",
)
METRICS.add(
    "data_pruning",
    "tasks.metrics.coreset:DataPruning",
    "Mean test cross-entropy of models retrained on the least important 10%..100% (lower: better).",
)
METRICS.add(
    "model_randomization",
    "tasks.metrics.model_randomization:ModelRandomization",
    "Spearman between attributions of the trained and of a randomized model (quanda; lower: better).",
)

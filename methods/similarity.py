"""Feature and input similarity: the similarity baselines of the DualXDA paper's appendix.

Paper: Yolcu, Weckbecker, Wiegand, Samek, Lapuschkin, "DualXDA: Towards Sparse, Efficient and
Explainable Data Attribution in Large AI Models" (arXiv 2402.12118, TMLR 2025), appendix baselines
"feature similarity and input similarity (dot, cos, l2), signed by label agreement".

Attribution of training point ``i`` for test input ``x`` and target class ``c`` (the model's
predicted class)::

    a_i(x) = s(z(x), z(x_i)) * (+1 if y_i == c else -1)

- ``z`` is ``phi`` = the penultimate features ``model.features(x)`` (:class:`FeatureSimilarity`,
  code name ``feature_similarity``) or the flattened input ``vec(x)`` (:class:`InputSimilarity`,
  ``input_similarity``);
- ``y_i`` is the label the model was trained on (``train.y``: the flipped label in the corrupt
  variant, the superclass in the group variant);
- ``s`` is ``metric="dot"``: ``<u, v>``; ``"cos"``: ``<u, v> / (||u|| ||v||)`` (0 for a zero
  vector); ``"l2"``: ``1 / (1 + ||u - v||)``.

The l2 variant turns the distance into a positive similarity in ``(0, 1]`` (our choice; the paper
only names "l2"): with the label-agreement sign, close same-class points become the strongest
proponents and close other-class points the strongest opponents, which is what the sign is for.
A signed *negative* distance would invert that (a far same-class point would score lowest).

Explanations are one matmul of the test features against the train features kept from ``fit``
(float32, on the model's device); for l2 the squared distance is expanded as
``||u||^2 + ||v||^2 - 2 <u, v>`` and clamped at 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import torch

from harness.cache import Artefact
from harness.config import Config, ConfigError, option
from harness.protocols import Inputs, Method, Split, feature_split

if TYPE_CHECKING:
    from torch import Tensor, nn


log = logging.getLogger(__name__)

SIMILARITY_METRICS = ("dot", "cos", "l2")


@dataclass(frozen=True, kw_only=True)
class SimilarityConfig(Config):
    """Configuration shared by :class:`FeatureSimilarity` and :class:`InputSimilarity`."""

    metric: Literal["dot", "cos", "l2"] = option(
        "cos", "similarity s(u, v): dot = <u,v>, cos = cosine, l2 = 1 / (1 + ||u - v||)"
    )
    batch_size: int = option(256, "points per forward pass when computing features")

    def __post_init__(self) -> None:
        if self.metric not in SIMILARITY_METRICS:
            raise ConfigError(f"metric must be one of {list(SIMILARITY_METRICS)}, got {self.metric!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or (self.batch_size < 1):
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")


class _Similarity(Method):
    """Shared fit/explain of the similarity baselines; subclasses choose the representation z."""

    Config = SimilarityConfig
    version = "1"
    cache_ignores = frozenset({"metric"})
    cheap = True
    #: Name of the representation in the cache key ("features" or "input").
    layer: ClassVar[str] = ""

    def __init__(self, config: SimilarityConfig | None = None) -> None:
        super().__init__(config)
        self.train_features_: Tensor | None = None  # (n_train, d) float32, model device
        self.train_labels_: Tensor | None = None  # (n_train,) long, model device
        self.train_sq_norms_: Tensor | None = None  # (n_train,) for l2

    # ----- representation ---------------------------------------------------------------------
    def _represent(self, model: nn.Module, x: Tensor) -> Tensor:
        """``(n, d)`` float32 representation of a batch ``x`` ``(n, *input_shape)`` (no grad)."""
        raise NotImplementedError

    def _features(self, model: nn.Module, x: Tensor | Inputs, device: torch.device) -> Tensor:
        """``(n, d)`` float32 representations of ``x``, in batches, no grad, model in eval mode."""
        batch_size = self.config.batch_size  # type: ignore[attr-defined]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                parts = [
                    self._represent(model, x[i : i + batch_size].to(device))
                    for i in range(0, len(x), batch_size)
                ]
        finally:
            model.train(was_training)
        if not parts:
            return torch.empty(0, 0, dtype=torch.float32, device=device)
        return torch.cat(parts)

    # ----- lifecycle --------------------------------------------------------------------------
    def compute(self, model: nn.Module, train: Split) -> Artefact:
        """The train representations ``(n_train, d)`` float32 and labels ``(n_train,)``, on the CPU.

        Cached (FeatureSimilarity) under the method, version, batch size (batched kernels may round
        differently, and a hit must equal a cold fit), training data and model; the similarity
        ``metric`` is left out of the key, so dot, cos and l2 share one entry.
        """
        log.info(
            "%s: computing %s of %d training points", self.name or type(self).__name__, self.layer, len(train)
        )
        assert self.device_ is not None
        features = self._features(model, train.inputs, self.device_)
        return Artefact(
            tensors={
                "features": features.detach().to("cpu", torch.float32).contiguous(),
                "labels": train.y.detach().to("cpu", torch.long).contiguous(),
            },
            meta={"n_train": len(train), "dim": int(features.shape[1])},
        )

    def load(self, artefact: Artefact, model: nn.Module, train: Split) -> None:
        """Keep the representations on the model's device (normalised for cos, squared norms for l2)."""
        assert self.device_ is not None
        self._set_train(artefact.tensors["features"], artefact.tensors["labels"], self.device_)

    def _set_train(self, features: Tensor, labels: Tensor, device: torch.device) -> None:
        metric = self.config.metric  # type: ignore[attr-defined]
        features = features.to(device=device, dtype=torch.float32)
        if metric == "cos":
            features = torch.nn.functional.normalize(features, dim=1)
        self.train_features_ = features
        self.train_labels_ = labels.to(device=device, dtype=torch.long)
        self.train_sq_norms_ = (features * features).sum(dim=1) if metric == "l2" else None

    def explain(self, x: Tensor, targets: Tensor) -> Tensor:
        """Signed similarities of each test input to every training point.

        Parameters
        ----------
        x:
            ``(n_test, *input_shape)`` test inputs.
        targets:
            ``(n_test,)`` target classes (the model's predicted classes).

        Returns
        -------
        Tensor
            ``(n_test, n_train)`` float32 on the model's device: ``s(z(x_j), z(x_i))`` times
            ``+1`` where ``y_i == targets[j]`` and ``-1`` elsewhere.
        """
        self._require_fitted()
        assert self.model_ is not None and self.device_ is not None
        assert self.train_features_ is not None and self.train_labels_ is not None
        metric = self.config.metric  # type: ignore[attr-defined]
        z = self._features(self.model_, x, self.device_)
        if z.shape[0] == 0:
            return torch.empty(0, len(self.train_labels_), dtype=torch.float32, device=self.device_)
        if metric == "cos":
            z = torch.nn.functional.normalize(z, dim=1)
        inner = z @ self.train_features_.T  # (n_test, n_train)
        if metric == "l2":
            assert self.train_sq_norms_ is not None
            sq_dist = (z * z).sum(dim=1, keepdim=True) + self.train_sq_norms_[None, :] - 2 * inner
            scores = 1.0 / (1.0 + sq_dist.clamp_min(0.0).sqrt())
        else:
            scores = inner
        same = self.train_labels_[None, :] == targets.to(self.device_).reshape(-1, 1)
        return torch.where(same, scores, -scores).to(torch.float32)

    def diagnostics(self) -> dict[str, int]:
        if self.train_features_ is None:
            return {}
        return {"feature_dim": int(self.train_features_.shape[1])}


@dataclass(frozen=True, kw_only=True)
class FeatureSimilarityConfig(SimilarityConfig):
    """Configuration of :class:`FeatureSimilarity` (its own class: the registry names its owner)."""


@dataclass(frozen=True, kw_only=True)
class InputSimilarityConfig(SimilarityConfig):
    """Configuration of :class:`InputSimilarity` (its own class: the registry names its owner)."""


class FeatureSimilarity(_Similarity):
    """Similarity of penultimate features ``phi(x) = model.features(x)``, label-agreement signed."""

    Config = FeatureSimilarityConfig
    layer = "features"
    supports = frozenset({"cache"})
    attributes_through = "penultimate features"

    def _represent(self, model: nn.Module, x: Tensor) -> Tensor:
        features, _ = feature_split(model)
        return features(x).flatten(start_dim=1).to(torch.float32)


class InputSimilarity(_Similarity):
    """Similarity of flattened inputs ``vec(x)``, label-agreement signed (the model is unused).

    Keeps no cache: its "features" are the training inputs themselves, already in memory, so a
    cache entry would only copy the training set to disk (188 MB for MNIST) and make the warm fit
    read it back, slower than flattening the tensor again.
    """

    Config = InputSimilarityConfig
    layer = "input"
    supports = frozenset()
    attributes_through = "inputs"

    def _represent(self, model: nn.Module, x: Tensor) -> Tensor:
        return x.flatten(start_dim=1).to(torch.float32)

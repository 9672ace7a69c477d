"""What XDA returns: one pair (:class:`XDAPair`), one test point (:class:`XDAResult`), and their numbers.

:meth:`XDAResult.to_record` gives the JSON-able numbers (:class:`XDARecord`, no heatmaps);
:meth:`XDAResult.to_arrays` the inputs and heatmaps a figure is drawn from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NotRequired, TypedDict

from xda.watermark import positive_share

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor


class Conservation(TypedDict):
    """How far the relevance sums are from ``a_i`` (:meth:`XDAResult.conservation`)."""

    feature_max_abs_error: float | None
    feature_max_rel_error: float | None
    train_input_max_rel_error: float | None
    test_input_max_rel_error: float | None
    test_heatmap_rel_error: float


class PairRecord(TypedDict):
    """The numbers of one :class:`XDAPair`."""

    train_index: int
    train_label: int | None
    attribution: float
    alpha: float
    feature_sum: float
    train_input_sum: float
    test_input_sum: float
    train_region_share: float | None
    test_region_share: float | None
    #: whether the training image carries the watermark (``dabench xda`` on the mark variant only)
    train_marked: NotRequired[bool]


class RegionRecord(TypedDict):
    pixel_share: float
    test_heatmap_share: float | None


class PairShares(TypedDict):
    """Region shares of one pair's heatmaps (:meth:`XDAResult.region_shares`)."""

    train: float | None
    test: float | None


class RegionShares(TypedDict):
    """What :meth:`XDAResult.region_shares` returns."""

    pixel_share: float
    test_heatmap: float | None
    proponents: list[PairShares]
    opponents: list[PairShares]


class XDARecord(TypedDict):
    """The numbers of one :class:`XDAResult` (:meth:`XDAResult.to_record`)."""

    prediction: int
    logit: float
    test_heatmap_sum: float
    composite: str
    canonizers: list[str]
    biases_zeroed: bool | None
    proponents: list[PairRecord]
    opponents: list[PairRecord]
    conservation: Conservation
    region: RegionRecord | None


@dataclass
class XDAPair:
    """XDA of one (test point, training point) pair.

    Attributes
    ----------
    train_index: position of the training point in the training split.
    attribution: ``a_i`` as the method's ``explain`` gives it.
    alpha: ``alpha_i^c``, read off the terms (``R = alpha phi(x) phi(x_i)``).
    feature_relevance: ``(d,)`` float64 CPU: the terms ``R_k``; they sum to ``a_i``.
    train_heatmap: ``(*input_shape)`` float32 CPU: ``R`` propagated into the training image.
    test_heatmap: ``(*input_shape)`` float32 CPU: ``R`` propagated into the test image.
    train_label: the training label of the point (None when not given).
    """

    train_index: int
    attribution: float
    alpha: float
    feature_relevance: Tensor
    train_heatmap: Tensor
    test_heatmap: Tensor
    train_label: int | None = None

    @property
    def feature_sum(self) -> float:
        return float(self.feature_relevance.sum())

    @property
    def train_input_sum(self) -> float:
        return float(self.train_heatmap.double().sum())

    @property
    def test_input_sum(self) -> float:
        return float(self.test_heatmap.double().sum())


@dataclass
class XDAResult:
    """XDA of one test point: its prediction and heatmap, proponents and opponents.

    Attributes
    ----------
    test_input: ``(*input_shape)`` float32 CPU: the (normalised) test input.
    prediction: the predicted class ``c`` (the class explained).
    logit: ``f_c(x)``.
    test_heatmap: ``(*input_shape)`` float32 CPU: LRP of ``f_c(x)`` through the whole model.
    proponents: the ``top`` training points of largest positive ``a_i``, strongest first.
    opponents: the ``top`` training points of most negative ``a_i``, strongest first.
    train_inputs: ``(m, *input_shape)`` float32 CPU: the training inputs of proponents then opponents.
    composite: name of the LRP composite.
    canonizers: names of the canonizers applied.
    biases_zeroed: whether the composite's rules treat the biases as zero (zennit's
        ``zero_params="bias"``); None when a composite instance was given (its own settings).
    region: ``(*spatial)`` bool CPU or None: a region whose share of positive relevance is reported
        (the watermark of the mark variant).
    """

    test_input: Tensor
    prediction: int
    logit: float
    test_heatmap: Tensor
    proponents: list[XDAPair]
    opponents: list[XDAPair]
    train_inputs: Tensor
    composite: str
    canonizers: list[str] = field(default_factory=list)
    biases_zeroed: bool | None = True
    region: Tensor | None = None

    @property
    def pairs(self) -> list[XDAPair]:
        return [*self.proponents, *self.opponents]

    def conservation(self) -> Conservation:
        """Largest deviations of the relevance sums from ``a_i`` over all pairs.

        ``feature_max_abs_error``: ``max |sum_k R_k - a_i|`` (exact up to float32 rounding of
        ``explain``); ``*_input_max_rel_error``: ``max |sum of input relevance - a_i| / |a_i|`` on
        the training and the test side; ``test_heatmap_rel_error``: the same for the test point's
        own heatmap against its logit. None where there are no pairs.
        """
        pairs = self.pairs

        def worst(values: list[float]) -> float | None:
            return max(values) if values else None

        def rel(total: float, a: float) -> float:
            return abs(total - a) / max(abs(a), 1e-30)

        return {
            "feature_max_abs_error": worst([abs(p.feature_sum - p.attribution) for p in pairs]),
            "feature_max_rel_error": worst([rel(p.feature_sum, p.attribution) for p in pairs]),
            "train_input_max_rel_error": worst([rel(p.train_input_sum, p.attribution) for p in pairs]),
            "test_input_max_rel_error": worst([rel(p.test_input_sum, p.attribution) for p in pairs]),
            "test_heatmap_rel_error": rel(float(self.test_heatmap.double().sum()), self.logit),
        }

    def region_shares(self) -> RegionShares | None:
        """Share of the relevance inside :attr:`region`, per heatmap (None without a region).

        For the test point's heatmap and the proponents' heatmaps: the share of the POSITIVE
        relevance; for the opponents' (``a_i < 0``): the share of the NEGATIVE relevance, i.e.
        always the relevance that carries the attribution's sign (:func:`positive_share` of the
        heatmap times ``sign(a_i)``). ``pixel_share`` is the region's share of the pixels: the
        share a heatmap spread evenly would have.
        """
        if self.region is None:
            return None
        region = self.region

        def sides(p: XDAPair) -> PairShares:
            sign = 1.0 if p.attribution >= 0 else -1.0
            return {
                "train": positive_share(sign * p.train_heatmap, region),
                "test": positive_share(sign * p.test_heatmap, region),
            }

        return {
            "pixel_share": float(region.double().mean()),
            "test_heatmap": positive_share(
                self.test_heatmap if self.logit >= 0 else -self.test_heatmap, region
            ),
            "proponents": [sides(p) for p in self.proponents],
            "opponents": [sides(p) for p in self.opponents],
        }

    def to_record(self) -> XDARecord:
        """The numbers of this result as JSON-able values (no heatmaps)."""
        shares = self.region_shares()

        def pair(p: XDAPair, share: PairShares | None) -> PairRecord:
            return {
                "train_index": p.train_index,
                "train_label": p.train_label,
                "attribution": p.attribution,
                "alpha": p.alpha,
                "feature_sum": p.feature_sum,
                "train_input_sum": p.train_input_sum,
                "test_input_sum": p.test_input_sum,
                "train_region_share": share["train"] if share else None,
                "test_region_share": share["test"] if share else None,
            }

        return {
            "prediction": self.prediction,
            "logit": self.logit,
            "test_heatmap_sum": float(self.test_heatmap.double().sum()),
            "composite": self.composite,
            "canonizers": list(self.canonizers),
            "biases_zeroed": self.biases_zeroed,
            "proponents": [
                pair(p, shares["proponents"][j] if shares else None) for j, p in enumerate(self.proponents)
            ],
            "opponents": [
                pair(p, shares["opponents"][j] if shares else None) for j, p in enumerate(self.opponents)
            ],
            "conservation": self.conservation(),
            "region": (
                None
                if shares is None
                else {"pixel_share": shares["pixel_share"], "test_heatmap_share": shares["test_heatmap"]}
            ),
        }

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The inputs and heatmaps a figure is drawn from, as numpy arrays.

        ``test_input``, ``test_heatmap``: ``(*input_shape)``; ``train_inputs``, ``train_heatmaps``,
        ``test_heatmaps``: ``(m, *input_shape)``, proponents then opponents (the order of
        :attr:`pairs`); ``region``: ``(*spatial)`` bool, only with a region.
        """
        import numpy as np
        import torch

        pairs = self.pairs
        empty = torch.empty(0, *self.test_input.shape)
        arrays = {
            "test_input": self.test_input.numpy(),
            "test_heatmap": self.test_heatmap.numpy(),
            "train_inputs": self.train_inputs.numpy(),
            "train_heatmaps": (torch.stack([p.train_heatmap for p in pairs]) if pairs else empty).numpy(),
            "test_heatmaps": (torch.stack([p.test_heatmap for p in pairs]) if pairs else empty).numpy(),
        }
        if self.region is not None:
            arrays["region"] = self.region.numpy().astype(np.bool_)
        return arrays

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
whole model (the starting relevance is the logit).

zennit's convention, checked in the tests (hand-computed LRP-0 / epsilon on a two-layer network):
under a composite, what flows backward through a hooked module is relevance itself (a rule maps
the relevance of the outputs to that of the inputs, e.g. epsilon:
``R_j = x_j sum_k w_kj R_k / (z_k + eps sign z_k)``), so the ``grad_outputs`` given at the output of
``model.features`` IS the output relevance ``R``. There is nothing to divide by ``phi(x_i)``.

Composites (by zennit's class name or its registered snake_case name): ``EpsilonPlusFlat``
(default, as in the paper), ``EpsilonPlus``, ``EpsilonAlpha2Beta1Flat``, ``EpsilonAlpha2Beta1``,
``EpsilonGammaBox`` (needs ``bounds``: the lowest and highest value an input can take, i.e. the
normalised image range). zennit's other composites (DeconvNet, GuidedBackprop, ExcitationBackprop,
BetaSmooth) are modified gradients, not relevance propagation, and are not offered. In Python any
:class:`zennit.core.Composite` instance may be passed instead of a name. Biases: a named composite
is built with zennit's ``zero_params="bias"`` (``zero_bias=True``, the default; ``dabench xda
--keep-biases`` turns it off), as the paper's reference code builds every composite it names: the
rules then treat every bias as zero, including the ones the canonizers create by merging batch
norms. Each result records which (``biases_zeroed``).

Canonizers: a model whose ``features`` contain torchvision ResNet blocks gets
:class:`zennit.torchvision.ResNetCanonizer` (batch norms merged into the preceding convolutions,
residual additions made explicit so the Norm rule applies); any other model with batch norms gets
:class:`zennit.canonizers.SequentialMergeBatchNorm`; BasicConv and the toy MLP need none. The
check looks at module types (torchvision's classes), so no task module is imported.

Conservation at the input, ``|sum of input relevance - a_i| / |a_i|`` (and the test point's heatmap
against its logit). With the biases zeroed it is float32 rounding: at most 2e-6 with EpsilonPlusFlat
(8e-6 with EpsilonAlpha2Beta1Flat; EpsilonAlpha2Beta1 loses up to 0.02 where a neuron has no
negative contribution). With the biases kept the rules hand each bias its share, which is lost on
the way down: at most 0.07 with EpsilonPlusFlat (0.04-0.16 for the others, never of the other sign).
Measured on MNIST BasicConv (2,000 training points, quick preset, seed 0: the tests'
``mnist_small_setup``), DualDA C=1e-3 and Representer Points, the top-3 proponents and opponents of
the first 30 test points (180 pairs); on random ResNet-18s at most 6e-6 (zeroed) and 0.064 (kept).
:data:`INPUT_CONSERVATION_TOLERANCE` and :data:`INPUT_CONSERVATION_TOLERANCE_BIASES_KEPT` hold the
bounds the tests assert; every result records its own numbers (:meth:`XDAResult.conservation`).

The watermark (measured with the biases kept, on the earlier 3-epoch quick model; not yet redone)
(mark variant, MNIST, 1,000 training points, quick preset; the shortcut is learned: 71%
of the 400 first test points are predicted as class 2). The watermark covers 31.1% of the pixels.
Share of the positive relevance of the test point's own LRP heatmap inside it, over the first 20
test points predicted as 2 with another true label (median, min-max): EpsilonPlus 0.625
(0.43-0.76), EpsilonGammaBox 0.46 (0.32-0.56), EpsilonAlpha2Beta1Flat 0.35 (0.26-0.42),
EpsilonPlusFlat 0.32 (0.22-0.38); on correctly classified test points of other classes (also
watermarked) 0.21, 0.15, 0.17 and 0.14. The flat rule of the ``...Flat`` composites spreads each
first-layer relevance evenly over its 3x3 receptive field, which blurs a 2-pixel frame and a 6x6
square by a pixel on each side: with the default composite the share is about the area share.
The XDA heatmaps on the test image of the top-3 proponents have median shares 0.37 (EpsilonPlus)
and 0.20 (EpsilonPlusFlat). DualDA's top proponents there are unmarked class-2 images (0 of 60):
only 1 of the 33 watermarked training images is a support vector (they are far from the margin).

Python API::

    from harness.xda import xda_for_test_point

    method.fit(model, data.train, cache=cache)          # any method with "feature_decomposition"
    result = xda_for_test_point(model, method, data.test.x[7:8], data.train.x, top=3)
    result.prediction, result.proponents[0].attribution  # class, a_i of the strongest proponent
    result.proponents[0].train_heatmap                   # (*input_shape) relevance on x_i
    result.conservation()                                # feature- and input-level sums vs a_i
    record = result.to_record()                          # JSON-able numbers

:func:`explain_pairs` explains chosen training indices; :func:`lrp_heatmap` is plain LRP of one
logit; :func:`propagate` is the general step (relevance at a module's output -> its input).
``dabench xda`` (:mod:`dabench.xda_command`) draws the figure and writes the record.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.config import ConfigError
from harness.protocols import CapabilityError, DataError, Method, feature_split

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn
    from zennit.core import Composite

log = logging.getLogger(__name__)

#: The capability a method declares when its attributions decompose over penultimate features.
FEATURE_DECOMPOSITION = "feature_decomposition"
#: LRP composites offered by name (zennit class names); the first is the default.
COMPOSITES: tuple[str, ...] = (
    "EpsilonPlusFlat",
    "EpsilonPlus",
    "EpsilonAlpha2Beta1Flat",
    "EpsilonAlpha2Beta1",
    "EpsilonGammaBox",
)
DEFAULT_COMPOSITE = COMPOSITES[0]
#: Composites whose rules need the input range (``bounds``).
NEEDS_BOUNDS = frozenset({"EpsilonGammaBox"})
#: Bound on ``|input relevance sum - a_i| / |a_i|`` per composite, biases zeroed (the default),
#: asserted by the tests on MNIST BasicConv (the measured maximum plus a margin; module docstring).
INPUT_CONSERVATION_TOLERANCE: dict[str, float] = {
    "EpsilonPlusFlat": 2e-5,
    "EpsilonPlus": 2e-5,
    "EpsilonAlpha2Beta1Flat": 2e-5,
    "EpsilonAlpha2Beta1": 0.03,
    "EpsilonGammaBox": 2e-5,
}
#: The same with the biases kept (``zero_bias=False``): they take their share of the relevance.
INPUT_CONSERVATION_TOLERANCE_BIASES_KEPT: dict[str, float] = {
    "EpsilonPlusFlat": 0.11,
    "EpsilonPlus": 0.21,
    "EpsilonAlpha2Beta1Flat": 0.24,
    "EpsilonAlpha2Beta1": 0.1,
    "EpsilonGammaBox": 0.065,
}
#: A method's terms must match ``alpha phi(x) phi(x_i)`` to this relative error (checks ``train_x``).
_FORM_TOLERANCE = 1e-2


# =============================================================================================
# Results
# =============================================================================================
@dataclass
class PairExplanation:
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
    proponents: list[PairExplanation]
    opponents: list[PairExplanation]
    train_inputs: Tensor
    composite: str
    canonizers: list[str] = field(default_factory=list)
    biases_zeroed: bool | None = True
    region: Tensor | None = None

    @property
    def pairs(self) -> list[PairExplanation]:
        return [*self.proponents, *self.opponents]

    def conservation(self) -> dict[str, float | None]:
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

    def region_shares(self) -> dict[str, Any] | None:
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

        def sides(p: PairExplanation) -> dict[str, float | None]:
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

    def to_record(self) -> dict[str, Any]:
        """The numbers of this result as JSON-able values (no heatmaps)."""
        shares = self.region_shares()

        def pair(p: PairExplanation, share: dict[str, float] | None) -> dict[str, Any]:
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


def positive_share(heatmap: Tensor, region: Tensor) -> float | None:
    """Share of the positive relevance of ``heatmap`` that lies inside ``region``.

    Parameters
    ----------
    heatmap:
        ``(*lead, *spatial)`` relevance; leading dimensions (channels) are summed first.
    region:
        ``(*spatial)`` bool.

    Returns
    -------
    float or None
        ``sum(max(h, 0)[region]) / sum(max(h, 0))``; None when no relevance is positive.
    """
    import torch

    if tuple(heatmap.shape[heatmap.dim() - region.dim() :]) != tuple(region.shape):
        raise DataError(
            f"region of shape {tuple(region.shape)} does not match the heatmap's trailing dimensions "
            f"{tuple(heatmap.shape)}"
        )
    per_pixel = heatmap.detach().double().cpu()
    while per_pixel.dim() > region.dim():
        per_pixel = per_pixel.sum(dim=0)
    positive = per_pixel.clamp(min=0)
    total = float(positive.sum())
    if total <= 0:
        return None
    return float(positive[region.cpu().to(torch.bool)].sum()) / total


# =============================================================================================
# LRP plumbing
# =============================================================================================
def canonizers_for(module: nn.Module) -> list[Any]:
    """The zennit canonizers ``module`` needs: ResNet blocks -> ResNetCanonizer, batch norms -> merged.

    Returns an empty list for models without batch norms (BasicConv, MLPs).
    """
    import torch

    modules = list(module.modules())
    try:
        from torchvision.models.resnet import BasicBlock, Bottleneck
    except ImportError:  # pragma: no cover - torchvision is a dependency
        BasicBlock = Bottleneck = ()  # noqa: N806
    if any(isinstance(m, (BasicBlock, Bottleneck)) for m in modules):
        from zennit.torchvision import ResNetCanonizer

        return [ResNetCanonizer()]
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in modules):
        from zennit.canonizers import SequentialMergeBatchNorm

        return [SequentialMergeBatchNorm()]
    return []


def composite_names() -> list[str]:
    """The composite names :func:`make_composite` accepts (class names; snake_case works too)."""
    return list(COMPOSITES)


def resolve_composite_name(name: str) -> str:
    """The class name of an offered composite (``name`` may be zennit's snake_case name); ConfigError else."""
    import zennit.composites

    registered = {cls.__name__: key for key, cls in zennit.composites.COMPOSITES.items()}
    for offered in COMPOSITES:
        if name in (offered, registered.get(offered)):
            return offered
    raise ConfigError(
        f"unknown LRP composite {name!r}; choose one of {', '.join(COMPOSITES)} (zennit class names; "
        "snake_case names such as epsilon_plus_flat work too)"
    )


def make_composite(
    composite: str | Composite,
    module: nn.Module,
    *,
    bounds: tuple[float | Tensor, float | Tensor] | None = None,
    zero_bias: bool = True,
) -> tuple[Composite, str, list[str]]:
    """A fresh zennit composite for ``module``, with the canonizers it needs.

    Parameters
    ----------
    composite:
        A name of :data:`COMPOSITES` (or zennit's snake_case name), or a composite instance (used
        as given: add canonizers and ``zero_params`` to it yourself; ``zero_bias`` is ignored).
    module:
        The module the composite will be registered on (its types choose the canonizers).
    bounds:
        ``(low, high)``: the lowest and highest input value, floats or tensors that broadcast
        against a batch of inputs (e.g. ``(1, C, 1, 1)`` per channel), for the ZBox rule of
        ``EpsilonGammaBox`` (ignored by the other composites).
    zero_bias:
        Build the named composite with zennit's ``zero_params="bias"``: every rule treats the
        layers' biases (also those the canonizers create by merging batch norms) as zero, as the
        paper's reference code does; False keeps the biases in the rules' denominators.

    Returns
    -------
    (composite, name, canonizer_names)

    Raises
    ------
    ConfigError
        For an unknown name, or ``EpsilonGammaBox`` without ``bounds``.
    """
    import zennit.composites
    from zennit.core import Composite

    if isinstance(composite, Composite):
        return composite, type(composite).__name__, [type(c).__name__ for c in composite.canonizers or []]
    if not isinstance(composite, str):
        raise ConfigError(f"composite must be a name or a zennit Composite, got {type(composite).__name__}")
    name = resolve_composite_name(composite)
    canonizers = canonizers_for(module)
    cls = getattr(zennit.composites, name)
    zero_params = "bias" if zero_bias else None
    if name in NEEDS_BOUNDS:
        if bounds is None:
            raise ConfigError(
                f"composite {name} needs the input range: pass bounds=(low, high), the lowest and highest "
                "value of a (normalised) input"
            )
        low, high = bounds
        built = cls(low=low, high=high, zero_params=zero_params, canonizers=canonizers)
    else:
        built = cls(zero_params=zero_params, canonizers=canonizers)
    return built, name, [type(c).__name__ for c in canonizers]


def propagate(module: nn.Module, inputs: Tensor, relevance: Tensor, composite: Composite) -> Tensor:
    """LRP: ``relevance`` given at the output of ``module`` run on ``inputs``, propagated to ``inputs``.

    Parameters
    ----------
    module:
        Any module (e.g. ``model.features``); evaluated in eval mode (its mode is restored after).
    inputs:
        ``(n, *input_shape)``.
    relevance:
        ``(n, *output_shape)`` (or flattened ``(n, prod(output_shape))``): the output relevance.
    composite:
        A zennit composite, not registered anywhere yet.

    Returns
    -------
    Tensor
        ``(n, *input_shape)`` input relevance, in the module's dtype, on its device.
    """
    import torch

    device, dtype = _device_dtype(module)
    was_training = module.training
    module.eval()
    try:
        x = inputs.detach().to(device=device, dtype=dtype).clone().requires_grad_(True)
        with torch.enable_grad(), composite.context(module) as hooked:
            out = hooked(x)
            if relevance.numel() != out.numel():
                raise DataError(
                    f"relevance of shape {tuple(relevance.shape)} does not fit the module's output "
                    f"{tuple(out.shape)}"
                )
            grad_out = relevance.detach().to(device=device, dtype=out.dtype).reshape(out.shape)
            (result,) = torch.autograd.grad(out, x, grad_outputs=grad_out)
    finally:
        module.train(was_training)
    return result.detach()


def lrp_heatmap(
    model: nn.Module,
    x: Tensor,
    target: int,
    composite: str | Composite = DEFAULT_COMPOSITE,
    *,
    bounds: tuple[float | Tensor, float | Tensor] | None = None,
    zero_bias: bool = True,
) -> tuple[Tensor, float]:
    """Plain LRP of the logit ``f_target(x)`` through the whole model.

    Parameters
    ----------
    x:
        ``(1, *input_shape)``.
    composite, bounds, zero_bias:
        See :func:`make_composite`.

    Returns
    -------
    (heatmap, logit):
        ``(*input_shape)`` float32 CPU relevance (it sums to about the logit) and the logit.
    """
    import torch

    built, _, _ = make_composite(composite, model, bounds=bounds, zero_bias=zero_bias)
    device, dtype = _device_dtype(model)
    with torch.no_grad():
        logits = model(x.to(device=device, dtype=dtype))
    start = torch.zeros_like(logits)
    start[0, target] = logits[0, target]
    heat = propagate(model, x, start, built)
    return heat[0].float().cpu(), float(logits[0, target])


# =============================================================================================
# XDA
# =============================================================================================
def require_feature_decomposition(method: Method) -> None:
    """Raise :class:`CapabilityError` unless ``method`` declares ``"feature_decomposition"``."""
    if FEATURE_DECOMPOSITION not in method.supports:
        raise CapabilityError(
            f"method {method.name or type(method).__name__!r} does not declare {FEATURE_DECOMPOSITION!r}: "
            "XDA needs attributions that decompose over penultimate features (e.g. dualda, representer)"
        )


def explain_pairs(
    model: nn.Module,
    method: Method,
    x: Tensor,
    train_x: Tensor,
    train_indices: Sequence[int] | Tensor,
    *,
    target: int | None = None,
    composite: str | Composite = DEFAULT_COMPOSITE,
    bounds: tuple[float | Tensor, float | Tensor] | None = None,
    zero_bias: bool = True,
    train_labels: Tensor | None = None,
) -> list[PairExplanation]:
    """XDA heatmaps of chosen training points for one test input.

    Parameters
    ----------
    model:
        The model the method was fitted on (with a ``features``/``classifier`` split).
    method:
        A fitted method declaring ``"feature_decomposition"``.
    x:
        ``(1, *input_shape)``: the test input.
    train_x:
        ``(n_train, *input_shape)``: the training inputs the method was fitted on (same order).
    train_indices:
        Positions in ``train_x`` to explain.
    target:
        The class explained (default: the model's prediction for ``x``).
    composite, bounds, zero_bias:
        See :func:`make_composite`.
    train_labels:
        ``(n_train,)`` labels, copied into the results (optional).

    Returns
    -------
    list[PairExplanation]
        One per index, in the given order.

    Raises
    ------
    CapabilityError
        When the method does not declare ``"feature_decomposition"``.
    DataError
        For an index out of range, an ``x`` that is not one input, or terms that do not have the
        form ``alpha phi(x) phi(x_i)`` on ``train_x`` (``train_x`` is not the fitted data).
    """
    import torch

    require_feature_decomposition(method)
    features, _ = feature_split(model)
    device, dtype = _device_dtype(model)
    x = _one_input(x)
    index = torch.as_tensor(train_indices).detach().cpu().long().reshape(-1)
    n_train = int(train_x.shape[0])
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n_train):
        raise DataError(f"training indices must lie in 0..{n_train - 1}, got {index.tolist()}")
    if target is None:
        with torch.no_grad():
            target = int(model(x.to(device=device, dtype=dtype)).argmax(dim=1)[0])
    if index.numel() == 0:
        return []
    attributions = method.explain(x.to(device), torch.tensor([target], device=device))[0, index.to(device)]
    terms = method.feature_relevance(x.to(device), target, index).detach()
    if tuple(terms.shape[:1]) != (len(index),) or terms.dim() != 2:
        raise DataError(
            f"method {method.name!r}: feature_relevance returned shape {tuple(terms.shape)}, expected "
            f"({len(index)}, d)"
        )
    x_train = train_x[index].to(device=device, dtype=dtype)
    with torch.no_grad():
        phi_test = features(x.to(device=device, dtype=dtype)).flatten(start_dim=1).double()
        phi_train = features(x_train).flatten(start_dim=1).double()
    alphas = _check_form(terms.to(device).double(), phi_test, phi_train, method.name)

    built, name, _ = make_composite(composite, features, bounds=bounds, zero_bias=zero_bias)
    relevance = terms.to(device=device, dtype=dtype)
    train_heat = propagate(features, x_train, relevance, built)
    built, _, _ = make_composite(composite, features, bounds=bounds, zero_bias=zero_bias)
    test_heat = propagate(features, x.expand(len(index), *x.shape[1:]), relevance, built)
    log.info("xda: %d pairs propagated with %s", len(index), name)
    return [
        PairExplanation(
            train_index=int(i),
            attribution=float(attributions[j]),
            alpha=float(alphas[j]),
            feature_relevance=terms[j].double().cpu(),
            train_heatmap=train_heat[j].float().cpu(),
            test_heatmap=test_heat[j].float().cpu(),
            train_label=None if train_labels is None else int(train_labels[i]),
        )
        for j, i in enumerate(index.tolist())
    ]


def xda_for_test_point(
    model: nn.Module,
    method: Method,
    x: Tensor,
    train_x: Tensor,
    *,
    top: int = 3,
    composite: str | Composite = DEFAULT_COMPOSITE,
    bounds: tuple[float | Tensor, float | Tensor] | None = None,
    zero_bias: bool = True,
    region: Tensor | None = None,
    train_labels: Tensor | None = None,
) -> XDAResult:
    """The test point's prediction and heatmap, its ``top`` proponents and opponents with XDA heatmaps.

    Parameters
    ----------
    model, method, x, train_x, composite, bounds, zero_bias, train_labels:
        As in :func:`explain_pairs`; the class explained is the model's prediction.
    top:
        Proponents (largest ``a_i > 0``) and opponents (most negative ``a_i < 0``) shown each; fewer
        when fewer training points have an attribution of that sign.
    region:
        ``(*spatial)`` bool, optional: a region (e.g. the watermark) whose share of the relevance
        :meth:`XDAResult.region_shares` reports.

    Returns
    -------
    XDAResult
    """
    import torch

    require_feature_decomposition(method)
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ConfigError(f"top must be a positive number of training points, got {top!r}")
    device, dtype = _device_dtype(model)
    x = _one_input(x)
    if region is not None:
        region = torch.as_tensor(region).cpu().to(torch.bool)
        if tuple(x.shape[x.dim() - region.dim() :]) != tuple(region.shape):
            raise DataError(
                f"region of shape {tuple(region.shape)} does not match the input's trailing dimensions "
                f"{tuple(x.shape[1:])}"
            )
    with torch.no_grad():
        prediction = int(model(x.to(device=device, dtype=dtype)).argmax(dim=1)[0])
    heatmap, logit = lrp_heatmap(model, x, prediction, composite, bounds=bounds, zero_bias=zero_bias)
    scores = method.explain(x.to(device), torch.tensor([prediction], device=device))[0].double().cpu()
    k = min(top, scores.numel())
    best = torch.topk(scores, k).indices
    worst = torch.topk(-scores, k).indices
    pro_index = best[scores[best] > 0]
    opp_index = worst[scores[worst] < 0]
    if len(pro_index) < top or len(opp_index) < top:
        log.info(
            "xda: %d proponents and %d opponents have a non-zero attribution (asked for %d each)",
            len(pro_index),
            len(opp_index),
            top,
        )
    pairs = explain_pairs(
        model,
        method,
        x,
        train_x,
        torch.cat([pro_index, opp_index]),
        target=prediction,
        composite=composite,
        bounds=bounds,
        zero_bias=zero_bias,
        train_labels=train_labels,
    )
    _, name, canonizer_names = make_composite(composite, feature_split(model)[0], bounds=bounds)
    return XDAResult(
        test_input=x[0].detach().float().cpu(),
        prediction=prediction,
        logit=logit,
        test_heatmap=heatmap,
        proponents=pairs[: len(pro_index)],
        opponents=pairs[len(pro_index) :],
        train_inputs=train_x[torch.cat([pro_index, opp_index])].detach().float().cpu(),
        composite=name,
        canonizers=canonizer_names,
        biases_zeroed=None if _is_composite(composite) else bool(zero_bias),
        region=region,
    )


def watermark_region(marked: Tensor, unmarked: Tensor) -> Tensor:
    """The pixels a watermark occupies, read off the data: ``(*spatial)`` bool.

    A pixel belongs to the watermark when every marked image has the same value there (in every
    channel) and fewer than half of the unmarked images have that value. (The second condition
    drops background pixels that happen to be constant in the marked images, such as the empty
    margins of MNIST digits.) The harness finds the mark variant's region this way without
    importing the task that drew it.

    Parameters
    ----------
    marked:
        ``(n, C, *spatial)`` images known to carry the watermark (n >= 2).
    unmarked:
        ``(m, C, *spatial)`` images known not to carry it (m >= 1).
    """
    if marked.shape[0] < 2 or unmarked.shape[0] < 1:
        raise DataError("finding the watermark needs at least two marked images and one unmarked image")
    first = marked[:1]
    same_marked = (marked == first).all(dim=1).all(dim=0)
    share_unmarked = (unmarked == first).all(dim=1).double().mean(dim=0)
    return same_marked & (share_unmarked < 0.5)


# ----- helpers -------------------------------------------------------------------------------
def _is_composite(composite: object) -> bool:
    from zennit.core import Composite

    return isinstance(composite, Composite)


def _one_input(x: Tensor) -> Tensor:
    if x.dim() < 2 or x.shape[0] != 1:
        raise DataError(f"XDA explains one test input of shape (1, *input_shape), got {tuple(x.shape)}")
    return x.detach()


def _device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    import torch

    first = next(module.parameters(), None)
    if first is None:
        return torch.device("cpu"), torch.float32
    return first.device, first.dtype


def _check_form(terms: Tensor, phi_test: Tensor, phi_train: Tensor, name: str) -> Tensor:
    """``alpha`` per row from ``terms = alpha phi(x) phi(x_i)``; DataError when the form does not hold."""
    products = phi_test * phi_train  # (m, d)
    norms = (products * products).sum(dim=1)
    alphas = (terms * products).sum(dim=1) / norms.clamp(min=1e-300)
    residual = (terms - alphas[:, None] * products).norm(dim=1)
    scale = terms.norm(dim=1).clamp(min=1e-30)
    bad = residual > _FORM_TOLERANCE * scale
    if bool(bad.any()):
        raise DataError(
            f"method {name!r}: feature_relevance is not alpha phi(x) phi(x_i) on the given training "
            f"inputs ({int(bad.sum())} of {len(bad)} rows); pass the training split the method was "
            "fitted on, in the same order"
        )
    return alphas.cpu()

"""LRP with zennit: composites by name, the canonizers a model needs, and the propagation step.

zennit's convention (checked in ``tests/test_xda.py`` against LRP-0 / epsilon written out by hand):
under a composite, what flows backward through a hooked module is relevance itself. A rule maps the
relevance of a layer's outputs to that of its inputs, e.g. epsilon
``R_j = x_j sum_k w_kj R_k / (z_k + eps sign z_k)``, so the ``grad_outputs`` handed to autograd at a
module's output IS the output relevance ``R``: :func:`propagate` takes relevance at the output of
any module and returns the relevance of its input.

Composites (by zennit's class name or its registered snake_case name): ``EpsilonPlusFlat``
(the default, as in the paper), ``EpsilonPlus``, ``EpsilonAlpha2Beta1Flat``, ``EpsilonAlpha2Beta1``,
``EpsilonGammaBox`` (needs ``bounds``: the lowest and highest value an input can take, i.e. the
normalised image range; :func:`input_range`). zennit's other composites (DeconvNet, GuidedBackprop,
ExcitationBackprop, BetaSmooth) are modified gradients, not relevance propagation, and are not
offered. Any :class:`zennit.core.Composite` instance may be passed instead of a name.

Biases: a named composite is built with zennit's ``zero_params="bias"`` (``zero_bias=True``, the
default), as the paper's reference code builds every composite it names: the rules then treat every
bias as zero, including the ones the canonizers create by merging batch norms, and the input
relevance sums to the output relevance up to float32 rounding. With ``zero_bias=False`` the rules
hand each bias its share, which is lost on the way down.

Canonizers: a module containing torchvision ResNet blocks gets
:class:`zennit.torchvision.ResNetCanonizer` (batch norms merged into the preceding convolutions,
residual additions made explicit); any other module with batch norms gets
:class:`zennit.canonizers.SequentialMergeBatchNorm`; BasicConv and the toy MLP need none. The check
looks at module types (torchvision's classes), so no task module is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.config import ConfigError
from harness.protocols import DataError, Inputs

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn
    from zennit.core import Composite

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
#: Bound on ``|input relevance sum - a_i| / |a_i|`` per composite, biases zeroed (the default), asserted
#: by the tests: the measured maximum plus a margin (README, "XDA: why a training point matters").
INPUT_CONSERVATION_TOLERANCE: dict[str, float] = {
    "EpsilonPlusFlat": 2e-5,
    "EpsilonPlus": 2e-5,
    "EpsilonAlpha2Beta1Flat": 2e-5,
    "EpsilonAlpha2Beta1": 0.03,
    "EpsilonGammaBox": 2e-5,
}
#: The same with the biases kept (``zero_bias=False``): they take their share of the relevance
#: (measured maxima in the README, "XDA: why a training point matters").
INPUT_CONSERVATION_TOLERANCE_BIASES_KEPT: dict[str, float] = {
    "EpsilonPlusFlat": 0.11,
    "EpsilonPlus": 0.21,
    "EpsilonAlpha2Beta1Flat": 0.24,
    "EpsilonAlpha2Beta1": 0.1,
    "EpsilonGammaBox": 0.065,
}


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


def is_composite(composite: object) -> bool:
    """Whether ``composite`` is a zennit composite instance (rather than a name)."""
    from zennit.core import Composite

    return isinstance(composite, Composite)


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
        against a batch of inputs (e.g. ``(1, C, 1, 1)`` per channel, :func:`input_range`), for the
        ZBox rule of ``EpsilonGammaBox`` (ignored by the other composites).
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


def input_range(x: Tensor | Inputs, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """Per-channel lowest and highest value of inputs ``x`` ``(n, C, *spatial)``: ``bounds`` for ZBox.

    ``x`` is a tensor or a split's :class:`~harness.protocols.Inputs`, read ``batch_size`` rows at a
    time (a split's inputs are never materialised whole).

    Returns
    -------
    (low, high)
        Each ``(1, C, 1, ...)``, broadcasting against a batch of inputs.
    """
    import torch

    if len(x) == 0:
        raise DataError("the input range of no inputs is undefined")
    lows, highs = [], []
    for start in range(0, len(x), batch_size):
        part = x[start : start + batch_size]
        reduce = [0, *range(2, part.dim())]
        lows.append(part.amin(dim=reduce, keepdim=True))
        highs.append(part.amax(dim=reduce, keepdim=True))
    return torch.cat(lows).amin(dim=0, keepdim=True), torch.cat(highs).amax(dim=0, keepdim=True)


def module_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of ``module``'s first parameter (CPU float32 for a module without any)."""
    import torch

    first = next(module.parameters(), None)
    if first is None:
        return torch.device("cpu"), torch.float32
    return first.device, first.dtype


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

    device, dtype = module_device_dtype(module)
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
    device, dtype = module_device_dtype(model)
    with torch.no_grad():
        logits = model(x.to(device=device, dtype=dtype))
    start = torch.zeros_like(logits)
    start[0, target] = logits[0, target]
    heat = propagate(model, x, start, built)
    return heat[0].float().cpu(), float(logits[0, target])

"""XDA pairs: a method's feature terms of (test point, training point) propagated into both images.

A method that declares ``"feature_decomposition"`` gives, per training point ``i``, the terms
``R_k = alpha_i^c phi_k(x) phi_k(x_i)`` (:meth:`harness.protocols.Method.feature_relevance`), which
sum to ``a_i``. They are the relevance at the output of ``model.features``; :func:`xda.lrp.propagate`
carries them into the training image (forward pass on ``x_i``) and into the test image (forward pass
on ``x``). :func:`explain_pairs` does this for chosen training points; :func:`xda_for_test_point`
chooses the strongest proponents and opponents and adds the test point's own LRP heatmap.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from harness.config import ConfigError
from harness.protocols import CapabilityError, DataError, Inputs, Method, feature_split
from xda.lrp import (
    DEFAULT_COMPOSITE,
    is_composite,
    lrp_heatmap,
    make_composite,
    module_device_dtype,
    propagate,
)
from xda.results import XDAPair, XDAResult

if TYPE_CHECKING:
    from torch import Tensor, nn
    from zennit.core import Composite

log = logging.getLogger(__name__)

#: The capability a method declares when its attributions decompose over penultimate features.
FEATURE_DECOMPOSITION = "feature_decomposition"
#: A method's terms must match ``alpha phi(x) phi(x_i)`` to this relative error (checks ``train_x``).
_FORM_TOLERANCE = 1e-2


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
    train_x: Tensor | Inputs,
    train_indices: Sequence[int] | Tensor,
    *,
    target: int | None = None,
    composite: str | Composite = DEFAULT_COMPOSITE,
    bounds: tuple[float | Tensor, float | Tensor] | None = None,
    zero_bias: bool = True,
    train_labels: Tensor | None = None,
) -> list[XDAPair]:
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
        ``(n_train, *input_shape)``: the training inputs the method was fitted on (same order); a
        tensor or the training split's :class:`~harness.protocols.Inputs` (only the rows explained
        are read).
    train_indices:
        Positions in ``train_x`` to explain.
    target:
        The class explained (default: the model's prediction for ``x``).
    composite, bounds, zero_bias:
        See :func:`xda.lrp.make_composite`.
    train_labels:
        ``(n_train,)`` labels, copied into the results (optional).

    Returns
    -------
    list[XDAPair]
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
    device, dtype = module_device_dtype(model)
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
        XDAPair(
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
    train_x: Tensor | Inputs,
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
    device, dtype = module_device_dtype(model)
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
        biases_zeroed=None if is_composite(composite) else bool(zero_bias),
        region=region,
    )


def _one_input(x: Tensor) -> Tensor:
    if x.dim() < 2 or x.shape[0] != 1:
        raise DataError(f"XDA explains one test input of shape (1, *input_shape), got {tuple(x.shape)}")
    return x.detach()


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

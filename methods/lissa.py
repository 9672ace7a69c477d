"""LiSSA influence functions on the last layer (Koh & Liang 2017; Agarwal, Bullins & Hazan 2017).

Papers: Koh, Liang, "Understanding Black-box Predictions via Influence Functions" (ICML 2017);
Agarwal, Bullins, Hazan, "Second-Order Stochastic Optimization for Machine Learning in Linear Time"
(JMLR 2017). Settings from the DualXDA paper (../shared/reference/dualxda-paper.md): last layer only
(classifier weight and bias), depth 6000/5000/3700 (MNIST/CIFAR-10/AwA2), 10 repeats, scale 10,
damping 1e-3, Hessian-vector-product (HVP) batches of 32 sampled with replacement, cross-entropy
w.r.t. the predicted label, no cache of the inverse-HVPs.

Notation, paper -> code:

- ``theta``: the classifier's parameters (weight and bias), flattened -> ``theta`` ``(P,)``;
- ``phi(x)``: penultimate features ``model.features(x)``; the feature extractor is frozen, so it runs
  ONCE over the training set in :meth:`LiSSA.fit` and every HVP and gradient is computed on the
  classifier alone from ``phi`` -> ``phi_`` ``(N, d)``;
- ``g(x, c) = grad_theta CE(classifier(phi(x)), c)`` -> rows of ``train_grads_`` ``(N, P)`` for
  ``(x_i, y_i)`` (the TRAINING labels) and of the test gradients for ``(x, c)``, c the target;
- ``H``: the Hessian of the mean training cross-entropy over ``theta``; ``H_b`` its estimate on a
  batch of ``hvp_batch_size`` points drawn with replacement;
- the recursion (per test vector, all test vectors of a call run together with the same batches):
  ``v_0 = g``, ``v_{t+1} = g + (1 - damping) v_t - H_{b_t} v_t / scale``; ``v_T / scale`` estimates
  ``(H + scale * damping I)^{-1} g`` (the fixed point), averaged over ``repeats`` independent runs.
  So the damping on ``H`` is ``scale * damping`` (:attr:`LiSSAConfig.effective_damping`; 1e-2 with
  the paper's settings). The recursion converges when every eigenvalue of ``H_b / scale + damping``
  lies in (0, 2);
- attribution ``a_i(x) = g(x, c)^T (H + scale * damping I)^{-1} g(x_i, y_i) / N``: positive for
  proponents (up-weighting training point i lowers the test loss), the project's convention.

Cost. ``fit`` = one forward pass of the feature extractor over the training set (cached by content
hash) plus per-sample last-layer gradients from the features. ``explain`` = ``repeats * depth``
HVPs on the classifier per call (vectorised over the call's test points), like the paper: nothing
per test point is cached. A private reference path (:meth:`LiSSA._explain_recomputing_features`)
recomputes the features through the full model for every HVP batch, as a naive implementation
would; it gives the same outputs (tests) at a much higher cost (tests/benchmarks/test_lissa_bench.py).
When the classifier is a plain ``nn.Linear`` (every task here), each HVP uses the closed form of the
cross-entropy Hessian of a linear head (two batched products for all vectors of a call) instead of
one vmapped autograd graph per vector; the autograd path stays as the general case and the tests
check that both give the same numbers.

Self-influence ``g_i^T (H + scale * damping I)^{-1} g_i / N`` (the training point's own influence on
its training-label loss) is one LiSSA recursion per training point, run on all of them together in
chunks of ``self_influence_chunk`` rows with the batches of an explain call: it costs as much as
explaining the whole training set (at the paper's MNIST settings 60,000 points x 60,000 HVP steps), and
each value equals the diagonal entry of ``explain(train.materialise(), train.y)`` (tests).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from harness.cache import Artefact
from harness.config import Config, ConfigError, option, require_positive_int
from harness.protocols import DataError, Inputs, Method, Split, feature_split

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import Tensor, nn

log = logging.getLogger(__name__)

#: The paper's LiSSA depth per dataset.
PAPER_DEPTH = {"mnist": 6000, "cifar10": 5000, "awa2": 3700}


@dataclass(frozen=True, kw_only=True)
class LiSSAConfig(Config):
    """Configuration of :class:`LiSSA`; :meth:`paper` holds the DualXDA paper's MNIST settings."""

    depth: int = option(6000, "recursion steps per repeat (paper: 6000 MNIST, 5000 CIFAR-10, 3700 AwA2)")
    repeats: int = option(10, "independent recursions averaged (paper: 10)")
    scale: float = option(10.0, "LiSSA scale: H is divided by it; must exceed the batch Hessian's norm / 2")
    damping: float = option(1e-3, "LiSSA damping (paper: 1e-3); the damping on H is scale * damping")
    hvp_batch_size: int = option(32, "training points per HVP, drawn with replacement (paper: 32)")
    seed: int = option(0, "seeds the HVP batches (a torch.Generator; the global RNG is not touched)")
    batch_size: int = option(512, "points per forward pass when computing features and gradients")
    self_influence_chunk: int = option(
        4096, "training points whose self-influence recursions run together (bounds memory, not values)"
    )
    explain_batch: int = option(
        5,
        "test points per explain() call (paper: 5); each call runs the whole recursion once for its batch, "
        "so the batch is part of the measured cost (outputs do not depend on it)",
    )

    def __post_init__(self) -> None:
        require_positive_int(self.explain_batch, "explain_batch")
        require_positive_int(self.depth, "depth")
        require_positive_int(self.repeats, "repeats")
        require_positive_int(self.hvp_batch_size, "hvp_batch_size")
        require_positive_int(self.batch_size, "batch_size")
        require_positive_int(self.self_influence_chunk, "self_influence_chunk")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        if isinstance(self.scale, bool) or not (
            isinstance(self.scale, int | float) and math.isfinite(self.scale) and self.scale > 0
        ):
            raise ConfigError(f"scale must be a finite number > 0 (paper: 10), got {self.scale!r}")
        if isinstance(self.damping, bool) or not (
            isinstance(self.damping, int | float) and math.isfinite(self.damping) and 0 <= self.damping < 1
        ):
            raise ConfigError(f"damping must be a number in [0, 1) (paper: 1e-3), got {self.damping!r}")

    @property
    def effective_damping(self) -> float:
        """The damping on H at the recursion's fixed point: ``scale * damping``."""
        return float(self.scale) * float(self.damping)

    @classmethod
    def paper(cls) -> LiSSAConfig:
        """The paper's MNIST settings: depth 6000, 10 repeats, scale 10, damping 1e-3, batch 32."""
        return cls()

    @classmethod
    def quick(cls) -> LiSSAConfig:
        """Depth 2000, 1 repeat, scale 100 and damping 1e-4 (the paper's damping on H, 0.01, kept).

        The paper's 10 x 6,000 HVPs per call cost minutes per batch of test points on 2 CPU cores;
        2,000 steps of one repeat keep a call to seconds. The paper's scale 10 needs every batch
        Hessian's eigenvalues below 20; on BasicConv trained with our recipe the penultimate features
        are large (mean ``||phi||^2`` 1,500-2,200) and the largest eigenvalue of a 32-point batch
        Hessian measured 58 / 114 / 137 on 2,000 / 1,000 / 500 training points, so the recursion
        diverges at scale 10; scale 100 with damping 1e-4 keeps ``scale * damping = 0.01``. The
        recursion converges at rate ``1 - damping - lambda / scale`` per step, so small-curvature
        directions are under-weighted after 2,000 steps (ranks change less than values).
        """
        return cls(depth=2000, repeats=1, scale=100.0, damping=1e-4)

    @classmethod
    def smoke(cls) -> LiSSAConfig:
        """:meth:`quick` with depth 100 and 2 repeats: the toy task of ``dabench check`` in seconds.

        Even quick's 2,000 HVP steps per explain call add up to minutes over the check's calls and
        the self-influence recursions; 2 x 100 steps exercise the same code (both repeats' averaging
        included).
        """
        return replace(cls.quick(), depth=100, repeats=2)

    @classmethod
    def for_dataset(cls, dataset: str) -> dict[str, Any]:
        """The paper's depth where it is not :meth:`paper`'s (MNIST, 6000): 5000 on CIFAR-10, 3700 on AwA2."""
        depth = PAPER_DEPTH.get(dataset)
        return {"depth": depth} if depth is not None and depth != cls.paper().depth else {}


class LiSSA(Method):
    """LiSSA influence functions on the classifier's weight and bias (DualXDA paper's setting)."""

    Config = LiSSAConfig
    version = "1"
    supports = frozenset({"cache", "self_influence"})
    attributes_through = "last layer (classifier weight and bias)"
    self_influence_definition = (
        "g_i^T (H + scale*damping I)^{-1} g_i / N, g_i the last-layer gradient of the training label's "
        "loss (one LiSSA recursion per training point)"
    )

    #: The recursion's settings only change explain and self-influence, not the cached features.
    cache_ignores = frozenset(
        {
            "depth",
            "repeats",
            "scale",
            "damping",
            "hvp_batch_size",
            "seed",
            "self_influence_chunk",
            "explain_batch",
        }
    )

    config: LiSSAConfig

    def __init__(self, config: LiSSAConfig | None = None) -> None:
        super().__init__(config)
        self.phi_: Tensor | None = None  # (N, d) training features, model device and dtype
        self.labels_: Tensor | None = None  # (N,) long, model device
        self.train_grads_: Tensor | None = None  # (N, P) last-layer gradients g(x_i, y_i)
        self.theta_: Tensor | None = None  # (P,) the classifier's parameters, flattened
        self.num_classes_: int | None = None
        self._loss: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None
        self._train_x: Inputs | None = None  # kept for the reference path only
        self._last_relative_step: float | None = None

    # ----- lifecycle --------------------------------------------------------------------------
    def setup(self, model: nn.Module, train: Split) -> None:
        """Check model and data; keep the number of classes and the classifier's flat loss and ``theta``.

        Parameters
        ----------
        model:
            The trained model with a ``features``/``classifier`` split, on its device.
        train:
            ``x`` ``(N, *input_shape)``; ``y`` ``(N,)`` the labels the model was trained on.

        Raises
        ------
        CapabilityError
            When the model has no ``features``/``classifier`` split.
        DataError
            When the training set is empty, the classifier has no parameters or a training label
            is not one of the model's outputs.
        """
        features, classifier = feature_split(model)
        if len(train) == 0:
            raise DataError("LiSSA: the training set is empty")
        if next(classifier.parameters(), None) is None:
            raise DataError("LiSSA: the classifier has no parameters to compute influence over")
        assert self.device_ is not None
        k = _num_classes(classifier, lambda: self._features(features, train.inputs[:1], self.device_))
        labels = train.y.reshape(-1)
        if int(labels.max()) >= k or int(labels.min()) < 0:
            raise DataError(f"LiSSA: training labels must lie in 0..{k - 1} (the model's outputs)")
        self.num_classes_ = k
        self._loss, self.theta_ = _flat_loss(classifier)

    def compute(self, model: nn.Module, train: Split) -> Artefact:
        """The training features ``phi`` ``(N, d)`` and labels ``(N,)`` on the CPU.

        Cached under the method, version, ``batch_size`` (batched kernels may round differently),
        training data and model; the recursion's settings only change :meth:`explain` and are left
        out of the key.
        """
        assert self.device_ is not None
        features, _ = feature_split(model)
        return Artefact(
            tensors={
                "phi": self._features(features, train.inputs, self.device_).cpu(),
                "labels": train.y.detach().cpu().long(),
            },
            meta={"n_train": len(train)},
        )

    def load(self, artefact: Artefact, model: nn.Module, train: Split) -> None:
        """Keep the features and labels on the model's device; last-layer gradients ``(N, P)`` from them."""
        assert self.device_ is not None and self.theta_ is not None
        # clone: tensors read from the cache may sit at unaligned addresses, which changes BLAS rounding
        self.phi_ = artefact.tensors["phi"].to(self.device_).clone()
        self.labels_ = artefact.tensors["labels"].to(self.device_)
        self.train_grads_ = self._grads(self.phi_, self.labels_)
        self._train_x = train.inputs
        log.info(
            "lissa: %d training points, %d last-layer parameters, damping on H %g",
            len(train),
            self.theta_.numel(),
            self.config.effective_damping,
        )

    def _features(self, features: nn.Module, x: Tensor | Inputs, device: torch.device) -> Tensor:
        """``(n, d)`` penultimate features of ``x`` in batches, no grad, the model's mode untouched."""
        bs = self.config.batch_size
        with torch.no_grad():
            parts = [features(x[i : i + bs].to(device)).flatten(start_dim=1) for i in range(0, len(x), bs)]
        return torch.cat(parts)

    def _grads(self, phi: Tensor, labels: Tensor) -> Tensor:
        """``(n, P)`` per-sample gradients ``g(x, c)`` of CE over theta, from features ``phi`` ``(n, d)``."""
        assert self._loss is not None and self.theta_ is not None
        loss, theta = self._loss, self.theta_

        def single(p: Tensor, c: Tensor) -> Tensor:
            return torch.func.grad(loss)(theta, p[None], c[None])

        bs = self.config.batch_size
        parts = [torch.func.vmap(single)(phi[i : i + bs], labels[i : i + bs]) for i in range(0, len(phi), bs)]
        return torch.cat(parts) if parts else phi.new_zeros(0, theta.numel())

    # ----- explanations -----------------------------------------------------------------------
    def preferred_batch_size(self) -> int:
        """The paper's explain batch (5): one recursion of ``depth x repeats`` HVPs per call."""
        return self.config.explain_batch

    def explain(self, x: Tensor, targets: Tensor) -> Tensor:
        """``(n_test, N)`` float32 attributions ``g(x, c)^T (H + scale*damping I)^{-1} g_i / N``.

        Parameters
        ----------
        x:
            ``(n_test, *input_shape)`` test inputs.
        targets:
            ``(n_test,)`` target classes (the model's predicted classes in this benchmark).
        """
        return self._explain(x, targets, recompute_features=False)

    def self_influence(self) -> Tensor:
        """``(N,)`` float32 ``g_i^T (H + scale * damping I)^{-1} g_i / N`` per training point.

        The recursions of all training points run ``self_influence_chunk`` at a time through the
        same seeded batches as :meth:`explain`, so entry ``i`` equals the diagonal entry of
        ``explain(train.materialise(), train.y)``.
        """
        self._require_fitted()
        assert self.train_grads_ is not None
        grads = self.train_grads_
        chunk = self.config.self_influence_chunk
        parts = []
        for start in range(0, grads.shape[0], chunk):
            g = grads[start : start + chunk]
            parts.append((self._inverse_hvp(g) * g).sum(dim=1))
        return (torch.cat(parts) / grads.shape[0]).to(torch.float32)

    def _explain_recomputing_features(self, x: Tensor, targets: Tensor) -> Tensor:
        """Reference path: as :meth:`explain`, but every HVP batch runs through the full model."""
        return self._explain(x, targets, recompute_features=True)

    def _explain(self, x: Tensor, targets: Tensor, *, recompute_features: bool) -> Tensor:
        self._require_fitted()
        assert self.model_ is not None and self.device_ is not None and self.train_grads_ is not None
        assert self.num_classes_ is not None
        features, _ = feature_split(self.model_)
        targets = targets.to(self.device_).long().reshape(-1)
        if targets.shape[0] != x.shape[0]:
            raise DataError(f"LiSSA: {x.shape[0]} test points but {targets.shape[0]} targets")
        k = self.num_classes_
        if targets.numel() and (targets.min() < 0 or targets.max() >= k):
            raise DataError(f"LiSSA: targets must be classes in 0..{k - 1}, got {targets.unique().tolist()}")
        if x.shape[0] == 0:
            return torch.zeros(0, self.train_grads_.shape[0], device=self.device_)
        g_test = self._grads(self._features(features, x, self.device_), targets)  # (n_test, P)
        inverse = self._inverse_hvp(g_test, recompute_features=recompute_features)  # (n_test, P)
        scores = inverse @ self.train_grads_.T / self.train_grads_.shape[0]
        return scores.to(torch.float32)

    def _inverse_hvp(
        self, g: Tensor, *, recompute_features: bool = False, generic_hvp: bool = False
    ) -> Tensor:
        """LiSSA estimate of ``(H + scale * damping I)^{-1} g`` for each row of ``g`` ``(m, P)``.

        All rows run through the same batches (one generator seeded with ``config.seed`` per call),
        so a row's estimate depends on that row and the seed only, not on the other rows.
        """
        assert self.phi_ is not None and self.labels_ is not None and self._loss is not None
        assert self.model_ is not None and self._train_x is not None and self.theta_ is not None
        cfg = self.config
        loss, theta = self._loss, self.theta_
        features, _ = feature_split(self.model_)
        n = self.phi_.shape[0]
        generator = torch.Generator().manual_seed(cfg.seed)

        linear = None if generic_hvp else _linear_head(self.model_)

        def hvp(phi_b: Tensor, y_b: Tensor, v: Tensor) -> Tensor:  # (m, P) -> (m, P)
            if linear is not None:  # closed form of a Linear head: same numbers, no autograd
                return _linear_ce_hvp(phi_b, v, *linear)
            # reverse-over-reverse: H_b is symmetric, so the vjp of the gradient is H_b v. One
            # backward graph per batch, vmapped over the m vectors (2-3x less overhead than jvp).
            _, vjp = torch.func.vjp(torch.func.grad(lambda t: loss(t, phi_b, y_b)), theta)
            return torch.func.vmap(vjp)(v)[0]

        from tqdm.auto import tqdm

        total = torch.zeros_like(g)
        relative = float("nan")
        with tqdm(total=cfg.repeats * cfg.depth, desc="lissa", disable=None, leave=False) as bar:
            for r in range(cfg.repeats):
                batches = torch.randint(0, n, (cfg.depth, cfg.hvp_batch_size), generator=generator)
                batches = batches.to(self.phi_.device)
                v = g.clone()
                for t in range(cfg.depth):
                    idx = batches[t]
                    if recompute_features:
                        phi_b = self._features(features, self._train_x[idx.cpu()], self.phi_.device)
                    else:
                        phi_b = self.phi_[idx]
                    step = g + (1.0 - cfg.damping) * v - hvp(phi_b, self.labels_[idx], v) / cfg.scale
                    if t == cfg.depth - 1:
                        relative = float((step - v).norm() / step.norm().clamp_min(1e-300))
                    v = step
                    if (t + 1) % 500 == 0 or t == cfg.depth - 1:
                        bar.update(500 if (t + 1) % 500 == 0 else (t + 1) % 500)
                        if not torch.isfinite(v).all():
                            raise RuntimeError(
                                f"LiSSA diverged at repeat {r}, step {t + 1}: increase scale (now "
                                f"{cfg.scale:g}); every eigenvalue of the batch Hessian must lie below "
                                f"scale * (2 - damping)"
                            )
                total += v / cfg.scale
        self._last_relative_step = relative
        return total / cfg.repeats

    def diagnostics(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "effective_damping": self.config.effective_damping,
            "hvps_per_explain_call": self.config.depth * self.config.repeats,
        }
        if self.theta_ is not None:
            info["n_params"] = int(self.theta_.numel())
        if self._last_relative_step is not None:
            # ||v_T - v_{T-1}|| / ||v_T|| of the last call: near 0 when the recursion has settled
            info["last_relative_step"] = self._last_relative_step
        return info


def _linear_head(model: nn.Module) -> tuple[Tensor, Tensor] | None:
    """``(W, b)`` of the classifier when it is a plain ``nn.Linear`` with a bias, else None."""
    _, classifier = feature_split(model)
    if type(classifier) is torch.nn.Linear and classifier.bias is not None:
        return classifier.weight.detach(), classifier.bias.detach()
    return None


def _linear_ce_hvp(phi: Tensor, v: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``H_b v`` for the mean cross-entropy of a Linear head on the batch ``phi`` ``(B, d)``.

    ``v`` ``(m, P)`` holds m vectors in ``theta``'s layout (weight ``(k, d)`` row-major, then bias
    ``(k,)``). With ``z_i = W phi_i + b`` and ``S_i = diag(p_i) - p_i p_i^T`` (the Hessian of CE in
    the logits, independent of the label): ``dz_i = V_W phi_i + v_b``, ``H_b v = 1/B sum_i
    (S_i dz_i phi_i^T, S_i dz_i)``. Two batched products instead of one autograd graph per vector.
    """
    k, d = weight.shape
    p = torch.softmax(phi @ weight.T + bias, dim=1)  # (B, k)
    v_w, v_b = v[:, : k * d].reshape(-1, k, d), v[:, k * d :]
    dz = torch.einsum("mkd,bd->mbk", v_w, phi) + v_b[:, None, :]  # (m, B, k)
    s_dz = p * dz - p * (p * dz).sum(dim=2, keepdim=True)
    h_w = torch.einsum("mbk,bd->mkd", s_dz, phi) / phi.shape[0]
    return torch.cat([h_w.reshape(v.shape[0], -1), s_dz.mean(dim=1)], dim=1)


def _flat_loss(classifier: nn.Module) -> tuple[Callable[[Tensor, Tensor, Tensor], Tensor], Tensor]:
    """``(loss, theta)``: ``loss(theta, phi, y)`` = mean CE of ``classifier`` with flat parameters.

    ``theta`` ``(P,)`` concatenates the classifier's parameters in ``named_parameters`` order (for
    ``nn.Linear``: weight row-major, then bias), detached.
    """
    names, shapes, sizes = [], [], []
    flat = []
    for name, p in classifier.named_parameters():
        names.append(name)
        shapes.append(p.shape)
        sizes.append(p.numel())
        flat.append(p.detach().reshape(-1))
    theta = torch.cat(flat)

    def loss(t: Tensor, phi: Tensor, y: Tensor) -> Tensor:
        params = {n: c.view(s) for n, c, s in zip(names, torch.split(t, sizes), shapes, strict=True)}
        logits = torch.func.functional_call(classifier, params, (phi,))
        return torch.nn.functional.cross_entropy(logits, y)

    return loss, theta


def _num_classes(classifier: nn.Module, phi: Callable[[], Tensor]) -> int:
    """The classifier's ``out_features``, else the width of its output on ``phi()`` ``(1, d)``."""
    out = getattr(classifier, "out_features", None)
    if out is not None:
        return int(out)
    with torch.no_grad():
        return int(classifier(phi()).shape[-1])

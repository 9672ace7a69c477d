"""A tiny convex task with closed-form influence: the reference of the influence-method tests.

Model: multinomial logistic regression on fixed features, written as a harness model
(``features = nn.Identity()``, ``classifier = nn.Linear(dim, k)``), in float64, trained to the
optimum of ``mean_i CE(f(x_i), y_i) + l2/2 ||theta||^2`` (theta = weight and bias) by full-batch
Newton's method. With ``H = hessian of mean_i CE(f(x_i), y_i)`` over theta and ``g(x, c) = grad_theta
CE(f(x), c)``, the exact influence of up-weighting training point i by 1/N on the test loss at
the target class c is (Koh & Liang 2017)

    I(x, i) = - g(x, c)^T (H + damping I)^{-1} g(x_i, y_i) / N .

Attributions in this project are positive for proponents (points whose up-weighting lowers the
test loss), so the reference attribution is ``-I = g(x, c)^T (H + damping I)^{-1} g(x_i, y_i) / N``
(:func:`exact_attributions`). With ``damping = l2`` it is the Hessian of the training objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.protocols import Split


class ConvexModel(nn.Module):
    """Logistic regression with the harness' ``features``/``classifier`` split (no feature params)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass
class ConvexProblem:
    model: ConvexModel
    train: Split
    test: Split
    l2: float
    num_classes: int


def convex_problem(
    n_train: int = 80,
    n_test: int = 12,
    dim: int = 5,
    num_classes: int = 3,
    seed: int = 0,
    l2: float = 1e-2,
) -> ConvexProblem:
    """Overlapping Gaussian classes, a float64 model trained to the regularised optimum."""
    gen = torch.Generator().manual_seed(seed)
    centers = 1.5 * torch.randn(num_classes, dim, generator=gen, dtype=torch.float64)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % num_classes
        x = centers[y] + torch.randn(n, dim, generator=gen, dtype=torch.float64)
        return x, y

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    torch.manual_seed(seed)
    model = ConvexModel(dim, num_classes).double()
    fit_newton(model, x_train, y_train, l2)
    model.eval()
    return ConvexProblem(
        model=model,
        train=Split("train", x_train, y_train),
        test=Split("test", x_test, y_test),
        l2=l2,
        num_classes=num_classes,
    )


def fit_newton(model: ConvexModel, x: torch.Tensor, y: torch.Tensor, l2: float, steps: int = 50) -> None:
    """Minimise mean CE + l2/2 ||theta||^2 by Newton's method (exact Hessian; converges to ~1e-15)."""
    loss = _flat_loss_fn(model)
    theta = theta_of(model)

    def total(t: torch.Tensor) -> torch.Tensor:
        return loss(t, x, y) + 0.5 * l2 * (t**2).sum()

    for _ in range(steps):
        grad = torch.autograd.functional.jacobian(total, theta)
        if grad.abs().max() < 1e-13:
            break
        hessian = torch.autograd.functional.hessian(total, theta)
        theta = theta - torch.linalg.solve(hessian, grad)
    n_w = model.classifier.weight.numel()
    with torch.no_grad():
        model.classifier.weight.copy_(theta[:n_w].reshape(model.classifier.weight.shape))
        model.classifier.bias.copy_(theta[n_w:])


def objective(model: ConvexModel, x: torch.Tensor, y: torch.Tensor, l2: float) -> torch.Tensor:
    """mean CE + l2/2 ||theta||^2."""
    loss = nn.functional.cross_entropy(model(x), y)
    return loss + 0.5 * l2 * sum((p**2).sum() for p in model.parameters())


def _flat_loss_fn(model: ConvexModel):
    """``loss(theta_flat, x, y)``: mean CE with theta = [weight.flatten(), bias]."""
    w_shape = model.classifier.weight.shape
    n_w = w_shape.numel()

    def loss(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        weight, bias = theta[:n_w].reshape(w_shape), theta[n_w:]
        return nn.functional.cross_entropy(x @ weight.T + bias, y)

    return loss


def theta_of(model: ConvexModel) -> torch.Tensor:
    return torch.cat([model.classifier.weight.detach().flatten(), model.classifier.bias.detach()])


def per_sample_grads(model: ConvexModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(n, n_params)`` gradients of CE(f(x_i), y_i) over theta = [weight.flatten(), bias]."""
    loss = _flat_loss_fn(model)
    theta = theta_of(model)
    rows = []
    for i in range(len(y)):
        xi, yi = x[i : i + 1], y[i : i + 1]
        rows.append(torch.autograd.functional.jacobian(lambda t, xi=xi, yi=yi: loss(t, xi, yi), theta))
    return torch.stack(rows)


def training_hessian(model: ConvexModel, train: Split) -> torch.Tensor:
    """``(n_params, n_params)`` Hessian of the mean training CE over theta (no regulariser)."""
    loss = _flat_loss_fn(model)
    return torch.autograd.functional.hessian(lambda t: loss(t, train.materialise(), train.y), theta_of(model))


def exact_attributions(
    problem: ConvexProblem, x: torch.Tensor, targets: torch.Tensor, damping: float | None = None
) -> torch.Tensor:
    """``(n_test, n_train)`` float64: ``g(x, c)^T (H + damping I)^{-1} g(x_i, y_i) / N``."""
    damping = problem.l2 if damping is None else damping
    model, train = problem.model, problem.train
    hessian = training_hessian(model, train)
    hessian = hessian + damping * torch.eye(hessian.shape[0], dtype=hessian.dtype)
    g_test = per_sample_grads(model, x, targets)
    g_train = per_sample_grads(model, train.materialise(), train.y)
    return g_test @ torch.linalg.solve(hessian, g_train.T) / len(train)

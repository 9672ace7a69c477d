"""The closed-form influence reference is itself checked: optimality and leave-one-out retrains."""

from __future__ import annotations

import torch
from convex_reference import convex_problem, exact_attributions, fit_newton, objective

N_TRAIN = 60


def test_trained_to_the_regularised_optimum() -> None:
    problem = convex_problem()
    loss = objective(problem.model, problem.train.materialise(), problem.train.y, problem.l2)
    grads = torch.autograd.grad(loss, list(problem.model.parameters()))
    assert max(g.abs().max() for g in grads) < 1e-12


def test_influence_predicts_the_effect_of_removing_a_point() -> None:
    """Removing point i is up-weighting it by -1/N: the test loss changes by about +attribution."""
    problem = convex_problem(n_train=N_TRAIN, n_test=4, seed=1)
    with torch.no_grad():
        targets = problem.model(problem.test.materialise()).argmax(dim=1)
    attributions = exact_attributions(problem, problem.test.materialise(), targets)  # (4, N)

    def test_losses(model) -> torch.Tensor:
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(
                model(problem.test.materialise()), targets, reduction="none"
            )

    base = test_losses(problem.model)
    removed = list(range(0, N_TRAIN, 4))
    changes = []
    for i in removed:
        keep = torch.arange(N_TRAIN) != i
        model = convex_problem(n_train=N_TRAIN, n_test=4, seed=1).model
        # mean over N-1 points with the regulariser rescaled: the same objective as N times the
        # original one minus point i's loss, divided by N-1
        fit_newton(
            model, problem.train.inputs[keep], problem.train.y[keep], problem.l2 * N_TRAIN / (N_TRAIN - 1)
        )
        changes.append(test_losses(model) - base)
    actual = torch.stack(changes, dim=1)  # (4, len(removed))
    predicted = attributions[:, removed]
    for row_actual, row_predicted in zip(actual, predicted, strict=True):
        corr = torch.corrcoef(torch.stack([row_actual, row_predicted]))[0, 1]
        assert corr > 0.97, (corr, row_actual, row_predicted)

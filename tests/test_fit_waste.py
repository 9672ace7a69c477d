"""Waste removed from the fits and explanations leaves every output unchanged.

Each test compares the streamlined code path with a straightforward one written here (traker's own
``BasicProjector``, an explicit per-sample gradient loop, a dense projection matrix) on the toy
model. Where the order of the floating-point operations is unchanged the comparison is bitwise
(``torch.equal``); tolerances are stated where it is not.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.cache import Cache


@pytest.fixture(scope="module")
def toy(toy_setup):
    """(model, train, x, targets): the toy model, its training split, 12 test points, predictions."""
    _, data, model = toy_setup
    x = data.test.inputs[:12]
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    return model, data.train, x, targets


# ----- TRAK: projection blocks drawn once, not per batch ---------------------------------------
@pytest.mark.parametrize("keep_mb", [0.0, 25.0, 1024.0])  # none kept, 1 of 3 kept (20 MiB each), all kept
def test_trak_kept_blocks_project_bitwise_as_traker(monkeypatch, keep_mb: float) -> None:
    """Several batches of varying size through both projectors: identical sketches, bit for bit."""
    from trak.projectors import BasicProjector, ProjectionType

    import methods.trak as trak_module

    grad_dim, proj_dim = 53_000, 250  # 3 blocks of 100 columns, the last one used for 50
    monkeypatch.setattr(trak_module, "KEEP_BLOCKS_MB", keep_mb)
    args = {"grad_dim": grad_dim, "proj_dim": proj_dim, "seed": 3, "proj_type": ProjectionType.normal}
    plain = BasicProjector(**args, device="cpu")
    kept = trak_module._kept_blocks_projector()(**args, device="cpu")
    expected_kept = {0.0: 0, 25.0: 1, 1024.0: 3}[keep_mb]
    assert kept.keep_blocks == expected_kept
    gen = torch.Generator().manual_seed(0)
    for n in (7, 16, 3):
        grads = {"w": torch.randn(n, grad_dim - 10, generator=gen), "b": torch.randn(n, 10, generator=gen)}
        flat = torch.cat([grads["w"], grads["b"]], dim=1)
        expected = plain.project(flat.clone(), model_id=0)
        assert torch.equal(kept.project(grads, model_id=0), expected)
        assert torch.equal(kept.project(flat.clone(), model_id=0), expected)
    assert len(kept._kept) == expected_kept


def test_trak_scores_bitwise_as_with_traker_projector(toy, tmp_path: Path, monkeypatch) -> None:
    """TRAK fitted and explained with the kept-block projector equals the run with traker's plain one."""
    from trak.projectors import BasicProjector, ProjectionType

    import methods.trak as trak_module
    from methods.trak import TRAK, TRAKConfig

    model, train, x, targets = toy
    cfg = TRAKConfig(proj_dim=250, lambda_reg=1e-2, batch_size=16)
    new = TRAK(cfg)
    new.fit(model, train, cache=Cache(tmp_path / "new"))
    new_scores, new_self = new.explain(x, targets), new.self_influence()
    new_scores_again = new.explain(x, targets)  # second call: blocks come from memory

    def plain_projector(model, cfg, device):
        return BasicProjector(
            grad_dim=sum(p.numel() for p in model.parameters()),
            proj_dim=cfg.proj_dim,
            seed=cfg.seed,
            proj_type=ProjectionType(cfg.projection),
            device=str(device),
            dtype=torch.float32,
        )

    monkeypatch.setattr(trak_module, "_projector", plain_projector)
    old = TRAK(cfg)
    old.fit(model, train, cache=Cache(tmp_path / "old"))
    assert torch.equal(new.features_, old.features_)
    assert torch.equal(new_scores, old.explain(x, targets))
    assert torch.equal(new_scores_again, new_scores)
    assert torch.equal(new_self, old.self_influence())


# ----- per-sample gradients: one flat buffer for all batches -----------------------------------
def _params(model):
    from methods._gradients import model_state

    return model_state(model)


@pytest.mark.parametrize("kind", ["loss", "logit"])
def test_projected_gradients_bitwise_as_fresh_arrays_and_close_to_a_loop(toy, kind: str) -> None:
    """Buffered projected gradients: bitwise as one fresh ``torch.cat`` per batch, and equal (float32
    rtol 1e-5 of the largest entry) to an explicit per-sample autograd loop times the dense matrix."""
    from methods._gradients import GaussianProjector, per_sample_gradients

    model, train, _, _ = toy
    params, buffers = _params(model)
    names = list(params)
    n_params = sum(p.numel() for p in params.values())
    projector = GaussianProjector(n_params, 16, seed=1, device=torch.device("cpu"))
    x, y = train.inputs[:37], train.y[:37]  # 3 batches of 16, the last one short
    got = per_sample_gradients(model, params, buffers, x, y, kind=kind, batch_size=16, projector=projector)

    def objective(p, xi, ci):
        logits = torch.func.functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        if kind == "loss":
            return torch.nn.functional.cross_entropy(logits, ci.unsqueeze(0))
        return torch.gather(logits, 1, ci.reshape(1, 1)).sum()

    batched = torch.func.vmap(torch.func.grad(objective), in_dims=(None, 0, 0))
    fresh = []
    for start in range(0, len(x), 16):  # the previous code: a new flat array per batch
        grads = batched(params, x[start : start + 16], y[start : start + 16].long())
        fresh.append(projector.project(torch.cat([grads[k].reshape(len(grads[k]), -1) for k in names], 1)))
    assert torch.equal(got, torch.cat(fresh))

    model.eval()
    plain = list(model.parameters())
    loop = []
    for xi, yi in zip(x, y.long(), strict=True):
        logits = model(xi[None])
        out = torch.nn.functional.cross_entropy(logits, yi[None]) if kind == "loss" else logits[0, yi]
        loop.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(out, plain)]))
    expected = torch.stack(loop).double() @ projector.matrix().double()
    scale = float(expected.abs().max())
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5 * scale)


def test_unprojected_gradients_unchanged(toy) -> None:
    """Without a projector the flat gradients are returned as before (no shared buffer)."""
    from methods._gradients import per_sample_gradients

    model, train, _, _ = toy
    params, buffers = _params(model)
    x, y = train.inputs[:20], train.y[:20]
    got = per_sample_gradients(model, params, buffers, x, y, kind="loss", batch_size=8)
    model.eval()
    plain = list(model.parameters())
    loop = [
        torch.cat(
            [
                g.reshape(-1)
                for g in torch.autograd.grad(
                    torch.nn.functional.cross_entropy(model(xi[None]), yi[None]), plain
                )
            ]
        )
        for xi, yi in zip(x, y.long(), strict=True)
    ]
    torch.testing.assert_close(got, torch.stack(loop), rtol=1e-5, atol=1e-6)
    assert (
        got.data_ptr()
        != per_sample_gradients(model, params, buffers, x, y, kind="loss", batch_size=8).data_ptr()
    )

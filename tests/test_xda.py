"""XDA (the xda package, dabench/xda_command.py): feature decomposition, LRP conservation, a
hand-computed LRP reference, the watermark case, ResNet canonizers, bad input, the command and the
document it writes.

References are independent of the engine: the feature terms are recomputed here in float64 from
``feature_split`` and the methods' alpha; the LRP-0 / epsilon reference is written out in numpy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import xda
from dabench import xda_command
from harness import records
from harness.cache import Cache
from harness.config import ConfigError
from harness.protocols import CapabilityError, DataError, Method, Split, feature_split
from harness.registry import METHODS
from harness.runner import ComponentSpec, RunSpec
from methods.dualda import DualDA, DualDAConfig
from methods.representer import RepresenterPoints


def _phi(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    features, _ = feature_split(model)
    with torch.no_grad():
        return features(x).flatten(start_dim=1).double()


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dabench")
    sub = parser.add_subparsers(dest="command", required=True)
    xda_command.add_parser(sub)
    return parser.parse_args(["xda", *argv])


@pytest.fixture(scope="module")
def mnist_dualda(mnist_small_setup, tmp_path_factory):
    _, data, model = mnist_small_setup
    method = DualDA(DualDAConfig(C=1e-3))
    method.fit(model, data.train, cache=Cache(tmp_path_factory.mktemp("xda-dualda")))
    return data, model, method


# =============================================================================================
# The feature decomposition of the methods
# =============================================================================================
def test_capability_is_declared_by_the_feature_methods_only() -> None:
    assert xda.FEATURE_DECOMPOSITION in DualDA.supports
    assert xda.FEATURE_DECOMPOSITION in RepresenterPoints.supports
    assert xda_command.methods_with(xda.FEATURE_DECOMPOSITION) == ["dualda", "representer"]
    random_method = METHODS.get("random")()
    with pytest.raises(CapabilityError, match="does not support feature_decomposition"):
        random_method.feature_relevance(torch.zeros(1, 2), 0, torch.tensor([0]))


def test_dualda_terms_sum_to_its_attributions(mnist_dualda) -> None:
    data, model, method = mnist_dualda
    phi_train = _phi(model, data.train.materialise())
    non_support = torch.ones(len(data.train), dtype=torch.bool)
    non_support[method.support_.cpu()] = False
    index = torch.cat([method.support_.cpu()[:40], torch.nonzero(non_support).flatten()[:10]])
    for j in range(3):
        x = data.test.inputs[j : j + 1]
        target = int(model(x).argmax())
        terms = method.feature_relevance(x, target, index)
        assert terms.shape == (len(index), phi_train.shape[1]) and terms.dtype == torch.float64
        explained = method.explain(x, torch.tensor([target]))[0, index].double()
        scale = explained.abs().max()
        assert (terms.sum(dim=1) - explained).abs().max() <= 1e-5 * scale
        reference = method.alpha_[index, target][:, None] * _phi(model, x) * phi_train[index]
        assert torch.allclose(terms, reference, rtol=1e-5, atol=1e-7 * float(reference.abs().max()))
        assert (terms[-10:] == 0).all()  # not support vectors: exactly zero


def test_representer_terms_sum_to_its_attributions(toy_setup, tmp_path: Path) -> None:
    _, data, model = toy_setup
    method = RepresenterPoints()
    method.fit(model, data.train, cache=Cache(tmp_path))
    index = torch.arange(len(data.train))
    phi_train = _phi(model, data.train.materialise())
    for j in range(len(data.test)):
        x = data.test.inputs[j : j + 1]
        target = int(model(x).argmax())
        terms = method.feature_relevance(x, torch.tensor(target), index)
        explained = method.explain(x, torch.tensor([target]))[0].double()
        assert (terms.sum(dim=1) - explained).abs().max() <= 1e-5 * explained.abs().max()
        reference = method.alpha_[:, target][:, None] * _phi(model, x) * phi_train
        assert torch.allclose(terms, reference, rtol=1e-5, atol=1e-9)


def test_representer_pairs_on_the_toy_follow_the_flat_rule(toy_setup, tmp_path: Path) -> None:
    """The toy's features are one Linear + ReLU: EpsilonPlusFlat gives it the flat rule, which
    spreads each hidden unit's relevance evenly over the inputs: every input gets a_i / in_dim."""
    _, data, model = toy_setup
    method = RepresenterPoints()
    method.fit(model, data.train, cache=Cache(tmp_path))
    in_dim = data.train.materialise().shape[1]
    for j in range(3):
        result = xda.xda_for_test_point(
            model, method, data.test.inputs[j : j + 1], data.train.materialise(), top=2
        )
        assert result.canonizers == [] and len(result.pairs) == 4
        assert result.conservation()["feature_max_rel_error"] <= 1e-5
        for pair in result.pairs:
            even = torch.full((in_dim,), pair.attribution / in_dim)
            assert torch.allclose(pair.train_heatmap, even, rtol=1e-5, atol=1e-7)
            assert torch.allclose(pair.test_heatmap, even, rtol=1e-5, atol=1e-7)


def test_feature_relevance_rejects_bad_input(toy_setup, tmp_path: Path) -> None:
    _, data, model = toy_setup
    for method in (DualDA(DualDAConfig(C=0.1)), RepresenterPoints()):
        method.fit(model, data.train, cache=Cache(tmp_path))
        with pytest.raises(DataError, match="one input"):
            method.feature_relevance(data.test.inputs[:2], 0, torch.tensor([0]))
        with pytest.raises(DataError, match="target must be a class in 0..2"):
            method.feature_relevance(data.test.inputs[:1], 5, torch.tensor([0]))
        with pytest.raises(DataError, match=f"indices must lie in 0..{len(data.train) - 1}"):
            method.feature_relevance(data.test.inputs[:1], 0, torch.tensor([len(data.train)]))


# =============================================================================================
# The engine against LRP written out by hand
# =============================================================================================
class _TwoLayer(nn.Module):
    """3 inputs -> 2 hidden (ReLU) -> 2 features (ReLU) -> 2 logits, hand-set weights, float64."""

    W1 = [[1.0, -0.5, 0.3], [-0.4, 0.8, 0.6]]
    B1 = [0.1, -0.2]
    W2 = [[0.7, -0.3], [0.5, 0.9]]
    B2 = [0.05, -0.1]

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2), nn.ReLU()).double()
        self.classifier = nn.Linear(2, 2).double()
        with torch.no_grad():
            for layer, w, b in ((self.features[0], self.W1, self.B1), (self.features[2], self.W2, self.B2)):
                layer.weight.copy_(torch.tensor(w, dtype=torch.float64))
                layer.bias.copy_(torch.tensor(b, dtype=torch.float64))
            self.classifier.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
            self.classifier.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _FixedAlpha(Method):
    """a_i(x) = alpha_i^c <phi(x), phi(x_i)> with a given alpha: the protocol, nothing else."""

    supports = frozenset({"feature_decomposition"})

    def __init__(self, alpha: torch.Tensor) -> None:
        super().__init__()
        self.alpha = alpha

    def fit(self, model, train, *, cache=None) -> None:
        self.model, self.phi_train, self._fitted = model, _phi(model, train.materialise()), True

    def explain(self, x, targets):
        return (_phi(self.model, x) @ self.phi_train.T) * self.alpha.T[targets.long()]

    def feature_relevance(self, x, target, train_indices):
        index = torch.as_tensor(train_indices).long()
        return self.alpha[index, int(target)][:, None] * _phi(self.model, x) * self.phi_train[index]


def _lrp_linear(a: np.ndarray, w: np.ndarray, b: np.ndarray, r_out: np.ndarray, eps: float) -> np.ndarray:
    """R_j = a_j sum_k w_kj R_k / (z_k + eps sign(z_k)), z = W a + b."""
    z = w @ a + b
    return a * (w.T @ (r_out / (z + eps * np.sign(z))))


def _hand_xda(x: np.ndarray, r_features: np.ndarray, eps: float) -> np.ndarray:
    w1, b1, w2, b2 = (np.array(v) for v in (_TwoLayer.W1, _TwoLayer.B1, _TwoLayer.W2, _TwoLayer.B2))
    hidden = np.maximum(w1 @ x + b1, 0.0)
    # the ReLUs pass relevance unchanged (the relevance of an inactive unit is already 0)
    r_hidden = _lrp_linear(hidden, w2, b2, r_features, eps)
    return _lrp_linear(x, w1, b1, r_hidden, eps)


@pytest.mark.parametrize("eps", [0.0, 0.25], ids=["lrp0", "epsilon"])
def test_pair_heatmaps_equal_hand_computed_lrp(eps: float) -> None:
    from zennit.composites import LayerMapComposite
    from zennit.rules import Epsilon, Pass
    from zennit.types import Activation

    model = _TwoLayer().eval()
    train_x = torch.tensor([[0.3, 1.2, 0.4], [-0.6, 0.2, 1.0], [0.9, -0.8, 0.5]], dtype=torch.float64)
    x = torch.tensor([[1.0, 0.5, -0.2]], dtype=torch.float64)
    alpha = torch.tensor([[0.5, -0.2], [-0.3, 0.4], [0.25, 0.1]], dtype=torch.float64)
    method = _FixedAlpha(alpha)
    method.fit(model, Split("train", train_x, torch.tensor([0, 1, 0])))
    composite = LayerMapComposite([(Activation, Pass()), (nn.Linear, Epsilon(epsilon=eps))])
    pairs = xda.explain_pairs(model, method, x, train_x, [0, 1, 2], target=0, composite=composite)

    w1, b1, w2, b2 = (np.array(v) for v in (_TwoLayer.W1, _TwoLayer.B1, _TwoLayer.W2, _TwoLayer.B2))

    def phi(v: np.ndarray) -> np.ndarray:
        return np.maximum(w2 @ np.maximum(w1 @ v + b1, 0.0) + b2, 0.0)

    x_np = x[0].numpy()
    hidden_states = [np.maximum(w1 @ v + b1, 0.0) for v in train_x.numpy()]
    assert any((h == 0).any() for h in hidden_states)  # the ReLU gating is exercised
    for i, pair in enumerate(pairs):
        xi = train_x[i].numpy()
        r = alpha[i, 0].item() * phi(x_np) * phi(xi)
        assert pair.attribution == pytest.approx(r.sum(), rel=1e-12)
        assert pair.alpha == pytest.approx(alpha[i, 0].item(), rel=1e-9)
        np.testing.assert_allclose(pair.feature_relevance.numpy(), r, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(pair.train_heatmap.numpy(), _hand_xda(xi, r, eps), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(pair.test_heatmap.numpy(), _hand_xda(x_np, r, eps), rtol=1e-5, atol=1e-7)


# =============================================================================================
# Conservation on MNIST BasicConv
# =============================================================================================
@pytest.mark.parametrize("zero_bias", [True, False], ids=["biases-zeroed", "biases-kept"])
@pytest.mark.parametrize("composite", xda.COMPOSITES)
def test_relevance_is_conserved_per_composite(mnist_dualda, composite: str, zero_bias: bool) -> None:
    data, model, method = mnist_dualda
    bounds = (data.train.materialise().amin(), data.train.materialise().amax())
    table = xda.INPUT_CONSERVATION_TOLERANCE if zero_bias else xda.INPUT_CONSERVATION_TOLERANCE_BIASES_KEPT
    tolerance = table[composite]
    for j in range(2):
        result = xda.xda_for_test_point(
            model,
            method,
            data.test.inputs[j : j + 1],
            data.train.materialise(),
            top=3,
            composite=composite,
            bounds=bounds,
            zero_bias=zero_bias,
        )
        assert result.biases_zeroed is zero_bias
        assert len(result.proponents) == 3 and len(result.opponents) == 3
        assert all(p.attribution > 0 for p in result.proponents)
        assert all(p.attribution < 0 for p in result.opponents)
        conservation = result.conservation()
        assert conservation["feature_max_rel_error"] <= 1e-5
        assert conservation["train_input_max_rel_error"] <= tolerance
        assert conservation["test_input_max_rel_error"] <= tolerance
        assert conservation["test_heatmap_rel_error"] <= tolerance
        for pair in result.pairs:  # relevance keeps its sign on the way down
            assert pair.train_input_sum * pair.attribution > 0 and pair.test_input_sum * pair.attribution > 0


def test_default_composite_zeroes_biases_as_the_reference(mnist_dualda) -> None:
    """The default is the reference code's EpsilonPlusFlat(zero_params='bias'): its input relevance sums
    to a_i (measured 2e-6); keeping the biases loses their share (measured 0.03-0.07)."""
    from zennit.composites import EpsilonPlusFlat

    data, model, method = mnist_dualda
    x = data.test.inputs[:1]
    default = xda.xda_for_test_point(model, method, x, data.train.materialise(), top=3)
    assert (default.composite, default.biases_zeroed) == ("EpsilonPlusFlat", True)
    conservation = default.conservation()
    for key in ("train_input_max_rel_error", "test_input_max_rel_error", "test_heatmap_rel_error"):
        assert conservation[key] <= 1e-5, key
    given = xda.xda_for_test_point(
        model, method, x, data.train.materialise(), top=3, composite=EpsilonPlusFlat(zero_params="bias")
    )
    assert given.biases_zeroed is None  # an instance's settings are its own
    for mine, theirs in zip(default.pairs, given.pairs, strict=True):
        assert torch.allclose(mine.train_heatmap, theirs.train_heatmap, rtol=1e-5, atol=1e-9)
        assert torch.allclose(mine.test_heatmap, theirs.test_heatmap, rtol=1e-5, atol=1e-9)
    assert torch.allclose(default.test_heatmap, given.test_heatmap, rtol=1e-5, atol=1e-9)
    kept = xda.xda_for_test_point(model, method, x, data.train.materialise(), top=3, zero_bias=False)
    assert kept.biases_zeroed is False
    assert kept.conservation()["train_input_max_rel_error"] > 1e-3


def test_result_record_and_training_data_check(mnist_dualda) -> None:
    data, model, method = mnist_dualda
    x = data.test.inputs[3:4]
    result = xda.xda_for_test_point(
        model, method, x, data.train.materialise(), top=2, train_labels=data.train.y
    )
    record = result.to_record()
    json.dumps(record)  # JSON-able
    assert record["prediction"] == int(model(x).argmax())
    explained = method.explain(x, torch.tensor([result.prediction]))[0]
    assert [p["train_index"] for p in record["proponents"]] == explained.topk(2).indices.tolist()
    assert [p["train_index"] for p in record["opponents"]] == (-explained).topk(2).indices.tolist()
    assert all(p["train_label"] == int(data.train.y[p["train_index"]]) for p in record["proponents"])
    assert result.train_inputs.shape == (4, *data.train.materialise().shape[1:])
    assert record["region"] is None
    assert record["biases_zeroed"] is True and record["composite"] == "EpsilonPlusFlat"
    shuffled = data.train.inputs[torch.randperm(len(data.train), generator=torch.Generator().manual_seed(1))]
    # training points whose terms are not all zero (a support vector may have alpha_i^c = 0 at this class)
    nonzero = torch.nonzero(method.alpha_[:, result.prediction].cpu() != 0).flatten()[:3]
    with pytest.raises(DataError, match="pass the training split the method was fitted on"):
        xda.explain_pairs(model, method, x, shuffled, nonzero)


# =============================================================================================
# ResNet: the canonizer path
# =============================================================================================
@pytest.mark.slow
def test_resnet_canonizers_run_and_features_conserve(tmp_path: Path) -> None:
    from tasks.resnets import resnet18_cifar

    torch.manual_seed(0)
    model = resnet18_cifar(num_classes=3)
    with torch.no_grad():  # non-trivial batch-norm statistics, so that merging them matters
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    model.eval()
    train = Split("train", torch.randn(9, 3, 32, 32), torch.arange(9) % 3)
    test_x = torch.randn(2, 3, 32, 32)
    method = DualDA(DualDAConfig(C=1.0))
    method.fit(model, train, cache=Cache(tmp_path))
    with torch.no_grad():
        before = model(test_x)
    # measured on 3 random ResNets (2 inputs, 8 pairs each), biases zeroed: at most 6e-6 off a_i
    tolerance = xda.INPUT_CONSERVATION_TOLERANCE["EpsilonPlusFlat"]
    for j in range(2):
        result = xda.xda_for_test_point(model, method, test_x[j : j + 1], train.materialise(), top=1)
        assert result.canonizers == ["ResNetCanonizer"]
        assert result.pairs, "random features still give some non-zero attributions"
        assert result.conservation()["feature_max_rel_error"] <= 1e-5
        for pair in result.pairs:
            assert pair.train_heatmap.shape == (3, 32, 32) and torch.isfinite(pair.train_heatmap).all()
            assert torch.isfinite(pair.test_heatmap).all()
            assert pair.train_input_sum == pytest.approx(pair.attribution, rel=tolerance)
            assert pair.test_input_sum == pytest.approx(pair.attribution, rel=tolerance)
    with torch.no_grad():
        assert torch.equal(model(test_x), before)  # the canonizers were removed again


# =============================================================================================
# Bad input
# =============================================================================================
def test_engine_bad_input_is_a_clear_error(toy_setup, tmp_path: Path) -> None:
    _, data, model = toy_setup
    method = DualDA(DualDAConfig(C=0.1))
    method.fit(model, data.train, cache=Cache(tmp_path))
    x = data.test.inputs[:1]
    with pytest.raises(
        ConfigError, match="unknown LRP composite 'EpsilonPlusFlatt'.*EpsilonPlusFlat, EpsilonPlus"
    ):
        xda.xda_for_test_point(model, method, x, data.train.materialise(), composite="EpsilonPlusFlatt")
    assert xda.resolve_composite_name("epsilon_plus_flat") == "EpsilonPlusFlat"
    with pytest.raises(ConfigError, match="EpsilonGammaBox needs the input range"):
        xda.xda_for_test_point(model, method, x, data.train.materialise(), composite="EpsilonGammaBox")
    random_method = METHODS.get("random")()
    random_method.fit(model, data.train, cache=Cache(tmp_path))
    with pytest.raises(CapabilityError, match="does not declare 'feature_decomposition'"):
        xda.xda_for_test_point(model, random_method, x, data.train.materialise())
    with pytest.raises(DataError, match=r"one test input of shape \(1, \*input_shape\)"):
        xda.xda_for_test_point(model, method, data.test.inputs[:2], data.train.materialise())
    with pytest.raises(DataError, match="training indices must lie in"):
        xda.explain_pairs(model, method, x, data.train.materialise(), [len(data.train)])
    with pytest.raises(ConfigError, match="top must be a positive"):
        xda.xda_for_test_point(model, method, x, data.train.materialise(), top=0)
    with pytest.raises(DataError, match="region of shape"):
        xda.xda_for_test_point(
            model, method, x, data.train.materialise(), region=torch.ones(5, 5, dtype=torch.bool)
        )


def test_command_zeroes_biases_unless_told() -> None:
    assert _parse(["--task", "mnist"]).keep_biases is False
    assert _parse(["--task", "mnist", "--keep-biases"]).keep_biases is True


def test_command_bad_input_is_a_clear_one_line_error(tmp_path: Path) -> None:
    common = ["--task", "mnist", "--n-train", "100", "--n-test", "20", "--cache-dir", str(tmp_path)]
    with pytest.raises(
        DataError, match=r"--test-index 20 is out of range: the test split has 20 points \(valid: 0..19"
    ):
        xda_command.run(_parse([*common, "--test-index", "20"]))
    with pytest.raises(DataError, match="out of range"):
        xda_command.run(_parse([*common, "--test-index", "-1"]))
    with pytest.raises(
        CapabilityError, match="no feature decomposition.*methods that have one: dualda, representer"
    ):
        xda_command.run(_parse([*common, "--method", "random"]))
    with pytest.raises(ConfigError, match="unknown LRP composite 'Flat'; choose one of EpsilonPlusFlat"):
        xda_command.run(_parse([*common, "--composite", "Flat"]))
    with pytest.raises(ConfigError, match="--mark is the mark variant"):
        xda_command.run(_parse([*common, "--mark", "--variant", "std"]))
    with pytest.raises(ConfigError, match="unknown config key"):
        xda_command.run(_parse([*common, "--method-option", "gamma=1"]))
    with pytest.raises(ConfigError, match="write KEY=VALUE"):
        xda_command.run(_parse([*common, "--method-option", "C"]))
    with pytest.raises(ConfigError, match="--top must be a positive"):
        xda_command.run(_parse([*common, "--top", "0"]))
    assert not list(tmp_path.iterdir())  # every check came before any model was trained


# =============================================================================================
# The watermark case, end to end through the command
# =============================================================================================
@pytest.fixture(scope="module")
def mark_run(tmp_path_factory):
    """``dabench xda --task mnist --mark`` on 1,000 training points (quick preset), composite EpsilonPlus."""
    root = tmp_path_factory.mktemp("xda-mark")
    argv = ["--task", "mnist", "--mark", "--n-train", "1000", "--n-test", "200", "--top", "3"]
    argv += ["--composite", "EpsilonPlus", "--out", str(root / "out"), "--cache-dir", str(root / "cache")]
    assert xda_command.run(_parse(argv)) == 0
    paths = sorted((root / "out").iterdir())
    return root, paths


def _mark_spec(root: Path) -> RunSpec:
    """The run of ``mark_run``'s task options, seed and cache, as ``dabench run`` would build it."""
    task = ComponentSpec("mnist", (("variant", "mark"), ("n_train", 1000), ("n_test", 200)), "quick")
    return RunSpec(task=task, method=ComponentSpec("random"), metrics=(), cache_dir=str(root / "cache"))


@pytest.mark.slow
def test_mark_command_writes_figure_and_record(mark_run, capsys) -> None:
    from tasks.variants import watermark_mask

    root, paths = mark_run
    stem = "mnist-mark-dualda-test0-EpsilonPlus"
    assert [p.name for p in paths] == [f"{stem}.{ext}" for ext in ("json", "npz", "pdf", "png")]
    assert (root / "out" / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (root / "out" / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
    record = json.loads((root / "out" / f"{stem}.json").read_text())
    assert record["kind"] == "xda" and record["method"]["name"] == "dualda"
    assert record["xda"]["biases_zeroed"] is True
    assert record["task"]["variant"] == "mark" and record["task"]["n_train"] == 1000
    assert record["shortcut"] == {"class": 2, "predicted_as_shortcut": True, "true_label_differs": True}
    arrays = np.load(root / "out" / f"{stem}.npz")
    assert np.array_equal(arrays["region"], watermark_mask(28, 28).numpy())  # read off the data alone
    xda_record = record["xda"]
    pixel_share = xda_record["region"]["pixel_share"]
    assert pixel_share == pytest.approx(244 / 784)
    assert xda_record["conservation"]["feature_max_rel_error"] <= 1e-5
    # the heatmaps light up the watermark: more of the positive relevance lies inside it than its area
    assert xda_record["region"]["test_heatmap_share"] > pixel_share
    assert len(xda_record["proponents"]) == 3
    for pair in xda_record["proponents"]:
        assert pair["test_region_share"] > pixel_share
        assert pair["train_label"] == 2 and isinstance(pair["train_marked"], bool)


def test_mark_document_is_the_typed_document(mark_run) -> None:
    """One document shape: the keys written are XDADocument's, versioned by the named constant,
    with the machine that wrote it."""
    root, paths = mark_run
    document = json.loads(next(p for p in paths if p.suffix == ".json").read_text())
    assert set(document) == set(xda.XDADocument.__annotations__)
    assert document["schema_version"] == xda.XDA_SCHEMA_VERSION == 1
    assert document["machine"] == records.machine()
    assert len(document["machine"]["id"]) == 12 and int(document["machine"]["id"], 16) >= 0
    assert set(document["git"]) == {"commit", "dirty"} and document["environment"]["torch"]
    assert set(document["xda"]) == set(xda.XDARecord.__annotations__)
    for pair in document["xda"]["proponents"] + document["xda"]["opponents"]:
        assert set(pair) == set(xda.results.PairRecord.__annotations__)  # train_marked: the mark variant
    assert document["files"] == {
        key: f"mnist-mark-dualda-test0-EpsilonPlus.{ext}"
        for key, ext in (("json", "json"), ("arrays", "npz"), ("png", "png"), ("pdf", "pdf"))
    }


def test_xda_and_run_share_the_cached_model(mark_run) -> None:
    """``dabench run`` with the task options and seed of ``dabench xda`` finds the model xda trained."""
    from dabench.cli import main

    root, paths = mark_run
    document = json.loads(next(p for p in paths if p.suffix == ".json").read_text())
    assert document["task"]["model"]["cached"] is False  # trained by the xda command itself
    argv = ["run", "--task", "mnist", "--variant", "mark", "--n-train", "1000", "--n-test", "200"]
    argv += ["--preset", "quick", "--methods", "random", "--metrics", "", "--repeats", "1"]
    argv += ["--cache-dir", str(root / "cache"), "--results-dir", str(root / "run")]
    assert main(argv) == 0
    (record_path,) = (root / "run" / "records").glob("*.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "ok" and record["task"]["seed"] == document["task"]["seed"] == 0
    assert record["task"]["config"] == document["task"]["config"]
    assert record["task"]["model"]["cached"] is True
    assert record["task"]["model"]["key"] == document["task"]["model"]["key"]
    assert record["task"]["model"]["test_accuracy"] == pytest.approx(
        document["task"]["model"]["test_accuracy"]
    )


def test_mark_shortcut_points_carry_more_relevance_on_the_watermark(mark_run) -> None:
    """Default composite too: shortcut predictions put more relevance on the mark than correct ones."""
    from harness.model_store import predict
    from harness.runner import set_up

    root, _ = mark_run
    task = _mark_spec(root).resolve().task
    setup = set_up(task, 0, root / "cache")
    assert setup.model_info["cached"]  # the model dabench xda trained
    data, model = setup.data, setup.model
    region, shortcut = xda.mark_facts(data)
    predictions = predict(model, data.test.materialise(), 256)
    through_mark = torch.nonzero((predictions == shortcut) & (data.test.y != shortcut)).flatten()[:8]
    correct = torch.nonzero((predictions == data.test.y) & (data.test.y != shortcut)).flatten()[:8]

    def share(i: int, composite: str) -> float:
        heat, _ = xda.lrp_heatmap(model, data.test.inputs[i : i + 1], int(predictions[i]), composite)
        return xda.positive_share(heat, region)

    for composite in ("EpsilonPlusFlat", "EpsilonPlus"):
        mark_mean = np.mean([share(i, composite) for i in through_mark.tolist()])
        correct_mean = np.mean([share(i, composite) for i in correct.tolist()])
        assert mark_mean > correct_mean, composite


def test_figure_redraws_from_the_record_alone(mark_run, tmp_path: Path) -> None:
    from paper_figures.xda_figure import main

    root, paths = mark_run
    json_path = next(p for p in paths if p.suffix == ".json")
    assert main([str(json_path), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again.png").stat().st_size > 10_000 and (tmp_path / "again.pdf").exists()

